"""The HTTP transport to one Immich server, for one API key: retries, redirects, deadlines, stops.

Transient faults (connection errors, timeouts, truncated, garbled or trickling bodies, 5xx, 429) are
retried with exponential backoff and jitter, a bounded number of times. 401/403 become
ImmichAuthError. A status the caller names as "gone" (a missing asset: 400 on JSON endpoints, 404 on
/original) becomes AssetGone.

What a failure means is decided here: a request about one asset that keeps failing while the server
answers other requests is that asset's problem (ImmichError, recorded against the asset by the
caller); only a server that answers nothing is ImmichUnreachable.

The API key travels only in the x-api-key header, only to the configured origin (a redirect to any
other scheme, host or port is refused), and never appears in an error message or a log line.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from ..breakable import SocketTracker, refused_certificate
from ..config import ImmichSettings, SyncSettings
from ..errors import AssetGone, ImmichAuthError, ImmichError, ImmichUnreachable, Interrupted, PermissionMissing

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_REDIRECTS = 5
# A JSON answer larger than this is not one Immich would send (a page of 1,000 assets is ~2 MB).
MAX_JSON_BYTES = 64 * 1024 * 1024
# The slowest transfer still accepted: a request may take twice the timeout plus its size at this
# rate, so a body trickled a byte at a time ends instead of holding a worker for hours.
MIN_BYTES_PER_SECOND = 32 * 1024
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


class Transport:
    """Requests to one Immich server with one API key; counts them, and knows the server's clock."""

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
        self.server_time: datetime | None = None  # the server's clock (Date) as of its last answer
        self._closed = False

    @property
    def requests(self) -> int:
        """Requests sent so far (retries included)."""
        return self._requests

    @property
    def has_quick_path(self) -> bool:
        return self._quick is not None

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

    def check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted("stop requested")

    def quick_json(self, path: str, query: dict[str, str]) -> Any | None:
        """A small GET through the quick path (see _QuickGet); None when there is none, or it did not
        get a clean answer: then the caller asks through json(), which owns retries and errors."""
        if self._quick is None:
            return None
        self._count_request()
        data = self._quick.get(path, query)
        self.check_stop()
        return data

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._sync.retry_max_seconds)
        base: float = self._sync.retry_base_seconds * (2**attempt)
        return min(self._sync.retry_max_seconds, base) * random.uniform(0.5, 1.0)

    def send(
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
                self.check_stop()  # a read broken by a shutdown is not worth retrying
                if self._closed:
                    raise ImmichUnreachable(f"{self.name}: {what}: connection closed") from None
                refused = refused_certificate(problem)
                if refused is not None:  # the same certificate again at every try
                    raise ImmichUnreachable(
                        f"{self.name}: {what} at {self.url}: the server's TLS certificate is not trusted "
                        f"({refused}). If Immich's certificate comes from an authority of your own, set "
                        f"SSL_CERT_FILE to a file of its certificate (PEM); or set verify_tls = false "
                        f"for this server (not advised beyond your own network)"
                    ) from None
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
                    raise (ImmichAuthError if status == 401 else PermissionMissing)(
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
                return consume(response, self._body(response, started, what))
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

    def _body(self, response: httpx.Response, started: float, what: str) -> Iterator[bytes]:
        """The body as it arrives, checking the stop and the transfer's rate at every read.

        After a grace of twice the timeout, a body must keep arriving at MIN_BYTES_PER_SECOND on
        average, whatever size it declares (a server that declared 1 GB and sent a byte every 2 s had
        hours per attempt). A body that falls under that rate is the asset's problem, not retried
        within this cycle: the rest of the cycle goes on, and the asset is tried at a later one."""
        received = 0
        for chunk in response.iter_bytes():
            self.check_stop()
            received += len(chunk)
            elapsed = time.monotonic() - started
            if elapsed > 2 * self._timeout + received / MIN_BYTES_PER_SECOND:
                raise ImmichError(
                    f"{what}: too slow ({received} bytes in {elapsed:.0f}s, under "
                    f"{MIN_BYTES_PER_SECOND // 1024} KiB/s after {2 * self._timeout:g}s)"
                )
            yield chunk

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
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

        return self.send(method, path, consume, **kwargs)

    def _note_server_time(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if date:
            try:
                self.server_time = email.utils.parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                pass

    def per_asset(self, call: Callable[[], T], what: str) -> T:
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
            pong = self.json("GET", "/server/ping", what="ping", attempts=2)
        except (ImmichUnreachable, ImmichError, ImmichAuthError):
            return False
        return isinstance(pong, dict)

    # -- API ------------------------------------------------------------------------------------
