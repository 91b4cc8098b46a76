"""Typed, frozen settings read from one TOML file plus the environment.

The schema is written once: each setting is a dataclass field declared with `setting()` — its
default, what values it takes, and the comment the sample config shows. Validation, the defaults and
the sample (`facesyncd init`) and docs/configuration.md (which a test compares) are all driven by those
declarations, so a new section is one dataclass here. Every problem in a file (unknown keys, wrong
types, out-of-range values, missing secrets) is collected and reported together, with the file name,
as one ConfigError. Relative paths are relative to the config file. Nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .redact import register as register_secret

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_CONFIG = Path("/etc/facesyncd/config.toml")
# Where the default pack comes from (insightface's own release), and how to put it in place.
MODEL_PACK_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
MODEL_PACK_COMMAND = (
    "mkdir -p {folder} && curl -fL -o /tmp/buffalo_l.zip "
    + MODEL_PACK_URL
    + " && unzip -o /tmp/buffalo_l.zip -d {folder}"
)

SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The model names Immich's ML service takes (its own are like "buffalo_l" or "antelopev2").
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
BACKENDS = ("onnx", "immich-ml")
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


# -- the schema -------------------------------------------------------------------------------------


def setting(default: Any, doc: str, check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """One setting: its default, the comment the sample shows, and a check of its value (with the
    words that say what the check wants)."""
    return field(default=default, metadata={"doc": doc, "check": check, "rule": rule})


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


def server_url(url: str) -> str:
    """Immich's address as facesyncd keeps it: without a trailing slash, and without the `/api` Immich's
    own CLI asks for (facesyncd adds it: `.../api/api/users/me` was a 404)."""
    url = url.rstrip("/")
    return url[: -len("/api")] if url.lower().endswith("/api") else url


@dataclass(frozen=True)
class ImmichSettings:
    """[[immich]]: one table per Immich user; a key only sees its own user (and partners it shows)"""

    name: str = setting(
        "alice",
        "letters, digits, _ . -",
        lambda v: bool(SOURCE_NAME_RE.match(v)),
        "letters, digits, '_', '.', '-' (max 64)",
    )
    url: str = setting(
        "https://photos.example.org",
        "Immich's address (as in a browser; a trailing /api is fine too)",
        _valid_url,
        "an http:// or https:// URL with a host (and a port from 1 to 65535)",
    )
    api_key: Secret = field(default=Secret(""), repr=False, metadata={"secret": True})
    verify_tls: bool = setting(True, "false must be explicit, and is logged as a warning")
    web_url: str = setting(
        "",
        "Immich's address in a browser, for links to photos (review page, manifests; empty: the url's origin)",
        lambda v: v == "" or _valid_url(v),
        "empty, or an http:// or https:// URL",
    )
    adopt_names: bool = setting(
        True, "an unnamed faceset takes the name of the Immich person most of its photos show (read only)"
    )
    include_partners: bool = setting(
        False, "also take the assets of partners this user shows in the timeline (default: only the user's own)"
    )
    timeout_seconds: float = setting(
        30.0, "per request; a download may take 2x this plus its size at 32 KiB/s", _positive, "> 0"
    )

    def photo_link(self, asset_id: str) -> str:
        """The asset's page in Immich's web app: under web_url, else the url's origin (an API under
        /api, or behind a path, is served by the same origin's web app)."""
        if self.web_url:
            return f"{self.web_url.rstrip('/')}/photos/{asset_id}"
        parsed = urllib.parse.urlsplit(self.url)
        return f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}/photos/{asset_id}"


# The API key of an [[immich]] table: exactly one of these two keys.
SECRET_KEYS = {
    "api_key_env": "environment variable holding the API key",
    "api_key_file": "or: a file holding it (relative: to this file; a bare name: $CREDENTIALS_DIRECTORY, keys/)",
}
KEYS_FOLDER = "keys"  # beside the config: where a bare key file name is found outside the service


def _bare_name(name: str) -> bool:
    """A key file named without a folder: a systemd credential's name, or a file in keys/."""
    return not _is_path(name) and not Path(name).is_absolute()


