"""Stage: download, decode, detect and embed every asset that needs it, one transaction per asset.

Workers (one per core, at most 4) do the slow, GIL-free work of an asset (faces request, download,
hash, decode, detection, embedding, crops) and hand back a typed outcome; the main thread commits
the outcomes in listing order, one short transaction each, so face ids come out the same however the
work was spread. One bad asset never stops a cycle: its failure is recorded against it (attempts,
a retry time that doubles, parking); only systemic faults (server unreachable, disk full, a stop)
are raised, and end the cycle when the main thread reaches that asset.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from ..config import FaceSettings, SyncSettings
from ..crashpoints import checkpoint
from ..embedder import Embedder
from ..embedding import PhotoFaces, cut_faces, find_faces, save_faces
from ..errors import AssetGone, ImageError, ImmichError, Interrupted
from ..identities import SAME_FACE, pair_boxes, pair_greedily
from ..imaging import DecodedImage, decode_image
from ..immich import Download, ImmichClient
from ..layouts import Layout
from ..models import (
    AssetRow,
    AssetState,
    Box,
    CycleReport,
    DecodeSource,
    Dropped,
    ImportClaim,
    RemoteFace,
    StoredFace,
)
from ..progress import Reporter
from ..store import Store
from .tidy import Caches, remove_asset

log = logging.getLogger(__name__)

SKIP_BATCH = 500  # skipped assets per transaction
TASK_ASSETS = 4  # assets per task handed to a worker
# An imported crop and a face of the photo it was cut from are the same face when their boxes
# overlap this much (intersection over union): the same detector on the same photo.
IMPORT_MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class StageParts:
    """What staging a source's assets uses."""

    store: Store
    caches: Caches
    embedder: Embedder
    layout: Layout
    faces: FaceSettings
    sync: SyncSettings
    download_dir: Path
    reporter: Reporter
    stop: threading.Event


# -- what a worker hands back ---------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    row: AssetRow
    reason: str


@dataclass(frozen=True)
class Gone:
    row: AssetRow
    state: AssetState  # trashed or deleted, confirmed by a second answer


@dataclass(frozen=True)
class Failed:
    row: AssetRow
    reason: str


@dataclass(frozen=True)
class Same:
    """Immich's checksum names bytes embedded before (another source lists the same photo): nothing
    to download."""

    row: AssetRow
    sha256: str


@dataclass(frozen=True)
class Known:
    """The bytes were embedded before (another asset, another user): nothing to detect."""

    row: AssetRow
    download: Download


@dataclass(frozen=True)
class Embedded:
    row: AssetRow
    download: Download
    photo: PhotoFaces


Outcome = Skipped | Gone | Failed | Same | Known | Embedded


def discard(outcome: Outcome) -> None:
    """Drop the temporary download an outcome holds."""
    if isinstance(outcome, Known | Embedded):
        outcome.download.path.unlink(missing_ok=True)


# -- the stage ------------------------------------------------------------------------------------


