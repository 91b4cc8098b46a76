"""Immich and its ML service over TLS: the fakes served over https with a certificate of a test
authority. A server's certificate is checked against the authorities httpx would trust (SSL_CERT_FILE,
else certifi's bundle) unless verify_tls = false; a certificate none of them vouches for is refused
at once, said as what it is, with what to do; and the TLS settings are made once per process, not
per client."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_immich_ml import FakeImmichMl

import facesyncd.immich_ml as immich_ml
from conftest import API_KEY, PHOTOS, TEST_PACK, requires_shared
from facesyncd.breakable import tls_context
from facesyncd.config import FaceSettings, ImmichSettings, ModelSettings, Secret, SyncSettings
from facesyncd.errors import EngineUnavailable, ImmichUnreachable
from facesyncd.imaging import decode_image
from facesyncd.immich import ImmichClient
from facesyncd.immich_ml import ImmichMlEmbedder
from fake_immich import FakeImmich

# Retries that would each be counted: a refused certificate must not be asked again.
RETRIES = SyncSettings(http_retries=3, retry_base_seconds=0.01, retry_max_seconds=0.05)


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate authority of the test's own (ca.pem) and a certificate it signed for 127.0.0.1
    (server.pem, server.key), made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate authority (Debian: apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=facesyncd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl("req", "-new", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return folder


@pytest.fixture
def fresh_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's TLS settings made afresh for the test, and after it (they read SSL_CERT_FILE
    when first made)."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    tls_context.cache_clear()
    yield
    tls_context.cache_clear()


def _served(authority: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(authority / "server.pem", authority / "server.key")
    return context


@pytest.fixture
def immich(authority: Path, fresh_tls: None) -> Iterator[FakeImmich]:
    """The fake Immich over TLS."""
    server = FakeImmich(tls=_served(authority))
    server.add_user("alice", API_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: FakeImmich, *, verify: bool = True) -> ImmichClient:
    settings = ImmichSettings(name="alice", url=server.url, api_key=Secret(API_KEY), verify_tls=verify)
    return ImmichClient(settings, RETRIES, sleep=lambda _: None)


def test_a_certificate_of_a_trusted_authority_is_taken_and_the_settings_are_made_once(
    immich: FakeImmich, authority: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SSL_CERT_FILE naming the authority (as httpx reads it), the server is answered; two
    clients, as two cycles open them, load the authorities once (0.036 CPU-s each time before)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(authority / "ca.pem"))
    made: list[object] = []
    real = httpx.create_ssl_context

    def counted(*arguments: object, **options: object) -> ssl.SSLContext:
        made.append(options.get("verify"))
        return real(*arguments, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    for _ in range(2):
        with _client(immich) as client:
            assert client.whoami().user_id
    assert made == [True]
    assert immich.url.startswith("https://") and immich.count("GET", "/api/users/me") == 2


def test_a_certificate_no_trusted_authority_vouches_for_is_refused_at_once_with_what_to_do(
    immich: FakeImmich,
) -> None:
    with _client(immich) as client:
        with pytest.raises(ImmichUnreachable) as raised:
            client.whoami()
        asked = client.transport.requests
    message = str(raised.value)
    assert "certificate" in message and "SSL_CERT_FILE" in message and "verify_tls = false" in message
    assert API_KEY not in message
    assert immich.count("GET", "/api/users/me") == 0  # the handshake failed: nothing was asked
    assert asked == 1  # not tried again: another try meets the same certificate


def test_verify_tls_false_takes_any_certificate(immich: FakeImmich) -> None:
    with _client(immich, verify=False) as client:
        assert client.whoami().user_id
    assert tls_context(False).verify_mode == ssl.CERT_NONE
    assert tls_context(True).verify_mode == ssl.CERT_REQUIRED and tls_context(True).check_hostname


@requires_shared
def test_the_ml_service_over_tls_is_trusted_as_immich_is_and_a_refused_certificate_is_named(
    authority: Path, fresh_tls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused certificate was told as "connection refused or host unreachable": the service is
    there, and the fix is the user's trust, not the network."""
    monkeypatch.setattr(immich_ml, "PASS_WAIT_SECONDS", 0.01)  # (the passes over the services, quickly)
    service = FakeImmichMl(TEST_PACK, tls=_served(authority)).start()
    image = decode_image(PHOTOS / "groups" / "two_people.jpg", max_pixels=250_000_000)

    def engine() -> ImmichMlEmbedder:
        model = ModelSettings(backend="immich-ml", urls=(service.url,), timeout_seconds=10)
        return ImmichMlEmbedder(model, FaceSettings(min_face_px=20))

    try:
        with pytest.raises(EngineUnavailable) as raised:
            engine().faces(image)
        message = str(raised.value)
        assert f"{service.url}: its TLS certificate is not trusted" in message and "SSL_CERT_FILE" in message
        assert "connection refused" not in message and service.posts == 0
        monkeypatch.setenv("SSL_CERT_FILE", str(authority / "ca.pem"))
        tls_context.cache_clear()
        assert len(engine().faces(image)) == 2 and service.posts == 1
    finally:
        service.stop()
