"""The Immich client against the fake server, in both API flavours, with faults."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import API_KEY, PHOTOS, requires_shared, wait_until
from facesyncd.config import ImmichSettings, Secret, SyncSettings
from facesyncd.errors import AssetGone, ImmichAuthError, ImmichError, ImmichUnreachable
from facesyncd.immich import ImmichClient, Listing, transport
from fake_immich import FakeImmich, Fault

FAST = SyncSettings(http_retries=4, retry_base_seconds=0.01, retry_max_seconds=0.05)
BASE = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["3.1.0", "2.7.5"])
def immich_version(request: pytest.FixtureRequest) -> str:
    return request.param


# The listing is what 3.2 changed (its own cursor): those tests run against 3.2 too.
with_3_2 = pytest.mark.parametrize("immich_version", ["3.1.0", "2.7.5", "3.2.0"])


def client_for(fake: FakeImmich, *, key: str = API_KEY, sync: SyncSettings = FAST, timeout: float = 5) -> ImmichClient:
    settings = ImmichSettings(name="alice", url=fake.url, api_key=Secret(key), timeout_seconds=timeout)
    return ImmichClient(settings, sync, sleep=lambda _: None)


def add_blank(
    fake: FakeImmich, count: int, *, start: datetime = BASE, step: timedelta = timedelta(minutes=1)
) -> list[str]:
    return [
        fake.add_asset("alice", f"not really a photo {i}".encode(), f"blank{i}.jpg", taken=start + step * i)
        for i in range(count)
    ]


def listed(client: ImmichClient, updated_after: str | None = None, page_size: int = 10) -> list[str]:
    return [asset.id for asset in listing(client, updated_after, page_size)[0]]


def listing(client: ImmichClient, updated_after: str | None = None, page_size: int = 10) -> tuple[list, Listing]:
    """Every asset listed, in order, and the listing (what it learned)."""
    result = client.list_changed(updated_after, page_size)
    return [asset for page in result.pages() for asset in page], result


@with_3_2
def test_lists_every_asset_once_across_pages(fake: FakeImmich) -> None:
    ids = add_blank(fake, 35)
    with client_for(fake) as client:
        assert sorted(listed(client)) == sorted(ids)
        assert len(listed(client)) == 35


@with_3_2
def test_no_asset_is_lost_when_the_server_changes_between_pages(fake: FakeImmich) -> None:
    """Offset paging would skip one asset per deletion in pages already read; keyset paging does not."""
    ids = add_blank(fake, 40)
    added: list[str] = []

    def mutate(call: int) -> None:
        if call in (2, 3):
            fake.delete(ids[call])  # an asset from a page already answered
            fake.trash(ids[call + 10])  # one from the page being read
        if call == 4:
            added.extend(add_blank(fake, 1, start=BASE - timedelta(days=1)))  # sorts before everything

    fake.on_search_page = mutate
    with client_for(fake) as client:
        seen = listed(client)
    gone = {ids[2], ids[3]}
    survivors = set(ids) - gone
    assert survivors <= set(seen), f"lost: {survivors - set(seen)}"
    assert len(seen) == len(set(seen))


@with_3_2
def test_many_assets_sharing_one_instant_are_all_listed(fake: FakeImmich) -> None:
    ids = add_blank(fake, 25, step=timedelta(0)) + add_blank(fake, 5, start=BASE + timedelta(hours=1))
    with client_for(fake) as client:
        seen = listed(client, page_size=10)
    assert sorted(seen) == sorted(ids)


@with_3_2
def test_updated_after_filters_and_trashed_assets_are_reported(fake: FakeImmich) -> None:
    ids = add_blank(fake, 5)
    mark = (fake.now() + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    fake.clock_offset = timedelta(seconds=2)
    fake.touch(ids[0])
    fake.trash(ids[1])
    with client_for(fake) as client:
        assets = {asset.id: asset for asset in listing(client, mark)[0]}
    assert set(assets) == {ids[0], ids[1]}
    assert assets[ids[1]].is_trashed and not assets[ids[0]].is_trashed


@pytest.mark.parametrize(
    "fault",
    [
        dict(kind="status", status=500, times=2),
        dict(kind="status", status=502),
        dict(kind="status", status=503, times=3),
        dict(kind="status", status=429, retry_after="0", times=2),
        dict(kind="status", status=429, times=1),
        dict(kind="reset", times=2),
        dict(kind="truncate", path_contains="/original", times=2),
    ],
    ids=["500x2", "502", "503x3", "429-retry-after", "429", "reset", "truncated-body"],
)
@requires_shared
def test_transient_faults_are_retried(fake: FakeImmich, fault: dict, tmp_path: Path) -> None:
    photo = PHOTOS / "wild" / "obama" / "obama.jpg"
    asset_id = fake.add_file("alice", photo)
    fake.faults.append(Fault(**fault))
    with client_for(fake) as client:
        assert listed(client) == [asset_id]
        download = client.download_original(asset_id, tmp_path, 50_000_000)
    assert download.path.read_bytes() == photo.read_bytes()
    assert not fake.faults, "the fault was never triggered"


def test_timeouts_are_retried(fake: FakeImmich) -> None:
    ids = add_blank(fake, 2)
    fake.faults.append(Fault("timeout", path_contains="/search"))
    with client_for(fake, timeout=0.5) as client:
        assert sorted(listed(client)) == sorted(ids)


def test_retries_are_bounded(fake: FakeImmich) -> None:
    add_blank(fake, 1)
    fake.faults.append(Fault("status", status=503, times=100))
    with client_for(fake) as client, pytest.raises(ImmichUnreachable, match="failed 5 times: 503"):
        listed(client)
    assert fake.count("POST", "/api/search/metadata") == 5


def test_wrong_key_is_an_auth_error_that_never_shows_the_key(
    fake: FakeImmich, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrong-key-do-not-print-me-42"
    caplog.set_level(logging.DEBUG)
    with client_for(fake, key=secret) as client, pytest.raises(ImmichAuthError) as raised:
        client.whoami()
    assert "401" in str(raised.value) and "rejected the API key" in str(raised.value)
    assert secret not in str(raised.value) and secret not in caplog.text
    assert fake.count("GET", "/api/users/me") == 1  # not retried


def test_dead_server_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ImmichSettings(name="alice", url=f"http://127.0.0.1:{port}", api_key=Secret("k"), timeout_seconds=1)
    with (
        ImmichClient(settings, FAST, sleep=lambda _: None) as client,
        pytest.raises(ImmichUnreachable, match="ConnectError"),
    ):
        client.whoami()


def test_missing_asset_is_gone_on_json_and_download_endpoints(fake: FakeImmich, tmp_path: Path) -> None:
    missing = "0b7f3c1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f"
    with client_for(fake) as client:
        with pytest.raises(AssetGone, match="400 Not found"):
            client.faces(missing)
        with pytest.raises(AssetGone, match="404"):
            client.download_original(missing, tmp_path, 1000)
    assert list(tmp_path.iterdir()) == []


def test_download_size_limit_leaves_no_file(fake: FakeImmich, tmp_path: Path) -> None:
    asset_id = fake.add_asset("alice", b"x" * 5000, "big.jpg")
    with client_for(fake) as client, pytest.raises(ImmichError, match="over the 1000-byte limit"):
        client.download_original(asset_id, tmp_path, 1000)
    assert list(tmp_path.iterdir()) == []


def test_download_hashes_while_streaming(fake: FakeImmich, tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * 10_000
    asset_id = fake.add_asset("alice", data, "blob.jpg")
    with client_for(fake) as client:
        download = client.download_original(asset_id, tmp_path, len(data))
    assert download.sha256 == hashlib.sha256(data).hexdigest() and download.size == len(data)


def test_other_users_assets_are_invisible(fake: FakeImmich) -> None:
    fake.add_user("bob", "bob-key")
    bobs = fake.add_asset("bob", b"bob's", "bob.jpg")
    alices = add_blank(fake, 1)
    with client_for(fake) as client:
        assert listed(client) == alices
        with pytest.raises(AssetGone):
            client.faces(bobs)


def test_error_bodies_of_both_flavours_are_read(fake: FakeImmich) -> None:
    fake.faults.append(Fault("status", status=400, path_contains="/users/me"))
    with client_for(fake) as client, pytest.raises(ImmichError, match="400 injected fault"):
        client.whoami()


@pytest.mark.parametrize(
    "fault",
    [
        dict(kind="status", status=500),
        dict(kind="status", status=429, retry_after="0"),
        dict(kind="reset"),
        dict(kind="truncate"),
        dict(kind="timeout"),
    ],
    ids=["500", "429", "reset", "truncated-body", "timeout"],
)
def test_faces_requests_survive_faults_on_the_quick_path(fake: FakeImmich, fault: dict) -> None:
    """Faces go through plain http.client first; any fault hands the request to httpx's retries."""
    box = dict(x1=5, y1=6, x2=55, y2=66, image_width=1440, image_height=960)
    asset_id = fake.add_asset("alice", b"x", "a.jpg", faces=[box])
    fake.faults.append(Fault(path_contains="/faces", **fault))
    with client_for(fake, timeout=0.5) as client:
        assert client.transport.has_quick_path
        faces = client.faces(asset_id)
        assert [(f.x1, f.y2, f.image_width) for f in faces] == [(5, 66, 1440)]
        assert not fake.faults, "the fault was never triggered"
        before = fake.count("GET", "/api/faces")
        assert client.faces(asset_id) == faces
        assert fake.count("GET", "/api/faces") == before + 1, "a clean answer takes one request"


