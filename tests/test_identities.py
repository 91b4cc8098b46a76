"""Assignment and clustering, on synthetic embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from facesyncd.identities import assign, cluster_pool


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def people(count: int, per_person: int, *, spread: float, dimension: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(count, dimension)))
    faces = [unit(centre + spread * rng.normal(size=(per_person, dimension))) for centre in centres]
    return np.concatenate(faces)


def clusters_of(embeddings: np.ndarray, blobs: list[str], **options: float) -> list:
    settings = {"cluster_distance": 0.55, "member_distance": 0.45, "min_faces": 3, **options}
    result = cluster_pool(embeddings, blobs, **settings)  # type: ignore[arg-type]
    assert not result.more_rounds
    return result.clusters


def test_a_face_joins_the_closest_identity_within_the_threshold() -> None:
    ids = np.array([[10, 20, 30]])
    distances = np.array([[0.30, 0.35, 0.40]])
    identity_of = {10: 2, 20: 1, 30: 1}
    assert assign(["a"], ids, distances, identity_of, 0.45) == {0: (2, 0.30)}
    assert assign(["a"], ids, distances, identity_of, 0.25) == {}


def test_two_faces_of_one_photo_never_join_the_same_identity() -> None:
    ids = np.array([[10, 20], [10, 20]])
    distances = np.array([[0.20, 0.40], [0.10, 0.30]])
    identity_of = {10: 1, 20: 2}
    result = assign(["photo", "photo"], ids, distances, identity_of, 0.45)
    # the closer face (row 1) takes identity 1; row 0 falls back to identity 2
    assert result == {1: (1, 0.10), 0: (2, 0.40)}
    # an identity the photo already has a face in is not available either
    result = assign(["photo"], ids[:1], distances[:1], identity_of, 0.45, {"photo": {1}})
    assert result == {0: (2, 0.40)}
    # faces of different photos may both join
    assert assign(["p1", "p2"], ids, distances, identity_of, 0.45) == {0: (1, 0.20), 1: (1, 0.10)}


def test_clustering_finds_people_and_needs_enough_photos() -> None:
    embeddings = people(3, 4, spread=0.03)
    blobs = [f"photo{i}" for i in range(len(embeddings))]
    clusters = clusters_of(embeddings, blobs, member_distance=0.45, min_faces=3)
    assert [cluster.rows for cluster in clusters] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert all(max(cluster.distances) < 0.1 for cluster in clusters)
    # with five required faces, nobody qualifies
    assert clusters_of(embeddings, blobs, member_distance=0.45, min_faces=5) == []


def test_a_cluster_from_one_photo_only_is_no_identity() -> None:
    embeddings = people(1, 4, spread=0.02)
    one_photo = ["same"] * 4
    assert clusters_of(embeddings, one_photo, member_distance=0.45, min_faces=2) == []
    two_photos = ["a", "a", "b", "b"]
    clusters = clusters_of(embeddings, two_photos, member_distance=0.45, min_faces=2)
    assert len(clusters) == 1 and len(clusters[0].rows) == 2  # one face per photo


def test_members_far_from_the_centre_are_dropped() -> None:
    rng = np.random.default_rng(3)
    centre = unit(rng.normal(size=(1, 64)))[0]
    tight = unit(centre + 0.02 * rng.normal(size=(4, 64)))
    other = unit(rng.normal(size=(1, 64)))[0]
    # halfway between the group and an unrelated face: joins by average linkage, far from the centre
    straggler = unit((centre + 0.7 * other)[None, :])
    embeddings = np.concatenate([tight, straggler])
    blobs = [f"p{i}" for i in range(5)]
    loose = clusters_of(embeddings, blobs, member_distance=1.0, min_faces=3)
    assert loose and 4 in loose[0].rows, "the straggler should be in the linkage group"
    strict = clusters_of(embeddings, blobs, member_distance=0.08, min_faces=3)
    assert strict[0].rows == (0, 1, 2, 3)


@pytest.mark.parametrize("neighbours", ["hnswlib", "exact"])
def test_a_large_pool_splits_into_components_with_the_same_clusters(
    neighbours: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the exact limit the pool is clustered component by component: same clusters, and the
    strangers seen once (most of a real pool) never enter a distance matrix. Without hnswlib
    (Windows on Python 3.12+) the neighbour graph is found exactly."""
    if neighbours == "exact":
        monkeypatch.setitem(sys.modules, "hnswlib", None)  # as if it were not installed
    rng = np.random.default_rng(5)
    embeddings = np.concatenate([people(40, 12, spread=0.05, seed=1), unit(rng.normal(size=(400, 64)))])
    order = rng.permutation(len(embeddings))  # people and strangers mixed, as in a real pool
    embeddings = embeddings[order]
    blobs = [f"photo{i}" for i in range(len(embeddings))]
    exact = cluster_pool(embeddings, blobs, cluster_distance=0.55, member_distance=0.45, min_faces=3)
    split = cluster_pool(embeddings, blobs, cluster_distance=0.55, member_distance=0.45, min_faces=3, exact_limit=100)
    assert len(exact.clusters) == 40 and not exact.more_rounds and not split.more_rounds
    assert split.clusters == exact.clusters


def test_a_component_over_the_limit_is_clustered_a_chunk_per_round() -> None:
    """Each round clusters the next chunk of the rows no round has clustered yet, until none is left."""
    embeddings = people(1, 50, spread=0.05, seed=2)
    blobs = [f"photo{i}" for i in range(50)]
    fresh = np.ones(50, bool)
    rounds = []
    for _ in range(4):
        result = cluster_pool(
            embeddings, blobs, cluster_distance=0.55, member_distance=0.45, min_faces=3, fresh=fresh, exact_limit=20
        )
        rounds.append(([c.rows for c in result.clusters], result.more_rounds))
        fresh[result.clustered] = False
    assert rounds == [
        ([tuple(range(0, 20))], True),
        ([tuple(range(20, 40))], True),
        ([tuple(range(40, 50))], False),
        ([], False),
    ]
