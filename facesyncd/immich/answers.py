"""Immich's answers read into facesyncd's records: an asset, a face box, a time.

Anything facesyncd cannot use safely (an id that is not a UUID, a face box that is not numbers) is
refused here, before it reaches the store.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any

from ..errors import ImmichError
from ..models import RemoteAsset, RemoteFace

log = logging.getLogger(__name__)

ASSET_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def checksum_kind(item: dict[str, Any], checksum: str) -> str | None:
    """'sha1' when the asset's checksum is the SHA-1 of its file (uploads), 'path' when it is the
    SHA-1 of "path:" and the file's path (external libraries: Immich never reads those files to
    hash them), None when it cannot be told."""
    try:
        digest = base64.b64decode(checksum, validate=True)
    except ValueError:
        return None
    if len(digest) != 20:
        return None
    original_path = item.get("originalPath")
    if isinstance(original_path, str) and hashlib.sha1(f"path:{original_path}".encode()).digest() == digest:
        return "path"
    return "sha1" if item.get("libraryId") is None else None


def parse_asset(item: dict[str, Any]) -> RemoteAsset:
    """AssetResponseDto -> RemoteAsset; raises ImmichError for an item facesyncd cannot use safely."""
    asset_id = item.get("id")
    if not isinstance(asset_id, str) or not ASSET_ID_RE.match(asset_id):
        raise ImmichError(f"asset with invalid id {str(asset_id)[:60]!r}")

    def dimension(key: str) -> int | None:
        value = item.get(key)
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    checksum = str(item.get("checksum") or "")
    visibility = item.get("visibility")
    if not isinstance(visibility, str):  # before visibility (Immich 1.x): isArchived
        visibility = "archive" if item.get("isArchived") else "timeline"
    return RemoteAsset(
        id=asset_id.lower(),
        type=str(item.get("type") or "OTHER"),
        original_file_name=str(item.get("originalFileName") or "")[:255],
        checksum=checksum,
        updated_at=str(item.get("updatedAt") or ""),
        file_created_at=str(item.get("fileCreatedAt") or ""),
        is_trashed=bool(item.get("isTrashed")),
        width=dimension("width"),
        height=dimension("height"),
        mime_type=item.get("originalMimeType"),
        checksum_kind=checksum_kind(item, checksum),
        owner_id=str(item.get("ownerId") or "").lower(),
        visibility=visibility,
        people=people_of(item),
    )


def people_of(item: dict[str, Any]) -> tuple[str, ...] | None:
    """The names of the named people of a listed asset (withPeople); None when the answer has no
    `people` (not asked for). A name is one line of at most 200 characters, as facesyncd's own."""
    people = item.get("people")
    if not isinstance(people, list):
        return None
    names = {
        " ".join(person["name"].split())
        for person in people
        if isinstance(person, dict) and isinstance(person.get("name"), str) and person["name"].strip()
    }
    return tuple(sorted(name for name in names if len(name) <= 200))


def parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_faces(data: Any, source: str, asset_id: str) -> list[RemoteFace]:
    """GET /faces's answer -> the face boxes (in the preview's pixel space); a malformed one is skipped."""
    faces = []
    for item in data if isinstance(data, list) else []:
        try:
            faces.append(
                RemoteFace(
                    x1=int(item["boundingBoxX1"]),
                    y1=int(item["boundingBoxY1"]),
                    x2=int(item["boundingBoxX2"]),
                    y2=int(item["boundingBoxY2"]),
                    image_width=int(item["imageWidth"]),
                    image_height=int(item["imageHeight"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.warning("%s: ignoring malformed face of asset %s", source, asset_id)
    return faces
