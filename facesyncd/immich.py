"""A small Immich API client over httpx: listing, faces, downloads.

Transient faults (connection errors, timeouts, truncated bodies, 5xx, 429) are retried with exponential
backoff and jitter, a bounded number of times; then ImmichUnreachable. 401/403 become ImmichAuthError.
A missing asset (400 on JSON endpoints, 404 on /original) becomes AssetGone. The API key travels only
in the x-api-key header and never appears in an error message or a log line.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .config import ImmichSettings, SyncSettings
from .crashpoints import checkpoint
from .errors import AssetGone, ImmichAuthError, ImmichError, ImmichUnreachable, Interrupted
from .models import RemoteAsset, RemoteFace

log = logging.getLogger(__name__)

T = TypeVar("T")
ASSET_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CHUNK = 1 << 20


class _Retry(Exception):
    """A response worth retrying (5xx, 429); carries the server's Retry-After if any."""

    def __init__(self, description: str, retry_after: float | None) -> None:
        super().__init__(description)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    size: int


def error_message(response: httpx.Response) -> str:
    """The server's own words: 3.x {"message"}, 2.x {message, error, statusCode, correlationId}."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().replace("\n", " ")
        return text[:200] or str(response.reason_phrase)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or ""
        if isinstance(message, list):
            message = "; ".join(str(part) for part in message)
        return str(message)[:300] or str(response.reason_phrase)
    return str(response.reason_phrase)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


def parse_asset(item: dict[str, Any]) -> RemoteAsset:
    """AssetResponseDto -> RemoteAsset; raises ImmichError for an item facesyncd cannot use safely."""
    asset_id = item.get("id")
    if not isinstance(asset_id, str) or not ASSET_ID_RE.match(asset_id):
        raise ImmichError(f"asset with invalid id {str(asset_id)[:60]!r}")

    def dimension(key: str) -> int | None:
        value = item.get(key)
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    return RemoteAsset(
        id=asset_id.lower(),
        type=str(item.get("type") or "OTHER"),
        original_file_name=str(item.get("originalFileName") or "")[:255],
        checksum=str(item.get("checksum") or ""),
        updated_at=str(item.get("updatedAt") or ""),
        file_created_at=str(item.get("fileCreatedAt") or ""),
        is_trashed=bool(item.get("isTrashed")),
        width=dimension("width"),
        height=dimension("height"),
        mime_type=item.get("originalMimeType"),
    )


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set_cookie_header(self, request: httpx.Request) -> None:
        pass


class _CookielessClient(httpx.Client):
    """Immich's API authenticates by the x-api-key header and needs no cookie jar; httpx's costs
    about an eighth of the client's CPU per small request (measured on the prefilter's requests)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass


