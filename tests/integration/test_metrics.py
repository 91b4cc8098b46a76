"""/metrics: what a Prometheus scrape reads, and what it costs the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Library, requires_shared
from facesyncd.config import load_settings
from facesyncd.store import Store
from fake_immich import FakeImmich

pytestmark = requires_shared


def test_a_scrape_opens_the_database_once_and_reports_the_library(
    fake: FakeImmich, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import generate_latest

    from facesyncd.web import metrics

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/obama", "wild/biden"])
    lib.cli("sync")
    opened: list[Path] = []

    class Counted(Store):
        def __init__(self, path: Path, **options: bool) -> None:
            opened.append(path)
            super().__init__(path, **options)

    monkeypatch.setattr(metrics, "Store", Counted)
    text = generate_latest(metrics.registry(load_settings(lib.config, secrets=False))).decode()
    assert len(opened) == 1, "a scrape opens the database once"
    done = len(lib.labels)
    assert f'facesyncd_assets{{state="done"}} {done}.0' in text
    identities = json.loads(lib.cli("status", "--json"))["identities"]
    assert identities > 0 and f"facesyncd_identities {identities}.0" in text
    assert 'facesyncd_source_errors{kind="source",source="alice"} 0.0' in text
