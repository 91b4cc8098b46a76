"""The record of each cycle, and the read-only summary that `status` shows."""

from __future__ import annotations

import json
from typing import Any

from ..models import AssetState, JobKind
from ..redact import scrub
from .database import utc_now
from .faces import FaceQueries

CYCLES_KEPT = 1000


class CycleQueries(FaceQueries):
    """Cycles (a daemon runs one every few minutes: the recent history is kept) and the summary
    `status` shows."""

    def start_cycle(self, kind: JobKind = JobKind.SYNC) -> int:
        with self.transaction():
            cursor = self.execute("INSERT INTO cycles (started_at, kind) VALUES (?, ?)", (utc_now(), kind))
        return int(cursor.lastrowid or 0)

    def finish_cycle(self, cycle_id: int, *, ok: bool, error: str | None, report: dict[str, Any]) -> None:
        with self.transaction():
            self.execute(
                "UPDATE cycles SET finished_at = ?, ok = ?, error = ?, report = ? WHERE id = ?",
                (utc_now(), int(ok), None if error is None else scrub(error), scrub(json.dumps(report)), cycle_id),
            )
            # A daemon runs a cycle every few minutes: keep the recent history only.
            self.execute("DELETE FROM cycles WHERE id <= ?", (cycle_id - CYCLES_KEPT,))

    def health(self) -> dict[str, Any]:
        """What /metrics adds to the status: the last successful sync, the last cycle's length, the
        assets failing per source."""
        syncs = tuple(JobKind.syncs())
        marks = ", ".join("?" * len(syncs))
        last_ok = self.scalar(
            f"SELECT finished_at FROM cycles WHERE ok = 1 AND kind IN ({marks}) ORDER BY id DESC LIMIT 1", syncs
        )
        seconds = self.scalar(
            "SELECT json_extract(report, '$.seconds') FROM cycles WHERE finished_at IS NOT NULL "
            "ORDER BY id DESC LIMIT 1"
        )
        failing = dict(
            self.tuples(
                "SELECT source, COUNT(*) FROM assets WHERE state IN (?, ?) GROUP BY source",
                (AssetState.FAILED, AssetState.PARKED),
            )
        )
        return {"last_success_at": last_ok, "last_cycle_seconds": seconds, "failing_by_source": failing}

    def status(self) -> dict[str, Any]:
        counted = dict(self.tuples("SELECT state, COUNT(*) FROM assets GROUP BY state"))
        assets = {str(state): int(counted.get(state, 0)) for state in AssetState}
        # Two counts over the identity index: one pass that tests each row costs 6x as long.
        total = int(self.scalar("SELECT COUNT(*) FROM faces"))
        assigned = int(self.scalar("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL"))
        syncs = tuple(JobKind.syncs())
        last = self.rows(
            "SELECT kind, started_at, finished_at, ok, error, report FROM cycles "
            f"WHERE kind IN ({', '.join('?' * len(syncs))}) ORDER BY id DESC LIMIT 1",
            syncs,
        )
        last_sync: dict[str, Any] | None = None
        if last:
            row = last[0]
            last_sync = {
                "kind": row["kind"],
                "started_at": row["started_at"],
                "finished_at": row["finished_at"],
                "ok": None if row["ok"] is None else bool(row["ok"]),
                "error": row["error"],
                "report": json.loads(row["report"]) if row["report"] else None,
            }
        throughput = self.rows(
            "SELECT json_extract(report, '$.faces_per_second') AS rate, finished_at FROM cycles "
            "WHERE json_extract(report, '$.faces_found') > 0 ORDER BY id DESC LIMIT 1"
        )
        sources = self.rows(
            "SELECT name, url, watermark, last_sweep_at, last_reconcile_at, last_error, last_error_at, "
            "partner_assets, census_at, census_offset FROM sources ORDER BY name"
        )
        problems = self.rows(
            "SELECT source, asset_id, state, reason, attempts FROM assets WHERE state IN (?, ?) "
            "ORDER BY changed_at DESC LIMIT 50",
            (AssetState.FAILED, AssetState.PARKED),
        )
        skipped = dict(
            self.tuples("SELECT reason, COUNT(*) FROM assets WHERE state = ? GROUP BY reason", (AssetState.SKIPPED,))
        )
        return {
            "assets": assets,
            "skipped_reasons": skipped,
            "faces": {"total": total, "assigned": assigned, "pending": total - assigned},
            "identities": int(
                self.scalar("SELECT COUNT(*) FROM identities WHERE merged_into IS NULL AND forgotten_at IS NULL")
            ),
            "merged_identities": int(self.scalar("SELECT COUNT(*) FROM identities WHERE merged_into IS NOT NULL")),
            "highest_identity": self.highest_identity(),
            "last_sync": last_sync,
            "faces_per_second": throughput[0]["rate"] if throughput else None,
            "sources": sources,
            "problems": problems,
            "index_version": self.index_version(),
            "embedding_dim": int(self.get_meta("embedding_dim") or 0) or None,  # meta keeps text
            "model": self.get_meta("model"),
        }
