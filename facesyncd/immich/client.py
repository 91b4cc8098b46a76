"""The endpoints facesyncd uses, for one Immich user (one API key): who the key is, the listing, one
asset, its faces, its original and its preview. The transport (transport.py) owns retries and
errors; the listing's paging is listing.py's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ..config import ImmichSettings, SyncSettings
from ..crashpoints import checkpoint
from ..errors import ImmichError, PermissionMissing
from ..models import RemoteAsset, RemoteFace
from .answers import parse_asset, parse_faces
from .listing import Listing
from .transport import Transport

# A count larger than this is not a photo library's (Immich's own limit for an integer is 2^53).
MAX_COUNT = 1_000_000_000


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    size: int
    sha1: str = ""  # base64, as Immich writes an asset's checksum


@dataclass(frozen=True)
class Account:
    """Who an API key is, and the server's clock (its Date header) when it said so."""

    user_id: str
    server_time: datetime | None


class ImmichClient:
    """One Immich user (one API key)."""

    def __init__(
        self,
        settings: ImmichSettings,
        sync: SyncSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
    ) -> None:
        self.transport = Transport(settings, sync, sleep=sleep, stop=stop)
        self.name = settings.name
        self.url = settings.url

    @property
    def requests(self) -> int:
        """Requests sent so far (retries included)."""
        return self.transport.requests

    def close(self) -> None:
        """Close the connections; from another thread, this breaks off requests in flight at once."""
        self.transport.close()

    def __enter__(self) -> ImmichClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def whoami(self) -> Account:
        """GET /users/me: proves the server is there and the key works; whose key it is, and the
        server's clock as it answered."""
        me = self.transport.json("GET", "/users/me", what="checking the API key")
        if not isinstance(me, dict):
            raise ImmichError(f"{self.name}: unexpected answer to /users/me")
        return Account(str(me.get("id") or "").lower(), self.transport.server_time)

    def asset(self, asset_id: str) -> RemoteAsset:
        """GET /assets/{id}: a second opinion before an asset is taken as deleted. AssetGone if the
        server says so again (400: not found or no access)."""
        data = self.transport.per_asset(
            lambda: self.transport.json(
                "GET", f"/assets/{asset_id}", gone_statuses=(400, 404), what=f"asset {asset_id}", attempts=2
            ),
            f"asset {asset_id}",
        )
        if not isinstance(data, dict):
            raise ImmichError(f"{self.name}: unexpected answer to /assets/{asset_id}")
        return parse_asset(data)

    def list_changed(
        self,
        updated_after: str | None,
        page_size: int,
        *,
        known: int = 0,
        cursor_first: bool = False,
        with_people: bool = False,
    ) -> Listing:
        """The assets with updatedAt >= updated_after (every asset when None), trashed ones included:
        iterate `pages()`, then read what the listing learned from it (see Listing). known: how many
        assets the key's listing held last time; a listing far past it asks Immich to count what the
        listing lists (partners shown in the timeline included) and stops past twice that.
        cursor_first, with_people: see Listing."""
        return Listing(
            self.transport,
            updated_after,
            page_size,
            known=known,
            count=lambda: self.count_assets(with_partners=True),
            cursor_first=cursor_first,
            with_people=with_people,
        )

    def count_assets(self, *, with_partners: bool) -> int | None:
        """How many assets Immich holds outside its trash, by a count that costs one request: the key
        user's own (GET /assets/statistics, which leaves hidden and locked ones out) or, with_partners,
        all that a listing lists, partners shown in the timeline included (POST /search/statistics).
        None when the key lacks the asset.statistics permission, or the server refuses the request
        (a count is an extra: nothing else depends on it)."""
        try:
            if with_partners:
                data = self.transport.json("POST", "/search/statistics", json_body={}, what="counting assets")
            else:
                data = self.transport.json("GET", "/assets/statistics", what="counting assets")
        except (PermissionMissing, ImmichError):
            return None
        total = data.get("total") if isinstance(data, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or not 0 <= total <= MAX_COUNT:
            raise ImmichError(f"{self.name}: unexpected answer to the asset count")
        return total

    def partners(self) -> frozenset[str] | None:
        """The users who share their library with this key's user, shown in its timeline or not
        (GET /partners?direction=shared-with); None when the key lacks the partner.read permission or
        the server refuses the request."""
        try:
            data = self.transport.json("GET", "/partners", params={"direction": "shared-with"}, what="listing partners")
        except (PermissionMissing, ImmichError):
            return None
        if not isinstance(data, list) or not all(isinstance(p, dict) and isinstance(p.get("id"), str) for p in data):
            raise ImmichError(f"{self.name}: unexpected answer to /partners")
        return frozenset(str(partner["id"]).lower() for partner in data)

    def faces(self, asset_id: str) -> list[RemoteFace]:
        data = self.transport.quick_json("/faces", {"id": asset_id})
        if data is None:
            data = self.transport.per_asset(
                lambda: self.transport.json(
                    "GET", "/faces", params={"id": asset_id}, gone_statuses=(400, 404), what=f"faces of {asset_id}"
                ),
                f"faces of {asset_id}",
            )
        return parse_faces(data, self.name, asset_id)

    def download_original(self, asset_id: str, directory: Path, max_bytes: int) -> Download:
        what = f"original of {asset_id}"
        return self.transport.per_asset(
            lambda: self._download(f"/assets/{asset_id}/original", None, directory, max_bytes, what), what
        )

    def download_preview(self, asset_id: str, directory: Path, max_bytes: int) -> Download:
        # size=preview is a JPEG/WebP Immich renders for every image type, RAW included. A missing
        # asset is 400 here (the access check); 404 means the asset exists but has no preview file.
        what = f"preview of {asset_id}"
        return self.transport.per_asset(
            lambda: self._download(
                f"/assets/{asset_id}/thumbnail", {"size": "preview"}, directory, max_bytes, what, gone_statuses=(400,)
            ),
            what,
        )

    def _download(
        self,
        path: str,
        params: dict[str, Any] | None,
        directory: Path,
        max_bytes: int,
        what: str,
        gone_statuses: tuple[int, ...] = (400, 404),
    ) -> Download:
        """Stream to a temporary file in `directory`, hashing (SHA-256, and SHA-1 as Immich's checksum)
        as the bytes arrive."""
        directory.mkdir(parents=True, exist_ok=True)

        def consume(response: httpx.Response, body: Iterator[bytes]) -> Download:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImmichError(f"{what}: {int(declared)} bytes is over the {max_bytes}-byte limit")
            digest = hashlib.sha256()
            sha1 = hashlib.sha1()
            size = 0
            handle, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=directory)
            try:
                with os.fdopen(handle, "wb") as output:
                    for chunk in body:
                        size += len(chunk)
                        if size > max_bytes:
                            raise ImmichError(f"{what}: over the {max_bytes}-byte limit")
                        digest.update(chunk)
                        sha1.update(chunk)
                        output.write(chunk)
                        checkpoint("download-chunk")
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
            return Download(Path(name), digest.hexdigest(), size, base64.b64encode(sha1.digest()).decode())

        return self.transport.send("GET", path, consume, params=params, gone_statuses=gone_statuses, what=what)
