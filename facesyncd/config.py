"""Typed, frozen settings read from one TOML file plus the environment.

Every problem in the file (unknown keys, wrong types, out-of-range values, missing secrets) is
collected and reported together, with the file name, as one ConfigError. Nothing is read at import time.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .redact import register as register_secret

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_CONFIG = Path("/etc/facesyncd/config.toml")
SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
API_KEY_RE = re.compile(r"^[\x21-\x7e]+$")


class Secret:
    """A string that never shows itself in repr(), str() or f-strings (API keys)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ImmichSettings:
    name: str
    url: str
    api_key: Secret = field(repr=False)
    verify_tls: bool = True
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class ModelSettings:
    pack: str = "buffalo_l"
    providers: tuple[str, ...] = ("auto",)
    det_size: int = 640
    threads: int = 0  # onnxruntime threads per model; 0: one per CPU core shared out among the workers

    def pack_dir(self) -> Path:
        """A pack name resolves under insightface's model root; anything with a slash is a path."""
        if "/" in self.pack or "\\" in self.pack or self.pack.startswith("."):
            return Path(self.pack).expanduser()
        root = Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")).expanduser()
        return root / "models" / self.pack


@dataclass(frozen=True)
class FaceSettings:
    min_face_px: int = 90
    min_det_score: float = 0.5
    prefilter: bool = True
    max_download_mb: int = 1024
    max_image_megapixels: int = 250
    crop_margin: float = 0.3


@dataclass(frozen=True)
class IdentitySettings:
    match_distance: float = 0.45
    cluster_distance: float = 0.55
    min_faceset_faces: int = 3


@dataclass(frozen=True)
class SyncSettings:
    page_size: int = 1000
    workers: int = 0  # assets prepared at once; 0: as many as CPU cores (at most 4)
    watermark_overlap_seconds: int = 300
    max_attempts: int = 5
    retry_delay_seconds: int = 600
    http_retries: int = 5
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0


@dataclass(frozen=True)
class ScheduleSettings:
    poll_seconds: float = 300.0
    cluster_seconds: float = 900.0
    reconcile_seconds: float = 86400.0
    stop_grace_seconds: float = 8.0  # on SIGTERM, then requests in flight are broken off


@dataclass(frozen=True)
class Settings:
    path: Path
    state_dir: Path
    facesets_dir: Path
    immich: tuple[ImmichSettings, ...]
    model: ModelSettings = ModelSettings()
    faces: FaceSettings = FaceSettings()
    identities: IdentitySettings = IdentitySettings()
    sync: SyncSettings = SyncSettings()
    schedule: ScheduleSettings = ScheduleSettings()

    @property
    def database_path(self) -> Path:
        return self.state_dir / "facesyncd.db"


def find_config(explicit: Path | None) -> Path:
    """--config, else $FACESYNCD_CONFIG, else $XDG_CONFIG_HOME/facesyncd/config.toml, else /etc."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("FACESYNCD_CONFIG")
    if from_env:
        return Path(from_env)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user_config = Path(xdg) / "facesyncd" / "config.toml"
    if user_config.exists():
        return user_config
    return DEFAULT_SYSTEM_CONFIG


class _Problems:
    """Collects every problem found in one file so they can be reported together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_CHECKS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    tuple: (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
}