def key_file_path(name: str, base: Path) -> Path:
    """Where an api_key_file is read. systemd's LoadCredential= puts the service's secrets in
    $CREDENTIALS_DIRECTORY, under the credential's name: a bare name is looked up there first; outside
    the service (an admin's `sudo facesyncd sync --reconcile` with the same config) it is looked up in
    keys/ beside the config, where the service guide's recipe keeps the file LoadCredential= reads, and
    then beside the config itself (where `init` writes a key)."""
    path = Path(name).expanduser()
    if not _bare_name(name):
        return path if path.is_absolute() else base / path
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    places = [Path(credentials) / path] if credentials else []
    places += [base / KEYS_FOLDER / path, base / path]
    return next((place for place in places if os.path.lexists(place)), places[0])


@dataclass(frozen=True)
class ModelSettings:
    """[model]: the face engine: an insightface pack run here, or Immich's machine-learning service"""

    pack: str = setting(
        "buffalo_l", "a pack name under ~/.insightface/models, or a folder (relative: to this file)", bool, "non-empty"
    )
    providers: tuple[str, ...] = setting(
        ("auto",), "auto: DirectML, CUDA, CPU, whichever onnxruntime has", bool, "a non-empty list"
    )
    det_size: int = setting(
        640, "detector input size", lambda v: 160 <= v <= 2048 and v % 32 == 0, "a multiple of 32 in 160..2048"
    )
    threads: int = setting(
        0, "onnxruntime threads per model; 0: cores / workers", lambda v: 0 <= v <= 64, "between 0 and 64"
    )
    backend: str = setting(
        "onnx",
        "onnx: the pack above, here; immich-ml: Immich's machine-learning service at `urls`",
        lambda v: v in BACKENDS,
        " or ".join(BACKENDS),
    )
    urls: tuple[str, ...] = setting(
        (),
        'immich-ml: the services\' addresses, e.g. ["http://gpu-box:3003"]',
        lambda v: all(_valid_url(url) for url in v),
        "a list of http:// or https:// URLs",
    )
    model_name: str = setting(
        "buffalo_l", "immich-ml: the facial-recognition model it runs", lambda v: bool(MODEL_NAME_RE.match(v)), "a name"
    )
    min_score: float = setting(0.0, "immich-ml: its detector's minScore; 0: [faces] min_det_score", _fraction, "0..1")
    timeout_seconds: float = setting(60.0, "immich-ml: per request (a first one may load the model)", _positive, "> 0")
    concurrency: int = setting(2, "immich-ml: requests at once per URL", lambda v: 1 <= v <= 64, "between 1 and 64")

    def pack_dir(self) -> Path:
        """A pack name resolves under insightface's model root; anything else is a folder."""
        if _is_path(self.pack):
            return Path(self.pack).expanduser()
        root = Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")).expanduser()
        return root / "models" / self.pack


@dataclass(frozen=True)
class FaceSettings:
    """[faces]: which faces count"""

    min_face_px: int = setting(90, "shortest side of the face box in the ORIGINAL's pixels", lambda v: v >= 0, ">= 0")
    min_det_score: float = setting(0.5, "detector confidence", _fraction, "between 0 and 1")
    prefilter: bool = setting(True, "skip assets whose Immich-detected faces are all too small")
    max_download_mb: int = setting(1024, "larger originals are refused", _positive, "> 0")
    max_image_megapixels: int = setting(250, "larger images are refused before decoding", _positive, "> 0")
    crop_margin: float = setting(
        0.3, "crop = box widened by this fraction on each side", lambda v: 0 <= v <= 2, "between 0 and 2"
    )


