"""Arrays of an .npz archive read into room for more rows, or mapped from the file (npz.py)."""

from __future__ import annotations

from pathlib import Path
from zipfile import ZIP_STORED, ZipFile

import numpy as np
import pytest

from conftest import mapped_from_file
from facesyncd.npz import map_rows, read_with_room, write_rows


def written(path: Path, rows: np.ndarray, spare: int) -> None:
    with path.open("wb") as output, ZipFile(output, "w", ZIP_STORED, allowZip64=True) as archive:
        write_rows(archive, "labels", np.arange(len(rows), dtype=np.int64))  # a member before it
        write_rows(archive, "vectors", rows, spare=spare)
        write_rows(archive, "live", np.ones(len(rows), bool))


def test_rows_written_with_room_map_aligned_read_alike_and_never_change_their_file(tmp_path: Path) -> None:
    """The index's rows are mapped copy-on-write, from where write_rows put them: aligned (numpy
    copies unaligned rows before every product), the room after them zeros, any archive reader
    reads them, and writing into the mapped rows changes the process's copy, not the file."""
    rows = np.random.default_rng(1).normal(size=(333, 24)).astype(np.float32)
    path = tmp_path / "rows.npz"
    written(path, rows, spare=50)
    with np.load(path) as data:  # numpy's own reader: a valid archive
        assert np.array_equal(data["vectors"][:333], rows) and not data["vectors"][333:].any()
        assert np.array_equal(data["labels"], np.arange(333)) and data["live"].all()
    before = path.read_bytes()
    with path.open("rb") as file:
        mapped = map_rows(file, "vectors", dtype=np.float32)
        read = read_with_room(file, "vectors", spare=7, dtype=np.float32)
    assert mapped is not None and mapped.shape == (383, 24) and mapped.flags.aligned and mapped.flags.writeable
    assert mapped.ctypes.data % 64 == 0
    assert mapped_from_file(mapped)  # mapped, not read
    assert np.array_equal(mapped, read[:383]) and read.shape == (390, 24)
    mapped[:] = 7.0  # rows added and sorted in place
    assert path.read_bytes() == before
    path.unlink()  # a file written meanwhile replaces it: the mapping keeps its own
    assert (mapped == 7.0).all()


def test_a_flipped_bit_or_a_member_of_another_kind_is_refused(tmp_path: Path) -> None:
    rows = np.random.default_rng(2).normal(size=(200, 16)).astype(np.float32)
    path = tmp_path / "rows.npz"
    written(path, rows, spare=10)
    with path.open("rb") as file:
        with pytest.raises(ValueError, match="another|rows of"):
            map_rows(file, "vectors", dtype=np.float64)
        with pytest.raises(ValueError):
            map_rows(file, "labels", dtype=np.float32)
    damaged = bytearray(path.read_bytes())
    start = damaged.find(rows.tobytes()[:64])
    damaged[start + 1000] ^= 0x04  # one bit of the rows: size and form unchanged
    path.write_bytes(bytes(damaged))
    with path.open("rb") as file:
        with pytest.raises(ValueError, match="CRC"):
            map_rows(file, "vectors", dtype=np.float32)
        with pytest.raises(ValueError, match="CRC"):
            read_with_room(file, "vectors", spare=0, dtype=np.float32)
