"""Poll: list what changed in one source, record it, and move the watermark.

A full listing (the first sweep, then every reconcile_seconds, or on request) records every asset the
server has: it queues those it does not know, brings back those held as deleted, and removes those it
no longer lists (only when the listing was exact: a listing that had to page by offset may have
skipped some). Between full listings, every sweep_minutes one count request (the census) asks whether
Immich holds what the incremental listings showed: they never show a force delete that skipped the
trash, a move into the locked folder, or a partner shown or hidden; a difference lists everything now.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    parts: PollParts,
    source: ImmichSettings,
    client: ImmichClient,
    report: CycleReport,
    *,
    reconcile: bool | None,
    census: bool | None = None,
) -> None:
    """reconcile: True lists the whole library now, False never, None when [schedule]
    reconcile_seconds have passed since the last full listing (and on a source's first sweep).
    census: True counts Immich's assets after an incremental listing (see _census_says), False
    never, None when [schedule] sweep_minutes have passed since the last count."""
    store = parts.store
    store.ensure_source(source.name, source.url)
    account = client.whoami()
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
    swept = _sweep(parts, source, client, report, account.user_id, watermark, full=full)
    if not full and census is not False:
        due = census is True or (census is None and store.census_due(source.name, parts.schedule.sweep_minutes * 60))
        if due and _census_says(parts, source, client, swept):
            full = True
            swept = _sweep(parts, source, client, report, account.user_id, store.watermark(source.name), full=True)
    if full:
        store.set_partner_assets(source.name, swept.partner_assets)
        _reconcile(parts, source.name, client, account.user_id, swept, report)
        count = _count(store, client, source)
        offset = None if count is None else count - _counted(store, source)
        store.record_census(source.name, offset)


@dataclass
class _Swept:
    """What one listing found: with a full one, every asset id listed (and whether it is trashed)."""

    full: bool
    exact: bool = True
    remote: dict[str, bool] = field(default_factory=dict)
    partner_assets: int = 0
    needing_work: int = 0


def _sweep(
    parts: PollParts,
    source: ImmichSettings,
    client: ImmichClient,
    report: CycleReport,
    owner: str,
    watermark: str | None,
    *,
    full: bool,
) -> _Swept:
    """List (everything when `full`, else what changed since the watermark), record it page by page,
    and move the watermark."""
    store = parts.store
    swept = _Swept(full)
    newest: datetime | None = None
    overlap = parts.sync.watermark_overlap_seconds
    parts.reporter.stage(f"{source.name}: listing", None)
    started = time.monotonic()
    by_cursor = store.lists_by_cursor(source.name)
    listing = client.list_changed(
        None if full else watermark,
        parts.sync.page_size,
        # Read here: the listing pages on a thread of its own, and the store is this thread's. Only a
        # full listing is told what the store holds (counted over every asset: 0.13 CPU-s at 500,000);
        # a listing of what changed that runs past LISTING_SLACK asks Immich's count, one request.
        known=store.counted_assets(source.name, own_only=False) + store.partner_assets(source.name) if full else 0,
        cursor_first=by_cursor,
        with_people=source.adopt_names,
    )
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
            swept.partner_assets += len(page) - len(own)
            page = own
        listed = store.record_listed(source.name, page)
        checkpoint("listed-page")
        report.new_or_changed += listed.needing_work
        swept.needing_work += listed.needing_work
        parts.caches.forget(listed.dropped)
        for asset_id in listed.trashed:
            remove_asset(store, parts.caches, source.name, asset_id, AssetState.TRASHED, report)
        for asset_id in listed.restored:
            report.restored_assets += 1
            log.info("%s: asset %s is back (restored from the trash, or its owner shown again); its faces are "
                     "back", source.name, asset_id)  # fmt: skip
        if full:
            swept.remote.update((asset.id, asset.is_trashed) for asset in page)
    # Only a complete sweep moves the watermark: a broken one is redone from the old mark.
    store.finish_sweep(source.name, next_watermark(watermark, listing.server_time, newest, overlap))
    report.listing_seconds += round(time.monotonic() - started, 3)
    swept.exact = listing.exact
    if listing.offers_cursor is not None and listing.offers_cursor != by_cursor:
        store.set_lists_by_cursor(source.name, listing.offers_cursor)
    checkpoint("sweep-finished")
    return swept


def _counted(store: Store, source: ImmichSettings) -> int:
    return store.counted_assets(source.name, own_only=not source.include_partners)


def _count(store: Store, client: ImmichClient, source: ImmichSettings) -> int | None:
    """Immich's count of what this source compares with the store (see ImmichClient.count_assets);
    a refusal is said once (until counting works again)."""
    count = client.count_assets(with_partners=source.include_partners)
    if count is None and not store.count_refused(source.name):
        log.warning(
            "%s: Immich would not count the assets (the API key lacks the asset.statistics permission?): "
            "changes its listing does not show (a force delete, a move into the locked folder, a partner "
            "shown or hidden) wait for the next full listing ([schedule] reconcile_seconds)",
            source.name,
        )
    return count


def _census_says(parts: PollParts, source: ImmichSettings, client: ImmichClient, swept: _Swept) -> bool:
    """Whether Immich holds other assets than the listings showed: one count request, compared with
    the store as a full listing left it (the offset absorbs whatever Immich counts that is never
    listed, or the reverse). Fewer: something left unlisted (a force delete that skipped the trash,
    a move into the locked folder, a partner hidden). More: a partner shown, or assets uploaded
    between the listing and the count; while this listing saw new work, that race is the likelier
    one and the count is taken again at the next sweep."""
    store = parts.store
    count = _count(store, client, source)
    if count is None:
        store.record_census(source.name, None)
        return False
    offset = store.census_offset(source.name)
    drift = count - _counted(store, source) - (offset if offset is not None else 0)
    if offset is not None and drift == 0:
        store.record_census(source.name, offset)
        return False
    if offset is not None and drift > 0 and swept.needing_work:
        log.info("%s: Immich counts %d more assets than listed while uploads arrive; counting again later",
                 source.name, drift)  # fmt: skip
        return False
    log.info(
        "%s: Immich counts %s assets than its listings showed (%s): listing the whole library now",
        source.name,
        "a different number of" if offset is None else f"{abs(drift)} {'fewer' if drift < 0 else 'more'}",
        "no count of a full listing to compare with yet" if offset is None
        else "deleted without the trash, moved to the locked folder, or a partner hidden" if drift < 0
        else "a partner shown in the timeline",
    )  # fmt: skip
    return True


def _reconcile(
    parts: PollParts, source: str, client: ImmichClient, owner: str, swept: _Swept, report: CycleReport
) -> None:
    """Assets we hold that a complete listing no longer has were deleted there (hard deletions never
    show up in an incremental sweep, and an asset emptied from the trash neither); a partner's that
    the key no longer sees while its owner still shares with this user is withheld (the partner was
    hidden from the timeline): kept, out of the facesets, back without a download when shown again."""
    if not swept.exact:
        log.warning("%s: the listing paged by offset; deletions are not applied until a clean listing", source)
    partners: frozenset[str] | None = None
    asked = False
    for asset_id, (state, asset_owner) in sorted(parts.store.known_asset_states(source).items()):
        if asset_id in swept.remote:
            if swept.remote[asset_id] and state != AssetState.TRASHED:
                remove_asset(parts.store, parts.caches, source, asset_id, AssetState.TRASHED, report)
            continue
        if not swept.exact:
            continue
        if asset_owner and owner and asset_owner != owner:
            if not asked:
                partners, asked = client.partners(), True
            if partners is None or asset_owner in partners:  # without partner.read: kept, to be safe
                if state != AssetState.WITHHELD:
                    remove_asset(parts.store, parts.caches, source, asset_id, AssetState.WITHHELD, report)
                continue
        remove_asset(parts.store, parts.caches, source, asset_id, AssetState.DELETED, report)
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
