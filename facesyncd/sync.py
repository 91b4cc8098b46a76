"""One sync cycle: poll -> stage -> embed -> assign -> cluster -> export.

I/O (HTTP, decoding, inference) happens outside transactions; each asset's result is then written in
one short transaction. One bad asset never stops a cycle; a source that fails (wrong key, server down)
never stops the other sources. The HNSW index and the faceset folders are rebuilt from the store.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from .config import ImmichSettings, Settings
from .crashpoints import checkpoint
from .embedder import FaceEmbedder, crop_face, default_workers
from .errors import (
    AssetGone,
    FacesyncError,
    ImageError,
    ImmichAuthError,
    ImmichError,
    ImmichUnreachable,
    Interrupted,
    LocalWriteError,
    OrphanedFacesets,
    StoreError,
)
from .export import PRESERVED, export_all, face_file, own_facesets, set_aside_facesets
from .identities import Cluster, assign, cluster_pool, pair_boxes
from .imaging import DecodedImage, decode_image
from .immich import Download, ImmichClient, next_watermark, parse_time
from .index import FaceIndex
from .models import CycleReport, DetectedFace, RemoteFace, StoredFace
from .store import AssetRow, Dropped, ExportFace, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

SKIP_BATCH = 500  # skipped assets per transaction
TASK_ASSETS = 4  # assets per task handed to a worker

NEIGHBOURS = 16
# An imported crop and a face of the photo it was cut from are the same face when their boxes
# overlap this much (intersection over union): the same detector on the same photo.
IMPORT_MIN_OVERLAP = 0.5


class Reporter(Protocol):
    """Progress sink: the CLI passes a progress bar, the daemon a logger."""

    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def finish(self) -> None: ...


class SilentReporter:
    def stage(self, name: str, total: int | None) -> None:
        log.debug("stage %s (%s items)", name, total)

    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def break_off_after(grace_seconds: float, abort: Callable[[], None]) -> threading.Thread:
    """Call `abort` (break off requests in flight) once `grace_seconds` have passed: a stop waits for
    the asset in hand, but not for a server that stopped answering."""
    timer = threading.Timer(grace_seconds, abort)
    timer.daemon = True
    timer.start()
    return timer


def faces_too_small(faces: Sequence[RemoteFace], width: int | None, height: int | None, min_px: int) -> bool:
    """True when Immich found faces and every one, scaled to the original's size, is under min_px.

    Immich's boxes are in the preview's pixel space. The longest sides are compared, so the scale is
    right whether or not the preview was rotated upright relative to the stored original. A box
    without a positive width and height says nothing about the face's size: then the asset is not
    skipped (its faces are looked for by facesyncd's own detector).
    """
    if not faces or min_px <= 0:
        return False
    for face in faces:
        if face.x2 <= face.x1 or face.y2 <= face.y1:
            return False
        scale = 1.0
        if width and height and face.image_width > 0 and face.image_height > 0:
            scale = max(width, height) / max(face.image_width, face.image_height)
        shortest = min(face.x2 - face.x1, face.y2 - face.y1) * scale
        if shortest >= min_px:
            return False
    return True


@dataclass
class Prepared:
    """One asset's outcome from a worker, waiting to be committed by the main thread."""

    row: AssetRow
    skipped: str | None = None
    gone: str | None = None  # 'deleted' or 'trashed', confirmed by a second answer
    error: str | None = None
    download: Download | None = None
    decoded_from: str = "original"
    size: tuple[int, int] = (0, 0)
    faces: list[DetectedFace] | None = None
    crops: list[str] = field(default_factory=list)

    def discard(self) -> None:
        if self.download is not None:
            self.download.path.unlink(missing_ok=True)


@dataclass
class Replaced:
    """Photo faces that took the place of imported copies, and what the imported copies left to tidy."""

    faces: list[StoredFace] = field(default_factory=list)
    dropped: Dropped = field(default_factory=Dropped)


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Yield what `items` yields, fetching the next one on a thread while the caller handles this
    one: the server builds the next page of a listing while this one is written to the database
    (a full listing of 100,000 assets spends about as long in each)."""
    handoff: queue.Queue[tuple[bool, T | None, BaseException | None]] = queue.Queue(maxsize=1)
    abandoned = threading.Event()

    def put(entry: tuple[bool, T | None, BaseException | None]) -> bool:
        while not abandoned.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item, None)):
                    return
            put((True, None, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((True, None, error))

    thread = threading.Thread(target=produce, name="facesyncd-listing", daemon=True)
    thread.start()
    try:
        while True:
            finished, item, error = handoff.get()
            if error is not None:
                raise error
            if finished:
                return
            yield item  # type: ignore[misc]
    finally:
        abandoned.set()
        thread.join(timeout=1)  # a request in flight ends when the caller closes its client


def crop_path(sha256: str, face_index: int) -> str:
    """Crops live under state_dir/crops, named by content, so a retried asset rewrites the same files."""
    return f"{sha256[:2]}/{sha256}_{face_index}.jpg"


def write_crops(crops_dir: Path, sha256: str, faces: Sequence[DetectedFace]) -> list[str]:
    names = [crop_path(sha256, face_index) for face_index in range(len(faces))]
    for name, face in zip(names, faces, strict=True):
        write_crop(crops_dir, name, face.crop_jpeg)
    return names


def write_crop(crops_dir: Path, name: str, data: bytes) -> None:
    """Written beside its final name, synced, renamed: a crash leaves the old file or the new one."""
    target = crops_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".crop-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(data)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_crops(crops_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        (crops_dir / name).unlink(missing_ok=True)


def load_or_build_index(store: Store, state_dir: Path, dimension: int, *, force: bool = False) -> FaceIndex:
    """The saved index when it was built from the store as it is now, else one rebuilt from the store."""
    version = store.index_version()
    index = None if force else FaceIndex.load(state_dir, dimension, version, store.identity_map())
    if index is None:
        index = FaceIndex(dimension, capacity=store.count_identity_faces())
        for face_ids, embeddings, identities in store.iter_identity_faces():
            index.add(face_ids, embeddings, identities)
        index.save(state_dir, version)
        log.info("face index rebuilt from the database: %d faces", len(index))
    return index


class Syncer:
    """Runs cycles over every configured source against one store, embedder and index."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: FaceEmbedder,
        *,
        client_factory: Callable[[ImmichSettings], ImmichClient] | None = None,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.reporter: Reporter = reporter or SilentReporter()
        self.stop = stop or threading.Event()
        self._client_factory = client_factory or (
            lambda source: ImmichClient(source, self.settings.sync, stop=self.stop)
        )
        self._clients: set[ImmichClient] = set()
        self.crops_dir = settings.state_dir / "crops"
        self.download_dir = settings.state_dir / "tmp"
        # The index stays in memory between cycles (a daemon polls every few minutes) and is kept in
        # step with the store by this process (removed faces are marked deleted in it); it is dropped,
        # to be loaded or rebuilt, when a cycle fails half way or deleted entries pile up (_forget).
        self._index: FaceIndex | None = None
        self._index_saved_version: int | None = None

    # -- index ----------------------------------------------------------------------------------

    def open_index(self) -> FaceIndex:
        self.embedder.load()
        self._index = load_or_build_index(self.store, self.settings.state_dir, self.embedder.dimension)
        self._index_saved_version = self.store.index_version()
        return self._index

    # -- the cycle ------------------------------------------------------------------------------

    def run_cycle(self, *, reconcile: bool | None = None, cluster: bool = True, fresh: bool = False) -> CycleReport:
        """One full cycle. Raises the first source's error (after finishing the others) if any failed.

        reconcile: True lists the whole library now, False never, None when [schedule]
        reconcile_seconds have passed since the last one (and on a source's first sweep).
        fresh: a new database may start over beside facesets of a lost one (see check_adopted).
        """
        started = time.monotonic()
        report = CycleReport()
        self.check_adopted(fresh=fresh)
        self.embedder.load()
        self.store.check_model(self.embedder.name, self.embedder.dimension)
        report.providers = list(self.embedder.providers)
        cycle_id = self.store.start_cycle()
        first_error: FacesyncError | None = None
        try:
            self._remove_leftovers()
            if self._index is None:
                self.open_index()
            for source in self.settings.immich:
                try:
                    self._sync_source(source, report, reconcile=reconcile)
                except (ImmichAuthError, ImmichUnreachable, ImmichError) as error:
                    log.error("%s", error)
                    report.source_errors[source.name] = str(error)
                    self.store.set_source_error(source.name, str(error))
                    first_error = first_error or error
            self.assign_new_faces(report)
            if cluster:
                self.open_new_facesets(report)
            self.export(report)
        except OSError as error:
            problem = LocalWriteError(
                f"cannot write under {self.settings.state_dir} or {self.settings.facesets_dir}: "
                f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
            )
            self._index = None
            self._record_failure(cycle_id, started, report, problem)
            raise problem from error
        except BaseException as error:
            self._index = None
            self._record_failure(cycle_id, started, report, error)
            raise
        finally:
            self.reporter.finish()
        report.seconds = round(time.monotonic() - started, 3)
        error_text = "; ".join(f"{name}: {text}" for name, text in report.source_errors.items()) or None
        self.store.finish_cycle(cycle_id, ok=first_error is None, error=error_text, report=report.as_dict())
        if first_error is not None:
            raise first_error
        return report

    def check_adopted(self, *, fresh: bool = False) -> None:
        """A new database beside facesyncd's own facesets means the database was lost (or state_dir
        moved): numbering from 1 again would give faceset_001 to another person. Refuse until the
        user chooses: adopt the tree (`import-facesets`), or start over (`fresh`), which moves the
        old folders aside and numbers new facesets past the highest they used."""
        facesets_dir = self.settings.facesets_dir
        if not self.store.is_empty() or not own_facesets(facesets_dir):
            return
        if not fresh:
            raise OrphanedFacesets(
                f"{facesets_dir} holds facesets that facesyncd wrote, but the database in "
                f"{self.settings.state_dir} is new (lost or moved?): run `facesyncd import-facesets "
                f"{facesets_dir}` to adopt them with their numbers, or `facesyncd sync --fresh` to start over "
                f"(the old folders are moved to {facesets_dir / PRESERVED})"
            )
        highest = set_aside_facesets(facesets_dir)
        self.store.raise_number_floor(highest)
        log.warning("starting over: new facesets will number from %03d", highest + 1)

    def _record_failure(self, cycle_id: int, started: float, report: CycleReport, error: BaseException) -> None:
        report.seconds = round(time.monotonic() - started, 3)
        try:
            self.store.finish_cycle(
                cycle_id, ok=False, error=str(error) or type(error).__name__, report=report.as_dict()
            )
        except StoreError as store_error:  # a full disk may refuse this too; the original error matters more
            log.error("could not record the failed cycle: %s", store_error)

    def _remove_leftovers(self) -> None:
        """Temporary files of a process that was killed: partial downloads and crops."""
        self.download_dir.mkdir(parents=True, exist_ok=True)
        for pattern in ("download-*.part",):
            for leftover in self.download_dir.glob(pattern):
                leftover.unlink(missing_ok=True)
        for leftover in self.crops_dir.glob("*/.crop-*"):
            leftover.unlink(missing_ok=True)

    def _sync_source(self, source: ImmichSettings, report: CycleReport, *, reconcile: bool | None) -> None:
        self.store.ensure_source(source.name, source.url)
        with self._client_factory(source) as client:
            self._clients.add(client)
            try:
                client.whoami()
                server_now = client.server_now()  # the sweep's start, by the server's clock
                watermark = self.store.watermark(source.name)
                # A full listing (the first sweep, and every reconcile_seconds) records every asset the
                # server has, so it also restores assets held as deleted and queues any it missed.
                full = (
                    watermark is None
                    or reconcile is True
                    or (
                        reconcile is None
                        and self.store.reconcile_due(source.name, self.settings.schedule.reconcile_seconds)
                    )
                )
                remote: dict[str, bool] = {}
                newest: datetime | None = None
                self.reporter.stage(f"{source.name}: listing", None)
                listing_started = time.monotonic()
                pages = client.iter_changed(None if full else watermark, self.settings.sync.page_size)
                for page in prefetched(pages):
                    self._check_stop()
                    report.listed += len(page)
                    listed = self.store.record_listed(source.name, page)
                    checkpoint("listed-page")
                    report.new_or_changed += listed.needing_work
                    self._forget(listed.dropped)
                    for asset_id in listed.trashed:
                        self._remove(source.name, asset_id, "trashed", report)
                    if full:
                        remote.update((asset.id, asset.is_trashed) for asset in page)
                    for asset in page:
                        moment = parse_time(asset.updated_at)
                        if moment is not None and (newest is None or moment > newest):
                            newest = moment
                # Only a complete sweep moves the watermark: a broken one is redone from the old mark.
                self.store.finish_sweep(
                    source.name,
                    next_watermark(watermark, server_now, newest, self.settings.sync.watermark_overlap_seconds),
                )
                report.listing_seconds += round(time.monotonic() - listing_started, 3)
                checkpoint("sweep-finished")
                if full:
                    self._reconcile(source.name, remote, report, exact=not client.listing_by_offset)
                self._process_pending(source.name, client, report)
            finally:
                self._clients.discard(client)
                report.requests += client.requests

    def _reconcile(self, source: str, remote: dict[str, bool], report: CycleReport, *, exact: bool) -> None:
        """Assets we hold that a complete listing no longer has were deleted there (hard deletions never
        show up in an incremental sweep, and an asset emptied from the trash neither). A listing that
        had to page by offset may have skipped some: then nothing is taken as deleted this time."""
        if not exact:
            log.warning("%s: the listing paged by offset; deletions are not applied until a clean listing", source)
        for asset_id, state in sorted(self.store.known_asset_states(source).items()):
            if asset_id not in remote:
                if exact:
                    self._remove(source, asset_id, "deleted", report)
            elif remote[asset_id] and state != "trashed":
                self._remove(source, asset_id, "trashed", report)
        self.store.mark_reconciled(source)
        # Crops a crash left without a database row.
        known = self.store.all_crops()
        if self.crops_dir.is_dir():
            for path in self.crops_dir.glob("*/*.jpg"):
                if f"{path.parent.name}/{path.name}" not in known:
                    path.unlink(missing_ok=True)

    def _remove(self, source: str, asset_id: str, state: str, report: CycleReport) -> None:
        self._forget(self.store.remove_asset(source, asset_id, state))
        report.removed_assets += 1
        log.info("%s: asset %s %s in Immich; its faces left the facesets", source, asset_id, state)

    def _forget(self, dropped: Dropped) -> None:
        """Tidy what the store dropped: crop files, and faces in the index. Those are marked deleted
        there rather than rebuilding the index (about a minute at 200,000 faces); once deleted
        entries outnumber half the live ones, the index is rebuilt to reclaim them."""
        remove_crops(self.crops_dir, dropped.crops)
        if self._index is not None and dropped.indexed_faces:
            self._index.remove(dropped.indexed_faces)
            if self._index.deleted > max(1024, len(self._index) // 2):
                self._index = None

    def _process_pending(self, source: str, client: ImmichClient, report: CycleReport) -> None:
        """Stage and embed every asset that needs it, `workers` at a time.

        Workers do the slow, GIL-free work of an asset (faces request, download, hash, decode,
        detection, embedding, crops) while earlier results are committed here, one transaction per
        asset, in listing order, so face ids come out the same however the work was spread. Skipped
        assets are committed SKIP_BATCH at a time (a crash only means asking about them again).
        """
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows = self.store.assets_to_process(source, now)
        self.reporter.stage(f"{source}: processing", len(rows))
        if not rows:
            return
        workers = self.settings.sync.workers or default_workers()
        readers: list[Store] = []
        local = threading.local()

        def prepare(batch: list[AssetRow]) -> list[Prepared]:
            if not hasattr(local, "store"):
                local.store = Store(self.store.path, readonly=True, threaded=True)
                readers.append(local.store)
            done: list[Prepared] = []
            try:
                for row in batch:
                    done.append(self._prepare(client, row, local.store))
            except BaseException:
                for prepared in done:
                    prepared.discard()
                raise
            return done

        # Assets go to the workers a few at a time: an asset the prefilter skips costs less than
        # handing it to a thread and back.
        pending: deque[Future[list[Prepared]]] = deque()
        batches = (rows[start : start + TASK_ASSETS] for start in range(0, len(rows), TASK_ASSETS))
        skipped: list[tuple[str, str]] = []
        results: deque[Prepared] = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facesyncd-worker") as pool:
            try:
                for batch in itertools.islice(batches, 2 * workers):
                    pending.append(pool.submit(prepare, batch))
                while pending or results:
                    if not results:
                        results.extend(pending.popleft().result())
                        for batch in itertools.islice(batches, 1):
                            pending.append(pool.submit(prepare, batch))
                    prepared = results.popleft()
                    self._check_stop()
                    if prepared.skipped is not None:
                        skipped.append((prepared.row.asset_id, prepared.skipped))
                        report.skipped += 1
                    if skipped and (prepared.skipped is None or len(skipped) >= SKIP_BATCH or not (pending or results)):
                        self.store.mark_skipped(source, skipped)
                        skipped.clear()
                    if prepared.skipped is None:
                        self._commit(source, prepared, report)
                    self.reporter.advance()
            finally:
                for future in pending:
                    future.cancel()
                for future in pending:  # results nobody will commit: drop their temporary files
                    if not future.cancelled():
                        try:
                            for leftover in future.result():
                                leftover.discard()
                        except BaseException:  # already failing: the first error wins
                            pass
                for leftover in results:
                    leftover.discard()
        for reader in readers:
            reader.close()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stop requested")

    def abort(self) -> None:
        """Break off requests in flight (called from another thread when a stop takes too long)."""
        for client in list(self._clients):
            client.close()

    def _prepare(self, client: ImmichClient, row: AssetRow, reader: Store) -> Prepared:
        """Everything about one asset that needs no write to the store. Runs on a worker thread.

        Per-asset problems come back in the result; systemic ones (server down, disk full, stop)
        are raised and end the cycle when the main thread reaches this asset.
        """
        self._check_stop()
        faces_settings = self.settings.faces
        if row.type != "IMAGE":
            return Prepared(row, skipped=f"not an image ({(row.type or 'unknown').lower()})")
        try:
            if faces_settings.prefilter:
                remote_faces = client.faces(row.asset_id)
                if faces_too_small(remote_faces, row.width, row.height, faces_settings.min_face_px):
                    return Prepared(row, skipped=f"all faces Immich found are under {faces_settings.min_face_px}px")
            max_bytes = faces_settings.max_download_mb * 1024 * 1024
            download = client.download_original(row.asset_id, self.download_dir, max_bytes)
            if row.checksum_kind == "sha1" and row.checksum and download.sha1 != row.checksum:
                download.path.unlink(missing_ok=True)
                return Prepared(
                    row,
                    error=f"the downloaded bytes do not match Immich's checksum (SHA-1 {download.sha1}, "
                    f"Immich says {row.checksum})",
                )
            prepared = Prepared(row, download=download)
            try:
                if reader.blob_exists(download.sha256):
                    return prepared
                image, prepared.decoded_from = self._decode(client, row.asset_id, download.path, max_bytes)
                prepared.size = (image.width, image.height)
                prepared.faces = self.embedder.faces(image)
                del image
                prepared.crops = write_crops(self.crops_dir, download.sha256, prepared.faces)
                checkpoint("embedded")
            except BaseException:
                prepared.discard()
                raise
            return prepared
        except AssetGone as gone:
            return self._confirm_gone(client, row, str(gone))
        except (ImageError, ImmichError) as error:
            return Prepared(row, error=str(error))

    def _confirm_gone(self, client: ImmichClient, row: AssetRow, answer: str) -> Prepared:
        """One "not found" does not drop an asset and its faces (a proxy's hiccup, a storage migration
        in progress): the asset itself is asked for, and only a second "not found" counts. (A
        reconciliation's complete listing is the other confirmation, and it also brings back an asset
        that was taken as deleted wrongly.)"""
        try:
            asset = client.asset(row.asset_id)
        except AssetGone:
            return Prepared(row, gone="deleted")
        except ImmichError as error:
            return Prepared(row, error=f"{answer}; asking for the asset again failed: {error}")
        if asset.is_trashed:
            return Prepared(row, gone="trashed")
        return Prepared(row, error=f"{answer}, but Immich still lists the asset; it will be tried again")

    def _commit(self, source: str, prepared: Prepared, report: CycleReport) -> None:
        """Write one asset's outcome in one transaction (main thread)."""
        row = prepared.row
        try:
            if prepared.gone is not None:
                self._remove(source, row.asset_id, prepared.gone, report)
            elif prepared.error is not None:
                self._fail(source, row, prepared.error, report)
            elif prepared.download is not None:
                download = prepared.download
                report.downloaded += 1
                if prepared.faces is None or self.store.blob_exists(download.sha256):
                    self.store.link_asset(source, row.asset_id, download.sha256)
                    report.deduplicated += 1
                    return
                width, height = prepared.size
                with self.store.transaction():
                    self.store.save_blob_faces(
                        download.sha256,
                        size=download.size,
                        width=width,
                        height=height,
                        decoded_from=prepared.decoded_from,
                        model=self.embedder.name,
                        faces=prepared.faces,
                        crops=prepared.crops,
                    )
                    self.store.mark_done(
                        source,
                        row.asset_id,
                        download.sha256,
                        None if prepared.decoded_from == "original" else "decoded from Immich's preview",
                    )
                    replaced = self._replace_imported_faces(row.asset_id, download.sha256)
                checkpoint("committed")
                self._forget(replaced.dropped)
                if self._index is not None and replaced.faces:
                    self._index.add(
                        [face.id for face in replaced.faces],
                        np.stack([face.embedding for face in replaced.faces]),
                        [face.identity or 0 for face in replaced.faces],
                    )
                report.embedded_assets += 1
                report.faces_found += len(prepared.faces)
        finally:
            prepared.discard()

    def _replace_imported_faces(self, asset_id: str, sha256: str) -> Replaced:
        """An imported tree that recorded where its crops came from (facesyncd's own export, adopted
        after the database was lost) holds faces of photos that now arrive from Immich: each such
        photo face takes its imported copy's place in the identity, instead of joining as a second
        copy of the same face. Inside the asset's transaction."""
        claims = self.store.import_claims(asset_id)
        if not claims:
            return Replaced()
        boxes = self.store.blob_boxes(sha256)
        pairs = pair_boxes([claim.bbox for claim in claims], [box for _, box in boxes], IMPORT_MIN_OVERLAP)
        replacements = [(claims[claim], boxes[face][0]) for claim, face in pairs]
        dropped = self.store.supersede_imports(replacements)
        return Replaced(self.store.faces_by_id([face_id for _, face_id in replacements]), dropped)

    def _decode(self, client: ImmichClient, asset_id: str, path: Path, max_bytes: int) -> tuple[DecodedImage, str]:
        """The original if it decodes (RAW files do not), else Immich's preview of it."""
        max_pixels = self.settings.faces.max_image_megapixels * 1_000_000
        try:
            return decode_image(path, max_pixels=max_pixels), "original"
        except ImageError as original_error:
            log.info(
                "%s: original of %s does not decode (%s); using Immich's preview",
                client.name,
                asset_id,
                original_error,
            )
            try:
                preview = client.download_preview(asset_id, self.download_dir, max_bytes)
            except AssetGone:
                raise
            except ImmichError as preview_error:
                raise ImageError(f"original: {original_error}; no preview: {preview_error}") from None
            try:
                return decode_image(preview.path, max_pixels=max_pixels), "preview"
            except ImageError as preview_error:
                raise ImageError(f"original: {original_error}; preview: {preview_error}") from None
            finally:
                preview.path.unlink(missing_ok=True)

    def _restore_crops(self, missing: list[ExportFace]) -> int:
        restored = 0
        by_blob: dict[str, list[ExportFace]] = {}
        exported = {path.name: path for path in sorted(self.settings.facesets_dir.glob("faceset_*/face_*.jpg"))}
        for face in missing:
            copy = exported.get(face_file(face))
            if copy is not None:
                write_crop(self.crops_dir, face.crop, copy.read_bytes())
                restored += 1
            else:
                by_blob.setdefault(face.sha256, []).append(face)
        sources = {source.name: source for source in self.settings.immich}
        clients: dict[str, ImmichClient] = {}
        try:
            for sha256, faces in by_blob.items():
                first = faces[0]
                if first.asset_id is None or first.source not in sources:
                    log.warning("crop of face %d is gone and its photo is not in a configured Immich", first.face_id)
                    continue
                if first.source not in clients:
                    clients[first.source] = self._client_factory(sources[first.source])
                    self._clients.add(clients[first.source])
                try:
                    image = self._image_of(clients[first.source], first.asset_id, sha256)
                except (ImmichError, ImmichUnreachable, ImmichAuthError, ImageError) as error:
                    log.warning("cannot cut the crops of %s again: %s", first.asset_id, error)
                    continue
                for face in faces:
                    box = np.array(face.bbox, np.float32)
                    write_crop(self.crops_dir, face.crop, crop_face(image, box, self.settings.faces.crop_margin))
                    restored += 1
        finally:
            for client in clients.values():
                self._clients.discard(client)
                client.close()
        return restored

    def _image_of(self, client: ImmichClient, asset_id: str, sha256: str) -> DecodedImage:
        """The photo whose bytes hash to `sha256`, decoded as when it was embedded."""
        max_bytes = self.settings.faces.max_download_mb * 1024 * 1024
        download = client.download_original(asset_id, self.download_dir, max_bytes)
        try:
            if download.sha256 != sha256:
                raise ImmichError(f"{asset_id} changed in Immich since it was embedded")
            return self._decode(client, asset_id, download.path, max_bytes)[0]
        finally:
            download.path.unlink(missing_ok=True)

    def _fail(self, source: str, row: AssetRow, reason: str, report: CycleReport) -> None:
        delay = self.settings.sync.retry_delay_seconds * (2**row.attempts)
        retry_at = datetime.now(UTC) + timedelta(seconds=min(delay, 7 * 86400))
        state = self.store.mark_failed(
            source,
            row.asset_id,
            reason,
            max_attempts=self.settings.sync.max_attempts,
            retry_at=retry_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        report.failed += 1
        log.warning("%s: asset %s (%s) %s: %s", source, row.asset_id, row.original_file_name, state, reason)

    # -- identities -----------------------------------------------------------------------------

    def _match(self, faces: list[StoredFace], index: FaceIndex) -> dict[int, tuple[int, float]]:
        if not faces or len(index) == 0:
            return {}
        embeddings = np.stack([face.embedding for face in faces])
        neighbour_ids, neighbour_distances = index.query(embeddings, NEIGHBOURS)
        blobs = [face.sha256 for face in faces]
        taken = {blob: self.store.identities_of_blob(blob) for blob in set(blobs)}
        matches = assign(
            blobs,
            neighbour_ids,
            neighbour_distances,
            index.identity_of,
            self.settings.identities.match_distance,
            taken,
        )
        return {faces[row].id: match for row, match in matches.items()}

    def _add_to_index(self, index: FaceIndex, faces: list[StoredFace], matches: dict[int, tuple[int, float]]) -> None:
        joined = [face for face in faces if face.id in matches]
        if joined:
            index.add(
                [face.id for face in joined],
                np.stack([face.embedding for face in joined]),
                [matches[face.id][0] for face in joined],
            )

    def assign_new_faces(self, report: CycleReport) -> None:
        """Step 4: each face not yet compared joins the closest identity within match_distance."""
        faces = self.store.unmatched_new_faces()
        if not faces:
            return
        index = self._index or self.open_index()
        self.reporter.stage("assigning faces", len(faces))
        matches = self._match(faces, index)
        self.store.record_matches(matches, [face.id for face in faces])
        checkpoint("assigned")
        self._add_to_index(index, faces, matches)
        report.faces_assigned += len(matches)
        self.reporter.advance(len(faces))

    def open_new_facesets(self, report: CycleReport) -> None:
        """Step 5: cluster the pool of unmatched faces; clusters that pass the gates become identities.

        A pool too large to cluster at once goes in rounds (see cluster_pool): after each, the faces
        left in the pool are matched against the identities it opened, as a later sync would."""
        identity_settings = self.settings.identities
        clustered: set[int] = set()  # face ids some round clustered
        while True:
            pool = self.store.pool_faces()
            if len(pool) < identity_settings.min_faceset_faces:
                return
            self.reporter.stage("clustering", len(pool))
            clustering = cluster_pool(
                np.stack([face.embedding for face in pool]),
                [face.sha256 for face in pool],
                cluster_distance=identity_settings.cluster_distance,
                member_distance=identity_settings.match_distance,
                min_faces=identity_settings.min_faceset_faces,
                fresh=np.array([face.id not in clustered for face in pool], bool),
            )
            clustered.update(pool[int(row)].id for row in clustering.clustered)
            if clustering.clusters:
                self._open_identities(pool, clustering.clusters, report)
            if not clustering.more_rounds:
                return

    def _open_identities(self, pool: list[StoredFace], clusters: list[Cluster], report: CycleReport) -> None:
        index = self._index or self.open_index()
        for cluster in clusters:
            members = {pool[row].id: distance for row, distance in zip(cluster.rows, cluster.distances, strict=True)}
            number = self.store.create_identity(members)
            checkpoint("identity-created")
            index.add(
                list(members),
                np.stack([pool[row].embedding for row in cluster.rows]),
                [number] * len(members),
            )
            report.identities_created.append(number)
            log.info("opened faceset %03d with %d faces", number, len(members))
        # Faces left in the pool may belong to the identities just opened.
        remaining = self.store.pool_faces()
        matches = self._match(remaining, index)
        if matches:
            self.store.record_matches(matches, [])
            self._add_to_index(index, remaining, matches)
            report.faces_assigned += len(matches)

    def export(self, report: CycleReport) -> None:
        """Step 6: faceset folders follow the store; then the index is saved for the next start.

        Crop files that went missing (state_dir/crops deleted, a disk fault) are restored first, so
        the folders can always be rebuilt: from a copy in an exported folder if there is one, else
        cut again from the photo in Immich. A face whose crop cannot come back stays out of its
        folder, and is tried again next cycle."""
        self.check_adopted()  # never remove the folders of a lost database (they look like stale ones)
        self.reporter.stage("exporting", None)
        faces = self.store.export_faces()
        missing: list[ExportFace] = []
        highest = self.store.highest_identity()
        report.facesets_written = export_all(
            self.settings.facesets_dir, self.crops_dir, faces, missing, highest_number=highest
        )
        if missing:
            restored = self._restore_crops(missing)
            log.warning("%d face crops were missing; %d restored", len(missing), restored)
            report.facesets_written += export_all(
                self.settings.facesets_dir, self.crops_dir, faces, highest_number=highest
            )
        index = self._index or self.open_index()
        version = self.store.index_version()
        if version != self._index_saved_version:  # unchanged: the file on disk is already this index
            index.save(self.settings.state_dir, version)
            self._index_saved_version = version
