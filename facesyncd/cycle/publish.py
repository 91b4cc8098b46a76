"""Publish: the faceset folders follow the store (lost crops restored first), then the index is saved."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING

from ..errors import ImageError, ImmichAuthError, ImmichError, ImmichUnreachable
from ..export import export_all
from ..imaging import DecodedImage
from ..immich import ImmichClient
from ..models import CycleReport, ExportFace
from .stage import decode

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)


def publish(app: App, report: CycleReport) -> None:
    """Write the faceset folders and save the index for the next start.

    Crop files that went missing (state_dir/crops deleted, a disk fault) are restored first, so the
    folders can always be rebuilt: from a copy in an exported folder if there is one, else cut again
    from the photo in Immich. A face whose crop cannot come back stays out of its folder, and is
    tried again next cycle."""
    app.reporter.stage("exporting", None)
    faces = app.store.export_faces()
    highest = app.store.highest_identity()
    facesets_dir, crops_dir = app.settings.facesets_dir, app.crops.directory
    missing: list[ExportFace] = []
    report.facesets_written = export_all(facesets_dir, crops_dir, faces, missing, highest_number=highest)
    if missing:
        restored = _restore(app, missing)
        log.warning("%d face crops were missing; %d restored", len(missing), restored)
        report.facesets_written += export_all(facesets_dir, crops_dir, faces, highest_number=highest)
    app.index.get()  # a first export builds the index the next start loads
    app.index.save_if_changed()


def _restore(app: App, missing: list[ExportFace]) -> int:
    sources = {source.name: source for source in app.settings.immich}
    clients: dict[str, ImmichClient] = {}
    with ExitStack() as open_clients:

        def photo_of(face: ExportFace) -> DecodedImage | None:
            if face.asset_id is None or face.source not in sources:
                log.warning("crop of face %d is gone and its photo is not in a configured Immich", face.face_id)
                return None
            if face.source not in clients:
                clients[face.source] = open_clients.enter_context(app.clients.open(sources[face.source]))
            try:
                return _photo(app, clients[face.source], face.asset_id, face.sha256)
            except (ImmichError, ImmichUnreachable, ImmichAuthError, ImageError) as error:
                log.warning("cannot cut the crops of %s again: %s", face.asset_id, error)
                return None

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
