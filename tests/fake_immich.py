"""A fake Immich server: a real HTTP server on 127.0.0.1 speaking the endpoints facesyncd uses.

Answers follow `../shared/immich/openapi-<version>.json` (the tests validate every JSON answer and
request body against the spec), in the 3.x or the 2.x flavour (error bodies and some fields differ).
It keeps assets per user (one API key per user), can change between pages, and injects the faults
real servers have (5xx, 429, resets, timeouts, truncated bodies).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import mimetypes
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageOps


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class FakeAsset:
    id: str
    owner: str
    data: bytes
    original_file_name: str
    file_created_at: datetime
    updated_at: datetime
    type: str = "IMAGE"
    is_trashed: bool = False
    width: int | None = None
    height: int | None = None
    mime: str = "image/jpeg"
    faces: list[dict[str, int]] = field(default_factory=list)
    label: str = ""  # what the test knows about it (path under testdata/photos)
    preview_data: bytes | None = None  # what Immich rendered, for files Pillow cannot open (RAW)
    library_id: str | None = None  # an external library's: the checksum is then of the path
    checksum_override: str | None = None  # a server whose checksum disagrees with its bytes

    @property
    def original_path(self) -> str:
        if self.library_id is not None:
            return f"/mnt/photos/{self.original_file_name}"
        return f"/data/upload/{self.owner}/{self.original_file_name}"

    @property
    def checksum(self) -> str:
        """Immich's checksum: base64 SHA-1 of the file, or for an external library's asset of
        "path:" and its path (Immich never reads those files to hash them)."""
        if self.checksum_override is not None:
            return self.checksum_override
        hashed = f"path:{self.original_path}".encode() if self.library_id is not None else self.data
        return base64.b64encode(hashlib.sha1(hashed).digest()).decode()


@dataclass
class Fault:
    """Answer the next matching request(s) with a fault instead of the real answer."""

    # "status", "reset", "timeout", "truncate"; answers that are no answer: "html" (a 200 web page),
    # "empty" (a 200 without a body), "invalid-json", "nested-json" (deeper than any parser recurses),
    # "trickle" (a body sent a byte every trickle_seconds); "redirect" (to `location`)
    kind: str
    path_contains: str = ""  # matched against the path and its query
    status: int = 503
    retry_after: str | None = None
    times: int = 1
    skip: int = 0  # let this many matching requests through first
    location: str = ""
    trickle_seconds: float = 1.0


RANDOM_FAULTS: list[dict[str, Any]] = [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 502},
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 429, "retry_after": "0"},
    {"kind": "status", "status": 429},
    {"kind": "reset"},
    {"kind": "timeout"},
    {"kind": "truncate"},
]


class FakeImmich:
    def __init__(self, *, version: str = "3.1.0") -> None:
        self.version = version
        self.major = int(version.split(".")[0])
        self.users: dict[str, dict[str, str]] = {}  # api key -> {"id", "name", "email"}
        self.assets: dict[str, FakeAsset] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, user name or "")
        self.json_answers: list[tuple[str, str, int, Any]] = []  # (method, path template, status, body)
        self.request_bodies: list[tuple[str, Any]] = []  # (path template, body)
        self.faults: list[Fault] = []
        # Random faults: each request fails with this probability, with the next of RANDOM_FAULTS.
        self.fault_rate = 0.0
        self.random = random.Random(1234)
        self.faults_served: list[str] = []
        self.on_search_page: Callable[[int], None] | None = None  # called before each search answer
        self.on_request: Callable[[str], None] | None = None  # called with each GET path before routing
        self.search_calls = 0
        self.clock_offset = timedelta(0)
        self.date_offset = timedelta(0)  # the Date header alone (a wrong clock, or a proxy's)
        self.ignore_taken_after = False  # a server that does not know the takenAfter filter
        self.endless_listing = False  # nextPage never null, the same page again and again
        self.slow_seconds = 0.0
        self.timeout_fault_seconds = 3.0  # longer than the client's read timeout in the tests
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._previews: dict[str, bytes] = {}
        self._order: list[tuple[datetime, str]] | None = None  # search order, rebuilt after changes

    # -- library ----------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def add_user(self, name: str, api_key: str) -> None:
        self.users[api_key] = {"id": str(uuid.uuid4()), "name": name, "email": f"{name}@example.org"}

    def _owner_id(self, name: str) -> str:
        for user in self.users.values():
            if user["name"] == name:
                return user["id"]
        raise KeyError(name)

    def add_asset(
        self,
        owner: str,
        data: bytes,
        file_name: str,
        *,
        taken: datetime | None = None,
        type: str = "IMAGE",
        faces: list[dict[str, int]] | None = None,
        label: str = "",
    ) -> str:
        width = height = None
        mime = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        if type == "IMAGE":
            try:
                with Image.open(io.BytesIO(data)) as image:
                    upright = ImageOps.exif_transpose(image)
                    width, height = upright.size
            except Exception:
                pass
        asset_id = str(uuid.uuid4())
        with self.lock:
            moment = self.now()
            self.assets[asset_id] = FakeAsset(
                id=asset_id,
                owner=self._owner_id(owner),
                data=data,
                original_file_name=file_name,
                file_created_at=taken or moment,
                updated_at=moment,
                type=type,
                width=width,
                height=height,
                mime=mime,
                faces=list(faces or []),
                label=label,
            )
            self._order = None
        return asset_id

    def add_file(self, owner: str, path: Path, *, taken: datetime | None = None, label: str = "", **kw: Any) -> str:
        return self.add_asset(owner, path.read_bytes(), path.name, taken=taken, label=label or str(path), **kw)

    def touch(self, asset_id: str) -> None:
        """What Immich's own jobs do: bump updatedAt without changing the file."""
        with self.lock:
            self.assets[asset_id].updated_at = self.now()

    def trash(self, asset_id: str) -> None:
        with self.lock:
            self.assets[asset_id].is_trashed = True
            self.assets[asset_id].updated_at = self.now()

    def restore(self, asset_id: str) -> None:
        with self.lock:
            self.assets[asset_id].is_trashed = False
            self.assets[asset_id].updated_at = self.now()

    def change_id(self, asset_id: str, new_id: str) -> None:
        """Serve an asset under another id (a malicious server's trick)."""
        with self.lock:
            asset = self.assets.pop(asset_id)
            asset.id = new_id
            self.assets[new_id] = asset
            self._order = None

    def delete(self, asset_id: str) -> None:
        with self.lock:
            del self.assets[asset_id]
            self._order = None

    def count(self, method: str, path_prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- server -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeImmich:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self, downtime: float = 0.2) -> None:
        """Stop listening, wait, listen again on the same port (a server restart)."""
        assert self._server is not None
        address = self._server.server_address[:2]
        self.stop()
        time.sleep(downtime)
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            if self.fault_rate and self.random.random() < self.fault_rate:
                # which requests fail is random (seeded); the kinds take turns, so every kind is served
                fault = Fault(**RANDOM_FAULTS[len(self.faults_served) % len(RANDOM_FAULTS)])
                self.faults_served.append(f"{fault.kind}:{fault.status}")
                return fault
            for fault in self.faults:
                if fault.times > 0 and fault.path_contains in path:
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    # -- answers ----------------------------------------------------------------------------

    def error_body(self, status: int, message: str | list[str]) -> dict[str, Any]:
        if self.major >= 3:
            return {"message": message}
        names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}
        return {
            "message": message,
            "error": names.get(status, "Internal Server Error"),
            "statusCode": status,
            "correlationId": uuid.uuid4().hex[:8],
        }

    def asset_dto(self, asset: FakeAsset) -> dict[str, Any]:
        dto: dict[str, Any] = {
            "id": asset.id,
            "checksum": asset.checksum,
            "createdAt": iso(asset.updated_at),
            "fileCreatedAt": iso(asset.file_created_at),
            "fileModifiedAt": iso(asset.file_created_at),
            "localDateTime": iso(asset.file_created_at),
            "updatedAt": iso(asset.updated_at),
            "hasMetadata": True,
            "isArchived": False,
            "isEdited": False,
            "isFavorite": False,
            "isOffline": False,
            "isTrashed": asset.is_trashed,
            "originalFileName": asset.original_file_name,
            "originalPath": asset.original_path,
            "originalMimeType": asset.mime,
            "ownerId": asset.owner,
            "thumbhash": None,
            "type": asset.type,
            "visibility": "timeline",
            "width": asset.width,
            "height": asset.height,
            "duration": None if self.major >= 3 else "0:00:00.00000",
            "libraryId": asset.library_id,
            "livePhotoVideoId": None,
            "duplicateId": None,
            "people": [],
            "tags": [],
        }
        if self.major < 3:
            dto["deviceAssetId"] = f"web-{asset.original_file_name}"
            dto["deviceId"] = "WEB"
        return dto

    def user_dto(self, user: dict[str, str]) -> dict[str, Any]:
        stamp = iso(datetime(2024, 1, 1, tzinfo=UTC))
        return {
            "id": user["id"],
            "email": user["email"],
            "name": user["name"],
            "avatarColor": "primary",
            "createdAt": stamp,
            "updatedAt": stamp,
            "deletedAt": None,
            "isAdmin": False,
            "license": None,
            "oauthId": "",
            "profileChangedAt": stamp,
            "profileImagePath": "",
            "quotaSizeInBytes": None,
            "quotaUsageInBytes": 0,
            "shouldChangePassword": False,
            "status": "active",
            "storageLabel": None,
        }

    def visible(self, user: dict[str, str], asset_id: str) -> FakeAsset | None:
        asset = self.assets.get(asset_id)
        return asset if asset is not None and asset.owner == user["id"] else None

    def search(self, user: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        problems = []
        size = body.get("size", 250)
        page = body.get("page", 1)
        if not isinstance(size, int) or not 1 <= size <= 1000:
            problems.append("size must not be greater than 1000" if isinstance(size, int) else "size must be a number")
        if not isinstance(page, int) or page < 1:
            problems.append("page must not be less than 1")
        if problems:
            return 400, self.error_body(400, problems)
        updated_after = parse_iso(body["updatedAfter"]) if body.get("updatedAfter") else None
        taken_after = parse_iso(body["takenAfter"]) if body.get("takenAfter") else None
        if self.ignore_taken_after:
            taken_after = None
        if self.endless_listing:
            page = 1

        def wanted(a: FakeAsset) -> bool:
            return (
                a.owner == user["id"]
                and (body.get("withDeleted") or not a.is_trashed)
                and (updated_after is None or a.updated_at >= updated_after)
                and (not body.get("type") or a.type == body["type"])
            )

        start = (page - 1) * size
        with self.lock:
            # Assets kept sorted by (fileCreatedAt, id) as Immich orders them; takenAfter is a
            # bisection, so paging a large library stays fast.
            if self._order is None:
                self._order = sorted((a.file_created_at, a.id) for a in self.assets.values())
            position = bisect.bisect_left(self._order, (taken_after,)) if taken_after else 0
            ascending = self._order[position:] if body.get("order", "desc") == "asc" else self._order[position:][::-1]
            matches: list[FakeAsset] = []
            for _, asset_id in ascending:
                asset = self.assets.get(asset_id)
                if asset is not None and wanted(asset):
                    matches.append(asset)
                    if len(matches) > start + size:
                        break
            chunk = matches[start : start + size]
            more = len(matches) > start + size
            dtos = [self.asset_dto(a) for a in chunk]
        return 200, {
            "albums": {"total": 0, "count": 0, "items": [], "facets": [], "nextPage": None}
            if self.major < 3
            else {"total": 0, "count": 0, "items": [], "facets": []},
            "assets": {
                "total": len(dtos),
                "count": len(dtos),
                "items": dtos,
                "facets": [],
                "nextPage": str(page + 1) if more or self.endless_listing else None,
            },
        }

    def faces_of(self, asset: FakeAsset) -> list[dict[str, Any]]:
        answer = []
        for face in asset.faces:
            answer.append(
                {
                    "id": str(uuid.uuid4()),
                    "boundingBoxX1": face["x1"],
                    "boundingBoxY1": face["y1"],
                    "boundingBoxX2": face["x2"],
                    "boundingBoxY2": face["y2"],
                    "imageWidth": face["image_width"],
                    "imageHeight": face["image_height"],
                    "person": None,
                    "sourceType": "machine-learning",
                }
            )
        return answer

    def preview(self, asset: FakeAsset) -> bytes:
        if asset.preview_data is not None:
            return asset.preview_data
        if asset.id not in self._previews:
            try:
                with Image.open(io.BytesIO(asset.data)) as image:
                    upright = ImageOps.exif_transpose(image).convert("RGB")
                    upright.thumbnail((1440, 1440))
                    buffer = io.BytesIO()
                    upright.save(buffer, format="JPEG", quality=90)
                    self._previews[asset.id] = buffer.getvalue()
            except Exception:
                self._previews[asset.id] = b""
        return self._previews[asset.id]


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeImmich
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the client's
        # delayed ACK stall every small answer by ~40 ms (Immich's Node server sets it too).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def date_time_string(self, timestamp: float | None = None) -> str:
        moment = self.server_fake.now() + self.server_fake.date_offset
        return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")

    # -- helpers ----------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any, template: str, headers: dict[str, str] | None = None) -> None:
        fake = self.server_fake
        with fake.lock:
            fake.json_answers.append((self.command, template, status, body))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_bytes(self, data: bytes, mime: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, template: str) -> None:
        self._send_json(status, self.server_fake.error_body(status, message), template)

    def _fault(self) -> bool:
        """Apply an injected fault; True when the request was answered (or dropped) by it."""
        fault = self.server_fake.take_fault(self.path)
        if fault is None:
            return False
        self._record(None)
        if fault.kind == "status":
            body = json.dumps(self.server_fake.error_body(fault.status, "injected fault")).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.end_headers()
            self.wfile.write(body)
        elif fault.kind == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
        elif fault.kind == "timeout":
            time.sleep(self.server_fake.timeout_fault_seconds)
            self.close_connection = True
            self.connection.shutdown(2)
        elif fault.kind == "redirect":
            self.send_response(302)
            self.send_header("Location", fault.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault.kind in ("html", "empty", "invalid-json", "nested-json"):
            body = {
                "html": b"<!doctype html><html><body>Immich is starting</body></html>",
                "empty": b"",
                "invalid-json": b'{"assets": {"items": [',
                "nested-json": b"[" * 100_000 + b"]" * 100_000,
            }[fault.kind]
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if fault.kind == "html" else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif fault.kind == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(fault.trickle_seconds)
            except OSError:  # the client gave up
                pass
            self.close_connection = True
        elif fault.kind == "truncate":
            # promise more bytes than are sent, then close: a body cut short
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"\0" * 100)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        return True

    def _user(self, template: str) -> dict[str, str] | None:
        key = self.headers.get("x-api-key")
        user = self.server_fake.users.get(key or "")
        self._record(user)  # before answering: a client that has its answer may count at once
        if user is None:
            self._error(401, "Invalid API key" if key else "Authentication required", template)
        return user

    def _record(self, user: dict[str, str] | None) -> None:
        fake = self.server_fake
        with fake.lock:
            fake.requests.append((self.command, urlsplit(self.path).path, user["name"] if user else ""))

    def _about_asset(self, template: str, asset_id: str, answer: Callable[[FakeAsset], Any]) -> None:
        """A JSON endpoint about one asset: 400 with the access-check message when the key's user
        cannot see it (missing, another user's), as Immich answers."""
        fake = self.server_fake
        user = self._user(template)
        if not user:
            return
        with fake.lock:
            asset = fake.visible(user, asset_id)
            body = answer(asset) if asset else None
        if body is None:
            return self._error(400, "Not found or no asset.read access", template)
        self._send_json(200, body, template)

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        fake = self.server_fake
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if fake.slow_seconds:
            time.sleep(fake.slow_seconds)
        if fake.on_request is not None:
            fake.on_request(path)
        if path == "/api/server/version":
            major, minor, patch = (int(x) for x in fake.version.split("."))
            body: dict[str, Any] = {"major": major, "minor": minor, "patch": patch}
            if fake.major >= 3:
                body["prerelease"] = None
            self._record(None)
            return self._send_json(200, body, "/server/version")
        if self._fault():
            return
        if path == "/api/server/ping":  # no key needed
            self._record(None)
            return self._send_json(200, {"res": "pong"}, "/server/ping")
        if path == "/api/users/me":
            user = self._user("/users/me")
            if user:
                self._send_json(200, fake.user_dto(user), "/users/me")
            return
        if path == "/api/faces":
            return self._about_asset("/faces", (query.get("id") or [""])[0], fake.faces_of)
        if path.startswith("/api/assets/") and path.count("/") == 3:
            return self._about_asset("/assets/{id}", path.rsplit("/", 1)[1], fake.asset_dto)
        if path.startswith("/api/assets/") and path.count("/") == 4:
            _, _, _, asset_id, what = path.split("/")
            template = f"/assets/{{id}}/{what}"
            user = self._user(template)
            if not user:
                return
            with fake.lock:
                asset = fake.visible(user, asset_id)
            if what == "original":
                if asset is None:
                    # /original answers 404 {"message": "Not Found"} for a missing asset, where the
                    # JSON endpoints answer 400 (recorded-3.1.0/assets-original-random-uuid.json)
                    return self._error(404, "Not Found", template)
                return self._send_bytes(asset.data, asset.mime)
            if what == "thumbnail":
                if asset is None:
                    return self._error(400, "Not found or no asset.read access", template)
                size = (query.get("size") or ["thumbnail"])[0]
                if size == "fullsize" and asset.mime in ("image/jpeg", "image/png", "image/webp"):
                    self.send_response(302)
                    self.send_header("Location", f"/api/assets/{asset_id}/original")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = fake.preview(asset)
                if not data:  # the asset exists, its preview file does not
                    return self._error(404, "Asset media not found", template)
                return self._send_bytes(data, "image/jpeg")
        self._record(None)
        self._error(404, f"Cannot GET {path}", path)

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server_fake
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self._fault():
            return
        if path == "/api/search/metadata":
            user = self._user("/search/metadata")
            if not user:
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._error(400, "Unexpected token in JSON", "/search/metadata")
            with fake.lock:
                fake.request_bodies.append(("/search/metadata", body))
                fake.search_calls += 1
                call = fake.search_calls
            if fake.on_search_page is not None:
                fake.on_search_page(call)
            status, answer = fake.search(user, body)
            return self._send_json(status, answer, "/search/metadata")
        self._record(None)
        self._error(404, f"Cannot POST {path}", path)
