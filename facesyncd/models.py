"""Small frozen records passed between modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # numpy stays out of `status`, which never touches an embedding
    import numpy as np
    from numpy.typing import NDArray

Embedding: TypeAlias = "NDArray[np.float32]"


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


@dataclass(frozen=True)
class RemoteFace:
    """A face Immich's own ML found, in the pixel space of image_width x image_height (the preview)."""

    x1: int
    y1: int
    x2: int
    y2: int
    image_width: int
    image_height: int


@dataclass(frozen=True)
class DetectedFace:
    """A face found and embedded by facesyncd, in the pixel space of the decoded original."""

    bbox: tuple[float, float, float, float]
    det_score: float
    landmarks: tuple[tuple[float, float], ...]
    embedding: Embedding = field(repr=False)
    crop_jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class StoredFace:
    id: int
    sha256: str
    embedding: Embedding = field(repr=False)
    identity: int | None = None


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
    removed_assets: int = 0
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
