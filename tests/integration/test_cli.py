"""The CLI's errors: one clear line, a documented exit code, and never the API key."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    API_KEY,
    API_KEY_ENV,
    PHOTOS,
    add_photos,
    asset_states,
    requires_shared,
    run_cli,
    write_config,
)
from fake_immich import FakeImmich

pytestmark = requires_shared


def test_bad_config_lists_every_problem_with_the_file_name(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'state_dir = "s"\ncolour = "blue"\n[faces]\nmin_face_px = -1\n[identities]\nmatch_distance = "near"\n'
        '[[immich]]\nname = "a"\nurl = "photos.example.org"\napi_key_env = "NO_SUCH_VARIABLE_X"\n'
    )
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 2
    assert result.stderr.startswith(f"facesyncd: error: {config}: 5 problem(s)")
    for needle in (
        "colour: unknown key",
        "faces.min_face_px",
        "identities.match_distance",
        "immich[0].url",
        "NO_SUCH_VARIABLE_X is not set",
    ):
        assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "none.toml"), "status")
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_wrong_api_key_exits_3_without_showing_either_key(fake: FakeImmich, tmp_path: Path) -> None:
    wrong = "wrong-key-that-must-never-be-printed"
    config = write_config(tmp_path, fake.url)
    result = run_cli("--config", str(config), "--log-level", "debug", "sync", env={API_KEY_ENV: wrong})
    assert result.returncode == 3, result.stderr
    assert "rejected the API key (401" in result.stderr
    status = run_cli("--config", str(config), "status", "--json")
    database = (tmp_path / "state" / "facesyncd.db").read_bytes()
    for text in (result.stdout, result.stderr, status.stdout, status.stderr):
        assert wrong not in text and API_KEY not in text
    assert wrong.encode() not in database
    assert json.loads(status.stdout)["sources"][0]["last_error"].startswith("alice: Immich at")


def test_server_unreachable_exits_4(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}", sync="http_retries = 1")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 4, result.stderr
    assert "failed 2 times: ConnectError" in result.stderr
    assert result.stderr.count("facesyncd: error:") == 1


def test_missing_model_pack_exits_5_and_names_the_path(fake: FakeImmich, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake.url)
    text = config.read_text().replace(str(PHOTOS.parent / "models" / "buffalo_test"), str(tmp_path / "nopack"))
    config.write_text(text)
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 5
    assert f"model pack not found: no .onnx files in {tmp_path / 'nopack'}" in result.stderr
    assert fake.count("GET", "/api/assets/") == 0


def test_one_failing_source_does_not_stop_the_others(fake: FakeImmich, tmp_path: Path) -> None:
    fake.add_user("bob", "bob-key-0123")
    fake.add_file("bob", PHOTOS / "wild" / "obama" / "obama.jpg")
    sources = (
        f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_env = "ALICE_WRONG"\n'
        f'[[immich]]\nname = "bob"\nurl = "{fake.url}"\napi_key_file = "{tmp_path / "bob.key"}"\n'
    )
    (tmp_path / "bob.key").write_text("bob-key-0123\n")
    config = write_config(tmp_path, fake.url, sources=sources)
    result = run_cli("--config", str(config), "sync", env={"ALICE_WRONG": "nope"})
    assert result.returncode == 3
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["assets"] == asset_states(done=1)
    errors = {source["name"]: source["last_error"] for source in status["sources"]}
    assert errors["alice"] and errors["bob"] is None
    assert status["last_sync"]["ok"] is False and "alice" in status["last_sync"]["error"]


def test_second_sync_on_the_same_state_dir_is_refused(fake: FakeImmich, tmp_path: Path) -> None:
    from facesyncd.lock import state_lock

    config = write_config(tmp_path, fake.url)
    with state_lock(tmp_path / "state"):
        result = run_cli("--config", str(config), "sync")
    assert result.returncode == 7 and "another facesyncd process" in result.stderr


def test_rebuild_index(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/biden", "groups"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    state = tmp_path / "state"
    (state / "faces.hnsw").write_bytes(b"garbage")
    before = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    result = run_cli("--config", str(config), "rebuild-index")
    assert result.returncode == 0, result.stderr
    assigned = before["faces"]["assigned"]
    assert result.stdout.strip() == f"index rebuilt: {assigned} faces"
    after = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert after["index"] == {"faces": assigned, "stale": False}
    # every command keeps the same books: a cycle record of its kind; `status` shows the last sync
    assert after["last_sync"]["kind"] == "sync"
    import sqlite3

    with sqlite3.connect(state / "facesyncd.db") as connection:
        kinds = connection.execute("SELECT kind, ok FROM cycles ORDER BY id").fetchall()
    assert kinds == [("sync", 1), ("rebuild-index", 1)]


@pytest.mark.parametrize("command", ["status", "retry", "rebuild-index"])
def test_local_commands_before_any_sync_say_so_and_create_nothing(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    result = run_cli("--config", str(config), command)
    assert result.returncode == 6 and "run `facesyncd sync` first" in result.stderr, result.stderr
    assert not (tmp_path / "state" / "facesyncd.db").exists()


@pytest.mark.parametrize("immich_version", ["2.7.5"])
def test_sync_against_immich_2(fake: FakeImmich, tmp_path: Path) -> None:
    ids = add_photos(fake, ["wild/obama", "wild/jack_dorsey", "noface"])
    config = write_config(tmp_path, fake.url)
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["assets"] == asset_states(done=len(ids))
    assert status["identities"] == 2


def test_parked_assets_are_listed_and_retried_only_on_request(fake: FakeImmich, tmp_path: Path) -> None:
    broken = fake.add_asset("alice", b"\xff\xd8\xff\xe0 not really a jpeg", "broken.jpg")
    config = write_config(tmp_path, fake.url, sync="max_attempts = 2")
    for _ in range(2):
        assert run_cli("--config", str(config), "sync").returncode == 0
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["assets"] == asset_states(parked=1)
    [problem] = status["problems"]
    assert problem["asset_id"] == broken and problem["attempts"] == 2
    assert problem["reason"].startswith("original: cannot decode image") and "no preview: " in problem["reason"]
    assert "parked: alice/" in run_cli("--config", str(config), "status").stdout
    downloads = fake.count("GET", f"/api/assets/{broken}/original")
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert fake.count("GET", f"/api/assets/{broken}/original") == downloads
    result = run_cli("--config", str(config), "retry")
    assert result.returncode == 0 and result.stdout.strip() == "1 assets queued for retry"
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert fake.count("GET", f"/api/assets/{broken}/original") == downloads + 1


def test_a_port_out_of_range_and_a_state_dir_that_is_a_file_are_config_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:99999")
    (tmp_path / "state").write_text("a file, not a folder")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 2, result.stderr
    assert "immich[0].url: must be an http:// or https:// URL with a host" in result.stderr
    assert f"state_dir: {tmp_path / 'state'} exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["bogus"], "No such command 'bogus'"),
        (["sync", "--bogus"], "No such option: --bogus"),
        (["--log-level", "nope", "status"], "unknown log level 'nope'"),
        (["import-facesets"], "Missing argument"),
    ],
    ids=["command", "option", "value", "argument"],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], says: str) -> None:
    """typer 0.29 raises its own (vendored) click errors, which main() did not catch: a traceback, exit 1."""
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facesyncd: error: ") and says in lines[0], result.stderr


def test_facesyncd_alone_shows_its_commands() -> None:
    result = run_cli()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Usage: facesyncd" in result.stderr and "sync" in result.stderr and "init" in result.stderr


def test_help_keeps_the_config_sections_it_names() -> None:
    """Rich markup swallowed "[schedule]" from `run --help`."""
    result = run_cli("run", "--help")
    assert result.returncode == 0 and "[schedule] poll_seconds" in result.stdout


def test_init_writes_a_config_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facesyncd.config import load_settings

    config = tmp_path / "conf" / "config.toml"
    result = run_cli(
        "--config", str(config), "init", "--url", "https://photos.example.org/", "--api-key-env", API_KEY_ENV,
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {config}" in result.stdout and "sync" in result.stdout
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    settings = load_settings(config)
    assert settings.immich[0].url == "https://photos.example.org" and settings.state_dir == tmp_path / "state"
    assert settings.facesets_dir == tmp_path / "state" / "facesets"
    again = run_cli("--config", str(config), "init", "--url", "https://x.example", "--api-key-env", "X")
    assert again.returncode == 2 and "exists" in again.stderr
    assert "photos.example.org" in config.read_text(), "an existing config was overwritten"
    bare = run_cli("--config", str(tmp_path / "other.toml"), "init")
    assert bare.returncode == 2 and "init needs --url" in bare.stderr


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "geteuid"), reason="POSIX owners")
def test_admin_commands_run_as_root_leave_the_service_users_files_to_it(fake: FakeImmich, tmp_path: Path) -> None:
    """The service runs as its own user; `sudo facesyncd ...` left root-owned files (the database's
    -wal and -shm, the index, crops) that the service could then not open."""
    if os.geteuid() != 0:
        pytest.skip("only root can run as root: this test needs the suite to run as root (CI does)")
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    service = 65534
    for folder in (tmp_path / "state", tmp_path / "facesets"):
        for root, directories, files in os.walk(folder):
            for name in [root, *(os.path.join(root, entry) for entry in directories + files)]:
                os.chown(name, service, service, follow_symlinks=False)
    fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")  # new crops, a new folder
    for command in (["sync"], ["retry"], ["rebuild-index"]):
        result = run_cli("--config", str(config), *command)
        assert result.returncode == 0, result.stderr
    owners = {
        os.path.join(root, name): os.lstat(os.path.join(root, name)).st_uid
        for folder in (tmp_path / "state", tmp_path / "facesets")
        for root, directories, files in os.walk(folder)
        for name in directories + files
    }
    assert len(owners) > 10
    assert {path: uid for path, uid in owners.items() if uid != service} == {}


class Nobody:
    """facesyncd run as another user (nobody) in a folder both can reach: pytest's own temporary
    folders are private to root."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "facesyncd"]
        environment = {**os.environ, API_KEY_ENV: API_KEY}
        return subprocess.run([*command, *arguments], capture_output=True, text=True, check=False, env=environment)


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    if sys.platform == "win32" or not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("being another user needs root and setpriv: run the suite as root (CI does)")
    base = Path(tempfile.mkdtemp(prefix="facesyncd-another-user-"))
    base.chmod(0o755)
    try:
        user = Nobody(base)
        if user.run("--version").returncode != 0:
            pytest.skip("another user cannot run this checkout's Python (its folders are private)")
        yield user
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("command", [["status"], ["sync"], ["status", "--json"]])
def test_a_state_dir_this_user_cannot_enter_is_one_line_and_exit_8(
    fake: FakeImmich, nobody: Nobody, command: list[str]
) -> None:
    """A user's `status` on a host running the service (DynamicUser keeps /var/lib/private at 0700)
    printed a 66-line traceback and exited 1."""
    (nobody.base / "state").mkdir(mode=0o700)  # the service's, root's here
    config = write_config(nobody.base, fake.url)
    config.chmod(0o644)
    result = nobody.run("--config", str(config), *command)
    assert result.returncode == 8, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facesyncd: error:"), result.stderr
    assert str(nobody.base / "state") in lines[0] and "Traceback" not in result.stderr
    if command[0] == "status":  # a reader: how to look
        assert f"may not enter {nobody.base / 'state'} (it belongs to root" in lines[0] and "sudo" in lines[0]