def _section(
    table: Any,
    where: str,
    spec: dict[str, tuple[type, Callable[[Any], bool] | None, str]],
    problems: _Problems,
) -> dict[str, Any]:
    """Validate one table against `spec` (key -> (type, range check, range text)); return clean values."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        problems.add(where, "must be a table")
        return {}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in spec:
            problems.add(f"{where}.{key}" if where else key, f"unknown key (known: {', '.join(sorted(spec))})")
            continue
        kind, in_range, range_text = spec[key]
        type_ok, type_text = _CHECKS[kind]
        label = f"{where}.{key}" if where else key
        if not type_ok(value):
            problems.add(label, f"must be {type_text}, got {value!r}")
            continue
        if in_range is not None and not in_range(value):
            problems.add(label, f"must be {range_text}, got {value!r}")
            continue
        values[key] = kind(value) if kind in (float, tuple) else value
    return values


def _positive(v: Any) -> bool:
    return bool(v > 0)


def _distance(v: Any) -> bool:
    return bool(0 < v < 2)


def _fraction(v: Any) -> bool:
    return bool(0 <= v <= 1)


def _valid_url(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0 and not parts.query


def _read_secret(entry: dict[str, Any], where: str, problems: _Problems, *, needed: bool) -> Secret | None:
    env_name = entry.get("api_key_env")
    file_name = entry.get("api_key_file")
    if (env_name is None) == (file_name is None):
        problems.add(where, "set exactly one of api_key_env or api_key_file")
        return None
    if not needed:  # status and rebuild-index do not talk to Immich
        return Secret("")
    if env_name is not None:
        value = os.environ.get(str(env_name), "").strip()
        if not value:
            problems.add(f"{where}.api_key_env", f"environment variable {env_name} is not set or empty")
            return None
        return _checked_key(value, f"{where}.api_key_env", f"environment variable {env_name}", problems)
    path = Path(str(file_name)).expanduser()
    # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY; a bare name is looked up there.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and not path.is_absolute():
        path = Path(credentials) / path
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as error:
        problems.add(f"{where}.api_key_file", f"cannot read {path}: {error.strerror or error}")
        return None
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        problems.add(f"{where}.api_key_file", f"{path} is not an API key: it holds non-ASCII bytes (key not shown)")
        return None
    if not value:
        problems.add(f"{where}.api_key_file", f"{path} is empty")
        return None
    if os.name == "posix" and mode & 0o077:
        log.warning("API key file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return _checked_key(value, f"{where}.api_key_file", str(path), problems)


def _checked_key(value: str, where: str, origin: str, problems: _Problems) -> Secret | None:
    """An API key goes into an HTTP header: printable ASCII without spaces or line breaks. A key
    with a second line would otherwise end in the HTTP library's error text (which quotes the
    header), and from there in logs and the database. The key itself is never printed."""
    if API_KEY_RE.fullmatch(value):
        return Secret(value)
    register_secret(value)  # scrubbed from anything that might still quote it
    if any(character in value for character in "\r\n"):
        problems.add(where, f"{origin} holds more than one line; an API key is one line (key not shown)")
    else:
        problems.add(
            where,
            f"{origin} is not an API key: only printable ASCII without spaces can go in the x-api-key "
            f"header (key not shown)",
        )
    return None


def _immich_entries(raw: Any, problems: _Problems, *, secrets: bool) -> tuple[ImmichSettings, ...]:
    if raw is None:
        problems.add("immich", "at least one [[immich]] table is required")
        return ()
    if not isinstance(raw, list):
        problems.add("immich", "must be an array of tables ([[immich]])")
        return ()
    spec: dict[str, tuple[type, Callable[[Any], bool] | None, str]] = {
        "name": (str, lambda v: bool(SOURCE_NAME_RE.match(v)), "letters, digits, '_', '.', '-' (max 64)"),
        "url": (str, _valid_url, "an http:// or https:// URL with a host (and a port from 1 to 65535)"),
        "api_key_env": (str, None, ""),
        "api_key_file": (str, None, ""),
        "verify_tls": (bool, None, ""),
        "timeout_seconds": (float, _positive, "> 0"),
    }
    entries: list[ImmichSettings] = []
    seen: set[str] = set()
    for position, entry in enumerate(raw):
        where = f"immich[{position}]"
        values = _section(entry, where, spec, problems)
        if not isinstance(entry, dict):
            continue
        for required in ("name", "url"):
            if required not in entry:
                problems.add(where, f"{required} is required")
        secret = _read_secret(entry, where, problems, needed=secrets)
        name = values.get("name")
        if name in seen:
            problems.add(f"{where}.name", f"duplicate source name {name!r}")
        if name:
            seen.add(name)
        if name and "url" in values and secret is not None:
            entries.append(
                ImmichSettings(
                    name=name,
                    url=values["url"].rstrip("/"),
                    api_key=secret,
                    verify_tls=values.get("verify_tls", True),
                    timeout_seconds=values.get("timeout_seconds", 30.0),
                )
            )
    return tuple(entries)


def load_settings(path: Path, *, secrets: bool = True) -> Settings:
    """Read and validate `path`. Raises ConfigError listing every problem found."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (use --config, $FACESYNCD_CONFIG or $XDG_CONFIG_HOME/facesyncd/config.toml)"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return settings_from_dict(data, path, secrets=secrets)