def test_quick_path_only_for_plain_http_without_a_proxy(fake: FakeImmich, monkeypatch: pytest.MonkeyPatch) -> None:
    with client_for(fake) as client:
        assert client.transport.has_quick_path
    settings = ImmichSettings(name="alice", url="https://immich.example", api_key=Secret("k"))
    with ImmichClient(settings, FAST) as client:
        assert not client.transport.has_quick_path, "TLS stays with httpx"
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with client_for(fake) as client:
        assert not client.transport.has_quick_path, "proxies stay with httpx"


class _Capture:
    """A plain HTTP server on another loopback address: what an attacker's host would receive."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                received.append({key.lower(): value for key, value in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("elsewhere", ["another-host", "another-port", "another-scheme"])
def test_the_api_key_never_follows_a_redirect_to_another_origin(
    fake: FakeImmich, tmp_path: Path, elsewhere: str
) -> None:
    """httpx strips only Authorization on a cross-origin redirect; x-api-key went along to 127.0.0.2."""
    capture = _Capture("127.0.0.2" if elsewhere == "another-host" else "127.0.0.1")
    try:
        location = {
            "another-host": f"{capture.url}/steal",
            "another-port": f"{capture.url}/steal",
            "another-scheme": fake.url.replace("http://", "https://") + "/api/users/me",
        }[elsewhere]
        asset_id = fake.add_asset("alice", b"photo bytes", "a.jpg")
        fake.faults.append(Fault("redirect", path_contains="/original", location=location, times=10))
        fake.faults.append(Fault("redirect", path_contains="/users/me", location=location, times=10))
        with client_for(fake) as client:
            with pytest.raises(ImmichError, match="redirected to another origin") as raised:
                client.download_original(asset_id, tmp_path, 1000)
            assert API_KEY not in str(raised.value)
            with pytest.raises(ImmichError, match="redirected to another origin"):
                client.whoami()
        assert capture.received == [], "a request went to another origin"
        assert list(tmp_path.iterdir()) == []
    finally:
        capture.close()


def test_a_redirect_within_the_server_is_followed_with_the_key(fake: FakeImmich, tmp_path: Path) -> None:
    """Immich itself redirects thumbnail?size=fullsize to a relative `original?`: same origin, followed."""
    asset_id = fake.add_asset("alice", b"photo bytes", "a.jpg")
    fake.faults.append(Fault("redirect", path_contains=f"{asset_id}/original", location="original?moved=1"))
    with client_for(fake) as client:
        download = client.download_original(asset_id, tmp_path, 1000)
    assert download.path.read_bytes() == b"photo bytes"
    assert fake.count("GET", f"/api/assets/{asset_id}/original") == 2


def test_a_redirect_loop_is_a_server_fault(fake: FakeImmich) -> None:
    fake.faults.append(Fault("redirect", path_contains="/users/me", location="/api/users/me", times=1000))
    with client_for(fake) as client, pytest.raises(ImmichUnreachable, match="redirect loop"):
        client.whoami()


@pytest.mark.parametrize("kind", ["html", "empty", "invalid-json", "nested-json"])
def test_garbled_answers_are_retried_as_server_faults(fake: FakeImmich, kind: str) -> None:
    """A web page with status 200, an empty 200, broken JSON, JSON nested past Python's recursion
    limit: each escaped the handlers (DecodingError, RecursionError) and ended in a traceback."""
    ids = add_blank(fake, 3)
    fake.faults.append(Fault(kind, path_contains="/search", times=2))
    with client_for(fake) as client:
        assert sorted(listed(client)) == sorted(ids)
    fake.faults.append(Fault(kind, path_contains="/users/me", times=100))
    with client_for(fake) as client, pytest.raises(ImmichUnreachable, match="failed 5 times"):
        client.whoami()


def test_a_trickling_download_ends_at_a_deadline_that_scales_with_its_size(fake: FakeImmich, tmp_path: Path) -> None:
    """A body sent a byte every 0.3 s (1,000 bytes: 5 minutes) never trips a 1 s read timeout; it used
    to run for ever. Only the deadline (2 s plus the size at the slowest rate) says "too slow"."""
    asset_id = fake.add_asset("alice", b"x" * 100, "a.jpg")
    fake.faults.append(Fault("trickle", path_contains=f"{asset_id}/original", trickle_seconds=0.3, times=100))
    sync = SyncSettings(http_retries=1, retry_base_seconds=0.01, retry_max_seconds=0.05)
    with client_for(fake, sync=sync, timeout=1) as client, pytest.raises(ImmichError, match="too slow"):
        client.download_original(asset_id, tmp_path, 10_000)
    assert list(tmp_path.iterdir()) == []


def test_a_download_that_declares_a_gigabyte_and_trickles_ends_once_and_fast(fake: FakeImmich, tmp_path: Path) -> None:
    """The deadline grew with the declared size: 1 GB at a byte per 0.2 s had about 8.5 hours per
    attempt, and 6 attempts, while the assets after it waited. Now the rate is checked against what
    arrived, and a body too slow is the asset's problem: one attempt, then the cycle goes on."""
    import threading

    asset_id = fake.add_asset("alice", b"x" * 100, "a.jpg")
    fault = Fault("trickle", path_contains=f"{asset_id}/original", trickle_seconds=0.2, times=100)
    fake.faults.append(replace(fault, declared_bytes=10**9))
    sync = SyncSettings(http_retries=5, retry_base_seconds=0.01, retry_max_seconds=0.05)
    raised: list[BaseException] = []

    def download() -> None:
        with client_for(fake, sync=sync, timeout=1) as client:
            try:
                client.download_original(asset_id, tmp_path, 2 * 10**9)
            except BaseException as error:
                raised.append(error)

    worker = threading.Thread(target=download, daemon=True)
    worker.start()
    wait_until(lambda: not worker.is_alive(), "the download ends (at the old deadline: hours)")
    assert len(raised) == 1 and isinstance(raised[0], ImmichError) and "too slow" in str(raised[0]), raised
    assert fake.count("GET", f"/api/assets/{asset_id}/original") == 1, "a body too slow is not asked for again"
    assert list(tmp_path.iterdir()) == []