def stage(parts: StageParts, source: str, client: ImmichClient, report: CycleReport) -> None:
    """Stage and embed every asset of `source` that needs it, `workers` at a time."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rows = parts.store.assets_to_process(source, now)
    parts.reporter.stage(f"{source}: processing", len(rows))
    if not rows:
        return
    workers = parts.sync.workers or parts.embedder.workers
    parts.layout.prepare()  # before the workers write for it
    readers: list[Store] = []
    local = threading.local()

    def prepare_batch(batch: list[AssetRow]) -> list[Outcome]:
        if not hasattr(local, "store"):
            local.store = Store(parts.store.path, readonly=True, threaded=True)
            readers.append(local.store)
        done: list[Outcome] = []
        try:
            for row in batch:
                done.append(prepare(parts, client, row, local.store))
        except BaseException:
            for outcome in done:
                discard(outcome)
            raise
        return done

    # Assets go to the workers a few at a time: an asset the prefilter skips costs less than
    # handing it to a thread and back.
    pending: deque[Future[list[Outcome]]] = deque()
    batches = (rows[start : start + TASK_ASSETS] for start in range(0, len(rows), TASK_ASSETS))
    skipped: list[tuple[str, str]] = []
    results: deque[Outcome] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facesyncd-worker") as pool:
        try:
            for batch in itertools.islice(batches, 2 * workers):
                pending.append(pool.submit(prepare_batch, batch))
            while pending or results:
                if not results:
                    results.extend(pending.popleft().result())
                    for batch in itertools.islice(batches, 1):
                        pending.append(pool.submit(prepare_batch, batch))
                outcome = results.popleft()
                if parts.stop.is_set():
                    discard(outcome)
                    raise Interrupted("stop requested")
                # Skipped assets are committed SKIP_BATCH at a time (a crash only means asking again).
                if isinstance(outcome, Skipped):
                    skipped.append((outcome.row.asset_id, outcome.reason))
                    report.skipped += 1
                if skipped and (
                    not isinstance(outcome, Skipped) or len(skipped) >= SKIP_BATCH or not (pending or results)
                ):
                    parts.store.mark_skipped(source, skipped)
                    skipped.clear()
                if not isinstance(outcome, Skipped):
                    commit(parts, source, outcome, report)
                parts.reporter.advance()
        finally:
            for future in pending:
                future.cancel()
            for future in pending:  # results nobody will commit: drop their temporary files
                if not future.cancelled():
                    try:
                        for leftover in future.result():
                            discard(leftover)
                    except BaseException:  # already failing: the first error wins
                        pass
            for leftover in results:
                discard(leftover)
    for reader in readers:
        reader.close()


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


def prepare(parts: StageParts, client: ImmichClient, row: AssetRow, reader: Store) -> Outcome:
    """Everything about one asset that needs no write to the store. Runs on a worker thread.

    Per-asset problems come back as an outcome; systemic ones (server down, disk full, stop)
    are raised."""
    if parts.stop.is_set():
        raise Interrupted("stop requested")
    faces_settings = parts.faces
    if row.type != "IMAGE":
        return Skipped(row, f"not an image ({(row.type or 'unknown').lower()})")
    if row.checksum_kind == "sha1" and row.checksum and (known := reader.embedded_by_checksum(row.checksum)):
        return Same(row, known)
    try:
        if faces_settings.prefilter:
            remote_faces = client.faces(row.asset_id)
            if faces_too_small(remote_faces, row.width, row.height, faces_settings.min_face_px):
                return Skipped(row, f"all faces Immich found are under {faces_settings.min_face_px}px")
        max_bytes = faces_settings.max_download_mb * 1024 * 1024
        download = client.download_original(row.asset_id, parts.download_dir, max_bytes)
        if row.checksum_kind == "sha1" and row.checksum and download.sha1 != row.checksum:
            download.path.unlink(missing_ok=True)
            return Failed(
                row,
                f"the downloaded bytes do not match Immich's checksum (SHA-1 {download.sha1}, "
                f"Immich says {row.checksum})",
            )
        try:
            if reader.blob_exists(download.sha256):
                return Known(row, download)
            image, decoded_from = decode(
                client,
                row.asset_id,
                download.path,
                faces_settings,
                max_bytes=max_bytes,
                download_dir=parts.download_dir,
            )
            faces = find_faces(parts.embedder, image)
            forgotten = reader.forgotten_in(download.sha256, [face.bbox for face in faces])
            faces = [face for index, face in enumerate(faces) if index not in forgotten]  # `faceset forget`
            photo = cut_faces(
                image,
                download.sha256,
                download.size,
                decoded_from,
                faces,
                crops=parts.caches.crops,
                layout=parts.layout,
            )
            del image
            checkpoint("embedded")
        except BaseException:
            download.path.unlink(missing_ok=True)
            raise
        return Embedded(row, download, photo)
    except AssetGone as gone:
        return confirm_gone(client, row, str(gone))
    except (ImageError, ImmichError) as error:
        return Failed(row, str(error))


def confirm_gone(client: ImmichClient, row: AssetRow, answer: str) -> Outcome:
    """One "not found" does not drop an asset and its faces (a proxy's hiccup, a storage migration
    in progress): the asset itself is asked for, and only a second "not found" counts. (A
    reconciliation's complete listing is the other confirmation, and it also brings back an asset
    that was taken as deleted wrongly.)"""
    try:
        asset = client.asset(row.asset_id)
    except AssetGone:
        return Gone(row, AssetState.DELETED)
    except ImmichError as error:
        return Failed(row, f"{answer}; asking for the asset again failed: {error}")
    if asset.is_trashed:
        return Gone(row, AssetState.TRASHED)
    return Failed(row, f"{answer}, but Immich still lists the asset; it will be tried again")


def decode(
    client: ImmichClient, asset_id: str, path: Path, settings: FaceSettings, *, max_bytes: int, download_dir: Path
) -> tuple[DecodedImage, DecodeSource]:
    """The original if it decodes (RAW files do not), else Immich's preview of it."""
    max_pixels = settings.max_image_megapixels * 1_000_000
    try:
        return decode_image(path, max_pixels=max_pixels), DecodeSource.ORIGINAL
    except ImageError as original_error:
        log.info(
            "%s: original of %s does not decode (%s); using Immich's preview", client.name, asset_id, original_error
        )
        try:
            preview = client.download_preview(asset_id, download_dir, max_bytes)
        except AssetGone:
            raise
        except ImmichError as preview_error:
            raise ImageError(f"original: {original_error}; no preview: {preview_error}") from None
        try:
            return decode_image(preview.path, max_pixels=max_pixels), DecodeSource.PREVIEW
        except ImageError as preview_error:
            raise ImageError(f"original: {original_error}; preview: {preview_error}") from None
        finally:
            preview.path.unlink(missing_ok=True)


# -- committing (main thread) ---------------------------------------------------------------------


