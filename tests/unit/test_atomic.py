"""Trees of many files written through one scratch folder (the crops, the swap PNGs): what a killed
process left half-written is looked for there alone, a tree an older facesyncd wrote is looked
through whole once, and a tree lost while in use is still written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import facesyncd.atomic as atomic
from facesyncd.atomic import PREFIX, SCRATCH, Scattered


def _listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders os.scandir lists in facesyncd.atomic from now on."""
    listed: list[str] = []
    real = os.scandir

    def scandir(path: str | Path) -> object:
        listed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(atomic.os, "scandir", scandir)
    return listed


def test_leftovers_are_looked_for_in_the_scratch_folder_alone_once_a_tree_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "crops"
    for folder in ("ab", "cd"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "kept.jpg").write_bytes(b"a crop")
    old = [tree / "ab" / f"{PREFIX}x.jpg.k1", tree / "cd" / f"{PREFIX}y.jpg.k2"]  # an older facesyncd's
    for path in old:
        path.write_bytes(b"half")
    Scattered(tree).remove_leftovers()  # the first look: every folder, then the scratch folder made
    assert not any(path.exists() for path in old) and (tree / SCRATCH).is_dir()
    assert sorted(p.name for p in tree.rglob("*.jpg")) == ["kept.jpg", "kept.jpg"]

    written = Scattered(tree)
    seen: list[Path] = []

    def content(temporary: Path) -> None:
        seen.append(temporary.parent)
        temporary.write_bytes(b"a new crop")

    (tree / "ef").mkdir()
    written.write(tree / "ef" / "new.jpg", content)
    assert seen == [tree / SCRATCH] and (tree / "ef" / "new.jpg").read_bytes() == b"a new crop"
    assert list((tree / SCRATCH).iterdir()) == []

    killed = tree / SCRATCH / f"{PREFIX}new2.jpg.k3"  # a process killed mid-write
    killed.write_bytes(b"half")
    elsewhere = tree / "ab" / f"{PREFIX}not-looked-for.k4"
    elsewhere.write_bytes(b"not ours to find any more")
    listed = _listed(monkeypatch)
    Scattered(tree).remove_leftovers()
    assert listed == [SCRATCH] and not killed.exists() and elsewhere.exists()


def test_a_tree_lost_while_in_use_is_still_written(tmp_path: Path) -> None:
    tree = tmp_path / "crops"
    (tree / "ab").mkdir(parents=True)
    written = Scattered(tree)
    written.remove_leftovers()
    written.write(tree / "ab" / "one.jpg", b"1")
    shutil.rmtree(tree)  # the user deleted the crops; their owner makes the folders again
    (tree / "ab").mkdir(parents=True)
    written.write(tree / "ab" / "two.jpg", b"2")
    assert (tree / "ab" / "two.jpg").read_bytes() == b"2" and sorted(p.name for p in tree.iterdir()) == ["ab"]
    written.remove_leftovers()  # the next look makes the scratch folder again
    written.write(tree / "ab" / "three.jpg", b"3")
    assert (tree / SCRATCH).is_dir() and (tree / "ab" / "three.jpg").read_bytes() == b"3"
