"""`.fsz` bundles written from their files: a zip of them as it has always been, never the bundle in
memory, and a bundle on disk told apart from another by its listing and its files' checksums."""

from __future__ import annotations

import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from facesyncd.bundles import Bundle


def _files(folder: Path, count: int, size: int) -> list[tuple[str, Path]]:
    members = []
    for number in range(count):
        path = folder / f"{number}.png"
        path.write_bytes(os.urandom(size))
        members.append((f"face_{number:07d}.png", path))
    return members


def test_a_bundle_is_the_zip_it_always_was_written_a_chunk_at_a_time(tmp_path: Path) -> None:
    members = _files(tmp_path, 12, 3_000_000)  # 36 MB
    bundle = Bundle(tuple(members))
    tracemalloc.start()
    try:
        bundle.write(tmp_path / "set.fsz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak} bytes held to write a bundle of 36 MB"
    with zipfile.ZipFile(tmp_path / "set.fsz") as archive:
        assert archive.namelist() == [name for name, _ in members] and archive.testzip() is None
        for entry, (_, path) in zip(archive.infolist(), members, strict=True):
            assert entry.compress_type == zipfile.ZIP_STORED and entry.date_time == (2000, 1, 1, 0, 0, 0)
            assert entry.external_attr == 0o644 << 16 and archive.read(entry) == path.read_bytes()
    # the same faces make the same bytes (a tool that compares files sees no change)
    bundle.write(tmp_path / "again.fsz")
    assert (tmp_path / "again.fsz").read_bytes() == (tmp_path / "set.fsz").read_bytes()


def test_a_bundle_on_disk_is_this_one_only_with_the_same_members_in_order_and_their_files_unchanged(
    tmp_path: Path,
) -> None:
    members = _files(tmp_path, 4, 50_000)
    target = tmp_path / "set.fsz"
    Bundle(tuple(members)).write(target)
    assert Bundle(tuple(members)).written_at(target)
    assert not Bundle(tuple(reversed(members))).written_at(target)  # a new rank
    assert not Bundle(tuple(members[:3])).written_at(target)  # a face left
    assert not Bundle(tuple(members + [("face_0000099.png", members[0][1])])).written_at(target)
    assert not Bundle(tuple(members)).written_at(tmp_path / "missing.fsz")
    # a PNG cut again with other pixels of the same size: its checksum tells
    changed = bytearray(members[1][1].read_bytes())
    changed[100] ^= 0xFF
    members[1][1].write_bytes(bytes(changed))
    assert not Bundle(tuple(members)).written_at(target)
    Bundle(tuple(members)).write(target)
    assert Bundle(tuple(members)).written_at(target)
    # a member's file gone, or a bundle cut short (a disk fault)
    with pytest.raises(FileNotFoundError):
        Bundle(((members[0][0], tmp_path / "gone.png"),)).write(tmp_path / "other.fsz")
    assert not Bundle(((members[0][0], tmp_path / "gone.png"),)).written_at(target)
    target.write_bytes(target.read_bytes()[:-30])
    assert not Bundle(tuple(members)).written_at(target)


def test_a_bundle_that_cannot_be_written_whole_leaves_the_one_before_it(tmp_path: Path) -> None:
    """A folder's bundle is replaced in one rename: a PNG gone meanwhile (or a kill) leaves the old
    bundle for the tools that read it, not none, and no half-written file beside it."""
    from facesyncd.export import _put

    members = _files(tmp_path, 3, 20_000)
    folder = tmp_path / "faceset_001"
    folder.mkdir()
    _put(folder, {"faceset_001.fsz": Bundle(tuple(members))}, 0o644)
    before = (folder / "faceset_001.fsz").read_bytes()
    broken = Bundle((*members, ("face_0000009.png", tmp_path / "gone.png")))
    with pytest.raises(FileNotFoundError):
        _put(folder, {"faceset_001.fsz": broken}, 0o644)
    assert (folder / "faceset_001.fsz").read_bytes() == before and os.listdir(folder) == ["faceset_001.fsz"]
