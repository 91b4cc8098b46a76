"""Staging: prefilter, non-images, dedup, formats, preview fallback, failures; run in-process."""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS, requires_shared, wait_until, write_config
from facesyncd import actions
from facesyncd.app import App, open_app
from facesyncd.config import load_settings
from facesyncd.cycle import open_new_facesets
from facesyncd.cycle.stage import faces_too_small
from facesyncd.errors import ImmichUnreachable
from facesyncd.imaging import DecodedImage, decode_image
from facesyncd.models import RemoteFace
from fake_immich import FakeImmich, Fault

pytestmark = requires_shared

OBAMA = PHOTOS / "wild" / "obama" / "obama.jpg"


@pytest.fixture
def app(fake: FakeImmich, tmp_path: Path, env_key: str):
    settings = load_settings(write_config(tmp_path, fake.url, faces="min_face_px = 60"))
    app = open_app(settings)
    yield app
    app.close()


def asset_rows(app: App) -> dict[str, tuple[str, str | None]]:
    return {
        row["asset_id"]: (row["state"], row["reason"])
        for row in app.store.db.query("SELECT asset_id, state, reason FROM assets")
    }


def test_faces_too_small_scales_preview_boxes_to_the_original() -> None:
    # a 100px face on a 1440px-wide preview of a 4320px original is 300px in the original
    face = RemoteFace(x1=0, y1=0, x2=100, y2=100, image_width=1440, image_height=960)
    assert not faces_too_small([face], 4320, 2880, 200)
    assert faces_too_small([face], 1440, 960, 200)
    # rotation: the original stored sideways still scales by its longest side
    assert not faces_too_small([face], 2880, 4320, 200)
    assert not faces_too_small([], 100, 100, 200), "no faces from Immich (ML off) means process it"
    # a box with a negative size says nothing about the face: process the asset
    inverted = RemoteFace(x1=300, y1=300, x2=10, y2=10, image_width=1440, image_height=960)
    assert not faces_too_small([inverted], 1440, 960, 200)
    assert not faces_too_small([face, inverted], 1440, 960, 200)


def test_a_face_box_with_a_negative_size_does_not_skip_the_asset(fake: FakeImmich, app: App) -> None:
    inverted = [{"x1": 400, "y1": 400, "x2": 10, "y2": 10, "image_width": 1440, "image_height": 1080}]
    asset = fake.add_file("alice", OBAMA, faces=inverted)
    actions.sync(app)
    assert asset_rows(app)[asset][0] == "done"


def test_bytes_that_disagree_with_immichs_checksum_are_refused(fake: FakeImmich, app: App) -> None:
    """Immich's checksum is the SHA-1 of the file; a download that does not hash to it (a proxy's
    error page, a half-replaced file) was accepted silently. External-library assets carry a hash of
    their path instead, which says nothing about the bytes: those are not checked."""
    import base64
    import hashlib

    liar = fake.add_file("alice", OBAMA)
    fake.assets[liar].checksum_override = base64.b64encode(hashlib.sha1(b"other bytes").digest()).decode()
    external = fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    fake.assets[external].library_id = "5f1c5a7e-3e7b-4f8e-9a5a-0f6a1c2b3d4e"
    actions.sync(app)
    rows = asset_rows(app)
    assert rows[liar][0] == "failed" and "do not match Immich's checksum" in (rows[liar][1] or "")
    assert rows[external][0] == "done"
    fake.assets[liar].checksum_override = None
    fake.touch(liar)
    actions.sync(app)
    assert asset_rows(app)[liar][0] == "done"


def test_prefilter_skips_assets_whose_faces_are_all_small_without_downloading(fake: FakeImmich, app: App) -> None:
    tiny = [{"x1": 10, "y1": 10, "x2": 30, "y2": 30, "image_width": 1440, "image_height": 1080}]
    skipped = fake.add_file("alice", OBAMA, faces=tiny)
    kept = fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    actions.sync(app)
    rows = asset_rows(app)
    assert rows[skipped] == ("skipped", "all faces Immich found are under 60px")
    assert rows[kept][0] == "done"
    downloads = [p for m, p, _ in fake.requests if p.endswith("/original")]
    assert downloads == [f"/api/assets/{kept}/original"]


