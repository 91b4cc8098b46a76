"""What each command does, over an App: sync, cluster, rebuild-index, import-facesets, retry.

Every action that changes identities or folders runs through `run_action`, the one place for the
bookkeeping a command owes: a cycle record (what ran, how it ended, its report), the failure policy
(a local write error becomes LocalWriteError; any failure drops the in-memory index, which may be
ahead of the store, and is recorded before it is raised), and the progress reporter's end.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .app import App
from .blas import one_thread
from .config import Settings
from .curation import Correction, FileHashes, Outcome
from .cycle import merge_identities, name_folders, open_new_facesets, publish, run_cycle
from .errors import AlreadyRunning, FacesyncError, LocalWriteError, OrphanedFacesets, StoreError
from .export import PRESERVED, Exported, exported, own_facesets, set_aside_facesets
from .importer import ImportReport
from .importer import import_facesets as import_tree
from .index import load_or_build
from .models import CycleReport, ExportFace, JobKind

log = logging.getLogger(__name__)


def run_action(app: App, kind: JobKind, body: Callable[[CycleReport], FacesyncError | None]) -> CycleReport:
    """Run `body` as one recorded cycle. `body` returns an error to raise once the cycle is recorded
    (a failing source: the others went on), or raises itself."""
    started = time.monotonic()
    report = CycleReport(providers=list(app.embedder.providers))
    _pick_up_corrections(app)
    cycle_id = app.store.start_cycle(kind)
    try:
        with one_thread():  # (see blas.py)
            deferred = body(report)
        app.reporter.done()
    except OSError as error:
        problem = LocalWriteError(
            f"cannot write under {app.settings.state_dir} or {app.settings.facesets_dir}: "
            f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        )
        _record_failure(app, cycle_id, started, report, problem)
        raise problem from error
    except BaseException as error:
        _record_failure(app, cycle_id, started, report, error)
        raise
    finally:
        app.reporter.finish()
    report.seconds = round(time.monotonic() - started, 3)
    error_text = "; ".join(f"{name}: {text}" for name, text in report.source_errors.items()) or None
    app.store.finish_cycle(cycle_id, ok=deferred is None, error=error_text, report=report.as_dict())
    if deferred is not None:
        raise deferred
    return report


def _pick_up_corrections(app: App) -> None:
    """Corrections made by another process (a command while the daemon runs) changed identities
    under the index this process holds: it takes in the faces they changed (IndexKeeper.catch_up)."""
    version = app.store.corrections_version()
    if version != app.corrections_seen:
        app.index.catch_up()
        app.corrections_seen = version


def corrections_pending(app: App) -> bool:
    return app.store.corrections_version() != app.corrections_seen


def correct(app: App, correction: Correction, *, export: bool = True) -> Outcome:
    """Make one correction (curation.py) and tidy what it left outside the store: the crops and swap
    PNGs of deleted faces. With `export` (this process holds the state directory), the folders are
    brought in line now; else the running daemon does it within seconds. Names the correction gives
    are written to NAME.txt first (it is read back as the user's word)."""
    names = correction.names(app.store)
    if names:
        name_folders(app.publish_parts(), names)
    outcome = correction.apply(app.store, file_hashes(app))
    app.caches.forget(outcome.dropped)
    if export:
        apply_corrections(app, outcome.touched)
    return outcome


def correct_in(settings: Settings, correction: Correction) -> tuple[Outcome, bool]:
    """Make a correction from a command or the review page. Returns it, and whether the folders were
    brought in line now: when this process can take the state directory, yes; while another process
    (the daemon) holds it, the correction is saved and that process applies it within seconds
    (SQLite serialises the two writers; the daemon re-reads what a correction changed)."""
    from .app import open_app
    from .lock import state_lock
    from .ownership import kept_by_owner

    with kept_by_owner(settings.state_dir, settings.facesets_dir):
        try:
            with state_lock(settings.state_dir), open_app(settings, create=False) as app:
                return correct(app, correction), True
        except AlreadyRunning:
            pass
        with open_app(settings, create=False) as app:
            return correct(app, correction, export=False), False


def file_hashes(app: App) -> FileHashes:
    """crop names -> the sha256 of each file facesyncd wrote for them (crop, swap PNG): what its
    own exported folders hold, for the block list of `faceset forget`."""

    def hashes(crops: Sequence[str]) -> list[str]:
        found = []
        for path in [app.crops.path(crop) for crop in crops] + [app.swap.png(crop) for crop in crops]:
            try:
                found.append(hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                continue  # not there (a crop to be restored, no swap PNG): nothing to block
        return found

    return hashes


def apply_corrections(app: App, only: frozenset[int] | None = None) -> CycleReport:
    """Bring the folders in line with the corrections in the store: those of `only` (what this
    process's correction touched), else all (corrections another process made). No face model is
    loaded for it (the swap layout's detector loads itself if a new PNG must be checked)."""
    return run_action(app, JobKind.CORRECT, lambda report: publish(app.publish_parts(), report, only))


def _record_failure(app: App, cycle_id: int, started: float, report: CycleReport, error: BaseException) -> None:
    app.index.drop()
    app.pool.drop()
    report.seconds = round(time.monotonic() - started, 3)
    try:
        app.store.finish_cycle(cycle_id, ok=False, error=str(error) or type(error).__name__, report=report.as_dict())
    except StoreError as store_error:  # a full disk may refuse this too; the original error matters more
        log.error("could not record the failed cycle: %s", store_error)


def _check_model(app: App) -> None:
    """The configured model must be the one the stored faces came from: checked by its name now; the
    model itself loads when a photo first needs it (a cycle with nothing new never loads it), and
    its embedding size is checked then (stage.commit). A pack that is not there fails now, before
    anything is asked of Immich."""
    app.embedder.check()
    app.store.check_model(app.embedder.name, 0)


def sync(
    app: App,
    *,
    reconcile: bool | None = None,
    census: bool | None = None,
    cluster: bool = True,
    fresh: bool = False,
    kind: JobKind = JobKind.SYNC,
) -> CycleReport:
    """One full cycle over every source. Raises the first source's error (after finishing the others).

    reconcile: True lists the whole library now, False never, None when due. census: True counts
    Immich's assets for changes the listing hides, False never, None when due. cluster: open new
    facesets from the pool too. fresh: see check_adopted."""
    check_adopted(app, fresh=fresh)
    _check_model(app)
    # Temporary files of a process that was killed (before this one started): partial downloads and
    # crops. Once per process: looking through every crop folder cost a quiet cycle 50 ms at 50,000.
    if not app.leftovers_removed:
        app.download_dir.mkdir(parents=True, exist_ok=True)
        for leftover in app.download_dir.glob("download-*.part"):
            leftover.unlink(missing_ok=True)
        app.crops.remove_leftovers()
        app.swap.remove_leftovers()
        app.leftovers_removed = True
    return run_action(
        app, kind, lambda report: run_cycle(app, report, reconcile=reconcile, census=census, cluster=cluster)
    )


def cluster(app: App) -> CycleReport:
    """Open new facesets from the pool of unmatched faces, and export."""
    check_adopted(app)
    _check_model(app)

    def body(report: CycleReport) -> None:
        identify = app.identify_parts()
        open_new_facesets(identify, report)
        merge_identities(identify, report)
        publish(app.publish_parts(), report)

    return run_action(app, JobKind.CLUSTER, body)


def import_facesets(app: App, directory: Path, *, merge: bool = False) -> ImportReport:
    """Adopt a tree of faceset_NNN folders (see importer.py), then export."""
    _check_model(app)
    result: list[ImportReport] = []

    def body(report: CycleReport) -> None:
        imported = import_tree(
            directory,
            app.store,
            app.embedder,
            app.crops,
            settings=app.settings.faces,
            merge=merge,
            layout=app.layout,
            reporter=app.reporter,
        )
        report.faces_found = imported.imported
        result.append(imported)
        app.index.drop()  # imported faces joined identities outside the index
        publish(app.publish_parts(), report)

    run_action(app, JobKind.IMPORT, body)
    return result[0]


def rebuild_index(app: App) -> int:
    """Rebuild the face index (a cache) from the database; returns how many faces it holds."""
    dimension = app.store.get_meta("embedding_dim")
    if dimension is None:
        raise StoreError("the database has no faces yet: nothing to index")
    faces: list[int] = []

    def body(report: CycleReport) -> None:
        faces.append(len(load_or_build(app.store, app.settings.state_dir, int(dimension), force=True)))

    run_action(app, JobKind.REBUILD_INDEX, body)
    return faces[0]


def retry(app: App) -> int:
    """Queue failed and parked assets for the next sync; returns how many."""
    queued: list[int] = []
    run_action(app, JobKind.RETRY, lambda report: queued.append(app.store.retry_parked()))
    return queued[0]


def check_adopted(app: App, *, fresh: bool = False) -> None:
    """A new database beside facesyncd's own facesets means the database was lost (or state_dir
    moved): numbering from 1 again would give faceset_001 to another person. Refuse until the user
    chooses: adopt the tree (`import-facesets`), or start over (`fresh`), which moves the old folders
    aside and numbers new facesets past the highest they used."""
    facesets_dir = app.settings.facesets_dir
    if not app.store.is_empty() or not own_facesets(facesets_dir):
        return
    if not fresh:
        raise OrphanedFacesets(
            f"{facesets_dir} holds facesets that facesyncd wrote, but the database in "
            f"{app.settings.state_dir} is new (lost or moved?): run `facesyncd import-facesets "
            f"{facesets_dir}` to adopt them with their numbers, or `facesyncd sync --fresh` to start over "
            f"(the old folders are moved to {facesets_dir / PRESERVED})"
        )
    highest = set_aside_facesets(facesets_dir)
    app.store.raise_number_floor(highest)
    log.warning("starting over: new facesets will number from %03d", highest + 1)


def sheet_caption(face: ExportFace, folder: Exported | None) -> str:
    """A contact sheet tile's caption: the face, its quality, and what its folder does with it (the
    top bundle, its rank, or left out) as the review page says it."""
    quality = f" q{face.quality.composite:.2f}" if face.quality else ""
    if folder is None:
        return f"#{face.face_id}{quality}"
    status = folder.status(face.face_id)
    short = "left out" if status.startswith("left out") else status.replace("exported ", "")
    return f"#{face.face_id}{quality} {short}"


def contact_sheet(app: App, number: int) -> bytes:
    """A PNG of faceset `number`'s faces as its folder shows them, best first (swap PNGs where there
    are, else crops), each captioned with its face id and quality."""
    import cv2
    import numpy as np

    from .sheet import contact_sheet as render

    faces = app.store.export_faces().get(number)
    if not faces:
        raise FacesyncError(f"faceset {number:03d} has no faces (see `facesyncd status`)")
    name = app.store.identity_names().get(number)
    folder = exported(app.settings.facesets_dir, number)
    tiles = []
    for face in sorted(faces, key=lambda face: -(face.quality.composite if face.quality else 0.0)):
        path = app.layout.face_file(face.crop)
        pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) if path.is_file() else None
        if pixels is not None:
            tiles.append((np.asarray(pixels, np.uint8), sheet_caption(face, folder)))
    title = f"faceset_{number:03d}" + (f"  {name}" if name else "") + f"  {len(tiles)} faces"
    return render(tiles, title)
