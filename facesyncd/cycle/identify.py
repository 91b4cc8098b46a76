"""Identify: faces join the identities they match, and the pool of the unmatched opens new facesets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..config import IdentitySettings
from ..crashpoints import checkpoint
from ..identities import (
    SAME_FACE,
    Cluster,
    Clustering,
    PoolRows,
    assign,
    choose_merges,
    cluster_pool,
    may_seed,
    merge_candidates,
    near_any,
    pool_scope,
    seed_mask,
)
from ..index import FaceIndex, IndexKeeper
from ..merge_file import MergeFile
from ..models import CycleReport, PoolArrays, StoredFace
from ..pool import PoolKeeper
from ..progress import Reporter
from ..store import Store
from .unchanged import CLUSTER, MERGE, finished, unchanged

log = logging.getLogger(__name__)

NEIGHBOURS = 16


@dataclass
class MergeLook:
    """What this process's last look for merges saw (merge_identities): the index (its serial), the
    merge distance, the locked identities and the pairs the user keeps apart; and the identities of
    the merges the store refused. While the first are the same, a pair of identities whose centres
    did not move since is as it was then: too far apart, or kept apart (two that share a photo
    share it still: a face that joins or leaves moves a centre). So the next look compares only the
    centres that moved, and those of the merges the store refused (whatever refused one may be
    lifted with no centre moving), with all: not every pair (0.12-0.3 CPU-s over 3,000 facesets, in
    each cycle that changed the store)."""

    seen: tuple[int, float, frozenset[int], frozenset[frozenset[int]]] | None = None
    again: set[int] = field(default_factory=set)
    change: int = 0  # the index's count of changes at that look (FaceIndex.moved_since)
    file: MergeFile | None = None  # the last look of any process (merge_file.py), for this one's first


@dataclass(frozen=True)
class IdentifyParts:
    """What identifying faces uses: the store, the index, the pool's arrays, [identities] and the
    reporter; and what the last look for merges saw."""

    store: Store
    index: IndexKeeper
    pool: PoolKeeper
    settings: IdentitySettings
    reporter: Reporter
    merges: MergeLook = field(default_factory=MergeLook)


def assign_new_faces(parts: IdentifyParts, report: CycleReport) -> None:
    """Each face not yet compared joins the closest identity within match_distance (see _match);
    the same face as one the user set aside is set aside too."""
    faces = _hold_the_held(parts, parts.store.unmatched_new_faces())
    if not faces:
        return
    parts.reporter.stage("assigning faces", len(faces))
    matches = _match(parts, faces, parts.index.get())
    parts.store.record_matches(matches, [face.id for face in faces])
    checkpoint("assigned")
    _add_to_index(parts, faces, matches)
    report.faces_assigned += len(matches)
    parts.reporter.advance(len(faces))


def _hold_the_held(parts: IdentifyParts, faces: list[StoredFace]) -> list[StoredFace]:
    """A new face that is the same face as one the user set aside (a quarantined crop of the older
    pipeline, cut from the very photo that now arrives) is set aside by the same decision: it never
    forms a faceset and never joins one. The faces left to match are returned."""
    held = parts.store.held_faces()
    if not held or not faces:
        return faces
    decisions = [reason for _, reason, _ in held]
    distances = 1.0 - np.stack([face.embedding for face in faces]) @ np.stack([vector for _, _, vector in held]).T
    nearest = distances.argmin(axis=1)
    same = {
        face.id: decisions[int(column)]
        for face, column, row in zip(faces, nearest, distances, strict=True)
        if row[int(column)] <= SAME_FACE
    }
    if same:
        parts.store.hold_faces(same)
        log.info("%d new faces are faces the user set aside: set aside too", len(same))
    return [face for face in faces if face.id not in same]


def open_new_facesets(parts: IdentifyParts, report: CycleReport) -> None:
    """Cluster the pool of unmatched faces; clusters that pass the gates become identities.

    A pool too large to cluster at once goes in rounds (see cluster_pool): after each, the faces
    left in the pool are matched against the identities it opened, as a later sync would. A pool
    as it was when last clustered (nothing in the store changed since) is not clustered again."""
    if unchanged(parts.store, CLUSTER, parts.settings):
        log.debug("nothing changed since the last clustering: the pool is not clustered again")
        return
    _cluster_rounds(parts, report)
    finished(parts.store, CLUSTER, parts.settings)


def _cluster_rounds(parts: IdentifyParts, report: CycleReport) -> None:
    """Cluster the pool faces in scope (see _scope), in rounds; then remember how the first round
    split them (a crash before that leaves the new faces new: the next cycle clusters them again).
    The whole pool is read as arrays (held between cycles: PoolKeeper); only the faces clustered are
    read whole."""
    settings = parts.settings
    everyone = parts.pool.get()
    seeds = _seeds(everyone, settings)
    scope, replaced, reached = _scope(parts, everyone, seeds)
    pool = parts.store.faces_by_ids(_in_scope(everyone, seeds, scope))
    if not pool:
        return
    first_pool = pool
    clustered: set[int] = set()  # face ids some round clustered
    groups: list[np.ndarray] | None = None
    while True:
        parts.reporter.stage("clustering", len(pool))
        clustering = cluster_faces(pool, settings, np.array([face.id not in clustered for face in pool], bool))
        groups = clustering.groups if groups is None else groups  # as they were before any faceset opened
        clustered.update(pool[int(row)].id for row in clustering.clustered)
        if clustering.clusters:
            _open_identities(parts, pool, clustering.clusters, report, everyone, reached)
        if not clustering.more_rounds:
            break
        reached = None  # (of the pool as it was before this round)
        # Poor faces (blurred, strong profiles, cut by the edge) never open or grow a faceset: they
        # wait in the pool, and join an identity only when close to one (see seed_mask).
        everyone = parts.pool.get()
        in_scope = _in_scope(everyone, _seeds(everyone, settings), scope)
        if len(in_scope) < settings.min_faceset_faces:
            break
        pool = parts.store.faces_by_ids(in_scope)
    _remember_groups(parts, first_pool, groups, replaced, everything=scope is None)


def _seeds(pool: PoolArrays, settings: IdentitySettings) -> NDArray[np.bool_]:
    return seed_mask(pool.blur, pool.frontality, pool.cut, settings)


def _in_scope(pool: PoolArrays, seeds: NDArray[np.bool_], scope: NDArray[np.int64] | None) -> list[int]:
    """The ids of the pool faces that may seed, of those in `scope` (None: all)."""
    ids = pool.ids[seeds]
    chosen: list[int] = (ids if scope is None else ids[np.isin(ids, scope)]).tolist()
    return chosen


def cluster_faces(faces: list[StoredFace], settings: IdentitySettings, fresh: np.ndarray | None = None) -> Clustering:
    """identities.cluster_pool over these faces, with the [identities] settings."""
    return cluster_pool(
        np.stack([face.embedding for face in faces]),
        [face.sha256 for face in faces],
        cluster_distance=settings.cluster_distance,
        member_distance=settings.match_distance,
        min_faces=settings.min_faceset_faces,
        fresh=fresh,
    )


# The cut the remembered groups were made at: another cut makes other groups.
_GROUPS_CUT = "pool_groups_cut"


@dataclass(frozen=True)
class _Reached:
    """The faces new to the pool when a cycle began (`new`), and the faces of the pool within reach
    (of a new faceset's faces: see _open_identities) of one of them (`near`), by id."""

    new: NDArray[np.int64]
    near: NDArray[np.int64]


def _scope(
    parts: IdentifyParts, pool: PoolArrays, seeds: NDArray[np.bool_]
) -> tuple[NDArray[np.int64] | None, set[int], _Reached | None]:
    """The ids of the pool faces this cycle clusters, of those that may seed: those in groups new
    faces reach or that changed since the last clustering (identities.pool_scope); None: all of
    them. With the remembered groups this clustering replaces: those of the faces it clusters, and
    those no face of the pool is in any longer (their faces opened a faceset, say); and what the
    new faces reach, found on the way."""
    if not seeds.any():
        return None, set(), None
    sizes = parts.pool.group_sizes()
    if not len(sizes) or parts.store.get_meta(_GROUPS_CUT) != repr(parts.settings.cluster_distance):
        return None, set(), None
    scope = pool_scope(
        pool.coarse,
        _pool_rows(parts, pool),
        pool.group,
        sizes,
        parts.settings.cluster_distance,
        among=seeds,
        floor=1.0 - _reach(parts.settings),
    )
    if scope is None:
        return None, set(), None
    rows = scope.rows
    log.debug("clustering %d of the pool's %d faces (the groups new faces reach)", int(rows.sum()), int(seeds.sum()))
    gone = sizes.groups[~np.isin(sizes.groups, pool.group[seeds])]  # no face of the pool is in them any longer
    replaced = set(gone.tolist()) | set(np.unique(pool.group[rows]).tolist())
    reached = _Reached(pool.ids[scope.new], pool.ids[scope.closest >= 1.0 - _reach(parts.settings)])
    return pool.ids[rows], replaced - {-1}, reached


def _pool_rows(parts: IdentifyParts, pool: PoolArrays) -> PoolRows:
    """The float embeddings of rows of `pool`, read from the store: the pool's arrays hold them
    rounded (coarse.py), and a cycle needs a few hundred of them as they are."""

    def read(rows: NDArray[np.int64]) -> NDArray[np.float32]:
        ids = pool.ids[rows].tolist()
        if not ids:
            return np.zeros((0, pool.coarse.codes.shape[1]), np.float32)
        found = parts.store.embeddings_of(ids)
        return np.stack([found[face] for face in ids])

    return read


def _reach(settings: IdentitySettings) -> float:
    """How close a face of the pool comes to a face of a new faceset for _match to be asked about it:
    a face joins within match_distance of a face, or within cluster_distance on average."""
    return max(settings.match_distance, settings.cluster_distance)


def _remember_groups(
    parts: IdentifyParts, pool: list[StoredFace], groups: list[np.ndarray], replaced: set[int], *, everything: bool
) -> None:
    """The groups this clustering split `pool` into, in place of the `replaced` ones (or of all)."""
    named = {}
    for rows in groups:
        if len(rows):
            ids = sorted(pool[int(row)].id for row in rows)
            named[ids[0]] = ids
    parts.pool.replace_groups(named, replaced, everything=everything)
    parts.store.set_meta(_GROUPS_CUT, repr(parts.settings.cluster_distance))


def _open_identities(
    parts: IdentifyParts,
    pool: list[StoredFace],
    clusters: list[Cluster],
    report: CycleReport,
    everyone: PoolArrays,
    reached: _Reached | None = None,
) -> None:
    """Open an identity per cluster of `pool`; then match to them the faces of `everyone` (the
    whole pool, poor faces included, as read before) within their reach (`reached`: what the
    faces new to `everyone` reach, when known)."""
    index = parts.index.get()
    joined: set[int] = set()
    for cluster in clusters:
        members = {pool[row].id: distance for row, distance in zip(cluster.rows, cluster.distances, strict=True)}
        number = parts.store.create_identity(members)
        joined.update(parts.store.face_ids_of(number))
        checkpoint("identity-created")
        parts.index.add(list(members), np.stack([pool[row].embedding for row in cluster.rows]), [number] * len(members))
        report.identities_created.append(number)
        log.info("opened faceset %03d with %d faces", number, len(members))
    # Faces left in the pool may belong to the identities just opened: those within reach of one of
    # their faces, not the whole pool again (40,000 queries for 20 new facesets cost 11 CPU-s). What
    # lies within reach of a face new to the pool lies within reach of some new face, which the
    # cycle found on its way (_scope): only its faces are compared with those. Older faces of the
    # new facesets are compared with the whole pool.
    opened = [pool[row] for cluster in clusters for row in cluster.rows]
    vectors = np.stack([face.embedding for face in opened])
    fresh = np.zeros(len(opened), bool) if reached is None else np.isin([face.id for face in opened], reached.new)
    reach = _reach(parts.settings)
    exact = _pool_rows(parts, everyone)
    near = near_any(everyone.coarse, exact, vectors[~fresh], reach)
    if fresh.any() and reached is not None:
        candidates = np.flatnonzero(np.isin(everyone.ids, reached.near))
        near[candidates] |= near_any(
            everyone.coarse.take(candidates), lambda rows: exact(candidates[rows]), vectors[fresh], reach
        )
    near &= ~np.isin(everyone.ids, np.fromiter(joined, np.int64))
    remaining = parts.store.faces_by_ids(everyone.ids[near].tolist())
    matches = _match(parts, remaining, index)
    if matches:
        parts.store.record_matches(matches, [])
        _add_to_index(parts, remaining, matches)
        report.faces_assigned += len(matches)


def _match(parts: IdentifyParts, faces: list[StoredFace], index: FaceIndex) -> dict[int, tuple[int, float]]:
    """Face id -> (identity, distance) for the faces that join an identity: the closest one with a
    face within match_distance; failing that (with mean_join), the one whose faces are within
    cluster_distance on average, among the identities of its nearest faces. Never two faces of one
    photo into one identity."""
    if not faces or len(index) == 0:
        return {}
    settings = parts.settings
    embeddings = np.stack([face.embedding for face in faces])
    neighbour_ids, neighbour_distances = index.query(embeddings, NEIGHBOURS)
    blobs = [face.sha256 for face in faces]
    taken = {blob: parts.store.identities_of_blob(blob) for blob in set(blobs)}
    # The user's corrections: a locked identity takes no face by itself, a rejected face never
    # goes back to the identity it was rejected from.
    locked = parts.store.locked_identities()
    rejected = parts.store.rejections_of([face.id for face in faces])
    banned = {row: locked | rejected.get(face.id, set()) for row, face in enumerate(faces)}
    matches = assign(
        blobs, neighbour_ids, neighbour_distances, index.identity_of, settings.match_distance, taken, banned
    )
    if settings.mean_join:
        # the identities each photo's faces are in, those matched just now included (one face each)
        used = {blob: set(identities) for blob, identities in taken.items()}
        for other, (identity, _) in matches.items():
            used[blobs[other]].add(identity)
        for row, blob in enumerate(blobs):
            if row in matches or not may_seed(faces[row], settings):  # a poor face joins only when close
                continue
            near = {index.identity_of[int(face)] for face in neighbour_ids[row] if int(face) in index.identity_of}
            means = index.mean_distances(embeddings[row], sorted(near - used[blob] - banned[row]))
            if means:
                identity, distance = min(means.items(), key=lambda item: (item[1], item[0]))
                if distance <= settings.cluster_distance:
                    matches[row] = (identity, distance)
                    used[blob].add(identity)
    return {faces[row].id: match for row, match in matches.items()}


def merge_identities(parts: IdentifyParts, report: CycleReport) -> None:
    """Identities found to be one person (centres within merge_distance, no photo with a face of
    each) become one: the lower number keeps them, the higher is retired and never given again.
    Never a locked one, nor two the user keeps apart (a split, a rejected face). Not looked for again
    while nothing in the store changed since the last look."""
    if unchanged(parts.store, MERGE, parts.settings.merge_distance):
        return
    _merge(parts, report)
    finished(parts.store, MERGE, parts.settings.merge_distance)


def _merge(parts: IdentifyParts, report: CycleReport) -> None:
    index = parts.index.get()
    look = parts.merges
    locked = parts.store.locked_identities()
    kept_apart = parts.store.kept_apart()
    key = (parts.settings.merge_distance, frozenset(locked), frozenset(kept_apart))
    seen = (index.serial, *key)
    same = look.seen == seen
    moved, change = index.moved_since(look.change if same else 0)
    look.seen, again, look.again = None, look.again, set()  # (a look that fails half way is not remembered)

    def unlocked_centres() -> dict[int, NDArray[np.float32]]:
        return {number: centre for number, centre in index.centres().items() if number not in locked}

    centres = unlocked_centres()
    if same:
        among: set[int] | None = moved | again
    else:
        among = look.file.moved(key, centres) if look.file is not None else None
    candidates = merge_candidates(centres, parts.settings.merge_distance, among)
    refused: set[int] = set()
    merges = len(report.identities_merged)
    if candidates:
        # Which identities share a photo is asked of the candidates only: over every face, 0.46 CPU-s
        # at 500,000 faces, in each cycle that changed the store.
        apart = parts.store.photos_shared({number for pair in candidates for number in pair}) | kept_apart
        refused = _make_merges(parts.store, index, candidates, apart, report)
    if look.file is not None:
        if len(report.identities_merged) > merges:  # the centres as the merges left them
            centres = unlocked_centres()
        look.file.looked(key, centres, among, refused)
    look.seen, look.again, look.change = seen, refused, change


def _make_merges(
    store: Store, index: FaceIndex, candidates: list[tuple[int, int]], apart: set[frozenset[int]], report: CycleReport
) -> set[int]:
    """Merge the pairs choose_merges picks; returned: the identities of the pairs the store refused
    (the user's corrections keep them apart: a face placed by hand in the one to retire), for the
    next look to compare again (whatever refused a merge may be lifted with no centre moving).
    A refused pair frees its two identities for their other candidates, in the same look: otherwise
    a pair refused for good, the closest of either identity, would hold both out of every merge,
    cycle after cycle. (A merge moves the kept identity's centre: the next look sees it anyway.)"""
    merged: set[int] = set()
    refused: set[frozenset[int]] = set()
    chosen = choose_merges(candidates, apart)
    while chosen:
        for retired, kept in chosen:
            if not store.merge_identities(retired, kept):
                refused.add(frozenset((retired, kept)))
                continue
            index.relabel(retired, kept)
            merged.update((retired, kept))
            report.identities_merged.append((retired, kept))
            log.info("faceset %03d is the same person as %03d: merged into it, %03d retired", retired, kept, retired)
        # Another round for the pairs a refusal freed: a merged identity's other pairs wait for its
        # new centre (the next look), a refused pair is set apart, so each round's pairs are new and
        # a round without a refusal is the last.
        chosen = choose_merges([pair for pair in candidates if not merged.intersection(pair)], apart | refused)
    return {number for pair in refused for number in pair}


def _add_to_index(parts: IdentifyParts, faces: list[StoredFace], matches: dict[int, tuple[int, float]]) -> None:
    joined = [face for face in faces if face.id in matches]
    if joined:
        parts.index.add(
            [face.id for face in joined],
            np.stack([face.embedding for face in joined]),
            [matches[face.id][0] for face in joined],
        )
