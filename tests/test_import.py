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
    assert sorted(p.name for p in facesets.iterdir()) == ["faceset_007", "faceset_100", "faceset_216"]
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