_NO_COOKIES = _NoCookies()

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class _QuickGet:
    """Small JSON GETs over plain-HTTP keep-alive connections (http.client, one per thread).

    The prefilter asks for one asset's faces per request (Immich 3.x refuses its bulk sync stream to
    API keys, and its listing carries no face boxes), and httpx costs 2.5x the CPU of http.client
    per such request (benchmarks/bench_poll.py: 2,200 against 4,600 assets/s). Anything but a
    clean 200 with JSON gives None: the caller then repeats the request through httpx, which owns
    retries, errors and their messages. Only for http:// servers with no proxy configured; TLS and
    proxies stay with httpx."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/") + "/api"
        self._headers = headers
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    @staticmethod
    def usable(url: str) -> bool:
        return urllib.parse.urlsplit(url).scheme == "http" and not any(os.environ.get(v) for v in PROXY_VARIABLES)

    def get(self, path: str, query: dict[str, str]) -> Any | None:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        try:
            connection.request("GET", f"{self._prefix}{path}?{urllib.parse.urlencode(query)}", headers=self._headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            connection.close()  # the next request opens a new one
            return None

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()


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
        self.name = settings.name
        self.url = settings.url
        self._sync = sync
        self._stop = stop
        self._sleep = sleep if stop is None else self._interruptible_sleep
        if not settings.verify_tls:
            log.warning("%s: TLS certificate verification is OFF for %s (verify_tls = false)", self.name, self.url)
        headers = {"x-api-key": settings.api_key.reveal(), "accept": "application/json"}
        self.http = _CookielessClient(
            base_url=f"{settings.url}/api",
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_seconds, connect=min(10.0, settings.timeout_seconds)),
            verify=settings.verify_tls,
            follow_redirects=True,
        )
        self._quick = (
            _QuickGet(settings.url, headers, settings.timeout_seconds) if _QuickGet.usable(settings.url) else None
        )
        self.requests = 0
        self.last_server_time: datetime | None = None

    def close(self) -> None:
        self.http.close()
        if self._quick is not None:
            self._quick.close()

    def _interruptible_sleep(self, seconds: float) -> None:
        assert self._stop is not None
        if self._stop.wait(seconds):
            raise Interrupted("stop requested")

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted("stop requested")

    def __enter__(self) -> ImmichClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._sync.retry_max_seconds)
        base: float = self._sync.retry_base_seconds * (2**attempt)
        return min(self._sync.retry_max_seconds, base) * random.uniform(0.5, 1.0)

    def _send(
        self,
        method: str,
        path: str,
        consume: Callable[[httpx.Response], T],
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        gone_statuses: tuple[int, ...] = (),
        what: str = "",
    ) -> T:
        """Send with retries; `consume` reads the body of a 2xx response (also retried if it breaks)."""
        what = what or f"{method} {path}"
        last_problem = ""
        attempts = self._sync.http_retries + 1
        for attempt in range(attempts):
            try:
                self.requests += 1
                with self.http.stream(method, path, json=json_body, params=params) as response:
                    self._note_server_time(response)
                    status = response.status_code
                    if status in (401, 403):
                        response.read()
                        verb = "rejected the API key" if status == 401 else "refused access"
                        raise ImmichAuthError(
                            f"{self.name}: Immich at {self.url} {verb} ({status}: {error_message(response)}); "
                            f"check the key and its permissions (asset.read, asset.view, asset.download, face.read)"
                        )
                    if status in gone_statuses:
                        response.read()
                        raise AssetGone(f"{what}: {status} {error_message(response)}")
                    if status == 429 or status >= 500:
                        response.read()
                        raise _Retry(f"{status} {error_message(response)}", _retry_after(response))
                    if status >= 400:
                        response.read()
                        raise ImmichError(f"{what}: {status} {error_message(response)}")
                    return consume(response)
            except _Retry as problem:
                last_problem = str(problem)
                delay = self._backoff(attempt, problem.retry_after)
            except httpx.TransportError as problem:
                self._check_stop()  # a read broken by a shutdown is not worth retrying
                last_problem = f"{type(problem).__name__}: {problem}" if str(problem) else type(problem).__name__
                delay = self._backoff(attempt, None)
            if attempt + 1 < attempts:
                log.debug("%s: %s failed (%s); retry %d in %.1fs", self.name, what, last_problem, attempt + 1, delay)
                self._sleep(delay)
        raise ImmichUnreachable(f"{self.name}: {what} at {self.url} failed {attempts} times: {last_problem}")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        def consume(response: httpx.Response) -> Any:
            response.read()
            try:
                return response.json()
            except ValueError as error:
                # A truncated or garbled body is a transport fault: retry it like one.
                raise httpx.DecodingError(f"invalid JSON from server: {error}") from error

        return self._send(method, path, consume, **kwargs)

    def _note_server_time(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if date:
            try:
                self.last_server_time = email.utils.parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                pass

    # -- API ------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """GET /users/me: proves the server is there and the key works."""
        me = self._json("GET", "/users/me", what="checking the API key")
        if not isinstance(me, dict):
            raise ImmichError(f"{self.name}: unexpected answer to /users/me")
        return me

    def iter_changed(self, updated_after: str | None, page_size: int) -> Iterator[list[RemoteAsset]]:
        """Yield pages of assets with updatedAt >= updated_after (trashed ones included).

        Immich orders /search/metadata by fileCreatedAt then id and pages by offset, so an asset deleted
        on the server while we page would shift every later asset back by one and one would be skipped.
        Instead of offsets we page by key: each request asks again from page 1 with takenAfter (a
        fileCreatedAt >= filter) set to the last fileCreatedAt seen, and drops the ids already seen at
        that instant. Only a run of more than `page_size` assets sharing one instant falls back to
        offsets, within that instant.
        """
        cursor: str | None = None
        seen_at_cursor: set[str] = set()
        page = 1
        while True:
            body: dict[str, Any] = {"page": page, "size": page_size, "order": "asc", "withDeleted": True}
            if updated_after:
                body["updatedAfter"] = updated_after
            if cursor:
                body["takenAfter"] = cursor
            data = self._json("POST", "/search/metadata", json_body=body, what="listing assets")
            try:
                items = data["assets"]["items"]
                next_page = data["assets"].get("nextPage")
            except (KeyError, TypeError) as error:
                raise ImmichError(f"{self.name}: unexpected answer to /search/metadata") from error
            assets: list[RemoteAsset] = []
            for item in items:
                try:
                    assets.append(parse_asset(item))
                except ImmichError as error:
                    log.warning("%s: ignoring listed asset: %s", self.name, error)
            fresh = [a for a in assets if not (a.file_created_at == cursor and a.id in seen_at_cursor)]
            if fresh:
                yield fresh
            if not next_page or not assets:
                return
            last = assets[-1].file_created_at
            if last == cursor:
                page += 1
                seen_at_cursor.update(a.id for a in assets if a.file_created_at == last)
            else:
                cursor, page = last, 1
                seen_at_cursor = {a.id for a in assets if a.file_created_at == last}

    def all_asset_ids(self, page_size: int) -> dict[str, bool]:
        """Every asset id the key can see -> whether it is in the trash: for reconciliation."""
        ids: dict[str, bool] = {}
        for page in self.iter_changed(None, page_size):
            ids.update((asset.id, asset.is_trashed) for asset in page)
        return ids

    def faces(self, asset_id: str) -> list[RemoteFace]:
        data = None
        if self._quick is not None:
            self.requests += 1
            data = self._quick.get("/faces", {"id": asset_id})
            self._check_stop()
        if data is None:
            data = self._json(
                "GET", "/faces", params={"id": asset_id}, gone_statuses=(400, 404), what=f"faces of {asset_id}"
            )
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
                log.warning("%s: ignoring malformed face of asset %s", self.name, asset_id)
        return faces

    def download_original(self, asset_id: str, directory: Path, max_bytes: int) -> Download:
        return self._download(f"/assets/{asset_id}/original", None, directory, max_bytes, f"original of {asset_id}")

    def download_preview(self, asset_id: str, directory: Path, max_bytes: int) -> Download:
        # size=preview is a JPEG/WebP Immich renders for every image type, RAW included. A missing
        # asset is 400 here (the access check); 404 means the asset exists but has no preview file.
        return self._download(
            f"/assets/{asset_id}/thumbnail",
            {"size": "preview"},
            directory,
            max_bytes,
            f"preview of {asset_id}",
            gone_statuses=(400,),
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
        """Stream to a temporary file in `directory`, hashing as the bytes arrive."""
        directory.mkdir(parents=True, exist_ok=True)

        def consume(response: httpx.Response) -> Download:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImmichError(f"{what}: {int(declared)} bytes is over the {max_bytes}-byte limit")
            digest = hashlib.sha256()
            size = 0
            handle, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=directory)
            try:
                with os.fdopen(handle, "wb") as output:
                    for chunk in response.iter_bytes(CHUNK):
                        self._check_stop()
                        size += len(chunk)
                        if size > max_bytes:
                            raise ImmichError(f"{what}: over the {max_bytes}-byte limit")
                        digest.update(chunk)
                        output.write(chunk)
                        checkpoint("download-chunk")
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
            return Download(Path(name), digest.hexdigest(), size)

        return self._send("GET", path, consume, params=params, gone_statuses=gone_statuses, what=what)

    def sweep_watermark(self, overlap_seconds: int) -> str:
        """The watermark for a sweep that starts now: server time (Date header) minus an overlap,
        since our clock and the server's may differ and updatedAfter is compared on the server."""
        now = self.last_server_time or datetime.now(UTC)
        mark = now - timedelta(seconds=overlap_seconds)
        return mark.isoformat(timespec="milliseconds").replace("+00:00", "Z")
