"""Assignment and clustering: pure functions over arrays, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def assign(
    blobs: Sequence[str],
    neighbour_ids: NDArray[np.int64],
    neighbour_distances: NDArray[np.float32],
    identity_of: Mapping[int, int],
    match_distance: float,
    taken: Mapping[str, set[int]] | None = None,
) -> dict[int, tuple[int, float]]:
    """Match faces (rows) to identities through their nearest neighbours.

    A face's distance to an identity is its distance to that identity's nearest face; it may join an
    identity within `match_distance`. Two faces of one photo (same blob) never join the same identity,
    nor one the photo already has a face in (`taken`): matches are granted closest first, so the
    closer face wins and the other falls back to its next candidate or stays unmatched.
    Returns row -> (identity, distance).
    """
    candidates: list[tuple[float, int, int]] = []
    for row in range(len(blobs)):
        best: dict[int, float] = {}
        for face_id, distance in zip(neighbour_ids[row], neighbour_distances[row], strict=True):
            identity = identity_of.get(int(face_id))
            if identity is None or distance > match_distance:
                continue
            if distance < best.get(identity, np.inf):
                best[identity] = float(distance)
        candidates.extend((distance, row, identity) for identity, distance in best.items())
    candidates.sort()
    used: dict[str, set[int]] = {blob: set(identities) for blob, identities in (taken or {}).items()}
    result: dict[int, tuple[int, float]] = {}
    for distance, row, identity in candidates:
        blob_identities = used.setdefault(blobs[row], set())
        if row in result or identity in blob_identities:
            continue
        result[row] = (identity, distance)
        blob_identities.add(identity)
    return result


@dataclass(frozen=True)
class Cluster:
    rows: tuple[int, ...]
    distances: tuple[float, ...]  # of each row to the cluster's centre


def _centre(embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
    mean = embeddings.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def cluster_pool(
    embeddings: NDArray[np.float32],
    blobs: Sequence[str],
    *,
    cluster_distance: float,
    member_distance: float,
    min_faces: int,
) -> list[Cluster]:
    """Group unmatched faces into candidate identities.

    Average-linkage agglomerative clustering on cosine distance, cut at `cluster_distance`. In each
    group, members farther than `member_distance` from the group's centre are dropped (they would not
    match the new identity either), then only the closest face of each photo stays. A group becomes a
    cluster when it still has `min_faces` faces from at least two photos.
    """
    count = len(blobs)
    if count < min_faces:
        return []
    from scipy.cluster.hierarchy import fcluster, linkage

    data = np.asarray(embeddings, dtype=np.float64)
    labels = fcluster(linkage(data, method="average", metric="cosine"), t=cluster_distance, criterion="distance")
    clusters: list[Cluster] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < min_faces:
            continue
        centre = _centre(embeddings[rows])
        distances = 1.0 - embeddings[rows] @ centre
        rows, distances = rows[distances <= member_distance], distances[distances <= member_distance]
        if len(rows) < min_faces:
            continue
        centre = _centre(embeddings[rows])
        distances = 1.0 - embeddings[rows] @ centre
        closest: dict[str, tuple[float, int]] = {}
        for row, distance in zip(rows, distances, strict=True):
            blob = blobs[int(row)]
            if blob not in closest or distance < closest[blob][0]:
                closest[blob] = (float(distance), int(row))
        if len(closest) < max(min_faces, 2):
            continue
        members = sorted((row, distance) for distance, row in closest.values())
        clusters.append(Cluster(tuple(r for r, _ in members), tuple(d for _, d in members)))
    clusters.sort(key=lambda cluster: cluster.rows[0])
    return clusters
