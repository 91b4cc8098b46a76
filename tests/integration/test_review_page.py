"""The review page's answers, served in-process on loopback (the browser tests are in
tests/system/test_web.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import requests

from conftest import Library, free_port, requires_shared, wait_until
from facesyncd.config import load_settings
from fake_immich import FakeImmich

pytestmark = requires_shared


def test_no_other_site_may_frame_the_page(fake: FakeImmich, tmp_path: Path) -> None:
    """Clickjacking: another site framing the page could have a user click a correction. Every answer,
    refusals included, forbids framing and keeps the token out of Referer headers."""
    from facesyncd.web import WebServer

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/obama"])
    lib.cli("sync")
    settings = load_settings(lib.config, secrets=False)
    listen = f"127.0.0.1:{free_port()}"
    server = WebServer(dataclasses.replace(settings, web=dataclasses.replace(settings.web, listen=listen)))
    server.start()
    url = f"http://{listen}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, "the review page answers")
        for path, status in (("/", 200), ("/history", 200), ("/faceset/999", 404), ("/face/999999.jpg", 404)):
            answer = requests.get(f"{url}{path}", timeout=30)
            assert answer.status_code == status, path
            assert answer.headers["x-frame-options"] == "DENY", path
            assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", path
            assert answer.headers["referrer-policy"] == "same-origin", path
        refused = requests.post(f"{url}/act/lock", data={"number": "1"}, timeout=30)
        assert refused.status_code == 403 and refused.headers["x-frame-options"] == "DENY"
    finally:
        server.stop()
