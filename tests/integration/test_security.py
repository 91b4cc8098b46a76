"""Secrets, TLS, hostile identifiers, file modes."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from conftest import (
    API_KEY,
    API_KEY_ENV,
    PHOTOS,
    add_photos,
    asset_states,
    requires_shared,
    run_cli,
    run_process,
    with_extra_migration,
    write_config,
)
from facesyncd.config import load_settings
from fake_immich import FakeImmich, Fault

pytestmark = requires_shared


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_api_key_appears_nowhere(fake: FakeImmich, tmp_path: Path) -> None:
    """A debug-level sync with faults, a failing asset, a kill -9, an error with --debug, status:
    the key must be in no output and no file."""
    add_photos(fake, ["wild/obama", "wild/biden"])
    fake.add_asset("alice", b"broken", "broken.jpg")
    config = write_config(tmp_path, fake.url)
    fake.faults += [Fault("status", status=503, times=2), Fault("reset", path_contains="/original")]
    outputs = [
        run_cli("--config", str(config), "--log-level", "debug", "--log-format", "json", "sync"),
        run_process("--config", str(config), "--log-level", "debug", "sync", env={"FACESYNCD_CRASH_AT": "committed:1"}),
        run_cli("--config", str(config), "--log-level", "debug", "--debug", "sync"),
        run_cli("--config", str(config), "--debug", "--log-level", "debug", "sync", env={API_KEY_ENV: "wrong-key-x"}),
        run_cli("--config", str(config), "status", "--json"),
        run_cli("--config", str(config), "status"),
    ]
    # the debug log really is at debug level, httpx's own lines included
    assert "DEBUG" in outputs[1].stderr and "HTTP Request:" in outputs[1].stderr
    assert '"level": "debug"' in outputs[0].stderr
    assert "Traceback" in outputs[3].stderr  # --debug shows the traceback of the auth error
    for result in outputs:
        for key in (API_KEY, "wrong-key-x"):
            assert key not in result.stdout and key not in result.stderr
    for key in (API_KEY, "wrong-key-x"):
        assert files_containing(tmp_path, key.encode()) == []


def test_tls_verification_is_on_unless_turned_off_explicitly(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    config = write_config(tmp_path, "https://photos.example.org")
    assert load_settings(config).immich[0].verify_tls is True
    text = config.read_text().replace('api_key_env = "', 'verify_tls = false\napi_key_env = "')
    config.write_text(text)
    settings = load_settings(config)
    assert settings.immich[0].verify_tls is False
    from facesyncd.immich import ImmichClient

    with caplog.at_level("WARNING"), ImmichClient(settings.immich[0], settings.sync):
        pass
    assert "TLS certificate verification is OFF" in caplog.text


def test_a_malicious_server_cannot_write_outside_the_state_and_facesets(tmp_path: Path) -> None:
    """Asset ids and file names from the server never become paths; bad ids are refused."""
    server = FakeImmich()  # not spec-checked: this server lies on purpose
    server.add_user("alice", API_KEY)
    server.start()
    try:
        good = server.add_file("alice", PHOTOS / "wild" / "obama" / "obama.jpg")
        server.assets[good].original_file_name = "../../../../escape.jpg"
        evil = server.add_file("alice", PHOTOS / "wild" / "obama" / "obama1.jpg")
        server.change_id(evil, "../../../../escape")
        config = write_config(tmp_path / "run", server.url)
        before = set(tmp_path.parent.iterdir())
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
        assert "ignoring listed asset: asset with invalid id" in result.stderr
        assert set(tmp_path.parent.iterdir()) == before
        written = {p for p in tmp_path.rglob("*")}
        assert all(str(p).startswith(str(tmp_path / "run")) for p in written)
        assert not any("escape" in p.name for p in written)
        status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
        assert status["assets"] == asset_states(done=1)
        assert not any("escape" in str(r) for r in server.requests)
    finally:
        server.stop()


def test_database_is_private_and_a_readable_key_file_is_flagged(fake: FakeImmich, tmp_path: Path) -> None:
    key_file = tmp_path / "alice.key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o644)
    sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_file = "{key_file}"\n'
    config = write_config(tmp_path, fake.url, sources=sources)
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 0, result.stderr
    assert f"API key file {key_file} can be read by other users (mode 644)" in result.stderr
    database = tmp_path / "state" / "facesyncd.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    key_file.chmod(0o600)
    assert "can be read by other users" not in run_cli("--config", str(config), "sync").stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_backups_before_migration_are_private(tmp_path: Path, monkeypatch) -> None:
    from facesyncd.store import Store

    path = tmp_path / "facesyncd.db"
    Store(path).close()
    with_extra_migration(tmp_path, monkeypatch, "9999_x.sql", "CREATE TABLE x (y);\n")
    Store(path).close()
    backups = list(tmp_path.glob("facesyncd.db.bak-v*"))
    assert backups and all(stat.S_IMODE(b.stat().st_mode) == 0o600 for b in backups)


KEY_LINES = ("first-line-of-the-key-0123456789", "second-line-of-the-key-abcdefghij")


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_key_with_a_second_line_is_a_config_error_that_never_shows_it(
    fake: FakeImmich, tmp_path: Path, where: str
) -> None:
    """h11 quoted the whole header value in its error, which was retried and then copied into the
    database, the journal and `status --json` (34 occurrences in 8 files)."""
    key = "\n".join(KEY_LINES)
    env = {API_KEY_ENV: key}
    sources = None
    if where == "file":
        (tmp_path / "alice.key").write_text(key + "\n")
        (tmp_path / "alice.key").chmod(0o600)
        sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_file = "{tmp_path / "alice.key"}"\n'
    config = write_config(tmp_path / "run", fake.url, sources=sources)
    result = run_cli("--config", str(config), "--log-level", "debug", "sync", env=env)
    assert result.returncode == 2, result.stderr
    assert "holds more than one line; an API key is one line (key not shown)" in result.stderr
    assert "Traceback" not in result.stderr
    for line in KEY_LINES:
        assert line not in result.stdout + result.stderr
        assert files_containing(tmp_path / "run", line.encode()) == []
    assert fake.count("GET", "/api/users/me") == 0


@pytest.mark.parametrize("key", ["key with spaces inside-0123", "kéy-that-is-not-ascii-0123"])
def test_a_key_that_cannot_go_in_a_header_is_refused_without_being_shown(
    fake: FakeImmich, tmp_path: Path, key: str
) -> None:
    (tmp_path / "alice.key").write_bytes(key.encode())
    (tmp_path / "alice.key").chmod(0o600)
    sources = f'[[immich]]\nname = "alice"\nurl = "{fake.url}"\napi_key_file = "{tmp_path / "alice.key"}"\n'
    config = write_config(tmp_path / "run", fake.url, sources=sources)
    result = run_cli("--config", str(config), "sync")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "key not shown" in result.stderr and key not in result.stderr


def test_a_key_that_slips_through_is_scrubbed_from_every_log_line_error_and_row(
    fake: FakeImmich, tmp_path: Path
) -> None:
    """The last line of defence: a key the config check never saw (built here directly) that makes
    the HTTP library fail with the header in its message. Nothing the run writes may hold it, in any
    form: as is, escaped, or one of its lines."""
    import io
    import logging

    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import ImmichSettings, Secret, load_settings
    from facesyncd.errors import FacesyncError
    from facesyncd.logs import setup_logging
    from facesyncd.status import collect_status, render_status

    add_photos(fake, ["wild/obama"])
    key = "\n".join(KEY_LINES)
    config = write_config(tmp_path, fake.url, sync="http_retries = 1")
    settings = load_settings(config, secrets=False)
    source = ImmichSettings(name="alice", url=fake.url, api_key=Secret(key), timeout_seconds=2)
    settings = type(settings)(**{**settings.__dict__, "immich": (source,)})
    stream = io.StringIO()
    setup_logging(logging.DEBUG, "text")
    logging.getLogger().handlers[0].stream = stream  # type: ignore[attr-defined]
    app = open_app(settings)
    try:
        with pytest.raises(FacesyncError) as raised:
            actions.sync(app)
        logging.getLogger("facesyncd").exception("the cycle failed")  # with its traceback
    finally:
        app.close()
        logging.getLogger().handlers.clear()
    status = collect_status(settings)
    texts = {
        "exception": str(raised.value),
        "log": stream.getvalue(),
        "status --json": json.dumps(status),
        "status": render_status(status),
    }
    assert "Illegal header value" in texts["log"] or "Illegal header value" in texts["exception"]
    forms = [*KEY_LINES, key, key.replace("\n", "\\n")]
    for name, text in texts.items():
        for form in forms:
            assert form not in text, f"the key leaked into {name}"
    for form in forms:
        assert files_containing(tmp_path, form.encode()) == []


def test_a_sync_never_sends_the_key_to_another_origin(fake: FakeImmich, tmp_path: Path) -> None:
    """One asset's original redirects to another host: it is recorded as that asset's failure, the
    others are processed, and the other host receives nothing."""
    from test_immich_client import _Capture

    capture = _Capture("127.0.0.2")
    try:
        ids = list(add_photos(fake, ["wild/obama"]))
        fake.faults.append(
            Fault("redirect", path_contains=f"{ids[0]}/original", location=f"{capture.url}/x", times=100)
        )
        config = write_config(tmp_path, fake.url, sync="http_retries = 1")
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
        status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
        assert status["assets"]["done"] == len(ids) - 1
        [problem] = status["problems"]
        assert problem["asset_id"] == ids[0] and "redirected to another origin" in problem["reason"]
        assert capture.received == []
    finally:
        capture.close()
