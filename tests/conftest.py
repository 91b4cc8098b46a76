"""Shared fixtures: the test data in ../shared, the fake Immich server, configs, the CLI."""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fake_immich import FakeImmich
from openapi_check import DERIVED, load_spec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACESYNCD_SHARED", REPO.parent / "shared")).resolve()
PHOTOS = SHARED / "testdata" / "photos"
MODELS = SHARED / "testdata" / "models"
TEST_PACK = MODELS / "buffalo_test"
API_KEY = "test-key-alice-0123456789abcdef"
API_KEY_ENV = "FACESYNCD_TEST_KEY_ALICE"

requires_shared = pytest.mark.skipif(
    not (PHOTOS.is_dir() and TEST_PACK.is_dir()),
    reason=f"test data not found at {SHARED} (../shared beside the repository, or set FACESYNCD_SHARED)",
)


# Where tests put key files on purpose besides *.key: systemd's credentials, the service's keys/ folder.
KEY_FOLDERS = ("credentials", "keys")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the whole run: no file any test made (databases, logs, facesets, crops) holds the API
    key, except the key files the tests wrote on purpose."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or exitstatus != 0:
        return
    leaks = [
        path
        for path in factory.getbasetemp().rglob("*")
        if path.is_file()
        and not path.name.endswith(".key")
        and path.parent.name not in KEY_FOLDERS
        and API_KEY.encode() in path.read_bytes()
    ]
    if leaks:
        session.exitstatus = 1
        print(f"\nAPI key found in files written during the test run: {leaks}", file=sys.stderr)


TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker (its folder): `pytest -m unit` runs the quick ones."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") and not (PHOTOS.is_dir() and TEST_PACK.is_dir()):
        raise pytest.UsageError(f"CI run without test data: {SHARED} is missing")


def spec_path(version: str) -> Path:
    """Immich's OpenAPI document of this version, or of the one a derived version is built from."""
    return SHARED / "immich" / f"openapi-{DERIVED.get(version, version)}.json"


def validate_traffic(fake: FakeImmich) -> None:
    """Every JSON answer of the fake and every request body facesyncd sent must follow the spec."""
    spec = load_spec(spec_path(fake.version), fake.version)
    for method, template, status, body in fake.json_answers:
        if template.startswith("/api/"):
            continue  # unknown route: facesyncd never calls one (asserted below)
        spec.check_response(method, template, status, body)
    for template, body in fake.request_bodies:
        spec.check_request("POST", template, body)
    unknown = [t for _, t, _, _ in fake.json_answers if t.startswith("/api/")]
    assert not unknown, f"requests to routes the fake does not serve: {unknown}"


@pytest.fixture(params=["3.1.0"])
def immich_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fake(immich_version: str) -> Iterator[FakeImmich]:
    if not spec_path(immich_version).exists():
        pytest.skip(f"Immich OpenAPI spec not found at {spec_path(immich_version)}")
    server = FakeImmich(version=immich_version)
    server.add_user("alice", API_KEY)
    server.start()
    try:
        yield server
        validate_traffic(server)
    finally:
        server.stop()


