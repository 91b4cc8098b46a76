"""End to end: the real CLI against the fake Immich, with the real test model pack and photos."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from conftest import PHOTOS, add_photos, asset_states, requires_shared, run_cli, validate_traffic, write_config
from fake_immich import FakeImmich

pytestmark = requires_shared


def wild_identity(label: str) -> str | None:
    parts = label.split("/")
    return parts[1] if parts[0] == "wild" else None


def facesets(root: Path) -> dict[int, dict]:
    result = {}
    for manifest in sorted(root.glob("faceset_*/faceset.json")):
        data = json.loads(manifest.read_text())
        result[data["number"]] = data
    return result


def largest_face_ids(database: Path) -> set[int]:
    """The largest face of each photo: in wild/ photos, that face is the labelled identity."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT id, sha256, (x2 - x1) * (y2 - y1) FROM faces ORDER BY sha256, 3 DESC"
        ).fetchall()
    largest: dict[str, int] = {}
    for face_id, sha256, _ in rows:
        largest.setdefault(sha256, face_id)
    return set(largest.values())


def labelled(root: Path, database: Path, labels: dict[str, str]) -> dict[int, Counter]:
    """faceset number -> Counter of wild identities among its faces that are their photo's largest."""
    largest = largest_face_ids(database)
    result: dict[int, Counter] = {}
    for number, data in facesets(root).items():
        counter: Counter = Counter()
        for face in data["faces"]:
            identity = wild_identity(labels.get(face["asset_id"], ""))
            if identity and face["face_id"] in largest:
                counter[identity] += 1
        result[number] = counter
    return result


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    """One fake server with wild/, groups/ and noface/, synced once by the CLI."""
    fake = FakeImmich(version="3.1.0")
    fake.add_user("alice", "test-key-alice-0123456789abcdef")
    fake.start()
    labels = add_photos(fake, ["wild", "groups", "noface"])
    base = tmp_path_factory.mktemp("library")
    config = write_config(base, fake.url)
    first = run_cli("--config", str(config), "sync")
    yield fake, labels, base, config, first
    fake.stop()
    validate_traffic(fake)


@pytest.fixture
def own_library(library, tmp_path: Path):
    """The synced library, copied for a test that changes it (its server, state and folders): the
    module's tests pass in any order."""
    fake, labels, base, _, first = library
    copy = fake.clone()
    copy.start()
    for folder in ("state", "facesets"):
        database = shutil.ignore_patterns("facesyncd.db*")  # copied whole by SQLite, below
        shutil.copytree(base / folder, tmp_path / folder, symlinks=True, ignore=database)
    with closing(sqlite3.connect(base / "state" / "facesyncd.db")) as source:
        with closing(sqlite3.connect(tmp_path / "state" / "facesyncd.db")) as target:
            source.backup(target)
    config = write_config(tmp_path, copy.url)
    try:
        yield copy, labels, tmp_path, config, first
        validate_traffic(copy)
    finally:
        copy.stop()


def test_first_sync_builds_pure_facesets_for_every_identity(library) -> None:
    fake, labels, base, config, first = library
    assert first.returncode == 0, first.stderr
    state, root = base / "state" / "facesyncd.db", base / "facesets"
    by_faceset = labelled(root, state, labels)
    assert by_faceset, "no facesets were written"
    for number, counter in by_faceset.items():
        assert len(counter) <= 1, f"faceset {number} mixes identities: {dict(counter)}"
    photos_per_identity = Counter(wild_identity(label) for label in labels.values() if wild_identity(label))
    covered = {identity for counter in by_faceset.values() for identity in counter}
    wanted = {identity for identity, count in photos_per_identity.items() if count >= 3}
    assert wanted <= covered, f"identities without a faceset: {sorted(wanted - covered)}"
    # numbering starts at 1 and has no gaps on a fresh library
    assert sorted(by_faceset) == list(range(1, len(by_faceset) + 1))


def test_faceset_folders_hold_crops_and_manifest(library) -> None:
    fake, labels, base, config, first = library
    for number, data in facesets(base / "facesets").items():
        folder = base / "facesets" / f"faceset_{number:03d}"
        files = {p.name for p in folder.iterdir()}
        assert files == {"faceset.json"} | {face["file"] for face in data["faces"]}
        assets = [face["asset_id"] for face in data["faces"]]
        assert len(assets) == len(set(assets)), "two faces of one photo in one faceset"
        for face in data["faces"]:
            assert set(face) >= {"face_id", "source", "asset_id", "file", "bbox", "det_score", "distance"}
            assert face["source"] == "alice"
            x1, y1, x2, y2 = face["bbox"]
            assert x2 > x1 and y2 > y1
            with Image.open(folder / face["file"]) as crop:
                assert crop.format == "JPEG"
                # the crop is the box plus a margin, cut from the original
                assert crop.width >= (x2 - x1) * 0.95 and crop.height >= (y2 - y1) * 0.95


