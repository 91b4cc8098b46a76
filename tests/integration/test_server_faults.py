"""Server faults at a rate, vanishing assets, a restart mid-sweep: nothing lost, nothing marked done early."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import API_KEY_ENV, PHOTOS, add_photos, asset_states, requires_shared, run_cli, write_config
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
    assert status["assets"] == asset_states(done=3, deleted=1)
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


def statuses(base: Path) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(base / "state" / "facesyncd.db") as connection:
        rows = connection.execute("SELECT asset_id, state, attempts, reason FROM assets").fetchall()
    return {asset_id: (state, attempts, reason) for asset_id, state, attempts, reason in rows}


ANSWERS_OTHERS = "the server answers other requests"
NOT_ITS_BYTES = "do not match Immich's checksum"


@pytest.mark.parametrize(
    "fault, why",
    [
        (dict(kind="status", status=500), ANSWERS_OTHERS),
        (dict(kind="truncate"), ANSWERS_OTHERS),
        (dict(kind="timeout"), ANSWERS_OTHERS),
        (dict(kind="trickle", trickle_seconds=0.4), "too slow"),  # the asset's problem at once, not retried
        (dict(kind="html"), NOT_ITS_BYTES),  # a 200 web page instead of the photo
    ],
    ids=["500", "short-body", "hang", "trickle", "html-page"],
)
def test_one_asset_the_server_cannot_serve_stops_nothing(
    fake: FakeImmich, tmp_path: Path, fault: dict, why: str
) -> None:
    """A 500, a short body or a hang on one asset's download ended the cycle as "Immich unreachable";
    that asset and every asset after it stayed pending for good, and `retry` queued none."""
    ids = list(add_photos(fake, ["wild/obama", "wild/biden"]))
    victim = ids[1]
    fake.timeout_fault_seconds = 2
    fake.faults.append(Fault(path_contains=f"{victim}/original", times=1000, **fault))
    config = write_config(tmp_path, fake.url, sources=sources(fake.url), sync="http_retries = 1")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    rows = statuses(tmp_path)
    state, attempts, reason = rows[victim]
    assert (state, attempts) == ("failed", 1), rows[victim]
    assert why in (reason or ""), reason
    assert all(rows[other][0] == "done" for other in ids if other != victim)
    # once the server can serve it, `retry` and a sync finish it
    fake.faults.clear()
    assert run_cli("--config", str(config), "retry").stdout.strip() == "1 assets queued for retry"
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert statuses(tmp_path)[victim][0] == "done"


def test_a_server_that_answers_nothing_is_still_unreachable(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url, sources=sources(fake.url), sync="http_retries = 1")

    def die(path: str) -> None:
        if "/original" in path:
            fake.faults.append(Fault("reset", times=1000))  # from now on every request fails

    fake.on_request = die
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 4, result.stderr
    assert all(state == "pending" for state, _, _ in statuses(tmp_path).values())


@pytest.mark.parametrize("where", ["faces", "original"])
def test_one_transient_not_found_deletes_nothing(fake: FakeImmich, tmp_path: Path, where: str) -> None:
    """A single 400 (faces) or 404 (original) marked the asset deleted and took its faces out of their
    facesets for good. Now the asset is asked for again, and only a second "not found" counts."""
    ids = list(add_photos(fake, ["wild/obama"]))
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    victim = ids[0]
    fake.touch(victim)
    fake.assets[victim].data += b"\0"  # new bytes: the asset is processed again
    status = 400 if where == "faces" else 404
    path = f"faces?id={victim}" if where == "faces" else f"{victim}/original"
    # (faces are asked through the quick path first, then through httpx: one answer each)
    fake.faults.append(Fault("status", status=status, path_contains=path, times=2 if where == "faces" else 1))
    assert run_cli("--config", str(config), "sync").returncode == 0
    state, _, reason = statuses(tmp_path)[victim]
    assert state == "failed" and "still lists the asset" in (reason or ""), (state, reason)
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert statuses(tmp_path)[victim][0] == "done"


def test_a_reconciliation_restores_what_was_taken_as_deleted_and_queues_what_was_missed(
    fake: FakeImmich, tmp_path: Path
) -> None:
    ids = list(add_photos(fake, ["wild/obama"]))
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    before = faces_by_asset(tmp_path)
    victim = ids[0]
    # a server that says "not found" twice in a row for an asset it still has
    fake.touch(victim)
    fake.assets[victim].data += b"\0"
    fake.faults.append(Fault("status", status=400, path_contains=f"faces?id={victim}", times=2))
    fake.faults.append(Fault("status", status=400, path_contains=f"assets/{victim}", times=2))
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert statuses(tmp_path)[victim][0] == "deleted"
    # an asset the incremental listing cannot see: its updatedAt is older than the watermark
    missed = fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama1.jpg")
    fake.assets[missed].updated_at -= timedelta(days=2)
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert missed not in statuses(tmp_path)
    result = run_cli("--config", str(config), "sync", "--reconcile")
    assert result.returncode == 0, result.stderr
    rows = statuses(tmp_path)
    assert rows[victim][0] == "done" and rows[missed][0] == "done"
    assert faces_by_asset(tmp_path)[victim] == before[victim]


def test_a_server_clock_a_day_ahead_loses_no_photo(fake: FakeImmich, tmp_path: Path) -> None:
    """The watermark came from the Date header: a day ahead, it moved into the future, and photos
    updated in between were never listed, not even by --reconcile."""
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url)
    fake.date_offset = timedelta(days=1)
    assert run_cli("--config", str(config), "sync").returncode == 0
    fake.date_offset = timedelta(0)
    newcomer = fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert statuses(tmp_path)[newcomer][0] == "done"
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    watermark = datetime.fromisoformat(status["sources"][0]["watermark"].replace("Z", "+00:00"))
    assert watermark <= datetime.now(UTC)


def test_a_listing_that_never_advances_ends_the_cycle_with_a_clear_error(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama"])
    fake.endless_listing = True
    config = write_config(tmp_path, fake.url, sync="page_size = 2")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 4, result.stderr
    assert "listing does not advance" in result.stderr and "Traceback" not in result.stderr
    assert fake.count("POST", "/api/search/metadata") < 20


@pytest.mark.parametrize("listing", [["--reconcile"], []], ids=["full", "what changed"])
def test_a_listing_of_ever_new_asset_ids_is_bounded_by_immichs_own_count(
    fake: FakeImmich, tmp_path: Path, listing: list[str]
) -> None:
    """A server answering new ids on every page was followed for 409 pages (240 s) and would have
    gone on to 50 million assets: a full listing far past what the store knows, or a listing of what
    changed past LISTING_SLACK, asks Immich's count, and ends past twice that plus LISTING_SLACK."""
    from facesyncd.immich.listing import LISTING_SLACK

    library = add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url, sync="page_size = 100")
    assert run_cli("--config", str(config), "sync").returncode == 0
    fake.new_ids_for_pages = 400  # 40,000 ids that were never there, then the listing would end
    result = run_cli("--config", str(config), "sync", *listing)
    assert result.returncode == 4, result.stderr
    assert f"counts {len(library)}" in result.stderr and "Traceback" not in result.stderr
    pages = (2 * len(library) + LISTING_SLACK) // 100 + 2
    assert fake.phantom_pages <= pages < fake.new_ids_for_pages
    # nothing of the real library was taken as deleted by the broken listing
    assert {statuses(tmp_path)[asset][0] for asset in library} == {"done"}


@pytest.mark.parametrize("kind", ["html", "empty", "invalid-json", "nested-json"])
def test_garbled_answers_end_in_a_clear_error_not_a_traceback(fake: FakeImmich, tmp_path: Path, kind: str) -> None:
    fake.faults.append(Fault(kind, path_contains="/users/me", times=1000))
    config = write_config(tmp_path, fake.url, sync="http_retries = 1")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("facesyncd: error:") == 1 and "Traceback" not in result.stderr
