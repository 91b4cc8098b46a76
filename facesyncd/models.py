"""Small records passed between modules, and the names of states that the database stores."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # numpy stays out of `status`, which never touches an embedding
    import numpy as np
    from numpy.typing import NDArray

    from .coarse import CoarseRows

Embedding: TypeAlias = "NDArray[np.float32]"
Box: TypeAlias = tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels


class AssetState(StrEnum):
    """Where an asset stands (stored in assets.state)."""

    PENDING = "pending"  # work to do
    DONE = "done"  # embedded (its blob is known)
    SKIPPED = "skipped"  # nothing to do; the reason says why
    FAILED = "failed"  # will be tried again (attempts, next_attempt_at)
    PARKED = "parked"  # failed too often: waits for `facesyncd retry`
    TRASHED = "trashed"  # in Immich's trash: its faces left the facesets
    WITHHELD = "withheld"  # a partner's the key no longer sees (partner hidden): its faces left too
    DELETED = "deleted"  # gone from Immich

    @classmethod
    def removed(cls) -> tuple[AssetState, ...]:
        return (cls.TRASHED, cls.WITHHELD, cls.DELETED)

    @classmethod
    def kept(cls) -> tuple[AssetState, ...]:
        """Out of the facesets, but keeping their bytes and faces: listed again with the same
        checksum, they are back as they were, without a download."""
        return (cls.TRASHED, cls.WITHHELD)


class DecodeSource(StrEnum):
    """What a blob's faces were found in (stored in blobs.decoded_from)."""

    ORIGINAL = "original"
    PREVIEW = "preview"  # the original did not decode (RAW, say): Immich's preview instead
    IMPORT = "import"  # a file of an imported faceset tree


class JobKind(StrEnum):
    """The daemon's jobs, and what a cycle record says it was."""

    POLL = "poll"
    SWEEP = "sweep"  # a poll that also counts Immich's assets (the census)
    CLUSTER = "cluster"
    RECONCILE = "reconcile"
    SYNC = "sync"
    IMPORT = "import"
    REBUILD_INDEX = "rebuild-index"
    RETRY = "retry"
    CORRECT = "correct"  # a correction (`faceset merge`, the review page, `undo`) brought to the folders

    @classmethod
    def syncs(cls) -> tuple[JobKind, ...]:
        """The kinds that talk to Immich: what `status` calls the last sync."""
        return (cls.SYNC, cls.POLL, cls.SWEEP, cls.RECONCILE)


@dataclass(frozen=True)
class RemoteAsset:
    """One asset as listed by Immich's /search/metadata (only the fields facesyncd uses)."""

    id: str
    type: str
    original_file_name: str
    checksum: str
    updated_at: str
    file_created_at: str
    is_trashed: bool
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None
    checksum_kind: str | None = None  # 'sha1': SHA-1 of the file; 'path': of its path (external library)
    owner_id: str = ""  # the Immich user whose asset it is (a partner's, when shown in the timeline)
    visibility: str = "timeline"  # timeline, archive (both photos), hidden, locked (never processed)
    people: tuple[str, ...] | None = None  # names of the people Immich shows in it (None: not asked)


# Listed assets set aside, never downloaded: hidden ones (Immich hides the video half of a live photo;
# a photo hidden from the timeline is the user's choice too) and the locked folder (which a key cannot
# even list on Immich 3.1; a server that lists it anyway is not trusted with it).
HIDDEN_VIDEO = "hidden in Immich (the video half of a live photo): not a photo"
HIDDEN_PHOTO = "hidden in Immich (not shown in its timeline): set aside until it is shown again"
LOCKED = "in Immich's locked folder: never processed"
# Reasons set-aside rows carry, those of earlier versions included: such a row listed again as a
# plain photo is looked at anew.
SET_ASIDE_REASONS = frozenset(
    {HIDDEN_VIDEO, HIDDEN_PHOTO, LOCKED, "hidden in Immich (part of a live photo), not a photo"}
)


