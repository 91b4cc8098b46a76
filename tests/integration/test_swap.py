"""Swap-ready facesets: quality per face, one clean face per PNG, bundles as the face tools read them."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import PHOTOS, TEST_PACK, add_photos, requires_shared, run_cli, write_config
from facesyncd.bundles import Bundle
from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.imaging import DecodedImage, decode_image
from facesyncd.onnx_embedder import OnnxEmbedder
from facesyncd.quality import assess, blur_score, frontality_score, symmetry_score
from fake_immich import FakeImmich, iso

pytestmark = requires_shared


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    return OnnxEmbedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), FaceSettings(min_face_px=0)
    )


def largest(embedder: OnnxEmbedder, image: DecodedImage):
    return max(embedder.faces(image), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))


# -- the quality score, part by part --------------------------------------------------------------


def test_a_blurred_copy_scores_lower_on_sharpness(embedder: OnnxEmbedder) -> None:
    image = decode_image(PHOTOS / "wild" / "obama" / "obama.jpg", max_pixels=10**9)
    face = largest(embedder, image)
    sharp = blur_score(image.pixels, face.bbox)
    blurred = blur_score(cv2.GaussianBlur(image.pixels, (0, 0), 3), face.bbox)
    assert sharp > 0.8 and blurred < sharp - 0.3
    # normalised for size: the same face at half the resolution is about as sharp
    half = cv2.resize(image.pixels, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert abs(blur_score(half, tuple(v / 2 for v in face.bbox)) - sharp) < 0.15  # type: ignore[arg-type]


def test_a_mirrored_face_keeps_its_symmetry(embedder: OnnxEmbedder) -> None:
    image = decode_image(PHOTOS / "wild" / "obama" / "obama.jpg", max_pixels=10**9)
    mirrored = DecodedImage(np.ascontiguousarray(image.pixels[:, ::-1]), image.format)
    face, twin = largest(embedder, image), largest(embedder, mirrored)
    original, flipped = (
        assess(image.pixels, face.bbox, face.landmarks, face.det_score),
        assess(mirrored.pixels, twin.bbox, twin.landmarks, twin.det_score),
    )
    assert abs(original.symmetry - flipped.symmetry) < 0.05 and original.symmetry > 0.8


def test_a_profile_scores_lower_on_frontality_and_symmetry() -> None:
    frontal = np.array([[40, 50], [72, 50], [56, 71], [44, 86], [68, 86]], float)
    turned = np.array([[52, 50], [80, 50], [82, 71], [58, 86], [80, 86]], float)  # nose past the eye
    looking_up = np.array([[40, 50], [72, 50], [56, 55], [44, 86], [68, 86]], float)
    assert frontality_score(frontal) > 0.8 and symmetry_score(frontal) > 0.95
    assert frontality_score(turned) < 0.2 and symmetry_score(turned) < symmetry_score(frontal)
    assert frontality_score(looking_up) < 0.3
    # rotated in the picture plane (a tilted head): the same scores
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tilted = frontal @ rotation.T + 300
    assert abs(frontality_score(tilted) - frontality_score(frontal)) < 1e-6
    assert abs(symmetry_score(tilted) - symmetry_score(frontal)) < 1e-6


# -- the swap layout, end to end ------------------------------------------------------------------


SWAP = '[export]\nformat = "swap"\ntop_n = 3\n'


@pytest.fixture
def swap_library(fake: FakeImmich, tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """Angelina Jolie's portraits, and a photo where she stands cheek to cheek with a man; two
    copies of one portrait (the original and a smaller one)."""
    labels = add_photos(fake, ["wild/angelina_jolie", "groups/couple.jpg"])
    image = cv2.imread(str(PHOTOS / "wild" / "angelina_jolie" / "img1.jpg"))
    smaller = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    labels[fake.add_asset("alice", cv2.imencode(".jpg", smaller)[1].tobytes(), "img1-small.jpg")] = "copy"
    config = write_config(tmp_path, fake.url, extra="", faces="min_face_px = 40")
    config.write_text(config.read_text() + SWAP)
    yield config, tmp_path / "facesets", labels


def the_set(facesets: Path) -> tuple[Path, dict]:
    [folder] = [path for path in facesets.glob("faceset_*") if path.is_dir()]
    return folder, json.loads((folder / "manifest.json").read_text())


def test_swap_sets_hold_one_clean_face_per_png_as_the_face_tools_read_them(
    swap_library: tuple[Path, Path, dict[str, str]], embedder: OnnxEmbedder
) -> None:
    """A face-swap tool unzips the .fsz, detects every face in every PNG and averages their
    embeddings: exactly one face per PNG, and the average close to the identity's centre."""
    config, facesets, labels = swap_library
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    folder, manifest = the_set(facesets)
    number = manifest["number"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".png")) == sorted(
        ["NAME.txt", "manifest.json", f"faceset_{number:03d}.fsz", f"faceset_{number:03d}.top.fsz", "top"]
    )
    pngs = sorted(p.name for p in folder.glob("*.png"))
    ranked = [face["file"] for face in manifest["faces"]]  # best first; names stay as ranks change
    assert pngs == sorted(ranked)
    # top/: the best top_n again, loose, the same files (no second copy on disk)
    assert sorted(p.name for p in (folder / "top").iterdir()) == sorted(ranked[:3])
    assert all((folder / "top" / name).stat().st_ino == (folder / name).stat().st_ino for name in ranked[:3])
    composites = [face["quality"]["composite"] for face in manifest["faces"]]
    assert composites == sorted(composites, reverse=True)
    assert all(
        set(face["quality"]) == {"composite", "det_score", "size", "blur", "frontality", "symmetry"}
        for face in manifest["faces"]
    )
    everything = zipfile.ZipFile(folder / f"faceset_{number:03d}.fsz")
    top = zipfile.ZipFile(folder / f"faceset_{number:03d}.top.fsz")
    assert everything.namelist() == ranked and top.namelist() == ranked[:3]  # the bundles keep the rank
    embeddings = []
    for name in everything.namelist():
        data = np.frombuffer(everything.read(name), np.uint8)
        pixels = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert pixels.shape == (512, 512, 3), name
        found = embedder.faces(DecodedImage(pixels, "PNG"), min_face_px=0)
        assert len(found) == 1, f"{name}: {len(found)} faces"
        embeddings.append(found[0].embedding)
    average = np.mean(embeddings, axis=0)
    average /= np.linalg.norm(average)
    portraits = [
        largest(embedder, decode_image(path, max_pixels=10**9)).embedding
        for path in sorted((PHOTOS / "wild" / "angelina_jolie").glob("*.jpg"))
    ]
    centre = np.mean(portraits, axis=0)
    centre /= np.linalg.norm(centre)
    assert 1 - float(average @ centre) < 0.15
    # the couple photo's face is in the set, with the man masked out, or left out with the reason
    couple = next(asset for asset, label in labels.items() if label.endswith("couple.jpg"))
    placed = [face for face in manifest["faces"] if face["asset_id"] == couple]
    left = {entry["face_id"]: entry["why"] for entry in manifest["left_out"]}
    assert placed or any("other face" in why for why in left.values()), manifest
    # the smaller copy of a portrait is a near-duplicate: one of the two is in the set
    copy = next(asset for asset, label in labels.items() if label == "copy")
    original = next(asset for asset, label in labels.items() if label.endswith("angelina_jolie/img1.jpg"))
    in_set = {face["asset_id"] for face in manifest["faces"]}
    assert len(in_set & {copy, original}) == 1
    assert any("near-duplicate" in why for why in left.values())
    # the tree's own manifest lists the set
    tree = json.loads((facesets / "manifest.json").read_text())
    assert [entry["number"] for entry in tree["facesets"]] == [number]
    assert tree["facesets"][0]["faces"] == len(pngs)


