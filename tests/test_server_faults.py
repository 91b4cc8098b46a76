"""Server faults at a rate, vanishing assets, a restart mid-sweep: nothing lost, nothing marked done early."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from conftest import API_KEY_ENV, add_photos, requires_shared, run_cli, write_config
from facesyncd.config import ImmichSettings, Secret, SyncSettings
from facesyncd.errors import ImmichUnreachable
from facesyncd.immich import ImmichClient
from fake_immich import FakeImmich, Fault

pytestmark = requires_shared


def sources(url: str, timeout: float = 1.0) -> str:
    return f'[[immich]]\nname = "alice"\nurl = "{url}"\napi_key_env = "{API_KEY_ENV}"\ntimeout_seconds = {timeout}\n'


def truth(fake: FakeImmich) -> dict[str, str]:
    return {asset.id: hashlib.sha256(asset.data).hexdigest() for asset in fake.assets.values()}


def done_assets(base: Path) -> dict[str, str]:
    with sqlite3.connect(base / "state" / "facesyncd.db") as connection:
        return dict(connection.execute("SELECT asset_id, sha256 FROM assets WHERE state = 'done'").fetchall())


def faces_by_asset(base: Path) -> dict[str, int]:
    with sqlite3.connect(base / "state" / "facesyncd.db") as connection:
        return dict(
            connection.execute(
                "SELECT a.asset_id, COUNT(f.id) FROM assets a LEFT JOIN faces f ON f.sha256 = a.sha256 "
                "WHERE a.state = 'done' GROUP BY a.asset_id"
            ).fetchall()
        )


def test_thirty_percent_failing_requests_still_process_every_asset(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/katy_perry", "groups/two_people.jpg", "noface/denali.webp"])
    add_photos(fake, ["noface/cyclamen_persicum.jpg", "edge/32bit.png"])
    reference = write_config(tmp_path / "reference", fake.url)
    assert run_cli("--config", str(reference), "sync").returncode == 0

    config = write_config(tmp_path / "faulty", fake.url, sources=sources(fake.url), sync="page_size = 4")
    fake.fault_rate = 0.3
    fake.timeout_fault_seconds = 1.5
    outcomes = []
    for _ in range(10):
        result = run_cli("--config", str(config), "sync")
        outcomes.append(result.returncode)
        assert result.returncode in (0, 4), result.stderr  # 4: a request failed all its retries
        # whatever happened, nothing is marked done unless its bytes are exactly the server's
        expected = truth(fake)
        for asset_id, sha256 in done_assets(tmp_path / "faulty").items():
            assert sha256 == expected[asset_id]
        if result.returncode == 0 and len(done_assets(tmp_path / "faulty")) == len(fake.assets):
            break
    fake.fault_rate = 0
    assert len(done_assets(tmp_path / "faulty")) == len(fake.assets), f"cycles: {outcomes}"
    assert faces_by_asset(tmp_path / "faulty") == faces_by_asset(tmp_path / "reference")
    kinds = {served.split(":")[0] for served in fake.faults_served}
    assert kinds == {"status", "reset", "timeout", "truncate"}, fake.faults_served
    assert len(fake.faults_served) >= 10


@pytest.mark.parametrize("prefilter", [True, False], ids=["gone-at-faces-400", "gone-at-download-404"])
def test_an_asset_deleted_between_listing_and_download(fake: FakeImmich, tmp_path: Path, prefilter: bool) -> None:
    ids = list(add_photos(fake, ["wild/obama"]))
    victim = ids[1]

    def vanish(path: str) -> None:
        if victim in path and victim in fake.assets:
            fake.delete(victim)

    fake.on_request = vanish
    config = write_config(tmp_path, fake.url, faces=f"prefilter = {str(prefilter).lower()}")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["assets"] == {"done": 3, "deleted": 1}
    assert victim not in done_assets(tmp_path)


def test_a_server_restart_mid_sweep(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/biden", "wild/elon_musk"])

    def restart_on_third_page(call: int) -> None:
        if call == 3:
            threading.Thread(target=fake.restart, kwargs={"downtime": 0.3}).start()

    fake.on_search_page = restart_on_third_page
    config = write_config(
        tmp_path,
        fake.url,
        sync="page_size = 2\nhttp_retries = 8\nretry_base_seconds = 0.05\nretry_max_seconds = 0.5",
    )
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert done_assets(tmp_path).keys() == fake.assets.keys()


def test_backoff_grows_exponentially_with_jitter_and_is_capped(fake: FakeImmich) -> None:
    sleeps: list[float] = []
    settings = ImmichSettings(name="alice", url=fake.url, api_key=Secret("test-key-alice-0123456789abcdef"))
    sync = SyncSettings(http_retries=6, retry_base_seconds=0.01, retry_max_seconds=0.2)
    fake.faults.append(Fault("status", status=503, times=100))
    with ImmichClient(settings, sync, sleep=sleeps.append) as client, pytest.raises(ImmichUnreachable):
        client.whoami()
    assert len(sleeps) == 6
    for attempt, delay in enumerate(sleeps):
        ceiling = min(0.2, 0.01 * 2**attempt)
        assert ceiling * 0.5 <= delay <= ceiling
    assert len({round(d / min(0.2, 0.01 * 2**i), 6) for i, d in enumerate(sleeps)}) > 1, "no jitter"
    # Retry-After from the server wins (within the cap)
    sleeps.clear()
    fake.faults[:] = [Fault("status", status=429, retry_after="0.15", times=2)]
    with ImmichClient(settings, sync, sleep=sleeps.append) as client:
        client.whoami()
    assert sleeps == [0.15, 0.15]