def test_noface_photos_give_no_faces_and_count_as_done(library) -> None:
    fake, labels, base, config, first = library
    with sqlite3.connect(base / "state" / "facesyncd.db") as connection:
        rows = connection.execute(
            "SELECT a.asset_id, COUNT(f.id) FROM assets a LEFT JOIN faces f ON f.sha256 = a.sha256 GROUP BY a.asset_id"
        ).fetchall()
        states = dict(connection.execute("SELECT state, COUNT(*) FROM assets GROUP BY state").fetchall())
    noface = {asset_id for asset_id, label in labels.items() if label.startswith("noface/")}
    assert all(count == 0 for asset_id, count in rows if asset_id in noface)
    assert states == {"done": len(labels)}


def test_second_sync_downloads_nothing_and_costs_two_requests(own_library) -> None:
    fake, labels, base, config, first = own_library
    before = len(fake.requests)
    second = run_cli("--config", str(config), "sync")
    assert second.returncode == 0, second.stderr
    requests = fake.requests[before:]
    assert [(m, p) for m, p, _ in requests] == [("GET", "/api/users/me"), ("POST", "/api/search/metadata")]


def test_assets_bumped_by_immich_jobs_are_not_downloaded_again(own_library) -> None:
    fake, labels, base, config, first = own_library
    for asset_id in list(labels)[:20]:
        fake.touch(asset_id)
    before = fake.count("GET", "/api/assets/")
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert fake.count("GET", "/api/assets/") == before


def test_exporting_twice_changes_nothing(own_library) -> None:
    fake, labels, base, config, first = own_library
    root = base / "facesets"
    # The copied library's server listens on another port: the manifests' links to Immich change once.
    assert run_cli("--config", str(config), "sync").returncode == 0
    snapshot = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")} == snapshot


def test_status_json_reports_the_library(library) -> None:
    fake, labels, base, config, first = library
    result = run_cli("--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["assets"] == asset_states(done=len(labels))
    assert data["faces"]["total"] == data["faces"]["assigned"] + data["faces"]["pending"]
    assert data["faces"]["assigned"] > 0
    assert data["identities"] == len(facesets(base / "facesets"))
    assert data["last_sync"]["ok"] is True and data["last_sync"]["error"] is None
    assert data["last_sync"]["started_at"] <= data["last_sync"]["finished_at"]
    assert [s["name"] for s in data["sources"]] == ["alice"]
    assert data["sources"][0]["watermark"]
    assert data["index"] == {"faces": data["faces"]["assigned"], "stale": False}
    assert data["embedding_dim"] == 128  # a number, as the model gives it (was "128")
    text = run_cli("--config", str(config), "status")
    assert "identities:" in text.stdout and "alice" in text.stdout


def test_status_answers_while_a_writer_holds_the_database(library) -> None:
    fake, labels, base, config, first = library
    writer = sqlite3.connect(base / "state" / "facesyncd.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE meta SET value = value WHERE key = 'model'")
        result = run_cli("--config", str(config), "status", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["identities"] > 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_new_photos_join_the_right_facesets(own_library) -> None:
    """edge/ holds more photos of obama and angelina_jolie: they must land in those facesets."""
    fake, labels, base, config, first = own_library
    root, database = base / "facesets", base / "state" / "facesyncd.db"
    by_faceset = labelled(root, database, labels)
    owner = {number: counter.most_common(1)[0][0] for number, counter in by_faceset.items() if counter}
    faceset_of = {identity: number for number, identity in owner.items()}
    added = {}
    newcomers = [
        ("obama_partial_face.jpg", "obama"),
        ("32bit.png", "obama"),
        ("img11_reflection.jpg", "angelina_jolie"),
    ]
    for name, identity in newcomers:
        added[fake.add_file("alice", PHOTOS / "edge" / name)] = identity
    highest_before = max(facesets(root))
    result = run_cli("--config", str(config), "sync", env={})
    assert result.returncode == 0, result.stderr
    after = facesets(root)
    placed = {face["asset_id"]: number for number, data in after.items() for face in data["faces"]}
    for asset_id, identity in added.items():
        assert placed.get(asset_id) == faceset_of[identity], f"{identity} photo went to {placed.get(asset_id)}"
    assert max(after) == highest_before  # no new faceset for known people


def test_trashed_and_deleted_assets_leave_their_facesets(own_library) -> None:
    fake, labels, base, config, first = own_library
    root = base / "facesets"
    placed = {face["asset_id"]: number for number, data in facesets(root).items() for face in data["faces"]}
    biggest = max(facesets(root).values(), key=lambda data: len(data["faces"]))
    trashed, deleted = [face["asset_id"] for face in biggest["faces"][:2]]
    numbers_before = set(facesets(root))
    fake.trash(trashed)
    fake.delete(deleted)
    result = run_cli("--config", str(config), "sync", "--reconcile")
    assert result.returncode == 0, result.stderr
    now = {face["asset_id"] for data in facesets(root).values() for face in data["faces"]}
    assert trashed not in now and deleted not in now
    assert set(facesets(root)) <= numbers_before
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["assets"]["trashed"] == 1 and status["assets"]["deleted"] == 1
    # restoring from the trash brings the faces back, under the numbers they had
    fake.restore(trashed)
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    back = {face["asset_id"]: number for number, data in facesets(root).items() for face in data["faces"]}
    assert back.get(trashed) == placed[trashed]
