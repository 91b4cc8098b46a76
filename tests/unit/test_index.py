"""The face index: a cache that knows what it was built from, searched by identity."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

import facesyncd.index as index_module
import facesyncd.npz as npz
from conftest import mapped_from_file
from facesyncd.index import INDEX_FILE, SIDECAR_FILE, FaceIndex, needs_rebuild, read_sidecar


def vectors(count: int, dimension: int = 32, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def built(tmp_path: Path, count: int = 3000) -> tuple[FaceIndex, np.ndarray, dict[int, int]]:
    data = vectors(count)
    index = FaceIndex(32)
    ids = list(range(100, 100 + count))
    identity_of = {face: face % 7 + 1 for face in ids}
    index.add(ids, data, [identity_of[f] for f in ids])
    index.save(tmp_path, version=5)
    return index, data, identity_of


def test_query_finds_itself_and_grows(tmp_path: Path) -> None:
    index, data, _ = built(tmp_path)
    labels, distances = index.query(data[:50], k=3)
    assert (labels[:, 0] == np.arange(100, 150)).all()
    assert (distances[:, 0] < 1e-4).all()
    assert len(index) == 3000


def test_saved_index_loads_only_for_its_version(tmp_path: Path) -> None:
    index, data, identity_of = built(tmp_path)
    loaded = FaceIndex.load(tmp_path, 32, 5, identity_of)
    assert loaded is not None and len(loaded) == 3000
    assert (loaded.query(data[:5], 1)[0][:, 0] == np.arange(100, 105)).all()
    assert FaceIndex.load(tmp_path, 32, 6, identity_of) is None, "stale index was used"
    assert FaceIndex.load(tmp_path, 64, 5, identity_of) is None
    assert needs_rebuild(tmp_path, 6) and not needs_rebuild(tmp_path, 5)
    expected = {"version": 5, "dimension": 32, "faces": 3000, "deleted": 0, "deleted_labels": [], "backend": "routed"}
    assert read_sidecar(tmp_path) == expected


def test_corrupt_or_missing_files_mean_rebuild(tmp_path: Path) -> None:
    _, _, identity_of = built(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"\0" * 100)
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    built(tmp_path)
    whole = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(whole[: len(whole) // 2])  # cut short (a disk fault)
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    damaged = bytearray(whole)
    damaged[len(whole) // 3] ^= 0x10  # a bit flipped in the vectors: the file's size and form are as they were
    (tmp_path / INDEX_FILE).write_bytes(bytes(damaged))
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    (tmp_path / INDEX_FILE).unlink()
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    (tmp_path / SIDECAR_FILE).write_text("{not json")
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None


def test_a_loaded_index_has_room_for_more_faces_and_refuses_vectors_of_another_kind(tmp_path: Path) -> None:
    """A start reads the saved rows into room for a quarter more, so the first faces added copy
    nothing (the vectors are 600 MB at 500,000 faces); vectors stored as another type are refused."""
    index, data, identity_of = built(tmp_path)
    loaded = FaceIndex.load(tmp_path, 32, 5, identity_of)
    assert loaded is not None
    rows = loaded._index._vectors
    assert len(rows) >= 3000 * 5 // 4 and np.array_equal(loaded._index.vectors(list(identity_of)), data)
    loaded.add([9000, 9001], vectors(2, seed=9), [1, 2])
    assert loaded._index._vectors is rows  # added in the room made at load
    assert (loaded.query(vectors(2, seed=9), 1)[0][:, 0] == [9000, 9001]).all()
    with np.load(tmp_path / INDEX_FILE) as saved:
        arrays = {name: saved[name] for name in saved.files}
    with (tmp_path / INDEX_FILE).open("wb") as output:
        np.savez(output, **{**arrays, "vectors": arrays["vectors"].astype(np.float64)})
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None


def test_index_disagreeing_with_the_store_is_refused(tmp_path: Path) -> None:
    _, _, identity_of = built(tmp_path)
    fewer = dict(list(identity_of.items())[:-1])
    assert FaceIndex.load(tmp_path, 32, 5, fewer) is None


def test_removed_faces_are_never_found_and_survive_a_save(tmp_path: Path) -> None:
    index, data, identity_of = built(tmp_path)
    gone = list(range(100, 150))
    index.remove(gone + [99_999])  # an id the index never held is ignored
    assert len(index) == 2950 and index.deleted == 50
    labels, _ = index.query(data[:50], k=5)
    assert not set(labels.ravel()) & set(gone)
    index.save(tmp_path, version=6)
    live = {face: identity for face, identity in identity_of.items() if face not in gone}
    loaded = FaceIndex.load(tmp_path, 32, 6, live)
    assert loaded is not None and len(loaded) == 2950 and loaded.deleted == 50
    assert not set(loaded.query(data[:50], k=5)[0].ravel()) & set(gone)
    assert FaceIndex.load(tmp_path, 32, 6, identity_of) is None, "the store's faces disagree with the file"
    loaded.add([5000], vectors(1, seed=9), [3])  # growing past the loaded capacity counts deleted slots
    assert len(loaded) == 2951


def test_an_index_whose_every_face_was_removed_loads_empty_and_takes_faces_again(tmp_path: Path) -> None:
    """Every photo in the trash leaves a saved index without a live face: loading it must not fail
    (a sync did, on an identity sum for no identity) and it must still take faces."""
    index, data, identity_of = built(tmp_path, count=40)
    index.remove(list(identity_of))
    index.save(tmp_path, version=5)
    loaded = FaceIndex.load(tmp_path, 32, 5, {})
    assert loaded is not None and len(loaded) == 0
    loaded.add([500], vectors(1, seed=9), [4])
    assert loaded.query(vectors(1, seed=9), 1)[0][0, 0] == 500
    FaceIndex(32).save(tmp_path, version=6)  # one that never held a face (a library without one yet)
    empty = FaceIndex.load(tmp_path, 32, 6, {})
    assert empty is not None and len(empty) == 0
    joined = FaceIndex.load(tmp_path, 32, 7, {500: 4}, lambda faces: {500: vectors(1, seed=9)[0]})
    assert joined is not None and joined.identity_of == {500: 4}


def test_an_index_written_by_an_earlier_facesyncd_is_rebuilt(tmp_path: Path) -> None:
    """Earlier versions saved an hnswlib graph, with no `backend` in the sidecar."""
    _, _, identity_of = built(tmp_path)
    sidecar = read_sidecar(tmp_path)
    assert sidecar is not None
    del sidecar["backend"]
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(sidecar))
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None


def test_a_saved_index_behind_the_store_is_brought_in_step_not_rebuilt(tmp_path: Path) -> None:
    """A correction (or a deletion) made while no process held the index changes the store only: the
    next loader marks the faces that left, adds those that joined and takes the store's identities,
    instead of building the whole index again (a minute at 200,000 faces)."""
    index, data, identity_of = built(tmp_path)
    index.remove([100, 101])  # deleted before the save: known as such in the sidecar
    index.save(tmp_path, version=5)
    spare = vectors(5, seed=9)
    embeddings = {face: data[face - 100] for face in identity_of} | {9000 + k: spare[k] for k in range(5)}
    store = {face: identity for face, identity in identity_of.items() if face not in (100, 101, 102, 103)}
    store[150] = 99  # merged elsewhere: the store's identity wins
    store |= {9000 + k: 42 for k in range(5)}  # joined since
    store[101] = 3  # an undo brought a deleted face back
    asked: list[list[int]] = []

    def embeddings_of(face_ids: list[int]) -> dict[int, np.ndarray]:
        asked.append(list(face_ids))
        return {face: embeddings[face] for face in face_ids}

    loaded = FaceIndex.load(tmp_path, 32, 6, store, embeddings_of)
    assert loaded is not None and loaded.behind_on_disk
    assert loaded.identity_of == store
    assert sorted(asked[0]) == [101, *range(9000, 9005)]  # only the faces that joined are read
    labels, _ = loaded.query(np.stack([data[2], data[3]]), k=1)
    assert not {102, 103} & set(labels[:, 0].tolist())  # the faces that left are never found
    assert loaded.query(spare[:1], k=1)[0][0, 0] == 9000
    assert loaded.query(data[1:2], k=1)[0][0, 0] == 101
    assert loaded.mean_distances(spare[0], [42])[42] < 1.0  # the centres follow the store
    fresh = FaceIndex(32)  # every identity's faces and centre: those of the store's faces
    fresh.add(sorted(store), np.stack([embeddings[face] for face in sorted(store)]), [store[f] for f in sorted(store)])
    assert loaded.face_counts() == fresh.face_counts()
    centres = loaded.centres()
    assert all(np.allclose(centres[number], centre, atol=1e-6) for number, centre in fresh.centres().items())
    loaded.save(tmp_path, version=6)
    again = FaceIndex.load(tmp_path, 32, 6, store, embeddings_of)
    assert again is not None and not again.behind_on_disk and again.identity_of == store


def test_an_index_far_behind_the_store_or_without_its_deleted_labels_is_rebuilt(tmp_path: Path) -> None:
    _, data, identity_of = built(tmp_path)
    half = dict(list(identity_of.items())[: len(identity_of) // 2])
    assert FaceIndex.load(tmp_path, 32, 6, half, lambda ids: {}) is None  # most of it changed: build afresh
    sidecar = read_sidecar(tmp_path)
    assert sidecar is not None
    del sidecar["deleted_labels"]  # written by an earlier version
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(sidecar))
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is not None  # current: used as before
    fewer = dict(list(identity_of.items())[:-1])
    assert FaceIndex.load(tmp_path, 32, 6, fewer, lambda ids: {}) is None  # behind, and cannot tell what left


def clustered(identities: int, per_identity: int, dimension: int = 64, seed: int = 3) -> tuple[np.ndarray, list[int]]:
    """Faces as they come: tight identities, nearly orthogonal to one another."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dimension))
    owners = [n % identities + 1 for n in range(identities * per_identity)]
    data = centres[np.asarray(owners) - 1] + rng.normal(scale=0.12, size=(len(owners), dimension))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32), owners


