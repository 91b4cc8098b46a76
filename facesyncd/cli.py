"""The command line: parse, load settings, build objects, call one core function, render.

Every FacesyncError becomes one line `facesyncd: error: ...` and its documented exit code
(tracebacks only with --debug). Heavy modules (onnxruntime, insightface, hnswlib) are imported only by
the commands that need them, so `status` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import typer

from . import __version__, curation
from .config import (
    DEFAULT_SYSTEM_CONFIG,
    ModelSettings,
    Settings,
    find_config,
    load_settings,
    sample_config,
    server_url,
    settings_from_dict,
    user_config_path,
)
from .entry import EXIT_INTERRUPTED
from .errors import FacesyncError, permission_denied
from .logs import setup_logging
from .ownership import kept_by_owner
from .progress import TerminalProgress
from .review import FACE_SORTS, sorted_faces

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts name config sections such as [schedule]: plain text, not markup
    help="Keep numbered faceset folders in sync with an Immich library.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _State:
    config: Path | None = None
    debug: bool = False


_state = _State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facesyncd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Config file (default: $FACESYNCD_CONFIG, "
        "$XDG_CONFIG_HOME/facesyncd/config.toml, /etc/facesyncd/config.toml).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    log_format: str = typer.Option("text", "--log-format", help="text, or json for log shippers."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    _state.config = config
    _state.debug = debug
    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"unknown log format {log_format!r}", param_hint="--log-format")
    setup_logging(level, log_format)


def _settings(*, secrets: bool = True) -> Settings:
    return load_settings(find_config(_state.config), secrets=secrets)


@app.command()
def init(
    url: str | None = typer.Option(None, "--url", help="Immich's address, e.g. https://photos.example.org."),
    name: str = typer.Option("alice", "--name", help="A name for this Immich user (letters, digits, _ . -)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Read the API key from this variable."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="Read the API key from this file."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Where the database, index and crops go."),
    facesets_dir: Path | None = typer.Option(None, "--facesets-dir", help="Where the faceset folders go."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing config file."),
) -> None:
    """Write a commented config file (every setting, with its default), asking for what it needs.

    In a terminal it asks for the URL and the API key (kept in a file beside the config, mode 600);
    otherwise give --url and --api-key-env or --api-key-file. The file goes to --config, else
    $XDG_CONFIG_HOME/facesyncd/config.toml (/etc/facesyncd/config.toml when run as root).

    Example: facesyncd init --url https://photos.example.org
    """
    from .errors import ConfigError

    target = _state.config or (DEFAULT_SYSTEM_CONFIG if _is_root() else user_config_path())
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; edit it, or give --force to write a new one")
    interactive = sys.stdin.isatty()
    if url is None:
        if not interactive:
            raise ConfigError("init needs --url (or run it in a terminal to be asked)")
        url = typer.prompt("Immich URL (e.g. https://photos.example.org)")
    values: dict[str, str] = {"name": name, "url": server_url(url)}
    key_path: Path | None = None
    if api_key_env:
        values["api_key_env"] = api_key_env
    elif api_key_file:
        values["api_key_file"] = str(api_key_file)
    elif interactive:
        key = typer.prompt(
            "API key (Immich > Account Settings > API Keys; needs asset.read, asset.view, asset.download, "
            "face.read, user.read)",
            hide_input=True,
        ).strip()
        key_path = target.parent / f"{name}.key"
        values["api_key_file"] = key_path.name
    else:
        raise ConfigError("init needs --api-key-env or --api-key-file (or run it in a terminal to be asked)")
    default_state = Path("/var/lib/facesyncd") if _is_root() else _data_home() / "facesyncd"
    values["state_dir"] = str((state_dir or default_state).expanduser().absolute())
    if facesets_dir is not None:
        values["facesets_dir"] = str(facesets_dir.expanduser().absolute())
    text = sample_config(**values)
    try:
        settings_from_dict(tomllib.loads(text), target, secrets=False)  # what is written must load
    except ConfigError as error:
        raise ConfigError(f"not written: {error}") from None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if key_path is not None:
            key_path.unlink(missing_ok=True)
            descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as output:
                output.write(key + "\n")
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {target}: {error.strerror or error}") from None
    pack = ModelSettings().pack_dir()
    typer.echo(f"wrote {target}" + (f" and the API key to {key_path}" if key_path else ""))
    typer.echo("next:")
    if not any(pack.glob("*.onnx")):
        typer.echo(f"  get the model pack:  facesyncd{' --config ' + str(target) if _state.config else ''} model fetch")
    config_option = f" --config {target}" if _state.config else ""
    typer.echo(f"  first sync:          facesyncd{config_option} sync")
    typer.echo(f"  the facesets:        ls {values.get('facesets_dir', Path(values['state_dir']) / 'facesets')}")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


@app.command()
def sync(
    reconcile: bool | None = typer.Option(
        None,
        "--reconcile/--no-reconcile",
        help="List the whole library now to catch assets deleted in Immich (otherwise done every "
        "[schedule] reconcile_seconds, default a day, and when the count taken every sweep_minutes "
        "differs); --no-reconcile never (and no count).",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="With a new database beside facesets a lost one wrote: start over, moving those folders "
        "aside (new facesets number past theirs) instead of adopting them with import-facesets.",
    ),
) -> None:
    """Run one full cycle: poll Immich, download, embed, assign, open new facesets, export.

    Example: facesyncd --config /etc/facesyncd/config.toml sync
    """
    from . import actions
    from .app import App, open_app
    from .lock import state_lock

    settings = _settings()
    stop = threading.Event()
    running: list[App] = []

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: no more waiting
            raise KeyboardInterrupt
        stop.set()  # stop after the asset in hand; requests still in flight are broken off later
        for app in running:
            _break_off_after(settings.schedule.stop_grace_seconds, app.abort)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with kept_by_owner(settings.state_dir, settings.facesets_dir), state_lock(settings.state_dir):
            with open_app(settings, stop=stop, reporter=TerminalProgress()) as app:
                running.append(app)
                report = actions.sync(
                    app, reconcile=reconcile, census=False if reconcile is False else None, fresh=fresh
                )
    finally:
        for signum, handler in previous.items():  # the caller's handlers again (the CLI run in-process)
            signal.signal(signum, handler)
    typer.echo(report.line())


def _break_off_after(grace_seconds: float, abort: Any) -> None:
    """Call `abort` (break off requests in flight) once `grace_seconds` have passed: a stop waits for
    the asset in hand, but not for a server that stopped answering."""
    timer = threading.Timer(grace_seconds, abort)
    timer.daemon = True
    timer.start()


@app.command()
def run() -> None:
    """Run as a service: sync now, then every [schedule] poll_seconds, until SIGTERM.

    Clustering and a full reconciliation with Immich run on their own schedules. SIGHUP reloads
    the config. Example: facesyncd --config /etc/facesyncd/config.toml run
    """
    from .daemon import Daemon

    path = find_config(_state.config)
    settings = load_settings(path)
    with kept_by_owner(settings.state_dir, settings.facesets_dir):
        code = Daemon(path, settings).run()
    raise typer.Exit(code)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show assets per state, faces, identities, the last sync and each source's watermark.

    Works while another process syncs. Example: facesyncd status --json
    """
    from .status import collect_status, render_status

    data = collect_status(_settings(secrets=False))
    typer.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else render_status(data))


