"""`facesyncd model fetch`: the pack downloaded from a server (here one on loopback, serving a zip of the
test pack the way insightface's release does), checked against its sha256 and unpacked where the config
looks for it. Nothing here reaches the internet."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from loopback import LoopbackServer

from conftest import TEST_PACK, requires_shared, run_cli, write_config
from fake_immich import FakeImmich

pytestmark = requires_shared


def pack_zip(folder: str = "") -> bytes:
    """The test pack zipped as a published pack is: its .onnx files (at the top, or in one folder),
    with a stray file and a member that tries to climb out of the folder it is unpacked into."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for model in sorted(TEST_PACK.glob("*.onnx")):
            archive.write(model, f"{folder}{model.name}")
        archive.writestr(f"{folder}README.txt", "not a model")
        archive.writestr("../../escaped.onnx", b"outside")
    return buffer.getvalue()


@pytest.fixture
def pack_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """Serves `files` by path; /release/<name> redirects to /files/<name> as GitHub's releases do."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            name = self.path.rsplit("/", 1)[-1]
            if self.path.startswith("/release/"):
                self.send_response(302)
                self.send_header("Location", f"/files/{name}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif name in files:
                self.send_response(200)
                self.send_header("Content-Length", str(len(files[name])))
                self.end_headers()
                self.wfile.write(files[name])
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    server = LoopbackServer()
    host, port = server.serve(("127.0.0.1", 0), Handler)
    try:
        yield f"http://{host}:{port}", files
    finally:
        server.stop()


def test_a_pack_is_fetched_checked_and_unpacked_where_the_config_looks(
    fake: FakeImmich, tmp_path: Path, pack_server: tuple[str, dict[str, bytes]]
) -> None:
    base, files = pack_server
    files["buffalo_test.zip"] = pack_zip("buffalo_test/")
    digest = hashlib.sha256(files["buffalo_test.zip"]).hexdigest()
    folder = tmp_path / "models" / "buffalo_test"
    config = write_config(tmp_path, fake.url, model="")
    config.write_text(config.read_text().replace(f'pack = "{TEST_PACK}"', f'pack = "{folder}"'))
    url = f"{base}/release/buffalo_test.zip"

    result = run_cli("--config", str(config), "model", "fetch", "--url", url, "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in TEST_PACK.glob("*.onnx"))
    assert not list(tmp_path.rglob("escaped.onnx")), "a member climbed out of the pack's folder"
    assert str(folder) in result.stdout
    assert run_cli("--config", str(config), "sync").returncode == 0, "the fetched pack does not load"

    again = run_cli("--config", str(config), "model", "fetch", "--url", url, "--sha256", digest)
    assert again.returncode == 5 and "--force" in again.stderr
    forced = run_cli("--config", str(config), "model", "fetch", "--url", url, "--sha256", digest, "--force")
    assert forced.returncode == 0, forced.stderr


def test_a_download_that_does_not_match_its_checksum_is_refused_and_nothing_unpacked(
    fake: FakeImmich, tmp_path: Path, pack_server: tuple[str, dict[str, bytes]]
) -> None:
    base, files = pack_server
    files["pack.zip"] = pack_zip()
    folder = tmp_path / "models" / "pack"
    config = write_config(tmp_path, fake.url)
    config.write_text(config.read_text().replace(f'pack = "{TEST_PACK}"', f'pack = "{folder}"'))
    wrong = "0" * 64
    result = run_cli("--config", str(config), "model", "fetch", "--url", f"{base}/files/pack.zip", "--sha256", wrong)
    assert result.returncode == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and wrong in lines[0] and hashlib.sha256(files["pack.zip"]).hexdigest() in lines[0]
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if p.name.startswith(".facesyncd")]
    # a server that has no such file, a URL without its checksum, a pack facesyncd knows no checksum of
    missing = run_cli("--config", str(config), "model", "fetch", "--url", f"{base}/files/nope.zip", "--sha256", wrong)
    assert missing.returncode == 5 and "404" in missing.stderr
    alone = run_cli("--config", str(config), "model", "fetch", "--url", f"{base}/files/pack.zip")
    assert alone.returncode == 5 and "--sha256" in alone.stderr
    unknown = run_cli("--config", str(config), "model", "fetch", "antelope_x")
    assert unknown.returncode == 5 and "--url and --sha256" in unknown.stderr


def test_the_docs_name_the_default_packs_url_and_checksum() -> None:
    from facesyncd.modelpacks import KNOWN_PACKS

    repo = Path(__file__).resolve().parents[2]
    assert "facesyncd model fetch" in (repo / "README.md").read_text()  # the quick start
    install = (repo / "docs" / "install.md").read_text()
    for source in KNOWN_PACKS.values():
        assert source.url in install and source.sha256 in install
