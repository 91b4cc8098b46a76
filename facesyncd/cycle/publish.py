"""Publish: the faceset folders follow the store, in the configured layout; then the index is saved."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ExportSettings, FaceSettings, ImmichSettings
from ..errors import ImageError, ImmichAuthError, ImmichError, ImmichUnreachable
from ..export import (
    SCHEMA_VERSION,
    FolderState,
    changed_facesets,
    folder_state,
    folder_state_of,
    remove_faceset,
    write_names,
)
from ..imaging import DecodedImage
from ..immich import ClientSet, ImmichClient
from ..layouts import Layout, Library
from ..models import CycleReport, ExportFace
from ..progress import Reporter
from ..store import Store
from .stage import decode
from .tidy import Caches
from .unchanged import PUBLISH, remember_seen, seen_with

if TYPE_CHECKING:
    from ..index import FaceIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishParts:
    """What publishing the folders uses: the store, the caches, the layout, and (to fetch a photo
    again) the Immich clients with the configured sources; and the store's corrections_version
    this process's index holds (App.corrections_seen: see _save_centres)."""

    store: Store
    caches: Caches
    layout: Layout
    clients: ClientSet
    sources: tuple[ImmichSettings, ...]
    faces: FaceSettings
    export: ExportSettings
    facesets_dir: Path
    download_dir: Path
    reporter: Reporter
    corrections_seen: int


def publish(parts: PublishParts, report: CycleReport, only: frozenset[int] | None = None) -> None:
    """Write the faceset folders in the configured layout (layouts.py) and save the index for the
    next start, once its file lacks enough of it (IndexKeeper.save_if_changed). The folders can
    always be rebuilt: a layout fetches a face's photo again from Immich when it needs it (a lost
    crop, a swap PNG not cut yet). Faces under [export] min_quality stay out of the folders (not the
    store).

    only: the facesets a correction touched: their folders alone are written, and the index is
    neither built nor loaded for it (only saved if this process holds it already), so a correction
    costs what it changes, not the library.

    Without it (a cycle, or corrections another process made): while the settings and the folders
    are as the last export left them (no folder added, removed or touched by hand since, nor the
    crops directory lost: see Crops.state), only the facesets the store marked since (export_marks)
    are written, none if none was. When the user changed some folders by hand (a file deleted or
    added, a NAME.txt written) and nothing else, those facesets' folders are compared with the store
    too, whole (see _changed_by_hand: one edit cost a comparison of every folder, 3,000 at 500,000
    faces). Else every folder is compared with the store and written where it differs. A faceset
    whose folder is as left is brought in line from its marked faces alone where the layout can
    (write_marked): a faceset that gained a face costs that face, not its size."""
    _measure_unmeasured(parts)  # first: the qualities it sets are marks this export clears
    state = _settings(parts)
    marks = parts.store.export_marks()
    tree = _tree_state(parts)
    changed = _changed_by_hand(parts, state, tree)
    left = changed == frozenset()
    # a cycle compares the folders changed by hand; every other folder is as left
    by_hand = (changed or frozenset()) if only is None else frozenset()
    as_it_was = left or (only is None and changed is not None)
    if by_hand:
        log.info("the folders of %d facesets were changed by hand: compared with the store", len(by_hand))
    numbers = only if only is not None else marks.numbers | by_hand if as_it_was else None
    if only is None and numbers is not None and not numbers:
        log.debug("no faceset changed since the last export: the folders are as the store says")
        return
    if only is None and numbers is not None:
        log.debug("exporting the %d facesets that changed since the last export", len(numbers))
    partial = marks.partial(numbers - by_hand) if as_it_was and numbers is not None else {}
    complete = _publish(parts, report, numbers, partial, cycle=only is None)
    if not complete:  # the faces whose photo could not be had are tried again: their marks stay
        return
    parts.store.clear_export_marks(marks.upto, numbers)
    if numbers is None or as_it_was:  # the folders are now as this export left them
        _finished(parts, state, _tree_state(parts, tree[0], numbers))


