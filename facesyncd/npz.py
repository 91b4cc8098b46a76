"""Arrays read from an .npz archive that numpy's savez wrote (its members stored, not compressed)
straight into arrays with room for more rows: the caches a process reads at its start (the index's
rows, the pool's) then take faces without being copied into a larger array first.

numpy's own reading goes through zipfile, which reads each part of a member into a new bytes object
before it is copied into the array: at 300,000 faces of 128-d, the index's rows cost 0.16-0.48 CPU-s
so, against 0.06-0.25 read straight (most of it the system's, mapping the parts' fresh memory:
21,000 page faults against 500). The member's CRC is checked as zipfile checks it."""

from __future__ import annotations

import io
import zlib
from typing import Any
from zipfile import ZIP_STORED, ZipFile

import numpy as np
from numpy.lib import format as npy

# What is read at a time (the CRC is taken of each part while it is in the cache).
_READ_CHUNK = 16 << 20
_LOCAL_HEADER = 30  # a zip member's local header, before its name and extra field


def read_with_room(file: io.BufferedReader, name: str, *, spare: int, dtype: Any = None) -> np.ndarray[Any, Any]:
    """The array saved as `name` (its .npy member) in the archive `file`, of one or two dimensions,
    read into an array with room for `spare` more rows after its own (zeros: memory taken when
    written). `dtype`: the type it must have (None: any but Python objects). ValueError when the
    member is not such an array, is cut short or damaged (its CRC)."""
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
        header = file.tell() - begin
        array = np.zeros((shape[0] + spare, *shape[1:]), found)
        wanted = array[: shape[0]].reshape(-1).view(np.uint8).data  # (a view: the bytes of its rows)
        if header + len(wanted) != info.file_size:
            raise ValueError(f"{name} is not the size the archive's directory says")
        file.seek(begin)
        crc = zlib.crc32(file.read(header))
        done = 0
        while done < len(wanted):
            got = file.readinto(wanted[done : done + _READ_CHUNK])
            if not got:
                raise ValueError(f"{name} is cut short")
            crc = zlib.crc32(wanted[done : done + got], crc)
            done += got
        if crc != info.CRC:
            raise ValueError(f"{name} is damaged (its CRC differs)")
    return array
