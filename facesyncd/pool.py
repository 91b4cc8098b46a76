"""The pool's arrays held by a long-running process between cycles, in step with the store through the
pool's marks (migrations/0021): a cycle reads again only the faces marked since the last read, not the
whole pool (1.1 CPU-s at 200,000 pooled faces, in every cycle that new pool faces arrived in).

Between processes, the arrays are kept in a file (POOL_FILE), a cache as the index is: a new process
(a `sync`, a start) reads it and the faces marked since it was written, not the whole pool (0.97
CPU-s at 200,000 pooled faces); a file that is missing, unreadable or not the store's (its token,
see Store.kept_pool_file) is passed over and the pool read from the store."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from zipfile import ZIP_STORED, BadZipFile, ZipFile

import numpy as np
from numpy.typing import NDArray

from . import npz
from .atomic import remove_leftovers, write_atomic
from .coarse import CoarseRows, round_rows
from .models import GroupSizes, PoolArrays
from .store import Store

log = logging.getLogger(__name__)

# The pool's file, in the state folder.
POOL_FILE = "pool.npz"
# The file is written again once the faces marked since its mark are this share of the pool (at least
# _SAVE_AT_LEAST): the marks are kept until then, for its readers (a `sync` of 1,000 new faces at
# 500,000 reads about as many marked faces, 0.01 CPU-s, and writes 35 MB once in about ten).
SAVE_BEHIND = 0.05
_SAVE_AT_LEAST = 1024
# Faces marked since the last read past which (and past a quarter of the pool) it is read whole.
_READ_WHOLE_PAST = 1024
# What a file holds, in which layout: one of another layout is passed over (2: each array's rows
# aligned, with room after them, npz.write_rows; the count of faces in `about`).
_FILE_FORMAT = 2
# Arrays of the file, in the order of PoolKeeper._arrays.
_FILE_ARRAYS = ("ids", "blur", "frontality", "cut", "group", "codes", "scale", "length", "error")


class PoolKeeper:
    """PoolArrays of the pool as the store has it now (get), kept between calls.

    The rows are in no particular order: the last rows take the places of faces that leave the pool,
    and those that arrive go last, so that bringing the arrays in step costs the faces marked, not
    the pool. What get() returns are views of the keeper's arrays: valid until the next get(). The
    embeddings are held rounded to 8 bits (coarse.py): 100 MB at 200,000 faces of 512-d, not 400.

    With a `file` (POOL_FILE in the state folder), a first read takes the file and the marks after its
    mark; the marks are cleared only up to the mark of a file written (they are its readers'), and the
    file is written again when SAVE_BEHIND of the pool was marked since. Without one, each read clears
    the marks it read."""

    def __init__(self, store: Store, file: Path | None = None) -> None:
        self._store = store
        self._file = file
        self._empty()
        self._sizes: GroupSizes | None = None  # see group_sizes
        self._sizes_token: str | None = None

    def _empty(self) -> None:
        self._upto = 0  # the newest pool mark the arrays hold
        self._file_mark: int | None = None  # the mark of the store's file as this keeper last read or wrote it
        self._behind = 0  # faces marked since that mark (each time it was marked: at least as many)
        self._read = False  # whether the arrays hold the pool as of self._upto
        self._count = 0
        self._ids = np.zeros(0, np.int64)
        self._coarse = round_rows(np.zeros((0, 0), np.float32))
        self._blur = np.zeros(0)
        self._frontality = np.zeros(0)
        self._cut = np.zeros(0, bool)
        self._group = np.zeros(0, np.int64)

    def get(self) -> PoolArrays:
        """The pool's arrays as the store has them now. Its marks are read with the rows they name in
        one transaction (a face marked meanwhile is marked after `upto`), then cleared (with a file:
        those up to its mark)."""
        store = self._store
        with store.transaction():
            marks = store.pool_marks(self._upto) if self._read else None
            if marks is None:
                marks = self._read_file()
            if marks is None:
                upto = store.newest_pool_mark()
                self._load(store.pool_arrays())
                self._file_mark, self._behind = None, self._count + 1
                log.debug("read the pool whole: %d faces", self._count)
            else:
                upto, changed = marks
                self._behind += len(changed)
                if len(changed) > max(_READ_WHOLE_PAST, self._count // 4):  # the whole pool was regrouped
                    self._load(store.pool_arrays())
                elif changed:
                    self._update(changed, store.pool_arrays(changed))
            self._upto = upto
            if self._file is None:
                store.clear_pool_marks(upto)
            elif self._behind > max(_SAVE_AT_LEAST, SAVE_BEHIND * self._count):
                self._write_file()
            elif self._file_mark is not None:
                store.clear_pool_marks(self._file_mark)
        return self._view()

    def _read_file(self) -> tuple[int, list[int]] | None:
        """The file's arrays taken, and the marks after its mark (as Store.pool_marks gives them);
        None when there is no file, or it is not the store's, or those marks were cleared."""
        if self._file is None:
            return None
        token = self._store.pool_file_token()
        if token is None:
            return None
        try:
            with self._file.open("rb") as file:
                with np.load(file) as data:
                    about = json.loads(str(data["about"]))
                    if about.get("token") != token or about.get("format") != _FILE_FORMAT:
                        return None
                mark, count = int(about["mark"]), int(about["count"])
                marks = self._store.pool_marks(mark)
                if marks is None:
                    return None
                # each array mapped with the room saved after its rows, or read into room for more
                # (the codes are 100 MB at 200,000 faces of 512-d)
                arrays = [npz.rows(file, name, spare=npz.room(count) - count) for name in _FILE_ARRAYS]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, EOFError, BadZipFile) as problem:
            log.warning("the pool's file %s is unreadable (%s): the pool is read from the store", self._file, problem)
            return None
        if any(
            len(array) != len(arrays[0]) or len(array) < count or array.ndim != (2 if name == "codes" else 1)
            for name, array in zip(_FILE_ARRAYS, arrays, strict=True)
        ):
            log.warning("the pool's file %s does not hold whole rows: the pool is read from the store", self._file)
            return None
        self._hold(arrays, count)
        self._file_mark, self._behind = mark, 0
        log.debug("read the pool's file: %d faces, %d marked since", self._count, len(marks[1]))
        return marks

    def _write_file(self) -> None:
        """The arrays as they stand at the marks read (self._upto) written to the file, which becomes
        the store's. A write that fails costs the next process a read of the whole pool, not the cycle."""
        assert self._file is not None
        token = secrets.token_hex(8)
        count = self._count
        about = {"format": _FILE_FORMAT, "token": token, "mark": self._upto, "count": count}
        held = (array[:count] for array in self._arrays())
        arrays: dict[str, Any] = dict(zip(_FILE_ARRAYS, held, strict=True))

        def write(path: Path) -> None:
            with path.open("wb") as output, ZipFile(output, "w", ZIP_STORED, allowZip64=True) as archive:
                npz.write_array(archive, "about", np.array(json.dumps(about)))
                for name, array in arrays.items():
                    npz.write_rows(archive, name, array, spare=npz.room(count) - count)

        try:
            # (no other process writes the file meanwhile: get() holds the store's write transaction)
            remove_leftovers(self._file.parent, self._file.name)  # of a process killed while writing it
            write_atomic(self._file, write)
        except OSError as problem:
            log.warning("cannot write the pool's file %s (%s): a new process reads the whole pool", self._file, problem)
            return
        self._store.kept_pool_file(token, self._upto)
        self._file_mark, self._behind = self._upto, 0
        log.debug("wrote the pool's file: %d faces", self._count)

    def group_sizes(self) -> GroupSizes:
        """How many faces each group of the pool had when made (Store.pool_group_sizes), kept between
        calls while the store's groups token is the one they were read or written with (a whole read:
        0.04 CPU-s over 200,000 groups, once per process). Only replace_groups changes them."""
        if self._sizes is None or self._store.pool_groups_token() != self._sizes_token:
            self._sizes_token, self._sizes = self._store.pool_group_sizes()
        return self._sizes

    def replace_groups(self, groups: dict[int, list[int]], replaced: set[int], *, everything: bool) -> None:
        """Store.replace_pool_groups, and the same change made to the sizes held (when they were those
        the store had: else they are read again when next asked for).

        Groups made for the whole pool mark every pooled face: the file then lags by the whole pool,
        and the next process would read the pool whole and write it. This process, which has just
        clustered the whole pool, does so now instead (arrays got before are not to be used after)."""
        before, after = self._store.replace_pool_groups(groups, replaced, everything=everything)
        self._sizes_replaced(groups, replaced, before, after, everything=everything)
        if everything and self._file is not None:
            self.get()

    def _sizes_replaced(
        self, groups: dict[int, list[int]], replaced: set[int], before: str | None, after: str, *, everything: bool
    ) -> None:
        if self._sizes is None or before != self._sizes_token:  # (None twice: no token yet, nothing else wrote)
            self._sizes = None
            return
        made = sizes_of({group: len(faces) for group, faces in groups.items()})
        if everything:
            self._sizes = made
        else:  # (the arrays copied once, not a dict of 200,000 groups changed in place)
            gone = np.fromiter(replaced | groups.keys(), np.int64)
            kept = ~np.isin(self._sizes.groups, gone)
            self._sizes = GroupSizes(
                np.concatenate([self._sizes.groups[kept], made.groups]),
                np.concatenate([self._sizes.counts[kept], made.counts]),
            )
        self._sizes_token = after

    def drop(self) -> None:
        """Read the pool whole at the next get() (after a failure: a transaction the arrays were
        brought in step within may have been undone). The arrays go now, not when the next ones
        are read beside them."""
        self._empty()
        self._sizes = None

    def _view(self) -> PoolArrays:
        count, coarse = self._count, self._coarse
        return PoolArrays(
            self._ids[:count],
            CoarseRows(coarse.codes[:count], coarse.scale[:count], coarse.length[:count], coarse.error[:count]),
            self._blur[:count],
            self._frontality[:count],
            self._cut[:count],
            self._group[:count],
        )

    def _load(self, pool: PoolArrays) -> None:
        count = len(pool.ids)
        width = pool.coarse.codes.shape[1]
        self._hold([_grown(array, npz.room(count), count, width) for array in _columns(pool)], count)

    def _hold(self, arrays: Sequence[NDArray[Any]], count: int) -> None:
        """These arrays (in the order of _arrays, with room past their first `count` rows) as the pool."""
        ids, blur, frontality, cut, group, codes, scale, length, error = arrays
        self._ids, self._blur, self._frontality, self._cut, self._group = ids, blur, frontality, cut, group
        self._coarse = CoarseRows(codes, scale, length, error)
        self._count = count
        self._read = True

    def _update(self, changed: Sequence[int], present: PoolArrays) -> None:
        """The `changed` faces' rows replaced by those `present` in the pool now. (Their rows are found
        by one look over the ids, 0.6 ms at 200,000 faces: a dict of face ids to rows cost 0.03 CPU-s
        to make in each process, and 20 MB.)"""
        width = present.coarse.codes.shape[1] if len(present.ids) else self._coarse.codes.shape[1]
        if self._count and width != self._coarse.codes.shape[1]:  # another model's embeddings: read again
            self._load(self._store.pool_arrays())
            return
        self._remove(np.flatnonzero(np.isin(self._ids[: self._count], np.asarray(changed, np.int64))))
        if not len(present.ids):
            return
        self._reserve(self._count + len(present.ids), width)
        start, end = self._count, self._count + len(present.ids)
        for mine, theirs in zip(self._arrays(), _columns(present), strict=True):
            mine[start:end] = theirs
        self._count = end

    def _remove(self, rows: NDArray[np.int64]) -> None:
        """These rows (ascending, distinct) gone: the last rows kept take their places."""
        kept = self._count - len(rows)
        holes = rows[rows < kept]
        movers = np.setdiff1d(np.arange(kept, self._count), rows, assume_unique=True)
        for array in self._arrays():
            array[holes] = array[movers]
        self._count = kept

    def _reserve(self, count: int, width: int) -> None:
        """Room for `count` rows of `width` components (growing by a quarter: appending stays linear
        in the rows appended, and the room to spare small: the codes are 100 MB at 200,000 faces)."""
        if count <= len(self._ids) and width == self._coarse.codes.shape[1]:
            return
        self._grow(max(count, len(self._ids) * 5 // 4, 1024), width)

    def _grow(self, capacity: int, width: int) -> None:
        """The arrays again, with room for `capacity` rows (of `width` components), the rows held kept."""
        kept = self._count
        self._ids = _grown(self._ids, capacity, kept)
        self._blur = _grown(self._blur, capacity, kept)
        self._frontality = _grown(self._frontality, capacity, kept)
        self._cut = _grown(self._cut, capacity, kept)
        self._group = _grown(self._group, capacity, kept)
        coarse = self._coarse
        self._coarse = CoarseRows(
            _grown(coarse.codes, capacity, kept, width),
            *(_grown(array, capacity, kept) for array in (coarse.scale, coarse.length, coarse.error)),
        )

    def _arrays(self) -> tuple[NDArray[np.generic], ...]:
        coarse = self._coarse
        return (
            *(self._ids, self._blur, self._frontality, self._cut, self._group),
            *(coarse.codes, coarse.scale, coarse.length, coarse.error),
        )


def sizes_of(sizes: Mapping[int, int]) -> GroupSizes:
    """GroupSizes of group -> its count."""
    return GroupSizes(
        np.fromiter(sizes.keys(), np.int64, len(sizes)), np.fromiter(sizes.values(), np.int64, len(sizes))
    )


def _columns(pool: PoolArrays) -> tuple[NDArray[np.generic], ...]:
    """A PoolArrays' arrays, in the order of PoolKeeper._arrays."""
    coarse = pool.coarse
    return (
        *(pool.ids, pool.blur, pool.frontality, pool.cut, pool.group),
        *(coarse.codes, coarse.scale, coarse.length, coarse.error),
    )


_T = TypeVar("_T", bound=np.generic)


def _grown(array: NDArray[_T], rows: int, kept: int, width: int = 0) -> NDArray[_T]:
    """`array` with room for `rows` rows (of `width` columns, for a matrix), its first `kept` kept."""
    bigger = np.zeros((rows,) if array.ndim == 1 else (rows, width), array.dtype)
    if kept:
        bigger[:kept] = array[:kept]
    return bigger