def test_another_users_status_on_a_readable_state_says_what_sqlite_needs(fake: FakeImmich, nobody: Nobody) -> None:
    """root's state_dir (0755) read by a user: SQLite answered "unable to open database file", exit 6,
    and nothing more (it needs to write beside a WAL database even to read it)."""
    config = write_config(nobody.base, fake.url)
    config.chmod(0o644)
    assert run_cli("--config", str(config), "sync").returncode == 0
    result = nobody.run("--config", str(config), "status")
    assert result.returncode == 6, result.stderr
    lines = result.stderr.strip().splitlines()
    state = nobody.base / "state"
    assert len(lines) == 1 and f"may not write in {state} (it belongs to root" in lines[0], result.stderr
    assert "sudo" in lines[0]


def test_a_url_ending_in_api_is_immichs_address_too(fake: FakeImmich, tmp_path: Path) -> None:
    """Immich's own CLI asks for the URL with /api: facesyncd answered `404 Cannot GET /api/api/users/me`."""
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, f"{fake.url}/api/")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert fake.requests and not [path for _, path, _ in fake.requests if "/api/api/" in path]


def test_facesyncds_own_options_work_after_the_command_too(fake: FakeImmich, tmp_path: Path) -> None:
    """`facesyncd sync --config x` said "No such option"."""
    from facesyncd.cli import global_options_first

    config = write_config(tmp_path, fake.url)
    assert run_cli("sync", "--config", str(config), "--log-level", "warning").returncode == 0
    before = run_cli("--config", str(config), "status", "--json")
    after = run_cli("status", "--json", f"--config={config}")
    shortly = run_cli("status", "-c", str(config), "--json")
    assert before.returncode == after.returncode == shortly.returncode == 0, after.stderr
    assert json.loads(after.stdout)["sources"] == json.loads(before.stdout)["sources"]
    assert json.loads(shortly.stdout)["sources"] == json.loads(before.stdout)["sources"]
    # after `--` everything is an argument
    assert global_options_first(["faceset", "name", "3", "--", "--debug"]) == ["faceset", "name", "3", "--", "--debug"]