def name_folders(parts: PublishParts, names: Mapping[int, str | None]) -> None:
    """Names facesyncd gives (a correction, Immich's names) written into the folders' NAME.txt
    (export.write_names: it is read back as the user's word). While the folders were as the last
    export left them, they still are: a NAME.txt facesyncd wrote is no change of the user's, and must
    not make the next export compare every folder with the store (3,000 at 500,000 faces)."""
    state = _settings(parts)
    tree = _tree_state(parts)
    left = _changed_by_hand(parts, state, tree) == frozenset()
    write_names(parts.facesets_dir, names)
    if left:
        _finished(parts, state, _tree_state(parts, tree[0], names.keys()))


def _finished(parts: PublishParts, state: tuple[object, ...], tree: tuple[FolderState, str]) -> None:
    """The folders are as the store says, in this state: recorded with the folders' state, for the
    next export to tell the folders the user changes from the rest (_changed_by_hand)."""
    remember_seen(parts.store, PUBLISH, (*state, tree[1]), tree[0])


def _changed_by_hand(
    parts: PublishParts, state: tuple[object, ...], tree: tuple[FolderState, str]
) -> frozenset[int] | None:
    """The facesets whose folders changed since the last export finished (none: the folders are as
    it left them), when nothing else changed: the settings and the crops directory as they were
    then, and the folders' changes those of export.changed_facesets (none added, removed or
    renamed). None otherwise, or when no export finished yet."""
    seen = seen_with(parts.store, PUBLISH, (*state, tree[1]), tree[0])
    if seen is None:
        return None
    return frozenset() if seen is tree[0] else changed_facesets(folder_state_of(seen), tree[0])


def _settings(parts: PublishParts) -> tuple[object, ...]:
    """What the folders' form depends on: when it changes, every folder is compared with the store.
    Of each source, the links to its photos the manifests hold: Immich's address moved behind a
    web_url that stays (a new IP, a proxy) leaves every folder as it is (comparing them all cost
    30 CPU-s at 500,000 faces)."""
    return (
        SCHEMA_VERSION,  # the form of what is written, with the settings it depends on
        parts.export,
        parts.facesets_dir,
        [(source.name, source.photo_link("")) for source in parts.sources],
    )


def _tree_state(
    parts: PublishParts, before: FolderState = (), written: Collection[int] | None = None
) -> tuple[FolderState, str]:
    """What the user (or a lost disk) may have changed under the export since it last ran: the
    faceset folders (export.folder_state) and the crops directory they are linked from. `before`:
    as read before an export that wrote the facesets `written` alone (None: any)."""
    return folder_state(parts.facesets_dir, before, written), parts.caches.crops.state()


def _publish(
    parts: PublishParts,
    report: CycleReport,
    only: frozenset[int] | None,
    partial: dict[int, frozenset[int]],
    *,
    cycle: bool,
) -> bool:
    parts.reporter.stage("exporting", None)
    with _Photos(parts) as photos:
        sources = {source.name: source for source in parts.sources}

        def link_of(face: ExportFace) -> str | None:
            source = sources.get(face.source)
            return source.photo_link(face.asset_id) if source is not None and face.asset_id else None

        def faces_of(ids: Collection[int]) -> dict[int, list[ExportFace]]:
            return _good_enough(parts.store.export_faces(faces=ids), parts.export.min_quality)

        library = Library(
            names=parts.store.identity_names,
            set_names=parts.store.set_identity_names,
            embeddings_of=parts.store.embeddings_of,
            photo_of=photos.of,
            link_of=link_of,
            retired=parts.store.retired_numbers,
        )
        done, written = parts.layout.write_marked(partial, faces_of, library)
        if done:
            log.debug("brought %d facesets in line from their changed faces alone", len(done))
        rest = None if only is None else only - done
        complete = True
        if rest is None or rest:
            for number in parts.store.forgotten_numbers():  # `faceset forget`: nothing of them is kept
                if (rest is None or number in rest) and remove_faceset(parts.facesets_dir, number):
                    log.info("removed the folders of forgotten faceset %03d", number)
            faces = _good_enough(parts.store.export_faces(rest), parts.export.min_quality)
            whole, complete = parts.layout.write(faces, parts.store.highest_identity(), library, rest)
            written += whole
        report.facesets_written = written
    if cycle:
        # The index the next start loads: built by a first export, brought in step with the store
        # when the file is behind it (a killed cycle's), and saved below. A cycle that needs it for
        # nothing else while the file is the store's (one that mended a folder the user changed)
        # does not load it: 0.3 CPU-s at 100,000 faces.
        if not parts.caches.index.loaded and not parts.caches.index.current_on_disk():
            parts.caches.index.get()
        if not parts.store.centres_current():  # what "same person?" suggestions compare
            _save_centres(parts, parts.caches.index.get())
    parts.caches.index.save_if_changed()
    return complete