@dataclass(frozen=True)
class IdentitySettings:
    """[identities]: when faces are one person"""

    match_distance: float = setting(
        0.45, "cosine distance to join an existing identity", _distance, "between 0 and 2 (cosine distance)"
    )
    cluster_distance: float = setting(
        0.55, "cosine distance used to form new facesets", _distance, "between 0 and 2 (cosine distance)"
    )
    min_faceset_faces: int = setting(3, "faces (from 2+ photos) a new faceset needs", lambda v: v >= 2, ">= 2")
    mean_join: bool = setting(True, "a face near no single face joins an identity within cluster_distance on average")
    merge_distance: float = setting(
        0.40,
        "identities whose centres are this close, sharing no photo, become one; 0: never",
        lambda v: 0 <= v < 2,
        "between 0 and 2",
    )
    seed_min_blur: float = setting(
        0.6,
        "sharpness (quality blur, 0..1) a face needs to open or grow a new faceset; blurrier ones only join",
        lambda v: 0 <= v <= 1,
        "between 0 and 1",
    )
    seed_min_frontality: float = setting(
        0.2,
        "frontality (0..1) a face needs to open or grow a new faceset (strong profiles only join)",
        lambda v: 0 <= v <= 1,
        "between 0 and 1",
    )
    seed_from_cut_faces: bool = setting(False, "faces cut by the photo's edge may open or grow a new faceset")
    pool_group_distance: float = setting(
        0.6,
        "the pool page groups faces this close on average (looser than cluster_distance)",
        _distance,
        "between 0 and 2 (cosine distance)",
    )
    suggest_distance: float = setting(
        0.55,
        "facesets whose centres are this close are suggested as one person (merge_distance merges on its own)",
        _distance,
        "between 0 and 2 (cosine distance)",
    )
    name_min_faces: int = setting(
        3,
        "an unnamed faceset takes an Immich person's name when at least this many of its photos show them",
        _positive,
        "> 0",
    )
    name_min_share: float = setting(
        0.6, "... and at least this share of its faces' photos (more than any other name)", _fraction, "between 0 and 1"
    )


@dataclass(frozen=True)
class SyncSettings:
    """[sync]: talking to Immich"""

    page_size: int = setting(
        1000, "assets per listing request (Immich's maximum)", lambda v: 1 <= v <= 1000, "between 1 and 1000"
    )
    workers: int = setting(
        0,
        "assets prepared at once; 0: cores (max 4), immich-ml: urls x concurrency",
        lambda v: 0 <= v <= 32,
        "between 0 and 32",
    )
    watermark_overlap_seconds: int = setting(
        300, "re-list this much before the last sweep (clock skew)", lambda v: v >= 0, ">= 0"
    )
    max_attempts: int = setting(5, "then the asset is parked until `facesyncd retry`", _positive, "> 0")
    retry_delay_seconds: int = setting(
        600, "before retrying a failed asset, doubled each attempt", lambda v: v >= 0, ">= 0"
    )
    http_retries: int = setting(5, "per request, exponential backoff with jitter", lambda v: v >= 0, ">= 0")
    retry_base_seconds: float = setting(0.5, "first backoff", lambda v: v >= 0, ">= 0")
    retry_max_seconds: float = setting(30.0, "longest backoff", lambda v: v >= 0, ">= 0")


@dataclass(frozen=True)
class ScheduleSettings:
    """[schedule]: the service's jobs (facesyncd run)"""

    poll_seconds: float = setting(300.0, "incremental sync", _positive, "> 0")
    cluster_seconds: float = setting(900.0, "open new facesets from the pool of unmatched faces", _positive, "> 0")
    sweep_minutes: float = setting(
        15.0,
        "one count request; a difference (force delete, locked folder, partner) lists everything at once",
        _positive,
        "> 0",
    )
    reconcile_seconds: float = setting(
        86400.0, "full listing: assets deleted in Immich leave their facesets", _positive, "> 0"
    )
    stop_grace_seconds: float = setting(
        8.0,
        "on SIGTERM, requests still in flight after this are broken off",
        lambda v: 0 <= v <= 60,
        "between 0 and 60",
    )


BUNDLES = ("both", "top", "full", "none")


@dataclass(frozen=True)
class ExportSettings:
    """[export]: what the faceset folders hold"""

    format: str = setting(
        "crops",
        "crops: JPEG crops + faceset.json; swap: ranked PNGs, .fsz bundles, manifest.json",
        lambda v: v in ("crops", "swap"),
        '"crops" or "swap"',
    )
    swap_size: int = setting(512, "PNG side in pixels", lambda v: 64 <= v <= 2048, "between 64 and 2048")
    swap_padding: float = setting(
        0.5, "box widened by this fraction of its size on each side", lambda v: 0 <= v <= 2, "between 0 and 2"
    )
    top_n: int = setting(8, "faces in the top bundle and the top/ folder", _positive, "> 0")
    bundles: str = setting(
        "both",
        "swap: which .fsz bundles each faceset gets: both, top (the best top_n), full (every face), none",
        lambda v: v in BUNDLES,
        '"both", "top", "full" or "none"',
    )
    min_quality: float = setting(
        0.0, "faces below this composite score stay out of the exported set", _fraction, "between 0 and 1"
    )