@app.command("rebuild-index")
def rebuild_index() -> None:
    """Rebuild the face index (a cache) from the database.

    Example: facesyncd rebuild-index
    """
    from . import actions
    from .app import open_app

    settings = _settings(secrets=False)
    with kept_by_owner(settings.state_dir):
        with open_app(settings, create=False) as app:
            count = actions.rebuild_index(app)
    typer.echo(f"index rebuilt: {count} faces")


@app.command("import-facesets")
def import_facesets(
    directory: Path = typer.Argument(..., help="Folder holding faceset_NNN/ folders of face images."),
    merge: bool = typer.Option(
        False, "--merge", help="The tree's numbers exist here already: add its faces to those facesets."
    ),
) -> None:
    """Adopt an existing tree of faceset_NNN/ folders as identities NNN (numbers kept): facesyncd's own
    export, or the older pipeline's (era splits faceset_NNN_<label>, _thin/ _masked/ _merged/
    _candidates/ as the user's decisions, manifest.json, NAME.txt). The tree is never modified.

    Example: facesyncd import-facesets /srv/old-pipeline/facesets_swap_ready
    """
    from . import actions
    from .app import open_app
    from .lock import state_lock

    settings = _settings(secrets=False)
    with kept_by_owner(settings.state_dir, settings.facesets_dir), state_lock(settings.state_dir):
        with open_app(settings, reporter=TerminalProgress()) as app:
            report = actions.import_facesets(app, directory, merge=merge)
    held = f", {report.held} set aside as the tree decided" if report.held else ""
    held += f", {report.forgotten} of forgotten people left out" if report.forgotten else ""
    others = f", not images: {len(report.not_images)}" if report.not_images else ""
    others += f", links out of the tree: {len(report.outside)}" if report.outside else ""
    typer.echo(
        f"imported {report.imported} faces into {len(report.identities)} facesets "
        f"({report.already} already imported, {len(report.failed)} failed{held}{others})"
    )
    for path, reason in sorted(report.failed.items()):
        typer.echo(f"  failed: {path}: {reason}", err=True)
    for path in sorted(report.not_images):
        typer.echo(f"  not an image, left alone: {path}", err=True)
    for path in report.outside:
        typer.echo(f"  a link out of the tree, not followed: {path}", err=True)


