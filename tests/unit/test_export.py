"""Faceset folders are shared with people: their files, their folders and leftovers of crashes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from facesyncd.export import PRESERVED, export_all, update_marked
from facesyncd.models import ExportFace


def make_faces(crops: Path, ids: list[int]) -> list[ExportFace]:
    faces = []
    for face_id in ids:
        crop = f"ab/crop_{face_id}.jpg"
        (crops / crop).parent.mkdir(parents=True, exist_ok=True)
        (crops / crop).write_bytes(f"jpeg of face {face_id}".encode())
        asset = f"00000000-0000-4000-8000-{face_id:012d}"
        faces.append(ExportFace(face_id, "ab" * 32, "alice", asset, crop, (1.0, 2.0, 30.0, 40.0), 0.9, 0.1))
    return faces


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    crops, facesets = tmp_path / "crops", tmp_path / "facesets"
    crops.mkdir()
    return crops, facesets


def snapshot(folder: Path) -> dict[str, bytes | str]:
    return {
        str(path.relative_to(folder)): os.readlink(path) if path.is_symlink() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def test_files_the_user_put_in_a_faceset_folder_are_kept_and_reported_once(
    tree: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Any extra file made the folder "not current": it was rebuilt and the old one removed."""
    crops, facesets = tree
    export_all(facesets, crops, {1: make_faces(crops, [1, 2])})
    folder = facesets / "faceset_001"
    (folder / "notes.txt").write_text("Aunt Mary, 1990s")
    (folder / "hand-picked.jpg").write_bytes(b"a photo the user added")
    (folder / "mine").mkdir()
    (folder / "mine" / "more.txt").write_text("kept too")
    os.symlink("/nowhere/in/particular", folder / "a-link")
    users = snapshot(folder)
    del users["face_0000001.jpg"], users["face_0000002.jpg"], users["faceset.json"]
    caplog.set_level(logging.WARNING)

    # the folder must change (a third face): the user's files go along into the rebuilt folder
    assert export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])}) == 1
    after = snapshot(folder)
    assert {name: after.get(name) for name in users} == users
    assert "face_0000003.jpg" in after
    manifest = json.loads((folder / "faceset.json").read_text())
    assert manifest["user_files"] == ["a-link", "hand-picked.jpg", "mine", "notes.txt"]
    assert caplog.text.count("that facesyncd did not write") == 1

    # again: nothing to do, nothing reported again
    caplog.clear()
    assert export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])}) == 0
    assert "did not write" not in caplog.text

    # a file added later is reported (once) and kept
    (folder / "later.txt").write_text("added later")
    assert export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])}) == 1
    assert caplog.text.count("later.txt") == 1
    assert export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])}) == 0

    # every photo of the person deleted: facesyncd's files go, the user's stay
    export_all(facesets, crops, {1: []})
    left = snapshot(folder)
    assert {name: left.get(name) for name in users} == users and "later.txt" in left
    assert not any(name.startswith("face_") for name in left)
    assert json.loads((folder / "faceset.json").read_text())["faces"] == []
    assert export_all(facesets, crops, {1: []}) == 0


def test_folders_the_user_made_beside_ours_are_never_touched(tree: tuple[Path, Path]) -> None:
    crops, facesets = tree
    export_all(facesets, crops, {1: make_faces(crops, [1])})
    for name in ("faceset_001_2010-13", "_thin", "my album", "faceset_001.bak"):
        (facesets / name).mkdir()
        (facesets / name / "photo.jpg").write_bytes(name.encode())
    before = {name: snapshot(facesets / name) for name in ("faceset_001_2010-13", "_thin", "my album")}
    export_all(facesets, crops, {1: make_faces(crops, [1, 2])})
    export_all(facesets, crops, {1: []})
    assert {name: snapshot(facesets / name) for name in before} == before
    assert (facesets / "faceset_001.bak" / "photo.jpg").exists()