def set_aside(asset: RemoteAsset) -> str | None:
    """Why a listed asset is set aside (never downloaded), or None."""
    if asset.visibility == "locked":
        return LOCKED
    if asset.visibility == "hidden":
        return HIDDEN_PHOTO if asset.type == "IMAGE" else HIDDEN_VIDEO
    return None


@dataclass(frozen=True)
class RemoteFace:
    """A face Immich's own ML found, in the pixel space of image_width x image_height (the preview)."""

    x1: int
    y1: int
    x2: int
    y2: int
    image_width: int
    image_height: int


QUALITY_WEIGHTS = {"det_score": 0.30, "size": 0.20, "blur": 0.20, "frontality": 0.15, "symmetry": 0.15}


@dataclass(frozen=True)
class Quality:
    """How good a face is for a face-swap set: five parts in 0..1 (see quality.py) and their
    weighted composite (the older pipeline's weights)."""

    det_score: float
    size: float
    blur: float
    frontality: float | None  # None: not measured (an engine that gives no landmarks)
    symmetry: float | None

    @classmethod
    def from_parts(cls, parts: Mapping[str, Any]) -> Quality:
        """The parts as parts() wrote them (frontality and symmetry may be null). Raises KeyError,
        TypeError or ValueError for anything else."""

        def optional(part: str) -> float | None:
            value = parts[part]
            return None if value is None else float(value)

        return cls(
            det_score=float(parts["det_score"]),
            size=float(parts["size"]),
            blur=float(parts["blur"]),
            frontality=optional("frontality"),
            symmetry=optional("symmetry"),
        )

    @property
    def composite(self) -> float:
        """The weighted mean of the measured parts (the weights of unmeasured ones left out)."""
        # (one loop: an export computes this for every face of each faceset it writes)
        total = weighted = 0.0
        for part, weight in QUALITY_WEIGHTS.items():
            value = getattr(self, part)
            if value is not None:
                total += weight
                weighted += weight * float(value)
        return weighted / total

    def parts(self) -> dict[str, float | None]:
        return {
            part: None if (value := getattr(self, part)) is None else round(float(value), 4) for part in QUALITY_WEIGHTS
        }

    def as_dict(self) -> dict[str, float | None]:
        return {"composite": round(self.composite, 4), **self.parts()}


@dataclass(frozen=True)
class DetectedFace:
    """A face found and embedded by facesyncd, in the pixel space of the decoded original."""

    bbox: Box
    det_score: float
    landmarks: tuple[tuple[float, float], ...]
    embedding: Embedding = field(repr=False)


@dataclass(frozen=True)
class StoredFace:
    id: int
    sha256: str
    embedding: Embedding = field(repr=False)
    identity: int | None = None
    quality: Quality | None = None
    cut: bool = False  # the box touches the photo's edge (a face half out of the frame)


@dataclass(frozen=True)
class PoolArrays:
    """Every face of the pool, a row each by face id, as arrays: what clustering reads of all of
    them (which faces it clusters, and which ones a new faceset reaches). The few it goes on with
    are read whole (Store.faces_by_ids): a StoredFace each for 200,000 pooled faces cost 2.8 CPU-s
    per cycle."""

    ids: NDArray[np.int64]
    coarse: CoarseRows  # the embeddings, a row per face, rounded to 8 bits (the float ones: Store.embeddings_of)
    blur: NDArray[np.float64]  # the quality parts may_seed asks for; NaN: not measured
    frontality: NDArray[np.float64]
    cut: NDArray[np.bool_]
    group: NDArray[np.int64]  # the group the last clustering put it in (migrations/0016); -1: none


@dataclass(frozen=True)
class GroupSizes:
    """How many faces each group of the pool had when the last clustering made it (migrations/0016),
    as two arrays in no particular order: what a cycle compares with each group's faces now (see
    identities.pool_scope), 200,000 groups at 500,000 faces, without a dict to read in each cycle."""

    groups: NDArray[np.int64]  # each group's id: its lowest face id when made
    counts: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.groups)

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self.groups.tolist(), self.counts.tolist(), strict=True))


