"""Keeping the caches in step when the store drops faces: their crop files and swap PNGs go, and they
leave the index."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..crops import Crops
from ..index import IndexKeeper
from ..models import AssetState, CycleReport, Dropped
from ..store import Store
from ..swap import SwapCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caches:
    """What is derived from the faces in the store and must follow it."""

    crops: Crops
    swap: SwapCache
    index: IndexKeeper

    def forget(self, dropped: Dropped) -> None:
        self.crops.remove(dropped.crops)
        self.swap.remove(dropped.crops)
        self.index.forget(dropped.indexed_faces)


def remove_asset(
    store: Store, caches: Caches, source: str, asset_id: str, state: AssetState, report: CycleReport
) -> None:
    """An asset left Immich (trashed, deleted) or this key's sight (withheld): its faces leave the
    facesets."""
    caches.forget(store.remove_asset(source, asset_id, state))
    report.removed_assets += 1
    log.info("%s: asset %s %s; its faces left the facesets", source, asset_id, _GONE.get(state, state))


_GONE = {
    AssetState.TRASHED: "trashed in Immich",
    AssetState.DELETED: "deleted in Immich",
    AssetState.WITHHELD: "no longer shown (its owner, a partner, was hidden from the timeline)",
}