def test_serve_on_a_busy_port_is_one_line_and_its_own_exit_code(fake: FakeImmich, tmp_path: Path) -> None:
    """`serve` printed "serving ... on" and then exited 3, the code of a refused API key."""
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--config", str(config), "serve", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 10, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--listen" in lines[0], result.stderr
    assert "serving" not in result.stdout


def test_a_dead_server_is_said_once(tmp_path: Path) -> None:
    """The error was logged by the cycle and printed again as the command's last line."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    config = write_config(tmp_path, f"http://127.0.0.1:{port}")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("Connection refused") == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("facesyncd: error: alice:")


def test_the_daemons_queued_jobs_are_not_a_warning_every_2_seconds() -> None:
    """`run` logged apscheduler's "skipped: maximum number of running instances" every 2 s of a cycle."""
    import io
    import logging

    from facesyncd.logs import setup_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(logging.INFO, "text")
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        scheduler = logging.getLogger("apscheduler.scheduler")
        scheduler.warning(
            'Execution of job "Daemon._apply_corrections (trigger: interval[0:00:02], next run at: 2026-12-02)" '
            "skipped: maximum number of running instances reached (1)"
        )
        scheduler.warning("Run time of job was missed by 0:00:03")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert "maximum number of running instances" not in stream.getvalue()
    assert "was missed by" in stream.getvalue()


