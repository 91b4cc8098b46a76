"""Arrays read from an .npz archive whose members are stored, not compressed (numpy's savez, or
write_rows), straight into arrays with room for more rows, or mapped from the file: the caches a
process reads at its start (the index's rows, the pool's) then take faces without being copied into
a larger array first.

numpy's own reading goes through zipfile, which reads each part of a member into a new bytes object
before it is copied into the array: at 300,000 faces of 128-d, the index's rows cost 0.16-0.48 CPU-s
so, against 0.06-0.25 read straight (most of it the system's, mapping the parts' fresh memory:
21,000 page faults against 500). Mapped (map_rows), they cost what checking them does: the pages are
the system's file cache, shared, and only those written to are copied. The member's CRC is checked
as zipfile checks it."""

from __future__ import annotations

import io
import mmap
import os
import zlib
from dataclasses import dataclass
from typing import IO, Any
from zipfile import ZIP_STORED, ZipFile, ZipInfo

import numpy as np
from numpy.lib import format as npy

# What is read at a time (the CRC is taken of each part while it is in the cache).
_READ_CHUNK = 16 << 20
_LOCAL_HEADER = 30  # a zip member's local header, before its name and extra field
_ZIP64_EXTRA = 20  # what zipfile adds to a local header's extra field when told to use zip64
# Where a mapped member's rows begin in the file (a multiple of it): numpy hands aligned rows to BLAS,
# and copies unaligned ones first.
_ALIGN = 64
_PADDING_ID = 0xD935  # an extra field that only pads (the one Android's zipalign writes)


@dataclass(frozen=True)
class _Member:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    begin: int  # where its .npy starts in the file
    header: int  # the .npy header's length: its data starts at begin + header
    crc: int  # as the archive's directory says


def _member(file: IO[bytes], name: str, dtype: Any) -> _Member:
    """Where the array saved as `name` lies in the archive `file`, and what it is. ValueError when
    the member is not an array of rows of `dtype` (None: of any numbers), stored whole."""
    with ZipFile(file) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != ZIP_STORED:
        raise ValueError(f"{name} is compressed")
    file.seek(info.header_offset)
    local = file.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{name} is not where the archive's directory says")
    begin = info.header_offset + _LOCAL_HEADER
    begin += int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    file.seek(begin)
    version = npy.read_magic(file)
    if version == (1, 0):
        shape, fortran, found = npy.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, fortran, found = npy.read_array_header_2_0(file)
    else:
        raise ValueError(f"{name} is in an unknown format ({version})")
    if len(shape) not in (1, 2) or fortran or found.hasobject or (dtype is not None and found != np.dtype(dtype)):
        raise ValueError(f"{name} is not an array of rows of {dtype or 'numbers'} ({found}, {shape})")
    member = _Member(tuple(shape), found, begin, file.tell() - begin, info.CRC)
    if member.header + int(np.prod(shape)) * found.itemsize != info.file_size:
        raise ValueError(f"{name} is not the size the archive's directory says")
    return member


def read_with_room(file: io.BufferedReader, name: str, *, spare: int, dtype: Any = None) -> np.ndarray[Any, Any]:
    """The array saved as `name` (its .npy member) in the archive `file`, of one or two dimensions,
    read into an array with room for `spare` more rows after its own (zeros: memory taken when
    written). `dtype`: the type it must have (None: any but Python objects). ValueError when the
    member is not such an array, is cut short or damaged (its CRC)."""
    member = _member(file, name, dtype)
    array = np.zeros((member.shape[0] + spare, *member.shape[1:]), member.dtype)
    wanted = array[: member.shape[0]].reshape(-1).view(np.uint8).data  # (a view: the bytes of its rows)
    file.seek(member.begin)
    crc = zlib.crc32(file.read(member.header))
    done = 0
    while done < len(wanted):
        got = file.readinto(wanted[done : done + _READ_CHUNK])
        if not got:
            raise ValueError(f"{name} is cut short")
        crc = zlib.crc32(wanted[done : done + got], crc)
        done += got
    if crc != member.crc:
        raise ValueError(f"{name} is damaged (its CRC differs)")
    return array


