"""Changes Immich's incremental listing never shows (issue 20, part 3): a force delete that skipped the
trash, a move into the locked folder, a partner who starts sharing or is hidden and shown again. On
a real Immich 3.1.0 each was reflected only by the daily full listing; the census (one count request
every [schedule] sweep_minutes) finds them at the next sweep."""

from __future__ import annotations

import json

import pytest

from conftest import API_KEY, Library, add_photos, requires_shared, validate_traffic
from fake_immich import FakeImmich

pytestmark = requires_shared
BOB_KEY = "test-key-bob-0123456789abcdef0000"
# A sweep at every sync (a hundredth of a second): each `sync` below counts.
EVERY_SYNC = "\n[schedule]\nsweep_minutes = 0.0001\n"
LISTING = "/api/search/metadata"
NEEDED = ("asset.read", "asset.view", "asset.download", "face.read", "user.read")


@pytest.fixture
def immich_version() -> str:
    return "3.1.0"


@pytest.fixture
def fake(immich_version: str) -> FakeImmich:
    server = FakeImmich(version=immich_version)
    server.add_user("alice", API_KEY)
    server.add_user("bob", BOB_KEY)
    server.force_delete_seconds = 0.0  # gone before any listing sees it trashed
    server.start()
    yield server
    server.stop()
    validate_traffic(server)


def states_of(library: Library) -> dict[str, str]:
    return {asset: state for asset, state in library.sql("SELECT asset_id, state FROM assets")}


def exported(library: Library) -> set[str]:
    return {face["asset_id"] for number in library.sets() for face in library.show(number)["face_list"]}


def requests_of(fake: FakeImmich, action) -> dict[str, int]:
    """What `action` asked of the server, by path (asset ids folded into {id})."""
    before = len(fake.requests)
    action()
    counts: dict[str, int] = {}
    for _method, path, _user in fake.requests[before:]:
        parts = path.split("/")
        key = "/".join("{id}" if len(part) == 36 else part for part in parts)
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("immich_version", ["3.1.0", "2.7.5", "3.2.0"])
def test_a_force_delete_and_a_move_into_the_locked_folder_leave_the_facesets_at_the_next_sweep(
    fake: FakeImmich, tmp_path
) -> None:
    library = Library(fake, tmp_path / "alice", extra=EVERY_SYNC)
    library.add(["wild/angelina_jolie", "wild/katy_perry"])
    library.cli("sync")
    shown = exported(library)
    deleted, locked = sorted(shown)[:2]
    fake.force_delete(deleted)  # no trash: the row is gone, no listing shows it
    fake.set_visibility(locked, "locked")  # a key cannot list the locked folder
    incremental = {"updatedAfter": True}
    asked = requests_of(fake, lambda: library.cli("sync"))
    assert states_of(library)[deleted] == "deleted" and states_of(library)[locked] == "deleted"
    assert deleted not in exported(library) and locked not in exported(library)
    assert exported(library) == shown - {deleted, locked}
    # one count, one incremental page, then the whole library (one page here)
    assert asked["/api/assets/statistics"] == 2  # the census, and the full listing's new baseline
    assert asked[LISTING] == 2
    bodies = [body for template, body in fake.request_bodies if template == "/search/metadata"]
    assert [("updatedAfter" in body) for body in bodies[-2:]] == [True, False], incremental
    # nothing changed since: the count agrees, no full listing
    idle = requests_of(fake, lambda: library.cli("sync"))
    assert idle == {"/api/users/me": 1, LISTING: 1, "/api/assets/statistics": 1}
    status = json.loads(library.cli("status", "--json"))["sources"][0]
    assert status["counting"] is True and status["last_count_at"]


def test_the_census_is_taken_every_sweep_minutes_not_at_every_poll(fake: FakeImmich, tmp_path) -> None:
    """An idle poll stays at two requests (issue 20, part 2); the count is a third one, once per
    sweep_minutes (default 15)."""
    library = Library(fake, tmp_path / "alice")
    library.add(["wild/obama"])
    library.cli("sync")
    gone = sorted(library.labels)[0]
    fake.force_delete(gone)
    idle = requests_of(fake, lambda: library.cli("sync"))
    assert idle == {"/api/users/me": 1, LISTING: 1}
    assert states_of(library)[gone] == "done"  # not counted yet: the sweep is not due
    library.sql("UPDATE sources SET census_at = '2000-01-01T00:00:00Z'")  # sweep_minutes have passed
    library.cli("sync")
    assert states_of(library)[gone] == "deleted"


