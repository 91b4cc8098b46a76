"""`facesyncd run` as a real process against the fake Immich: polling, signals, limits, notify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import (
    API_KEY,
    API_KEY_ENV,
    PHOTOS,
    REPO,
    add_photos,
    free_port,
    requires_shared,
    run_cli,
    write_config,
)
from fake_immich import FakeImmich

pytestmark = requires_shared


def daemon_config(
    directory: Path, url: str, *, poll: float = 0.5, cluster: float = 1.0, grace: float = 8, sweep: float = 15
) -> Path:
    config = write_config(directory, url)
    config.write_text(
        config.read_text()
        + f"[schedule]\npoll_seconds = {poll}\ncluster_seconds = {cluster}\nreconcile_seconds = 3600\n"
        + f"stop_grace_seconds = {grace}\nsweep_minutes = {sweep}\n"
    )
    return config


# Ends a wait that would hang (the test's failure): far longer than any of these waits takes on a
# loaded machine, and no measure of speed.
GUARD_SECONDS = 300


class Daemon:
    """A `facesyncd run` process with its log in a file."""

    def __init__(self, config: Path, log: Path, *, env: dict[str, str] | None = None, args: tuple = ()) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "facesyncd", "--config", str(config), *args, "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, API_KEY_ENV: API_KEY, **(env or {})},
            cwd=REPO,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until `predicate` holds. GUARD_SECONDS only ends a wait that would hang."""
        started = time.monotonic()
        while time.monotonic() - started < GUARD_SECONDS:
            if predicate():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}) waiting for {what}:\n{self.log}")
            time.sleep(0.1)
        raise AssertionError(f"still waiting after {GUARD_SECONDS}s for {what}:\n{self.log[-3000:]}")

    def polls(self) -> int:
        return self.log.count("poll: listed")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(GUARD_SECONDS)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


def faceset_assets(root: Path) -> dict[int, set[str]]:
    result = {}
    for manifest in root.glob("faceset_*/faceset.json"):
        data = json.loads(manifest.read_text())
        result[data["number"]] = {face["asset_id"] for face in data["faces"]}
    return result