def test_videos_are_skipped_with_the_reason(fake: FakeImmich, app: App) -> None:
    video = fake.add_asset("alice", b"\x00\x00\x00\x18ftypmp42", "clip.mp4", type="VIDEO")
    actions.sync(app)
    assert asset_rows(app)[video] == ("skipped", "not an image (video)")
    assert fake.count("GET", f"/api/assets/{video}") == 0


def test_identical_bytes_are_embedded_once_across_assets_and_users(fake: FakeImmich, app: App, tmp_path: Path) -> None:
    fake.add_user("bob", "bob-key")
    first = fake.add_file("alice", OBAMA)
    second = fake.add_file("alice", OBAMA)
    report = actions.sync(app)
    assert report.embedded_assets == 1 and report.deduplicated == 1
    assert {asset_rows(app)[first][0], asset_rows(app)[second][0]} == {"done"}
    with sqlite3.connect(app.settings.database_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1
        face_count = connection.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    assert face_count == 1
    # deleting one of the two keeps the face: the other asset still shows the same bytes
    fake.delete(first)
    actions.sync(app, reconcile=True)
    with sqlite3.connect(app.settings.database_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == face_count


def _encode(path: Path, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_image_formats_decode(fake: FakeImmich, app: App, fmt: str) -> None:
    if fmt == "HEIF":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
    if fmt == "AVIF":
        from PIL import features

        if not features.check("avif"):
            pytest.fail("this Pillow build cannot decode AVIF")
    data = _encode(OBAMA, fmt)
    asset_id = fake.add_asset("alice", data, f"obama.{fmt.lower()}")
    report = actions.sync(app)
    assert asset_rows(app)[asset_id] == ("done", None)
    assert report.faces_found == 1


def test_exif_orientation_is_applied(fake: FakeImmich, app: App) -> None:
    upright = fake.add_file("alice", PHOTOS / "groups" / "portrait.jpg")
    rotated = fake.add_file("alice", PHOTOS / "groups" / "portrait-orientation-6.jpg")
    actions.sync(app)
    with sqlite3.connect(app.settings.database_path) as connection:
        sizes = dict(
            connection.execute(
                "SELECT a.asset_id, b.width || 'x' || b.height FROM assets a JOIN blobs b ON b.sha256 = a.sha256"
            ).fetchall()
        )
        counts = dict(
            connection.execute(
                "SELECT a.asset_id, COUNT(f.id) FROM assets a JOIN faces f ON f.sha256 = a.sha256 GROUP BY a.asset_id"
            ).fetchall()
        )
    assert sizes[upright] == sizes[rotated]
    assert counts[upright] == counts[rotated] == 2


def test_a_face_that_fills_the_whole_photo_is_found(fake: FakeImmich, app: App) -> None:
    """The detector misses a face that fills the frame (every test photo cut to its face box): such a
    photo is looked at again with a border around it, and its face lands in the photo's own pixels.
    A photo with no face at all still has none."""
    import cv2

    app.embedder.load()
    photo = decode_image(PHOTOS / "wild" / "obama" / "obama.jpg", max_pixels=10**8)
    x1, y1, x2, y2 = (int(v) for v in app.embedder.faces(photo)[0].bbox)
    tight = np.ascontiguousarray(photo.pixels[y1:y2, x1:x2])
    assert app.embedder.faces(DecodedImage(tight, "JPEG")) == [], "the detector should miss it, as it does"
    ok, jpeg = cv2.imencode(".jpg", tight)
    assert ok
    close = fake.add_asset("alice", bytes(jpeg.tobytes()), "close.jpg")
    empty = fake.add_file("alice", next((PHOTOS / "noface").iterdir()))
    actions.sync(app)
    with sqlite3.connect(app.settings.database_path) as connection:
        boxes = connection.execute(
            "SELECT a.asset_id, f.x1, f.y1, f.x2, f.y2 FROM assets a JOIN faces f ON f.sha256 = a.sha256"
        ).fetchall()
    found = [box for asset, *box in boxes if asset == close]
    assert len(found) == 1 and not [box for asset, *box in boxes if asset == empty]
    left, top, right, bottom = found[0]
    assert 0 <= left < right <= tight.shape[1] and 0 <= top < bottom <= tight.shape[0]


def test_undecodable_original_falls_back_to_the_preview(fake: FakeImmich, app: App) -> None:
    raw = b"II*\x00" + b"\x13" * 4000  # a camera RAW Pillow cannot open
    asset_id = fake.add_asset("alice", raw, "IMG_0001.CR2")
    fake.assets[asset_id].preview_data = OBAMA.read_bytes()
    fake.assets[asset_id].mime = "image/x-canon-cr2"
    report = actions.sync(app)
    assert asset_rows(app)[asset_id] == ("done", "decoded from Immich's preview")
    assert report.faces_found == 1
    with sqlite3.connect(app.settings.database_path) as connection:
        assert connection.execute("SELECT decoded_from FROM blobs").fetchone()[0] == "preview"


def test_a_broken_file_fails_alone_and_is_parked_after_max_attempts(fake: FakeImmich, app: App) -> None:
    broken = fake.add_asset("alice", OBAMA.read_bytes()[:2000], "cut.jpg")
    fake.assets[broken].preview_data = b"not an image either"
    good = fake.add_file("alice", OBAMA)
    report = actions.sync(app)
    assert report.failed == 1 and asset_rows(app)[good][0] == "done"
    state, reason = asset_rows(app)[broken]
    assert state == "failed" and reason.startswith("original: cannot decode image")
    for _ in range(app.settings.sync.max_attempts - 1):
        actions.sync(app)
    assert asset_rows(app)[broken][0] == "parked"
    downloads = fake.count("GET", f"/api/assets/{broken}/original")
    actions.sync(app)
    assert fake.count("GET", f"/api/assets/{broken}/original") == downloads, "a parked asset was retried"
    assert app.store.retry_parked() == 1
    assert asset_rows(app)[broken][0] == "pending"


def test_changed_bytes_replace_the_old_faces(fake: FakeImmich, app: App) -> None:
    asset_id = fake.add_file("alice", OBAMA)
    actions.sync(app)
    fake.assets[asset_id].data = (PHOTOS / "groups" / "two_people.jpg").read_bytes()
    fake.touch(asset_id)
    report = actions.sync(app)
    assert report.embedded_assets == 1 and report.faces_found == 2
    with sqlite3.connect(app.settings.database_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 2
        assert connection.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1
        crops = {row[0] for row in connection.execute("SELECT crop FROM faces")}
    on_disk = {f"{p.parent.name}/{p.name}" for p in app.crops.directory.glob("*/*.jpg")}
    assert on_disk == crops, "the old bytes' crops were left behind"


def test_watermark_moves_only_after_a_complete_sweep(fake: FakeImmich, app: App) -> None:
    for name in ("obama.jpg", "obama1.jpg", "obama2.jpg"):
        fake.add_file("alice", PHOTOS / "wild" / "obama" / name)
    app.settings = replace(app.settings, sync=replace(app.settings.sync, page_size=1, http_retries=0))
    fake.faults.append(Fault("status", status=503, path_contains="/search", skip=1))
    with pytest.raises(ImmichUnreachable):
        actions.sync(app)
    assert fake.count("POST", "/api/search/metadata") == 2, "the fault should hit the second page"
    assert app.store.watermark("alice") is None
    actions.sync(app)
    assert app.store.watermark("alice") is not None
    assert {state for state, _ in asset_rows(app).values()} == {"done"}


def test_hard_deletions_are_caught_when_a_reconcile_is_due(fake: FakeImmich, app: App) -> None:
    kept = fake.add_file("alice", OBAMA)
    gone = fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg")
    actions.sync(app)
    fake.delete(gone)
    actions.sync(app)  # the first full sweep counted as a reconcile: none is due yet
    assert asset_rows(app)[gone][0] == "done"
    with sqlite3.connect(app.settings.database_path) as database:  # the last full listing, two days ago
        database.execute("UPDATE sources SET last_reconcile_at = '2000-01-01T00:00:00.000Z'")
    actions.sync(app)  # [schedule] reconcile_seconds (a day) have passed: this one lists everything
    assert asset_rows(app)[gone][0] == "deleted" and asset_rows(app)[kept][0] == "done"


def test_a_corrupt_index_is_rebuilt_by_itself(fake: FakeImmich, app: App) -> None:
    from facesyncd.index import INDEX_FILE, read_sidecar

    for name in ("obama.jpg", "obama1.jpg", "obama2.jpg"):
        fake.add_file("alice", PHOTOS / "wild" / "obama" / name)
    actions.sync(app)
    state = app.settings.state_dir
    (state / INDEX_FILE).write_bytes(b"\x01" * 64)
    app.index.drop()
    fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama3.jpg")
    report = actions.sync(app)
    assert report.faces_assigned == 1
    assert read_sidecar(state)["faces"] == 4


def test_a_deleted_photo_leaves_the_index_in_place_not_by_a_rebuild(fake: FakeImmich, app: App) -> None:
    """Rebuilding the index after every deletion costs about a minute at 200,000 faces: the faces
    are marked deleted in the index kept in memory, which must equal a rebuild from the store."""
    from facesyncd.index import FaceIndex, load_or_build

    ids = {name: fake.add_file("alice", PHOTOS / "wild" / "obama" / name) for name in sorted(OBAMA.parent.iterdir())}
    actions.sync(app)
    index = app.index.get()
    assert index is not None and len(index) == 4, "the four photos of one man make one faceset"
    fake.delete(ids[OBAMA])
    actions.sync(app, reconcile=True)
    assert app.index.get() is index and len(index) == 3 and index.deleted == 1
    store, state_dir = app.store, app.settings.state_dir
    assert index.identity_of == store.identity_map()
    rebuilt = load_or_build(store, state_dir, index.dimension, force=True)
    assert rebuilt.identity_of == index.identity_of
    assert FaceIndex.load(state_dir, index.dimension, store.index_version(), store.identity_map()) is not None


def test_a_pool_too_large_for_one_clustering_opens_one_faceset_per_person(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person with more unmatched faces than one clustering run takes (a first sync) is clustered
    a chunk at a time; the faces of later chunks join the identity the first chunk opened."""
    import numpy as np

    import facesyncd.identities as identities
    from facesyncd.models import CycleReport, DetectedFace

    monkeypatch.setattr(identities, "EXACT_LIMIT", 8)
    app.embedder.load()
    rng = np.random.default_rng(4)
    dimension = app.embedder.dimension
    people = rng.normal(size=(2, dimension))
    store = app.store
    for person, count in ((0, 20), (1, 6)):
        for number in range(count):
            vector = people[person] / np.linalg.norm(people[person]) + 0.02 * rng.normal(size=dimension)
            face = DetectedFace(  # inside its photo: a face cut by the edge opens no faceset
                (5, 5, 95, 95), 0.9, ((1.0, 1.0),) * 5, (vector / np.linalg.norm(vector)).astype(np.float32)
            )
            with store.transaction():
                store.save_blob_faces(
                    f"sha-{person}-{number}",
                    size=1,
                    width=100,
                    height=100,
                    decoded_from="original",
                    model=app.embedder.name,
                    faces=[face],
                    crops=[f"c/{person}_{number}.jpg"],
                )
    store.record_matches({}, [face.id for face in store.unmatched_new_faces()])
    report = CycleReport()
    open_new_facesets(app.identify_parts(), report)
    sizes = sorted(len(faces) for faces in store.export_faces().values())
    assert len(report.identities_created) == 2 and sizes == [6, 20]
    assert report.faces_assigned == 12, "the first chunk opened the faceset; the other 12 faces joined it"
    assert store.pool_faces() == []


def test_lost_crops_come_back_from_the_folders_or_from_immich(fake: FakeImmich, app: App) -> None:
    """The faceset folders must always be rebuildable: crops deleted from state_dir come back from
    the exported copies without a download when a folder must change, and with the folders gone
    too, they are cut again from the photos."""
    import shutil

    for path in sorted(OBAMA.parent.iterdir()):
        fake.add_file("alice", path)
    actions.sync(app)
    facesets = app.settings.facesets_dir

    def exported() -> dict[str, bytes]:
        return {str(p.relative_to(facesets)): p.read_bytes() for p in facesets.rglob("*.jpg")}

    def downloads() -> int:
        return fake.count("GET", "/api/assets/")

    before, fetched = exported(), downloads()
    assert len(before) == 4
    shutil.rmtree(app.crops.directory)
    actions.sync(app)
    assert exported() == before and downloads() == fetched, "an intact folder needs no crop"

    fake.add_file("alice", PHOTOS / "edge" / "obama_partial_face.jpg")  # the folder must change
    actions.sync(app)
    grown = exported()
    assert len(grown) == 5 and set(before.items()) <= set(grown.items())
    assert downloads() == fetched + 1, "old crops came back from the folder; only the new photo was fetched"
    assert len(list(app.crops.directory.rglob("*.jpg"))) == 5

    shutil.rmtree(app.crops.directory)
    shutil.rmtree(facesets)
    report = actions.sync(app)
    again = exported()
    assert set(again) == set(grown) and report.facesets_written == 1
    assert downloads() == fetched + 1 + 5, "each photo downloaded once to cut its crop again"
    for name, data in again.items():  # the same box of the same pixels: the same picture
        assert Image.open(io.BytesIO(data)).size == Image.open(io.BytesIO(grown[name])).size


def test_prefetched_keeps_order_raises_in_place_and_stops_when_abandoned() -> None:
    import threading

    from facesyncd.cycle.poll import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ImmichUnreachable("server gone")

    got = []
    with pytest.raises(ImmichUnreachable, match="server gone"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]

    produced = []

    def endless():
        for number in range(1_000_000):
            produced.append(number)
            yield number

    with closing(prefetched(endless())) as items:
        for item in items:
            if item == 3:
                break
    wait_until(
        lambda: not any(thread.name == "facesyncd-listing" for thread in threading.enumerate()),
        "the producer thread ends once its consumer is gone",
    )
    assert len(produced) <= 6, "the producer runs at most a page or two ahead, and stops when abandoned"


def test_blurred_faces_open_no_faceset_and_join_one_only_when_close(fake: FakeImmich, app: App, tmp_path: Path) -> None:
    """Blurred faces are near many people at once: clustered, they chained strangers into one faceset
    (80 blurred faces of 80 people). Blurred copies of one person wait in the pool; once sharp photos
    open her faceset, the copies close to it join it."""
    import cv2

    folder = PHOTOS / "wild" / "angelina_jolie"
    sharp = sorted(folder.iterdir())
    blurred = []
    for path in sharp[:4]:
        pixels = decode_image(path, max_pixels=10**8).pixels
        sigma = max(pixels.shape[:2]) / 120  # as blurred whatever the photo's size
        ok, jpeg = cv2.imencode(".jpg", cv2.GaussianBlur(pixels, (0, 0), sigma))
        assert ok
        blurred.append(fake.add_asset("alice", bytes(jpeg.tobytes()), f"blurred_{path.name}"))
    actions.sync(app)
    with sqlite3.connect(app.settings.database_path) as connection:
        blur = [blur for (blur,) in connection.execute("SELECT q_blur FROM faces")]
    assert blur and max(blur) < app.settings.identities.seed_min_blur, blur  # the photos are blurred enough
    assert app.store.export_faces() == {}, "blurred faces opened a faceset"
    assert len(app.store.pool_faces()) == len(blur), "they wait in the pool"
    for path in sharp[4:]:
        fake.add_file("alice", path)
    actions.sync(app)
    facesets = app.store.export_faces()
    assert len(facesets) == 1, facesets
    joined = {face.asset_id for face in next(iter(facesets.values()))} & set(blurred)
    assert joined, "blurred copies close to her faceset join it"
