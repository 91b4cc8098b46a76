"""The fake Immich answers as the real one: every recorded answer of a real Immich 3.1.0
(`../shared/immich/recorded-3.1.0/`) about an endpoint facesyncd uses is asked of the fake again, in
the same state of the library, and the answers are compared: status, the headers that matter
(content type, location, keep-alive), error bodies word for word, and the shape of JSON bodies
(keys, types, date formats, which items a listing holds: own or a partner's, trashed, archived)."""

from __future__ import annotations

import http.client
import io
import json
import re
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from PIL import Image

from conftest import SHARED
from fake_immich import FakeImmich

RECORDED = SHARED / "immich" / "recorded-3.1.0"
ADMIN = "207bd4e9-75be-428b-a2f7-e37b434876e4"
BOB = "db2bedb3-6fc1-44b1-89aa-fe8dc3ad0700"
KEYS = {"admin": "admin-key", "bob": "bob-key", "bob-asset-read": "bob-read-key", "wrong-key": "w" * 43}
# The routes facesyncd calls; a recorded case about any other route (uploads, people, partners,
# trash restore, API keys, server/about) only set up the library for the others.
USED = re.compile(r"^/api/(server/(version|ping)|users/me|search/metadata|faces|assets/[^/]+(/original|/thumbnail)?)$")
NOT_USED = {
    "api-keys-create-asset-read-only", "assets-delete-force", "assets-delete-force-two", "assets-delete-trash",
    "assets-update-visibility-archive", "assets-upload-created", "assets-upload-duplicate", "faces-create",
    "faces-create-missing-fields", "faces-create-random-person", "partners-update-in-timeline-false",
    "partners-update-in-timeline-true", "people-create", "people-delete", "people-list", "server-about",
    "server-about-bob", "trash-restore-assets",
}  # fmt: skip
NEW_UPLOAD, ARCHIVED, FACE_ASSET = (
    "9cc064a7-21fd-48f2-a02b-681e04cb16fb",
    "825d4d56-4f33-470e-8fc9-0a28615ae5f0",
    "67b16eed-f4e2-4601-91a3-dde5a165848b",
)
# The assets the cases name; the others get low ids, so that these head the listing as they did.
NAMED_ADMIN = [
    "f09ff9e7-c0fe-4cfd-a888-e50e13b5c9e0",
    "c72cdabc-5832-458b-a052-833846b7a9c1",
    "4f17eec1-6a4b-4c0f-8d3e-1f2a3b4c5d6e",
    "ffc1c143-427b-4a36-b4de-ce9fcf121d9f",
]
NAMED_BOB = ["eb2808ae-0c65-4cea-821f-34c4dfa51453", "d61fe804-0c65-4cea-821f-34c4dfa51453"]
PARTNER_ASSET = NAMED_BOB[0]
SMALL_FACE = "d645da83-9128-4b9a-9b2b-36f981244232"

pytestmark = pytest.mark.skipif(not RECORDED.is_dir(), reason=f"recorded Immich answers not found at {RECORDED}")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def cases() -> list[str]:
    return sorted(path.stem for path in RECORDED.glob("*.json")) if RECORDED.is_dir() else []


