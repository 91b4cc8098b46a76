"""Faceset folders are shared with people: their files, their folders and leftovers of crashes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from facesyncd.export import PRESERVED, export_all
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
