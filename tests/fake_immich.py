"""A fake Immich server: a real HTTP server on 127.0.0.1 speaking the endpoints facesyncd uses.

Answers follow `../shared/immich/openapi-<version>.json` (the tests validate every JSON answer and
request body against the spec), in the 3.x or the 2.x flavour (error bodies and some fields differ),
and answer as a real Immich 3.1.0 does: tests/integration/test_fake_immich.py replays every recorded case of
`../shared/immich/recorded-3.1.0/` that concerns an endpoint facesyncd uses and compares the answers.

Like the real server it has users with API keys and their permission scopes, partners (a partner's
assets are listed when the partner is shown in the timeline), visibility (archive, hidden, locked),
the trash, force deletes that are listed as trashed for a few seconds, stable face ids with person
objects, validation errors in zod's words, and idle keep-alive connections closed after 5 seconds.
It can change between pages, and injects the faults real servers have (5xx, 429, resets, timeouts,
truncated bodies).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import mimetypes
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loopback import LoopbackServer
from PIL import Image, ImageOps


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_micro(moment: datetime) -> str:
    """The other date format Immich sends (person updatedAt, profileChangedAt, exif dates)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# What Immich 3.1 validates with zod, and the patterns its errors quote.
UUID_PATTERN = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12})$"
DATETIME_PATTERN = (
    r"^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]"
    r"|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))T(?:(?:"
    r"[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|([+-](?:[01]\d|2[0-3]):[0-5]\d)))$"
)
VISIBILITIES = ["archive", "timeline", "hidden", "locked"]
THUMBNAIL_SIZES = ["original", "fullsize", "preview", "thumbnail"]
# The scope each route needs (x-immich-permission in the spec); None: public.
PERMISSIONS = {
    "/users/me": "user.read",
    "/search/metadata": "asset.read",
    "/faces": "face.read",
    "/assets/{id}": "asset.read",
    "/assets/{id}/original": "asset.download",
    "/assets/{id}/thumbnail": "asset.view",
    "/assets/statistics": "asset.statistics",
    "/search/statistics": "asset.statistics",
    "/partners": "partner.read",
}
ACCESS_MESSAGES = {"/assets/{id}/thumbnail": "Not found or no asset.view access"}


class Invalid(Exception):
    """A request that fails validation: one zod issue (3.x) and class-validator's sentence (2.x)."""

    def __init__(self, issue: dict[str, Any], sentence: str) -> None:
        super().__init__(sentence)
        self.issue = issue
        self.sentence = sentence


def _check_uuid(value: Any, name: str) -> None:
    if value is None:
        raise Invalid(
            {
                "expected": "string",
                "code": "invalid_type",
                "path": [name],
                "message": "Invalid input: expected string, received undefined",
            },
            f"{name} must be a UUID",
        )
    if not re.match(UUID_PATTERN, str(value)):
        raise Invalid(
            {
                "origin": "string",
                "code": "invalid_format",
                "format": "uuid",
                "pattern": f"/{UUID_PATTERN}/",
                "path": [name],
                "message": "Invalid UUID",
            },
            f"{name} must be a UUID",
        )


def _check_enum(value: Any, name: str, values: list[str]) -> None:
    if value not in values:
        options = "|".join(f'"{v}"' for v in values)
        raise Invalid(
            {
                "code": "invalid_value",
                "values": values,
                "path": [name],
                "message": f"Invalid option: expected one of {options}",
            },
            f"{name} must be one of the following values: {', '.join(values)}",
        )


