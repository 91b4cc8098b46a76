"""The pool's arrays held by a long-running process between cycles, in step with the store through the
pool's marks (migrations/0021): a cycle reads again only the faces marked since the last read, not the
whole pool (1.1 CPU-s at 200,000 pooled faces, in every cycle that new pool faces arrived in)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from .coarse import CoarseRows, round_rows
from .models import GroupSizes, PoolArrays
from .store import Store

log = logging.getLogger(__name__)


class PoolKeeper:
    """PoolArrays of the pool as the store has it now (get), kept between calls.

    The rows are in no particular order: a face that leaves the pool takes the place of the last row,
    and one that arrives goes last, so that bringing the arrays in step costs the faces marked, not
    the pool. What get() returns are views of the keeper's arrays: valid until the next get(). The
    embeddings are held rounded to 8 bits (coarse.py): 100 MB at 200,000 faces of 512-d, not 400."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._empty()
        self._sizes: GroupSizes | None = None  # see group_sizes
        self._sizes_token: str | None = None

    def _empty(self) -> None:
        self._upto = 0  # the newest pool mark the arrays hold
        self._rows: dict[int, int] | None = None  # face id -> row; None: nothing read yet
        self._count = 0
        self._ids = np.zeros(0, np.int64)
        self._coarse = round_rows(np.zeros((0, 0), np.float32))
        self._blur = np.zeros(0)
        self._frontality = np.zeros(0)
        self._cut = np.zeros(0, bool)
        self._group = np.zeros(0, np.int64)

    def get(self) -> PoolArrays:
        """The pool's arrays as the store has them now. Its marks are read with the rows they name in
        one transaction (a face marked meanwhile is marked after `upto`), then cleared."""
        store = self._store
        with store.transaction():
            marks = None if self._rows is None else store.pool_marks(self._upto)
            if marks is None:
                upto = store.newest_pool_mark()
                self._load(store.pool_arrays())
                log.debug("read the pool whole: %d faces", self._count)
            else:
                upto, changed = marks
                if len(changed) > max(1024, self._count // 4):  # a clustering of the whole pool regrouped it
                    self._load(store.pool_arrays())
                elif changed:
                    self._update(changed, store.pool_arrays(changed))
            store.clear_pool_marks(upto)
        self._upto = upto
        return self._view()

    def group_sizes(self) -> GroupSizes:
        """How many faces each group of the pool had when made (Store.pool_group_sizes), kept between
        calls while the store's groups token is the one they were read or written with (a whole read:
        0.19 CPU-s over 200,000 groups, once per process). Only replace_groups changes them."""
        if self._sizes is None or self._store.pool_groups_token() != self._sizes_token:
            self._sizes_token, sizes = self._store.pool_group_sizes()
            self._sizes = sizes_of(sizes)
        return self._sizes

    def replace_groups(self, groups: dict[int, list[int]], replaced: set[int], *, everything: bool) -> None:
        """Store.replace_pool_groups, and the same change made to the sizes held (when they were those
        the store had: else they are read again when next asked for)."""
        before, after = self._store.replace_pool_groups(groups, replaced, everything=everything)
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
        self._ids, self._coarse, self._blur = pool.ids, pool.coarse, pool.blur
        self._frontality, self._cut, self._group = pool.frontality, pool.cut, pool.group
        self._count = count = len(pool.ids)
        self._grow(count + count // 8 + 1024, pool.coarse.codes.shape[1])  # (room to add rows in place)
        self._rows = {face: row for row, face in enumerate(pool.ids.tolist())}

    def _update(self, changed: Sequence[int], present: PoolArrays) -> None:
        """The `changed` faces' rows replaced by those `present` in the pool now."""
        assert self._rows is not None
        width = present.coarse.codes.shape[1] if len(present.ids) else self._coarse.codes.shape[1]
        if self._count and width != self._coarse.codes.shape[1]:  # another model's embeddings: read again
            self._load(self._store.pool_arrays())
            return
        for face in changed:
            row = self._rows.pop(face, None)
            if row is not None:
                self._remove(row)
        if not len(present.ids):
            return
        self._reserve(self._count + len(present.ids), width)
        start, end = self._count, self._count + len(present.ids)
        for mine, theirs in zip(self._arrays(), _columns(present), strict=True):
            mine[start:end] = theirs
        self._rows.update((int(face), start + offset) for offset, face in enumerate(present.ids.tolist()))
        self._count = end

    def _remove(self, row: int) -> None:
        """The last row takes the place of `row`."""
        assert self._rows is not None
        last = self._count - 1
        if row != last:
            for array in self._arrays():
                array[row] = array[last]
            self._rows[int(self._ids[row])] = row
        self._count = last

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
