"""Publish: the faceset folders follow the store, in the configured layout; then the index is saved."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING

from ..errors import ImageError, ImmichAuthError, ImmichError, ImmichUnreachable
from ..export import remove_faceset
from ..imaging import DecodedImage
from ..immich import ImmichClient
from ..layouts import Library
from ..models import CycleReport, ExportFace
from .stage import decode

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)


def publish(app: App, report: CycleReport) -> None:
    """Write the faceset folders in the configured layout (layouts.py) and save the index for the
    next start. The folders can always be rebuilt: a layout fetches a face's photo again from Immich
    when it needs it (a lost crop, a swap PNG not cut yet). Faces under [export] min_quality stay out
    of the folders (not the store)."""
    app.reporter.stage("exporting", None)
    for number in app.store.forgotten_numbers():  # `faceset forget`: nothing of them is kept
        if remove_faceset(app.settings.facesets_dir, number):
            log.info("removed the folders of forgotten faceset %03d", number)
    _measure_unmeasured(app)
    faces = _good_enough(app.store.export_faces(), app.settings.export.min_quality)
    with _Photos(app) as photos:
        library = Library(
            names=app.store.identity_names,
            set_names=app.store.set_identity_names,
            embeddings_of=app.store.embeddings_of,
            photo_of=photos.of,
        )
        report.facesets_written = app.layout.write(faces, app.store.highest_identity(), library)
    app.index.get()  # a first export builds the index the next start loads
    app.index.save_if_changed()


def _good_enough(faces: dict[int, list[ExportFace]], min_quality: float) -> dict[int, list[ExportFace]]:
    if min_quality <= 0:
        return faces
    return {
        number: [face for face in members if face.quality is None or face.quality.composite >= min_quality]
        for number, members in faces.items()
    }


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
        """The photo of `face`, decoded as when it was embedded; None when it cannot be had (an
        imported face, a source no longer configured, a photo Immich no longer serves)."""
        if face.asset_id is None or face.source not in self._sources:
            return None
        if face.source not in self._clients:
            self._clients[face.source] = self._stack.enter_context(self._app.clients.open(self._sources[face.source]))
        try:
            return _photo(self._app, self._clients[face.source], face.asset_id, face.sha256)
        except (ImmichError, ImmichUnreachable, ImmichAuthError, ImageError) as error:
            log.warning("cannot fetch the photo of %s again: %s", face.asset_id, error)
            return None


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
