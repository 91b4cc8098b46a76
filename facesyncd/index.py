"""The nearest-neighbour index of faces that belong to identities: a cache derived from SQLite.

hnswlib with cosine space; labels are face ids. Next to the index file a JSON sidecar records what the
index was built from (the store's index version, the dimension, the count). When the sidecar is missing
or disagrees with the store, or the file does not load, the index is rebuilt from the store. Files are
written beside their final name and renamed into place, so a crash leaves the old pair or the new one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .atomic import remove_leftovers, write_atomic
from .crashpoints import checkpoint
from .sidecar import INDEX_FILE, LOCK_FILE, SIDECAR_FILE, read_sidecar

log = logging.getLogger(__name__)

M = 16
EF_CONSTRUCTION = 100
EF_SEARCH = 128  # recall@10 0.99 at 200k faces of 512-d (benchmarks/bench_index.py)


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


class _Hnsw:
    """hnswlib's graph index (approximate, fast at any size)."""

    name = "hnswlib"

    def __init__(self, dimension: int) -> None:
        import hnswlib

        self._index = hnswlib.Index(space="cosine", dim=dimension)

    def create(self, capacity: int) -> None:
        self._index.init_index(max_elements=capacity, ef_construction=EF_CONSTRUCTION, M=M)
        self._index.set_ef(EF_SEARCH)

    def count(self) -> int:
        return int(self._index.get_current_count())

    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def resize(self, capacity: int) -> None:
        self._index.resize_index(capacity)

    def add(self, vectors: NDArray[np.float32], labels: NDArray[np.int64]) -> None:
        self._index.add_items(vectors, labels)

    def mark_deleted(self, label: int) -> None:
        self._index.mark_deleted(label)

    def labels(self) -> list[int]:
        """Every label added, those marked deleted included."""
        return [int(label) for label in self._index.get_ids_list()]

    def vectors(self, labels: Sequence[int]) -> NDArray[np.float32]:
        return np.asarray(self._index.get_items(list(labels)), np.float32).reshape(len(labels), -1)

    def query(self, vectors: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        self._index.set_ef(max(EF_SEARCH, k))
        labels, distances = self._index.knn_query(vectors, k=k)
        return labels.astype(np.int64), distances.astype(np.float32)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    def load(self, path: Path, capacity: int) -> None:
        self._index.load_index(str(path), max_elements=capacity)
        self._index.set_ef(EF_SEARCH)


class _Exact:
    """Exact search with numpy, where no hnswlib wheel exists (Windows on Python 3.12 and newer):
    a query reads every vector (about 4 ms per face at 200,000 faces of 512-d on one core)."""

    name = "exact"

    def __init__(self, dimension: int) -> None:
        self._vectors = np.zeros((0, dimension), np.float32)
        self._labels = np.zeros(0, np.int64)
        self._live = np.zeros(0, bool)

    def create(self, capacity: int) -> None:
        pass

    def count(self) -> int:
        return len(self._labels)

    def capacity(self) -> int:
        return 1 << 62  # grows as it goes

    def resize(self, capacity: int) -> None:
        pass

    def add(self, vectors: NDArray[np.float32], labels: NDArray[np.int64]) -> None:
        self._vectors = np.concatenate([self._vectors, vectors])
        self._labels = np.concatenate([self._labels, labels])
        self._live = np.concatenate([self._live, np.ones(len(labels), bool)])

    def mark_deleted(self, label: int) -> None:
        self._live[self._labels == label] = False

    def labels(self) -> list[int]:
        return [int(label) for label in self._labels]

    def vectors(self, labels: Sequence[int]) -> NDArray[np.float32]:
        rows = {int(label): row for row, label in enumerate(self._labels) if self._live[row]}
        return self._vectors[[rows[int(label)] for label in labels]].reshape(len(labels), -1)

    def query(self, vectors: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        live = np.flatnonzero(self._live)
        distances = 1.0 - vectors @ self._vectors[live].T
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return self._labels[live][nearest], np.take_along_axis(distances, nearest, axis=1).astype(np.float32)

    def save(self, path: Path) -> None:
        with path.open("wb") as output:
            np.savez(output, vectors=self._vectors, labels=self._labels, live=self._live)

    def load(self, path: Path, capacity: int) -> None:
        with np.load(path) as data:
            self._vectors, self._labels, self._live = data["vectors"], data["labels"], data["live"]


def _backend(dimension: int) -> _Hnsw | _Exact:
    try:
        return _Hnsw(dimension)
    except ImportError:
        return _Exact(dimension)


class FaceIndex:
    """add / query / save / load, with labels = face ids and values = identity numbers; over hnswlib
    where it is installed, else an exact numpy search (same answers, slower on a large library)."""

    def __init__(self, dimension: int, *, empty: bool = True, capacity: int = 1024) -> None:
        self.dimension = dimension
        self._index = _backend(dimension)
        if empty:
            self._index.create(max(1024, capacity))
        self.identity_of: dict[int, int] = {}
        # Per identity, the sum of its faces' embeddings and their count: a face's mean distance to
        # an identity's faces is 1 - face . sum / count, and its centre is sum / |sum|.
        self._sums: dict[int, NDArray[np.float64]] = {}
        self._counts: dict[int, int] = {}
        # Labels marked deleted, saved with the index: a loader can then bring a saved index in step
        # with a store that changed since (a correction, a deletion) instead of building it anew.
        # None: not known (a sidecar written before they were kept).
        self._dead: set[int] | None = set()
        self.stale_on_disk = False  # loaded and brought in step with the store: the file is behind

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
        needed = self._index.count() + len(face_ids)
        capacity = self._index.capacity()
        if needed > capacity:
            self._index.resize(max(needed, capacity * 2))
        vectors = np.asarray(embeddings, np.float32)
        self._index.add(vectors, np.asarray(face_ids, np.int64))  # a deleted label comes back (an undo)
        if self._dead is not None:
            self._dead.difference_update(int(face_id) for face_id in face_ids)
        self.identity_of.update(zip((int(f) for f in face_ids), (int(i) for i in identities), strict=True))
        self._account(vectors, [int(i) for i in identities], 1)

    def _account(self, vectors: NDArray[np.float32], identities: Sequence[int], sign: int) -> None:
        owners, rows = np.unique(np.asarray(identities, np.int64), return_inverse=True)
        totals = np.zeros((len(owners), vectors.shape[1]))
        np.add.at(totals, rows, vectors.astype(np.float64))
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

    def centres(self) -> dict[int, NDArray[np.float32]]:
        """Each identity's centre: the mean of its faces' embeddings, normalised."""
        return {
            identity: np.asarray(total / max(float(np.linalg.norm(total)), 1e-12), np.float32)
            for identity, total in self._sums.items()
        }

    def relabel(self, retired: int, kept: int) -> None:
        """Every face of identity `retired` now belongs to `kept` (a merge)."""
        for face_id, identity in self.identity_of.items():
            if identity == retired:
                self.identity_of[face_id] = kept
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
            self._index.mark_deleted(face_id)
        if self._dead is not None:
            self._dead.update(leaving)

    def query(self, embeddings: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """k nearest face ids and cosine distances per row; fewer columns when the index is small."""
        k = min(k, len(self.identity_of))
        if k == 0 or len(embeddings) == 0:
            return np.zeros((len(embeddings), 0), np.int64), np.zeros((len(embeddings), 0), np.float32)
        return self._index.query(np.asarray(embeddings, np.float32), k)

    def save(self, state_dir: Path, version: int) -> None:
        """Write the index and its sidecar. A lock keeps two processes (the daemon and a
        `rebuild-index`) from interleaving their two renames."""
        state_dir.mkdir(parents=True, exist_ok=True)
        with _save_lock(state_dir):
            self._save(state_dir, version)

    def _save(self, state_dir: Path, version: int) -> None:
        remove_leftovers(state_dir, INDEX_FILE, SIDECAR_FILE)  # of a process killed mid-save
        write_atomic(state_dir / INDEX_FILE, self._index.save)
        checkpoint("index-save")
        sidecar: dict[str, int | str | list[int]] = {
            "version": version,
            "dimension": self.dimension,
            "faces": len(self.identity_of),
            "deleted": self.deleted,
        }
        if self._dead is not None and len(self._dead) == self.deleted:
            sidecar["deleted_labels"] = sorted(self._dead)
        if self.backend != "hnswlib":
            sidecar["backend"] = self.backend
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
        of 500,000 faces costs what it changed, not a rebuild (`stale_on_disk` then says to save it).
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
            return None  # written by the other backend (another machine's install)
        try:
            count, deleted = int(sidecar["faces"]), int(sidecar.get("deleted", 0))
            index._index.load(state_dir / INDEX_FILE, max(1024, count + deleted))
            dead = {int(label) for label in dead_listed} if isinstance(dead_listed, list) else None
            stored = set(index._index.labels())
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, MemoryError) as error:
            log.warning("face index in %s is unreadable (%s); rebuilding it", state_dir, error)
            return None
        if index._index.count() != count + deleted or (dead is not None and (len(dead) != deleted or dead - stored)):
            log.warning("face index in %s does not match its sidecar; rebuilding it", state_dir)
            return None
        index._dead = dead
        live = stored - dead if dead is not None else stored
        leaving = sorted(live - identity_of.keys()) if dead is not None else []
        joining = sorted(set(identity_of) - live) if dead is not None else []
        if current and (len(identity_of) != count or leaving or joining):
            log.warning("face index in %s does not match the database; rebuilding it", state_dir)
            return None
        if len(leaving) + len(joining) > max(1024, len(identity_of) // 10):
            return None  # as cheap to build afresh, and compact
        index.identity_of = {face_id: identity for face_id, identity in identity_of.items() if face_id in live}
        labels = list(index.identity_of)
        try:
            for start in range(0, len(labels), 10_000):
                chunk = labels[start : start + 10_000]
                index._account(index._index.vectors(chunk), [index.identity_of[label] for label in chunk], 1)
        except (RuntimeError, KeyError) as error:  # a face the file lacks
            log.warning("face index in %s lacks faces of the store (%s); rebuilding it", state_dir, error)
            return None
        if not current:
            for face_id in leaving:
                index._index.mark_deleted(face_id)
            if index._dead is not None:
                index._dead.update(leaving)
            if joining and embeddings_of is not None:
                vectors = embeddings_of(joining)
                known = [face_id for face_id in joining if face_id in vectors]
                if known:
                    stacked = np.stack([vectors[face_id] for face_id in known])
                    index.add(known, stacked, [identity_of[face_id] for face_id in known])
            index.stale_on_disk = True
            log.info(
                "face index brought in step with the database: %d faces left it, %d joined", len(leaving), len(joining)
            )
        return index


def needs_rebuild(state_dir: Path, version: int) -> bool:
    sidecar = read_sidecar(state_dir)
    return sidecar is None or sidecar.get("version") != version or not (state_dir / INDEX_FILE).exists()


class IndexSource(Protocol):
    """What the index is derived from (the store)."""

    def index_version(self) -> int: ...

    def identity_map(self) -> dict[int, int]: ...

    def count_identity_faces(self) -> int: ...

    def iter_identity_faces(self) -> Iterator[tuple[list[int], NDArray[np.float32], list[int]]]: ...

    def embeddings_of(self, face_ids: Sequence[int]) -> dict[int, NDArray[np.float32]]: ...


def load_or_build(source: IndexSource, state_dir: Path, dimension: int, *, force: bool = False) -> FaceIndex:
    """The saved index when it was built from the store as it is now, else one rebuilt from the store."""
    version = source.index_version()
    index = (
        None if force else FaceIndex.load(state_dir, dimension, version, source.identity_map(), source.embeddings_of)
    )
    if index is not None and index.stale_on_disk:
        index.save(state_dir, version)
        index.stale_on_disk = False
    if index is None:
        index = FaceIndex(dimension, capacity=source.count_identity_faces())
        for face_ids, embeddings, identities in source.iter_identity_faces():
            index.add(face_ids, embeddings, identities)
        index.save(state_dir, version)
        log.info("face index rebuilt from the database: %d faces", len(index))
    return index


class IndexKeeper:
    """The index's life in a long-running process: loaded (or rebuilt) when first needed, kept in
    memory between cycles and in step with the store (faces that left their identities are marked
    deleted in it rather than rebuilt), dropped when a cycle fails half way or deleted entries pile
    up, saved only when the store changed since it was last saved."""

    def __init__(self, source: IndexSource, state_dir: Path, dimension: Callable[[], int]) -> None:
        self._source = source
        self._state_dir = state_dir
        self._dimension = dimension
        self._index: FaceIndex | None = None
        self._saved_version: int | None = None

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def get(self) -> FaceIndex:
        if self._index is None:
            self._index = load_or_build(self._source, self._state_dir, self._dimension())
            self._saved_version = self._source.index_version()
        return self._index

    def add(self, face_ids: Sequence[int], embeddings: NDArray[np.float32], identities: Sequence[int]) -> None:
        """Faces that joined identities; nothing to do while the index is not loaded (it will be
        built from the store, which already has them)."""
        if self._index is not None and len(face_ids):
            self._index.add(face_ids, embeddings, identities)

    def forget(self, face_ids: Sequence[int]) -> None:
        """Faces that left their identities. Once deleted entries outnumber half the live ones, the
        index is dropped, to be rebuilt compact (a removal costs 0.2 ms, a rebuild a minute at 200k)."""
        if self._index is None or not face_ids:
            return
        self._index.remove(face_ids)
        if self._index.deleted > max(1024, len(self._index) // 2):
            self.drop()

    def drop(self) -> None:
        """Forget the index in memory (after a failure: it may be ahead of the store)."""
        self._index = None
        self._saved_version = None

    def save_if_changed(self) -> None:
        if self._index is None:
            return
        version = self._source.index_version()
        if version != self._saved_version:  # unchanged: the file on disk is already this index
            self._index.save(self._state_dir, version)
            self._saved_version = version
