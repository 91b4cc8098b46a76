"""Poll: list what changed in one source, record it, and move the watermark.

A full listing (the first sweep, then every reconcile_seconds, or on request) records every asset the
server has: it queues those it does not know, brings back those held as deleted, and removes those it
no longer lists (only when the listing was exact: a listing that had to page by offset may have
skipped some).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from ..config import ImmichSettings, ScheduleSettings, SyncSettings
from ..crashpoints import checkpoint
from ..errors import Interrupted
from ..immich import ImmichClient, ahead_of, next_watermark, parse_time
from ..models import AssetState, CycleReport
from ..progress import Reporter
from ..store import Store
from .tidy import Caches, remove_asset

log = logging.getLogger(__name__)

T = TypeVar("T")
# No asset was updated in Immich before this: an earlier `updatedAt` (year 0001 from a broken import
# or a hostile server) says nothing about where the next sweep may start.
EARLIEST_UPDATE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PollParts:
    """What polling a source uses."""

    store: Store
    caches: Caches
    schedule: ScheduleSettings
    sync: SyncSettings
    reporter: Reporter
    stop: threading.Event


def poll(
    parts: PollParts, source: ImmichSettings, client: ImmichClient, report: CycleReport, *, reconcile: bool | None
) -> None:
    """reconcile: True lists the whole library now, False never, None when [schedule]
    reconcile_seconds have passed since the last full listing (and on a source's first sweep)."""
    store = parts.store
    store.ensure_source(source.name, source.url)
    account = client.whoami()
    owner = account.user_id
    partner_assets = 0
    watermark = store.watermark(source.name)
    overlap = parts.sync.watermark_overlap_seconds
    if ahead_of(watermark, account.server_time, overlap):
        log.warning(
            "%s: the watermark %s is ahead of Immich's clock (a clock that ran ahead and was put right): "
            "listing the whole library once",
            source.name,
            watermark,
        )
        watermark = None
    full = (
        watermark is None
        or reconcile is True
        or (reconcile is None and store.reconcile_due(source.name, parts.schedule.reconcile_seconds))
    )
    remote: dict[str, bool] = {}
    newest: datetime | None = None
    parts.reporter.stage(f"{source.name}: listing", None)
    started = time.monotonic()
    listing = client.list_changed(None if full else watermark, parts.sync.page_size)
    for page in prefetched(listing.pages()):
        if parts.stop.is_set():
            raise Interrupted("stop requested")
        report.listed += len(page)
        for asset in page:
            moment = parse_time(asset.updated_at)
            if moment is not None and moment >= EARLIEST_UPDATE and (newest is None or moment > newest):
                newest = moment
        parts.reporter.advance(len(page))
        if not source.include_partners and owner:
            # A key lists a partner's assets too while the partner is shown in the timeline: they are
            # the partner's photos (their own source, if configured), not this user's.
            own = [asset for asset in page if not asset.owner_id or asset.owner_id == owner]
            partner_assets += len(page) - len(own)
            page = own
        listed = store.record_listed(source.name, page)
        checkpoint("listed-page")
        report.new_or_changed += listed.needing_work
        parts.caches.forget(listed.dropped)
        for asset_id in listed.trashed:
            remove_asset(store, parts.caches, source.name, asset_id, AssetState.TRASHED, report)
        for asset_id in listed.restored:
            report.restored_assets += 1
            log.info("%s: asset %s restored from Immich's trash; its faces are back", source.name, asset_id)
        if full:
            remote.update((asset.id, asset.is_trashed) for asset in page)
    report.partner_assets += partner_assets
    # Only a complete sweep moves the watermark: a broken one is redone from the old mark.
    store.finish_sweep(source.name, next_watermark(watermark, listing.server_time, newest, overlap))
    report.listing_seconds += round(time.monotonic() - started, 3)
    checkpoint("sweep-finished")
    if full:
        store.set_partner_assets(source.name, partner_assets)
        _reconcile(parts, source.name, remote, report, exact=listing.exact)


def _reconcile(parts: PollParts, source: str, remote: dict[str, bool], report: CycleReport, *, exact: bool) -> None:
    """Assets we hold that a complete listing no longer has were deleted there (hard deletions never
    show up in an incremental sweep, and an asset emptied from the trash neither)."""
    if not exact:
        log.warning("%s: the listing paged by offset; deletions are not applied until a clean listing", source)
    for asset_id, state in sorted(parts.store.known_asset_states(source).items()):
        if asset_id not in remote:
            if exact:
                remove_asset(parts.store, parts.caches, source, asset_id, AssetState.DELETED, report)
        elif remote[asset_id] and state != AssetState.TRASHED:
            remove_asset(parts.store, parts.caches, source, asset_id, AssetState.TRASHED, report)
    parts.store.mark_reconciled(source)
    parts.caches.crops.sweep_orphans(parts.store.all_crops())  # crops a crash left without a database row


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