@dataclass
class CycleReport:
    """What one sync cycle did; rendered by the CLI and stored as JSON in the cycles table."""

    listed: int = 0
    requests: int = 0
    new_or_changed: int = 0
    downloaded: int = 0
    deduplicated: int = 0
    skipped: int = 0
    failed: int = 0
    embedded_assets: int = 0
    faces_found: int = 0
    faces_assigned: int = 0
    identities_created: list[int] = field(default_factory=list)
    identities_merged: list[tuple[int, int]] = field(default_factory=list)  # (retired, kept)
    removed_assets: int = 0
    restored_assets: int = 0  # back from Immich's trash: their faces came back without a download
    names_adopted: int = 0  # facesets named after Immich's people
    partner_assets: int = 0  # listed assets of partners, passed over (include_partners = false)
    facesets_written: int = 0
    source_errors: dict[str, str] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    listing_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def faces_per_second(self) -> float:
        return round(self.faces_found / self.seconds, 2) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "faces_per_second": self.faces_per_second}

    def line(self) -> str:
        """The cycle in one line: what `sync` prints and the daemon logs."""
        created = ", ".join(f"{number:03d}" for number in self.identities_created) or "none"
        return (
            f"listed {self.listed}, downloaded {self.downloaded} ({self.deduplicated} duplicates), "
            f"embedded {self.embedded_assets} assets with {self.faces_found} faces ({self.faces_per_second:g}/s), "
            f"{self.faces_assigned} faces assigned, new facesets: {created}, "
            f"{self.skipped} skipped, {self.failed} failed, {self.removed_assets} removed, "
            f"{self.facesets_written} folders written, {self.requests} requests, {self.seconds:.1f}s"
        )

    def digest(self, kind: str, at: str) -> dict[str, Any]:
        """The cycle as `status` shows a running daemon's last one (daemon.json)."""
        return {
            "kind": kind,
            "at": at,
            "listed": self.listed,
            "downloaded": self.downloaded,
            "faces": self.faces_found,
            "assigned": self.faces_assigned,
            "new_facesets": self.identities_created,
            "failed": self.failed,
            "removed": self.removed_assets,
            "requests": self.requests,
            "seconds": self.seconds,
            "faces_per_second": self.faces_per_second,
        }


@dataclass(frozen=True)
class AssetRow:
    """An asset as the store holds it."""

    source: str
    asset_id: str
    state: AssetState
    checksum: str | None
    sha256: str | None
    attempts: int
    type: str | None
    original_file_name: str | None
    width: int | None
    height: int | None
    checksum_kind: str | None = None
    reason: str | None = None  # why it is skipped, failed or parked


@dataclass
class Dropped:
    """What removing faces from the store left to tidy outside it: crop files no longer used, and
    the faces that were in identities (so in the face index)."""

    crops: list[str] = field(default_factory=list)
    indexed_faces: list[int] = field(default_factory=list)

    def extend(self, other: Dropped) -> None:
        self.crops.extend(other.crops)
        self.indexed_faces.extend(other.indexed_faces)


@dataclass
class ListedPage:
    """What recording one listed page found."""

    needing_work: int = 0
    trashed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # back from the trash with the faces they kept
    dropped: Dropped = field(default_factory=Dropped)


@dataclass(frozen=True)
class ExportFace:
    """A face as its faceset folder shows it."""

    face_id: int
    sha256: str
    source: str
    asset_id: str | None
    crop: str
    bbox: Box
    det_score: float
    distance: float | None
    quality: Quality | None = None
    subset: str | None = None  # a labelled sub-set of the identity (its own folder)
    owner: str | None = None  # the Immich user whose photo it is (a partner's, with include_partners)
    taken: str | None = None  # when the photo was taken, as Immich says (fileCreatedAt)
    file_name: str | None = None  # the photo's original file name in Immich


