"""import-facesets: existing numbered folders become identities with the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import PHOTOS, add_photos, requires_shared, run_cli, write_config
from fake_immich import FakeImmich

pytestmark = requires_shared


def old_tree(root: Path) -> Path:
    """What the older pipeline left: numbered folders of face images (here: whole photos and a crop)."""
    for number, folder, names in [
        (7, "obama", ["obama.jpg", "obama1.jpg"]),
        (216, "jack_dorsey", ["img16.jpg", "img17.jpg", "img59.jpg"]),
    ]:
        target = root / f"faceset_{number:03d}"
        target.mkdir(parents=True)
        for name in names:
            shutil.copy(PHOTOS / "wild" / folder / name, target / name)
    aligned = root / "faceset_100"
    aligned.mkdir()
    shutil.copy(PHOTOS / "edge" / "Tom_Hanks_54745.png", aligned)  # a 112x112 aligned crop
    (root / "faceset_100" / "notes.txt").write_text("not an image")
    (root / "unrelated").mkdir()
    return root


def test_imported_numbers_are_kept_and_new_facesets_follow_the_highest(fake: FakeImmich, tmp_path: Path) -> None:
    tree = old_tree(tmp_path / "old")
    config = write_config(tmp_path / "run", fake.url)
    result = run_cli("--config", str(config), "import-facesets", str(tree))
    assert result.returncode == 0, result.stderr
    assert "imported 6 faces into 3 facesets (0 already imported, 1 failed)" in result.stdout
    assert "notes.txt" in result.stderr
    facesets = tmp_path / "run" / "facesets"
    assert sorted(p.name for p in facesets.iterdir()) == [
        ".facesyncd.json",
        "faceset_007",
        "faceset_100",
        "faceset_216",
    ]
    again = run_cli("--config", str(config), "import-facesets", str(tree))
    assert "imported 0 faces into 3 facesets (6 already imported, 1 failed)" in again.stdout

    labels = add_photos(fake, ["wild/obama", "wild/jack_dorsey", "wild/matt_damon", "wild/katy_perry"])
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    manifests = {int(p.parent.name[8:]): json.loads(p.read_text()) for p in facesets.glob("faceset_*/faceset.json")}
    people = {
        number: {labels[f["asset_id"]].split("/")[1] for f in data["faces"] if f["asset_id"]}
        for number, data in manifests.items()
    }
    assert people[7] == {"obama"} and people[216] == {"jack_dorsey"}
    new = sorted(n for n in manifests if n > 216)
    assert new == [217, 218]
    assert {frozenset(people[n]) for n in new} == {frozenset({"matt_damon"}), frozenset({"katy_perry"})}
    # the imported files are also in Immich: their bytes are embedded once and shown under the asset
    assert len(manifests[7]["faces"]) == 4 and {f["source"] for f in manifests[7]["faces"]} == {"alice"}
    assert [(f["source"], f["asset_id"]) for f in manifests[100]["faces"]] == [("import", None)]


def exported(facesets: Path) -> dict[int, list[str]]:
    return {
        int(path.parent.name[8:]): sorted(face["asset_id"] for face in json.loads(path.read_text())["faces"])
        for path in facesets.glob("faceset_*/faceset.json")
    }


def lose_the_database(state: Path) -> None:
    for path in state.glob("facesyncd.db*"):
        path.unlink()


def test_a_lost_database_gives_no_number_to_another_person(fake: FakeImmich, tmp_path: Path) -> None:
    """With facesyncd.db gone, numbers started again at 1 and faceset_001 became another person; and
    importing facesyncd's own export, then syncing, doubled every face (84 became 168)."""
    add_photos(fake, ["wild/obama", "wild/biden", "wild/jack_dorsey"])
    config = write_config(tmp_path / "run", fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    facesets, state = tmp_path / "run" / "facesets", tmp_path / "run" / "state"
    before = exported(facesets)
    assert len(before) >= 2
    assigned = json.loads(run_cli("--config", str(config), "status", "--json").stdout)["faces"]["assigned"]
    files = sorted(str(p.relative_to(facesets)) for p in facesets.rglob("*"))

    lose_the_database(state)
    downloads = fake.count("GET", "/api/assets/")
    refused = run_cli("--config", str(config), "sync")
    assert refused.returncode == 9, refused.stderr
    assert f"facesyncd import-facesets {facesets}" in refused.stderr and "--fresh" in refused.stderr
    daemon = run_cli("--config", str(config), "run", timeout=60)  # the service refuses at start, too
    assert daemon.returncode == 9 and "import-facesets" in daemon.stderr, daemon.stderr
    assert sorted(str(p.relative_to(facesets)) for p in facesets.rglob("*")) == files, "the tree was touched"
    assert fake.count("GET", "/api/assets/") == downloads

    adopted = run_cli("--config", str(config), "import-facesets", str(facesets))
    assert adopted.returncode == 0, adopted.stderr
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert exported(facesets) == before, "a faceset changed person or lost a face"
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["faces"]["assigned"] == assigned, "imported faces were counted twice"


def test_starting_over_keeps_the_old_facesets_and_their_numbers(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/biden"])
    config = write_config(tmp_path / "run", fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    facesets, state = tmp_path / "run" / "facesets", tmp_path / "run" / "state"
    before = exported(facesets)
    lose_the_database(state)
    result = run_cli("--config", str(config), "sync", "--fresh")
    assert result.returncode == 0, result.stderr
    kept = facesets / ".facesyncd-preserved"
    assert sorted(p.name for p in kept.iterdir()) == sorted(f"faceset_{n:03d}" for n in before)
    after = exported(facesets)
    assert min(after) > max(before), "a number of the old facesets was given again"
    assert sorted(after.values()) == sorted(before.values())