def test_a_leftover_old_folder_that_is_a_link_does_not_break_every_export(tree: tuple[Path, Path]) -> None:
    """`.faceset_NNN.old` as a symbolic link made the swap fail with "Not a directory" (exit 8) at
    every later sync; worse, restoring it would have put the link in the faceset's place."""
    crops, facesets = tree
    export_all(facesets, crops, {1: make_faces(crops, [1])})
    elsewhere = facesets.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "faceset.json").write_text("{}")
    (elsewhere / "precious.txt").write_text("must survive")
    os.symlink(elsewhere, facesets / ".faceset_001.old")
    os.symlink(elsewhere, facesets / ".faceset_002.old")  # and one whose faceset is missing
    for _ in range(2):
        export_all(facesets, crops, {1: make_faces(crops, [1, 2]), 2: make_faces(crops, [3])})
    assert (elsewhere / "precious.txt").read_text() == "must survive"
    assert not (facesets / "faceset_002").is_symlink() and (facesets / "faceset_002" / "face_0000003.jpg").exists()
    assert not list(facesets.glob(".faceset_*"))


def test_a_second_folder_facesyncd_did_not_write_is_set_aside_too(tree: tuple[Path, Path]) -> None:
    """The first such folder went to .facesyncd-preserved/faceset_NNN; a second one could not
    (the name was taken), and every later sync exited 8."""
    crops, facesets = tree
    for round_ in range(2):
        (facesets / "faceset_005").mkdir(parents=True)
        (facesets / "faceset_005" / "old.jpg").write_bytes(f"the user's photo, round {round_}".encode())
        export_all(facesets, crops, {5: make_faces(crops, [1 + round_])})
        (facesets / "faceset_005" / "faceset.json").unlink()  # make it look foreign again
        for path in (facesets / "faceset_005").iterdir():
            path.unlink()
        (facesets / "faceset_005").rmdir()
    kept = sorted((facesets / PRESERVED).iterdir())
    assert len(kept) == 2
    assert sorted((path / "old.jpg").read_bytes() for path in kept) == [
        b"the user's photo, round 0",
        b"the user's photo, round 1",
    ]


def test_a_contact_sheet_says_what_the_folder_does_with_each_face() -> None:
    """The contact sheet, like the page, marks the top bundle, the rank and the faces left out."""
    from facesyncd.actions import sheet_caption
    from facesyncd.export import Exported

    face = ExportFace(7, "ab" * 32, "alice", "a", "c.jpg", (1.0, 2.0, 30.0, 40.0), 0.9, 0.1)
    folder = Exported({7: 1, 8: 5}, frozenset({7}), {9: "a near-duplicate of face 7"})
    assert sheet_caption(face, folder) == "#7 top 1"
    assert sheet_caption(replace(face, face_id=8), folder) == "#8 #5"
    assert sheet_caption(replace(face, face_id=9), folder) == "#9 left out"
    assert sheet_caption(face, None) == "#7"
    assert folder.status(10) == "not exported"