@dataclass(frozen=True)
class ExportMarks:
    """What changed since the folders were last written (migrations/0020), up to mark `upto`: the
    faces that changed in each faceset (number -> face ids; a face that moved is marked in both), and
    the facesets whose folder is compared whole (a name, hidden, merged or forgotten; marks from
    before faces were marked)."""

    upto: int
    faces: Mapping[int, frozenset[int]]
    whole: frozenset[int]

    @property
    def numbers(self) -> frozenset[int]:
        return frozenset(self.faces) | self.whole

    def partial(self, among: Collection[int]) -> dict[int, frozenset[int]]:
        """The facesets of `among` whose folders may follow their marked faces alone."""
        return {number: ids for number, ids in self.faces.items() if number in among and number not in self.whole}


@dataclass(frozen=True)
class ImportProvenance:
    """Where an imported crop was cut from, as the imported tree records it: an Immich asset id, or
    the photo's file name (the older pipeline's `source` path), and the box in that photo."""

    source: str | None
    asset_id: str | None
    bbox: Box
    source_name: str | None = None


@dataclass(frozen=True)
class ImportClaim:
    """An imported face that stands for a face of a photo in Immich until that photo arrives: the
    photo's face then takes its identity and sub-set, or the user's decision to hold it aside."""

    path: str
    identity: int | None
    bbox: Box
    face_id: int
    subset: str | None = None
    held: str | None = None
    by_name: bool = False  # claimed by the photo's file name only, not by its asset id


@dataclass(frozen=True)
class UnmeasuredFace:
    """A face stored before its quality was measured: what measuring it from its crop needs."""

    face_id: int
    crop: str
    bbox: Box
    det_score: float
    landmarks: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class FacesetSummary:
    """One identity as `faceset list` and the review page's grid show it."""

    number: int
    name: str | None
    faces: int
    locked: bool
    merged_into: int | None  # retired: its faces went there
    forgotten: bool
    last_change: str | None  # when a face last joined or left, or the identity changed
    best_face: int | None  # the face to show for it (highest quality)
    hidden: bool = False  # kept and still taking faces, never exported, off the grid

    @property
    def retired(self) -> bool:
        return self.merged_into is not None or self.forgotten

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "faces": self.faces,
            "locked": self.locked,
            "merged_into": self.merged_into,
            "forgotten": self.forgotten,
            "last_change": self.last_change,
            "best_face": self.best_face,
            "hidden": self.hidden,
        }


@dataclass(frozen=True)
class FaceDetail:
    """One face as `faceset show` and the review page show it."""

    face_id: int
    identity: int | None
    sha256: str
    asset_id: str | None  # the Immich asset it came from; None for an imported crop
    source: str | None
    crop: str
    bbox: Box
    det_score: float
    distance: float | None
    quality: float | None
    placed: bool  # put there by hand
    held: str | None
    taken: str | None = None  # when its photo was taken (Immich's fileCreatedAt)
    file_name: str | None = None  # its photo's original file name
    photo_size: tuple[int, int] | None = None  # its photo's width and height as decoded (the box's space)

    def as_dict(self) -> dict[str, Any]:
        return {
            "face_id": self.face_id,
            "identity": self.identity,
            "asset_id": self.asset_id,
            "source": self.source,
            "bbox": [round(v, 1) for v in self.bbox],
            "det_score": round(self.det_score, 4),
            "distance": None if self.distance is None else round(self.distance, 4),
            "quality": None if self.quality is None else round(self.quality, 4),
            "placed": self.placed,
            "taken": self.taken,
            "file_name": self.file_name,
        }


@dataclass(frozen=True)
class Correction:
    """One entry of `history`: a correction the user made, and whether it was undone."""

    id: int
    at: str
    kind: str
    summary: str
    undo: dict[str, Any]
    undone_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "kind": self.kind, "summary": self.summary, "undone_at": self.undone_at}