def test_a_stop_breaks_off_a_request_blocked_in_a_read(fake: FakeImmich, tmp_path: Path) -> None:
    """close() from another thread shuts the sockets down: a read waiting for a silent server (silent
    for 15 minutes, read with a 10-minute timeout) returns at once instead of at its timeout."""
    import threading

    from facesyncd.errors import Interrupted

    asset_id = fake.add_asset("alice", b"x" * 100, "a.jpg")
    fake.timeout_fault_seconds = 900
    fake.faults.append(Fault("timeout", path_contains=f"{asset_id}/original", times=100))
    stop = threading.Event()
    settings = ImmichSettings(name="alice", url=fake.url, api_key=Secret(API_KEY), timeout_seconds=600)
    client = ImmichClient(settings, FAST, stop=stop)
    raised: list[BaseException] = []

    def download() -> None:
        try:
            client.download_original(asset_id, tmp_path, 10_000)
        except BaseException as error:
            raised.append(error)

    worker = threading.Thread(target=download, daemon=True)
    worker.start()
    wait_until(lambda: fake.count("GET", f"/api/assets/{asset_id}/original"), "the download reaches the server")
    stop.set()
    client.close()
    wait_until(lambda: not worker.is_alive(), "the download is broken off (its own timeout is 10 minutes)")
    assert len(raised) == 1 and isinstance(raised[0], Interrupted), raised