def settings_from_dict(data: dict[str, Any], path: Path, *, secrets: bool = True) -> Settings:
    """Validate parsed TOML. With secrets=False, API keys are not read (commands that stay local)."""
    problems = _Problems()
    known_tables = {"immich", "model", "faces", "identities", "sync", "schedule"}
    top = _section(
        {k: v for k, v in data.items() if k not in known_tables},
        "",
        {"state_dir": (str, None, ""), "facesets_dir": (str, None, "")},
        problems,
    )
    model = _section(
        data.get("model"),
        "model",
        {
            "pack": (str, lambda v: bool(v), "non-empty"),
            "providers": (tuple, lambda v: len(v) > 0, "a non-empty list"),
            "det_size": (int, lambda v: 160 <= v <= 2048 and v % 32 == 0, "a multiple of 32 in 160..2048"),
            "threads": (int, lambda v: 0 <= v <= 64, "between 0 and 64"),
        },
        problems,
    )
    faces = _section(
        data.get("faces"),
        "faces",
        {
            "min_face_px": (int, lambda v: v >= 0, ">= 0"),
            "min_det_score": (float, _fraction, "between 0 and 1"),
            "prefilter": (bool, None, ""),
            "max_download_mb": (int, _positive, "> 0"),
            "max_image_megapixels": (int, _positive, "> 0"),
            "crop_margin": (float, lambda v: 0 <= v <= 2, "between 0 and 2"),
        },
        problems,
    )
    identities = _section(
        data.get("identities"),
        "identities",
        {
            "match_distance": (float, _distance, "between 0 and 2 (cosine distance)"),
            "cluster_distance": (float, _distance, "between 0 and 2 (cosine distance)"),
            "min_faceset_faces": (int, lambda v: v >= 2, ">= 2"),
        },
        problems,
    )
    sync = _section(
        data.get("sync"),
        "sync",
        {
            "page_size": (int, lambda v: 1 <= v <= 1000, "between 1 and 1000"),
            "workers": (int, lambda v: 0 <= v <= 32, "between 0 and 32"),
            "watermark_overlap_seconds": (int, lambda v: v >= 0, ">= 0"),
            "max_attempts": (int, _positive, "> 0"),
            "retry_delay_seconds": (int, lambda v: v >= 0, ">= 0"),
            "http_retries": (int, lambda v: v >= 0, ">= 0"),
            "retry_base_seconds": (float, lambda v: v >= 0, ">= 0"),
            "retry_max_seconds": (float, lambda v: v >= 0, ">= 0"),
        },
        problems,
    )
    schedule = _section(
        data.get("schedule"),
        "schedule",
        {
            "poll_seconds": (float, _positive, "> 0"),
            "cluster_seconds": (float, _positive, "> 0"),
            "reconcile_seconds": (float, _positive, "> 0"),
            "stop_grace_seconds": (float, lambda v: 0 <= v <= 60, "between 0 and 60"),
        },
        problems,
    )
    immich = _immich_entries(data.get("immich"), problems, secrets=secrets)
    state_dir = Path(top.get("state_dir", "/var/lib/facesyncd")).expanduser()
    base = path.parent
    if not state_dir.is_absolute():
        state_dir = base / state_dir
    facesets_dir = Path(top.get("facesets_dir", str(state_dir / "facesets"))).expanduser()
    if not facesets_dir.is_absolute():
        facesets_dir = base / facesets_dir
    for key, directory in (("state_dir", state_dir), ("facesets_dir", facesets_dir)):
        if directory.exists() and not directory.is_dir():
            problems.add(key, f"{directory} exists and is not a directory")
    if problems.items:
        listing = "\n  ".join(problems.items)
        raise ConfigError(f"{path}: {len(problems.items)} problem(s) in config:\n  {listing}")
    return Settings(
        path=path,
        state_dir=state_dir,
        facesets_dir=facesets_dir,
        immich=immich,
        model=ModelSettings(**model),
        faces=FaceSettings(**faces),
        identities=IdentitySettings(**identities),
        sync=SyncSettings(**sync),
        schedule=ScheduleSettings(**schedule),
    )