def _save_centres(parts: PublishParts, index: FaceIndex) -> None:
    """The index's centres into the store: those of the identities marked since the rows were
    written (all, the first time: Store.centre_marks), in the transaction that reads the marks. Not
    while a correction another process made since this cycle began may be missing from the index
    (the next cycle takes it in first, actions._pick_up_corrections): a centre written from it would
    be stale, and its mark gone. The marks stay for that next cycle."""
    with parts.store.transaction():
        if parts.store.corrections_version() != parts.corrections_seen:
            log.debug("a correction came in during the cycle: the centres are written at the next")
            return
        marked = parts.store.centre_marks()
        parts.store.save_centres(index.centres(marked), index.face_counts(), only=marked)


def _good_enough(faces: dict[int, list[ExportFace]], min_quality: float) -> dict[int, list[ExportFace]]:
    if min_quality <= 0:
        return faces
    return {
        number: [face for face in members if face.quality is None or face.quality.composite >= min_quality]
        for number, members in faces.items()
    }


def _measure_unmeasured(parts: PublishParts) -> None:
    """Faces embedded before qualities were measured get theirs, from their crops, once."""
    qualities = {}
    for face in parts.store.unmeasured_faces():
        quality = parts.caches.crops.measure(face)
        if quality is not None:
            qualities[face.face_id] = quality
    if qualities:
        parts.store.set_qualities(qualities)
        log.info("measured the quality of %d faces embedded before qualities were", len(qualities))


class _Photos:
    """Photos fetched again from Immich (to cut crops or PNGs), through one client per source."""

    def __init__(self, parts: PublishParts) -> None:
        self._parts = parts
        self._sources = {source.name: source for source in parts.sources}
        self._clients: dict[str, ImmichClient] = {}
        self._stack = ExitStack()

    def __enter__(self) -> _Photos:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def of(self, face: ExportFace) -> DecodedImage | None:
        """The photo of `face`, decoded as when it was embedded; None when it cannot be had (an
        imported face, a source no longer configured, a photo Immich no longer serves)."""
        if face.asset_id is None or face.source not in self._sources:
            return None
        if face.source not in self._clients:
            self._clients[face.source] = self._stack.enter_context(self._parts.clients.open(self._sources[face.source]))
        try:
            return _photo(self._parts, self._clients[face.source], face.asset_id, face.sha256)
        except (ImmichError, ImmichUnreachable, ImmichAuthError, ImageError) as error:
            log.warning("cannot fetch the photo of %s again: %s", face.asset_id, error)
            return None


def _photo(parts: PublishParts, client: ImmichClient, asset_id: str, sha256: str) -> DecodedImage:
    """The photo whose bytes hash to `sha256`, decoded as when it was embedded."""
    max_bytes = parts.faces.max_download_mb * 1024 * 1024
    download = client.download_original(asset_id, parts.download_dir, max_bytes)
    try:
        if download.sha256 != sha256:
            raise ImmichError(f"{asset_id} changed in Immich since it was embedded")
        return decode(
            client, asset_id, download.path, parts.faces, max_bytes=max_bytes, download_dir=parts.download_dir
        )[0]
    finally:
        download.path.unlink(missing_ok=True)
