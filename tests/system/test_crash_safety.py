"""Kill -9 at every crash point of a cycle: after a completed sync the state equals an unkilled run's."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import PHOTOS, add_photos, requires_shared, run_cli, run_process, write_config
from facesyncd.crashpoints import POINTS
from facesyncd.crops import CROPS_MARKER
from fake_immich import FakeImmich

pytestmark = requires_shared

# (checkpoint, n-th arrival) in the order a cycle meets them; each is one `sync` killed there.
FIRST_PHASE = [
    ("listed-page", 2),
    ("download-chunk", 1),
    ("embedded", 1),
    ("committed", 1),
    ("download-chunk", 2),
    ("embedded", 2),
    ("committed", 3),
    ("listed-page", 1),
    ("sweep-finished", 1),
    ("committed", 2),
    ("assigned", 1),
    ("identity-created", 1),
    ("export-file", 1),
    ("identity-created", 1),
    ("export-file", 5),
    ("index-save", 1),
]
SECOND_PHASE = [
    ("download-chunk", 1),
    ("embedded", 1),
    ("committed", 1),
    ("assigned", 1),
    ("export-update", 1),
    ("export-retire", 1),
    ("index-save", 1),  # the kills above left the saved index behind the database: brought in step, saved
    ("export-file", 2),
    ("identity-created", 1),
    ("index-save", 1),
    ("export-update", 2),
    ("listed-page", 1),
    ("sweep-finished", 1),
]
# the swap layout chosen: each folder rebuilt beside it and swapped in
THIRD_PHASE = [
    ("export-swap", 1),
    ("export-file", 3),
    ("export-swap", 2),
    ("export-file", 1),
]


def snapshot(base: Path) -> dict:
    """Everything that must match an unkilled run (face ids aside: they are not reused after a crash)."""
    state, root = base / "state", base / "facesets"
    with sqlite3.connect(state / "facesyncd.db") as connection:
        assets = dict(connection.execute("SELECT asset_id, state FROM assets").fetchall())
        faces = sorted(
            connection.execute(
                "SELECT a.asset_id, round(f.x1), round(f.y1), f.identity FROM faces f "
                "JOIN assets a ON a.sha256 = f.sha256"
            ).fetchall()
        )
        duplicates = connection.execute(
            "SELECT COUNT(*) FROM (SELECT sha256, face_index FROM faces GROUP BY 1, 2 HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        identities = [row[0] for row in connection.execute("SELECT number FROM identities ORDER BY 1")]
        crops = {row[0] for row in connection.execute("SELECT crop FROM faces")}
        assigned = connection.execute("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL").fetchone()[0]
    facesets = {}
    marker = json.loads((root / ".facesyncd.json").read_text())
    assert marker == {"highest_number": max(identities)}, "the marker records the highest number"
    for folder in sorted(root.iterdir()):
        if folder.name in (".facesyncd.json", "manifest.json"):  # the marker; the swap layout's tree manifest
            continue
        assert folder.name.startswith("faceset_"), f"leftover in facesets: {folder.name}"
        name = "faceset.json" if (folder / "faceset.json").exists() else "manifest.json"
        manifest = json.loads((folder / name).read_text())
        ours = {name} | {f["file"] for f in manifest["faces"]} | set(manifest.get("bundles", []))
        ours |= {manifest["top_folder"]} if manifest.get("top_folder") else set()
        files = {p.name for p in folder.iterdir()}
        assert files == ours | set(manifest.get("user_files", [])), f"{folder} has stray files"
        assert set(manifest.get("user_files", [])) <= {"NAME.txt"}, "a file of facesyncd's taken for the user's"
        facesets[manifest["number"]] = sorted(f["asset_id"] for f in manifest["faces"])
    on_disk = {str(p.relative_to(state / "crops")) for p in (state / "crops").rglob("*") if p.is_file()}
    on_disk.discard(CROPS_MARKER)  # not a crop: the directory's token (Crops.state)
    assert on_disk == crops, f"orphan or missing crops: {on_disk ^ crops}"
    leftovers = [p.name for p in state.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name.startswith(".")]
    assert not leftovers, f"half-written files left: {leftovers}"
    status = json.loads(run_cli("--config", str(base / "config.toml"), "status", "--json").stdout)
    assert status["index"] == {"faces": assigned, "stale": False}
    assert duplicates == 0
    return {"assets": assets, "faces": faces, "identities": identities, "facesets": facesets}


def test_kill_9_anywhere_loses_and_corrupts_nothing(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/biden", "wild/elon_musk", "noface/denali.webp"])
    both = fake.add_file("alice", PHOTOS / "groups" / "two_people.jpg")
    killed = write_config(tmp_path / "killed", fake.url, sync="page_size = 3")
    clean = write_config(tmp_path / "clean", fake.url, sync="page_size = 3")
    kills = 0
    reached: set[str] = set()

    def kill_sequence(sequence: list[tuple[str, int]]) -> None:
        nonlocal kills
        for point, nth in sequence:
            result = run_process("--config", str(killed), "sync", env={"FACESYNCD_CRASH_AT": f"{point}:{nth}"})
            assert result.returncode in (0, -9), result.stderr
            if result.returncode == -9:
                kills += 1
                reached.add(point)

    kill_sequence(FIRST_PHASE)
    assert run_cli("--config", str(killed), "sync").returncode == 0
    assert run_cli("--config", str(clean), "sync").returncode == 0
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")

    # more photos of known people, one of them trashed, and a new person: assignment, folders updated in
    # place (files added and removed), a new number
    for name in ("obama_partial_face.jpg", "obama_partial_face2.jpg", "32bit.png"):
        fake.add_file("alice", PHOTOS / "edge" / name)
    add_photos(fake, ["wild/george_clooney"])
    fake.trash(both)
    kill_sequence(SECOND_PHASE)
    assert run_cli("--config", str(killed), "sync").returncode == 0
    assert run_cli("--config", str(clean), "sync").returncode == 0
    final = snapshot(tmp_path / "killed")
    assert final == snapshot(tmp_path / "clean")
    assert len(final["identities"]) >= 4 and final["facesets"]

    for config in (killed, clean):
        config.write_text(config.read_text() + '\n[export]\nformat = "swap"\n')
    kill_sequence(THIRD_PHASE)
    assert run_cli("--config", str(killed), "sync").returncode == 0
    assert run_cli("--config", str(clean), "sync").returncode == 0
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")

    assert kills >= 20, f"only {kills} runs were killed"
    assert reached == set(POINTS), f"crash points never reached: {set(POINTS) - reached}"
