"""The listing of what changed in one Immich library: POST /search/metadata, page after page, each
asset once, and where the next listing starts (the watermark).

Immich orders /search/metadata by fileCreatedAt then id and pages by offset, so an asset deleted on
the server while we page would shift every later asset back by one and one would be skipped. Instead
of offsets the listing pages by key: each request asks again from page 1 with takenAfter (a
fileCreatedAt >= filter) set to the last fileCreatedAt seen, and drops the ids already seen at that
instant. Only a run of more than `page_size` assets sharing one instant falls back to offsets, within
that instant. Immich 3.2 answers with a `nextCursor` of its own (and deprecates `page`): then the
listing follows that cursor instead.

A listing must make progress: a server that ignores takenAfter (Immich drops unknown fields silently,
and older or patched servers may not know it) answers older assets than asked for, and then the
listing goes on by offset, with a warning (the listing is then not `exact`: deletions during it may
hide an asset until the next reconciliation). A page that brings no new asset while the server says
there are more, and a listing far past what Immich counts (or past MAX_LISTED_ASSETS when it gives no
count), end the listing as a failing server (ImmichUnreachable) instead of looping forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ImmichError, ImmichUnreachable
from ..models import RemoteAsset
from .answers import iso_z, parse_asset, parse_time
from .transport import Transport

log = logging.getLogger(__name__)

# Oldest first by fileCreatedAt (Immich 3.2's SearchOrder; then by id, as the cursor pages).
ORDER_BY = {"field": "fileCreatedAt", "direction": "asc"}
# Immich states times to the millisecond: the next instant after one it stated.
SMALLEST_STEP = timedelta(milliseconds=1)
# A listing larger than this is a server that never stops answering, not a photo library.
MAX_LISTED_ASSETS = 50_000_000
# A listing this far past what the store knows asks Immich how many assets it holds (one count
# request), and may then list at most twice that (the trash is listed but not counted, and uploads
# arrive meanwhile) plus this much again.
LISTING_SLACK = 10_000


def next_watermark(
    previous: str | None,
    server_now: datetime | None,
    newest_seen: datetime | None,
    overlap_seconds: int,
    local_now: datetime | None = None,
) -> str | None:
    """Where the next sweep starts (`updatedAfter`, inclusive); never before the previous mark, and a
    sweep that saw nothing keeps it.

    Whatever is updated after a sweep began carries an `updatedAt` no earlier than the sweep's start
    by the server's clock minus the overlap (clock skew, transactions that commit late, Immich's own
    jobs bumping `updatedAt` seconds after an edit); whatever is older than that was committed, so
    this sweep saw it. So the mark is that, capped just past the newest `updatedAt` the sweep saw (a
    database clock behind the Date header skips nothing). After a burst of uploads, once the server's
    clock is past the burst by more than the overlap, an idle sweep lists nothing of the burst
    (it listed the whole burst again, for ever: one job's transaction stamps thousands of assets
    with one instant).

    That trusts the server's clock (its Date header), which a proxy may state wrongly: when it
    disagrees with this machine's clock by more than the overlap, neither is trusted and the mark
    stays the overlap behind the newest `updatedAt` seen (an idle sweep then lists what changed in
    the overlap before it; a clock a day ahead skips no photo)."""
    if newest_seen is None:
        return previous
    local_now = local_now or datetime.now(UTC)
    overlap = timedelta(seconds=overlap_seconds)
    if server_now is not None and abs(server_now - local_now) <= overlap:
        mark = min(newest_seen + SMALLEST_STEP, server_now - overlap)
    else:
        mark = min(newest_seen, server_now or newest_seen) - overlap
    before = parse_time(previous) if previous else None
    if before is not None and before > mark:
        return previous
    return iso_z(mark)


def ahead_of(mark: str | None, server_now: datetime | None, overlap_seconds: int) -> bool:
    """A mark ahead of the server's clock: a clock that ran ahead (stamping updates in the future)
    and was put right. Photos updated since have an `updatedAt` before the mark and would wait for
    the next full listing."""
    moment = parse_time(mark) if mark else None
    return moment is not None and server_now is not None and moment > server_now + timedelta(seconds=overlap_seconds)


@dataclass(frozen=True)
class _ListingPage:
    """One answer of /search/metadata: its assets, `nextPage`, and (Immich 3.2+) `nextCursor`."""

    assets: list[RemoteAsset]
    next_page: Any
    next_cursor: str | None
    offers_cursor: bool  # the answer has a nextCursor field (3.2+), even a null one


class Listing:
    """One listing of the assets with updatedAt >= `updated_after` (trashed ones included; all of
    them when None). `pages()` yields them, each asset once; what the listing learned is read from
    it once `pages()` is exhausted: whether it was `exact` (paged by key or by the server's cursor,
    so a deletion meanwhile hid no asset), and `server_time`, the server's clock when it started."""

    def __init__(
        self,
        transport: Transport,
        updated_after: str | None,
        page_size: int,
        *,
        known: int = 0,
        count: Callable[[], int | None] | None = None,
        cursor_first: bool = False,
        with_people: bool = False,
    ) -> None:
        """known: how many assets the store holds for this source; count: asks Immich how many it
        holds (None when it will not say; called on the thread that pages). Together they bound a
        listing that never ends.
        cursor_first: the server handed out a cursor last time (3.2+): the first request too sends
        only what 3.2 documents (no `page`, no `order`). with_people: each asset with the named people
        Immich shows in it."""
        self._transport = transport
        self._name = transport.name
        self._updated_after = updated_after
        self._page_size = page_size
        self.server_time: datetime | None = None
        self._by_offset = False
        self._count = count
        self._ask_at = known + LISTING_SLACK if count is not None else MAX_LISTED_ASSETS
        self._limit = MAX_LISTED_ASSETS
        self._counted: int | None = None
        self._cursor_first = cursor_first
        self._with_people = with_people
        self.offers_cursor: bool | None = None  # once listed: whether the server pages by a cursor of its own

    @property
    def exact(self) -> bool:
        return not self._by_offset

    def pages(self) -> Iterator[list[RemoteAsset]]:
        self._by_offset = False
        if self._cursor_first:
            body: dict[str, Any] = {"size": self._page_size, "withDeleted": True, "orderBy": ORDER_BY}
            if self._with_people:
                body["withPeople"] = True
            if self._updated_after:
                body["updatedAfter"] = self._updated_after
            answer = self._listing_page(body)
            if answer.offers_cursor:
                self.offers_cursor = True
                yield from self._follow_cursor(body, answer, set())
                return
            # No cursor (a server older than 3.2 ignores orderBy and orders newest first): nothing
            # of that answer was taken; list as for any version.
            log.info("%s: Immich no longer pages by a cursor of its own; listing by pages", self._name)
        yield from self._pages()

    def _pages(self) -> Iterator[list[RemoteAsset]]:
        cursor: str | None = None
        cursor_time: datetime | None = None
        seen_at_cursor: set[str] = set()
        listed: set[str] = set()
        page = 1
        stale_allowed = 0  # pages without a new asset tolerated (re-reading after the fallback)
        self.offers_cursor = False
        while True:
            self._transport.check_stop()
            body: dict[str, Any] = {"page": page, "size": self._page_size, "order": "asc", "withDeleted": True}
            if self._with_people:
                body["withPeople"] = True
            if self._updated_after:
                body["updatedAfter"] = self._updated_after
            if cursor and not self._by_offset:
                body["takenAfter"] = cursor
            answer = self._listing_page(body)
            assets, next_page = answer.assets, answer.next_page
            if answer.offers_cursor and cursor is None and page == 1 and not self._by_offset:
                # 3.2 from here on: what it documents only. `page` and `order` are deprecated (the
                # first request sent them: what came before 3.2 reads; the next listing will not,
                # see cursor_first); its cursor pages by key.
                self.offers_cursor = True
                del body["page"], body["order"]
                body["orderBy"] = ORDER_BY
                yield from self._follow_cursor(body, answer, listed)
                return
            if not self._by_offset and cursor_time is not None and self._went_back(assets, cursor_time):
                self._fall_back_to_offsets("answered assets older than takenAfter asked for")
                page, stale_allowed = 1, len(listed) // self._page_size + 2
                continue
            fresh = self._first_seen(assets, listed)
            if fresh:
                yield fresh
            if not next_page or not assets:
                return
            # Page 1 at a new cursor repeats the assets of the last page that share its instant: when
            # they fill the page (a burst), the next page is asked for; that is progress too.
            burst = page == 1 and cursor is not None and all(a.file_created_at == cursor for a in assets)
            if not fresh and not (burst and not self._by_offset):
                if not self._by_offset:
                    self._fall_back_to_offsets("a page brought no new asset")
                    page, stale_allowed = 1, len(listed) // self._page_size + 2
                    continue
                stale_allowed -= 1
                if stale_allowed < 0:
                    raise ImmichUnreachable(
                        f"{self._name}: Immich's listing does not advance (page {page} repeats assets already "
                        f"listed while it says there are more); stopped after {len(listed)} assets"
                    )
            if self._by_offset:
                page += 1
                continue
            last = assets[-1].file_created_at
            if last == cursor:
                page += 1
                seen_at_cursor.update(a.id for a in assets if a.file_created_at == last)
            else:
                cursor, cursor_time, page = last, parse_time(last), 1
                seen_at_cursor = {a.id for a in assets if a.file_created_at == last}

    def _listing_page(self, body: dict[str, Any]) -> _ListingPage:
        data = self._transport.json("POST", "/search/metadata", json_body=body, what="listing assets")
        if self.server_time is None:  # the listing's start, by the server's clock
            self.server_time = self._transport.server_time
        try:
            answer = data["assets"]
            items, next_cursor = answer["items"], answer.get("nextCursor")
            if not isinstance(items, list) or not isinstance(next_cursor, (str, type(None))):
                raise TypeError("items is not a list, or nextCursor not a string")
        except (KeyError, TypeError, AttributeError) as error:
            raise ImmichError(f"{self._name}: unexpected answer to /search/metadata") from error
        assets: list[RemoteAsset] = []
        for item in items:
            try:
                assets.append(parse_asset(item if isinstance(item, dict) else {}))
            except ImmichError as error:
                log.warning("%s: ignoring listed asset: %s", self._name, error)
        return _ListingPage(assets, answer.get("nextPage"), next_cursor, "nextCursor" in answer)

    def _follow_cursor(
        self, body: dict[str, Any], answer: _ListingPage, listed: set[str]
    ) -> Iterator[list[RemoteAsset]]:
        """Immich 3.2 and later: page by the cursor the server hands out (`nextCursor` back as
        `cursor`), which pages by key on its side, so an asset deleted meanwhile skips nothing. A
        cursor that repeats, or a page with no new asset while there are more, ends the listing as
        a failing server, as with pages."""
        previous: str | None = None
        while True:
            fresh = self._first_seen(answer.assets, listed)
            if fresh:
                yield fresh
            if not answer.next_cursor or not answer.assets:
                return
            if not fresh or answer.next_cursor == previous:
                raise ImmichUnreachable(
                    f"{self._name}: Immich's listing does not advance (its cursor brings no new asset while it "
                    f"says there are more); stopped after {len(listed)} assets"
                )
            previous = answer.next_cursor
            self._transport.check_stop()
            answer = self._listing_page({**body, "cursor": answer.next_cursor})

    def _first_seen(self, assets: list[RemoteAsset], listed: set[str]) -> list[RemoteAsset]:
        """The assets not listed before, now counted as listed. A listing far past what the store
        knows asks Immich's count once; past twice that count (plus LISTING_SLACK), or past
        MAX_LISTED_ASSETS, it is a server that never stops answering new ids."""
        fresh = [a for a in assets if a.id not in listed]
        listed.update(a.id for a in fresh)
        if len(listed) > self._ask_at and self._count is not None:
            self._ask_at = MAX_LISTED_ASSETS
            self._counted = self._count()
            if self._counted is not None:
                self._limit = min(MAX_LISTED_ASSETS, 2 * self._counted + LISTING_SLACK)
        if len(listed) > self._limit:
            counts = "" if self._counted is None else f" while it counts {self._counted}"
            raise ImmichUnreachable(
                f"{self._name}: Immich's listing passed {self._limit} assets{counts} (it keeps answering new "
                "ones); stopped"
            )
        return fresh

    @staticmethod
    def _went_back(assets: list[RemoteAsset], cursor_time: datetime) -> bool:
        times = [parse_time(asset.file_created_at) for asset in assets]
        return any(moment is not None and moment < cursor_time for moment in times)

    def _fall_back_to_offsets(self, why: str) -> None:
        self._by_offset = True
        log.warning(
            "%s: Immich's listing %s; paging by offset instead (an asset deleted meanwhile may hide another "
            "until the next reconciliation)",
            self._name,
            why,
        )