def test_the_services_config_serves_the_admins_commands_too(fake: FakeImmich, tmp_path: Path) -> None:
    """The README's systemd recipe: the key in /etc/facesyncd/keys/immich-alice, passed to the unit by
    LoadCredential= and named `api_key_file = "immich-alice"`. `sudo facesyncd sync --reconcile` with the
    same config exited 2 (outside the unit $CREDENTIALS_DIRECTORY is unset); a root quick start's
    `alice.key` beside the config was looked for in the unit's credentials only."""
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "facesyncd.service").read_text()
    [credential] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LoadCredential=")]
    name, source = credential.split(":", 1)
    assert (name, source) == ("immich-alice", "/etc/facesyncd/keys/immich-alice"), "the recipe changed"
    add_photos(fake, ["wild/obama"])
    etc = tmp_path / "etc"
    (etc / "keys").mkdir(parents=True)
    (etc / "keys" / "immich-alice").write_text(API_KEY + "\n")
    (etc / "keys" / "immich-alice").chmod(0o600)
    sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_file = "immich-alice"\n'
    config = write_config(tmp_path / "run", fake.url, sources=sources)
    config = config.rename(etc / "config.toml")
    credentials = tmp_path / "credentials"  # what systemd makes of LoadCredential=immich-alice:...
    credentials.mkdir()
    (credentials / "immich-alice").write_text(API_KEY + "\n")
    service = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert run_cli("--config", str(config), "sync", env=service).returncode == 0
    admin: dict[str, str] = {}
    for command in (["status"], ["sync", "--reconcile"], ["retry"], ["rebuild-index"], ["faceset", "list"]):
        result = run_cli("--config", str(config), *command, env=admin)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    # the root quick start: init wrote the key beside the config; the unit's credentials lack it
    (etc / "keys" / "immich-alice").rename(etc / "alice.key")
    config.write_text(config.read_text().replace('"immich-alice"', '"alice.key"'))
    assert run_cli("--config", str(config), "sync", env=service).returncode == 0
    # a key found nowhere: the places looked in are named
    config.write_text(config.read_text().replace('"alice.key"', '"bob.key"'))
    missing = run_cli("--config", str(config), "sync", env=admin)
    assert missing.returncode == 2 and "bob.key" in missing.stderr and "keys/" in missing.stderr


def test_history_with_no_corrections_says_so(fake: FakeImmich, tmp_path: Path) -> None:
    """`history` printed nothing at all: was that no corrections, or a broken command?"""
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    result = run_cli("--config", str(config), "history")
    assert result.returncode == 0 and result.stdout.startswith("no corrections yet"), result.stdout
    assert json.loads(run_cli("--config", str(config), "history", "--json").stdout) == []