def commit(parts: StageParts, source: str, outcome: Outcome, report: CycleReport) -> None:
    """Write one asset's outcome in one transaction."""
    store, row = parts.store, outcome.row
    try:
        if isinstance(outcome, Gone):
            remove_asset(store, parts.caches, source, row.asset_id, outcome.state, report)
        elif isinstance(outcome, Failed):
            fail(parts, source, row, outcome.reason, report)
        elif isinstance(outcome, Same):
            store.link_asset(source, row.asset_id, outcome.sha256)
            report.deduplicated += 1
        elif isinstance(outcome, Known) or (
            isinstance(outcome, Embedded) and store.blob_exists(outcome.download.sha256)
        ):
            report.downloaded += 1
            store.link_asset(source, row.asset_id, outcome.download.sha256)
            report.deduplicated += 1
        elif isinstance(outcome, Embedded):
            report.downloaded += 1
            download, photo = outcome.download, outcome.photo
            store.check_model(parts.embedder.name, parts.embedder.dimension)  # loaded now: its size known
            with store.transaction():
                save_faces(store, photo, parts.embedder.name)
                store.mark_done(
                    source,
                    row.asset_id,
                    download.sha256,
                    None if photo.decoded_from == DecodeSource.ORIGINAL else "decoded from Immich's preview",
                )
                replaced, dropped = replace_imported_faces(store, row, download.sha256)
            checkpoint("committed")
            parts.caches.forget(dropped)
            joined = [face for face in replaced if face.identity is not None]  # held faces join nothing
            if joined:
                parts.caches.index.add(
                    [face.id for face in joined],
                    np.stack([face.embedding for face in joined]),
                    [face.identity for face in joined if face.identity is not None],
                )
            report.embedded_assets += 1
            report.faces_found += len(photo.faces)
    finally:
        discard(outcome)


def replace_imported_faces(store: Store, row: AssetRow, sha256: str) -> tuple[list[StoredFace], Dropped]:
    """An imported tree that recorded where its crops came from (facesyncd's own export, adopted
    after the database was lost, or the older pipeline's manifest) holds faces of photos that now
    arrive from Immich: each such photo face takes its imported copy's place (its identity and
    sub-set, or the user's decision to hold it aside), instead of being a second copy of the same
    face. Inside the asset's transaction."""
    claims = store.import_claims(row.asset_id, row.original_file_name)
    if not claims:
        return [], Dropped()
    boxes = store.blob_boxes(sha256)
    pairs = pair_boxes([claim.bbox for claim in claims], [box for _, box in boxes], IMPORT_MIN_OVERLAP)
    pairs += _pair_faces(store, claims, boxes, pairs)
    replacements = [(claims[claim], boxes[face][0]) for claim, face in pairs]
    # A file name is not unique (every camera writes IMG_0001.JPG): a claim made by name alone
    # stands only where the photo's face is the imported face itself.
    by_name = [(claim, face) for claim, face in replacements if claim.by_name]
    if by_name:
        vectors = store.embeddings_of([face for pair in by_name for face in (pair[0].face_id, pair[1])])
        strangers = {
            claim.path for claim, face in by_name if 1.0 - float(vectors[claim.face_id] @ vectors[face]) > SAME_FACE
        }
        replacements = [(claim, face) for claim, face in replacements if claim.path not in strangers]
    dropped = store.supersede_imports(replacements)
    return store.faces_by_id([face_id for _, face_id in replacements]), dropped


def _pair_faces(
    store: Store, claims: Sequence[ImportClaim], boxes: Sequence[tuple[int, Box]], paired: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Claims whose box matched no face of the photo, paired by the face itself: a tree's boxes may be
    in another photo's pixels (a preview, a copy scaled down, one not turned upright). The same face
    re-detected in a 512 px crop lies within 0.11 of the photo's (benchmarks/measure_crop_distance.py),
    well inside SAME_FACE; nearest first, each face in one pair at most."""
    claimed, found = {row for row, _ in paired}, {column for _, column in paired}
    rows = [row for row in range(len(claims)) if row not in claimed]
    columns = [column for column in range(len(boxes)) if column not in found]
    if not rows or not columns:
        return []
    vectors = store.embeddings_of([claims[row].face_id for row in rows] + [boxes[column][0] for column in columns])
    candidates = sorted(
        (1.0 - float(vectors[claims[row].face_id] @ vectors[boxes[column][0]]), row, column)
        for row in rows
        for column in columns
        if claims[row].face_id in vectors and boxes[column][0] in vectors
    )
    return pair_greedily(candidates, SAME_FACE, claimed, found)


def fail(parts: StageParts, source: str, row: AssetRow, reason: str, report: CycleReport) -> None:
    sync = parts.sync
    delay = sync.retry_delay_seconds * (2**row.attempts)
    retry_at = datetime.now(UTC) + timedelta(seconds=min(delay, 7 * 86400))
    state = parts.store.mark_failed(
        source,
        row.asset_id,
        reason,
        max_attempts=sync.max_attempts,
        retry_at=retry_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    report.failed += 1
    log.warning("%s: asset %s (%s) %s: %s", source, row.asset_id, row.original_file_name, state, reason)