def _listen_ok(value: str) -> bool:
    return value == "" or parse_listen(value) is not None


def parse_listen(value: str) -> tuple[str, int] | None:
    """ "HOST:PORT" ([v6]:PORT too) -> (host, port); None when it is not one."""
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings:
    """[web]: the review page and /metrics (facesyncd serve; facesyncd run when listen is set)"""

    listen: str = setting(
        "", 'HOST:PORT, e.g. "127.0.0.1:8765"; empty: run serves no page', _listen_ok, 'empty or "HOST:PORT"'
    )
    token_file: str = setting(
        "", "a file holding the token the page asks for (required beyond 127.0.0.1)", lambda v: True, "a path"
    )


# The top-level keys; their defaults depend on each other, so they are resolved in settings_from_dict.
TOP_KEYS = {
    "state_dir": ("/var/lib/facesyncd", "SQLite database, index, crops (relative: to this file)"),
    "facesets_dir": ("/var/lib/facesyncd/facesets", "default: <state_dir>/facesets"),
}
SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "faces": FaceSettings,
    "identities": IdentitySettings,
    "sync": SyncSettings,
    "schedule": ScheduleSettings,
    "export": ExportSettings,
    "web": WebSettings,
}


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
    export: ExportSettings = ExportSettings()
    web: WebSettings = WebSettings()

    @property
    def database_path(self) -> Path:
        return self.state_dir / "facesyncd.db"


def _is_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith((".", "~"))


def find_config(explicit: Path | None) -> Path:
    """--config, else $FACESYNCD_CONFIG, else $XDG_CONFIG_HOME/facesyncd/config.toml, else /etc."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("FACESYNCD_CONFIG")
    if from_env:
        return Path(from_env)
    if user_config_path().exists():
        return user_config_path()
    return DEFAULT_SYSTEM_CONFIG


def user_config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "facesyncd" / "config.toml"


# -- validation -------------------------------------------------------------------------------------


class _Problems:
    """Collects every problem found in one file so they can be reported together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPES: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    tuple[str, ...]: (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
}


