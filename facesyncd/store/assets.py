"""Sources and assets: the listing's bookkeeping, what needs work, and each asset's state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..models import SET_ASIDE_REASONS, AssetRow, AssetState, Dropped, ListedPage, RemoteAsset, set_aside
from ..redact import scrub
from .database import utc_now
from .faces import FaceQueries

ASSET_COLUMNS = (
    "source, asset_id, state, checksum, sha256, attempts, type, original_file_name, width, height, checksum_kind, "
    "reason"
)


class AssetQueries(FaceQueries):
    """Sources (one per Immich user) and their assets; removing an asset drops the faces of its
    bytes when nothing else holds them."""

    # -- sources --------------------------------------------------------------------------------

    def ensure_source(self, name: str, url: str) -> None:
        with self.transaction():
            self.execute(
                "INSERT INTO sources (name, url) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET url = excluded.url",
                (name, url),
            )

    def watermark(self, name: str) -> str | None:
        value = self.scalar("SELECT watermark FROM sources WHERE name = ?", (name,))
        return None if value is None else str(value)

    def finish_sweep(self, name: str, watermark: str | None) -> None:
        with self.transaction():
            self.execute(
                "UPDATE sources SET watermark = ?, last_sweep_at = ?, last_error = NULL, last_error_at = NULL "
                "WHERE name = ?",
                (watermark, utc_now(), name),
            )

    def set_partner_assets(self, name: str, count: int) -> None:
        with self.transaction():
            self.execute("UPDATE sources SET partner_assets = ? WHERE name = ?", (count, name))

    def lists_by_cursor(self, name: str) -> bool:
        """The source's server paged its last listing by a cursor of its own (Immich 3.2+)."""
        return self.get_meta(f"lists_by_cursor:{name}") == "1"

    def set_lists_by_cursor(self, name: str, by_cursor: bool) -> None:
        with self.transaction():
            self.set_meta(f"lists_by_cursor:{name}", "1" if by_cursor else "0")

    def partner_assets(self, name: str) -> int:
        """The partners' assets the last full listing passed over (include_partners off)."""
        return int(self.scalar("SELECT partner_assets FROM sources WHERE name = ?", (name,)) or 0)

    def reconcile_due(self, name: str, every_seconds: float) -> bool:
        return _due(self.scalar("SELECT last_reconcile_at FROM sources WHERE name = ?", (name,)), every_seconds)

    def mark_reconciled(self, name: str) -> None:
        with self.transaction():
            self.execute("UPDATE sources SET last_reconcile_at = ? WHERE name = ?", (utc_now(), name))

    # -- the census (see migration 0010) ---------------------------------------------------------

    def census_due(self, name: str, every_seconds: float) -> bool:
        return _due(self.scalar("SELECT census_at FROM sources WHERE name = ?", (name,)), every_seconds)

    def census_offset(self, name: str) -> int | None:
        """Immich's count minus counted_assets at the last full listing; None before one was counted."""
        value = self.scalar("SELECT census_offset FROM sources WHERE name = ?", (name,))
        return None if value is None else int(value)

    def count_refused(self, name: str) -> bool:
        """The last count was asked for and not given (see record_census)."""
        rows = self.tuples("SELECT census_at, census_offset FROM sources WHERE name = ?", (name,))
        return bool(rows) and rows[0][0] is not None and rows[0][1] is None

    def record_census(self, name: str, offset: int | None) -> None:
        """A count was taken: `offset` is what it stood from the store's after a full listing, or the
        old one after a comparison; None: Immich gave no count (until the next full listing's)."""
        with self.transaction():
            self.execute(
                "UPDATE sources SET census_offset = ?, census_at = ? WHERE name = ?", (offset, utc_now(), name)
            )

    def counted_assets(self, source: str, *, own_only: bool) -> int:
        """The source's assets Immich still lists outside its trash: what its counts are compared
        with. own_only: without those set aside as hidden or locked (Immich's per-user count leaves
        them out; a partner's assets are only recorded with include_partners)."""
        removed = [str(state) for state in AssetState.removed()]
        sql = f"SELECT COUNT(*) FROM assets WHERE source = ? AND state NOT IN ({', '.join('?' * len(removed))})"
        params: list[str] = [source, *removed]
        if own_only:
            reasons = sorted(SET_ASIDE_REASONS)
            sql += f" AND (reason IS NULL OR reason NOT IN ({', '.join('?' * len(reasons))}))"
            params += reasons
        return int(self.scalar(sql, params) or 0)

    def set_source_error(self, name: str, error: str) -> None:
        with self.transaction():
            self.execute(
                "UPDATE sources SET last_error = ?, last_error_at = ? WHERE name = ?", (scrub(error), utc_now(), name)
            )

    # -- assets ---------------------------------------------------------------------------------

    def get_asset(self, source: str, asset_id: str) -> AssetRow | None:
        rows = self.rows(f"SELECT {ASSET_COLUMNS} FROM assets WHERE source = ? AND asset_id = ?", (source, asset_id))
        return _asset_row(rows[0]) if rows else None

    def record_listed(self, source: str, assets: Sequence[RemoteAsset]) -> ListedPage:
        """Save one listed page: what needs work, what was trashed, which crops lost their face.

        An asset whose checksum is unchanged and that was already handled is left alone: Immich's own
        jobs bump updatedAt all the time, and that must not cause a download.
        """
        now = utc_now()
        page = ListedPage()
        with self.transaction():
            for asset in assets:
                if asset.people is not None:  # the named people Immich shows in it (withPeople)
                    self._record_people(source, asset.id, set(asset.people))
                known = self.get_asset(source, asset.id)
                if asset.is_trashed:
                    if known is not None and known.state not in AssetState.removed():
                        page.trashed.append(asset.id)
                    continue
                same_bytes = known is not None and known.checksum == asset.checksum
                if same_bytes and known is not None and known.state in AssetState.kept() and known.sha256:
                    # Restored from the trash, or a hidden partner shown again: the faces it kept come
                    # back, with no download.
                    self.execute(
                        "UPDATE assets SET state = ?, reason = NULL, updated_at = ?, changed_at = ? "
                        "WHERE source = ? AND asset_id = ?",
                        (AssetState.DONE, asset.updated_at, now, source, asset.id),
                    )
                    page.restored.append(asset.id)
                    continue
                reason = set_aside(asset)
                if reason is None and known is not None and known.reason in SET_ASIDE_REASONS:
                    same_bytes = False  # set aside before (hidden, locked folder), a photo again: looked at anew
                unchanged = same_bytes and known is not None and known.state not in AssetState.removed()
                if reason is not None and not (unchanged and known is not None and known.state == AssetState.SKIPPED):
                    if known is not None:
                        page.dropped.extend(self._detach_asset(source, asset.id))
                    self._upsert_listed(source, asset, AssetState.SKIPPED, reason, now)
                    continue
                if unchanged:
                    self.execute(
                        "UPDATE assets SET updated_at = ?, checksum_kind = ?, owner_id = ? "
                        "WHERE source = ? AND asset_id = ?",
                        (asset.updated_at, asset.checksum_kind, asset.owner_id or None, source, asset.id),
                    )
                    if known is not None and known.state in (AssetState.PENDING, AssetState.FAILED):
                        page.needing_work += 1
                    continue
                page.needing_work += 1
                self._upsert_listed(source, asset, AssetState.PENDING, None, now)
                if known is not None and known.sha256 is not None:
                    # New bytes under a known asset: its old faces leave the facesets.
                    page.dropped.extend(self._detach_asset(source, asset.id))
        return page

    def _record_people(self, source: str, asset_id: str, people: set[str]) -> None:
        """The named people Immich shows in a photo, where they changed: a photo listed again as it
        was (Immich's jobs bump updatedAt all the time) writes nothing, so it counts no change for
        the names step, clustering or merges (each write of asset_people does: migrations 0014, 0022)."""
        key = (source, asset_id)
        had = {name for (name,) in self.tuples("SELECT name FROM asset_people WHERE source = ? AND asset_id = ?", key)}
        gone, new = sorted(had - people), sorted(people - had)
        if gone:
            self.executemany(
                "DELETE FROM asset_people WHERE source = ? AND asset_id = ? AND name = ?", [(*key, n) for n in gone]
            )
        if new:
            self.executemany(
                "INSERT INTO asset_people (source, asset_id, name) VALUES (?, ?, ?)", [(*key, n) for n in new]
            )

    def _upsert_listed(self, source: str, asset: RemoteAsset, state: AssetState, reason: str | None, now: str) -> None:
        """Record a listed asset as it now is, to be processed (pending) or set aside (skipped, with
        the reason); its bytes (sha256) stay as they were."""
        self.execute(
            """
            INSERT INTO assets (source, asset_id, type, original_file_name, checksum, checksum_kind,
                updated_at, file_created_at, width, height, state, reason, sha256, attempts,
                next_attempt_at, first_seen_at, changed_at, owner_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, NULL, ?, ?, ?)
            ON CONFLICT(source, asset_id) DO UPDATE SET
                type = excluded.type, original_file_name = excluded.original_file_name,
                checksum = excluded.checksum, checksum_kind = excluded.checksum_kind,
                updated_at = excluded.updated_at, file_created_at = excluded.file_created_at,
                width = excluded.width, height = excluded.height, state = excluded.state,
                reason = excluded.reason, attempts = 0, next_attempt_at = NULL, changed_at = excluded.changed_at,
                owner_id = excluded.owner_id
            """,
            (source, asset.id, asset.type, asset.original_file_name, asset.checksum, asset.checksum_kind,
             asset.updated_at, asset.file_created_at, asset.width, asset.height, state, reason, now, now,
             asset.owner_id or None),
        )  # fmt: skip

    def assets_to_process(self, source: str, now: str) -> list[AssetRow]:
        """Pending assets, and failed ones whose retry time has come, in listing order."""
        # Two look-ups of assets_by_source_state (an OR of the two states read every asset of the source).
        rows = self.rows(
            f"SELECT {ASSET_COLUMNS} FROM (SELECT * FROM assets WHERE source = ? AND state = ? UNION ALL "
            "SELECT * FROM assets WHERE source = ? AND state = ? "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)) ORDER BY file_created_at, asset_id",
            (source, AssetState.PENDING, source, AssetState.FAILED, now),
        )
        return [_asset_row(row) for row in rows]

    def known_asset_states(self, source: str) -> dict[str, tuple[AssetState, str | None]]:
        """asset id -> (state, owner id), for every asset not yet known to be deleted."""
        rows = self.tuples(
            "SELECT asset_id, state, owner_id FROM assets WHERE source = ? AND state != ?",
            (source, AssetState.DELETED),
        )
        return {asset_id: (AssetState(state), owner) for asset_id, state, owner in rows}

    def mark_skipped(self, source: str, skipped: Sequence[tuple[str, str]]) -> None:
        """(asset id, reason) pairs, in one transaction: a first sync may skip most of a library."""
        now = utc_now()
        with self.transaction():
            self.executemany(
                "UPDATE assets SET state = ?, reason = ?, changed_at = ? WHERE source = ? AND asset_id = ?",
                [(AssetState.SKIPPED, reason, now, source, asset_id) for asset_id, reason in skipped],
            )

    def mark_failed(self, source: str, asset_id: str, reason: str, *, max_attempts: int, retry_at: str) -> AssetState:
        """Count a failed attempt; park the asset after max_attempts. Returns the new state."""
        with self.transaction():
            attempts = (
                int(
                    self.scalar("SELECT attempts FROM assets WHERE source = ? AND asset_id = ?", (source, asset_id))
                    or 0
                )
                + 1
            )
            state = AssetState.PARKED if attempts >= max_attempts else AssetState.FAILED
            self.execute(
                "UPDATE assets SET state = ?, reason = ?, attempts = ?, next_attempt_at = ?, changed_at = ? "
                "WHERE source = ? AND asset_id = ?",
                (
                    state,
                    scrub(reason),
                    attempts,
                    None if state == AssetState.PARKED else retry_at,
                    utc_now(),
                    source,
                    asset_id,
                ),
            )
        return state

    def retry_parked(self) -> int:
        with self.transaction():
            cursor = self.execute(
                "UPDATE assets SET state = ?, attempts = 0, next_attempt_at = NULL, changed_at = ? "
                "WHERE state IN (?, ?)",
                (AssetState.PENDING, utc_now(), AssetState.PARKED, AssetState.FAILED),
            )
        return cursor.rowcount

    def remove_asset(self, source: str, asset_id: str, state: AssetState) -> Dropped:
        """Mark an asset trashed/withheld/deleted; its faces leave the facesets unless another live
        asset or an imported file has the same bytes. A trashed or withheld asset keeps its bytes, so
        its faces stay in the store (out of the facesets: only live faces are exported) until it is
        deleted for good, and a restore (or the partner shown again) brings them back as they were."""
        with self.transaction():
            dropped = Dropped() if state in AssetState.kept() else self._detach_asset(source, asset_id)
            self.execute(
                "UPDATE assets SET state = ?, reason = NULL, changed_at = ? WHERE source = ? AND asset_id = ?",
                (state, utc_now(), source, asset_id),
            )
        return dropped

    def embedded_by_checksum(self, checksum: str) -> str | None:
        """The bytes (sha256) of an asset whose file Immich's checksum (SHA-1 of the file) names, when
        they were embedded already: a photo two sources list is downloaded once."""
        found = self.scalar(
            "SELECT a.sha256 FROM assets a JOIN blobs b ON b.sha256 = a.sha256 "
            "WHERE a.checksum = ? AND a.checksum_kind = 'sha1' LIMIT 1",
            (checksum,),
        )
        return None if found is None else str(found)

    def link_asset(self, source: str, asset_id: str, sha256: str) -> None:
        """The bytes were embedded before (another asset or user): point this asset at them."""
        with self.transaction():
            self.execute(
                "UPDATE assets SET state = ?, reason = 'duplicate content', sha256 = ?, attempts = 0, "
                "next_attempt_at = NULL, changed_at = ? WHERE source = ? AND asset_id = ?",
                (AssetState.DONE, sha256, utc_now(), source, asset_id),
            )

    def mark_done(self, source: str, asset_id: str, sha256: str, reason: str | None) -> None:
        self.execute(
            "UPDATE assets SET state = ?, reason = ?, sha256 = ?, attempts = 0, next_attempt_at = NULL, "
            "changed_at = ? WHERE source = ? AND asset_id = ?",
            (AssetState.DONE, reason, sha256, utc_now(), source, asset_id),
        )

    def _detach_asset(self, source: str, asset_id: str) -> Dropped:
        sha256 = self.scalar("SELECT sha256 FROM assets WHERE source = ? AND asset_id = ?", (source, asset_id))
        self.execute("UPDATE assets SET sha256 = NULL WHERE source = ? AND asset_id = ?", (source, asset_id))
        if sha256 is None:
            return Dropped()
        return self._drop_blob_if_orphaned(sha256)


def _due(last: object, every_seconds: float) -> bool:
    if last is None:
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(str(last).replace("Z", "+00:00"))
    return age.total_seconds() >= every_seconds


def _asset_row(row: dict[str, object]) -> AssetRow:
    return AssetRow(**{**row, "state": AssetState(str(row["state"]))})  # type: ignore[arg-type]
