"""The nearest-neighbour index of faces that belong to identities: a cache derived from SQLite.

Cosine distance, searched through the identities (see _Routed); labels are face ids, stored with their
embeddings in a numpy file. Next to the index file a JSON sidecar records what the
index was built from (the store's index version, the dimension, the count). When the sidecar is missing
or disagrees with the store, or the file does not load, the index is rebuilt from the store. Files are
written beside their final name and renamed into place, so a crash leaves the old pair or the new one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple, Protocol
from zipfile import ZIP_STORED, BadZipFile, ZipFile

import numpy as np
from numpy.typing import NDArray

from . import npz
from .atomic import remove_leftovers, write_atomic
from .crashpoints import checkpoint
from .sidecar import INDEX_FILE, LOCK_FILE, SIDECAR_FILE, read_sidecar

log = logging.getLogger(__name__)

# The members of an index file that hold the identities' totals (_Routed.save), in the order of Totals.
_TOTALS = ("total_owners", "totals", "total_counts")
# Identities a query is compared with: the ones whose centres are nearest it. A face's nearest faces lie
# in its own identity or in look-alikes, whose centres rank near the top among thousands of strangers
# (recall@10 against exact search: benchmarks/bench_index.py).
ROUTE = 32
# Up to this many queries at once, each is searched alone (see _Routed._one_by_one).
FEW_QUERIES = 8
# Queries searched together at most (see _Routed._batch): a table of 4,096 x ROUTE x 16 neighbours is
# 25 MB.
BATCH = 4096
# A kept index's file is written again once it lacks this share of the index (IndexKeeper): half of
# what a start brings in step rather than rebuilding (FaceIndex.load: a tenth).
SAVE_BEHIND = 0.05
# Rows out of their identity's run (see _Routed._rows_by_owner) past this share of the live rows get the
# rows sorted again: a copy of the matrix, paid about once per 60,000 faces added at 500,000.
OUT_OF_PLACE = 8
# Columns moved at a time when the rows are sorted again (_Routed._compact).
_COLUMNS = 64
# Each FaceIndex made gets the next: what a look remembers of one index is not taken for another's.
_SERIALS = itertools.count(1)


@contextmanager
def _save_lock(state_dir: Path) -> Iterator[None]:
    descriptor = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except ImportError:  # Windows: a single process writes in practice
            pass
        yield
    finally:
        os.close(descriptor)


# Each identity's sum of its rows and their count: the identities (ascending), the sums (float64), the counts.
Totals = tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]


class _Saved(NamedTuple):
    """What an index file held besides its rows (_Routed.load)."""

    owners: bool  # each row's identity as it was saved (else they are -1, for set_owners)
    totals: Totals | None  # the identities' sums and counts as saved with the rows (None: not saved)


class _Routed:
    """Exact search among the faces of the ROUTE identities whose centres are nearest the query.

    Face embeddings form tight identities that are nearly orthogonal to one another: a graph index
    (hnswlib, M 16 / ef_construction 100 / ef 128) has no slope to follow between them and fell to
    recall@10 0.88 at 500,000 faces (0.97 at ef 1,024), while building it took 660 CPU-s. Here the
    identities are the partition: a query is compared with every identity's centre, then exactly
    with the faces of the nearest ones. Building is appending rows; nothing is approximate but the
    choice of identities. A removed face is marked dead until a rebuild.

    An identity's rows are read as a run, a view of the matrix, where they lie together: gathering
    them cost a copy of each identity's rows per search (a third of a batched search at 500,000
    faces of 512-d). Rows are kept sorted by identity for that (_compact): faces added since, and the
    faces of identities merged or moved, are read apart until enough of them make sorting again pay."""

    name = "routed"

    def __init__(self, dimension: int) -> None:
        self._vectors = np.zeros((0, dimension), np.float32)
        self._labels = np.zeros(0, np.int64)
        self._owners = np.zeros(0, np.int64)  # each row's identity
        self._live = np.zeros(0, bool)
        self._count = 0
        self._groups: tuple[NDArray[np.int64], list[Group]] | None = None  # see _rows_by_owner
        self._out_of_place = 0  # the rows of those groups outside their runs
        self._sorted: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None  # see _rows_of

    def _changed(self) -> None:
        self._groups = None
        self._sorted = None

    def count(self) -> int:
        return self._count

    def resize(self, capacity: int) -> None:
        """Room for `capacity` rows: adding 1,000 faces to 500,000 copies nothing until it is full."""
        if capacity <= len(self._labels):
            return
        vectors = np.empty((capacity, self._vectors.shape[1]), np.float32)
        vectors[: self._count] = self._vectors[: self._count]
        self._vectors = vectors
        self._labels = np.resize(self._labels[: self._count], capacity)
        self._owners = np.resize(self._owners[: self._count], capacity)
        live = np.zeros(capacity, bool)
        live[: self._count] = self._live[: self._count]
        self._live = live

    def add(
        self,
        vectors: NDArray[np.float32],
        labels: NDArray[np.int64],
        owners: NDArray[np.int64],
        again: Collection[int] = (),
    ) -> None:
        """Rows for these faces. Those in `again` may have a row already (an undo brings a removed
        face back, a face is embedded anew): it is taken over, so a face has one row at most."""
        taken_over = False
        if again and self._count:
            rows = np.flatnonzero(np.isin(self._labels[: self._count], np.fromiter(again, np.int64)))
            if len(rows):
                where = dict(zip(self._labels[rows].tolist(), rows.tolist(), strict=True))
                old = np.array([int(label) in where for label in labels])
                taken = np.array([where[int(label)] for label in labels[old]], np.int64)
                self._vectors[taken], self._owners[taken], self._live[taken] = vectors[old], owners[old], True
                vectors, labels, owners = vectors[~old], labels[~old], owners[~old]
                taken_over = True
        if self._count + len(labels) > len(self._labels):
            # a quarter more: the copy is paid once per 125,000 faces at 500,000, and memory stays near the data
            self.resize(max(self._count + len(labels), len(self._labels) + len(self._labels) // 4, 1024))
        first = self._count
        rows_added = slice(first, first + len(labels))
        self._vectors[rows_added], self._labels[rows_added], self._owners[rows_added] = vectors, labels, owners
        self._live[rows_added] = True
        self._count += len(labels)
        if taken_over or self._groups is None:
            self._changed()
        else:
            self._sorted = None
            self._groups, outside = _joined(self._groups, np.arange(first, self._count), owners)
            self._out_of_place += outside

    def mark_deleted(self, labels: NDArray[np.int64]) -> None:
        if not len(labels) or not self._count:
            return
        self._live[: self._count] &= ~np.isin(self._labels[: self._count], labels)
        self._changed()

    def set_owners(self, identity_of: dict[int, int]) -> None:
        """Each live row's identity, from the store (after a load: merges and moves made meanwhile)."""
        rows = np.flatnonzero(self._live[: self._count])
        # (looked up as arrays: a comprehension over 500,000 faces cost 0.19 CPU-s)
        faces = np.fromiter(identity_of.keys(), np.int64, len(identity_of))
        owners = np.fromiter(identity_of.values(), np.int64, len(identity_of))
        order = np.argsort(faces)
        at, known = _find(faces[order], self._labels[rows])
        self._owners[rows] = -1
        self._owners[rows[known]] = owners[order][at[known]]
        self._live[rows] &= self._owners[rows] >= 0
        self._changed()

    def relabel(self, retired: int, kept: int) -> None:
        self._owners[: self._count][self._owners[: self._count] == retired] = kept
        self._changed()

    def labels(self) -> list[int]:
        """Every label added, those marked deleted included."""
        return [int(label) for label in self._labels[: self._count]]

    def label_array(self) -> NDArray[np.int64]:
        """labels(), as an array (a view: not to be changed)."""
        return self._labels[: self._count]

    def _rows_of(self, labels: Sequence[int]) -> NDArray[np.int64]:
        """The live row of each label (KeyError for a label with none)."""
        if self._sorted is None:
            live = np.flatnonzero(self._live[: self._count])
            order = np.argsort(self._labels[live], kind="stable")
            self._sorted = (self._labels[live][order], live[order])
        keys, rows = self._sorted
        wanted = np.asarray(labels, np.int64)
        at, found = _find(keys, wanted)
        if not found.all():
            raise KeyError(f"face {int(wanted[~found][0])} is not in the index")
        return rows[at]

    def vectors(self, labels: Sequence[int]) -> NDArray[np.float32]:
        return self._vectors[self._rows_of(labels)].reshape(len(labels), -1)

    def _rows_by_owner(self) -> tuple[NDArray[np.int64], list[Group]]:
        """The identities with live rows (ascending) and the rows of each, as a Group: its first run
        of adjacent rows and the rest. Sorts the rows again first where too many are out of place."""
        groups = self._groups if self._groups is not None else self._regrouped()
        if self._scattered():  # rows added since, or the rows as loaded or built
            self._compact()
            groups = self._regrouped()
        return groups

    def totals(self) -> Totals:
        """The identities with live rows (ascending), the sum of each one's rows (in float64) and
        their count: read as runs of the matrix, an identity at a time (np.add.reduceat over the
        rows gathered in identity order took 0.22 CPU-s at 500,000 faces, this 0.04; over the runs
        where they lie, in float64, 0.6-1.0: numpy made the whole matrix float64 first)."""
        owners, groups = self._groups if self._groups is not None else self._regrouped()
        sums = np.zeros((len(owners), self._vectors.shape[1]))
        counts = np.zeros(len(owners), np.int64)
        for at, (first, stop, rest) in enumerate(groups):
            sums[at] = self._vectors[first:stop].sum(axis=0, dtype=np.float64)
            if len(rest):
                sums[at] += self._vectors[rest].sum(axis=0, dtype=np.float64)
            counts[at] = stop - first + len(rest)
        return owners, sums, counts

    def _regrouped(self) -> tuple[NDArray[np.int64], list[Group]]:
        """Every live row grouped by identity (_rows_by_owner), as arrays: grouping an identity at a
        time cost 0.04 CPU-s at 500,000 faces in 3,000 identities, in each process and after each
        change that moves rows between identities."""
        live = np.flatnonzero(self._live[: self._count])
        owned = self._owners[live]
        order = np.argsort(owned, kind="stable")
        rows, owned = live[order], owned[order]  # by identity, then by row
        if not len(rows):
            self._out_of_place = 0
            self._groups = owned, []
            return self._groups
        starts = np.flatnonzero(np.concatenate([[True], owned[1:] != owned[:-1]]))
        ends = np.append(starts[1:], len(rows))
        run_ends = np.ones(len(rows), bool)  # whether a run of adjacent rows ends at each row
        run_ends[:-1] = rows[1:] != rows[:-1] + 1
        run_ends[ends - 1] = True
        last = np.flatnonzero(run_ends)
        first_stops = last[np.searchsorted(last, starts)] + 1  # where each identity's first run ends
        groups: list[Group] = [
            (row, row + stop - start, rows[stop:end])
            for row, start, stop, end in zip(
                rows[starts].tolist(), starts.tolist(), first_stops.tolist(), ends.tolist(), strict=True
            )
        ]
        self._out_of_place = int((ends - first_stops).sum())
        self._groups = owned[starts], groups
        return self._groups

    def _scattered(self) -> bool:
        return self._out_of_place * OUT_OF_PLACE > self._count

    def _compact(self) -> None:
        """The rows reordered: live rows by identity (then as they were), dead rows last. In place, a
        block of columns at a time: a copy of the whole matrix would double the index's memory while
        it lasts (1 GB more at 500,000 faces of 512-d; these blocks take 128 MB, for 1.0 CPU-s there
        against 1.3 for the whole copy)."""
        rows = np.arange(self._count)
        order = np.lexsort((rows, self._owners[rows], ~self._live[rows]))
        for column in range(0, self._vectors.shape[1], _COLUMNS):
            self._vectors[: self._count, column : column + _COLUMNS] = self._vectors[order, column : column + _COLUMNS]
        for name in ("_labels", "_owners", "_live"):
            column = getattr(self, name)
            column[: self._count] = column[order]
        self._changed()

    def query(
        self, vectors: NDArray[np.float32], k: int, centres: Callable[[NDArray[np.int64]], NDArray[np.float32]]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """k nearest live rows per query (labels and cosine distances, nearest first), searched
        among the faces of the ROUTE identities whose centres (`centres` of these identities) are
        nearest it; among all faces when that leaves fewer than k."""
        owners, groups = self._rows_by_owner()
        count = len(vectors)
        if len(owners) <= ROUTE:
            chosen = np.broadcast_to(np.arange(len(owners)), (count, len(owners)))
        else:
            chosen = _largest(vectors @ centres(owners).T, ROUTE)
        if count <= FEW_QUERIES:
            found_rows, found = self._one_by_one(vectors, k, chosen, groups)
        else:
            found_rows, found = self._by_identity(vectors, k, chosen, groups)
        short = (found_rows < 0).any(axis=1)
        if short.any():  # tiny identities: fewer than k faces among those routed
            found_rows[short], found[short] = self._everywhere(vectors[short], k)
        return self._labels[found_rows], found

    def _one_by_one(
        self, vectors: NDArray[np.float32], k: int, chosen: NDArray[np.int64], groups: list[Group]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """A few queries: each reads the rows of its identities at once (one product, not ROUTE)."""
        found_rows = np.full((len(vectors), k), -1, np.int64)
        found = np.full((len(vectors), k), np.inf, np.float32)
        for query, identities in enumerate(chosen):
            rows = np.concatenate([_rows(groups[int(position)]) for position in identities])
            if len(rows) < k:
                continue  # searched everywhere by the caller
            distances = 1.0 - self._vectors[rows] @ vectors[query]
            nearest = np.argpartition(distances, k - 1)[:k] if len(rows) > k else np.arange(len(rows))
            nearest = nearest[np.argsort(distances[nearest], kind="stable")]
            found_rows[query], found[query] = rows[nearest], distances[nearest]
        return found_rows, found

    def _by_identity(
        self, vectors: NDArray[np.float32], k: int, chosen: NDArray[np.int64], groups: list[Group]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Many queries: per identity, the queries routed to it, so that each identity's rows are
        read once per call (BATCH queries at a time: the table below holds ROUTE x k per query)."""
        found_rows = np.full((len(vectors), k), -1, np.int64)
        found = np.full((len(vectors), k), np.inf, np.float32)
        for start in range(0, len(vectors), BATCH):
            end = start + BATCH
            found_rows[start:end], found[start:end] = self._batch(vectors[start:end], k, chosen[start:end], groups)
        return found_rows, found

    def _batch(
        self, vectors: NDArray[np.float32], k: int, chosen: NDArray[np.int64], groups: list[Group]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        # Each query's k nearest rows in each identity it is routed to go in a table, a row per (query,
        # identity) pair; a query's k nearest of all are taken from its rows once, at the end (merging
        # them identity by identity cost 0.4 CPU-s per 1,000 queries over 3,000 identities). The table
        # is filled in the pairs' order by identity, each identity's pairs a slice, then put back in the
        # queries' order: the loop runs once per identity (3,000 times for 1,000 queries, where a
        # library of 60 facesets runs it 60 times), so it does as little as it can each time.
        count, width = chosen.shape
        table_rows = np.full((count * width, k), -1, np.int64)
        table = np.full((count * width, k), -np.inf, np.float32)  # similarities, until the end
        asked = np.argsort(chosen, axis=None, kind="stable")  # pairs, by identity
        identities = chosen.ravel()[asked]
        query_of = asked // width
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(identities)) + 1, [len(asked)]]).tolist()
        for start, end in itertools.pairwise(bounds):
            first, stop, rest = groups[int(identities[start])]
            asking = vectors[query_of[start:end]]
            similar = asking @ self._vectors[first:stop].T  # a view: no rows copied
            if len(rest):
                similar = np.hstack([similar, asking @ self._vectors[rest].T])
            if similar.shape[1] > k:
                nearest = np.argpartition(similar, -k, axis=1)[:, -k:]
                table_rows[start:end] = nearest + first if not len(rest) else _rows((first, stop, rest))[nearest]
                table[start:end] = similar[np.arange(end - start)[:, None], nearest]
            else:
                table_rows[start:end, : similar.shape[1]] = _rows((first, stop, rest))
                table[start:end, : similar.shape[1]] = similar
        ordered_rows, ordered = np.empty_like(table_rows), np.empty_like(table)
        ordered_rows[asked], ordered[asked] = table_rows, 1.0 - table
        ordered_rows, ordered = ordered_rows.reshape(count, width * k), ordered.reshape(count, width * k)
        best = np.argsort(ordered, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ordered_rows, best, axis=1), np.take_along_axis(ordered, best, axis=1)

    def _everywhere(self, vectors: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        live = np.flatnonzero(self._live[: self._count])
        distances = 1.0 - vectors @ self._vectors[live].T
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return live[nearest], np.take_along_axis(distances, nearest, axis=1).astype(np.float32)

    def save(self, path: Path, totals: Totals | None = None) -> None:
        """The rows as they are, sorted by identity first where some are out of place: a process that
        loads the file then reads identities as runs from its first search, instead of sorting the
        rows itself (1.0 CPU-s at 500,000 faces of 512-d, in every `sync` of its own). With the
        identities' `totals` as the caller keeps them: a process that loads the file takes them
        rather than summing every row again (0.04 CPU-s at 500,000 faces)."""
        self._rows_by_owner()
        if self._out_of_place:
            self._compact()
        count = self._count
        with path.open("wb") as output, ZipFile(output, "w", ZIP_STORED, allowZip64=True) as archive:
            npz.write_rows(archive, "vectors", self._vectors[:count], spare=npz.room(count) - count)
            for name, column in (("labels", self._labels), ("live", self._live), ("owners", self._owners)):
                npz.write_rows(archive, name, column[:count])
            if totals is not None:
                for name, array in zip(_TOTALS, totals, strict=True):
                    npz.write_array(archive, name, array)

    def load(self, path: Path) -> _Saved:
        """The rows saved, with the room for more saved with them (npz.room): the first faces added
        after a start copy nothing (the vectors are 600 MB at 500,000 faces, and copying them into room
        made for one more face cost 2.3 CPU-s of each start). The rows are mapped from the file
        (npz.rows), else read into room for a quarter more. What else the file held (_Saved)."""
        with path.open("rb") as file:  # (once: a file saved meanwhile replaces it, and this one stays)
            with np.load(file) as data:
                labels, live = data["labels"], data["live"]
                saved_owners = data["owners"] if "owners" in data.files else None
                totals: Totals | None = None
                if all(name in data.files for name in _TOTALS):
                    totals = (data["total_owners"], data["totals"], data["total_counts"])
            count = len(labels)
            vectors = npz.rows(file, "vectors", spare=count // 4 + 1024, dtype=np.float32)
        if not (len(vectors) >= count == len(live)):
            raise ValueError("the index file's arrays disagree")
        if vectors.shape[1:] != self._vectors.shape[1:]:
            raise ValueError("the index file's vectors are of another dimension")
        if saved_owners is not None and len(saved_owners) != count:
            raise ValueError("the index file's arrays disagree")
        self._vectors = vectors
        self._labels = np.zeros(len(vectors), np.int64)
        self._labels[:count] = labels
        self._owners = np.full(len(vectors), -1, np.int64)
        if saved_owners is not None:
            self._owners[:count] = saved_owners
        self._live = np.zeros(len(vectors), bool)
        self._live[:count] = live
        self._count = count
        self._changed()
        return _Saved(saved_owners is not None, totals)

    def held(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The live rows' labels and identities (as loaded with them, or set)."""
        live = np.flatnonzero(self._live[: self._count])
        return self._labels[live], self._owners[live]


# An identity's live rows (ascending): the first run of adjacent ones, as (first, stop), and the rest.
Group = tuple[int, int, NDArray[np.int64]]


def _group(rows: NDArray[np.int64]) -> Group:
    """The Group of these ascending rows."""
    if not len(rows):
        return 0, 0, rows
    gaps = np.flatnonzero(np.diff(rows) != 1)
    run = int(gaps[0]) + 1 if len(gaps) else len(rows)
    return int(rows[0]), int(rows[0]) + run, rows[run:]


def _rows(group: Group) -> NDArray[np.int64]:
    first, stop, rest = group
    return np.concatenate([np.arange(first, stop, dtype=np.int64), rest]) if len(rest) else np.arange(first, stop)


def _joined(
    groups: tuple[NDArray[np.int64], list[Group]], rows: NDArray[np.int64], owners: NDArray[np.int64]
) -> tuple[tuple[NDArray[np.int64], list[Group]], int]:
    """The groups of _Routed._rows_by_owner with these rows, just appended (higher than any row there),
    joined to their owners' groups: what grouping every row again gives, at the cost of the rows added
    (grouping every row again cost 0.03 CPU-s of each cycle at 500,000 faces); and how many of the
    rows added lie outside their group's run."""
    known, members = groups
    known, members = known.copy(), list(members)  # (a caller may hold the groups it was given)
    outside = 0
    for owner, joining in zip(*_grouped(rows, owners), strict=True):
        at = int(np.searchsorted(known, owner))
        if at < len(known) and known[at] == owner:
            first, stop, rest = members[at]
            start, end, beyond = _group(joining)
            if not len(rest) and start == stop:  # the run goes on into the rows added
                members[at] = (first, end, beyond)
            else:
                members[at] = (first, stop, np.concatenate([rest, joining]))
            outside += len(members[at][2]) - len(rest)
        else:
            known = np.insert(known, at, owner)
            members.insert(at, _group(joining))
            outside += len(members[at][2])
    return (known, members), outside


def _grouped(rows: NDArray[np.int64], owners: NDArray[np.int64]) -> tuple[NDArray[np.int64], list[NDArray[np.int64]]]:
    """The owners of these rows (ascending; `owners`: each row's) and the rows of each, in their order."""
    if not len(rows):  # np.split of no rows gives one empty part: a group without an owner
        return owners[:0], []
    order = np.argsort(owners, kind="stable")
    distinct, starts = np.unique(owners[order], return_index=True)
    return distinct, np.split(rows[order], starts[1:])


# Columns past which _largest takes the largest one at a time: numpy's argpartition costs about the
# same per column whatever the count wanted, so ROUTE maxima cost less beyond about 12 x ROUTE
# columns (at 5,000 identities, 16 ms per 1,000 queries instead of 63).
_ROUNDS_PAST = 12


def _largest(values: NDArray[np.float32], count: int) -> NDArray[np.int64]:
    """The columns of each row's `count` largest values, in no order (`values` is overwritten)."""
    if values.shape[1] <= _ROUNDS_PAST * count:
        return np.argpartition(values, values.shape[1] - count, axis=1)[:, -count:]
    chosen = np.empty((len(values), count), np.int64)
    every = np.arange(len(values))
    for at in range(count):
        chosen[:, at] = values.argmax(axis=1)
        values[every, chosen[:, at]] = -np.inf
    return chosen


def _totals_hold(totals: Totals, owners: NDArray[np.int64], dimension: int) -> bool:
    """Whether `totals` (as a file held them) count each identity of these rows' `owners` as the rows
    do, in the form Totals takes: what can be checked without summing every row again (the sums
    are as checked as the rows: the file's checksums)."""
    numbers, sums, counts = totals
    if numbers.ndim != 1 or sums.shape != (len(numbers), dimension) or counts.shape != numbers.shape:
        return False
    if not (numbers.dtype.kind == counts.dtype.kind == "i" and sums.dtype == np.float64):
        return False
    if not len(owners) or not len(numbers):
        return len(owners) == len(numbers) == 0
    span = int(owners.max()) + 1
    if int(numbers.min()) < 0 or int(numbers.max()) >= span or span > 16 * len(owners) + 1024:
        return False  # (an identity the rows lack, or numbers too far apart to count by position)
    held = np.bincount(owners, minlength=span)
    ascending = bool((numbers[1:] > numbers[:-1]).all())
    return ascending and bool((held[numbers] == counts).all()) and int(counts.sum()) == len(owners)


def _find(keys: NDArray[np.int64], wanted: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Where each of `wanted` stands in the ascending `keys`, and whether it is there at all."""
    if not len(keys):
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found: NDArray[np.bool_] = keys[at] == wanted
    return at, found


class FaceIndex:
    """add / query / save / load, with labels = face ids and values = identity numbers (see _Routed)."""

    def __init__(self, dimension: int, *, empty: bool = True, capacity: int = 1024) -> None:
        self.dimension = dimension
        self._index = _Routed(dimension)
        if empty:
            self._index.resize(max(1024, capacity))
        self.identity_of: dict[int, int] = {}
        # Per identity, the sum of its faces' embeddings and their count: a face's mean distance to
        # an identity's faces is 1 - face . sum / count, and its centre is sum / |sum|.
        self._sums: dict[int, NDArray[np.float64]] = {}
        self._counts: dict[int, int] = {}
        self._centre_rows: tuple[NDArray[np.int64], NDArray[np.float32]] | None = None  # see _centres_of
        # Labels marked deleted, saved with the index: a loader can then bring a saved index in step
        # with a store that changed since (a correction, a deletion) instead of building it anew.
        # None: not known (a sidecar written before they were kept).
        self._dead: set[int] | None = set()
        # Faces the file lacks or still holds: loaded, then brought in step with the store.
        self.behind_on_disk = 0
        self.serial = next(_SERIALS)
        # When each identity's centre last changed (a count of changes to this index): see moved_since.
        self._changes = 0
        self._moved_at: dict[int, int] = {}
        # The store's newest index mark (migrations/0023) this index is known to hold every change
        # up to: a change marked after it may be missing. None: not known (the file is then written
        # without one, and the next process compares it with every face of the store).
        self.mark: int | None = None
        # Loaded from a file that is not the store's marked one (load, not load_marked): worth writing
        # again soon, so that the next process brings it in step from the marks.
        self.unmarked_file = False

    @property
    def backend(self) -> str:
        return self._index.name

    def __len__(self) -> int:
        return len(self.identity_of)

    @property
    def deleted(self) -> int:
        """Entries marked deleted: they still take space and search time until a rebuild."""
        return self._index.count() - len(self.identity_of)

    def add(self, face_ids: Sequence[int], embeddings: NDArray[np.float32], identities: Sequence[int]) -> None:
        if not len(face_ids):
            return
        vectors = np.asarray(embeddings, np.float32)
        owners = np.asarray(identities, np.int64)
        # a face the index holds already counts once, with its new embedding and identity: its old ones
        # leave the identity's sum first (kept sums are saved with the rows, see _Routed.save)
        self.remove([face for face in face_ids if int(face) in self.identity_of])
        # a face back from the dead (an undo) or added again: its row is reused; when the dead are not
        # known (an old sidecar), every face is looked for
        dead = self._dead if self._dead is not None else set(self._index.labels())
        again = [int(face) for face in face_ids if int(face) in self.identity_of or int(face) in dead]
        self._index.add(vectors, np.asarray(face_ids, np.int64), owners, again)
        if self._dead is not None:
            self._dead.difference_update(int(face_id) for face_id in face_ids)
        self.identity_of.update(zip((int(f) for f in face_ids), (int(i) for i in identities), strict=True))
        self._account(vectors, [int(i) for i in identities], 1)

    def _account(self, vectors: NDArray[np.float32], identities: Sequence[int], sign: int) -> None:
        if not len(identities):
            return
        self._centre_rows = None
        owners, rows = np.unique(np.asarray(identities, np.int64), return_inverse=True)
        # each identity's rows summed in their order, as np.add.at would (a third of its time: it
        # summed 500,000 faces in 0.5 CPU-s of each start)
        order = np.argsort(rows, kind="stable")
        starts = np.flatnonzero(np.diff(rows[order], prepend=-1))
        totals = np.add.reduceat(vectors[order].astype(np.float64), starts, axis=0)
        self._moved(owners.tolist())
        for identity, total, count in zip(owners.tolist(), totals, np.bincount(rows).tolist(), strict=True):
            self._sums[identity] = self._sums.get(identity, np.zeros(self.dimension)) + sign * total
            self._counts[identity] = self._counts.get(identity, 0) + sign * count
            if self._counts[identity] <= 0:
                del self._sums[identity], self._counts[identity]

    def mean_distances(self, embedding: NDArray[np.float32], identities: Sequence[int]) -> dict[int, float]:
        """The face's mean cosine distance to the faces of each of these identities."""
        return {
            identity: 1.0 - float(embedding @ self._sums[identity]) / self._counts[identity]
            for identity in identities
            if identity in self._counts
        }

    def face_counts(self) -> dict[int, int]:
        """Each identity's faces in the index."""
        return dict(self._counts)

    def centres(self, among: Collection[int] | None = None) -> dict[int, NDArray[np.float32]]:
        """Each identity's centre (of those `among` that have faces; None: all): the mean of its faces'
        embeddings, normalised (all in one array: a norm per identity cost 0.12 CPU-s per call over
        3,000 identities)."""
        numbers = list(self._sums) if among is None else [number for number in among if number in self._sums]
        if not numbers:
            return {}
        sums = np.stack([self._sums[number] for number in numbers])
        norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return dict(zip(numbers, np.asarray(sums / norms, np.float32), strict=True))

    def moved_since(self, change: int) -> tuple[set[int], int]:
        """The identities whose centres changed (a face joined or left, a merge) after the index's
        `change`-th change, and the count of its changes now (0: since it was made): the caller (a
        look for merges) keeps the count it was given."""
        moved = {identity for identity, at in self._moved_at.items() if at > change}
        return moved, self._changes

    def _moved(self, identities: Iterable[int]) -> None:
        self._changes += 1
        self._moved_at.update((identity, self._changes) for identity in identities)

    def relabel(self, retired: int, kept: int) -> None:
        """Every face of identity `retired` now belongs to `kept` (a merge)."""
        for face_id, identity in self.identity_of.items():
            if identity == retired:
                self.identity_of[face_id] = kept
        self._index.relabel(retired, kept)
        self._centre_rows = None
        self._moved((retired, kept))
        if retired in self._counts:
            self._sums[kept] = self._sums.get(kept, np.zeros(self.dimension)) + self._sums.pop(retired)
            self._counts[kept] = self._counts.get(kept, 0) + self._counts.pop(retired)

    def remove(self, face_ids: Sequence[int]) -> None:
        """Faces that left their identities: never returned by a query again (until one is added back:
        an undo)."""
        leaving = [int(face_id) for face_id in face_ids if int(face_id) in self.identity_of]
        if not leaving:
            return
        self._account(self._index.vectors(leaving), [self.identity_of[face_id] for face_id in leaving], -1)
        for face_id in leaving:
            del self.identity_of[face_id]
        self._index.mark_deleted(np.asarray(leaving, np.int64))
        if self._dead is not None:
            self._dead.update(leaving)

    def query(self, embeddings: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """k nearest face ids and cosine distances per row; fewer columns when the index is small."""
        k = min(k, len(self.identity_of))
        if k == 0 or len(embeddings) == 0:
            return np.zeros((len(embeddings), 0), np.int64), np.zeros((len(embeddings), 0), np.float32)
        return self._index.query(np.asarray(embeddings, np.float32), k, self._centres_of)

    def _centres_of(self, identities: NDArray[np.int64]) -> NDArray[np.float32]:
        """The centres of these identities, one row each (kept until a face joins or leaves)."""
        if self._centre_rows is None or not np.array_equal(self._centre_rows[0], identities):
            zero = np.zeros(self.dimension)
            sums = np.stack([self._sums.get(int(identity), zero) for identity in identities])
            norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            self._centre_rows = (identities.copy(), np.asarray(sums / norms, np.float32))
        return self._centre_rows[1]

    def save(self, state_dir: Path, version: int, token: str | None = None) -> None:
        """Write the index and its sidecar. A lock keeps two processes (the daemon and a
        `rebuild-index`) from interleaving their two renames. With a `token`, the sidecar records it
        and the index's mark (see save_in_step)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        with _save_lock(state_dir):
            self._save(state_dir, version, token)

    def _save(self, state_dir: Path, version: int, token: str | None = None) -> None:
        remove_leftovers(state_dir, INDEX_FILE, SIDECAR_FILE)  # of a process killed mid-save
        write_atomic(state_dir / INDEX_FILE, lambda path: self._index.save(path, self._totals()))
        checkpoint("index-save")
        sidecar: dict[str, int | str | list[int]] = {
            "version": version,
            "dimension": self.dimension,
            "faces": len(self.identity_of),
            "deleted": self.deleted,
        }
        if self._dead is not None and len(self._dead) == self.deleted:
            sidecar["deleted_labels"] = sorted(self._dead)
        sidecar["backend"] = self.backend
        if token is not None and self.mark is not None:
            sidecar["token"], sidecar["mark"] = token, self.mark
        write_atomic(state_dir / SIDECAR_FILE, json.dumps(sidecar).encode())

    @classmethod
    def load(
        cls,
        state_dir: Path,
        dimension: int,
        version: int,
        identity_of: dict[int, int],
        embeddings_of: Callable[[Sequence[int]], dict[int, NDArray[np.float32]]] | None = None,
    ) -> FaceIndex | None:
        """The saved index, holding the faces of `identity_of` (face id -> identity, from the store);
        None if missing, corrupt, or too far behind the store.

        Saved from this store version, it is used as it is. Saved from an earlier one (corrections,
        deletions and new faces since), it is brought in step: faces that left identities are marked
        deleted, faces that joined are added (their embeddings from `embeddings_of`), identities are
        the store's. Only when that is most of the index is it built anew: a correction in a library
        of 500,000 faces costs what it changed, not a rebuild (`behind_on_disk` then says by how much).
        """
        sidecar = read_sidecar(state_dir)
        if sidecar is None or sidecar.get("dimension") != dimension:
            return None
        current = sidecar.get("version") == version
        dead_listed = sidecar.get("deleted_labels")
        if not current and (embeddings_of is None or not isinstance(dead_listed, list)):
            return None
        index = cls(dimension, empty=False)
        if sidecar.get("backend", "hnswlib") != index.backend:
            return None  # written by an earlier facesyncd (an hnswlib graph), or another search
        try:
            count, deleted = int(sidecar["faces"]), int(sidecar.get("deleted", 0))
            index._index.load(state_dir / INDEX_FILE)
            dead = {int(label) for label in dead_listed} if isinstance(dead_listed, list) else None
            stored = _distinct(index._index.label_array())
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, MemoryError, EOFError, BadZipFile) as error:
            log.warning("face index in %s is unreadable (%s); rebuilding it", state_dir, error)
            return None
        # (as sorted arrays: sets and a dict made face by face cost 0.16 CPU-s at 300,000 faces)
        dead_labels = np.fromiter(dead or (), np.int64)
        if index._index.count() != count + deleted or (
            dead is not None and (len(dead) != deleted or not np.isin(dead_labels, stored).all())
        ):
            log.warning("face index in %s does not match its sidecar; rebuilding it", state_dir)
            return None
        index._dead = dead
        live = np.setdiff1d(stored, dead_labels, assume_unique=True)
        faces = np.fromiter(identity_of.keys(), np.int64, len(identity_of))
        absent = faces[~np.isin(faces, live)]  # the store's faces the file does not hold
        leaving = live[~np.isin(live, faces)].tolist() if dead is not None else []
        joining = np.sort(absent).tolist() if dead is not None else []
        if current and (len(identity_of) != count or leaving or joining):
            log.warning("face index in %s does not match the database; rebuilding it", state_dir)
            return None
        if len(leaving) + len(joining) > max(1024, len(identity_of) // 10):
            return None  # as cheap to build afresh, and compact
        index.identity_of = dict(identity_of)
        for face_id in absent.tolist():
            del index.identity_of[face_id]
        index._index.set_owners(index.identity_of)  # the store's identities: merges and moves made meanwhile
        if index._take_totals() != len(index.identity_of):  # a face the file lacks, or holds twice
            log.warning("face index in %s does not hold the store's faces once each; rebuilding it", state_dir)
            return None
        if not current:
            index._index.mark_deleted(np.asarray(leaving, np.int64))
            if index._dead is not None:
                index._dead.update(leaving)
            if joining and embeddings_of is not None:
                vectors = embeddings_of(joining)
                known = [face_id for face_id in joining if face_id in vectors]
                if known:
                    stacked = np.stack([vectors[face_id] for face_id in known])
                    index.add(known, stacked, [identity_of[face_id] for face_id in known])
            index.behind_on_disk = len(leaving) + len(joining)
            log.info(
                "face index brought in step with the database: %d faces left it, %d joined", len(leaving), len(joining)
            )
        return index

    @classmethod
    def load_marked(cls, state_dir: Path, dimension: int, source: IndexSource) -> FaceIndex | None:
        """The saved index brought in step with the store through the faces marked since the file was
        written (migrations/0023), not by comparing it with every face of the store (load): what a
        new process pays is the faces that changed, and reading the file. None when the file is not
        the store's (its token), was written without a mark, lacks its rows' identities, or the marks
        since were cleared or are most of it (load then decides)."""
        sidecar = read_sidecar(state_dir)
        if sidecar is None or sidecar.get("dimension") != dimension or sidecar.get("backend") != _Routed.name:
            return None
        token, mark, dead = sidecar.get("token"), sidecar.get("mark"), sidecar.get("deleted_labels")
        if not isinstance(token, str) or not isinstance(mark, int) or not isinstance(dead, list):
            return None
        if token != source.index_file_token():
            return None
        index = cls(dimension, empty=False)
        try:
            count, deleted = int(sidecar["faces"]), int(sidecar.get("deleted", 0))
            saved = index._index.load(state_dir / INDEX_FILE)
            if not saved.owners:
                return None  # written before the rows' identities were saved
            index._dead = {int(label) for label in dead}
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, MemoryError, EOFError, BadZipFile) as error:
            log.debug("face index in %s is unreadable (%s)", state_dir, error)  # (load says so, and rebuilds)
            return None
        labels, owners = index._index.held()
        if index._index.count() != count + deleted or len(labels) != count or len(index._dead) != deleted:
            log.debug("face index in %s does not match its sidecar", state_dir)
            return None
        if (owners < 0).any():
            return None
        index.identity_of = dict(zip(labels.tolist(), owners.tolist(), strict=True))
        totals = saved.totals
        if totals is not None and not _totals_hold(totals, owners, dimension):
            log.debug("face index in %s holds totals that disagree with its rows: summed again", state_dir)
            totals = None
        index._take_totals(totals)
        index.mark = mark
        with source.transaction():  # (the marks, the faces they name and the count, as of one moment)
            caught_up = index._catch_up(source, limit=max(1024, count // 10))
            expected = source.count_identity_faces()
        if caught_up is None:
            return None
        if len(index.identity_of) != expected:
            log.warning("face index in %s does not hold the store's faces after its marks; rebuilding it", state_dir)
            return None
        index.behind_on_disk = caught_up
        if caught_up:
            log.info("face index: its file and the %d faces marked since it was written", caught_up)
        return index

    def _totals(self) -> Totals:
        """Each identity's sum and count as this index keeps them (what _take_totals takes)."""
        numbers = sorted(self._counts)
        sums = np.stack([self._sums[number] for number in numbers]) if numbers else np.zeros((0, self.dimension))
        counts = np.array([self._counts[number] for number in numbers], np.int64)
        return np.array(numbers, np.int64), sums, counts

    def _take_totals(self, saved: Totals | None = None) -> int:
        """Each identity's sum and count as the rows loaded hold them, or as `saved` with them (every
        identity's centre has moved, for a look); how many faces they count."""
        owners, sums, counts = saved if saved is not None else self._index.totals()
        numbers = owners.tolist()
        self._sums = dict(zip(numbers, sums, strict=True))
        self._counts = dict(zip(numbers, counts.tolist(), strict=True))
        self._moved(numbers)
        return int(counts.sum())

    def _catch_up(self, source: IndexSource, limit: int | None = None) -> int | None:
        """The faces marked in the store after self.mark taken out and put back as the store has
        them now (in an identity or not, which one, the embedding): what this index lacks of every
        change since. How many were marked; None (nothing changed) when the marks were cleared
        meanwhile or are more than `limit`."""
        assert self.mark is not None
        marks = source.index_marks(self.mark)
        if marks is None:
            return None
        newest, marked = marks
        if limit is not None and len(marked) > limit:
            return None
        if marked:
            ids, identities, embeddings = source.index_entries(marked)
            self.remove([face for face in marked if face in self.identity_of])
            if ids:
                vectors = np.frombuffer(b"".join(embeddings), np.float32).reshape(len(ids), -1)
                self.add(ids, vectors, identities)
        self.mark = newest
        return len(marked)


def save_in_step(index: FaceIndex, source: IndexSource, state_dir: Path) -> int:
    """Write the index as the store has it now: the changes marked since its mark are taken in
    first (another process's corrections among them), and the file is recorded as the store's at
    that mark, whose marks up to it are then cleared. An index whose mark is not known (or whose
    marks were cleared meanwhile) is written without one: the next process compares it whole.
    Returns the store's index version the file was written at."""
    with source.transaction():
        version = source.index_version()
        if index.mark is not None and index._catch_up(source) is None:
            index.mark = None
    token = secrets.token_hex(8) if index.mark is not None else None
    index.save(state_dir, version, token)
    if token is not None and index.mark is not None:
        source.kept_index_file(token, index.mark)
    return version


def _distinct(values: NDArray[np.int64]) -> NDArray[np.int64]:
    """The distinct values, ascending: np.unique, by a sort (np.unique hashes them: 3x the sort's
    CPU over 300,000 labels)."""
    values = np.sort(values)
    first = np.ones(len(values), bool)
    first[1:] = values[1:] != values[:-1]
    return values[first]


def needs_rebuild(state_dir: Path, version: int) -> bool:
    sidecar = read_sidecar(state_dir)
    return sidecar is None or sidecar.get("version") != version or not (state_dir / INDEX_FILE).exists()


class IndexSource(Protocol):
    """What the index is derived from (the store)."""

    def transaction(self) -> AbstractContextManager[None]: ...

    def index_version(self) -> int: ...

    def index_marks(self, since: int) -> tuple[int, list[int]] | None: ...

    def newest_index_mark(self) -> int: ...

    def index_file_token(self) -> str | None: ...

    def kept_index_file(self, token: str, mark: int) -> None: ...

    def index_entries(self, face_ids: Sequence[int]) -> tuple[list[int], list[int], list[bytes]]: ...

    def identity_map(self) -> dict[int, int]: ...

    def count_identity_faces(self) -> int: ...

    def iter_identity_faces(self) -> Iterator[tuple[list[int], NDArray[np.float32], list[int]]]: ...

    def embeddings_of(self, face_ids: Sequence[int]) -> dict[int, NDArray[np.float32]]: ...


def load_or_build(
    source: IndexSource, state_dir: Path, dimension: int, *, force: bool = False, save_behind: bool = True
) -> FaceIndex:
    """The saved index when it was built from the store as it is now, else one rebuilt from the store.
    One brought in step with the store is saved so (save_behind False: left to the caller)."""
    index = None if force else FaceIndex.load_marked(state_dir, dimension, source)
    if index is None:
        # (the mark first: a change made while the faces are read is marked after it, and taking a
        # marked face out and back in again changes nothing)
        mark = source.newest_index_mark()
        version = source.index_version()
        index = (
            None
            if force
            else FaceIndex.load(state_dir, dimension, version, source.identity_map(), source.embeddings_of)
        )
        if index is not None:
            index.mark = mark
            index.unmarked_file = True
    if index is not None and (index.behind_on_disk or index.unmarked_file) and save_behind:
        save_in_step(index, source, state_dir)
        index.behind_on_disk, index.unmarked_file = 0, False
    if index is None:
        index = FaceIndex(dimension, capacity=source.count_identity_faces())
        index.mark = mark
        for face_ids, embeddings, identities in source.iter_identity_faces():
            index.add(face_ids, embeddings, identities)
        save_in_step(index, source, state_dir)
        log.info("face index rebuilt from the database: %d faces", len(index))
    return index


class IndexKeeper:
    """The index's life in a long-running process: loaded (or rebuilt) when first needed, kept in
    memory between cycles and in step with the store (faces that left their identities are marked
    deleted in it rather than rebuilt), dropped when a cycle fails half way or deleted entries pile
    up. Its file is saved once the faces it lacks or still holds are SAVE_BEHIND of the index: a
    start brings a file that far behind in step with the store (FaceIndex.load_marked) for what it
    lacks, and writing 1 GB at 500,000 faces after every cycle that placed a face cost more than the
    faces did (issue 24). A file that the store's marks do not describe (load) is saved at the
    first chance."""

    def __init__(self, source: IndexSource, state_dir: Path, dimension: Callable[[], int]) -> None:
        self._source = source
        self._state_dir = state_dir
        self._dimension = dimension
        self._index: FaceIndex | None = None
        self._saved_version: int | None = None
        self._unsaved = 0  # faces added or removed since the file was written

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def current_on_disk(self) -> bool:
        """Whether the saved index is the store's as it is now: the next start loads it as it is."""
        return not needs_rebuild(self._state_dir, self._source.index_version())

    def get(self) -> FaceIndex:
        if self._index is None:
            self._index = load_or_build(self._source, self._state_dir, self._dimension(), save_behind=False)
            self._saved_version = self._source.index_version()
            self._unsaved = self._index.behind_on_disk
            log.debug("face index loaded: %d faces", len(self._index))
        return self._index

    def add(self, face_ids: Sequence[int], embeddings: NDArray[np.float32], identities: Sequence[int]) -> None:
        """Faces that joined identities; nothing to do while the index is not loaded (it will be
        built from the store, which already has them)."""
        if self._index is not None and len(face_ids):
            self._index.add(face_ids, embeddings, identities)
            self._unsaved += len(face_ids)

    def forget(self, face_ids: Sequence[int]) -> None:
        """Faces that left their identities. Once deleted entries outnumber half the live ones, the
        index is dropped, to be rebuilt compact (from the database: about 2 s per 50,000 faces)."""
        if self._index is None or not face_ids:
            return
        self._index.remove(face_ids)
        self._unsaved += len(face_ids)
        if self._index.deleted > max(1024, len(self._index) // 2):
            self.drop()

    def catch_up(self) -> None:
        """Take in what another process changed in the store since this index's mark (a correction
        made on the review page while the daemon runs): the faces it marked, not the index loaded
        again, which cost 0.15 CPU-s at 500,000 faces of 128-d per correction. Dropped, to be loaded at
        its next use, when the marks were cleared meanwhile or are more than a tenth of the index."""
        index = self._index
        if index is None:
            return
        caught_up = None
        if index.mark is not None:
            with self._source.transaction():
                caught_up = index._catch_up(self._source, limit=max(1024, len(index) // 10))
        if caught_up is None:
            self.drop()
        else:
            self._unsaved += caught_up

    def drop(self) -> None:
        """Forget the index in memory (after a failure: it may be ahead of the store)."""
        self._index = None
        self._saved_version = None
        self._unsaved = 0

    def save_if_changed(self) -> None:
        """Write the file when the store changed since and the file lacks SAVE_BEHIND of the index, or
        when the store's marks do not describe it (it was loaded whole: written at the first chance)."""
        if self._index is None:
            return
        unmarked = self._index.unmarked_file
        if self._source.index_version() == self._saved_version and not self._unsaved and not unmarked:
            return  # the file is this index
        if self._unsaved < SAVE_BEHIND * len(self._index) and not unmarked:
            log.debug("the index file is %d faces behind: saved later", self._unsaved)
            return
        self._saved_version = save_in_step(self._index, self._source, self._state_dir)
        self._index.unmarked_file = False
        self._unsaved = 0