def test_swap_export_is_idempotent_keeps_the_users_name_and_switches_layout_once(
    swap_library: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, facesets, _ = swap_library
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder, manifest = the_set(facesets)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = run_cli("--config", str(config), "sync")
    assert "0 folders written" in again.stdout, again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    # every folder compared with the store (as after a change of settings): a folder that holds its
    # bundles costs no bundle made nor read (each was built from its PNGs: every PNG of the library)
    with sqlite3.connect(config.parent / "state" / "facesyncd.db") as db:
        db.execute("DELETE FROM meta WHERE key = 'unchanged:publish'")
    bundles: list[str] = []
    monkeypatch.setattr(Bundle, "write", lambda self, target: bundles.append(target.name))
    monkeypatch.setattr(Bundle, "written_at", lambda self, target: bundles.append(target.name) or False)
    whole = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert "0 folders written" in whole.stdout and "exporting the" not in whole.stderr, whole.stderr
    assert bundles == [] and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    monkeypatch.undo()
    (folder / "NAME.txt").write_text("Angelina\n")  # the user names the set
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder, manifest = the_set(facesets)
    assert manifest["name"] == "Angelina" and (folder / "NAME.txt").read_text() == "Angelina\n"
    assert json.loads((facesets / "manifest.json").read_text())["facesets"][0]["name"] == "Angelina"
    # back to the crops layout: rewritten once, the user's NAME.txt kept
    config.write_text(config.read_text().replace('format = "swap"', 'format = "crops"'))
    result = run_cli("--config", str(config), "sync")
    assert "1 folders written" in result.stdout, result.stdout
    assert (folder / "faceset.json").is_file() and not (folder / "manifest.json").exists()
    assert (folder / "NAME.txt").read_text() == "Angelina\n" and not list(folder.glob("*.fsz"))
    assert "0 folders written" in run_cli("--config", str(config), "sync").stdout


def test_min_quality_leaves_faces_out_of_the_set_not_the_store(
    swap_library: tuple[Path, Path, dict[str, str]],
) -> None:
    config, facesets, _ = swap_library
    assert run_cli("--config", str(config), "sync").returncode == 0
    _, every = the_set(facesets)
    scores = sorted(face["quality"]["composite"] for face in every["faces"])
    cut = (scores[0] + scores[-1]) / 2
    config.write_text(config.read_text().replace("top_n = 3", f"top_n = 3\nmin_quality = {cut:.4f}"))
    assert run_cli("--config", str(config), "sync").returncode == 0
    _, fewer = the_set(facesets)
    assert 0 < len(fewer["faces"]) < len(every["faces"])
    assert all(face["quality"]["composite"] >= cut for face in fewer["faces"])
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["faces"]["assigned"] >= len(every["faces"]), "faces were deleted for their quality"


def test_crop_folders_show_each_faces_quality(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    [manifest] = (tmp_path / "facesets").glob("faceset_*/faceset.json")
    for face in json.loads(manifest.read_text())["faces"]:
        assert 0 < face["quality"]["composite"] <= 1


def test_faces_stored_before_qualities_get_theirs_from_their_crops(fake: FakeImmich, tmp_path: Path) -> None:
    """A database from before version 4 has no quality: the next export measures it from the crops."""
    import sqlite3

    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    database = tmp_path / "state" / "facesyncd.db"
    with sqlite3.connect(database) as connection:
        fresh = dict(connection.execute("SELECT id, quality FROM faces WHERE identity IS NOT NULL"))
        connection.execute(
            "UPDATE faces SET quality = NULL, q_det_score = NULL, q_size = NULL, q_blur = NULL, q_frontality = NULL, "
            "q_symmetry = NULL"
        )
    fake.add_file("alice", PHOTOS / "edge" / "obama_partial_face.jpg")
    assert run_cli("--config", str(config), "sync").returncode == 0
    with sqlite3.connect(database) as connection:
        measured = dict(connection.execute("SELECT id, quality FROM faces WHERE identity IS NOT NULL"))
    assert all(measured[face] is not None and abs(measured[face] - fresh[face]) < 0.08 for face in fresh)


def _png_faces(data: bytes, embedder: OnnxEmbedder) -> int:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return len(embedder.faces(DecodedImage(pixels, "PNG"), min_face_px=0))


def test_an_intruding_face_is_masked_out_or_the_png_left_out(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    """The PNG check on a crowd (the Solvay conference, 29 faces): a square padded by half a face
    holds neighbours' faces too; after the check each PNG holds exactly one, or is left out with why."""
    from facesyncd.swap import SwapCache

    image = decode_image(PHOTOS / "groups" / "solvay_conference_1927.jpg", max_pixels=10**9)
    faces = embedder.faces(image, min_face_px=0)
    cache = SwapCache(tmp_path / "swap", 256, 0.5)
    intruded = excluded = 0
    for index, face in enumerate(faces):
        name = f"ab/x_{index}.jpg"
        cache.make(name, image.pixels, face.bbox)
        intruded += _png_faces(cache.png(name).read_bytes(), embedder) > 1
        cache.check(name, face.bbox, embedder)
        why = cache.excluded(name)
        if why is None:
            assert _png_faces(cache.png(name).read_bytes(), embedder) == 1, name
        else:
            excluded += 1
            assert "could not be masked" in why or "no face" in why
    assert intruded >= 3, f"crowded faces: the squares hold their neighbours ({intruded})"
    assert excluded < intruded, "masking saved some of them"


def test_a_contact_sheet_shows_a_faceset_best_first(fake: FakeImmich, tmp_path: Path) -> None:
    add_photos(fake, ["wild/obama"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    [manifest] = (tmp_path / "facesets").glob("faceset_*/faceset.json")
    data = json.loads(manifest.read_text())
    out = tmp_path / "sheet.png"
    result = run_cli("--config", str(config), "faceset", "sheet", str(data["number"]), "--out", str(out))
    assert result.returncode == 0 and f"wrote {out}" in result.stdout, result.stderr
    sheet = cv2.imread(str(out))
    faces = len(data["faces"])
    assert sheet.shape[1] == 160 * min(6, faces) and sheet.shape[0] > 160
    tile = sheet[34 : 34 + 160, 0:160]
    assert tile.std() > 20, "the first tile is empty"
    missing = run_cli("--config", str(config), "faceset", "sheet", "99")
    assert missing.returncode == 1 and "faceset 099 has no faces" in missing.stderr


def test_a_correction_in_the_swap_layout_rewrites_its_folders_and_keeps_the_rest_of_the_tree_manifest(
    swap_library: tuple[Path, Path, dict[str, str]], fake: FakeImmich
) -> None:
    """A correction writes only the folders it touches; the tree's manifest.json keeps the other
    facesets' entries, and equals what a whole export writes."""
    config, facesets, _ = swap_library
    add_photos(fake, ["wild/katy_perry"])
    assert run_cli("--config", str(config), "sync").returncode == 0
    numbers = sorted(int(path.name[8:]) for path in facesets.glob("faceset_*") if path.is_dir())
    assert len(numbers) >= 2
    first = numbers[0]
    named = run_cli("--config", str(config), "faceset", "name", str(first), "Someone")
    assert named.returncode == 0, named.stderr
    tree = json.loads((facesets / "manifest.json").read_text())
    assert sorted(entry["number"] for entry in tree["facesets"]) == numbers
    assert next(entry for entry in tree["facesets"] if entry["number"] == first)["name"] == "Someone"
    partial = (facesets / "manifest.json").read_bytes()
    whole = run_cli("--config", str(config), "sync")
    assert "0 folders written" in whole.stdout, whole.stdout
    assert (facesets / "manifest.json").read_bytes() == partial


def test_a_merged_away_swap_faceset_leaves_no_folder_behind(
    swap_library: tuple[Path, Path, dict[str, str]], fake: FakeImmich
) -> None:
    """A merged-away faceset left a folder holding only NAME.txt and `faces: []`: facesyncd counted
    its own NAME.txt as a file of the user's (issue 22, part 3). A file of the user's still keeps one."""
    config, facesets, _ = swap_library
    add_photos(fake, ["wild/katy_perry", "wild/matt_damon"])
    assert run_cli("--config", str(config), "sync").returncode == 0
    numbers = sorted(int(path.name[8:]) for path in facesets.glob("faceset_*") if path.is_dir())
    kept, gone, other = numbers[0], numbers[1], numbers[2]
    assert (facesets / f"faceset_{gone:03d}" / "NAME.txt").is_file()
    merged = run_cli("--config", str(config), "faceset", "merge", str(kept), str(gone))
    assert merged.returncode == 0, merged.stderr
    assert not (facesets / f"faceset_{gone:03d}").exists()
    tree = json.loads((facesets / "manifest.json").read_text())
    assert gone not in [entry["number"] for entry in tree["facesets"]]
    (facesets / f"faceset_{other:03d}" / "notes.txt").write_text("mine")
    assert run_cli("--config", str(config), "faceset", "merge", str(kept), str(other)).returncode == 0
    assert (facesets / f"faceset_{other:03d}" / "notes.txt").read_text() == "mine"
    assert "0 folders written" in run_cli("--config", str(config), "sync").stdout


def test_a_change_of_an_export_setting_reaches_every_faceset_at_the_next_cycle(
    swap_library: tuple[Path, Path, dict[str, str]],
) -> None:
    """[export] top_n from 8 to 3: faceset_001.top.fsz still held 6 faces after 5 syncs (issue 22,
    part 7). The manifest records the settings its files were made with, and which faces are top."""
    import zipfile

    config, facesets, _ = swap_library
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder, manifest = the_set(facesets)
    assert manifest["png"] == {"size": 512, "padding": 0.5, "top_n": 3, "bundles": "both"}
    assert [face["top"] for face in manifest["faces"]][:4] == [True, True, True, False]
    config.write_text(config.read_text().replace("top_n = 3", "top_n = 2"))
    result = run_cli("--config", str(config), "sync")
    assert "1 folders written" in result.stdout, result.stdout
    folder, manifest = the_set(facesets)
    with zipfile.ZipFile(folder / f"{folder.name}.top.fsz") as bundle:
        assert len(bundle.namelist()) == 2
    assert sum(face["top"] for face in manifest["faces"]) == 2 and manifest["png"]["top_n"] == 2


def test_a_faces_file_name_survives_a_split_a_merge_and_a_new_rank(
    swap_library: tuple[Path, Path, dict[str, str]], fake: FakeImmich
) -> None:
    """002_face_0000980.png became 001_face_0000980.png after a split: tools that keep paths broke
    (issue 22, part 2). A face keeps its file name while it stays in the set; rank is the manifest's."""
    config, facesets, _ = swap_library
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder, manifest = the_set(facesets)
    number = manifest["number"]
    files = {face["face_id"]: face["file"] for face in manifest["faces"]}
    assert all(name == f"face_{face:07d}.png" for face, name in files.items())
    assert [face["rank"] for face in manifest["faces"]] == list(range(1, len(files) + 1))
    best = manifest["faces"][0]["face_id"]
    split = run_cli("--config", str(config), "faceset", "split", str(number), str(best))  # the best one leaves
    assert split.returncode == 0, split.stderr
    folder, manifest = the_set_numbered(facesets, number)
    after = {face["face_id"]: face["file"] for face in manifest["faces"]}
    assert best not in after and all(after[face] == files[face] for face in after if face in files)
    assert all(name == f"face_{face:07d}.png" for face, name in after.items())  # one left out before, too
    assert manifest["faces"][0]["rank"] == 1 and (folder / manifest["faces"][0]["file"]).is_file()
    new = max(int(path.name[8:]) for path in facesets.glob("faceset_*") if path.is_dir())
    merged = run_cli("--config", str(config), "faceset", "merge", str(number), str(new))
    assert merged.returncode == 0, merged.stderr
    folder, manifest = the_set_numbered(facesets, number)
    assert all(face["file"] == f"face_{face['face_id']:07d}.png" for face in manifest["faces"])
    assert {face["face_id"]: face["file"] for face in manifest["faces"]}.get(best) == files[best]  # back, same name


def the_set_numbered(facesets: Path, number: int) -> tuple[Path, dict]:
    folder = facesets / f"faceset_{number:03d}"
    return folder, json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("bundles", "expected"),
    [("both", {".fsz", ".top.fsz"}), ("top", {".top.fsz"}), ("full", {".fsz"}), ("none", set())],
)
def test_each_bundles_setting_writes_those_bundles_and_the_top_folder(
    swap_library: tuple[Path, Path, dict[str, str]], bundles: str, expected: set[str]
) -> None:
    """[export] bundles: the full .fsz repeats every PNG (574 MB of export for a 17 MB library);
    a user whose tool takes files keeps the loose PNGs and top/ alone."""
    config, facesets, _ = swap_library
    config.write_text(config.read_text().replace("top_n = 3\n", f'top_n = 3\nbundles = "{bundles}"\n'))
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder, manifest = the_set(facesets)
    written = {path.name[len(folder.name) :] for path in folder.glob("*.fsz")}
    assert written == expected
    assert sorted(manifest["bundles"]) == sorted(folder.name + suffix for suffix in expected)
    ranked = [face["file"] for face in manifest["faces"]]
    assert sorted(p.name for p in (folder / "top").iterdir()) == sorted(ranked[:3])
    assert manifest["top_folder"] == "top" and [face["top"] for face in manifest["faces"]][:4] == [True] * 3 + [False]
    # another value later: the bundles follow at the next cycle, and the folder holds nothing stale
    config.write_text(config.read_text().replace(f'bundles = "{bundles}"', 'bundles = "both"'))
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert {path.name[len(folder.name) :] for path in folder.glob("*.fsz")} == {".fsz", ".top.fsz"}
    config.write_text(config.read_text().replace('bundles = "both"', 'bundles = "none"'))
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert list(folder.glob("*.fsz")) == []
    assert json.loads((folder / "manifest.json").read_text())["user_files"] == ["NAME.txt"], "a bundle was kept"


SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"


def schema_of(kind: str):  # noqa: ANN201 - a jsonschema validator
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    readme = (SCHEMA.parents[1] / "README.md").read_text()
    guide = (SCHEMA.parent / "export.md").read_text()
    assert "docs/manifest.schema.json" in readme and "(manifest.schema.json)" in guide, "the schema is not linked"
    return Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]})


def test_the_manifests_follow_the_schema_the_readme_points_to(
    fake: FakeImmich, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    """What scripts need, versioned: per face its photo's file name, date and page in Immich, its
    box in the PNG's own pixels; for a number merged away, where its faces went."""
    from facesyncd.boxes import overlap

    labels = add_photos(fake, ["wild/katy_perry", "wild/matt_damon", "wild/angelina_jolie"])
    config = write_config(tmp_path, fake.url, faces="min_face_px = 40")
    config.write_text(config.read_text() + SWAP)
    assert run_cli("--config", str(config), "sync").returncode == 0
    facesets = tmp_path / "facesets"
    numbers = sorted(int(path.name[8:]) for path in facesets.glob("faceset_*") if path.is_dir())
    assert len(numbers) >= 2
    kept, gone = numbers[0], numbers[1]
    (facesets / f"faceset_{gone:03d}" / "notes.txt").write_text("mine")  # keeps its folder
    assert run_cli("--config", str(config), "faceset", "merge", str(kept), str(gone)).returncode == 0

    tree = json.loads((facesets / "manifest.json").read_text())
    schema_of("tree").validate(tree)
    assert tree["schema_version"] == 2 and tree["retired"] == [{"number": gone, "merged_into": kept}]
    assert "top/" in " ".join(tree["facesets"][0]["files"])
    leftover = json.loads((facesets / f"faceset_{gone:03d}" / "manifest.json").read_text())
    schema_of("faceset").validate(leftover)
    assert leftover["faces"] == [] and leftover["merged_into"] == kept
    checked = 0
    for entry in tree["facesets"]:
        folder = facesets / entry["folder"]
        manifest = json.loads((folder / "manifest.json").read_text())
        schema_of("faceset").validate(manifest)
        for face in manifest["faces"]:
            asset = fake.assets[face["asset_id"]]
            assert face["file_name"] == asset.original_file_name == Path(labels[face["asset_id"]]).name
            assert face["taken_at"] == iso(asset.file_created_at)
            assert face["immich_url"] == f"{fake.url.rstrip('/')}/photos/{face['asset_id']}".replace("/api/", "/")
            pixels = cv2.imread(str(folder / face["file"]))
            found = embedder.faces(DecodedImage(pixels, "PNG"), min_face_px=0)
            assert max(overlap(tuple(face["png_box"]), f.bbox) for f in found) > 0.6, face["file"]
            checked += 1
    assert checked >= 10

    # the crops layout's faceset.json, by the same schema
    config.write_text(config.read_text().replace('format = "swap"', 'format = "crops"'))
    assert run_cli("--config", str(config), "sync").returncode == 0
    crops = [json.loads(path.read_text()) for path in facesets.glob("faceset_*/faceset.json")]
    assert crops
    for manifest in crops:
        schema_of("crops").validate(manifest)
        assert all(face["immich_url"] and face["taken_at"] for face in manifest["faces"])