def _check_int(body: dict[str, Any], name: str, low: int, high: int | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        kind = "string" if isinstance(value, str) else type(value).__name__
        raise Invalid(
            {
                "expected": "number",
                "code": "invalid_type",
                "path": [name],
                "message": f"Invalid input: expected number, received {kind}",
            },
            f"{name} must be a number",
        )
    if value < low:
        raise Invalid(
            {
                "origin": "number",
                "code": "too_small",
                "minimum": low,
                "inclusive": True,
                "path": [name],
                "message": f"Too small: expected number to be >={low}",
            },
            f"{name} must not be less than {low}",
        )
    if high is not None and value > high:
        raise Invalid(
            {
                "origin": "number",
                "code": "too_big",
                "maximum": high,
                "inclusive": True,
                "path": [name],
                "message": f"Too big: expected number to be <={high}",
            },
            f"{name} must not be greater than {high}",
        )


def _check_datetime(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(DATETIME_PATTERN, value):
        raise Invalid(
            {
                "origin": "string",
                "code": "invalid_format",
                "format": "datetime",
                "pattern": f"/{DATETIME_PATTERN}/",
                "path": [name],
                "message": "Invalid input: expected ISO 8601 datetime string, received string",
            },
            f"{name} must be a Date instance",
        )
    return parse_iso(value)


def _cursor_of(asset: FakeAsset) -> str:
    """An opaque cursor after this asset: its (fileCreatedAt, id) key, as Immich 3.2 pages by key."""
    key = [asset.file_created_at.isoformat(), asset.id]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _cursor_key(body: dict[str, Any]) -> tuple[datetime, str] | None:
    value = body.get("cursor")
    if value is None:
        return None
    try:
        created, asset_id = json.loads(base64.urlsafe_b64decode(str(value).encode()))
        return datetime.fromisoformat(str(created)), str(asset_id)
    except (ValueError, TypeError):
        raise Invalid(
            {"code": "custom", "path": ["cursor"], "message": "Invalid cursor"}, "cursor must be a valid cursor"
        ) from None


def _node_json_error(raw: bytes) -> str:
    """What Node's JSON.parse says about a body that is not JSON (near enough: the position)."""
    try:
        json.loads(raw)
    except json.JSONDecodeError as error:
        if error.msg.startswith("Expecting property name"):
            what = "Expected property name or '}'"
        else:
            what = "Unexpected token"
        return f"{what} in JSON at position {error.pos} (line {error.lineno} column {error.colno})"
    return "Unexpected end of JSON input"


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
    # {x1, y1, x2, y2, image_width, image_height} and, filled in by add_asset: a stable id, the
    # person (a PersonResponseDto or None) and the source type
    faces: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""  # what the test knows about it (path under testdata/photos)
    preview_data: bytes | None = None  # what Immich rendered, for files Pillow cannot open (RAW)
    library_id: str | None = None  # an external library's: the checksum is then of the path
    checksum_override: str | None = None  # a server whose checksum disagrees with its bytes
    visibility: str = "timeline"  # archive, hidden (a live photo's video), locked (the locked folder)
    created_at: datetime | None = None  # the upload; never changes
    purge_at: float | None = None  # force-deleted: the row goes at this time.monotonic()

    @property
    def original_path(self) -> str:
        if self.library_id is not None:
            return f"/mnt/photos/{self.original_file_name}"
        extension = Path(self.original_file_name).suffix.lower()
        return f"/data/upload/{self.owner}/{self.id[:2]}/{self.id[2:4]}/{self.id}{extension}"

    @property
    def checksum(self) -> str:
        """Immich's checksum: base64 SHA-1 of the file, or for an external library's asset of
        "path:" and its path (Immich never reads those files to hash them)."""
        if self.checksum_override is not None:
            return self.checksum_override
        hashed = f"path:{self.original_path}".encode() if self.library_id is not None else self.data
        return base64.b64encode(hashlib.sha1(hashed).digest()).decode()

    @property
    def thumbhash(self) -> str:
        return base64.b64encode(hashlib.sha1(self.data).digest()[:18] + b"\x87\x88\x07\x82\x19\x01").decode()


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
    declared_bytes: int = 1000  # the Content-Length a trickle states (it sends that many bytes, slowly)


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
    def __init__(self, *, version: str = "3.1.0", tls: ssl.SSLContext | None = None) -> None:
        self.version = version
        self.tls = tls  # served over TLS with this server context (https://)
        self.major, self.minor = (int(part) for part in version.split(".")[:2])
        # 3.2 pages /search/metadata by a cursor of its own (`cursor` in, `nextCursor` out) and deprecates
        # `page` (still honoured); facts from 3.2.0's spec as third parties report it (see the README).
        self.cursors = (self.major, self.minor) >= (3, 2)
        # api key -> {"id", "name", "email", "permissions", "is_admin"}; a user may have several keys
        self.users: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, str] = {}  # login token -> api key of the same user
        self.partners: dict[tuple[str, str], bool] = {}  # (sharing user id, viewing user id) -> inTimeline
        self.people: dict[str, dict[str, Any]] = {}
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
        # A hostile server: every page brings new asset ids (copies of one asset under ids it never
        # stored), with more always said to come, up to this many pages; its counts stay honest.
        self.new_ids_for_pages = 0
        self.phantom_pages = 0
        # What a search without `visibility` lists: every visibility but locked (the recordings show the
        # archive listed; hidden ones are reported listed by Immich 3.0 users). A test may play a server
        # that lists locked assets too.
        self.listed_by_default = {"timeline", "archive", "hidden"}
        self.force_delete_seconds = 8.0  # how long a force-deleted asset is still listed as trashed
        self.keepalive_seconds = 5.0  # idle connections are closed after this (Keep-Alive: timeout=5)
        self.connections = 0  # connections accepted
        self.connections_closed = 0  # connections this side closed (idle past keepalive_seconds, or done)
        self.slow_seconds = 0.0
        self.timeout_fault_seconds = 3.0  # longer than the client's read timeout in the tests
        self._http = LoopbackServer()
        self._previews: dict[str, bytes] = {}
        self._sizes: dict[bytes, tuple[int | None, int | None]] = {}
        self._order: list[tuple[datetime, str]] | None = None  # search order, rebuilt after changes

    # -- library ----------------------------------------------------------------------------

    def clone(self) -> FakeImmich:
        """Another server (not started) with this one's users, partners, people and assets, the same
        ids included: a test changes its own copy of a library others read."""
        copy = FakeImmich(version=self.version)
        with self.lock:
            copy.users = deepcopy(self.users)
            copy.partners = dict(self.partners)
            copy.people = deepcopy(self.people)
            copy.assets = deepcopy(self.assets)
            copy._previews = dict(self._previews)
            copy._sizes = dict(self._sizes)
        return copy

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def add_user(
        self,
        name: str,
        api_key: str,
        *,
        user_id: str | None = None,
        permissions: tuple[str, ...] = ("all",),
        is_admin: bool = False,
    ) -> str:
        """A user and an API key of theirs (a second call with the same name adds another key)."""
        known = [u for u in self.users.values() if u["name"] == name]
        user = {
            "id": known[0]["id"] if known else user_id or str(uuid.uuid4()),
            "name": name,
            "email": f"{name.lower()}@example.org",
            "permissions": list(permissions),
            "is_admin": is_admin,
        }
        self.users[api_key] = user
        return str(user["id"])

    def add_session(self, name: str, token: str) -> None:
        """A login token (Authorization: Bearer) of a user with an all-permission key."""
        self.sessions[token] = next(k for k, u in self.users.items() if u["name"] == name)

    def share(self, owner: str, with_user: str, *, in_timeline: bool = True) -> None:
        """`owner` shares their library with `with_user` (a partner); in_timeline is the viewer's
        choice to show it in their timeline, which is what puts it in their search listing."""
        with self.lock:
            self.partners[(self._owner_id(owner), self._owner_id(with_user))] = in_timeline

    def add_person(self, owner: str, name: str, *, person_id: str | None = None) -> dict[str, Any]:
        person_id = person_id or str(uuid.uuid4())
        person = {
            "id": person_id,
            "name": name,
            "birthDate": None,
            "thumbnailPath": f"/data/thumbs/{self._owner_id(owner)}/{person_id[:2]}/{person_id[2:4]}/{person_id}.jpeg",
            "isHidden": False,
            "isFavorite": False,
            "updatedAt": iso_micro(self.now()),
        }
        self.people[person_id] = person
        return person

    def _owner_id(self, name: str) -> str:
        for user in self.users.values():
            if user["name"] == name:
                return str(user["id"])
        raise KeyError(name)

    def add_asset(
        self,
        owner: str,
        data: bytes,
        file_name: str,
        *,
        taken: datetime | None = None,
        type: str = "IMAGE",
        faces: list[dict[str, Any]] | None = None,
        label: str = "",
        visibility: str = "timeline",
        asset_id: str | None = None,
    ) -> str:
        width: int | None = None
        height: int | None = None
        mime = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        if type == "IMAGE":
            digest = hashlib.sha1(data).digest()
            if digest not in self._sizes:  # one photo served many times is measured once
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        self._sizes[digest] = ImageOps.exif_transpose(image).size
                except Exception:
                    self._sizes[digest] = (None, None)
            width, height = self._sizes[digest]
        asset_id = asset_id or str(uuid.uuid4())
        stored_faces = [
            {"id": str(uuid.uuid4()), "person": None, "source_type": "machine-learning", **face} for face in faces or []
        ]
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
                faces=stored_faces,
                label=label,
                visibility=visibility,
                created_at=moment,
            )
            self._order = None
        return asset_id

    def add_file(self, owner: str, path: Path, *, taken: datetime | None = None, label: str = "", **kw: Any) -> str:
        return self.add_asset(owner, path.read_bytes(), path.name, taken=taken, label=label or str(path), **kw)

    def add_face(self, asset_id: str, face: dict[str, Any], person: dict[str, Any] | None = None) -> str:
        """A face added by hand (POST /faces): sourceType manual; like Immich, updatedAt stays."""
        with self.lock:
            record = {"id": str(uuid.uuid4()), "person": person, "source_type": "manual", **face}
            self.assets[asset_id].faces.append(record)
        return str(record["id"])

    def touch(self, asset_id: str) -> None:
        """What Immich's own jobs do: bump updatedAt without changing the file."""
        with self.lock:
            self.assets[asset_id].updated_at = self.now()

    def set_visibility(self, asset_id: str, visibility: str) -> None:
        with self.lock:
            self.assets[asset_id].visibility = visibility
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
        """The row is gone (what a force delete leaves once Immich's background job has run)."""
        with self.lock:
            del self.assets[asset_id]
            self._order = None

    def force_delete(self, asset_id: str) -> None:
        """DELETE /assets {force: true} as Immich does it: the asset is refused at once, but a
        withDeleted search still lists it as trashed (updatedAt bumped) for force_delete_seconds,
        until the background job removes the row."""
        with self.lock:
            asset = self.assets[asset_id]
            asset.is_trashed = True
            asset.updated_at = self.now()
            asset.purge_at = time.monotonic() + self.force_delete_seconds

    def finish_force_deletes(self) -> None:
        """Immich's background job has run: force-deleted assets are gone now."""
        with self.lock:
            for asset in self.assets.values():
                if asset.purge_at is not None:
                    asset.purge_at = time.monotonic()
        self._purge()

    def _purge(self) -> None:
        with self.lock:
            now = time.monotonic()
            for asset_id in [a.id for a in self.assets.values() if a.purge_at is not None and a.purge_at <= now]:
                self.delete(asset_id)

    def count(self, method: str, path_prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- server -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._http.address
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def _listen(self, address: tuple[str, int]) -> None:
        fake = self

        class Handler(_Handler):
            server_fake = fake
            timeout = fake.keepalive_seconds  # an idle connection is closed after this

        self._http.serve(address, Handler, self.tls)

    def start(self) -> FakeImmich:
        self._listen(("127.0.0.1", 0))
        return self

    def stop(self) -> None:
        self._http.stop()

    def restart(self, downtime: float = 0.2) -> None:
        """Stop listening, wait, listen again on the same port (a server restart)."""
        address = self._http.address
        self.stop()
        time.sleep(downtime)
        self._listen(address)

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

    def invalid_body(self, problem: Invalid) -> dict[str, Any]:
        if self.major >= 3:
            return {"message": "Validation failed", "errors": [problem.issue]}
        return self.error_body(400, [problem.sentence])

    def people_of(self, asset: FakeAsset) -> list[dict[str, Any]]:
        people: dict[str, dict[str, Any]] = {}
        for face in asset.faces:
            if face["person"] is not None:
                people.setdefault(face["person"]["id"], face["person"])
        return list(people.values())

    def asset_dto(self, asset: FakeAsset, *, with_people: bool = False, full: bool = False) -> dict[str, Any]:
        """An AssetResponseDto as /search/metadata lists it; `full` as GET /assets/{id} answers."""
        created = asset.created_at or asset.updated_at
        dto: dict[str, Any] = {
            "id": asset.id,
            "createdAt": iso(created),
            "ownerId": asset.owner,
            "libraryId": asset.library_id,
            "type": asset.type,
            "originalPath": asset.original_path,
            "originalFileName": asset.original_file_name,
            "originalMimeType": asset.mime,
            "thumbhash": asset.thumbhash,
            "fileCreatedAt": iso(asset.file_created_at),
            "fileModifiedAt": iso(asset.file_created_at),
            "localDateTime": iso(asset.file_created_at),
            "updatedAt": iso(asset.updated_at),
            "isFavorite": False,
            "isArchived": asset.visibility == "archive",
            "isTrashed": asset.is_trashed,
            "visibility": asset.visibility,
            "duration": None if self.major >= 3 else "0:00:00.00000",
            "livePhotoVideoId": None,
            "people": self.people_of(asset) if with_people or full else [],
            "checksum": asset.checksum,
            "isOffline": False,
            "hasMetadata": True,
            "duplicateId": None,
            "resized": True,
            "width": asset.width,
            "height": asset.height,
            "isEdited": False,
        }
        if full:
            owner = self.user_of(asset.owner)
            dto["owner"] = {
                "id": owner["id"],
                "email": owner["email"],
                "name": owner["name"],
                "profileImagePath": "",
                "avatarColor": "orange",
                "profileChangedAt": iso_micro(datetime(2024, 1, 1, tzinfo=UTC)),
            }
            taken = asset.file_created_at.astimezone(UTC).isoformat(timespec="seconds")
            dto["exifInfo"] = {
                "make": None, "model": None, "exifImageWidth": asset.width, "exifImageHeight": asset.height,
                "fileSizeInByte": len(asset.data), "orientation": None, "dateTimeOriginal": taken,
                "modifyDate": taken, "timeZone": None, "lensModel": None, "fNumber": None, "focalLength": None,
                "iso": None, "exposureTime": None, "latitude": None, "longitude": None, "city": None,
                "state": None, "country": None, "description": "", "projectionType": None, "rating": None,
            }  # fmt: skip
            dto["tags"] = []
            dto["stack"] = None
        if self.major < 3:
            dto["deviceAssetId"] = f"web-{asset.original_file_name}"
            dto["deviceId"] = "WEB"
        return dto

    def user_of(self, user_id: str) -> dict[str, Any]:
        return next(u for u in self.users.values() if u["id"] == user_id)

    def user_dto(self, user: dict[str, Any]) -> dict[str, Any]:
        stamp = iso(datetime(2024, 1, 1, tzinfo=UTC))
        return {
            "id": user["id"],
            "email": user["email"],
            "name": user["name"],
            "profileImagePath": "",
            "avatarColor": "orange",
            "profileChangedAt": stamp,
            "storageLabel": "admin" if user["is_admin"] else None,
            "shouldChangePassword": bool(user["is_admin"]),
            "isAdmin": bool(user["is_admin"]),
            "createdAt": stamp,
            "deletedAt": None,
            "updatedAt": stamp,
            "oauthId": "",
            "quotaSizeInBytes": None,
            "quotaUsageInBytes": 0,
            "status": "active",
            "license": None,
        }

    def visible(self, user: dict[str, Any], asset_id: str) -> FakeAsset | None:
        """The asset if the user may read it: their own, or a partner's (whether or not the partner
        is in their timeline); never a locked one (that needs a PIN-unlocked session), never one
        being force-deleted."""
        asset = self.assets.get(asset_id)
        if asset is None or asset.purge_at is not None or asset.visibility == "locked":
            return None
        if asset.owner == user["id"] or (asset.owner, user["id"]) in self.partners:
            return asset
        return None

    def listed_owners(self, user: dict[str, Any]) -> set[str]:
        """Whose assets a user's search lists: their own and their partners' shown in the timeline."""
        owners = {str(user["id"])}
        owners.update(owner for (owner, viewer), shown in self.partners.items() if viewer == user["id"] and shown)
        return owners

    def search(self, user: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _check_int(body, "page", 1, None)
            _check_int(body, "size", 1, 1000)
            updated_after = _check_datetime(body, "updatedAfter")
            taken_after = _check_datetime(body, "takenAfter")
            trashed_after = _check_datetime(body, "trashedAfter")
            if "visibility" in body:
                _check_enum(body["visibility"], "visibility", VISIBILITIES)
            person_ids = body.get("personIds") or []
            for person_id in person_ids:
                _check_uuid(person_id, "personIds")
            after_key = _cursor_key(body) if self.cursors else None
        except Invalid as problem:
            return 400, self.invalid_body(problem)
        if body.get("visibility") == "locked":
            return 401, self.error_body(401, "Elevated permission is required")
        size = int(body.get("size", 250))
        page = int(body.get("page", 1))
        if self.ignore_taken_after:
            taken_after = None
        if self.endless_listing:
            page, after_key = 1, None
        owners = self.listed_owners(user)
        visibilities = {body["visibility"]} if body.get("visibility") else self.listed_by_default
        # trashedAfter lists trashed assets even without withDeleted (only those: a live asset has no
        # deletedAt); trashing bumps updatedAt, which stands in for deletedAt here

        def wanted(a: FakeAsset) -> bool:
            if trashed_after is not None and not (a.is_trashed and a.updated_at >= trashed_after):
                return False
            return (
                a.owner in owners
                and a.visibility in visibilities
                and (body.get("withDeleted") or trashed_after is not None or not a.is_trashed)
                and (updated_after is None or a.updated_at >= updated_after)
                and (not body.get("type") or a.type == body["type"])
                and (not person_ids or any(f["person"] and f["person"]["id"] in person_ids for f in a.faces))
            )

        if self.new_ids_for_pages:
            with self.lock:
                template = next(iter(self.assets.values()))
                self.phantom_pages += 1
                phantoms = [replace(template, id=str(uuid.uuid4())) for _ in range(size)]
                more = self.phantom_pages < self.new_ids_for_pages
                dtos = [self.asset_dto(a) for a in phantoms]
            return 200, {
                "albums": {"total": 0, "count": 0, "items": [], "facets": []},
                "assets": {
                    "total": size,
                    "count": size,
                    "items": dtos,
                    "facets": [],
                    "nextPage": str(page + 1) if more else None,
                }
                | ({"nextCursor": _cursor_of(phantoms[-1]) if more else None} if self.cursors else {}),
            }
        start = 0 if after_key else (page - 1) * size
        with self.lock:
            # Assets kept sorted by (fileCreatedAt, id) as Immich orders them; takenAfter and a key
            # cursor (what comes after the last asset of the page before) are bisections, so paging a
            # large library stays fast.
            if self._order is None:
                self._order = sorted((a.file_created_at, a.id) for a in self.assets.values())
            low = bisect.bisect_left(self._order, (taken_after,)) if taken_after else 0
            # 3.2 orders by `orderBy` (its direction defaulting to descending) and still reads the
            # deprecated `order` when no orderBy is given; earlier versions drop orderBy unread.
            order_by = body.get("orderBy") if self.cursors and isinstance(body.get("orderBy"), dict) else None
            direction = order_by.get("direction", "desc") if order_by is not None else body.get("order", "desc")
            if direction == "asc":
                low = max(low, bisect.bisect_right(self._order, after_key)) if after_key else low
                in_order = self._order[low:]
            else:
                high = bisect.bisect_left(self._order, after_key) if after_key else len(self._order)
                in_order = self._order[low:high][::-1]
            matches: list[FakeAsset] = []
            for _, asset_id in in_order:
                asset = self.assets.get(asset_id)
                if asset is not None and wanted(asset):
                    matches.append(asset)
                    if len(matches) > start + size:
                        break
            chunk = matches[start : start + size]
            more = len(matches) > start + size
            dtos = [self.asset_dto(a, with_people=bool(body.get("withPeople"))) for a in chunk]
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
            }
            | (
                {"nextCursor": _cursor_of(chunk[-1]) if chunk and (more or self.endless_listing) else None}
                if self.cursors
                else {}
            ),
        }

    def asset_statistics(self, user: dict[str, Any], query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /assets/statistics: the user's own assets (never a partner's), outside the trash
        unless isTrashed=true, of the default visibilities (timeline and archive: hidden and locked
        left out) unless `visibility` names one, counted by type."""
        visibility = (query.get("visibility") or [None])[0]
        try:
            if visibility is not None:
                _check_enum(visibility, "visibility", VISIBILITIES)
        except Invalid as problem:
            return 400, self.invalid_body(problem)
        trashed = (query.get("isTrashed") or ["false"])[0] == "true"
        visibilities = {visibility} if visibility else {"timeline", "archive"}
        with self.lock:
            counted = [
                a
                for a in self.assets.values()
                if a.owner == user["id"] and a.visibility in visibilities and a.is_trashed == trashed
            ]
        images = sum(1 for a in counted if a.type == "IMAGE")
        videos = sum(1 for a in counted if a.type == "VIDEO")
        return 200, {"images": images, "videos": videos, "total": len(counted)}

    def search_statistics(self, user: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        """POST /search/statistics: how many assets the same search lists (its owners, partners shown
        in the timeline included, and its default visibilities), outside the trash (the statistics
        search has no withDeleted)."""
        try:
            if "visibility" in body:
                _check_enum(body["visibility"], "visibility", VISIBILITIES)
        except Invalid as problem:
            return 400, self.invalid_body(problem)
        owners = self.listed_owners(user)
        visibilities = {body["visibility"]} if body.get("visibility") else self.listed_by_default
        with self.lock:
            total = sum(
                1
                for a in self.assets.values()
                if a.owner in owners and a.visibility in visibilities and not a.is_trashed
            )
        return 200, {"total": total}

    def partner_list(self, user: dict[str, Any], query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /partners?direction=shared-with: the users who share their library with this one, each
        with this user's inTimeline choice; shared-by: those this user shares with."""
        direction = (query.get("direction") or [None])[0]
        try:
            _check_enum(direction, "direction", ["shared-by", "shared-with"])
        except Invalid as problem:
            return 400, self.invalid_body(problem)
        with self.lock:
            pairs = [
                (owner if direction == "shared-with" else viewer, shown)
                for (owner, viewer), shown in self.partners.items()
                if (viewer if direction == "shared-with" else owner) == user["id"]
            ]
            people = [(self.user_of(other), shown) for other, shown in pairs]
        return 200, [
            {
                "id": other["id"],
                "email": other["email"],
                "name": other["name"],
                "profileImagePath": "",
                "avatarColor": "yellow",
                "profileChangedAt": iso_micro(datetime(2024, 1, 1, tzinfo=UTC)),
                "inTimeline": shown,
            }
            for other, shown in people
        ]

    def faces_of(self, asset: FakeAsset) -> list[dict[str, Any]]:
        return [
            {
                "id": face["id"],
                "boundingBoxX1": face["x1"],
                "boundingBoxY1": face["y1"],
                "boundingBoxX2": face["x2"],
                "boundingBoxY2": face["y2"],
                "imageWidth": face["image_width"],
                "imageHeight": face["image_height"],
                "sourceType": face["source_type"],
                "person": face["person"],
            }
            for face in asset.faces
        ]

    def preview(self, asset: FakeAsset, *, size: int = 1440, format: str = "JPEG") -> bytes:
        if asset.preview_data is not None:
            return asset.preview_data
        key = f"{asset.id}/{size}/{format}"
        if key not in self._previews:
            try:
                with Image.open(io.BytesIO(asset.data)) as image:
                    upright = ImageOps.exif_transpose(image).convert("RGB")
                    upright.thumbnail((size, size))
                    buffer = io.BytesIO()
                    upright.save(buffer, format=format, quality=90)
                    self._previews[key] = buffer.getvalue()
            except Exception:
                self._previews[key] = b""
        return self._previews[key]


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
        with self.server_fake.lock:
            self.server_fake.connections += 1

    def finish(self) -> None:
        super().finish()
        with self.server_fake.lock:
            self.server_fake.connections_closed += 1

    def date_time_string(self, timestamp: float | None = None) -> str:
        moment = self.server_fake.now() + self.server_fake.date_offset
        return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")

    def version_string(self) -> str:
        return ""

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        self.send_header("X-Powered-By", "Express")
        seconds = self.server_fake.keepalive_seconds
        self.send_header("Keep-Alive", f"timeout={seconds:g}")

    # -- helpers ----------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any, template: str, headers: dict[str, str] | None = None) -> None:
        fake = self.server_fake
        with fake.lock:
            fake.json_answers.append((self.command, template, status, body))
        data = json.dumps(body, separators=(",", ":")).encode()  # compact, as Node writes it
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_bytes(self, data: bytes, mime: str, file_name: str = "") -> None:
        self.send_response(200)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(data)))
        if file_name:
            self.send_header("Content-Disposition", f"inline; filename*=UTF-8''{file_name}")
            self.send_header("Cache-Control", "private, max-age=86400, no-transform")
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
            self.send_header("Content-Length", str(fault.declared_bytes))
            self.end_headers()
            try:
                for _ in range(fault.declared_bytes):
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

    def _user(self, template: str) -> dict[str, Any] | None:
        """Authenticate (x-api-key, or a login token as Bearer), then check the key's permission
        scope for the route: Immich answers 401, then 403, before it validates anything."""
        fake = self.server_fake
        key = self.headers.get("x-api-key")
        bearer = self.headers.get("authorization", "")
        user = fake.users.get(key or "")
        message = "Invalid API key" if key else "Authentication required"
        if not key and bearer.lower().startswith("bearer "):
            session_key = fake.sessions.get(bearer[7:].strip())
            user = fake.users.get(session_key or "")
            message = "Invalid user token"
        self._record(user)  # before answering: a client that has its answer may count at once
        if user is None:
            self._error(401, message, template)
            return None
        needed = PERMISSIONS.get(template)
        if needed and "all" not in user["permissions"] and needed not in user["permissions"]:
            self._error(403, f"Missing required permission: {needed}", template)
            return None
        return user

    def _record(self, user: dict[str, Any] | None) -> None:
        fake = self.server_fake
        with fake.lock:
            fake.requests.append((self.command, urlsplit(self.path).path, user["name"] if user else ""))

    def _invalid(self, problem: Invalid, template: str) -> None:
        self._send_json(400, self.server_fake.invalid_body(problem), template)

    def _about_asset(self, template: str, asset_id: str | None, answer: Callable[[FakeAsset], Any]) -> None:
        """A JSON endpoint about one asset: the id must be a v4 uuid (400 Validation failed), then
        400 with the access-check message when the key's user cannot see it (missing, another
        user's), as Immich answers."""
        fake = self.server_fake
        user = self._user(template)
        if not user:
            return
        try:
            _check_uuid(asset_id, "id")
        except Invalid as problem:
            return self._invalid(problem, template)
        with fake.lock:
            asset = fake.visible(user, str(asset_id))
            body = answer(asset) if asset else None
        if body is None:
            return self._error(400, "Not found or no asset.read access", template)
        self._send_json(200, body, template)

    def _media(self, asset_id: str, what: str, query: dict[str, list[str]]) -> None:
        """/assets/{id}/original and /thumbnail."""
        fake = self.server_fake
        template = f"/assets/{{id}}/{what}"
        user = self._user(template)
        if not user:
            return
        try:
            _check_uuid(asset_id, "id")
            size = (query.get("size") or ["thumbnail"])[0]
            if what == "thumbnail":
                _check_enum(size, "size", THUMBNAIL_SIZES)
        except Invalid as problem:
            return self._invalid(problem, template)
        with fake.lock:
            asset = fake.visible(user, asset_id)
        stem = Path(asset.original_file_name).stem if asset else ""
        if what == "original":
            if asset is None:
                # /original answers 404 {"message": "Not Found"} for a missing asset, where the
                # JSON endpoints answer 400 (recorded-3.1.0/assets-original-random-uuid.json)
                return self._error(404, "Not Found", template)
            return self._send_bytes(asset.data, asset.mime, asset.original_file_name)
        if asset is None:
            return self._error(400, ACCESS_MESSAGES[template], template)
        if size in ("fullsize", "original") and asset.mime in ("image/jpeg", "image/png", "image/webp"):
            # a web format is its own full-size image: a redirect, relative, without the query
            body = b"Found. Redirecting to original?"
            self.send_response(302)
            self.send_header("Location", "original?")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if size == "thumbnail":
            data, mime, name = fake.preview(asset, size=250, format="WEBP"), "image/webp", f"{stem}_thumbnail.webp"
        else:
            data, mime, name = fake.preview(asset), "image/jpeg", f"{stem}_preview.jpeg"
        if not data:  # the asset exists, its preview file does not
            return self._error(404, "Asset media not found", template)
        return self._send_bytes(data, mime, name)

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        fake = self.server_fake
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if fake.slow_seconds:
            time.sleep(fake.slow_seconds)
        if fake.on_request is not None:
            fake.on_request(path)
        fake._purge()
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
            return self._about_asset("/faces", (query.get("id") or [None])[0], fake.faces_of)
        if path in ("/api/assets/statistics", "/api/partners"):
            template = path[4:]
            user = self._user(template)
            if user:
                answer = fake.asset_statistics if template == "/assets/statistics" else fake.partner_list
                self._send_json(*answer(user, query), template)
            return
        if path.startswith("/api/assets/") and path.count("/") == 3:
            return self._about_asset(
                "/assets/{id}", path.rsplit("/", 1)[1], lambda asset: fake.asset_dto(asset, full=True)
            )
        if path.startswith("/api/assets/") and path.count("/") == 4:
            _, _, _, asset_id, what = path.split("/")
            if what in ("original", "thumbnail"):
                return self._media(asset_id, what, query)
        self._record(None)
        if not path.startswith("/api/"):
            # outside /api an API-only build answers an empty page (a full install: the web app)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._error(404, f"Cannot GET {path}", path)

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server_fake
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake._purge()
        if self._fault():
            return
        if path == "/api/search/metadata":
            user = self._user("/search/metadata")
            if not user:
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._error(400, _node_json_error(raw), "/search/metadata")
            with fake.lock:
                fake.request_bodies.append(("/search/metadata", body))
                fake.search_calls += 1
                call = fake.search_calls
            if fake.on_search_page is not None:
                fake.on_search_page(call)
            status, answer = fake.search(user, body if isinstance(body, dict) else {})
            return self._send_json(status, answer, "/search/metadata")
        if path == "/api/search/statistics":
            user = self._user("/search/statistics")
            if not user:
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._error(400, _node_json_error(raw), "/search/statistics")
            with fake.lock:
                fake.request_bodies.append(("/search/statistics", body))
            status, answer = fake.search_statistics(user, body if isinstance(body, dict) else {})
            return self._send_json(status, answer, "/search/statistics")
        self._record(None)
        self._error(404, f"Cannot POST {path}", path)