@app.command()
def retry() -> None:
    """Queue failed and parked assets for another attempt at the next sync.

    Example: facesyncd retry
    """
    from . import actions
    from .app import open_app
    from .lock import state_lock

    settings = _settings(secrets=False)
    with kept_by_owner(settings.state_dir), state_lock(settings.state_dir):
        with open_app(settings, create=False) as app:
            count = actions.retry(app)
    typer.echo(f"{count} assets queued for retry")


model_app = typer.Typer(help="The face model pack.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(model_app, name="model")


@model_app.command("fetch")
def model_fetch(
    name: str | None = typer.Argument(None, help="The pack's name (default: the config's [model] pack)."),
    url: str | None = typer.Option(None, "--url", help="Download from here (with --sha256) instead."),
    sha256: str | None = typer.Option(None, "--sha256", help="The zip's checksum, for --url."),
    force: bool = typer.Option(False, "--force", help="Replace a pack that is there already."),
) -> None:
    """Download the model pack once, check its sha256 and unpack it where the config looks for it
    ([model] pack: a folder, or a name under ~/.insightface/models). Only this command downloads.

    Example: facesyncd model fetch
    """
    from .modelpacks import fetch, source_of

    path = find_config(_state.config)
    configured = _settings(secrets=False).model if path.exists() else ModelSettings()
    model = configured if name is None or name == configured.pack_dir().name else ModelSettings(pack=name)
    folder = model.pack_dir()
    source = source_of(name or folder.name, url, sha256)
    bar: Any = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, desc=folder.name, unit="B", unit_scale=True, file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.n)

    typer.echo(f"downloading {source.url}")
    try:
        fetched = fetch(source, folder, force=force, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    typer.echo(
        f"checked (sha256 {source.sha256[:12]}…) and unpacked {len(fetched.files)} models "
        f"({fetched.downloaded / 1e6:.1f} MB) into {fetched.folder}: {', '.join(fetched.files)}"
    )
    if name is not None and model is not configured:
        typer.echo(f'to use it, set [model] pack = "{folder}" in the config')


faceset_app = typer.Typer(help="Look at facesets and correct them.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(faceset_app, name="faceset")
face_app = typer.Typer(help="Correct one face.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(face_app, name="face")


def _read_only_app() -> Any:
    from .app import open_app

    return open_app(_settings(secrets=False), create=False)


def _read_only_store() -> Any:
    """The store alone: what `faceset list/show` and `history` read (the application, its HTTP
    client, OpenCV and the model stay unloaded). Opened as every command opens it, so a database of
    an earlier version is migrated first, as before."""
    from .store import Store

    return Store(_settings(secrets=False).database_path, create=False)


def _correct(correction: curation.Correction) -> None:
    from . import actions

    outcome, applied = actions.correct_in(_settings(secrets=False), correction)
    number = outcome.correction
    undo = f" (correction {number}; `facesyncd undo {number}`)" if number else ""
    later = "" if applied else " The running facesyncd updates the folders within seconds."
    typer.echo(outcome.message + undo + later)


@faceset_app.command("list")
def faceset_list(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    everything: bool = typer.Option(False, "--all", help="Retired numbers too (merged, forgotten)."),
) -> None:
    """List the facesets: number, faces, name, locked, last change.

    Example: facesyncd faceset list --json
    """
    with _read_only_store() as store:
        sets = [summary for summary in store.facesets() if everything or not summary.retired]
    if as_json:
        typer.echo(json.dumps([summary.as_dict() for summary in sets], indent=1))
        return
    for summary in sets:
        flags = (" locked" if summary.locked else "") + (" hidden" if summary.hidden else "")
        if summary.merged_into is not None:
            flags += f" merged into {summary.merged_into:03d}"
        if summary.forgotten:
            flags += " forgotten"
        typer.echo(f"{summary.number:03d}  {summary.faces:5d} faces  {summary.name or '-'}{flags}")


@faceset_app.command("show")
def faceset_show(
    number: int = typer.Argument(..., help="The faceset's number (faceset_NNN)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    sort: str = typer.Option(
        FACE_SORTS[0],
        "--sort",
        help=f"Order as the review page can: {', '.join(FACE_SORTS)} (distance: farthest first; date: newest first).",
    ),
) -> None:
    """Show one faceset: each face with its id, photo (file name, date taken), distance and quality.

    Example: facesyncd faceset show 7 --sort distance
    """
    from .errors import ConfigError
    from .localtime import local_time

    if sort not in FACE_SORTS:
        raise ConfigError(f"--sort {sort}: one of {', '.join(FACE_SORTS)}")
    with _read_only_store() as store:
        found = store.facesets(number)
        faces = sorted_faces(store.faces_of_identity(number), sort)
    if not found:
        raise curation.CorrectionRefused(f"there is no faceset {number:03d} (see `facesyncd faceset list`)")
    summary = found[0]
    if as_json:
        typer.echo(json.dumps({**summary.as_dict(), "face_list": [face.as_dict() for face in faces]}, indent=1))
        return
    typer.echo(f"faceset {number:03d}: {summary.name or '(no name)'}, {summary.faces} faces")
    if summary.merged_into is not None:
        typer.echo(f"merged into {summary.merged_into:03d}: this number is retired")
    if summary.forgotten:
        typer.echo("forgotten: its faces were deleted and this number is retired")
    if summary.locked:
        typer.echo("locked: takes no new faces automatically")
    if summary.hidden:
        typer.echo("hidden: kept and taking its person's new faces, never exported (`faceset unhide` shows it)")
    for face in faces:
        distance = "-" if face.distance is None else f"{face.distance:.3f}"
        quality = "-" if face.quality is None else f"{face.quality:.2f}"
        placed = "  (placed by hand)" if face.placed else ""
        photo = f"{face.file_name or face.asset_id} {local_time(face.taken)}".strip() if face.asset_id else "imported"
        typer.echo(f"  face {face.face_id}  photo {photo}  distance {distance}  quality {quality}{placed}")


@faceset_app.command("name", help=curation.Name.help)
def faceset_name(
    number: int = typer.Argument(..., help="The faceset's number."),
    name: str = typer.Argument(..., help='Its name ("" removes it).'),
) -> None:
    _correct(curation.Name(number, name))


@faceset_app.command("merge", help=curation.Merge.help)
def faceset_merge(
    number: int = typer.Argument(..., help="The faceset that keeps its number."),
    others: list[int] = typer.Argument(..., help="The facesets that join it (their numbers are retired)."),
) -> None:
    _correct(curation.Merge(number, tuple(others)))


@faceset_app.command("split", help=curation.Split.help)
def faceset_split(
    number: int = typer.Argument(..., help="The faceset to split."),
    faces: list[int] = typer.Argument(..., help="Ids of the faces that leave it (see `faceset show`)."),
) -> None:
    _correct(curation.Split(number, tuple(faces)))


@faceset_app.command("lock", help=curation.Lock.help)
def faceset_lock(number: int = typer.Argument(..., help="The faceset to lock.")) -> None:
    _correct(curation.Lock(number))


@faceset_app.command("unlock", help=curation.Unlock.help)
def faceset_unlock(number: int = typer.Argument(..., help="The faceset to unlock.")) -> None:
    _correct(curation.Unlock(number))


@faceset_app.command("hide", help=curation.Hide.help)
def faceset_hide(number: int = typer.Argument(..., help="The faceset to hide.")) -> None:
    _correct(curation.Hide(number))


@faceset_app.command("unhide", help=curation.Unhide.help)
def faceset_unhide(number: int = typer.Argument(..., help="The faceset to show again.")) -> None:
    _correct(curation.Unhide(number))


@faceset_app.command("apart", help=curation.Apart.help)
def faceset_apart(
    number: int = typer.Argument(..., help="One faceset."),
    other: int = typer.Argument(..., help="The other: not the same person."),
) -> None:
    _correct(curation.Apart(number, other))


@faceset_app.command("suggestions")
def faceset_suggestions(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List "same person?" pairs: facesets whose faces are close ([identities] suggest_distance) or that
    carry the same name. Accept one with `faceset merge A B`, decline it with `faceset apart A B`.

    Example: facesyncd faceset suggestions
    """
    from .suggestions import suggestions_of

    settings = _settings(secrets=False)
    with _read_only_store() as store:
        found = suggestions_of(store, settings.identities)
        names = store.identity_names()
    if as_json:
        typer.echo(json.dumps([suggestion.as_dict() for suggestion in found], indent=1))
        return
    if not found:
        typer.echo("no suggestions: no two facesets are close or share a name")
    for suggestion in found:
        distance = "-" if suggestion.distance is None else f"{suggestion.distance:.3f}"
        typer.echo(
            f"{suggestion.low:03d} {names.get(suggestion.low) or '-'}  +  {suggestion.high:03d} "
            f"{names.get(suggestion.high) or '-'}  distance {distance}  ({suggestion.why})"
        )


@faceset_app.command("forget", help=curation.Forget.help)
def faceset_forget(
    number: int = typer.Argument(..., help="The faceset of the person to forget."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    if not yes:
        if not sys.stdin.isatty():
            raise curation.CorrectionRefused(f"forgetting faceset {number:03d} deletes its faces: add --yes")
        typer.confirm(f"Delete faceset {number:03d}'s faces, crops and folder for good?", abort=True)
    _correct(curation.Forget(number))


@face_app.command("move", help=curation.Move.help)
def face_move(
    face: int = typer.Argument(..., help="The face's id (see `faceset show`)."),
    number: int = typer.Argument(..., help="The faceset it belongs to."),
) -> None:
    _correct(curation.Move(face, number))


@face_app.command("reject", help=curation.Reject.help)
def face_reject(face: int = typer.Argument(..., help="The face's id (see `faceset show`).")) -> None:
    _correct(curation.Reject(face))


@face_app.command("gather", help=curation.Gather.help)
def face_gather(
    faces: list[int] = typer.Argument(..., help="Ids of the faces (see `faceset show`, the pool page)."),
) -> None:
    _correct(curation.Gather(tuple(faces)))


@face_app.command("put-away", help=curation.PutAway.help)
def face_put_away(faces: list[int] = typer.Argument(..., help="Ids of the faces.")) -> None:
    _correct(curation.PutAway(tuple(faces)))


@app.command()
def serve(
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT to serve on (default: [web] listen, else 127.0.0.1:8765)."
    ),
) -> None:
    """Serve the review page (facesets, faces, the pool, history; every correction as a form) and
    /metrics, until Ctrl-C. Works beside a running daemon.

    Example: facesyncd serve --listen 127.0.0.1:8765
    """
    import dataclasses

    from .config import is_loopback, parse_listen
    from .errors import ConfigError
    from .web import WebServer

    try:  # with the keys, a face opens in its photo (fetched from Immich); without, in its crop
        settings = _settings()
    except ConfigError:
        settings = _settings(secrets=False)
    chosen = listen or settings.web.listen or "127.0.0.1:8765"
    address = parse_listen(chosen)
    if address is None:
        raise ConfigError(f"--listen {chosen}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    if not is_loopback(address[0]) and not settings.web.token_file:
        raise ConfigError(f"--listen {chosen} is reachable from other machines: set [web] token_file first")
    settings = dataclasses.replace(settings, web=dataclasses.replace(settings.web, listen=chosen))
    server = WebServer(settings)
    server.bind()
    typer.echo(f"serving the review page on {server.address} (Ctrl-C stops)")
    server.serve()


@app.command()
def history(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the corrections made, oldest first, with their ids for `undo`.

    Example: facesyncd history
    """
    with _read_only_store() as store:
        entries = store.history()
    if as_json:
        typer.echo(json.dumps([entry.as_dict() for entry in entries], indent=1))
        return
    from .localtime import local_time

    if not entries:
        typer.echo("no corrections yet (see `facesyncd faceset --help`)")
    for entry in entries:
        undone = f"  (undone {local_time(entry.undone_at)})" if entry.undone_at else ""
        typer.echo(f"{entry.id:4d}  {local_time(entry.at)}  {entry.summary}{undone}")


@app.command(help=curation.Undo.help)
def undo(correction: int = typer.Argument(..., help="The correction's id (see `facesyncd history`).")) -> None:
    _correct(curation.Undo(correction))


@faceset_app.command("sheet")
def faceset_sheet(
    number: int = typer.Argument(..., help="The faceset's number (faceset_NNN)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the PNG (default: faceset_NNN.png)."),
) -> None:
    """Write a contact sheet: the faceset's faces on one PNG, best first, with face ids and quality.

    Example: facesyncd faceset sheet 7 --out /tmp/faceset_007.png
    """
    from . import actions
    from .errors import LocalWriteError

    with _read_only_app() as app:
        data = actions.contact_sheet(app, number)
    target = out or Path(f"faceset_{number:03d}.png")
    try:
        target.write_bytes(data)
    except OSError as error:
        raise LocalWriteError(f"cannot write {target}: {error.strerror or error}") from None
    typer.echo(f"wrote {target}")


# facesyncd's own options, with whether each takes a value: accepted after the command too
# (`facesyncd sync --config x` said "No such option").
GLOBAL_OPTIONS = {"--config": True, "-c": True, "--log-level": True, "--log-format": True, "--debug": False}


def global_options_first(argv: list[str]) -> list[str]:
    """`argv` with facesyncd's own options moved before the command, wherever they were given (never
    past a `--`, after which everything is an argument)."""
    front: list[str] = []
    rest: list[str] = []
    position = 0
    while position < len(argv):
        word = argv[position]
        if word == "--":
            rest += argv[position:]
            break
        name = word.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in word
            front += argv[position : position + 1 + takes_value]
            position += 1 + takes_value
            continue
        rest.append(word)
        position += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app on `argv` (default: the command line), turning known errors into one
    line and an exit code (SystemExit)."""
    arguments = global_options_first(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=arguments, standalone_mode=False, prog_name="facesyncd")
    except (FacesyncError, PermissionError) as error:  # PermissionError: another user's folder (the service's)
        if _state.debug:
            logging.getLogger("facesyncd").exception("error")
        problem = error if isinstance(error, FacesyncError) else permission_denied(error)
        typer.echo(f"facesyncd: error: {problem}", err=True)
        sys.exit(problem.exit_code)
    except KeyboardInterrupt:
        typer.echo("facesyncd: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        if not _is_usage_error(error):
            raise
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help(), err=True)  # `facesyncd` alone: what there is to type
        else:
            hint = f"{context.command_path} --help" if context is not None else "facesyncd --help"
            typer.echo(f"facesyncd: error: {error.format_message()} (see {hint})", err=True)  # type: ignore[attr-defined]
        sys.exit(int(getattr(error, "exit_code", 2)))
    # typer hands back the code of an Exit (run's own, or 130 for a Ctrl-C it caught) instead of exiting.
    if isinstance(code, int) and code:
        if code == EXIT_INTERRUPTED:
            typer.echo("facesyncd: interrupted", err=True)
        sys.exit(code)


def _is_usage_error(error: BaseException) -> bool:
    """A bad command, option or value, as typer's (vendored) click reports it."""
    return any(kind.__name__ == "ClickException" for kind in type(error).__mro__)
