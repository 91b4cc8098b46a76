"""Where each incremental listing starts (the watermark): what an idle cycle costs after an upload
burst, and a server clock that was put right."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import PHOTOS, requires_shared, run_cli, write_config
from facesyncd.immich import next_watermark
from fake_immich import FakeImmich

pytestmark = requires_shared


def _state(tmp_path: Path, asset_id: str) -> str:
    with sqlite3.connect(tmp_path / "state" / "facesyncd.db") as database:
        return str(database.execute("SELECT state FROM assets WHERE asset_id = ?", (asset_id,)).fetchone()[0])


def test_an_idle_cycle_after_a_burst_lists_one_page_not_the_burst(fake: FakeImmich, tmp_path: Path) -> None:
    """A phone backup of 20,000 assets an hour ago (here: videos, never downloaded), listed 1,000 a
    page, dozens of them stamped in one millisecond. The mark stayed "newest updatedAt seen minus
    the overlap", so every idle cycle listed the whole burst again: 22 requests instead of 2, for
    ever."""
    fake.clock_offset = -timedelta(hours=1)
    for number in range(20_000):
        fake.add_asset("alice", f"clip {number}".encode(), f"clip{number}.mp4", type="VIDEO")
    fake.clock_offset = timedelta(0)
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    for _ in range(2):  # idle cycles: the second one starts where the first left the mark
        before = len(fake.requests)
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
        asked = [(method, path) for method, path, _ in fake.requests[before:]]
        assert asked == [("GET", "/api/users/me"), ("POST", "/api/search/metadata")], asked


def test_a_server_clock_put_right_makes_no_photo_wait_for_the_daily_listing(
    fake: FakeImmich, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Immich's clock ran a day ahead (updates stamped in the future), then was put right: the mark
    stayed a day ahead, and photos added meanwhile waited for the daily full listing."""
    fake.clock_offset = timedelta(days=1)
    fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama.jpg")
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    fake.clock_offset = timedelta(0)
    newcomer = fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert _state(tmp_path, newcomer) == "done"
    assert "ahead of Immich's clock" in result.stderr
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    watermark = datetime.fromisoformat(status["sources"][0]["watermark"].replace("Z", "+00:00"))
    assert watermark <= datetime.now(UTC)


def test_the_mark_passes_a_burst_only_when_the_clocks_agree() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    burst = now - timedelta(hours=1)
    # the server's clock agrees with this machine's: a burst an hour ago is passed
    assert next_watermark(None, now, burst, 300, local_now=now) == "2026-11-30T11:00:00.001Z"
    # a burst within the overlap: the mark stays the overlap behind the server's clock
    assert next_watermark(None, now, now - timedelta(seconds=10), 300, local_now=now) == "2026-11-30T11:55:00.000Z"
    # a Date header a day ahead of this machine: trusted by neither, the mark stays behind the newest
    ahead = now + timedelta(days=1)
    assert next_watermark(None, ahead, now, 300, local_now=now) == "2026-11-30T11:55:00.000Z"
    assert next_watermark(None, ahead, burst, 300, local_now=now) == "2026-11-30T10:55:00.000Z"
    # never before the previous mark; a sweep that saw nothing keeps it
    assert next_watermark("2026-11-30T11:58:00.000Z", now, burst, 300, local_now=now) == "2026-11-30T11:58:00.000Z"
    assert next_watermark("2026-11-30T10:00:00.000Z", now, None, 300, local_now=now) == "2026-11-30T10:00:00.000Z"


def test_an_update_time_of_year_one_breaks_no_sync(fake: FakeImmich, tmp_path: Path) -> None:
    """A listed updatedAt of 0001-01-01 made the watermark arithmetic overflow: every later sync
    failed with an OverflowError traceback."""
    odd = fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama.jpg")
    fake.assets[odd].updated_at = datetime(1, 1, 1, tzinfo=UTC)
    config = write_config(tmp_path, fake.url)
    for _ in range(2):
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
    assert _state(tmp_path, odd) == "done"
    fake.clock_offset = timedelta(days=1)  # a Date header a day ahead: the cautious mark, no overflow
    assert run_cli("--config", str(config), "sync", "--reconcile").returncode == 0