def test_a_manifest_is_json_with_each_face_on_a_line_of_its_own(tree: tuple[Path, Path]) -> None:
    """Written by the C encoder, face by face (an indented json.dumps runs in Python: a third of
    writing a folder), and still a file a person reads line by line."""
    crops, facesets = tree
    faces = make_faces(crops, [3, 4, 5])
    export_all(facesets, crops, {1: faces}, names={1: "Zoë"})
    text = (facesets / "faceset_001" / "faceset.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert [face["face_id"] for face in data["faces"]] == [3, 4, 5] and data["name"] == "Zoë"
    lines = text.splitlines()
    assert [json.loads(line.rstrip(","))["face_id"] for line in lines if line.startswith('  {"face_id"')] == [3, 4, 5]
    assert ' "number": 1,' in lines
    assert export_all(facesets, crops, {1: faces}, names={1: "Zoë"}) == 0  # read back as written


def inodes(folder: Path) -> dict[str, int]:
    return {entry.name: entry.inode() for entry in os.scandir(folder)}


def test_a_folder_that_is_there_changes_only_where_its_faces_did(tree: tuple[Path, Path]) -> None:
    """A faceset that gains and loses a face gets one file more and one less, and a new manifest; the
    folder and the files of its other faces stay as they were (a rebuild wrote them all again)."""
    crops, facesets = tree
    export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])})
    folder = facesets / "faceset_001"
    (folder / "notes.txt").write_text("mine")
    before, folder_inode = inodes(folder), folder.stat().st_ino

    assert export_all(facesets, crops, {1: make_faces(crops, [2, 3, 4])}) == 1
    after = inodes(folder)
    assert folder.stat().st_ino == folder_inode
    assert set(after) == {"faceset.json", "notes.txt", "face_0000002.jpg", "face_0000003.jpg", "face_0000004.jpg"}
    for kept in ("notes.txt", "face_0000002.jpg", "face_0000003.jpg"):
        assert after[kept] == before[kept], f"{kept} was written again"
    manifest = json.loads((folder / "faceset.json").read_text())
    assert [face["face_id"] for face in manifest["faces"]] == [2, 3, 4]
    assert manifest["user_files"] == ["notes.txt"] and not (folder / ".facesyncd-pending").exists()
    assert (folder / "face_0000004.jpg").read_bytes() == b"jpeg of face 4"

    # a crop cut again (a new file under the same name) replaces the folder's copy once the folder changes
    (crops / "ab/crop_3.jpg").unlink()
    assert export_all(facesets, crops, {1: make_faces(crops, [2, 3, 4, 5])}) == 1
    assert (folder / "face_0000003.jpg").stat().st_ino == (crops / "ab/crop_3.jpg").stat().st_ino
    assert (folder / "face_0000002.jpg").stat().st_ino == after["face_0000002.jpg"]


def test_an_update_killed_midway_is_finished_by_the_next_export(tree: tuple[Path, Path]) -> None:
    """What a kill leaves (the list of names that were changing, some new files placed, some old ones
    still there, temporary files) is facesyncd's, never the user's."""
    crops, facesets = tree
    export_all(facesets, crops, {1: make_faces(crops, [1, 2, 3])})
    folder = facesets / "faceset_001"
    pending = ["face_0000001.jpg", "face_0000004.jpg", "face_0000009.jpg"]
    (folder / ".facesyncd-pending").write_text(json.dumps(pending))
    (folder / "face_0000004.jpg").write_bytes(b"half of face 4")
    (folder / ".tmp-faceset.json.x1y2").write_text("{")
    (folder / ".tmp-.facesyncd-pending.x1y2").write_text("[")

    assert export_all(facesets, crops, {1: make_faces(crops, [2, 3, 4])}) == 1
    assert sorted(os.listdir(folder)) == ["face_0000002.jpg", "face_0000003.jpg", "face_0000004.jpg", "faceset.json"]
    assert (folder / "face_0000004.jpg").read_bytes() == b"jpeg of face 4"
    assert "user_files" not in json.loads((folder / "faceset.json").read_text())
    assert export_all(facesets, crops, {1: make_faces(crops, [2, 3, 4])}) == 0

    # killed after the manifest, before the list went: the list alone is finished off
    (folder / ".facesyncd-pending").write_text(json.dumps(["face_0000004.jpg"]))
    assert export_all(facesets, crops, {1: make_faces(crops, [2, 3, 4])}) == 1
    assert sorted(os.listdir(folder)) == ["face_0000002.jpg", "face_0000003.jpg", "face_0000004.jpg", "faceset.json"]


def test_a_manifest_naming_files_outside_its_folder_touches_none_of_them(tmp_path: Path) -> None:
    crops, facesets = tmp_path / "crops", tmp_path / "deep" / "facesets"
    crops.mkdir()
    export_all(facesets, crops, {1: make_faces(crops, [1])})
    folder = facesets / "faceset_001"
    outside = tmp_path / "deep" / "precious.txt"
    outside.write_text("not facesyncd's")
    (folder / "album").mkdir()
    (folder / "album" / "photo.jpg").write_bytes(b"the user's")
    pending = ["../precious.txt", "/etc/hostname", "album", "album/photo.jpg", "top/../../precious.txt"]
    (folder / ".facesyncd-pending").write_text(json.dumps(pending))
    manifest = json.loads((folder / "faceset.json").read_text())
    manifest["faces"].append({"face_id": 7, "file": "../precious.txt"})
    (folder / "faceset.json").write_text(json.dumps(manifest))

    assert export_all(facesets, crops, {1: make_faces(crops, [1, 2])}) == 1
    assert outside.read_text() == "not facesyncd's"
    assert (folder / "album" / "photo.jpg").read_bytes() == b"the user's"
    assert json.loads((folder / "faceset.json").read_text())["user_files"] == ["album"]