@with_3_2
def test_a_server_that_ignores_taken_after_is_paged_by_offset(
    fake: FakeImmich, caplog: pytest.LogCaptureFixture
) -> None:
    """Immich drops unknown fields silently: a server without takenAfter answered the first page again
    and again, 500 listing requests a second, for ever."""
    ids = add_blank(fake, 35)
    fake.ignore_taken_after = True
    with client_for(fake) as client:
        assets, result = listing(client)
        seen = [asset.id for asset in assets]
        # 3.2 pages by its own cursor: takenAfter is not relied on there
        assert result.exact == fake.cursors
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)
    assert fake.count("POST", "/api/search/metadata") < 12
    assert ("paging by offset" in caplog.text) == (not fake.cursors)


@with_3_2
def test_a_listing_that_never_ends_is_stopped(fake: FakeImmich) -> None:
    add_blank(fake, 25)
    fake.endless_listing = True  # nextPage always set, the same first page every time
    with client_for(fake) as client, pytest.raises(ImmichUnreachable, match="does not advance"):
        listed(client)
    assert fake.count("POST", "/api/search/metadata") <= 12  # bounded: a few pages past the last new asset


@with_3_2
def test_listing_progress_checks_leave_a_normal_listing_alone(fake: FakeImmich) -> None:
    ids = add_blank(fake, 25, step=timedelta(0)) + add_blank(fake, 5, start=BASE + timedelta(hours=1))
    with client_for(fake) as client:
        assets, result = listing(client, page_size=10)
        assert sorted(asset.id for asset in assets) == sorted(ids)
        assert result.exact