def test_new_photos_appear_within_one_poll_interval(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    add_photos(fake, ["wild/obama"])
    config = daemon_config(tmp_path, fake.url, poll=1.0, cluster=1.0)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    root = tmp_path / "facesets"
    daemon.wait_for(lambda: len(faceset_assets(root)) == 1, "the first faceset")
    # a known person's new photo: assigned by the next poll, no clustering needed
    polls = daemon.polls()
    newcomer = fake.add_file("alice", PHOTOS / "edge" / "obama_partial_face.jpg")
    daemon.wait_for(lambda: newcomer in faceset_assets(root).get(1, set()), "the new photo")
    # polls that listed before it was added (one under way, one starting) miss it; the next takes it
    assert daemon.polls() - polls <= 3, f"the new photo took {daemon.polls() - polls} polls"
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["daemon"]["pid"] == daemon.process.pid
    assert status["daemon"]["next_poll_at"] and status["daemon"]["started_at"]
    assert status["backlog"] == 0 and status["providers"] == ["CPUExecutionProvider"]
    assert status["faces_per_second"] > 0
    assert daemon.terminate() == 0
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["daemon"] is None


def test_sigterm_mid_cycle_exits_fast_and_the_next_start_finishes_without_duplicates(
    fake: FakeImmich, tmp_path: Path, daemons: list
) -> None:
    labels = add_photos(fake, ["wild/katy_perry", "wild/matt_damon", "wild/jack_dorsey", "groups"])
    fake.slow_seconds = 0.15  # every GET: the cycle takes several seconds
    config = daemon_config(tmp_path / "killed", fake.url, poll=60, cluster=60)
    first = Daemon(config, tmp_path / "first.log")
    daemons.append(first)
    database = tmp_path / "killed" / "state" / "facesyncd.db"

    def some_done() -> bool:
        # The store links its database into place only once migrated; a reader may still open it
        # while the daemon holds a write lock, so a busy database counts as "not yet".
        if not database.exists():
            return False
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
                return connection.execute("SELECT COUNT(*) FROM assets WHERE state = 'done'").fetchone()[0] >= 3
        except sqlite3.OperationalError as error:
            assert "no such table" not in str(error), "a database file without its schema was visible"
            return False

    first.wait_for(some_done, "a few assets processed")
    assert first.terminate() == 0, first.log
    with sqlite3.connect(database) as connection:
        done = connection.execute("SELECT COUNT(*) FROM assets WHERE state = 'done'").fetchone()[0]
    assert 0 < done < len(labels), "the stop should have come mid-cycle"
    # the next start finishes the work
    fake.slow_seconds = 0
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    # ... and ends where an uninterrupted run ends
    clean = run_cli("--config", str(daemon_config(tmp_path / "clean", fake.url)), "sync")
    assert clean.returncode == 0, clean.stderr

    def summary(base: Path) -> tuple:
        with sqlite3.connect(base / "state" / "facesyncd.db") as connection:
            faces = connection.execute(
                "SELECT a.asset_id, COUNT(f.id) FROM assets a JOIN faces f ON f.sha256 = a.sha256 "
                "GROUP BY a.asset_id ORDER BY a.asset_id"
            ).fetchall()
            states = connection.execute("SELECT state, COUNT(*) FROM assets GROUP BY state").fetchall()
        groups = sorted(sorted(assets) for assets in faceset_assets(base / "facesets").values())
        return faces, states, groups

    assert summary(tmp_path / "killed") == summary(tmp_path / "clean")
    crops = list((tmp_path / "killed" / "state" / "crops").glob("*/*"))
    assert all(path.suffix == ".jpg" for path in crops), "temporary crop files were left behind"
    assert not list((tmp_path / "killed" / "state" / "tmp").iterdir()), "partial downloads were left behind"


def test_a_second_daemon_is_refused_while_status_and_rebuild_work(
    fake: FakeImmich, tmp_path: Path, daemons: list
) -> None:
    add_photos(fake, ["wild/obama", "wild/biden"])
    config = daemon_config(tmp_path, fake.url, poll=0.5)
    first = Daemon(config, tmp_path / "first.log")
    daemons.append(first)
    first.wait_for(lambda: first.polls() >= 2, "two polls")
    second = subprocess.run(
        [sys.executable, "-m", "facesyncd", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
        cwd=REPO,
        env={**os.environ, API_KEY_ENV: API_KEY},
    )
    assert second.returncode == 7
    assert f"another facesyncd process (pid {first.process.pid})" in second.stderr
    assert run_cli("--config", str(config), "sync").returncode == 7
    assert run_cli("--config", str(config), "status").returncode == 0
    for _ in range(3):
        assert run_cli("--config", str(config), "rebuild-index").returncode == 0
    polls = first.polls()
    first.wait_for(lambda: first.polls() >= polls + 2, "polls after the rebuilds")
    assert "Traceback" not in first.log and "ERROR" not in first.log
    assert first.terminate() == 0


def _usage(pid: int) -> tuple[int, int]:
    """Resident memory in kB and open descriptors of a process (Linux /proc)."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read memory and descriptors")
def test_memory_and_descriptors_stay_flat_over_idle_cycles(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    add_photos(fake, ["wild/obama", "wild/biden"])
    config = daemon_config(tmp_path, fake.url, poll=0.05, cluster=0.3)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    daemon.wait_for(lambda: daemon.polls() >= 20, "20 polls")
    rss_before, fds_before = _usage(daemon.process.pid)
    daemon.wait_for(lambda: daemon.polls() >= 220, "220 polls")
    rss_after, fds_after = _usage(daemon.process.pid)
    # Measured here: RSS grew by 0.8 MB over the first 200 idle cycles and by 0.06 MB over the next
    # 200; descriptors stayed at 11. The bounds leave room for allocator noise, not for a leak.
    assert rss_after - rss_before < 16 * 1024, f"RSS grew {rss_before} -> {rss_after} kB over 200 cycles"
    assert fds_after <= fds_before + 2, f"descriptors grew {fds_before} -> {fds_after}"
    assert daemon.terminate() == 0


def test_systemd_notify_ready_watchdog_and_stopping(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        config = daemon_config(tmp_path, fake.url, poll=5)
        daemon = Daemon(config, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
        daemons.append(daemon)
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert "READY=1" in messages[0] and f"MAINPID={daemon.process.pid}" in messages[0]
        assert "STATUS=polling 1 source(s)" in messages[0]
        daemon.process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        assert daemon.process.wait(15) == 0


def test_sighup_reloads_the_config_or_keeps_the_old_one(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    config = daemon_config(tmp_path, fake.url, poll=0.3)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    daemon.wait_for(lambda: daemon.polls() >= 1, "the first poll")
    good = config.read_text()
    config.write_text(good + "\n[identities]\nmatch_distance = 0.40\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "config reloaded from" in daemon.log, "the reload")
    config.write_text(good + "\nnot_a_key = 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "config not reloaded, keeping the running one" in daemon.log, "the refusal")
    polls = daemon.polls()
    daemon.wait_for(lambda: daemon.polls() > polls, "a poll after the refusal")
    assert daemon.terminate() == 0


def test_json_logs_one_object_per_line(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    config = daemon_config(tmp_path, fake.url, poll=0.3)
    daemon = Daemon(config, tmp_path / "daemon.log", args=("--log-format", "json"))
    daemons.append(daemon)
    daemon.wait_for(lambda: '"poll: listed' in daemon.log, "a poll line")
    assert daemon.terminate() == 0
    entries = [json.loads(line) for line in daemon.log.splitlines() if line.strip()]
    polls = [entry for entry in entries if entry["message"].startswith("poll:")]
    # the first poll is a full listing: /users/me, one page, and the count the census starts from
    assert polls and polls[0]["cycle"]["requests"] == 3 and polls[0]["level"] == "info"
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)


def test_no_timestamps_under_systemd(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    config = daemon_config(tmp_path, fake.url, poll=0.3)
    daemon = Daemon(config, tmp_path / "daemon.log", env={"JOURNAL_STREAM": "8:12345"})
    daemons.append(daemon)
    daemon.wait_for(lambda: "poll: listed" in daemon.log, "a poll line")
    assert daemon.terminate() == 0
    assert all(line.startswith(("INFO ", "WARNING ", "ERROR ")) for line in daemon.log.splitlines() if line)


UNIT = REPO / "systemd" / "facesyncd.service"

# The directives the unit may use, per section: an unknown or misspelt one fails the parse below.
KNOWN = {
    "Unit": {"Description", "Documentation", "Wants", "After", "Requires"},
    "Service": {
        "Type",
        "NotifyAccess",
        "ExecStart",
        "ExecReload",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "TimeoutStartSec",
        "TimeoutStopSec",
        "WatchdogSec",
        "DynamicUser",
        "StateDirectory",
        "StateDirectoryMode",
        "UMask",
        "LoadCredential",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "ReadWritePaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "CapabilityBoundingSet",
        "PrivateDevices",
        "Environment",
    },
    "Install": {"WantedBy"},
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current in KNOWN, f"line {number}: unknown section {current}"
            sections[current] = {}
            continue
        assert current is not None and "=" in line, f"line {number}: not a Key=Value line: {line}"
        key, value = line.split("=", 1)
        assert key in KNOWN[current], f"line {number}: unknown key {key} in [{current}]"
        sections[current].setdefault(key, []).append(value)
    return sections


def test_the_unit_file_parses_with_the_expected_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == ["notify"] and service["Restart"] == ["on-failure"]
    # exits that waiting cannot fix are not restarted: config, API key, model pack, lost database
    from facesyncd.errors import ConfigError, ImmichAuthError, ModelError, OrphanedFacesets

    codes = {error.exit_code for error in (ConfigError, ImmichAuthError, ModelError, OrphanedFacesets)}
    assert set(map(int, service["RestartPreventExitStatus"][0].split())) == codes
    assert service["ExecStart"][0].startswith("/") and service["ExecStart"][0].endswith(" run")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["DynamicUser"] == ["yes"] and service["StateDirectory"] == ["facesyncd"]
    assert service["LoadCredential"] and service["ReadWritePaths"]
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables", "PrivateDevices"):
        assert service[key] == ["yes"]
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["read-only"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed; parsed above")
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify needs ExecStart's binary to exist: point it at this checkout's facesyncd
    executable = Path(sys.executable).with_name("facesyncd")
    unit = tmp_path / "facesyncd.service"
    unit.write_text(UNIT.read_text().replace("/opt/facesyncd/.venv/bin/facesyncd", str(executable)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_first_cycle_opens_facesets_at_once(fake: FakeImmich, tmp_path: Path, daemons: list) -> None:
    """`run` opened no faceset for cluster_seconds (15 minutes by default) although it syncs at once:
    its first cycle is a whole one now, and `status` says when the next clustering is due."""
    add_photos(fake, ["wild/obama"])
    config = daemon_config(tmp_path, fake.url, poll=1.0, cluster=3600)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    root = tmp_path / "facesets"
    daemon.wait_for(lambda: len(faceset_assets(root)) == 1, "the first faceset, before any clustering job")
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    due = status["daemon"]["next_cluster_at"]
    assert due and due > status["daemon"]["started_at"]
    assert "next clustering" in run_cli("--config", str(config), "status").stdout
    code = daemon.terminate()
    assert code == 0


def test_the_sweep_job_finds_a_force_delete_long_before_the_next_poll_or_reconcile(
    fake: FakeImmich, tmp_path: Path, daemons: list
) -> None:
    """A force delete that skipped the trash is in no incremental listing: the daemon's sweep job
    (every sweep_minutes) counts Immich's assets and lists the whole library when they differ."""
    photos = add_photos(fake, ["wild/obama"])
    fake.force_delete_seconds = 0.0
    config = daemon_config(tmp_path, fake.url, poll=3600, cluster=3600, sweep=0.02)  # a sweep every 1.2 s
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    root = tmp_path / "facesets"
    daemon.wait_for(lambda: faceset_assets(root) and set().union(*faceset_assets(root).values()), "a faceset")
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["daemon"]["next_sweep_at"] < status["daemon"]["next_poll_at"]
    gone = next(iter(set().union(*faceset_assets(root).values())))
    assert gone in photos
    fake.force_delete(gone)
    daemon.wait_for(lambda: gone not in set().union(set(), *faceset_assets(root).values()), "the deletion")
    assert "listing the whole library now" in daemon.log
    assert daemon.terminate() == 0


def test_corrections_while_the_daemon_runs_reach_the_folders_within_seconds(
    fake: FakeImmich, tmp_path: Path, daemons: list
) -> None:
    """A command and the review page (served by `run` itself) correct while the daemon holds the
    state directory: both are saved at once and in the folders within seconds, long before the
    next poll."""
    import re

    import requests

    labels = add_photos(fake, ["wild/angelina_jolie", "wild/katy_perry", "wild/matt_damon"])
    port = free_port()
    config = daemon_config(tmp_path, fake.url, poll=600, cluster=600)
    config.write_text(config.read_text() + f'[web]\nlisten = "127.0.0.1:{port}"\n')
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    root = tmp_path / "facesets"
    daemon.wait_for(lambda: len(faceset_assets(root)) == 3, "the first facesets")
    people = {
        number: {labels[asset].split("/")[1] for asset in assets} for number, assets in faceset_assets(root).items()
    }
    katy = next(number for number, who in people.items() if who == {"katy_perry"})
    matt = next(number for number, who in people.items() if who == {"matt_damon"})

    named = run_cli("--config", str(config), "faceset", "name", str(katy), "Katy Perry")
    assert named.returncode == 0 and "running facesyncd updates the folders" in named.stdout, named.stdout
    manifest = root / f"faceset_{katy:03d}" / "faceset.json"
    daemon.wait_for(lambda: json.loads(manifest.read_text()).get("name") == "Katy Perry", "the name in the folder")

    page = requests.get(f"http://127.0.0.1:{port}/faceset/{katy}", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    merged = requests.post(
        f"http://127.0.0.1:{port}/act/merge",
        data={"csrf": csrf, "number": katy, "others": str(matt), "back": f"/faceset/{katy}"},
        timeout=GUARD_SECONDS,
    )
    assert merged.status_code == 200 and "the running facesyncd updates the folders" in merged.text
    daemon.wait_for(lambda: not (root / f"faceset_{matt:03d}").exists(), "the merged folder to go")
    assert {labels[asset].split("/")[1] for asset in faceset_assets(root)[katy]} == {"katy_perry", "matt_damon"}
    assert daemon.polls() == 1, "a poll, not the corrections, brought the change"
    code = daemon.terminate()
    assert code == 0
    assert "Traceback" not in daemon.log and "locked" not in daemon.log, daemon.log
