"""Publish: the faceset folders follow the store (lost crops restored first), then the index is saved."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING

from ..errors import ImageError, ImmichAuthError, ImmichError, ImmichUnreachable
from ..export import NAME_FILE, export_all, export_plans, folders, own_facesets, remove_faceset
from ..imaging import DecodedImage
from ..immich import ImmichClient
from ..models import CycleReport, ExportFace
from ..swap import plan, select
from .stage import decode

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)


def publish(app: App, report: CycleReport) -> None:
    """Write the faceset folders and save the index for the next start.

    Crop files that went missing (state_dir/crops deleted, a disk fault) are restored first, so the
    folders can always be rebuilt: from a copy in an exported folder if there is one, else cut again
    from the photo in Immich. A face whose crop cannot come back stays out of its folder, and is
    tried again next cycle. Faces under [export] min_quality stay out of the folders (not the store)."""
    app.reporter.stage("exporting", None)
    for number in app.store.forgotten_numbers():  # `faceset forget`: nothing of them is kept
        if remove_faceset(app.settings.facesets_dir, number):
            log.info("removed the folders of forgotten faceset %03d", number)
    _measure_unmeasured(app)
    faces = _good_enough(app.store.export_faces(), app.settings.export.min_quality)
    highest = app.store.highest_identity()
    if app.settings.export.format == "swap":
        report.facesets_written = _publish_swap(app, faces, highest)
    else:
        facesets_dir, crops_dir = app.settings.facesets_dir, app.crops.directory
        missing: list[ExportFace] = []
        names = app.store.identity_names()
        report.facesets_written = export_all(
            facesets_dir, crops_dir, faces, missing, highest_number=highest, names=names
        )
        if missing:
            restored = _restore(app, missing)
            log.warning("%d face crops were missing; %d restored", len(missing), restored)
            report.facesets_written += export_all(facesets_dir, crops_dir, faces, highest_number=highest, names=names)
    app.index.get()  # a first export builds the index the next start loads
    app.index.save_if_changed()


def _good_enough(faces: dict[int, list[ExportFace]], min_quality: float) -> dict[int, list[ExportFace]]:
    if min_quality <= 0:
        return faces
    return {
        number: [face for face in members if face.quality is None or face.quality.composite >= min_quality]
        for number, members in faces.items()
    }


def _publish_swap(app: App, faces: dict[int, list[ExportFace]], highest: int) -> int:
    """The swap layout: each faceset's chosen faces (swap.select), their checked PNGs (made now for
    faces that have none: from the photo in Immich, or the crop of an imported face), the bundles."""
    _read_names(app)
    names = app.store.identity_names()
    embeddings = app.store.embeddings_of([face.face_id for members in faces.values() for face in members])
    wanted = folders(faces)
    choices = {folder: select(members, embeddings, 0.0) for folder, (_, _, members) in wanted.items()}
    needed = [face for chosen, _ in choices.values() for face in chosen if not app.swap.has(face.crop)]
    if needed:
        made = _make_pngs(app, needed)
        log.info("made the swap PNGs of %d faces (%d asked for)", made, len(needed))
    for chosen, _ in choices.values():
        for face in chosen:
            app.swap.check(face.crop, face.bbox, app.embedder)
    top_n = app.settings.export.top_n
    plans = {
        folder: plan(number, names.get(number), members, *choices[folder], app.swap, top_n, subset)
        for folder, (number, subset, members) in wanted.items()
    }
    return export_plans(app.settings.facesets_dir, plans, highest_number=highest)


def _read_names(app: App) -> None:
    """A name the user wrote into a faceset's NAME.txt is the faceset's name from then on."""
    known = app.store.identity_names()
    found: dict[int, str | None] = {}
    for number, folder in own_facesets(app.settings.facesets_dir).items():
        try:
            name = (folder / NAME_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name and name != known.get(number):
            found[number] = name
    if found:
        app.store.set_identity_names(found)


def _make_pngs(app: App, faces: list[ExportFace]) -> int:
    """Cut, check and keep the swap PNG of each face: from its photo in Immich, fetched once per
    photo; a face with no photo in Immich (imported) from its crop."""
    made = 0
    by_blob: dict[str, list[ExportFace]] = {}
    for face in faces:
        by_blob.setdefault(face.sha256, []).append(face)
    with _Photos(app) as photos:
        for members in by_blob.values():
            image = photos.of(members[0])
            for face in members:
                if image is not None:
                    app.swap.make(face.crop, image.pixels, face.bbox)
                    made += 1
                    continue
                crop = app.crops.crop_image(face)
                if crop is not None:
                    app.swap.make(face.crop, crop[0].pixels, crop[1])
                    made += 1
    return made


def _measure_unmeasured(app: App) -> None:
    """Faces embedded before qualities were measured get theirs, from their crops, once."""
    qualities = {}
    for face in app.store.unmeasured_faces():
        quality = app.crops.measure(face)
        if quality is not None:
            qualities[face.face_id] = quality
    if qualities:
        app.store.set_qualities(qualities)
        log.info("measured the quality of %d faces embedded before qualities were", len(qualities))


class _Photos:
    """Photos fetched again from Immich (to cut crops or PNGs), through one client per source."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._sources = {source.name: source for source in app.settings.immich}
        self._clients: dict[str, ImmichClient] = {}
        self._stack = ExitStack()

    def __enter__(self) -> _Photos:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def of(self, face: ExportFace) -> DecodedImage | None:
        """The photo of `face`, decoded as when it was embedded; None when it cannot be had."""
        if face.asset_id is None or face.source not in self._sources:
            return None
        if face.source not in self._clients:
            self._clients[face.source] = self._stack.enter_context(self._app.clients.open(self._sources[face.source]))
        try:
            return _photo(self._app, self._clients[face.source], face.asset_id, face.sha256)
        except (ImmichError, ImmichUnreachable, ImmichAuthError, ImageError) as error:
            log.warning("cannot fetch the photo of %s again: %s", face.asset_id, error)
            return None


def _restore(app: App, missing: list[ExportFace]) -> int:
    with _Photos(app) as photos:

        def photo_of(face: ExportFace) -> DecodedImage | None:
            if face.asset_id is None or face.source not in {source.name for source in app.settings.immich}:
                log.warning("crop of face %d is gone and its photo is not in a configured Immich", face.face_id)
            return photos.of(face)

        return app.crops.restore(missing, app.settings.facesets_dir, photo_of)


def _photo(app: App, client: ImmichClient, asset_id: str, sha256: str) -> DecodedImage:
    """The photo whose bytes hash to `sha256`, decoded as when it was embedded."""
    max_bytes = app.settings.faces.max_download_mb * 1024 * 1024
    download = client.download_original(asset_id, app.download_dir, max_bytes)
    try:
        if download.sha256 != sha256:
            raise ImmichError(f"{asset_id} changed in Immich since it was embedded")
        return decode(app, client, asset_id, download.path, max_bytes)[0]
    finally:
        download.path.unlink(missing_ok=True)
