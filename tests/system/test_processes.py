"""What only a real facesyncd process shows: signals, a terminal, the interpreter's imports, the
capabilities root drops."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import API_KEY, API_KEY_ENV, REPO, add_photos, requires_shared, wait_until, write_config
from fake_immich import FakeImmich

pytestmark = requires_shared


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
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
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


def _wait_for_request(fake: FakeImmich, prefix: str) -> None:
    wait_until(lambda: fake.count("GET", prefix) > 0, f"a request to {prefix}")


def _stop(fake: FakeImmich, process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    """Once the sync downloads, send `signum`: (exit code, stderr). The process must end well before
    its slow request would (minutes at least): the generous wait is a guard against a hang, not a
    measure of speed."""
    try:
        _wait_for_request(fake, "/api/assets/")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=STOP_GUARD_SECONDS)
        return process.returncode, stderr
    finally:
        process.kill()


# Far shorter than the slow requests of these tests (5 minutes and more), far longer than a stop
# takes on a loaded machine (a second or two).
STOP_GUARD_SECONDS = 120


def test_ctrl_c_on_sync_exits_130(fake: FakeImmich, tmp_path: Path) -> None:
    """typer turned the interrupt into Exit(130), which main() dropped: the exit code was 0."""
    import signal

    add_photos(fake, ["wild/obama", "wild/biden"])
    fake.slow_seconds = 0.3
    code, stderr = _stop(fake, _slow_sync(fake, tmp_path), signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("server", ["trickles", "is-silent"])
def test_sigterm_stops_sync_during_a_slow_download(fake: FakeImmich, tmp_path: Path, server: str) -> None:
    """A body trickled a byte every 2 s ran past 120 s with timeout_seconds = 5, and SIGTERM was
    ignored for over 60 s. Now a stop is seen at the next byte, and a silent server's request is
    broken off after stop_grace_seconds: both long before the request itself would end (a
    1,000-byte body at a byte per 2 s, or a server silent for 10 minutes read with a 5-minute
    timeout)."""
    import signal

    from fake_immich import Fault

    add_photos(fake, ["wild/obama"])
    fake.timeout_fault_seconds = 600
    if server == "trickles":
        fault = Fault("trickle", path_contains="/original", trickle_seconds=2, times=100)
    else:
        fault = Fault("timeout", path_contains="/original", times=100)
    fake.faults.append(fault)
    sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_env = "{API_KEY_ENV}"\ntimeout_seconds = 300\n'
    process = _slow_sync(fake, tmp_path, sources=sources, extra="[schedule]\nstop_grace_seconds = 1\n")
    code, stderr = _stop(fake, process, signal.SIGTERM)
    assert code == 130, stderr
    assert not list((tmp_path / "state" / "tmp").glob("download-*")), "a partial download was left"


def test_init_in_a_terminal_asks_and_keeps_the_key_private(tmp_path: Path) -> None:
    import os
    import pty
    import stat
    import termios

    config = tmp_path / "config.toml"
    pid, fd = pty.fork()
    if pid == 0:  # the child: facesyncd init on a terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "facesyncd", "--config", str(config), "init"])
    answers = [(b"Immich URL", b"http://immich.local:2283\n", False), (b"API key", (API_KEY + "\n").encode(), True)]

    def answer(output: bytes) -> bytes | None:
        if answers and answers[0][0] in output and output.endswith(b": "):
            _, typed, hidden = answers[0]
            if hidden and termios.tcgetattr(fd)[3] & termios.ECHO:
                return None  # the hidden prompt flushes what is typed before it turns echo off
            answers.pop(0)
            return typed
        return None

    output = _read_terminal(fd, answer)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert API_KEY.encode() not in output, "the key was echoed"
    key_file = tmp_path / "alice.key"
    assert key_file.read_text().strip() == API_KEY and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert 'api_key_file = "alice.key"' in config.read_text()
    assert API_KEY not in config.read_text()


def test_ctrl_c_while_the_command_line_loads_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C in the interpreter's first quarter second (while typer and the settings import) printed
    Python's own traceback (8 times in 30 tries). The interrupt is made to land there for sure: the
    child raises it when the command line imports typer."""
    probe = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'typer':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "sys.argv = ['facesyncd', 'status']\n"
        "import runpy\n"
        "runpy.run_module('facesyncd', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "facesyncd: interrupted\n", result.stderr


def _on_a_terminal(arguments: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run facesyncd with a terminal for its output (a pty); returns its exit code and what it drew."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 wide
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "facesyncd", *arguments], {**os.environ, **env})
    output = _read_terminal(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def _read_terminal(fd: int, answer: Callable[[bytes], bytes | None] | None = None) -> bytes:
    """What a child on the pty `fd` draws, until it closes the terminal (or the guard against a hang
    runs out); `answer` sees the output so far after each read and may type a line (its bytes)."""
    import os
    import select
    import time

    output = b""
    deadline = time.monotonic() + STOP_GUARD_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child is gone
                break
            if not chunk:
                break
            output += chunk
        typed = answer(output) if answer is not None else None
        if typed is not None:
            os.write(fd, typed)
            output += b"\n"
    return output


def test_progress_bars_finish_at_100_percent_and_log_lines_stay_out_of_them(fake: FakeImmich, tmp_path: Path) -> None:
    import re

    add_photos(fake, ["wild/obama", "wild/biden"])
    config = write_config(tmp_path, fake.url)
    code, drawn = _on_a_terminal(["--config", str(config), "sync"], {API_KEY_ENV: API_KEY})
    assert code == 0, drawn
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # terminal control sequences
    assert re.search(r"alice: processing: 100%\|[^\r\n]*\| 6/6", text), text[-3000:]
    assert re.search(r"assigning faces: 100%", text), text[-3000:]
    # every log line starts a line of its own: none is glued after a bar's text
    for match in re.finditer(r"(INFO|WARNING) facesyncd", text):
        start = text.rfind("\n", 0, match.start())
        line = text[start + 1 : match.start()].split("\r")[-1]
        assert re.fullmatch(r"[\d\- :,]*", line), f"a log line inside a bar: {line!r}"
    # import-facesets shows its progress too: here, the tree this sync wrote, into a new library
    other = write_config(tmp_path / "other", fake.url)
    code, drawn = _on_a_terminal(
        ["--config", str(other), "import-facesets", str(tmp_path / "facesets")], {API_KEY_ENV: API_KEY}
    )
    assert code == 0, drawn
    assert re.search(r"importing folders: 100%\|[^\r\n]*\| 1/1", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)), drawn[
        -2000:
    ]
