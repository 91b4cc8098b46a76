"""What a real Immich server showed (issue 13): partners' assets in a key's listing, visibility
(archive, hidden, locked), and the trash with its restore and its slow force delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import API_KEY, PHOTOS, Library, add_photos, requires_shared, run_cli, validate_traffic, write_config
from facesyncd.models import HIDDEN_PHOTO, HIDDEN_VIDEO
from fake_immich import FakeImmich

pytestmark = requires_shared
BOB_KEY = "test-key-bob-0123456789abcdef0000"


def states_of(library: Library) -> dict[str, tuple[str, str | None]]:
    return {row[0]: (row[1], row[2]) for row in library.sql("SELECT asset_id, state, reason FROM assets")}


def exported(library: Library) -> set[str]:
    return {face["asset_id"] for number in library.sets() for face in library.show(number)["face_list"]}


@pytest.fixture
def immich_version() -> str:
    return "3.1.0"


# The trash is listed with withDeleted: those tests run against 3.2's cursor listing too.
with_3_2 = pytest.mark.parametrize("immich_version", ["3.1.0", "3.2.0"])


@pytest.fixture
def fake(immich_version: str) -> FakeImmich:
    server = FakeImmich(version=immich_version)
    server.add_user("alice", API_KEY)
    server.add_user("bob", BOB_KEY)
    server.start()
    yield server
    server.stop()
    validate_traffic(server)


def test_a_partners_assets_are_passed_over_unless_asked_for_and_stay_one_face(fake: FakeImmich, tmp_path) -> None:
    library = Library(fake, tmp_path / "alice")
    library.add(["wild/angelina_jolie"])
    bobs = add_photos(fake, ["wild/obama"], owner="bob")  # enough of him for a faceset
    fake.share("bob", "alice", in_timeline=True)
    library.cli("sync")
    states = states_of(library)
    assert not set(bobs) & set(states), "a partner's assets were taken as alice's"
    assert len(states) == len(library.labels)
    status = json.loads(library.cli("status", "--json"))
    assert status["sources"][0]["partner_assets"] == len(bobs)
    assert f"passed over {len(bobs)} assets of partners" in library.cli("status")
    # sharing turned off: nothing of alice's is taken as deleted
    fake.share("bob", "alice", in_timeline=False)
    library.cli("sync", "--reconcile")
    assert {state for state, _ in states_of(library).values()} <= {"done", "skipped"}

    # opted in, with bob as a source of his own: bob's photos are listed by both keys, one face each
    fake.share("bob", "alice", in_timeline=True)
    downloads_before = {asset: fake.count("GET", f"/api/assets/{asset}/original") for asset in bobs}
    sources = (
        f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_env = "FACESYNCD_TEST_KEY_ALICE"\n'
        "include_partners = true\n"
        f'[[immich]]\nname = "bob"\nurl = "{fake.url}"\napi_key_env = "BOB_KEY"\n'
    )
    config = write_config(tmp_path / "both", fake.url, sources=sources)
    result = run_cli("--config", str(config), "sync", env={"BOB_KEY": BOB_KEY})
    assert result.returncode == 0, result.stderr
    both = Library(fake, tmp_path / "both")
    rows = both.sql("SELECT source, asset_id, sha256 FROM assets")
    assert {asset for source, asset, _ in rows if source == "alice"} >= set(bobs)
    blobs = {sha for _, asset, sha in rows if asset in bobs}
    assert len(blobs) == len(bobs)  # listed twice, embedded once
    faces_of_bob = both.sql(
        f"SELECT COUNT(*) FROM faces WHERE sha256 IN ({','.join(repr(sha) for sha in blobs)})"  # noqa: S608
    )[0][0]
    assert faces_of_bob >= len(bobs)
    listed = [face["face_id"] for number in both.sets() for face in both.show(number)["face_list"]]
    assert len(listed) == len(set(listed))
    # downloaded once: Immich's checksum names bytes the other source embedded (620 downloads were
    # counted for 510 distinct photos)
    downloads = {asset: fake.count("GET", f"/api/assets/{asset}/original") - downloads_before[asset] for asset in bobs}
    assert downloads == dict.fromkeys(bobs, 1), downloads
    # whose photo each face is: bob's, in the store and in the manifests
    bob = fake.users[BOB_KEY]["id"]
    assert {owner for (owner,) in both.sql(f"SELECT owner_id FROM assets WHERE asset_id IN {tuple(bobs)!r}")} == {bob}
    owners = {
        face["asset_id"]: face["owner"]
        for manifest in (tmp_path / "both" / "facesets").glob("faceset_*/faceset.json")
        for face in json.loads(manifest.read_text())["faces"]
    }
    assert set(bobs) & set(owners), "bob's photos are in a faceset"
    assert {owners[asset] for asset in bobs if asset in owners} == {bob}


def _photos(folder: str) -> list[Path]:
    return [path for path in sorted((PHOTOS / folder).rglob("*")) if path.is_file()]


def test_archived_photos_are_kept_hidden_ones_skipped_locked_ones_never_touched(fake: FakeImmich, tmp_path) -> None:
    fake.listed_by_default = {"timeline", "archive", "hidden", "locked"}  # a server that lists everything
    library = Library(fake, tmp_path)
    photos = _photos("wild/angelina_jolie")
    archived = fake.add_file("alice", photos[0], visibility="archive")
    hidden = fake.add_file("alice", photos[1], visibility="hidden")
    locked = fake.add_file("alice", photos[2], visibility="locked")
    motion = fake.add_asset("alice", b"the moving half", "IMG_0001.MOV", type="VIDEO", visibility="hidden")
    moved = fake.add_file("alice", photos[3])
    for photo in photos[4:]:  # enough of her for a faceset
        fake.add_file("alice", photo)
    library.cli("sync")
    states = states_of(library)
    assert states[archived][0] == "done" and states[moved][0] == "done"
    # a photo hidden from the timeline is no live photo's video: it says what it is
    assert states[hidden] == ("skipped", HIDDEN_PHOTO) and states[motion] == ("skipped", HIDDEN_VIDEO)
    assert HIDDEN_PHOTO == "hidden in Immich (not shown in its timeline): set aside until it is shown again"
    assert states[locked] == ("skipped", "in Immich's locked folder: never processed")
    touched = {path for method, path, _ in fake.requests if method == "GET"}
    assert not any(asset in path for path in touched for asset in (hidden, locked))
    assert moved in exported(library)
    # a photo moved to the locked folder leaves the facesets
    fake.set_visibility(moved, "locked")
    library.cli("sync")
    assert states_of(library)[moved][0] == "skipped"
    assert moved not in exported(library)
    # and comes back when it leaves the locked folder
    fake.set_visibility(moved, "timeline")
    library.cli("sync")
    assert states_of(library)[moved][0] == "done" and moved in exported(library)


@with_3_2
def test_the_trash_keeps_faces_and_a_restore_brings_the_same_ones_back_without_a_download(
    fake: FakeImmich, tmp_path
) -> None:
    library = Library(fake, tmp_path)
    library.add(["wild/angelina_jolie", "wild/biden"])
    library.cli("sync")
    placed = {
        face["face_id"]: (number, face["asset_id"])
        for number in library.sets()
        for face in library.show(number)["face_list"]
    }
    asset = next(asset for _, asset in placed.values())
    its_faces = {face: where for face, where in placed.items() if where[1] == asset}
    number = next(iter(its_faces.values()))[0]
    before = library.sets()[number]["faces"]
    fake.trash(asset)
    library.cli("sync")
    assert asset not in exported(library)
    assert library.sets()[number]["faces"] == before - sum(1 for n, _ in its_faces.values() if n == number)
    kept = {row[0] for row in library.sql("SELECT f.id FROM faces f JOIN assets a ON a.sha256 = f.sha256")}
    assert set(its_faces) <= kept, "a trashed asset's faces left the store"
    downloads = fake.count("GET", f"/api/assets/{asset}/original")
    fake.restore(asset)
    library.cli("sync")
    assert fake.count("GET", f"/api/assets/{asset}/original") == downloads, "a restore downloaded again"
    back = {
        face["face_id"]: (number, face["asset_id"])
        for number in library.sets()
        for face in library.show(number)["face_list"]
        if face["asset_id"] == asset
    }
    assert back == its_faces  # the same faces (and so file names) in the same facesets


def test_faces_in_the_trash_open_no_faceset_until_restored(fake: FakeImmich, tmp_path) -> None:
    """Two photos of one person are too few for a faceset; with both in the trash, a third photo must
    not open one from faces nobody can see (a number given to an empty faceset is never reused)."""
    library = Library(fake, tmp_path)
    library.add(["wild/biden"])
    library.cli("sync")
    assert not library.sets(), "two photos opened a faceset"
    trashed = list(library.labels)
    for asset in trashed:
        fake.trash(asset)
    library.cli("sync")
    library.add(["groups/obama_and_biden.jpg"])
    library.cli("sync")
    assert not library.sets(), "faces in the trash opened a faceset"
    for asset in trashed:
        fake.restore(asset)
    library.cli("sync")
    number = library.number_of("biden")
    assert {label for label in library.faces(number).values()} >= {*(library.labels[a] for a in trashed)}


@with_3_2
def test_a_force_delete_is_handled_whether_it_is_first_seen_trashed_or_already_gone(fake: FakeImmich, tmp_path) -> None:
    library = Library(fake, tmp_path)
    library.add(["wild/angelina_jolie"])
    library.cli("sync")
    with_faces = {row[0] for row in library.sql("SELECT a.asset_id FROM assets a JOIN faces f ON f.sha256 = a.sha256")}
    first, second = sorted(with_faces)[:2]
    fake.force_delete_seconds = 600.0  # listed as trashed until Immich's job runs (here: on demand)
    fake.force_delete(first)
    library.cli("sync")
    assert states_of(library)[first][0] == "trashed"
    (kept,) = library.sql(f"SELECT sha256 FROM assets WHERE asset_id = '{first}'")  # noqa: S608
    assert kept[0] and library.sql(f"SELECT 1 FROM faces WHERE sha256 = '{kept[0]}'")  # noqa: S608
    fake.finish_force_deletes()
    library.cli("sync", "--reconcile")  # now gone for good: its faces leave the store
    assert states_of(library)[first][0] == "deleted"
    assert not library.sql(f"SELECT 1 FROM faces WHERE sha256 = '{kept[0]}'")  # noqa: S608
    fake.force_delete_seconds = 0.0
    fake.force_delete(second)  # gone before any listing saw it trashed
    library.cli("sync", "--reconcile")
    assert states_of(library)[second][0] == "deleted"
    assert first not in exported(library) and second not in exported(library)


@pytest.mark.parametrize("immich_version", ["3.2.0"])
def test_immich_3_2_is_sent_what_it_documents_from_the_second_listing_on(fake: FakeImmich, tmp_path) -> None:
    library = Library(fake, tmp_path)
    library.add(["wild/obama"])
    library.cli("sync")  # the first request asks as every version reads: it learns the server pages by cursor
    before = len(fake.request_bodies)
    fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    library.cli("sync")
    library.cli("sync", "--reconcile")
    bodies = [body for template, body in fake.request_bodies[before:] if template == "/search/metadata"]
    assert len(bodies) >= 2 and all("page" not in body and "order" not in body for body in bodies)
    assert len(states_of(library)) == len(library.labels) + 1
