"""A small Immich API client over httpx: listing, faces, downloads.

Transient faults (connection errors, timeouts, truncated, garbled or trickling bodies, 5xx, 429) are
retried with exponential backoff and jitter, a bounded number of times. 401/403 become
ImmichAuthError. A missing asset (400 on JSON endpoints, 404 on /original) becomes AssetGone.

What a failure means is decided here: a request about one asset that keeps failing while the server
answers other requests is that asset's problem (ImmichError, recorded against the asset by the
caller); only a server that answers nothing is ImmichUnreachable.

The API key travels only in the x-api-key header, only to the configured origin (a redirect to any
other scheme, host or port is refused), and never appears in an error message or a log line.
"""

from __future__ import annotations

import base64
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

from .breakable import SocketTracker
from .config import ImmichSettings, SyncSettings
from .crashpoints import checkpoint
from .errors import AssetGone, ImmichAuthError, ImmichError, ImmichUnreachable, Interrupted
from .models import RemoteAsset, RemoteFace

log = logging.getLogger(__name__)

T = TypeVar("T")
ASSET_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_REDIRECTS = 5
# A JSON answer larger than this is not one Immich would send (a page of 1,000 assets is ~2 MB).
MAX_JSON_BYTES = 64 * 1024 * 1024
# The slowest transfer still accepted: a request may take twice the timeout plus its size at this
# rate, so a body trickled a byte at a time ends instead of holding a worker for hours.
MIN_BYTES_PER_SECOND = 32 * 1024
# A listing larger than this is a server that never stops answering, not a photo library.
MAX_LISTED_ASSETS = 50_000_000
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Immich closes a keep-alive connection idle for 5 s (Keep-Alive: timeout=5). A connection idle for
# longer than this is not reused: sending on it races the server's close.
KEEPALIVE_REUSE_SECONDS = 4.0
# A request still failing this long after its first attempt is a stall worth an INFO line.
STALL_LOG_SECONDS = 30.0
PERMISSIONS_HINT = "asset.read, asset.view, asset.download, face.read, user.read"


class _Retry(Exception):
    """A response worth retrying (5xx, 429); carries the server's Retry-After if any."""

    def __init__(self, description: str, retry_after: float | None) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class _Fault(Exception):
    """An answer that is no answer (garbled, empty, trickling, a redirect loop): retried like a
    transport fault, then reported as one."""


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    size: int
    sha1: str = ""  # base64, as Immich writes an asset's checksum


def error_message(response: httpx.Response) -> str:
    """The server's own words: 3.x {"message"}, 2.x {message, error, statusCode, correlationId}."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
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


def origin_of(url: str | httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: what must match for the key to go along."""
    parsed = httpx.URL(str(url))
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.host.lower(), port


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
    )


def parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_watermark(
    previous: str | None, server_now: datetime | None, newest_seen: datetime | None, overlap_seconds: int
) -> str | None:
    """Where the next sweep starts: the sweep's start by the server's clock, but never past the newest
    `updatedAt` the sweep actually saw, minus the overlap; never before the previous mark.

    A server clock (or a proxy's Date header) that runs a day ahead would otherwise move the mark
    into the future, and photos updated in between would never be listed. A sweep that saw nothing
    keeps the previous mark."""
    if newest_seen is None:
        return previous
    mark = min(newest_seen, server_now) if server_now is not None else newest_seen
    mark -= timedelta(seconds=overlap_seconds)
    before = parse_time(previous) if previous else None
    if before is not None and before > mark:
        return previous
    return iso_z(mark)


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
    retries, redirects, errors and their messages. Only for http:// servers with no proxy
    configured; TLS and proxies stay with httpx."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float, tracker: SocketTracker) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/") + "/api"
        self._headers = headers
        self._timeout = timeout
        self._tracker = tracker
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    @staticmethod
    def usable(url: str) -> bool:
        return urllib.parse.urlsplit(url).scheme == "http" and not any(os.environ.get(v) for v in PROXY_VARIABLES)

    def get(self, path: str, query: dict[str, str]) -> Any | None:
        target = f"{self._prefix}{path}?{urllib.parse.urlencode(query)}"
        connection, reused = self._connection()
        try:
            try:
                response = self._ask(connection, target)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle connection as we sent (its keep-alive timeout): the
                # request never arrived, so it is sent again on a fresh connection.
                connection, _ = self._connection(fresh=True)
                response = self._ask(connection, target)
            body = response.read(MAX_JSON_BYTES + 1)
            self._local.used_at = time.monotonic()
            if response.status != 200 or len(body) > MAX_JSON_BYTES or not response.isclosed():
                connection.close()
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError, RecursionError):
            connection.close()  # the next request opens a new one
            return None

    def _ask(self, connection: http.client.HTTPConnection, target: str) -> http.client.HTTPResponse:
        connection.request("GET", target, headers=self._headers)
        self._tracker.track(connection.sock)
        return connection.getresponse()

    def _connection(self, *, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before; one idle for too long (the
        server may be closing it), or any when `fresh`, is replaced by a new socket."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        idle = time.monotonic() - getattr(self._local, "used_at", 0.0)
        if not fresh and connection is not None and connection.sock is not None and idle < KEEPALIVE_REUSE_SECONDS:
            return connection, True
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        connection.close()  # a fresh socket at the next request
        return connection, False

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()


@dataclass(frozen=True)
class _ListingPage:
    """One answer of /search/metadata: its assets, `nextPage`, and (Immich 3.2+) `nextCursor`."""

    assets: list[RemoteAsset]
    next_page: Any
    next_cursor: str | None
    offers_cursor: bool  # the answer has a nextCursor field (3.2+), even a null one


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
        self.origin = origin_of(settings.url)
        self._sync = sync
        self._stop = stop
        self._sleep = sleep if stop is None else self._interruptible_sleep
        self._timeout = settings.timeout_seconds
        if not settings.verify_tls:
            log.warning("%s: TLS certificate verification is OFF for %s (verify_tls = false)", self.name, self.url)
        headers = {"x-api-key": settings.api_key.reveal(), "accept": "application/json"}
        self._tracker = SocketTracker()
        transport = self._tracker.transport(
            verify=settings.verify_tls, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_REUSE_SECONDS)
        )
        self.http = _CookielessClient(
            base_url=f"{settings.url}/api",
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_seconds, connect=min(10.0, settings.timeout_seconds)),
            transport=transport,
            # Redirects are followed by _attempt, which keeps the key to the configured origin:
            # httpx strips only Authorization on a cross-origin redirect, not x-api-key.
            follow_redirects=False,
        )
        self._quick = (
            _QuickGet(settings.url, headers, settings.timeout_seconds, self._tracker)
            if _QuickGet.usable(settings.url)
            else None
        )
        self._requests = 0
        self._requests_lock = threading.Lock()  # workers send requests at once
        self.last_server_time: datetime | None = None
        self.listing_by_offset = False  # the last listing had to page by offset (see iter_changed)
        self._closed = False

    @property
    def requests(self) -> int:
        """Requests sent so far (retries included)."""
        return self._requests

    def _count_request(self) -> None:
        with self._requests_lock:
            self._requests += 1

    def close(self) -> None:
        """Close the connections; from another thread, this breaks off requests in flight at once."""
        self._closed = True
        self._tracker.shutdown_all()
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
        consume: Callable[[httpx.Response, Iterator[bytes]], T],
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        gone_statuses: tuple[int, ...] = (),
        what: str = "",
        attempts: int | None = None,
    ) -> T:
        """Send with retries. `consume` reads a 2xx response through the body iterator it is given
        (which checks the deadline and the stop at every read); a body that breaks is retried too."""
        what = what or f"{method} {path}"
        last_problem = ""
        attempts = attempts or self._sync.http_retries + 1
        started = time.monotonic()
        for attempt in range(attempts):
            try:
                self._count_request()
                return self._attempt(method, path, consume, json_body, params, gone_statuses, what)
            except _Retry as problem:
                last_problem = str(problem)
                delay = self._backoff(attempt, problem.retry_after)
            except (httpx.RequestError, _Fault) as problem:
                self._check_stop()  # a read broken by a shutdown is not worth retrying
                if self._closed:
                    raise ImmichUnreachable(f"{self.name}: {what}: connection closed") from None
                last_problem = f"{type(problem).__name__}: {problem}" if str(problem) else type(problem).__name__
                if isinstance(problem, _Fault):
                    last_problem = str(problem)
                delay = self._backoff(attempt, None)
            if attempt + 1 < attempts:
                stalled = time.monotonic() - started
                # A stall (no progress for a while) is said at INFO; a quick retry is only a detail.
                level = logging.INFO if stalled >= STALL_LOG_SECONDS else logging.DEBUG
                log.log(
                    level,
                    "%s: %s failed (%s) for %.0fs; retry %d in %.1fs",
                    self.name,
                    what,
                    last_problem,
                    stalled,
                    attempt + 1,
                    delay,
                )
                self._sleep(delay)
        raise ImmichUnreachable(f"{self.name}: {what} at {self.url} failed {attempts} times: {last_problem}")

    def _attempt(
        self,
        method: str,
        path: str,
        consume: Callable[[httpx.Response, Iterator[bytes]], T],
        json_body: Any,
        params: dict[str, Any] | None,
        gone_statuses: tuple[int, ...],
        what: str,
    ) -> T:
        """One request, following same-origin redirects; raises _Retry/_Fault for what to retry."""
        started = time.monotonic()
        target: str | httpx.URL = path
        for _hop in range(MAX_REDIRECTS + 1):
            request = self.http.build_request(method, target, json=json_body, params=params)
            response = self.http.send(request, stream=True)
            try:
                self._note_server_time(response)
                status = response.status_code
                if status in REDIRECT_STATUSES and "location" in response.headers:
                    response.close()
                    target = self._redirect_target(response, what)
                    params = None  # the Location carries its own query
                    if status == 303 or (status in (301, 302) and method not in ("GET", "HEAD")):
                        method, json_body = "GET", None
                    continue
                if status in (401, 403):
                    response.read()
                    verb = "rejected the API key" if status == 401 else "refused access"
                    raise ImmichAuthError(
                        f"{self.name}: Immich at {self.url} {verb} ({status}: {error_message(response)}); "
                        f"check the key and its permissions ({PERMISSIONS_HINT})"
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
                if status >= 300:
                    raise _Fault(f"{status} answer without a usable redirect")
                declared = response.headers.get("content-length")
                size = int(declared) if declared and declared.isdigit() else 0
                return consume(response, self._body(response, started, size, what))
            finally:
                response.close()
        raise _Fault(f"more than {MAX_REDIRECTS} redirects (a redirect loop)")

    def _redirect_target(self, response: httpx.Response, what: str) -> httpx.URL:
        target = response.url.join(response.headers["location"])
        if origin_of(target) != self.origin:
            scheme, host, port = origin_of(target)
            raise ImmichError(
                f"{what}: Immich at {self.url} redirected to another origin ({scheme}://{host}:{port}); "
                f"the API key is only sent to the configured url (if Immich moved, set url to its new address)"
            )
        return target

    def _body(self, response: httpx.Response, started: float, declared: int, what: str) -> Iterator[bytes]:
        """The body as it arrives, checking the stop and the request's deadline at every read."""
        received = 0
        for chunk in response.iter_bytes():
            self._check_stop()
            received += len(chunk)
            elapsed = time.monotonic() - started
            if elapsed > 2 * self._timeout + max(received, declared) / MIN_BYTES_PER_SECOND:
                raise _Fault(
                    f"{what}: too slow ({received} bytes in {elapsed:.0f}s, under "
                    f"{MIN_BYTES_PER_SECOND // 1024} KiB/s after {2 * self._timeout:g}s)"
                )
            yield chunk

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        def consume(response: httpx.Response, body: Iterator[bytes]) -> Any:
            data = bytearray()
            for chunk in body:
                data += chunk
                if len(data) > MAX_JSON_BYTES:
                    raise _Fault(f"answer over {MAX_JSON_BYTES} bytes")
            try:
                return json.loads(data)
            except (ValueError, RecursionError) as error:
                # An HTML page, an empty or truncated body, JSON nested deeper than Python recurses:
                # a server fault, retried like one.
                kind = "deeply nested JSON" if isinstance(error, RecursionError) else "invalid JSON"
                raise _Fault(f"{kind} from server ({len(data)} bytes)") from None

        return self._send(method, path, consume, **kwargs)

    def _note_server_time(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if date:
            try:
                self.last_server_time = email.utils.parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                pass

    def _per_asset(self, call: Callable[[], T], what: str) -> T:
        """Run a request about one asset. If it keeps failing, ask whether the server answers at all:
        if it does, the failure is this asset's (ImmichError, recorded against it by the caller, and
        the cycle goes on); if it does not, the server is unreachable."""
        try:
            return call()
        except ImmichUnreachable as error:
            if self._closed or not self.answers():
                raise
            raise ImmichError(f"{error}; the server answers other requests") from None

    def answers(self) -> bool:
        """Whether the server answers a trivial request (GET /server/ping, no permission needed)."""
        try:
            pong = self._json("GET", "/server/ping", what="ping", attempts=2)
        except (ImmichUnreachable, ImmichError, ImmichAuthError):
            return False
        return isinstance(pong, dict)

    # -- API ------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """GET /users/me: proves the server is there and the key works."""
        me = self._json("GET", "/users/me", what="checking the API key")
        if not isinstance(me, dict):
            raise ImmichError(f"{self.name}: unexpected answer to /users/me")
        return me

    def asset(self, asset_id: str) -> RemoteAsset:
        """GET /assets/{id}: a second opinion before an asset is taken as deleted. AssetGone if the
        server says so again (400: not found or no access)."""
        data = self._per_asset(
            lambda: self._json(
                "GET", f"/assets/{asset_id}", gone_statuses=(400, 404), what=f"asset {asset_id}", attempts=2
            ),
            f"asset {asset_id}",
        )
        if not isinstance(data, dict):
            raise ImmichError(f"{self.name}: unexpected answer to /assets/{asset_id}")
        return parse_asset(data)

    def iter_changed(self, updated_after: str | None, page_size: int) -> Iterator[list[RemoteAsset]]:
        """Yield pages of assets with updatedAt >= updated_after (trashed ones included), each asset once.

        Immich orders /search/metadata by fileCreatedAt then id and pages by offset, so an asset deleted
        on the server while we page would shift every later asset back by one and one would be skipped.
        Instead of offsets we page by key: each request asks again from page 1 with takenAfter (a
        fileCreatedAt >= filter) set to the last fileCreatedAt seen, and drops the ids already seen at
        that instant. Only a run of more than `page_size` assets sharing one instant falls back to
        offsets, within that instant.

        Immich 3.2 answers with a `nextCursor` of its own (and deprecates `page`): then the listing
        follows that cursor instead (see _follow_cursor).

        A listing must make progress: a server that ignores takenAfter (Immich drops unknown fields
        silently, and older or patched servers may not know it) answers older assets than asked
        for, and then the listing goes on by offset, with a warning (`listing_by_offset`: deletions
        during it may then hide an asset until the next reconciliation). A page that brings no new
        asset while the server says there are more, and a listing past MAX_LISTED_ASSETS, end the
        listing as a failing server (ImmichUnreachable) instead of looping forever.
        """
        self.listing_by_offset = False
        cursor: str | None = None
        cursor_time: datetime | None = None
        seen_at_cursor: set[str] = set()
        listed: set[str] = set()
        page = 1
        stale_allowed = 0  # pages without a new asset tolerated (re-reading after the fallback)
        while True:
            self._check_stop()
            body: dict[str, Any] = {"page": page, "size": page_size, "order": "asc", "withDeleted": True}
            if updated_after:
                body["updatedAfter"] = updated_after
            if cursor and not self.listing_by_offset:
                body["takenAfter"] = cursor
            answer = self._listing_page(body)
            assets, next_page = answer.assets, answer.next_page
            if answer.offers_cursor and cursor is None and page == 1 and not self.listing_by_offset:
                del body["page"]  # deprecated in 3.2, where the server's cursor pages by key itself
                yield from self._follow_cursor(body, answer, listed)
                return
            if not self.listing_by_offset and cursor_time is not None and self._went_back(assets, cursor_time):
                self._fall_back_to_offsets("answered assets older than takenAfter asked for")
                page, stale_allowed = 1, len(listed) // page_size + 2
                continue
            fresh = self._first_seen(assets, listed)
            if fresh:
                yield fresh
            if not next_page or not assets:
                return
            # Page 1 at a new cursor repeats the assets of the last page that share its instant: when
            # they fill the page (a burst), the next page is asked for; that is progress too.
            burst = page == 1 and cursor is not None and all(a.file_created_at == cursor for a in assets)
            if not fresh and not (burst and not self.listing_by_offset):
                if not self.listing_by_offset:
                    self._fall_back_to_offsets("a page brought no new asset")
                    page, stale_allowed = 1, len(listed) // page_size + 2
                    continue
                stale_allowed -= 1
                if stale_allowed < 0:
                    raise ImmichUnreachable(
                        f"{self.name}: Immich's listing does not advance (page {page} repeats assets already "
                        f"listed while it says there are more); stopped after {len(listed)} assets"
                    )
            if self.listing_by_offset:
                page += 1
                continue
            last = assets[-1].file_created_at
            if last == cursor:
                page += 1
                seen_at_cursor.update(a.id for a in assets if a.file_created_at == last)
            else:
                cursor, cursor_time, page = last, parse_time(last), 1
                seen_at_cursor = {a.id for a in assets if a.file_created_at == last}

    def _listing_page(self, body: dict[str, Any]) -> _ListingPage:
        data = self._json("POST", "/search/metadata", json_body=body, what="listing assets")
        try:
            answer = data["assets"]
            items, next_cursor = answer["items"], answer.get("nextCursor")
            if not isinstance(items, list) or not isinstance(next_cursor, (str, type(None))):
                raise TypeError("items is not a list, or nextCursor not a string")
        except (KeyError, TypeError, AttributeError) as error:
            raise ImmichError(f"{self.name}: unexpected answer to /search/metadata") from error
        assets: list[RemoteAsset] = []
        for item in items:
            try:
                assets.append(parse_asset(item if isinstance(item, dict) else {}))
            except ImmichError as error:
                log.warning("%s: ignoring listed asset: %s", self.name, error)
        return _ListingPage(assets, answer.get("nextPage"), next_cursor, "nextCursor" in answer)

    def _follow_cursor(
        self, body: dict[str, Any], answer: _ListingPage, listed: set[str]
    ) -> Iterator[list[RemoteAsset]]:
        """Immich 3.2 and later: page by the cursor the server hands out (`nextCursor` back as
        `cursor`), which pages by key on its side, so an asset deleted meanwhile skips nothing. A
        cursor that repeats, or a page with no new asset while there are more, ends the listing as
        a failing server, as with pages."""
        previous: str | None = None
        while True:
            fresh = self._first_seen(answer.assets, listed)
            if fresh:
                yield fresh
            if not answer.next_cursor or not answer.assets:
                return
            if not fresh or answer.next_cursor == previous:
                raise ImmichUnreachable(
                    f"{self.name}: Immich's listing does not advance (its cursor brings no new asset while it "
                    f"says there are more); stopped after {len(listed)} assets"
                )
            previous = answer.next_cursor
            self._check_stop()
            answer = self._listing_page({**body, "cursor": answer.next_cursor})

    def _first_seen(self, assets: list[RemoteAsset], listed: set[str]) -> list[RemoteAsset]:
        """The assets not listed before, now counted as listed; a listing past MAX_LISTED_ASSETS is a
        server that never stops answering."""
        fresh = [a for a in assets if a.id not in listed]
        listed.update(a.id for a in fresh)
        if len(listed) > MAX_LISTED_ASSETS:
            raise ImmichUnreachable(f"{self.name}: the listing passed {MAX_LISTED_ASSETS} assets; stopped")
        return fresh

    @staticmethod
    def _went_back(assets: list[RemoteAsset], cursor_time: datetime) -> bool:
        times = [parse_time(asset.file_created_at) for asset in assets]
        return any(moment is not None and moment < cursor_time for moment in times)

    def _fall_back_to_offsets(self, why: str) -> None:
        self.listing_by_offset = True
        log.warning(
            "%s: Immich's listing %s; paging by offset instead (an asset deleted meanwhile may hide another "
            "until the next reconciliation)",
            self.name,
            why,
        )

    def faces(self, asset_id: str) -> list[RemoteFace]:
        data = None
        if self._quick is not None:
            self._count_request()
            data = self._quick.get("/faces", {"id": asset_id})
            self._check_stop()
        if data is None:
            data = self._per_asset(
                lambda: self._json(
                    "GET", "/faces", params={"id": asset_id}, gone_statuses=(400, 404), what=f"faces of {asset_id}"
                ),
                f"faces of {asset_id}",
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
        what = f"original of {asset_id}"
        return self._per_asset(
            lambda: self._download(f"/assets/{asset_id}/original", None, directory, max_bytes, what), what
        )

    def download_preview(self, asset_id: str, directory: Path, max_bytes: int) -> Download:
        # size=preview is a JPEG/WebP Immich renders for every image type, RAW included. A missing
        # asset is 400 here (the access check); 404 means the asset exists but has no preview file.
        what = f"preview of {asset_id}"
        return self._per_asset(
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

        return self._send("GET", path, consume, params=params, gone_statuses=gone_statuses, what=what)

    def server_now(self) -> datetime | None:
        """The server's clock as of its last answer (the Date header)."""
        return self.last_server_time