def test_a_partner_shown_later_is_taken_and_hiding_and_showing_them_again_downloads_nothing(
    fake: FakeImmich, tmp_path
) -> None:
    library = Library(fake, tmp_path / "alice", extra=EVERY_SYNC)
    library.add(["wild/angelina_jolie"])
    library.config.write_text(library.config.read_text().replace("api_key_env", "include_partners = true\napi_key_env"))
    library.cli("sync")
    bobs = add_photos(fake, ["wild/obama"], owner="bob")  # his photos predate the sharing
    fake.share("bob", "alice", in_timeline=True)  # nothing of bob's is updated: no incremental listing shows it
    library.cli("sync")
    states = states_of(library)
    assert {states[asset] for asset in bobs} == {"done"}
    assert set(bobs) <= exported(library)
    downloads = {asset: fake.count("GET", f"/api/assets/{asset}/original") for asset in bobs}
    assert downloads == dict.fromkeys(bobs, 1)
    faces = library.sql("SELECT COUNT(*) FROM faces")[0][0]

    fake.share("bob", "alice", in_timeline=False)  # hidden from alice's timeline: still her partner
    library.cli("sync")
    assert {states_of(library)[asset] for asset in bobs} == {"withheld"}
    assert not set(bobs) & exported(library)
    assert library.sql("SELECT COUNT(*) FROM faces")[0][0] == faces  # kept for their return
    assert "withheld" in json.loads(library.cli("status", "--json"))["assets"]

    fake.share("bob", "alice", in_timeline=True)
    library.cli("sync")
    assert {states_of(library)[asset] for asset in bobs} == {"done"}
    assert set(bobs) <= exported(library)
    # shown again: the same faces, no download (all 110 photos were downloaded again)
    assert {asset: fake.count("GET", f"/api/assets/{asset}/original") for asset in bobs} == downloads
    assert library.sql("SELECT COUNT(*) FROM faces")[0][0] == faces

    del fake.partners[(fake.users[BOB_KEY]["id"], fake.users[API_KEY]["id"])]  # bob stops sharing
    library.cli("sync")
    assert {states_of(library)[asset] for asset in bobs} == {"deleted"}
    assert library.sql("SELECT COUNT(*) FROM faces")[0][0] < faces


def test_uploads_between_the_listing_and_the_count_wait_for_the_next_sweep(fake: FakeImmich, tmp_path) -> None:
    """The count is taken after the incremental listing: a photo uploaded in between makes Immich count
    one more than was listed. While the listing itself saw new photos, that is taken as such an
    upload (the next sweep lists it), not as a hidden change worth a full listing."""
    library = Library(fake, tmp_path / "alice", extra=EVERY_SYNC)
    library.add(["wild/obama"])
    library.cli("sync")
    library.add(["wild/biden"])  # listed by the next incremental listing
    late = add_photos(fake, ["wild/rose_leslie/" + name for name in _names("wild/rose_leslie")[:1]])

    hidden_until_counted = set(late)
    for asset in hidden_until_counted:  # uploaded while the listing ran: the count sees it, the listing not
        fake.assets[asset].visibility = "locked"

    def upload_before_count(path: str) -> None:
        if path == "/api/assets/statistics":
            for asset in hidden_until_counted:
                fake.assets[asset].visibility = "timeline"

    fake.on_request = upload_before_count
    asked = requests_of(fake, lambda: library.cli("sync"))
    assert asked[LISTING] == 1  # no full listing for it
    assert not set(late) & set(states_of(library))
    fake.on_request = None
    for asset in late:
        fake.touch(asset)
    asked = requests_of(fake, lambda: library.cli("sync"))
    assert asked[LISTING] == 1 and set(late) <= set(states_of(library))


def _names(folder: str) -> list[str]:
    from conftest import PHOTOS

    return sorted(path.name for path in (PHOTOS / folder).iterdir() if path.is_file())


def test_a_key_without_the_count_permission_syncs_as_before_and_says_what_it_misses(fake: FakeImmich, tmp_path) -> None:
    fake.users[API_KEY]["permissions"] = list(NEEDED)  # no asset.statistics, no partner.read
    library = Library(fake, tmp_path / "alice", extra=EVERY_SYNC)
    library.add(["wild/obama"])
    first = library.cli("sync")
    assert "lacks the asset.statistics permission" in first and "reconcile_seconds" in first
    gone = sorted(library.labels)[0]
    fake.force_delete(gone)
    assert "would not count" not in library.cli("sync")  # said once, not at every sweep
    assert states_of(library)[gone] == "done"  # waits for the full listing, as before
    library.cli("sync", "--reconcile")
    assert states_of(library)[gone] == "deleted"
    assert "lacks asset.statistics" in library.cli("status")
    assert json.loads(library.cli("status", "--json"))["sources"][0]["counting"] is False