def test_copies_where_links_cannot_be_made_are_not_written_again(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A facesets folder on another disk than the state gets copies: a copy keeps its crop's time, so
    the next export knows it holds the same file."""
    crops, facesets = tree

    def no_links(source: object, target: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    faces = make_faces(crops, [1, 2])
    export_all(facesets, crops, {1: faces})
    folder = facesets / "faceset_001"
    before = inodes(folder)
    assert export_all(facesets, crops, {1: [*faces, *make_faces(crops, [3])]}) == 1
    after = inodes(folder)
    assert after["face_0000001.jpg"] == before["face_0000001.jpg"]
    assert after["face_0000002.jpg"] == before["face_0000002.jpg"]
    assert (folder / "face_0000003.jpg").read_bytes() == b"jpeg of face 3"


def test_a_top_folder_made_by_an_update_a_kill_cut_short_is_not_taken_for_the_users(tmp_path: Path) -> None:
    from facesyncd.export import SWAP_MANIFEST, Plan, write_folder

    png = tmp_path / "face.png"
    png.write_bytes(b"png of a face")
    facesets = tmp_path / "facesets"
    facesets.mkdir()

    def plan(top: bool) -> Plan:
        manifest = {"number": 1, "faces": [{"face_id": 1, "file": "01.png"}], "written_by": "facesyncd"}
        files: dict[str, Path | bytes] = {"01.png": png}
        if top:
            manifest["top_folder"] = "top"
            files["top/01.png"] = png
        return Plan(SWAP_MANIFEST, manifest, files)

    assert write_folder(facesets, "faceset_001", plan(top=False))
    folder = facesets / "faceset_001"
    (folder / "top").mkdir()  # the update that turned the top folder on, killed after its first file
    os.link(png, folder / "top" / "01.png")
    (folder / ".facesyncd-pending").write_text(json.dumps(["top/01.png"]))

    assert write_folder(facesets, "faceset_001", plan(top=True))
    manifest = json.loads((folder / SWAP_MANIFEST).read_text())
    assert "user_files" not in manifest and manifest["top_folder"] == "top"
    assert (folder / "top" / "01.png").stat().st_ino == png.stat().st_ino
    assert not write_folder(facesets, "faceset_001", plan(top=True))

    assert write_folder(facesets, "faceset_001", plan(top=False))  # turned off: facesyncd's top/ goes
    assert sorted(os.listdir(folder)) == ["01.png", SWAP_MANIFEST]


def test_a_top_that_is_a_link_leads_no_update_out_of_its_folder(tmp_path: Path) -> None:
    from facesyncd.export import SWAP_MANIFEST, Plan, write_folder

    png = tmp_path / "face.png"
    png.write_bytes(b"png of a face")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "01.png").write_bytes(b"someone else's")
    facesets = tmp_path / "facesets"
    facesets.mkdir()
    manifest = {"number": 1, "faces": [{"face_id": 1, "file": "01.png"}], "written_by": "facesyncd"}
    assert write_folder(facesets, "faceset_001", Plan(SWAP_MANIFEST, manifest, {"01.png": png}))
    folder = facesets / "faceset_001"
    os.symlink(elsewhere, folder / "top")
    (folder / ".facesyncd-pending").write_text(json.dumps(["top/01.png"]))

    with_top = {**manifest, "top_folder": "top"}
    assert write_folder(facesets, "faceset_001", Plan(SWAP_MANIFEST, with_top, {"01.png": png, "top/01.png": png}))
    assert (elsewhere / "01.png").read_bytes() == b"someone else's" and sorted(os.listdir(elsewhere)) == ["01.png"]
    assert (folder / "top").is_dir() and not (folder / "top").is_symlink()
    assert (folder / "top" / "01.png").read_bytes() == b"png of a face"


def test_a_folder_is_brought_in_line_from_its_marked_faces_alone(tree: tuple[Path, Path], tmp_path: Path) -> None:
    """Face 2 left, face 3's box changed, face 4 joined: one file placed, one removed, the manifest
    as an export of every face writes it; the other faces' files are not touched."""
    crops, facesets = tree
    faces = make_faces(crops, [1, 2, 3])
    export_all(facesets, crops, {1: faces, 2: make_faces(crops, [10])})
    folder, other = facesets / "faceset_001", snapshot(facesets / "faceset_002")
    before = inodes(folder)
    moved, joined = replace(faces[2], bbox=(5.0, 6.0, 50.0, 60.0)), make_faces(crops, [4])[0]

    assert update_marked(facesets, crops, {1: {2, 3, 4}}, {1: [moved, joined]}) == ({1}, 1)
    whole = tmp_path / "whole"
    export_all(whole, crops, {1: [faces[0], moved, joined]})
    assert snapshot(folder) == snapshot(whole / "faceset_001")
    after = inodes(folder)
    assert after["face_0000001.jpg"] == before["face_0000001.jpg"] and "face_0000002.jpg" not in after
    assert after["face_0000003.jpg"] == before["face_0000003.jpg"]
    assert snapshot(facesets / "faceset_002") == other
    assert update_marked(facesets, crops, {1: {3}}, {1: [moved]}) == ({1}, 0)  # nothing to change


@pytest.mark.parametrize("point", ["export-retire", "export-update"])
def test_an_update_from_marks_killed_half_way_leaves_no_file_of_facesyncds_to_the_user(
    tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """Killed after a leaving face's file went, or after a joining face's file was placed: the next
    export brings the folder to what an unkilled one writes, and takes none of facesyncd's files
    for the user's (it writes no list of pending names: the manifest names a file before it is
    placed, and after it is gone)."""
    import facesyncd.export as export

    class Killed(BaseException):
        pass

    def checkpoint(name: str) -> None:
        if name == point:
            raise Killed

    crops, facesets = tree
    faces = make_faces(crops, [1, 2, 3])
    export_all(facesets, crops, {1: faces})
    now = [faces[0], faces[2], *make_faces(crops, [4, 5])]
    monkeypatch.setattr(export, "checkpoint", checkpoint)
    with pytest.raises(Killed):
        update_marked(facesets, crops, {1: {2, 4, 5}}, {1: now[2:]})
    monkeypatch.setattr(export, "checkpoint", lambda name: None)
    folder = facesets / "faceset_001"
    assert not (folder / ".facesyncd-pending").exists()
    export_all(facesets, crops, {1: now})
    export_all(tmp_path / "whole", crops, {1: now})
    assert snapshot(folder) == snapshot(tmp_path / "whole" / "faceset_001")
    assert "user_files" not in json.loads((folder / "faceset.json").read_text())


@pytest.mark.parametrize(
    "case", ["no folder yet", "a new sub-set", "left without faces", "crop missing", "manifest in another form"]
)
def test_a_faceset_its_marked_faces_cannot_decide_is_left_to_be_written_whole(
    tree: tuple[Path, Path], case: str
) -> None:
    crops, facesets = tree
    faces = make_faces(crops, [1, 2])
    export_all(facesets, crops, {1: faces})
    folder = facesets / "faceset_001"
    joined = make_faces(crops, [3])[0]
    marked, now = {1: frozenset({3})}, {1: [joined]}
    if case == "no folder yet":
        marked, now = {2: frozenset({3})}, {2: [joined]}
    elif case == "a new sub-set":
        now = {1: [replace(joined, subset="1990s")]}
    elif case == "left without faces":
        marked, now = {1: frozenset({1, 2})}, {}
    elif case == "crop missing":
        (crops / joined.crop).unlink()
    else:  # as a person or another tool writes JSON
        data = json.loads((folder / "faceset.json").read_text())
        (folder / "faceset.json").write_text(json.dumps(data, indent=2))
    before = snapshot(folder)
    assert update_marked(facesets, crops, marked, now) == (frozenset(), 0)
    assert snapshot(folder) == before and not (facesets / "faceset_002").exists()


def test_the_tree_after_an_export_is_read_again_where_it_wrote_alone(tmp_path: Path) -> None:
    """folder_state after an export that wrote some facesets: their folders (and new ones, and the
    top-level files) are looked at again, the others taken from the look before it, and a folder
    gone is gone."""
    from facesyncd.export import MANIFEST, folder_state

    for name in ("faceset_001", "faceset_002", "faceset_002_beach", "faceset_003"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST).write_text("{}")
    before = folder_state(tmp_path)
    assert [entry[0] for entry in before] == ["faceset_001", "faceset_002", "faceset_002_beach", "faceset_003"]
    for name in ("faceset_001", "faceset_002_beach"):  # 2 written, 1 touched by hand meanwhile
        (tmp_path / name / MANIFEST).write_text('{"faces": []}')
    (tmp_path / "faceset_004").mkdir()
    (tmp_path / "faceset_003" / MANIFEST).unlink()
    (tmp_path / "faceset_003").rmdir()
    after = {entry[0]: entry for entry in folder_state(tmp_path, before, written={2, 3, 4})}
    looked = {entry[0]: entry for entry in folder_state(tmp_path)}
    assert after.keys() == looked.keys() == {"faceset_001", "faceset_002", "faceset_002_beach", "faceset_004"}
    assert after["faceset_002_beach"] == looked["faceset_002_beach"] != before[2]
    assert after["faceset_004"] == looked["faceset_004"]
    assert after["faceset_001"] == before[0] != looked["faceset_001"]  # seen at the next look


@pytest.mark.parametrize("kind", ["file", "folder", "link"])
def test_a_users_entry_named_like_a_joining_faces_file_is_renamed_beside_never_replaced(
    tree: tuple[Path, Path], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The user put a photo (or made a folder, or a link) named face_0000003.jpg in faceset_001, say
    copied from another faceset; then face 3 joins it. Its file is written, and the user's entry is
    renamed beside it, never replaced or taken for facesyncd's, on the path from marks as on the whole
    one, and the export does not fail over it."""
    crops, facesets = tree
    faces = make_faces(crops, [1, 2, 3])
    export_all(facesets, crops, {1: faces[:2]})
    folder = facesets / "faceset_001"
    mine = folder / "face_0000003.jpg"
    if kind == "file":
        mine.write_bytes(b"the user's own photo")
    elif kind == "folder":
        mine.mkdir()
        (mine / "inside.txt").write_text("the user's")
    else:
        os.symlink("/somewhere/of/the/users", mine)
    export_all(facesets, crops, {1: faces[:2]})  # the user's file is seen (and reported) by an export
    caplog.set_level(logging.WARNING)

    done, _ = update_marked(facesets, crops, {1: {3}}, {1: [faces[2]]})
    assert done == frozenset()  # left to the whole path, which sets the user's entry aside
    assert export_all(facesets, crops, {1: faces}) == 1
    assert (folder / "face_0000003.jpg").read_bytes() == b"jpeg of face 3"
    kept = folder / "face_0000003 (yours).jpg"
    if kind == "file":
        assert kept.read_bytes() == b"the user's own photo"
    elif kind == "folder":
        assert (kept / "inside.txt").read_text() == "the user's"
    else:
        assert os.readlink(kept) == "/somewhere/of/the/users"
    manifest = json.loads((folder / "faceset.json").read_text())
    assert manifest["user_files"] == ["face_0000003 (yours).jpg"]
    assert "face_0000003 (yours).jpg" in caplog.text
    assert export_all(facesets, crops, {1: faces}) == 0

    export_all(facesets, crops, {1: faces[:2]})  # face 3 leaves again: only facesyncd's file goes
    assert not (folder / "face_0000003.jpg").exists() and os.path.lexists(kept)


def test_a_file_two_killed_updates_placed_and_kept_stays_facesyncds(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update killed after it placed face 3's file; the next one, which finds that file as it
    should be (nothing to place) and removes face 1's, is killed too: face 3's file must still be
    facesyncd's for the export after them, not the user's (it was: the second list of pending names
    replaced the first)."""
    import facesyncd.export as export

    class Killed(BaseException):
        pass

    def kill_at(point: str) -> None:
        def checkpoint(name: str) -> None:
            if name == point:
                raise Killed

        monkeypatch.setattr(export, "checkpoint", checkpoint)

    crops, facesets = tree
    faces = make_faces(crops, [1, 2, 3])
    export_all(facesets, crops, {1: faces[:2]})
    kill_at("export-update")
    with pytest.raises(Killed):
        export_all(facesets, crops, {1: faces})
    kill_at("export-retire")
    with pytest.raises(Killed):
        export_all(facesets, crops, {1: faces[1:]})
    monkeypatch.setattr(export, "checkpoint", lambda name: None)
    export_all(facesets, crops, {1: faces[1:]})
    folder = facesets / "faceset_001"
    manifest = json.loads((folder / "faceset.json").read_text())
    assert "user_files" not in manifest and sorted(path.name for path in folder.iterdir()) == [
        "face_0000002.jpg",
        "face_0000003.jpg",
        "faceset.json",
    ]


def test_the_facesets_changed_between_two_looks_are_named_only_when_nothing_else_changed(tmp_path: Path) -> None:
    """What the export tells from two looks at the tree (folder_state): the facesets whose folders
    changed inside (a file deleted or added, NAME.txt written), a sub-set's folder counted as its
    faceset's; nothing to tell (None) once a folder was added, removed or renamed, or a file at the
    top changed; and the look survives being kept as JSON."""
    from facesyncd.export import changed_facesets, folder_state, folder_state_of

    root = tmp_path / "facesets"
    for name in ("faceset_001", "faceset_002", "faceset_002_beach", "faceset_003"):
        (root / name).mkdir(parents=True)
        (root / name / "face_0000001.jpg").write_bytes(b"x")
    (root / "manifest.json").write_text("{}")

    def changed_after(change) -> frozenset[int] | None:
        before = folder_state_of(json.loads(json.dumps(folder_state(root))))
        change()
        return changed_facesets(before, folder_state(root))

    def later(path: Path, text: str) -> None:  # a write the file system's clock can tell apart
        path.write_text(text)
        stamp = path.stat().st_mtime_ns + 10_000_000
        os.utime(path, ns=(stamp, stamp))
        os.utime(path.parent, ns=(stamp, stamp))

    def moved(source: Path, target: Path) -> None:
        source.rename(target)
        for folder in (source.parent, target.parent):  # (a clock tick apart from the look before)
            stamp = folder.stat().st_mtime_ns + 10_000_000
            os.utime(folder, ns=(stamp, stamp))

    assert changed_after(lambda: None) == frozenset()
    assert changed_after(lambda: moved(root / "faceset_001" / "face_0000001.jpg", tmp_path / "gone.jpg")) == {1}
    assert changed_after(lambda: later(root / "faceset_002_beach" / "mine.txt", "the user's")) == {2}
    assert changed_after(lambda: later(root / "faceset_003" / "NAME.txt", "Someone\n")) == {3}
    assert changed_after(lambda: moved(root / "faceset_003" / "face_0000001.jpg", root / "faceset_002" / "m.jpg")) == {
        2,
        3,
    }
    assert changed_after(lambda: later(root / "manifest.json", '{"x": 1}')) is None
    assert changed_after(lambda: (root / "faceset_004").mkdir()) is None
    assert changed_after(lambda: (root / "faceset_004").rename(root / "faceset_005")) is None
