"""Soak: 200 cycles against a server that keeps changing, then the state must equal the server's truth."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PHOTOS, requires_shared, write_config
from facesyncd import actions
from facesyncd.app import App, open_app
from facesyncd.config import load_settings
from facesyncd.index import read_sidecar
from fake_immich import FakeImmich

pytestmark = [requires_shared, pytest.mark.slow]

CYCLES = 200


@pytest.fixture
def app(fake: FakeImmich, tmp_path: Path, env_key: str) -> Iterator[App]:
    settings = load_settings(write_config(tmp_path, fake.url, sync="page_size = 25"))
    app = open_app(settings)
    yield app
    app.close()


def test_two_hundred_cycles_against_a_changing_server(fake: FakeImmich, app: App) -> None:
    rng = random.Random(20261125)
    pool = sorted(p for p in (PHOTOS / "wild").rglob("*") if p.is_file())
    pool += sorted((PHOTOS / "noface").glob("*"))[:4]
    for path in rng.sample(pool, 12):
        fake.add_file("alice", path)
    operations = {"add": 0, "edit": 0, "trash": 0, "restore": 0, "delete": 0, "touch": 0}
    for cycle in range(CYCLES):
        for _ in range(rng.choice([0, 1, 1, 2])):
            live = [a for a in fake.assets.values() if not a.is_trashed]
            trashed = [a for a in fake.assets.values() if a.is_trashed]
            operation = rng.choice(["add", "add", "edit", "trash", "restore", "delete", "touch", "touch"])
            if operation == "add" or not live:
                fake.add_file("alice", rng.choice(pool))
                operation = "add"
            elif operation == "edit":
                target = rng.choice(live)
                target.data = rng.choice(pool).read_bytes()
                fake.touch(target.id)
            elif operation == "trash":
                fake.trash(rng.choice(live).id)
            elif operation == "restore" and trashed:
                fake.restore(rng.choice(trashed).id)
            elif operation == "delete":
                fake.delete(rng.choice(live + trashed).id)
            else:
                fake.touch(rng.choice(live).id)
                operation = "touch"
            operations[operation] += 1
        actions.sync(app, reconcile=cycle % 25 == 24)
    actions.sync(app, reconcile=True)
    assert all(count > 5 for count in operations.values()), operations

    truth = {a.id: hashlib.sha256(a.data).hexdigest() for a in fake.assets.values() if not a.is_trashed}
    trashed = {a.id for a in fake.assets.values() if a.is_trashed}
    store = app.store
    rows = {r["asset_id"]: r for r in store.db.query("SELECT asset_id, state, sha256 FROM assets")}
    done = {asset_id: row["sha256"] for asset_id, row in rows.items() if row["state"] == "done"}
    assert done == truth, "the done assets and their bytes must be exactly the server's live assets"
    for asset_id, row in rows.items():
        if asset_id in trashed:
            assert row["state"] == "trashed"
        elif asset_id not in truth:
            assert row["state"] == "deleted"
    # faces only of live bytes and of trashed assets' (kept for a restore); crops exactly the faces'
    live_blobs = set(truth.values())
    kept_blobs = {row["sha256"] for asset_id, row in rows.items() if asset_id in trashed and row["sha256"]}
    face_blobs = {r["sha256"] for r in store.db.query("SELECT DISTINCT sha256 FROM faces")}
    assert face_blobs <= live_blobs | kept_blobs
    crops = {r["crop"] for r in store.db.query("SELECT crop FROM faces")}
    on_disk = {str(p.relative_to(app.crops.directory)) for p in app.crops.directory.rglob("*.jpg")}
    assert on_disk == crops
    # facesets show live assets only, each face once, and match the database
    shown: list[str] = []
    for manifest in app.settings.facesets_dir.glob("faceset_*/faceset.json"):
        data = json.loads(manifest.read_text())
        shown += [face["asset_id"] for face in data["faces"]]
    assert set(shown) <= set(truth)
    assigned = store.db.execute("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL").fetchone()[0]
    only_trashed = sum(
        1 for face in store.db.query("SELECT sha256 FROM faces WHERE identity IS NOT NULL")
        if face["sha256"] in kept_blobs - live_blobs
    )  # fmt: skip
    assert len(shown) == assigned - only_trashed  # the trash's faces stay out of the facesets
    assert read_sidecar(app.settings.state_dir)["faces"] == assigned  # and in the index
    numbers = store.identity_numbers()
    assert numbers == list(range(1, len(numbers) + 1)), "identity numbers must be dense and never reused"
