"""Assignment and clustering: pure functions over arrays, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .boxes import overlap
from .coarse import CoarseRows, closest
from .config import IdentitySettings
from .models import Box, GroupSizes, StoredFace

# Two faces this close (cosine distance) are one face seen twice: a crop and the photo it was cut
# from, the same photo at two sizes. Different people, even look-alikes, are far beyond it.
SAME_FACE = 0.2


def may_seed(face: StoredFace, settings: IdentitySettings) -> bool:
    """Whether a face may open a new faceset or grow one from the pool (see seed_mask)."""
    quality = face.quality
    blur = np.nan if quality is None else quality.blur
    frontality = np.nan if quality is None or quality.frontality is None else quality.frontality
    return bool(seed_mask(np.array([blur]), np.array([frontality]), np.array([face.cut]), settings)[0])


def seed_mask(
    blur: NDArray[np.float64], frontality: NDArray[np.float64], cut: NDArray[np.bool_], settings: IdentitySettings
) -> NDArray[np.bool_]:
    """Which faces may open a new faceset or grow one from the pool, by their blur, frontality
    (NaN: not measured) and whether the photo's edge cuts them. Blurred faces, strong profiles and
    faces cut by the photo's edge are close to many people at once: clustered, they chained
    strangers into one faceset (80 blurred faces of 80 people, 95 edge-cut or profile bystanders in
    another). Such a face only joins an identity it is close to (match_distance), and otherwise
    waits in the pool. A part not measured is not held to its rule."""
    # (NaN compares false: an unmeasured part passes)
    mask = ~(blur < settings.seed_min_blur) & ~(frontality < settings.seed_min_frontality)
    return mask if settings.seed_from_cut_faces else mask & ~cut


def assign(
    blobs: Sequence[str],
    neighbour_ids: NDArray[np.int64],
    neighbour_distances: NDArray[np.float32],
    identity_of: Mapping[int, int],
    match_distance: float,
    taken: Mapping[str, set[int]] | None = None,
    banned: Mapping[int, set[int]] | None = None,
) -> dict[int, tuple[int, float]]:
    """Match faces (rows) to identities through their nearest neighbours.

    A face's distance to an identity is its distance to that identity's nearest face; it may join an
    identity within `match_distance`. Two faces of one photo (same blob) never join the same identity,
    nor one the photo already has a face in (`taken`): matches are granted closest first, so the
    closer face wins and the other falls back to its next candidate or stays unmatched. A row never
    joins an identity in `banned[row]` (the user's corrections).
    Returns row -> (identity, distance).
    """
    candidates: list[tuple[float, int, int]] = []
    for row in range(len(blobs)):
        best: dict[int, float] = {}
        never = banned.get(row, set()) if banned else set()
        for face_id, distance in zip(neighbour_ids[row], neighbour_distances[row], strict=True):
            identity = identity_of.get(int(face_id))
            if identity is None or distance > match_distance or identity in never:
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


def merge_candidates(
    centres: Mapping[int, NDArray[np.float32]], max_distance: float, among: Collection[int] | None = None
) -> list[tuple[int, int]]:
    """(kept, retired) pairs of identities whose centres lie within `max_distance`, closest first:
    the only pairs whose photos need looking at. `among`: only the pairs with one of these (None:
    every pair; comparing the few whose centres moved with all costs those, not facesets squared)."""
    if max_distance <= 0 or len(centres) < 2:
        return []
    numbers = sorted(centres)
    matrix = np.stack([centres[number] for number in numbers])
    asked = np.arange(len(numbers)) if among is None else np.flatnonzero(np.isin(numbers, list(among)))
    distances = 1.0 - matrix[asked] @ matrix.T
    found, columns = np.nonzero(distances <= max_distance)
    rows = asked[found]
    is_asked = np.zeros(len(numbers), bool)
    is_asked[asked] = True
    # each pair once, never an identity with itself: a pair of two asked rows is found from both
    once = (rows < columns) | ((rows > columns) & ~is_asked[columns])
    low, high = np.minimum(rows, columns)[once], np.maximum(rows, columns)[once]
    close = distances[found[once], columns[once]]
    candidates = sorted(zip(close.tolist(), low.tolist(), high.tolist(), strict=True))
    return [(numbers[row], numbers[column]) for _, row, column in candidates]


def choose_merges(candidates: Sequence[tuple[int, int]], together: set[frozenset[int]]) -> list[tuple[int, int]]:
    """Identities that are one person: (retired, kept) pairs from merge_candidates' pairs, the higher
    number going into the lower. None of two identities seen in one photo (`together`: two faces in
    one photo are two people); closest pairs first, an identity in one merge per call (the next cycle
    sees the merged centre)."""
    done: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for kept, retired in candidates:
        if kept in done or retired in done or frozenset((kept, retired)) in together:
            continue
        pairs.append((retired, kept))
        done.update((kept, retired))
    return pairs


def pair_boxes(wanted: Sequence[Box], found: Sequence[Box], min_overlap: float) -> list[tuple[int, int]]:
    """Pairs (wanted row, found row) of boxes of the same face: greatest overlap first, each box in
    one pair at most, none under `min_overlap`."""
    candidates = sorted(
        (
            (-overlap(first, second), row, column)
            for row, first in enumerate(wanted)
            for column, second in enumerate(found)
        )
    )
    return pair_greedily(candidates, -min_overlap)


def pair_greedily(
    candidates: Iterable[tuple[float, int, int]],
    bound: float,
    rows: Collection[int] = (),
    columns: Collection[int] = (),
) -> list[tuple[int, int]]:
    """Pairs (row, column) from (cost, row, column) candidates sorted by cost: cheapest first, none
    costing more than `bound`, each row and column in one pair at most (`rows` and `columns`: paired
    already)."""
    taken_rows, taken_columns = set(rows), set(columns)
    pairs: list[tuple[int, int]] = []
    for cost, row, column in candidates:
        if cost > bound:
            break
        if row not in taken_rows and column not in taken_columns:
            pairs.append((row, column))
            taken_rows.add(row)
            taken_columns.add(column)
    return pairs


@dataclass(frozen=True)
class Cluster:
    rows: tuple[int, ...]
    distances: tuple[float, ...]  # of each row to the cluster's centre


def _centre(embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
    mean = embeddings.mean(axis=0)
    return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)


# Faces clustered in one exact average-linkage run at most: its distance matrix (and scipy's working
# copy) take 16 bytes per pair, 290 MB here. 10,000 faces would take 890 MB, 20,000 over 3 GB.
EXACT_LIMIT = 4_000
# Neighbours per face in the graph that splits a larger pool (see _components).
NEIGHBOURS = 32
_SEARCH_EF = 128  # how widely _nearest's graph is searched (see there)


@dataclass(frozen=True)
class Clustering:
    clusters: list[Cluster]
    clustered: NDArray[np.int64]  # the rows this round clustered
    more_rounds: bool  # some faces were left for a later round (see cluster_pool)
    # The rows split into groups no cluster crosses: the components of the graph of faces within the
    # cut (exact, or through the neighbour graph for a large pool); see pool_scope.
    groups: list[NDArray[np.int64]]


def cluster_pool(
    embeddings: NDArray[np.float32],
    blobs: Sequence[str],
    *,
    cluster_distance: float,
    member_distance: float,
    min_faces: int,
    fresh: NDArray[np.bool_] | None = None,
    exact_limit: int | None = None,
) -> Clustering:
    """Group unmatched faces into candidate identities.

    Average-linkage agglomerative clustering on cosine distance, cut at `cluster_distance`. In each
    group, members farther than `member_distance` from the group's centre are dropped (they would not
    match the new identity either), then only the closest face of each photo stays. A group becomes a
    cluster when it still has `min_faces` faces from at least two photos.

    A pool larger than `exact_limit` (a first sync, or years of strangers in the background) is first
    split into the connected components of its nearest-neighbour graph with edges under
    `cluster_distance`: a group cut there never spans two components (two groups merge only when
    their average distance is under the cut, so some pair of them is), so clustering each component
    alone gives the same groups, in bounded memory, but for the rare close pair the approximate
    neighbour search misses. A component still larger than `exact_limit` is clustered a chunk at a
    time, one chunk per round: the caller matches the rest of the pool against the identities a
    round opened, then calls again with `fresh` marking the rows no round has clustered yet; only
    components holding such rows are clustered, and chunks are taken from them.
    """
    count = len(blobs)
    nothing = np.zeros(0, np.int64)
    exact_limit = exact_limit or EXACT_LIMIT
    components = (
        _exact_components(embeddings, cluster_distance)
        if count <= exact_limit
        else _components(embeddings, cluster_distance)
    )
    if count < min_faces:
        return Clustering([], nothing, False, components)
    fresh = np.ones(count, bool) if fresh is None else np.asarray(fresh, bool)
    groups: list[NDArray[np.int64]] = []
    clustered: list[NDArray[np.int64]] = []
    more_rounds = False
    if count <= exact_limit:
        clustered.append(np.arange(count))
    else:
        for component in components:
            new = component[fresh[component]]
            if len(component) < min_faces or not len(new):
                continue
            if len(component) <= exact_limit:
                clustered.append(component)
            else:
                clustered.append(new[:exact_limit])
                more_rounds = more_rounds or len(new) > exact_limit
    for rows in clustered:
        groups.extend(_average_linkage(embeddings, rows, cluster_distance))
    clusters = [
        cluster
        for rows in groups
        if (cluster := _gate(embeddings, blobs, rows, member_distance=member_distance, min_faces=min_faces))
    ]
    clusters.sort(key=lambda cluster: cluster.rows[0])
    return Clustering(clusters, np.concatenate(clustered) if clustered else nothing, more_rounds, components)


@dataclass(frozen=True)
class PoolScope:
    """What pool_scope found."""

    rows: NDArray[np.bool_]  # the rows to cluster again
    new: NDArray[np.bool_]  # the rows new to the pool, of those asked about
    closest: NDArray[np.float32]  # each row's cosine similarity to the nearest of them (see pool_scope's floor)


# The float embeddings of some rows of the pool, in the order asked (its arrays hold them rounded).
PoolRows = Callable[[NDArray[np.int64]], NDArray[np.float32]]


def pool_scope(
    coarse: CoarseRows,
    exact: PoolRows,
    group_of: NDArray[np.int64],
    sizes: GroupSizes,
    cut: float,
    among: NDArray[np.bool_] | None = None,
    *,
    floor: float | None = None,
) -> PoolScope | None:
    """The rows of the pool a cycle must cluster again, of those `among` (all: None), given the
    groups the last clustering split them into (`group_of`: each row's group, -1 for a face new to
    the pool; `sizes`: each group's size then); None: all of them (no record, or mostly new faces).
    The pool's embeddings: `coarse`, and `exact` for the few rows that need them (coarse.closest).
    The similarities found on the way (PoolScope.closest) are exact at `floor` and above (at most
    1 - cut; default 1 - cut).

    A group no new face comes within `cut` of, and that lost no face, holds the same faces as when
    it was clustered, and no cluster crosses groups (two groups merge only when some pair of their
    faces is within the cut): clustering it again would give what it gave, which opened nothing
    (what it opened left the pool, and the group with it). So only the groups new faces reach
    (found exactly: closest) and the groups that changed are clustered, with the new faces.
    (Rows outside `among` are skipped, not copied out. Groups are looked up by id in arrays as long
    as the highest face id, not sorted or hashed: 200,000 groups in each cycle.)"""
    among = np.ones(len(group_of), bool) if among is None else among
    new = among & (group_of < 0)
    known = among & ~new
    if not known.any() or new.sum() * 2 > among.sum():
        return None
    span = int(max(group_of.max(), sizes.groups.max(initial=0))) + 1
    now = np.bincount(group_of[known], minlength=span)
    made = np.zeros(span, np.int64)
    made[sizes.groups] = sizes.counts
    again = now != made  # the groups whose faces now are not those they were made with
    floor = 1.0 - cut if floor is None else min(floor, 1.0 - cut)
    similarity = closest(coarse, exact(np.flatnonzero(new)), floor, exact)
    again[group_of[(similarity >= 1.0 - cut) & known]] = True
    return PoolScope(new | (known & again[np.maximum(group_of, 0)]), new, similarity)


def near_any(coarse: CoarseRows, exact: PoolRows, targets: NDArray[np.float32], distance: float) -> NDArray[np.bool_]:
    """Which rows of the pool lie within `distance` (cosine) of any of `targets`: exactly, every row
    with every target (through the rows' rounding, `exact` read for the few it cannot rule out: see
    coarse.closest). A graph index over the pool found half to four fifths of the rows within the
    cut of such targets among 50,000 strangers, after 56 CPU-s of building, and cost more to ask
    (benchmarks/bench_pool_reach.py)."""
    floor = 1.0 - distance
    near: NDArray[np.bool_] = closest(coarse, targets, floor, exact) >= floor
    return near


def look_alike(embeddings: NDArray[np.float32], distance: float) -> list[list[int]]:
    """Rows grouped by faces that look alike (average linkage cut at `distance`, looser than the
    clustering that opens facesets): the pool page's work queue, largest group first, then by row."""
    if len(embeddings) == 0:
        return []
    groups = _average_linkage(embeddings, np.arange(len(embeddings)), distance)
    return sorted(([int(row) for row in group] for group in groups), key=lambda rows: (-len(rows), rows[0]))


def _average_linkage(embeddings: NDArray[np.float32], rows: NDArray[np.int64], cut: float) -> list[NDArray[np.int64]]:
    """The groups (as rows) of exact average-linkage clustering of these rows, cut at `cut`."""
    if len(rows) == 1:
        return [rows]
    from scipy.cluster.hierarchy import fcluster, linkage

    data = np.asarray(embeddings[rows], dtype=np.float64)
    labels = fcluster(linkage(data, method="average", metric="cosine"), t=cut, criterion="distance")
    return [rows[part] for part in _split_by_label(labels)]


def _split_by_label(labels: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Positions grouped by their label, each group in ascending order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return list(np.split(order, bounds))


def _components(embeddings: NDArray[np.float32], cut: float) -> list[NDArray[np.int64]]:
    """Connected components of the graph linking each face to those of its NEIGHBOURS nearest
    (hnswlib) within `cut`, largest first; each component's rows in pool order."""
    from scipy.sparse import coo_matrix

    count = len(embeddings)
    k = min(NEIGHBOURS + 1, count)
    neighbours, distances = _nearest(np.asarray(embeddings, np.float32), k)
    close = distances <= cut
    sources = np.repeat(np.arange(count), k)[close.ravel()]
    targets = neighbours.ravel()[close.ravel()].astype(np.int64)
    return _sorted_components(coo_matrix((np.ones(len(sources), np.int8), (sources, targets)), shape=(count, count)))


def _exact_components(embeddings: NDArray[np.float32], cut: float) -> list[NDArray[np.int64]]:
    """Connected components of the graph linking every two rows within `cut` (at most EXACT_LIMIT
    rows: a 4,000 x 4,000 matrix of booleans)."""
    from scipy.sparse import csr_matrix

    if len(embeddings) <= 1:
        return [np.arange(len(embeddings))]
    return _sorted_components(csr_matrix((1.0 - embeddings @ embeddings.T) <= cut))


def _sorted_components(graph: Any) -> list[NDArray[np.int64]]:
    """The connected components of `graph` (a scipy sparse adjacency, read as undirected), largest
    first; each one's rows ascending."""
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(graph, directed=False)
    return sorted(_split_by_label(labels), key=len, reverse=True)


def _nearest(embeddings: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Each row's k nearest rows (itself included) and their cosine distances: with hnswlib where it
    is installed, else exactly, a block of rows at a time (bounded memory)."""
    count, dimension = embeddings.shape
    try:
        import hnswlib
    except ImportError:
        neighbours = np.zeros((count, k), np.int64)
        distances = np.zeros((count, k), np.float32)
        for start in range(0, count, 1024):
            block = 1.0 - embeddings[start : start + 1024] @ embeddings.T
            nearest = np.argpartition(block, k - 1, axis=1)[:, :k]
            neighbours[start : start + 1024] = nearest
            distances[start : start + 1024] = np.take_along_axis(block, nearest, axis=1)
        return neighbours, distances
    index = hnswlib.Index(space="cosine", dim=dimension)
    index.init_index(max_elements=count, ef_construction=100, M=16)
    # Built on one thread: threads insert in the order they happen to run, so each build gave another
    # graph, other neighbours (half the rows of 50,000 faces) and at times other facesets from the
    # same pool (18 to 20 of 20 people found whole at 200,000). One thread costs the same CPU (44
    # CPU-s at 50,000 faces of 512-d) and 1.5x the wall time; the queries below, each answered
    # alone, stay on every core.
    index.add_items(embeddings, np.arange(count), num_threads=1)
    # ef 128, not 64: at 200,000 pooled faces of 128-d (bench_new_faces at 500,000) the graph searched
    # at 64 missed links within the cut and split 2 of 20 new people that clustering where the pool
    # changed (exact) found whole; at 128 (and 160) both found all 20, for 1.25x the CPU (119 against
    # 96 CPU-s) of a whole clustering, which a library pays once (a first sync, a new cluster_distance).
    # At 512-d the graph's recall is lower: it split 6 of the 20 at ef 128 and 1 at 256 (for 1.46x the
    # CPU), where the exact path found all 20 (docs/performance.md).
    index.set_ef(max(_SEARCH_EF, k))
    labels, found = index.knn_query(embeddings, k=k)
    return labels.astype(np.int64), found.astype(np.float32)


def _gate(
    embeddings: NDArray[np.float32],
    blobs: Sequence[str],
    rows: NDArray[np.int64],
    *,
    member_distance: float,
    min_faces: int,
) -> Cluster | None:
    """The gates a group passes to become a cluster (see cluster_pool)."""
    if len(rows) < min_faces:
        return None
    centre = _centre(embeddings[rows])
    distances = 1.0 - embeddings[rows] @ centre
    rows, distances = rows[distances <= member_distance], distances[distances <= member_distance]
    if len(rows) < min_faces:
        return None
    centre = _centre(embeddings[rows])
    distances = 1.0 - embeddings[rows] @ centre
    closest: dict[str, tuple[float, int]] = {}
    for row, distance in zip(rows, distances, strict=True):
        blob = blobs[int(row)]
        if blob not in closest or distance < closest[blob][0]:
            closest[blob] = (float(distance), int(row))
    if len(closest) < max(min_faces, 2):
        return None
    members = sorted((row, distance) for distance, row in closest.values())
    return Cluster(tuple(r for r, _ in members), tuple(d for _, d in members))
