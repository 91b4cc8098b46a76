"""The HNSW index: a cache that knows what it was built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import facesyncd.index as index_module
from facesyncd.index import INDEX_FILE, SIDECAR_FILE, FaceIndex, needs_rebuild, read_sidecar


@pytest.fixture(autouse=True, params=["hnswlib", "exact"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both backends: hnswlib, and the exact numpy search used where no hnswlib
    wheel exists (Windows on Python 3.12 and newer)."""
    if request.param == "exact":
        monkeypatch.setattr(index_module, "_backend", index_module._Exact)
    return str(request.param)


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
    expected = {"version": 5, "dimension": 32, "faces": 3000, "deleted": 0, "deleted_labels": []}
    assert read_sidecar(tmp_path) == (expected if index.backend == "hnswlib" else {**expected, "backend": "exact"})


def test_corrupt_or_missing_files_mean_rebuild(tmp_path: Path) -> None:
    _, _, identity_of = built(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"\0" * 100)
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    (tmp_path / INDEX_FILE).unlink()
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is None
    (tmp_path / SIDECAR_FILE).write_text("{not json")
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


def test_an_index_written_by_the_other_backend_is_rebuilt(tmp_path: Path, backend: str, monkeypatch) -> None:
    """An install with hnswlib and one without (another machine, another Python) share a state_dir."""
    _, _, identity_of = built(tmp_path)
    other = index_module._Exact if backend == "hnswlib" else index_module._Hnsw
    monkeypatch.setattr(index_module, "_backend", other)
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
    assert loaded is not None and loaded.stale_on_disk
    assert loaded.identity_of == store
    assert sorted(asked[0]) == [101, *range(9000, 9005)]  # only the faces that joined are read
    labels, _ = loaded.query(np.stack([data[2], data[3]]), k=1)
    assert not {102, 103} & set(labels[:, 0].tolist())  # the faces that left are never found
    assert loaded.query(spare[:1], k=1)[0][0, 0] == 9000
    assert loaded.query(data[1:2], k=1)[0][0, 0] == 101
    assert loaded.mean_distances(spare[0], [42])[42] < 1.0  # the centres follow the store
    loaded.save(tmp_path, version=6)
    again = FaceIndex.load(tmp_path, 32, 6, store, embeddings_of)
    assert again is not None and not again.stale_on_disk and again.identity_of == store


def test_an_index_far_behind_the_store_or_without_its_deleted_labels_is_rebuilt(tmp_path: Path) -> None:
    _, data, identity_of = built(tmp_path)
    half = dict(list(identity_of.items())[: len(identity_of) // 2])
    assert FaceIndex.load(tmp_path, 32, 6, half, lambda ids: {}) is None  # most of it changed: build afresh
    sidecar = read_sidecar(tmp_path)
    assert sidecar is not None
    del sidecar["deleted_labels"]  # written by an earlier version
    (tmp_path / SIDECAR_FILE).write_text(__import__("json").dumps(sidecar))
    assert FaceIndex.load(tmp_path, 32, 5, identity_of) is not None  # current: used as before
    fewer = dict(list(identity_of.items())[:-1])
    assert FaceIndex.load(tmp_path, 32, 6, fewer, lambda ids: {}) is None  # behind, and cannot tell what left