@with_3_2
def test_immich_3_2_is_listed_by_its_own_cursor(fake: FakeImmich) -> None:
    """3.2 deprecates `page` for a cursor of its own; where the server hands one out, the listing
    follows it (and a deletion between pages still skips nothing)."""
    ids = add_blank(fake, 35)
    fake.on_search_page = lambda call: fake.delete(ids[call]) if call == 2 else None
    with client_for(fake) as client:
        seen = listed(client)
    assert set(ids) - {ids[2]} <= set(seen) and len(seen) == len(set(seen))
    bodies = [body for template, body in fake.request_bodies if template == "/search/metadata"]
    if fake.cursors:
        assert "cursor" not in bodies[0] and all("cursor" in b and "page" not in b for b in bodies[1:])
        assert len(bodies) == 4  # 35 assets, 10 a page
    else:
        assert not any("cursor" in body for body in bodies)


@with_3_2
def test_a_server_known_to_page_by_cursor_is_sent_only_what_3_2_documents(fake: FakeImmich) -> None:
    """The first request of a listing sent `page` and `order` (deprecated in 3.2) to learn the
    version; once a server has paged by its cursor, the next listing sends neither. A server that
    went back to an older version is listed in full all the same."""
    ids = add_blank(fake, 35)
    with client_for(fake) as client:
        result = client.list_changed(None, 10, cursor_first=True)
        seen = [asset.id for page in result.pages() for asset in page]
    assert sorted(seen) == sorted(ids) and result.exact
    bodies = [body for template, body in fake.request_bodies if template == "/search/metadata"]
    if fake.cursors:
        assert result.offers_cursor is True and len(bodies) == 4
        assert all("page" not in body and "order" not in body for body in bodies)
        assert all(body["orderBy"] == {"field": "fileCreatedAt", "direction": "asc"} for body in bodies)
    else:
        assert result.offers_cursor is False and "page" not in bodies[0]
        assert all(body["page"] and body["order"] == "asc" for body in bodies[1:])
        # that first request was 3.2's, sent to an older server once (it drops orderBy unread): the
        # traffic check at the end holds every other request to this version's spec
        fake.request_bodies.remove(("/search/metadata", bodies[0]))


@pytest.mark.parametrize("immich_version", ["3.2.0"])
def test_a_cursor_that_brings_nothing_new_is_stopped(fake: FakeImmich) -> None:
    add_blank(fake, 25)
    fake.endless_listing = True  # the same first page, and a cursor, every time
    with client_for(fake) as client, pytest.raises(ImmichUnreachable, match="does not advance"):
        listed(client)
    assert fake.count("POST", "/api/search/metadata") == 2


