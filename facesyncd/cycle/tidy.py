"""Keeping the caches in step when the store drops faces: their crop files go, and they leave the index."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..models import AssetState, CycleReport, Dropped

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)


def forget(app: App, dropped: Dropped) -> None:
    app.crops.remove(dropped.crops)
    app.swap.remove(dropped.crops)
    app.index.forget(dropped.indexed_faces)


def remove_asset(app: App, source: str, asset_id: str, state: AssetState, report: CycleReport) -> None:
    """An asset left Immich (trashed or deleted): its faces leave the facesets."""
    forget(app, app.store.remove_asset(source, asset_id, state))
    report.removed_assets += 1
    log.info("%s: asset %s %s in Immich; its faces left the facesets", source, asset_id, state)
