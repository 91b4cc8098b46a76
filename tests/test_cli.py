"""The CLI's errors: one clear line, a documented exit code, and never the API key."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    API_KEY,
    API_KEY_ENV,
    PHOTOS,
    REPO,
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


def test_status_imports_no_model_runtime_or_index_library(tmp_path: Path) -> None:
    """`status` must stay fast on a big library: it never loads onnxruntime, insightface or hnswlib,
    nor numpy (which sqlite_utils would bring: 60 ms of a 150 ms command)."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    from facesyncd.store import Store

    Store(tmp_path / "state" / "facesyncd.db").close()
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['facesyncd', '--config', {str(config)!r}, 'status', '--json']\n"
        "try:\n    runpy.run_module('facesyncd', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = ('onnxruntime', 'insightface', 'hnswlib', 'cv2', 'numpy')\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def _without_root_privileges() -> None:
    """For a child run as root: drop the capabilities that let root write where permissions forbid
    (after exec the process keeps only its bounding set), so a read-only folder is read-only to it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "facesyncd", *args],
        capture_output=True,
        text=True,
        env={**os.environ, API_KEY_ENV: API_KEY},
        timeout=120,
        cwd=REPO,
        preexec_fn=_without_root_privileges if os.geteuid() == 0 else None,
    )


@pytest.mark.parametrize("how", ["read-only", "foreign-owned"])
def test_a_state_dir_that_cannot_be_written_exits_8(fake: FakeImmich, tmp_path: Path, how: str) -> None:
    import os

    config = write_config(tmp_path, fake.url)
    state = tmp_path / "state"
    state.mkdir()
    if how == "read-only":
        state.chmod(0o555)
    elif os.geteuid() == 0:
        os.chown(state, 65534, 65534)
    else:  # a user cannot give a folder away: use one that root owns
        state = Path("/usr/share")
        config.write_text(config.read_text().replace(str(tmp_path / "state"), str(state)))
    try:
        result = run_unprivileged("--config", str(config), "sync")
    finally:
        (tmp_path / "state").chmod(0o755)
    assert result.returncode == 8, result.stderr
    assert f"cannot write in the state directory {state}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_out_of_range_and_a_state_dir_that_is_a_file_are_config_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:99999")
    (tmp_path / "state").write_text("a file, not a folder")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 2, result.stderr
    assert "immich[0].url: must be an http:// or https:// URL with a host" in result.stderr
    assert f"state_dir: {tmp_path / 'state'} exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def _slow_sync(fake: FakeImmich, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    import os

    config = write_config(tmp_path, fake.url, **extra)
    return subprocess.Popen(
        [sys.executable, "-m", "facesyncd", "--config", str(config), "sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, API_KEY_ENV: API_KEY},
        cwd=REPO,
    )


def _wait_for_request(fake: FakeImmich, prefix: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while fake.count("GET", prefix) == 0:
        assert time.monotonic() < deadline, f"no request to {prefix}"
        time.sleep(0.05)


def _stop(fake: FakeImmich, process: subprocess.Popen[str], signum: int, settle: float = 0) -> tuple[int, str, float]:
    """Once the sync downloads, wait `settle` seconds, send `signum`: (exit code, stderr, seconds to exit)."""
    import time

    try:
        _wait_for_request(fake, "/api/assets/")
        time.sleep(settle)
        started = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        return process.returncode, stderr, time.monotonic() - started
    finally:
        process.kill()


def test_ctrl_c_on_sync_exits_130(fake: FakeImmich, tmp_path: Path) -> None:
    """typer turned the interrupt into Exit(130), which main() dropped: the exit code was 0."""
    import signal

    add_photos(fake, ["wild/obama", "wild/biden"])
    fake.slow_seconds = 0.3
    code, stderr, seconds = _stop(fake, _slow_sync(fake, tmp_path), signal.SIGINT)
    assert code == 130, stderr
    assert seconds < 10
    assert "Traceback" not in stderr


@pytest.mark.parametrize("server", ["trickles", "is-silent"])
def test_sigterm_stops_sync_during_a_slow_download(fake: FakeImmich, tmp_path: Path, server: str) -> None:
    """A body trickled a byte every 2 s ran past 120 s with timeout_seconds = 5, and SIGTERM was
    ignored for over 60 s. Now a stop is seen at the next byte, and a silent server's request is
    broken off after stop_grace_seconds."""
    import signal

    from fake_immich import Fault

    add_photos(fake, ["wild/obama"])
    fake.timeout_fault_seconds = 60
    if server == "trickles":
        fault = Fault("trickle", path_contains="/original", trickle_seconds=2, times=100)
    else:
        fault = Fault("timeout", path_contains="/original", times=100)
    fake.faults.append(fault)
    sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_env = "{API_KEY_ENV}"\ntimeout_seconds = 30\n'
    process = _slow_sync(fake, tmp_path, sources=sources, extra="[schedule]\nstop_grace_seconds = 1\n")
    code, stderr, seconds = _stop(fake, process, signal.SIGTERM, settle=1)
    assert code == 130, stderr
    assert seconds < 5, "the stop waited for the download"
    assert not list((tmp_path / "state" / "tmp").glob("download-*")), "a partial download was left"


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


def test_init_in_a_terminal_asks_and_keeps_the_key_private(tmp_path: Path) -> None:
    import os
    import pty
    import select
    import stat
    import termios
    import time

    config = tmp_path / "config.toml"
    pid, fd = pty.fork()
    if pid == 0:  # the child: facesyncd init on a terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "facesyncd", "--config", str(config), "init"])
    output = b""
    answers = [(b"Immich URL", b"http://immich.local:2283\n", False), (b"API key", (API_KEY + "\n").encode(), True)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child is gone
                break
            if not chunk:
                break
            output += chunk
        if answers and answers[0][0] in output and output.endswith(b": "):
            _, answer, hidden = answers[0]
            if hidden and termios.tcgetattr(fd)[3] & termios.ECHO:
                continue  # the hidden prompt flushes what is typed before it turns echo off
            answers.pop(0)
            os.write(fd, answer)
            output += b"\n"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert API_KEY.encode() not in output, "the key was echoed"
    key_file = tmp_path / "alice.key"
    assert key_file.read_text().strip() == API_KEY and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert 'api_key_file = "alice.key"' in config.read_text()
    assert API_KEY not in config.read_text()


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(__import__("os"), "geteuid"), reason="POSIX owners")
def test_admin_commands_run_as_root_leave_the_service_users_files_to_it(fake: FakeImmich, tmp_path: Path) -> None:
    """The service runs as its own user; `sudo facesyncd ...` left root-owned files (the database's
    -wal and -shm, the index, crops) that the service could then not open."""
    import os

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