def write_config(
    directory: Path,
    url: str,
    *,
    extra: str = "",
    faces: str = "",
    sync: str = "",
    sources: str | None = None,
    model: str = "",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if sources is None:
        sources = f'[[immich]]\nname = "alice"\nurl = "{url}"\napi_key_env = "{API_KEY_ENV}"\n'
    defaults = {"retry_base_seconds": "0.01", "retry_max_seconds": "0.05", "retry_delay_seconds": "0"}
    given = {line.split("=")[0].strip() for line in sync.splitlines() if "=" in line}
    sync_text = "".join(f"{k} = {v}\n" for k, v in defaults.items() if k not in given) + sync
    text = (
        f'state_dir = "{directory / "state"}"\n'
        f'facesets_dir = "{directory / "facesets"}"\n'
        f"{extra}\n"
        f"{sources}\n"
        f'[model]\npack = "{TEST_PACK}"\nproviders = ["CPUExecutionProvider"]\n{model}\n'
        f"[faces]\n{faces}\n"
        f"[sync]\n{sync_text}\n"
    )
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY


@dataclass
class CliResult:
    """What one facesyncd command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """facesyncd's command line run in this process (cli.main, as the console script calls it): the
    same parsing, error lines and exit codes as a new process, without paying for one (interpreter,
    imports) at every call. Signals, crash points and processes that must die stay with run_process."""
    from facesyncd import cli, redact

    environment = {**os.environ, API_KEY_ENV: API_KEY, **(env or {})}
    assert "FACESYNCD_CRASH_AT" not in environment, "a crash point kills the process: use run_process"
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in NOISY_LOGGERS})
    saved_environment = dict(os.environ)
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(environment)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(""), stdout, stderr
    code = 0
    try:
        with redact.fresh_registry():  # a new process knows no key yet
            cli.main(list(args))
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.environ.clear()
        os.environ.update(saved_environment)
        root.handlers[:], level, levels = saved_logging
        root.setLevel(level)
        for name, named_level in levels.items():
            logging.getLogger(name).setLevel(named_level)
    result = CliResult(code, stdout.getvalue(), stderr.getvalue())
    _no_key_printed(args, environment, result.stdout, result.stderr)
    return result


NOISY_LOGGERS = ("httpx", "httpcore", "apscheduler")


def run_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """facesyncd as a new process (`python -m facesyncd`): for what only a process shows (signals,
    kill -9 at a crash point, the daemon, the interpreter's own start)."""
    environment = {**os.environ, API_KEY_ENV: API_KEY, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "facesyncd", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        cwd=REPO,
    )
    _no_key_printed(args, environment, result.stdout, result.stderr)
    return result


def _no_key_printed(args: tuple[str, ...], environment: dict[str, str], stdout: str, stderr: str) -> None:
    """Every command the suite runs is also a check that no API key leaks into its output."""
    for key in {API_KEY, environment[API_KEY_ENV]}:
        assert key not in stdout and key not in stderr, f"API key printed by facesyncd {args}"


def with_extra_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, sql: str) -> Path:
    """Point the store at a copy of migrations/ plus one newer migration; returns that folder."""
    import facesyncd.store.database as database

    folder = tmp_path / "migrations"
    folder.mkdir()
    for existing in database.migrations():
        (folder / f"{existing.name}.sql").write_text(existing.script)
    (folder / name).write_text(sql)
    monkeypatch.setattr(database, "MIGRATIONS_DIR", folder)
    return folder


def asset_states(**counts: int) -> dict[str, int]:
    """What `status --json` shows under "assets": every state, with these counts and 0 elsewhere."""
    from facesyncd.models import AssetState

    unknown = set(counts) - {str(state) for state in AssetState}
    assert not unknown, f"no such asset state: {unknown}"
    return {str(state): counts.get(str(state), 0) for state in AssetState}


def wait_until(condition: Callable[[], object], what: str, guard_seconds: float = 120) -> None:
    """Wait for `condition` to hold. The guard only ends a wait that would hang (a test's failure);
    it is far longer than any condition takes on a loaded machine and is no measure of speed."""
    deadline = time.monotonic() + guard_seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {guard_seconds:g}s: {what}"
        time.sleep(0.02)


def mapped_from_file(array: object) -> bool:
    """Whether a numpy array's memory is a mapping of a file (npz.map_rows), not read into memory of
    its own: its chain of bases ends in a memoryview of an mmap."""
    import numpy as np

    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_photos(fake: FakeImmich, folders: list[str], owner: str = "alice") -> dict[str, str]:
    """Serve every photo under the given testdata folders; returns asset id -> relative path."""
    added: dict[str, Any] = {}
    for folder in folders:
        paths = [PHOTOS / folder] if (PHOTOS / folder).is_file() else sorted((PHOTOS / folder).rglob("*"))
        assert paths, f"no test photo at {PHOTOS / folder}"
        for path in paths:
            if path.is_file() and path.name != "LABELS.tsv":
                relative = str(path.relative_to(PHOTOS))
                added[fake.add_file(owner, path, label=relative)] = relative
    return added


class Library:
    """One configured facesyncd over the fake Immich, read through its own commands."""

    def __init__(self, fake: FakeImmich, root: Path, extra: str = "", model: str = "") -> None:
        self.fake = fake
        self.config = write_config(root, fake.url, model=model)
        if extra:
            self.config.write_text(self.config.read_text() + extra)
        self.state = root / "state"
        self.facesets = root / "facesets"
        self.labels: dict[str, str] = {}

    def add(self, folders: list[str]) -> None:
        self.labels.update(add_photos(self.fake, folders))

    def cli(self, *args: str, ok: bool = True) -> str:
        result = run_cli("--config", str(self.config), *args)
        if ok:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    def sets(self) -> dict[int, dict]:
        return {entry["number"]: entry for entry in json.loads(self.cli("faceset", "list", "--json", "--all"))}

    def show(self, number: int) -> dict:
        return json.loads(self.cli("faceset", "show", str(number), "--json"))

    def faces(self, number: int) -> dict[int, str]:
        """face id -> the photo it came from (its test label)."""
        return {face["face_id"]: self.labels.get(face["asset_id"], "?") for face in self.show(number)["face_list"]}

    def number_of(self, person: str) -> int:
        """The live faceset holding most of this person's faces."""
        counts = {
            number: sum(person in label for label in self.faces(number).values())
            for number, entry in self.sets().items()
            if entry["merged_into"] is None and not entry["forgotten"]
        }
        return max(counts, key=lambda number: counts[number])

    def sql(self, statement: str) -> list[tuple]:
        with sqlite3.connect(self.state / "facesyncd.db") as db:
            return db.execute(statement).fetchall()