def map_rows(file: io.BufferedReader, name: str, *, dtype: Any = None) -> np.ndarray[Any, Any] | None:
    """The array saved as `name` in the archive `file`, mapped from it copy-on-write: changing it
    changes this process's copy of the pages changed, never the file; the file may be replaced
    meanwhile (renamed over: the mapping keeps the one it was made from). None when its rows do not
    begin on an aligned boundary in the file (numpy's savez: write_rows writes them so). ValueError
    as read_with_room."""
    member = _member(file, name, dtype)
    start = member.begin + member.header
    if start % _ALIGN:
        return None
    mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    count = int(np.prod(member.shape))
    size = count * member.dtype.itemsize
    if start + size > len(mapped):
        raise ValueError(f"{name} is cut short")
    with memoryview(mapped) as view:
        crc = zlib.crc32(view[start : start + size], zlib.crc32(view[member.begin : start]))
    if crc != member.crc:
        raise ValueError(f"{name} is damaged (its CRC differs)")
    return np.frombuffer(mapped, member.dtype, count=count, offset=start).reshape(member.shape)


def room(count: int) -> int:
    """The rows a cache of `count` faces (the index's, the pool's) is held and written in, with room
    to add some in place: a process adds about a twentieth of them (their SAVE_BEHIND) before its
    file is written again."""
    return count + count // 8 + 1024


# Whether rows are mapped from their files (rows). Not on Windows, which refuses to replace a file
# that a process has mapped: the next write of the file would fail.
MAP_ROWS = os.name == "posix"


def rows(file: io.BufferedReader, name: str, *, spare: int, dtype: Any = None) -> np.ndarray[Any, Any]:
    """The array saved as `name`, with room for more rows after its own: mapped from the file
    (map_rows), the room being what was saved after them (write_rows), or else read into room for
    `spare` more (read_with_room: where rows are not mapped, a file numpy wrote, a file system that
    cannot map). Mapped, a process pays for checking the rows, not for copying them into memory of
    its own (160 MB at 500,000 faces of 128-d: 0.27-0.49 CPU-s on a small virtual machine, most of
    it the system's first touch of that memory), and shares the pages with the file cache and
    other processes until it writes them. A process whose file is replaced keeps the old one's
    pages (and its disk space) until it copies the rows (into a larger array) or ends."""
    if MAP_ROWS:
        try:
            mapped = map_rows(file, name, dtype=dtype)
        except OSError:
            mapped = None
        if mapped is not None:
            return mapped
    return read_with_room(file, name, spare=spare, dtype=dtype)


def write_rows(archive: ZipFile, name: str, rows: np.ndarray[Any, Any], *, spare: int = 0) -> None:
    """`rows` and `spare` more rows of zeros as the member `name` of `archive` (written stored, in
    zip64), its rows aligned in the file for map_rows: the zeros are the room a process that maps
    the file adds rows in without copying the rest."""
    header = io.BytesIO()
    npy.write_array_header_2_0(
        header,
        {
            "descr": npy.dtype_to_descr(rows.dtype),
            "fortran_order": False,
            "shape": (len(rows) + spare, *rows.shape[1:]),
        },
    )
    info = ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = ZIP_STORED
    before = archive.start_dir + _LOCAL_HEADER + len(info.filename.encode()) + _ZIP64_EXTRA + len(header.getvalue())
    padding = (-(before + 4)) % _ALIGN  # an extra field: its id and length (4 bytes), then the padding
    info.extra = _PADDING_ID.to_bytes(2, "little") + padding.to_bytes(2, "little") + bytes(padding)
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(header.getvalue())
        flat = np.ascontiguousarray(rows).reshape(-1).view(np.uint8)
        for start in range(0, len(flat), _READ_CHUNK):
            member.write(flat[start : start + _READ_CHUNK].data)
        left = spare * rows.itemsize * int(np.prod(rows.shape[1:]))
        zeros = bytes(min(_READ_CHUNK, left))
        while left:
            member.write(zeros[: min(left, len(zeros))])
            left -= min(left, len(zeros))


def write_array(archive: ZipFile, name: str, array: np.ndarray[Any, Any]) -> None:
    """A small array (no rows to map: a text, say) as the member `name` of `archive`, as numpy's
    savez writes it."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        npy.write_array(member, np.asanyarray(array), allow_pickle=False)
