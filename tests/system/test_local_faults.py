"""A full disk while exporting or writing the database: a clear error, no partial files, nothing lost."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import facesyncd.export as export_module
from conftest import add_photos, asset_states, requires_shared, run_cli, write_config
from facesyncd import actions
from facesyncd.app import App, open_app
from facesyncd.config import load_settings
from facesyncd.errors import LocalWriteError, StoreError
from fake_immich import FakeImmich

pytestmark = requires_shared


def hidden_leftovers(root: Path) -> list[str]:
    """Temporary files left behind (`.facesyncd.json`, the record of the highest number, is no leftover)."""
    return [
        p.name
        for p in root.rglob("*")
        if (p.name.startswith(".") and p.name != ".facesyncd.json") or p.name.endswith((".tmp", ".part"))
    ]


def integrity(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.fixture
def app(fake: FakeImmich, tmp_path: Path, env_key: str) -> Iterator[App]:
    settings = load_settings(write_config(tmp_path, fake.url))
    app = open_app(settings)
    yield app
    app.close()


def test_disk_full_while_exporting(fake: FakeImmich, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    add_photos(fake, ["wild/obama", "wild/biden", "wild/elon_musk"])
    real = export_module._place
    calls = {"n": 0}

    def fill_up(source: Path, target: Path, group: int, mode: int) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(source, target, group, mode)

    monkeypatch.setattr(export_module, "_place", fill_up)
    with pytest.raises(LocalWriteError, match="No space left on device"):
        actions.sync(app)
    root = app.settings.facesets_dir
    assert hidden_leftovers(root) == []
    assert integrity(app.settings.database_path) == "ok"
    monkeypatch.setattr(export_module, "_place", real)
    report = actions.sync(app)
    assert report.facesets_written >= 1 and hidden_leftovers(root) == []
    status = app.store.status()
    assert status["last_sync"]["ok"] is True


def test_database_full(fake: FakeImmich, app: App) -> None:
    add_photos(fake, ["wild/obama", "wild/biden", "wild/elon_musk", "groups/solvay_conference_1927.jpg"])
    app.store.conn.execute("VACUUM")  # no free pages (a migration drops a table) for the sync to fill first
    pages = app.store.conn.execute("PRAGMA page_count").fetchone()[0]
    app.store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own SQLITE_FULL
    with pytest.raises(StoreError, match="database or disk is full"):
        actions.sync(app)
    assert integrity(app.settings.database_path) == "ok"
    app.store.conn.execute("PRAGMA max_page_count = 1073741823")
    actions.sync(app)
    done = app.store.status()["assets"]
    assert done == asset_states(done=len(fake.assets))


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "8m"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the ENOSPC and SQLITE_FULL paths are tested above")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_filesystem(fake: FakeImmich, tmp_path: Path, small_disk: Path) -> None:
    add_photos(fake, ["wild/obama", "wild/jack_dorsey", "wild/matt_damon"])
    config = write_config(tmp_path / "run", fake.url)
    text = config.read_text().replace(str(tmp_path / "run" / "state"), str(small_disk / "state"))
    config.write_text(text)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (7 * 1024 * 1024 + 768 * 1024))  # leaves 256 kB
    result = run_cli("--config", str(config), "sync")
    assert result.returncode in (6, 8), result.stderr
    assert result.stderr.count("facesyncd: error:") == 1 and "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr or "database or disk is full" in result.stderr
    assert integrity(small_disk / "state" / "facesyncd.db") == "ok"
    assert hidden_leftovers(tmp_path / "run") == [] and hidden_leftovers(small_disk / "state") == []
    filler.unlink()
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    status = run_cli("--config", str(config), "status", "--json")
    assert '"done": ' + str(len(fake.assets)) in status.stdout