def _settings_fields(kind: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """(field, type) of each setting of a section, in declaration order (secrets left out)."""
    hints = typing.get_type_hints(kind)
    return [(item, hints[item.name]) for item in dataclasses.fields(kind) if not item.metadata.get("secret")]


def _section(table: Any, where: str, kind: type, problems: _Problems, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate one table against the settings of `kind`; return the clean values. `extra`: keys
    handled elsewhere (the API key's)."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        problems.add(where, "must be a table")
        return {}
    known = {item.name: (item, hint) for item, hint in _settings_fields(kind)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        label = f"{where}.{key}" if where else key
        if key in extra:
            continue
        if key not in known:
            problems.add(label, f"unknown key (known: {', '.join(sorted([*known, *extra]))})")
            continue
        item, hint = known[key]
        type_ok, type_text = _TYPES[hint]
        if not type_ok(value):
            problems.add(label, f"must be {type_text}, got {value!r}")
            continue
        check = item.metadata.get("check")
        if check is not None and not check(value):
            problems.add(label, f"must be {item.metadata['rule']}, got {value!r}")
            continue
        values[key] = tuple(value) if hint == tuple[str, ...] else (float(value) if hint is float else value)
    return values


def _read_secret(entry: dict[str, Any], where: str, base: Path, problems: _Problems, *, needed: bool) -> Secret | None:
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
    path = key_file_path(str(file_name), base)
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as error:
        bare = (
            f" (a bare name is looked up in $CREDENTIALS_DIRECTORY under systemd, then in {base / KEYS_FOLDER}/ "
            f"and {base}/)"
            if _bare_name(str(file_name))
            else ""
        )
        problems.add(f"{where}.api_key_file", f"cannot read {path}: {error.strerror or error}{bare}")
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


def _immich_entries(raw: Any, base: Path, problems: _Problems, *, secrets: bool) -> tuple[ImmichSettings, ...]:
    if raw is None:
        problems.add("immich", "at least one [[immich]] table is required")
        return ()
    if not isinstance(raw, list):
        problems.add("immich", "must be an array of tables ([[immich]])")
        return ()
    entries: list[ImmichSettings] = []
    seen: set[str] = set()
    for position, entry in enumerate(raw):
        where = f"immich[{position}]"
        values = _section(entry, where, ImmichSettings, problems, extra=tuple(SECRET_KEYS))
        if not isinstance(entry, dict):
            continue
        for required in ("name", "url"):
            if required not in entry:
                problems.add(where, f"{required} is required")
        secret = _read_secret(entry, where, base, problems, needed=secrets)
        name = values.get("name")
        if name in seen:
            problems.add(f"{where}.name", f"duplicate source name {name!r}")
        if name:
            seen.add(name)
        if name and "url" in values and secret is not None:
            entries.append(ImmichSettings(**{**values, "url": server_url(values["url"]), "api_key": secret}))
    return tuple(entries)


def load_settings(path: Path, *, secrets: bool = True) -> Settings:
    """Read and validate `path`. Raises ConfigError listing every problem found."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (write one with `facesyncd init`; or use --config, "
            f"$FACESYNCD_CONFIG or $XDG_CONFIG_HOME/facesyncd/config.toml)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {getattr(error, 'strerror', None) or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return settings_from_dict(data, path, secrets=secrets)


def settings_from_dict(data: dict[str, Any], path: Path, *, secrets: bool = True) -> Settings:
    """Validate parsed TOML. With secrets=False, API keys are not read (commands that stay local)."""
    problems = _Problems()
    base = path.parent
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS or key == "immich":
            continue
        if key not in TOP_KEYS:
            problems.add(key, f"unknown key (known: {', '.join(sorted([*TOP_KEYS, *SECTIONS, 'immich']))})")
        elif not isinstance(value, str):
            problems.add(key, f"must be a string, got {value!r}")
        else:
            top[key] = value
    sections = {name: _section(data.get(name), name, kind, problems) for name, kind in SECTIONS.items()}
    immich = _immich_entries(data.get("immich"), base, problems, secrets=secrets)
    state_dir = base / Path(top.get("state_dir", TOP_KEYS["state_dir"][0])).expanduser()
    facesets_dir = base / Path(top.get("facesets_dir", str(state_dir / "facesets"))).expanduser()
    for key, directory in (("state_dir", state_dir), ("facesets_dir", facesets_dir)):
        if directory.exists() and not directory.is_dir():
            problems.add(key, f"{directory} exists and is not a directory")
    web = sections["web"]
    if web.get("token_file"):
        web["token_file"] = str(base / Path(web["token_file"]).expanduser())
    listening = parse_listen(web.get("listen", ""))
    if listening and not is_loopback(listening[0]) and not web.get("token_file"):
        problems.add("web.listen", f"{web['listen']} is reachable from other machines: set web.token_file too")
    model = sections["model"]
    if model.get("backend") == "immich-ml" and not model.get("urls"):
        problems.add("model.urls", 'backend "immich-ml" needs the address of at least one service')
    if model.get("urls"):
        model["urls"] = tuple(url.rstrip("/") for url in model["urls"])
    pack = sections["model"].get("pack")
    if pack is not None and _is_path(pack):
        sections["model"]["pack"] = str(base / Path(pack).expanduser())
    if problems.items:
        listing = "\n  ".join(problems.items)
        raise ConfigError(f"{path}: {len(problems.items)} problem(s) in config:\n  {listing}")
    return Settings(
        path=path,
        state_dir=state_dir,
        facesets_dir=facesets_dir,
        immich=immich,
        **{name: kind(**sections[name]) for name, kind in SECTIONS.items()},
    )


# -- the sample ------------------------------------------------------------------------------------

COMMENT_COLUMN = 43


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _line(assignment: str, comment: str) -> str:
    return f"{assignment.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else assignment


def sample_config(**values: str) -> str:
    """The whole config, every setting at its default with its comment; `values` replace the defaults
    of the top-level keys and of the [[immich]] table (`name`, `url`, `api_key_env`/`api_key_file`)."""
    lines = [
        _line(f"state_dir = {_toml(values.get('state_dir', TOP_KEYS['state_dir'][0]))}", TOP_KEYS["state_dir"][1]),
        _line(
            f"facesets_dir = {_toml(values['facesets_dir'])}"
            if "facesets_dir" in values
            else '# facesets_dir = "/srv/facesets"',
            TOP_KEYS["facesets_dir"][1],
        ),
    ]
    lines += ["", _line("[[immich]]", (ImmichSettings.__doc__ or "").split(":", 1)[1].strip())]
    for item, _ in _settings_fields(ImmichSettings):
        lines.append(_line(f"{item.name} = {_toml(values.get(item.name, item.default))}", item.metadata["doc"]))
        if item.name == "url":
            if "api_key_file" in values:
                lines.append(_line(f"api_key_file = {_toml(values['api_key_file'])}", SECRET_KEYS["api_key_file"]))
            else:
                env = values.get("api_key_env", "IMMICH_API_KEY_ALICE")
                lines.append(_line(f"api_key_env = {_toml(env)}", SECRET_KEYS["api_key_env"]))
                lines.append(_line('# api_key_file = "alice.key"', SECRET_KEYS["api_key_file"]))
    for name, kind in SECTIONS.items():
        lines += ["", _line(f"[{name}]", (kind.__doc__ or "").split(":", 1)[1].strip())]
        for item, _ in _settings_fields(kind):
            lines.append(_line(f"{item.name} = {_toml(item.default)}", item.metadata["doc"]))
    return "\n".join(lines) + "\n"


def reference() -> str:
    """docs/configuration.md: every setting, from the same declarations as the defaults and the checks
    (a test keeps the file equal to this, so the reference cannot drift from the code)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def table(kind: type) -> list[str]:
        rows = ["| key | default | what | allowed |", "| --- | --- | --- | --- |"]
        for item, _ in _settings_fields(kind):
            default, doc, rule = f"`{_toml(item.default)}`", item.metadata["doc"], item.metadata["rule"] or "any"
            rows.append(f"| `{item.name}` | {cell(default)} | {cell(doc)} | {cell(rule)} |")
        return rows

    lines = [
        "# Configuration",
        "",
        "<!-- Generated from facesyncd/config.py by `python -m facesyncd.config > docs/configuration.md`;",
        "     tests/unit/test_config.py keeps it equal to the code. -->",
        "",
        "The config is looked up in this order: `--config PATH` (before or after the command),",
        "`$FACESYNCD_CONFIG`, `$XDG_CONFIG_HOME/facesyncd/config.toml` (`~/.config/...`),",
        "`/etc/facesyncd/config.toml`. `facesyncd init` writes one. Unknown keys and bad values are all",
        "reported at once, with the file name (exit 2). Relative paths (`state_dir`, `facesets_dir`,",
        "`api_key_file`, a `[model] pack` folder) are relative to the config file. `facesyncd run` re-reads",
        "it on SIGHUP (`systemctl reload facesyncd`).",
        "",
        "## Every setting at its default",
        "",
        "```toml",
        sample_config().rstrip("\n"),
        "```",
        "",
        "## Top level",
        "",
        "| key | default | what |",
        "| --- | --- | --- |",
        *(f"| `{key}` | `{default}` | {cell(doc)} |" for key, (default, doc) in TOP_KEYS.items()),
        "",
        "## [[immich]]",
        "",
        cell((ImmichSettings.__doc__ or "").split(":", 1)[1].strip()).capitalize() + ". Exactly one of",
        "`api_key_env` ("
        + SECRET_KEYS["api_key_env"]
        + ") and `api_key_file` ("
        + SECRET_KEYS["api_key_file"].removeprefix("or: ")
        + ").",
        "",
        *table(ImmichSettings),
        "",
        "The API key needs these Immich permissions: `asset.read`, `asset.view`, `asset.download`, `face.read`,",
        "`user.read`; and, to notice within `sweep_minutes` what the listing never shows, `asset.statistics`,",
        "plus `partner.read` with `include_partners` (without those two it works as before and says so once).",
        "It is sent only in the `x-api-key` header, only to the configured URL's origin (a redirect elsewhere",
        "is refused), and never appears in logs, errors, the database or `status`. It must be one line of",
        "printable ASCII (a key file may end with a newline).",
        "",
        "The links to photos in each faceset's manifest are made from `web_url` (else from `url`'s origin):",
        "changing it rewrites every faceset's manifest at the next export, once. With `web_url` set, `url`",
        "may change (a new address, a proxy) and leave every folder as it is.",
    ]
    for name, kind in SECTIONS.items():
        lines += ["", f"## [{name}]", "", (kind.__doc__ or "").split(":", 1)[1].strip().capitalize() + ".", ""]
        lines += table(kind)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