def used_cases() -> list[str]:
    return [name for name in cases() if name not in NOT_USED]


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (150, 150), (120, 90, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


def library(name: str) -> FakeImmich:
    """The recorded library (admin 402 assets, bob 11, bob shares with admin, one person with
    hand-made faces), in the state the case was recorded in."""
    fake = FakeImmich(version="3.1.0")
    fake.add_user("Admin", KEYS["admin"], user_id=ADMIN, is_admin=True)
    fake.add_user("Bob", KEYS["bob"], user_id=BOB)
    fake.add_user("Bob", KEYS["bob-asset-read"], permissions=("asset.read",))
    fake.share("Bob", "Admin", in_timeline=name.endswith("partner-in-timeline"))
    person = fake.add_person("Admin", "SmallFace", person_id=SMALL_FACE)
    data, base_time = jpeg(), at("2026-11-30T16:20:00.000Z")
    for number in range(402):
        asset_id = NAMED_ADMIN[number] if number < len(NAMED_ADMIN) else f"{number:08x}-0000-4000-8000-000000000000"
        # ffc1c143 heads the older half of the library (page 2 of the recordings)
        taken = at("2020-06-01T00:00:00Z") if number < 200 and number != 3 else at("2019-01-01T00:00:00Z")
        made = fake.add_asset("Admin", data, f"admin_{number}.jpg", taken=taken, asset_id=asset_id)
        # five assets were changed after 16:20:05.560 (the updatedAfter cases)
        fake.assets[made].updated_at = base_time + timedelta(seconds=6 if number < 5 else 0)
    for number in range(11):
        asset_id = NAMED_BOB[number] if number < len(NAMED_BOB) else f"{number:08x}-1111-4000-8000-000000000000"
        made = fake.add_asset("Bob", data, f"bob_{number}.jpg", taken=at("2020-06-01T00:00:00Z"), asset_id=asset_id)
        fake.assets[made].updated_at = base_time
    for asset_id in NAMED_ADMIN[:3]:  # hand-made faces of SmallFace on three assets, two on c72cdabc
        for low, high in ((5, 20), (100, 125)) if asset_id.startswith("c72") else ((5, 20),):
            face = {"x1": low, "y1": low, "x2": high, "y2": high, "image_width": 150, "image_height": 150}
            fake.add_face(asset_id, face, person)

    def upload(asset_id: str, taken: str, changed: str, **kw: Any) -> None:
        fake.add_asset("Admin", data, f"{asset_id[:8]}.jpg", taken=at(taken), asset_id=asset_id, **kw)
        fake.assets[asset_id].updated_at = at(changed)

    if name in ("search-metadata-default-with-archived", "search-metadata-visibility-archive",
                "search-metadata-visibility-timeline", "search-metadata-updated-after-archive"):  # fmt: skip
        upload(ARCHIVED, "2021-02-01T00:00:00Z", "2026-11-30T16:36:59.000Z", visibility="archive")
        upload(FACE_ASSET, "2021-01-01T00:00:00Z", "2026-11-30T16:36:50.000Z")
    trashed = ("search-metadata-with-deleted", "search-metadata-trashed-after", "search-metadata-updated-after-trash",
               "search-metadata-without-deleted-after-trash", "assets-get-trashed", "assets-original-trashed",
               "faces-trashed-asset", "assets-thumbnail-preview-trashed")  # fmt: skip
    if name in trashed or name.startswith("search-metadata-updated-after-trash"):
        upload(NEW_UPLOAD, "2021-03-01T10:00:00Z", "2026-11-30T16:36:18.500Z")
        fake.assets[NEW_UPLOAD].is_trashed = True
    if name in ("search-metadata-after-restore", "assets-get-new-upload"):
        upload(NEW_UPLOAD, "2021-03-01T10:00:00Z", "2026-11-30T16:36:20.000Z")
    if name == "search-metadata-with-deleted-right-after-force-delete":
        upload(ARCHIVED, "2021-02-01T00:00:00Z", "2026-11-30T16:36:59.000Z", visibility="archive")
        upload(FACE_ASSET, "2021-01-01T00:00:00Z", "2026-11-30T16:36:50.000Z")
        for asset_id in (ARCHIVED, FACE_ASSET):
            fake.force_delete(asset_id)
            fake.assets[asset_id].updated_at = at("2026-11-30T16:37:42.000Z")
    if name == "faces-after-create":
        upload(FACE_ASSET, "2021-01-01T00:00:00Z", "2026-11-30T16:36:50.000Z")
        face = {"x1": 10, "y1": 10, "x2": 50, "y2": 50, "image_width": 600, "image_height": 400}
        fake.add_face(FACE_ASSET, face, fake.add_person("Admin", "RecordedPerson"))
    return fake


def ask(fake: FakeImmich, request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in request["headers"].items() if k in ("content-type", "accept")}
    auth = request["auth"]
    if auth in KEYS:
        headers["x-api-key"] = KEYS[auth]
    elif auth == "empty-key":
        headers["x-api-key"] = ""
    elif auth == "wrong-bearer-token":
        headers["authorization"] = "Bearer not-a-session"
    body = request["body"]
    data = None
    if body is not None:
        data = body["raw"].encode() if isinstance(body, dict) and "raw" in body else json.dumps(body).encode()
    path = request["path"] + (f"?{urlencode(request['query'])}" if request["query"] else "")
    host, port = fake.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(request["method"], path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def date_kind(text: str) -> str:
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text):
        return "date-ms-Z"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", text):
        return "date-us-offset"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", text):
        return "date-offset"
    return "string"


def shape(value: Any) -> Any:
    """What must agree between a real and a fake answer: keys, types, date formats; a list by
    whether it is empty and the shape of its first item."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return ["empty"] if not value else ["items", shape(value[0])]
    if isinstance(value, str):
        return date_kind(value)
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number"


def listing(body: dict[str, Any], user: str) -> list[tuple[str, bool, str]]:
    own = ADMIN if user == "admin" else BOB
    return [
        ("own" if item["ownerId"] == own else "partner", item["isTrashed"], item["visibility"])
        for item in body["assets"]["items"][:3]
    ]


def test_every_recorded_case_is_replayed_or_named_as_not_used() -> None:
    recorded = {name: json.loads((RECORDED / f"{name}.json").read_text())["request"] for name in cases()}
    assert recorded, "no recorded cases"
    assert NOT_USED <= set(recorded)
    for name, request in recorded.items():
        uses = bool(USED.match(request["path"])) and request["method"] in ("GET", "POST")
        if name not in NOT_USED:
            assert uses or "error-" in name, f"{name}: not about an endpoint facesyncd uses; name it in NOT_USED"


@pytest.mark.parametrize("name", used_cases())
def test_the_fake_answers_as_the_real_server(name: str) -> None:
    case = json.loads((RECORDED / f"{name}.json").read_text())
    request, real = case["request"], case["response"]
    fake = library(name).start()
    try:
        status, headers, raw = ask(fake, request)
    finally:
        fake.stop()
    assert status == real["status"], f"{name}: {raw[:300]!r}"
    for header in ("content-type", "location", "keep-alive"):
        assert headers.get(header) == real["headers"].get(header), f"{name}: {header}"
    body = real["body"]
    if isinstance(body, dict) and body.get("binary"):
        assert raw, name
        return
    if isinstance(body, dict) and "text" in body:
        assert raw.decode() == body["text"]
        return
    if body is None:
        assert raw == b""
        return
    answer = json.loads(raw)
    if status >= 400:
        assert answer == body  # error bodies word for word, zod's issues included
        return
    if isinstance(body, dict) and "tags" in body:  # the recorded upload carried XMP tags; ours none
        answer["tags"] = body["tags"] = []
    assert shape(answer) == shape(body), name
    if isinstance(body, dict) and "assets" in body:
        assert listing(answer, request["auth"]) == listing(body, request["auth"]), name
        assert (answer["assets"]["nextPage"] is None) == (body["assets"]["nextPage"] is None), name
        if "truncated" not in case["note"]:
            assert answer["assets"]["count"] == body["assets"]["count"], name


def test_idle_connections_are_closed_as_immich_closes_them() -> None:
    """Immich closes a keep-alive connection idle for 5 s; the fake does too (here after 0.3 s)."""
    fake = FakeImmich()
    fake.keepalive_seconds = 0.3
    fake.add_user("Admin", KEYS["admin"])
    fake.start()
    try:
        host, port = fake.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("GET", "/api/server/ping")
        assert connection.getresponse().read() == b'{"res":"pong"}'
        time.sleep(0.8)
        connection.request("GET", "/api/server/ping")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            connection.getresponse()
    finally:
        fake.stop()