def exact(data: np.ndarray, ids: list[int], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = 1.0 - queries @ data.T
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[nearest], np.take_along_axis(distances, nearest, axis=1)


def test_a_library_with_few_identities_is_searched_exactly(tmp_path: Path) -> None:
    data, owners = clustered(index_module.ROUTE, 12)
    ids = list(range(1, len(owners) + 1))
    index = FaceIndex(64)
    index.add(ids, data, owners)
    queries = vectors(40, 64, seed=5)  # anywhere, not only near a face
    labels, distances = index.query(queries, 16)
    expected_labels, expected_distances = exact(data, ids, queries, 16)
    assert (labels == expected_labels).all()
    assert np.allclose(distances, expected_distances, atol=1e-5)


def test_many_identities_are_searched_through_the_nearest_ones_with_full_recall(tmp_path: Path) -> None:
    data, owners = clustered(400, 8)
    ids = list(range(1, len(owners) + 1))
    index = FaceIndex(64)
    index.add(ids, data, owners)
    rng = np.random.default_rng(8)
    queries = data[rng.choice(len(ids), 200, replace=False)] + rng.normal(scale=0.05, size=(200, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    labels, distances = index.query(queries, 10)
    expected_labels, expected_distances = exact(data, ids, queries, 10)
    assert all(set(found) == set(truth) for found, truth in zip(labels, expected_labels, strict=True))
    assert np.allclose(distances, expected_distances, atol=1e-5)
    one, _ = index.query(queries[:1], 10)  # one query alone: the same answer as in a batch
    assert (one[0] == labels[0]).all()


def test_the_identities_a_query_is_routed_to_are_those_with_the_nearest_centres() -> None:
    """Both ways of taking each row's largest values (few columns: a partition; many: one maximum at
    a time) give each row's ROUTE largest, as a full sort does."""
    rng = np.random.default_rng(4)
    route = index_module.ROUTE
    for columns in (route + 1, index_module._ROUNDS_PAST * route, index_module._ROUNDS_PAST * route + 1, 1500):
        values = rng.normal(size=(50, columns)).astype(np.float32)
        chosen = index_module._largest(values.copy(), route)
        assert chosen.shape == (50, route) and all(len(set(row)) == route for row in chosen)
        expected = np.sort(values, axis=1)[:, -route:]
        assert np.array_equal(np.sort(np.take_along_axis(values, chosen, axis=1), axis=1), expected), columns


def test_faces_added_after_a_search_join_their_identities_groups_as_a_regrouping_would() -> None:
    """A search groups the rows by identity; faces added after it join those groups (new identities
    among them) instead of every row being grouped again, and the groups are those a regrouping
    gives: searches after each addition find what a fresh index of the same faces finds."""
    data, owners = clustered(index_module.ROUTE * 4, 10)
    first = len(owners) // 2
    index = FaceIndex(64)
    index.add(list(range(1, first + 1)), data[:first], owners[:first])
    rng = np.random.default_rng(9)
    queries = data[rng.choice(len(owners), 60, replace=False)]
    index.query(queries, 10)  # the groups are made
    for start, end in ((first, first + 7), (first + 7, first + 300), (first + 300, len(owners))):
        index.add(list(range(start + 1, end + 1)), data[start:end], owners[start:end])
        fresh = FaceIndex(64)
        fresh.add(list(range(1, end + 1)), data[:end], owners[:end])
        for batch in (queries, data[start:end]):  # (a batch of many queries, and one of a few)
            labels, distances = index.query(batch, 10)
            expected_labels, expected_distances = fresh.query(batch, 10)
            assert (labels == expected_labels).all() and np.allclose(distances, expected_distances, atol=1e-6)
        assert (index.query(data[start:end], 1)[0][:, 0] == np.arange(start + 1, end + 1)).all()
        assert groups_of(index) == groups_of(fresh)
    # a face added again into another identity keeps its row, which moves to that identity's group
    index.add([1], data[:1], [owners[1]])
    group = groups_of(index)
    assert 1 in group[owners[1]] and 1 not in group[owners[0]]


def groups_of(index: FaceIndex) -> dict[int, list[int]]:
    """Each identity's faces as the routed search groups them."""
    routed = index._index
    known, members = routed._rows_by_owner()
    return {
        int(identity): sorted(routed._labels[index_module._rows(group)].tolist())
        for identity, group in zip(known, members, strict=True)
    }


def test_rows_are_read_as_runs_and_sorted_again_once_too_many_are_out_of_place() -> None:
    """An identity's rows are read as a run of the matrix where they lie together. Faces arriving in
    no order (a rebuild reads them by face id) get sorted by identity; faces added later, merges and
    deletions put rows out of their runs until they are more than 1 in OUT_OF_PLACE, and then the
    rows are sorted again. Searches find what an exact search finds all along."""
    data, owners = clustered(index_module.ROUTE * 4, 12)
    order = np.random.default_rng(4).permutation(len(owners))  # identities interleaved, as a rebuild
    data, owners = data[order], [owners[i] for i in order]
    ids = list(range(1, len(owners) + 1))
    first = len(ids) * 3 // 4
    index = FaceIndex(64)
    index.add(ids[:first], data[:first], owners[:first])
    queries = data[np.random.default_rng(5).choice(len(ids), 50, replace=False)]

    def check(count: int) -> None:
        live = [i for i in range(count) if ids[i] in index.identity_of]
        labels, distances = index.query(queries, 10)
        truth, truth_distances = exact(data[live], [ids[i] for i in live], queries, 10)
        assert all(set(a) == set(b) for a, b in zip(labels, truth, strict=True))
        assert np.allclose(distances, truth_distances, atol=1e-5)

    check(first)
    routed = index._index
    assert routed._out_of_place == 0 and all(len(group[2]) == 0 for group in routed._rows_by_owner()[1])
    for label in (1, 2):  # rows sorted by identity: each identity's rows lie together
        assert routed._owners[np.flatnonzero(routed._labels == label)[0]] == owners[label - 1]
    sorts: list[int] = []
    sort = routed._compact
    routed._compact = lambda: (sorts.append(1), sort())[1]  # type: ignore[method-assign]
    step = (len(ids) - first) // 4
    outside = []
    for start in range(first, first + 4 * step, step):  # added in no order, after the sort
        index.add(ids[start : start + step], data[start : start + step], owners[start : start + step])
        check(start + step)
        outside.append(routed._out_of_place)
        assert routed._out_of_place * index_module.OUT_OF_PLACE <= routed._count
    assert max(outside) > 0 and 0 < len(sorts) < 4  # read apart for a while, then sorted again
    index.relabel(owners[0], owners[1])  # a merge: owners[0]'s rows join owners[1]'s group out of its run
    index.remove(ids[5:40])
    check(first + 4 * step)
    assert routed._out_of_place * index_module.OUT_OF_PLACE <= routed._count


def test_an_index_is_saved_sorted_by_identity(tmp_path: Path) -> None:
    """A process that loads the file reads identities as runs from its first search: it does not
    sort the rows again itself."""
    data, owners = clustered(index_module.ROUTE * 2, 12)
    order = np.random.default_rng(6).permutation(len(owners))
    data, owners = data[order], [owners[i] for i in order]
    ids = list(range(1, len(owners) + 1))
    index = FaceIndex(64)
    index.add(ids[:-5], data[:-5], owners[:-5])
    index.query(data[:20], 10)
    index.add(ids[-5:], data[-5:], owners[-5:])  # a few out of place: not sorted again in memory
    assert index._index._rows_by_owner() and index._index._out_of_place > 0
    index.save(tmp_path, version=1)
    loaded = FaceIndex.load(tmp_path, 64, 1, dict(zip(ids, owners, strict=True)))
    assert loaded is not None
    sorts: list[int] = []
    sort = loaded._index._compact
    loaded._index._compact = lambda: (sorts.append(1), sort())[1]  # type: ignore[method-assign]
    labels, _ = loaded.query(data[:20], 10)
    assert sorts == [] and loaded._index._out_of_place == 0
    assert (labels == index.query(data[:20], 10)[0]).all()


def test_identities_too_small_to_fill_k_widen_the_search_to_every_face() -> None:
    data, owners = clustered(index_module.ROUTE * 3, 1)
    ids = list(range(1, len(owners) + 1))
    index = FaceIndex(64)
    index.add(ids, data, owners)
    labels, _ = index.query(data[:5], index_module.ROUTE + 10)
    assert (labels == exact(data, ids, data[:5], index_module.ROUTE + 10)[0]).all()


def test_merged_moved_removed_and_restored_faces_are_found_where_the_store_says(tmp_path: Path) -> None:
    data, owners = clustered(200, 6)
    ids = list(range(1, len(owners) + 1))
    index = FaceIndex(64)
    index.add(ids, data, owners)
    index.relabel(7, 3)  # a merge: identity 7's faces are found as 3's
    sevens = [face for face, owner in zip(ids, owners, strict=True) if owner == 7]
    labels, _ = index.query(data[[face - 1 for face in sevens]], 1)
    assert labels[:, 0].tolist() == sevens and {index.identity_of[face] for face in sevens} == {3}
    index.remove([1])
    assert index.query(data[:1], 1)[0][0, 0] != 1
    moved = vectors(1, 64, seed=11)
    index.add([1], moved, [150])  # back, elsewhere and changed (an undo, then a re-embed)
    assert index.query(moved, 1)[0][0, 0] == 1
    assert index.query(data[:1], 1)[0][0, 0] != 1  # its old row stays dead
    index.save(tmp_path, version=9)
    store = dict(index.identity_of)
    store[2] = 150  # moved by hand while no process held the index
    loaded = FaceIndex.load(tmp_path, 64, 10, store, lambda face_ids: {})
    assert loaded is not None
    # routed by the store's identities: face 2 is searched with 150's faces, and still found
    assert loaded.query(data[1:2], 1)[0][0, 0] == 2
    assert loaded.query(moved, 1)[0][0, 0] == 1


class Source:
    """The store as the index sees it: faces, their identities and embeddings, a version, and the
    marks of the faces that changed (as migrations/0023's triggers make them)."""

    def __init__(self, count: int) -> None:
        self.data = {100 + row: vector for row, vector in enumerate(vectors(count + 500, seed=4))}
        self.identity = {face: face % 9 + 1 for face in list(self.data)[:count]}
        self.version = 1
        self.marks: dict[int, int] = {}  # face -> its newest mark
        self.made = 0  # the newest mark made
        self.cleared = 0
        self.token: str | None = None

    def transaction(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def index_version(self) -> int:
        return self.version

    def index_marks(self, since: int) -> tuple[int, list[int]] | None:
        if self.cleared > since:
            return None
        marked = sorted((seq, face) for face, seq in self.marks.items() if seq > since)
        return (marked[-1][0] if marked else since), [face for _, face in marked]

    def newest_index_mark(self) -> int:
        return self.made

    def index_file_token(self) -> str | None:
        return self.token

    def kept_index_file(self, token: str, mark: int) -> None:
        self.token = token
        self.marks = {face: seq for face, seq in self.marks.items() if seq > mark}
        self.cleared = max(self.cleared, mark)

    def index_entries(self, face_ids: list[int]) -> tuple[list[int], list[int], list[bytes]]:
        ids = sorted(face for face in face_ids if face in self.identity)
        return ids, [self.identity[face] for face in ids], [self.data[face].tobytes() for face in ids]

    def identity_map(self) -> dict[int, int]:
        return dict(self.identity)

    def count_identity_faces(self) -> int:
        return len(self.identity)

    def iter_identity_faces(self):  # type: ignore[no-untyped-def]
        faces = list(self.identity)
        yield faces, np.stack([self.data[face] for face in faces]), [self.identity[face] for face in faces]

    def embeddings_of(self, face_ids: list[int]) -> dict[int, np.ndarray]:
        return {face: self.data[face] for face in face_ids}

    def join(self, faces: list[int]) -> None:
        self.identity |= {face: 5 for face in faces}
        self.version += 1
        for face in faces:
            self.made += 1
            self.marks[face] = self.made


def test_a_kept_index_is_saved_once_its_file_lacks_a_twentieth_of_it(tmp_path: Path) -> None:
    """Each cycle that placed faces wrote the whole file (1 GB at 500,000 faces); the file is let fall
    behind by up to SAVE_BEHIND of the index, which a start brings in step for what it lacks."""
    from facesyncd.index import SAVE_BEHIND, IndexKeeper

    source = Source(2000)
    keeper = IndexKeeper(source, tmp_path, lambda: 32)
    keeper.get()  # built and saved
    assert read_sidecar(tmp_path)["version"] == 1
    extra = list(source.data)[2000:]
    step = int(SAVE_BEHIND * 2000) // 4
    for cycle in range(4):
        faces = extra[cycle * step : (cycle + 1) * step]
        source.join(faces)
        keeper.add(faces, np.stack([source.data[face] for face in faces]), [5] * len(faces))
        keeper.save_if_changed()
        assert read_sidecar(tmp_path)["version"] == 1, f"saved after cycle {cycle}, {step * (cycle + 1)} faces behind"
        restarted = IndexKeeper(source, tmp_path, lambda: 32).get()  # a start while the file is behind
        assert restarted.identity_of == source.identity and restarted.behind_on_disk == step * (cycle + 1)
    faces = extra[4 * step : 5 * step]
    source.join(faces)
    keeper.add(faces, np.stack([source.data[face] for face in faces]), [5] * len(faces))
    keeper.save_if_changed()
    assert 5 * step >= SAVE_BEHIND * len(source.identity)
    assert read_sidecar(tmp_path)["version"] == source.version  # a twentieth behind: written
    assert IndexKeeper(source, tmp_path, lambda: 32).get().behind_on_disk == 0


def test_a_loaded_index_maps_its_rows_and_reads_them_where_it_may_not(tmp_path: Path, monkeypatch) -> None:
    """A new process maps the saved rows (npz.map_rows: 160 MB at 500,000 faces of 128-d are not
    copied), with the room saved after them; where rows are not mapped (Windows refuses to replace a
    mapped file) they are read into room. Both hold the same index, take faces in their room, sort
    their rows in place, and never change the file, which a save may replace meanwhile."""
    index, data, identity_of = built(tmp_path)
    before = (tmp_path / INDEX_FILE).read_bytes()
    mapped = FaceIndex.load(tmp_path, 32, 5, identity_of)
    monkeypatch.setattr(npz, "MAP_ROWS", False)
    read = FaceIndex.load(tmp_path, 32, 5, identity_of)
    assert mapped is not None and read is not None
    assert mapped_from_file(mapped._index._vectors) and not mapped_from_file(read._index._vectors)
    for loaded in (mapped, read):
        rows = loaded._index._vectors
        loaded.add([9000, 9001], vectors(2, seed=9), [3, 5])
        loaded.remove([100, 101])
        loaded._index._compact()  # the rows sorted again, in place
        assert loaded._index._vectors is rows  # added in the room, sorted where they lie
        assert (loaded.query(vectors(2, seed=9), 1)[0][:, 0] == [9000, 9001]).all()
        assert (loaded.query(data[2:40], 1)[0][:, 0] == np.arange(102, 140)).all()
    assert (tmp_path / INDEX_FILE).read_bytes() == before
    read.save(tmp_path, version=6)  # replaces the file the other's rows are mapped from
    assert (mapped.query(data[2:40], 1)[0][:, 0] == np.arange(102, 140)).all()
    now = {face: identity for face, identity in read.identity_of.items()}
    again = FaceIndex.load(tmp_path, 32, 6, now)
    assert again is not None and again.identity_of == mapped.identity_of == now


def test_an_index_file_numpy_wrote_before_the_rows_identities_were_saved_loads(tmp_path: Path) -> None:
    """Files written before this layout (numpy's savez, no rows' identities, no mark): loaded through
    the store's map (FaceIndex.load), never through the marks."""
    index, data, identity_of = built(tmp_path)
    with np.load(tmp_path / INDEX_FILE) as saved:
        arrays = {name: saved[name] for name in ("vectors", "labels", "live")}
    with (tmp_path / INDEX_FILE).open("wb") as output:
        np.savez(output, **{**arrays, "vectors": arrays["vectors"][:3000]})
    sidecar = json.loads((tmp_path / SIDECAR_FILE).read_text())
    (tmp_path / SIDECAR_FILE).write_text(json.dumps({**sidecar, "token": "t", "mark": 0}))
    source = Source(0)
    source.token = "t"
    assert FaceIndex.load_marked(tmp_path, 32, source) is None  # no rows' identities in the file
    loaded = FaceIndex.load(tmp_path, 32, 5, identity_of)
    assert loaded is not None and loaded.identity_of == identity_of
    assert (loaded.query(data[:30], 1)[0][:, 0] == np.arange(100, 130)).all()


def test_the_rows_grouped_and_summed_as_arrays_are_each_identitys(tmp_path: Path) -> None:
    """_regrouped groups every identity's rows at once (an identity at a time cost 0.04 CPU-s at
    500,000 faces, in each process): whatever the rows' order (added since, deleted, moved by a
    merge, sorted again), each identity's group holds its live rows, its first run where they lie,
    and totals gives the sum and count of its rows."""
    from facesyncd.index import _Routed, _rows

    rng = np.random.default_rng(5)
    routed = _Routed(8)
    label = 0
    for step in range(40):
        count = int(rng.integers(1, 60))
        owners = rng.integers(1, 12, count)
        routed.add(vectors(count, 8, seed=step), np.arange(label, label + count), owners)
        label += count
        if step % 3 == 0:
            routed.mark_deleted(rng.choice(label, 10))
        if step % 7 == 0:
            routed.relabel(int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        if step % 11 == 0:
            routed._compact()
        routed._changed()
        owners_found, groups = routed._regrouped()
        live = np.flatnonzero(routed._live[: routed.count()])
        expected = sorted(set(routed._owners[live].tolist()))
        assert owners_found.tolist() == expected
        for owner, group in zip(expected, groups, strict=True):
            rows = np.sort(live[routed._owners[live] == owner])
            assert _rows(group).tolist() == rows.tolist()
            first, stop, _ = group
            assert rows[: stop - first].tolist() == list(range(first, stop))  # the first run, where it lies
        numbers, sums, counts = routed.totals()
        for at, owner in enumerate(numbers.tolist()):
            rows = live[routed._owners[live] == owner]
            assert counts[at] == len(rows)
            assert np.allclose(sums[at], routed._vectors[rows].sum(axis=0, dtype=np.float64), atol=1e-9)


def test_a_face_added_again_counts_once_with_its_new_embedding_and_identity() -> None:
    """A face the index holds, added again (embedded anew, or moved): its old embedding leaves its
    old identity's sum, as if it had been removed first (the sums are saved with the rows)."""
    index = FaceIndex(4)
    first, second, again = np.eye(4, dtype=np.float32)[:3]
    index.add([1, 2], np.stack([first, second]), [5, 5])
    index.add([1], again[None, :], [6])
    assert index.face_counts() == {5: 1, 6: 1}
    centres = index.centres()
    assert np.allclose(centres[5], second) and np.allclose(centres[6], again)
    index.add([2], first[None, :], [5])  # embedded anew, same identity
    assert index.face_counts() == {5: 1, 6: 1} and np.allclose(index.centres()[5], first)
    assert len(index) == 2 and index.deleted == 0


def test_a_kept_index_loaded_from_a_file_the_marks_do_not_describe_is_written_at_the_first_chance(
    tmp_path: Path,
) -> None:
    """A file from before the marks (no token) is compared with every face of the store once; a
    running process writes it again at its first save, nothing having changed, so that the next
    start brings it in step from the marks alone."""
    from facesyncd.index import IndexKeeper

    source = Source(1500)
    index = FaceIndex(32)
    faces = list(source.identity)
    index.add(faces, np.stack([source.data[face] for face in faces]), [source.identity[f] for f in faces])
    index.save(tmp_path, version=source.version)  # no token: as written before the marks
    whole_reads = []
    read_whole = source.identity_map
    source.identity_map = lambda: whole_reads.append(1) or read_whole()  # type: ignore[method-assign]
    keeper = IndexKeeper(source, tmp_path, lambda: 32)
    assert keeper.get().identity_of == source.identity and whole_reads == [1]
    assert "token" not in read_sidecar(tmp_path)
    keeper.save_if_changed()  # nothing changed, nothing behind: written for its marks
    assert read_sidecar(tmp_path)["token"] == source.token is not None
    again = IndexKeeper(source, tmp_path, lambda: 32).get()
    assert again.identity_of == source.identity and whole_reads == [1]
    keeper.save_if_changed()  # written with its mark: not again
    assert read_sidecar(tmp_path)["token"] == source.token