def test_a_missing_asset_is_confirmed_by_asking_for_it(fake: FakeImmich) -> None:
    asset_id = add_blank(fake, 1)[0]
    with client_for(fake) as client:
        assert client.asset(asset_id).id == asset_id
        fake.trash(asset_id)
        assert client.asset(asset_id).is_trashed
        fake.delete(asset_id)
        with pytest.raises(AssetGone, match="400"):
            client.asset(asset_id)


def test_a_connection_the_server_closed_while_idle_is_retried_not_reported(
    fake: FakeImmich, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Immich closes keep-alive connections idle for 5 s (here 0.3 s). Even a connection reused
    after that (the client's own limit set high here) gets its answer: the request is sent again on
    a fresh connection, without a fallback, a failure or a backoff."""
    fake.stop()
    fake.keepalive_seconds = 0.3
    fake.start()
    monkeypatch.setattr(transport, "KEEPALIVE_REUSE_SECONDS", 60.0)
    box = {"x1": 1, "y1": 1, "x2": 40, "y2": 40, "image_width": 100, "image_height": 100}
    asset_id = fake.add_asset("alice", b"x", "a.jpg", faces=[box])
    with client_for(fake) as client:
        if not client.transport.has_quick_path:
            pytest.skip("the quick path needs plain HTTP without a proxy")
        assert len(client.faces(asset_id)) == 1
        wait_until(lambda: fake.connections_closed >= fake.connections, "the server closes the idle connection")

        def no_fallback(*args: object, **kwargs: object) -> None:
            raise AssertionError("the quick request failed and fell back to httpx")

        monkeypatch.setattr(client.transport, "json", no_fallback)
        assert len(client.faces(asset_id)) == 1
    assert fake.connections >= 2


def test_a_request_that_stalls_is_logged_at_info(
    fake: FakeImmich, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    add_blank(fake, 1)
    caplog.set_level(logging.INFO, logger="facesyncd.immich")
    fake.faults.append(Fault("status", path_contains="/search/metadata", status=503))
    with client_for(fake) as client:
        listed(client)  # one quick retry: a detail, not an INFO line
        assert not [r for r in caplog.records if r.levelno >= logging.INFO and "retry" in r.getMessage()]
        monkeypatch.setattr(transport, "STALL_LOG_SECONDS", 0.0)  # every retry now counts as a stall
        fake.faults.append(Fault("status", path_contains="/search/metadata", status=503))
        listed(client)
    stalls = [r for r in caplog.records if r.levelno == logging.INFO and "retry" in r.getMessage()]
    assert stalls and "503" in stalls[0].getMessage()


def test_a_key_without_a_scope_is_told_which_one(fake: FakeImmich) -> None:
    """Immich answers 403 "Missing required permission: X" (before validating anything); the error
    names X and every scope facesyncd needs."""
    fake.add_user("alice", "read-only-key-0123456789", permissions=("asset.read",))
    with client_for(fake, key="read-only-key-0123456789") as client, pytest.raises(ImmichAuthError) as error:
        client.whoami()
    message = str(error.value)
    assert "403: Missing required permission: user.read" in message
    assert "asset.read, asset.view, asset.download, face.read, user.read" in message
    assert "read-only-key" not in message


@pytest.mark.parametrize("immich_version", ["3.2.0"])
def test_immich_3_2_is_sent_what_it_documents(fake: FakeImmich) -> None:
    """3.2 deprecates `page` and `order` on /search/metadata for its cursor and `orderBy` (whose
    direction defaults to descending): once the server shows it pages by cursor (its first answer),
    only what 3.2 documents is sent."""
    ids = add_blank(fake, 35)
    with client_for(fake) as client:
        assert listed(client, page_size=10) == ids  # oldest first, as asked
    bodies = [body for template, body in fake.request_bodies if template == "/search/metadata"]
    assert len(bodies) == 4
    assert bodies[0]["page"] == 1 and bodies[0]["order"] == "asc" and "cursor" not in bodies[0]
    for body in bodies[1:]:
        assert body["orderBy"] == {"field": "fileCreatedAt", "direction": "asc"} and body["cursor"]
        assert "page" not in body and "order" not in body
