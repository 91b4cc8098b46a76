"""The state database: the only module with SQL.

SQLite in WAL mode (so `status` reads while `sync` writes), schema changes only through the numbered
files in migrations/, short explicit transactions. sqlite3 errors become StoreError here.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .redact import scrub

if TYPE_CHECKING:  # imported where used: `status` needs neither (sqlite_utils brings numpy, 60 ms)
    import numpy as np
    import sqlite_utils
    from numpy.typing import NDArray
from .models import DetectedFace, RemoteAsset, StoredFace

MIGRATIONS_DIR = Path(os.environ.get("FACESYNCD_MIGRATIONS", Path(__file__).resolve().parent.parent / "migrations"))

CYCLES_KEPT = 1000


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _migrations() -> list[tuple[int, str, Path]]:
    if not MIGRATIONS_DIR.is_dir():
        raise StoreError(f"migrations directory not found: {MIGRATIONS_DIR}")
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.stem, path))
    return found


def _statements(script: str) -> Iterator[str]:
    """Split a script into complete statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement and not all(
                part.strip().startswith("--") or not part.strip() for part in statement.splitlines()
            ):
                yield statement


@dataclass
class Dropped:
    """What removing faces from the store left to tidy outside it: crop files no longer used, and
    the faces that were in identities (so in the face index)."""

    crops: list[str] = field(default_factory=list)
    indexed_faces: list[int] = field(default_factory=list)

    def extend(self, other: Dropped) -> None:
        self.crops.extend(other.crops)
        self.indexed_faces.extend(other.indexed_faces)


@dataclass
class ListedPage:
    needing_work: int = 0
    trashed: list[str] = field(default_factory=list)
    dropped: Dropped = field(default_factory=Dropped)


@dataclass(frozen=True)
class AssetRow:
    source: str
    asset_id: str
    state: str
    checksum: str | None
    sha256: str | None
    attempts: int
    type: str | None
    original_file_name: str | None
    width: int | None
    height: int | None
    checksum_kind: str | None = None


@dataclass(frozen=True)
class ImportProvenance:
    """Where an imported crop was cut from, as the imported tree records it."""

    source: str | None
    asset_id: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImportClaim:
    """An imported face that stands for a face of a photo in Immich until that photo arrives."""

    path: str
    identity: int
    bbox: tuple[float, float, float, float]
    face_id: int


@dataclass(frozen=True)
class ExportFace:
    face_id: int
    sha256: str
    source: str
    asset_id: str | None
    crop: str
    bbox: tuple[float, float, float, float]
    det_score: float
    distance: float | None


class Store:
    """Typed access to the state database. One instance per process; not shared between threads."""

    def __init__(self, path: Path, *, readonly: bool = False, threaded: bool = False, create: bool = True) -> None:
        """threaded: the connection may be used from another thread than the one that opened it
        (the daemon's worker); the caller makes sure one thread at a time uses it.
        create: make the database when there is none (sync, run, import); the other commands say
        that there is none instead."""
        self.path = path
        self._db: sqlite_utils.Database | None = None
        self._depth = 0
        if not path.exists():
            if readonly or not create:
                raise StoreError(f"no database at {path} yet: run `facesyncd sync` first")
            self._create()
        self.conn = self._connect(path, readonly=readonly, threaded=threaded)
        if readonly:
            if self.schema_version() == 0:
                self.conn.close()
                raise StoreError(f"the database {path} is not initialised yet (a first sync is creating it)")
        else:
            self.migrate()

    @staticmethod
    def _connect(path: Path, *, readonly: bool, threaded: bool) -> sqlite3.Connection:
        try:
            if readonly:
                connection = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=not threaded
                )
            else:
                connection = sqlite3.connect(path, isolation_level=None, check_same_thread=not threaded)
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open database {path}: {error}") from error
        return connection

    def _create(self) -> None:
        """Make the database under a temporary name, migrate it, and link it into place: a file at
        `path` always holds its schema, so a reader never meets a half-made database, and a failed
        migration leaves no database behind."""
        temporary = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.unlink(missing_ok=True)
            self.conn = sqlite3.connect(temporary, isolation_level=None)
            os.chmod(temporary, 0o600)
        except sqlite3.Error as error:
            raise StoreError(f"cannot create database {self.path}: {error}") from error
        except OSError as error:
            raise StoreError(f"cannot create database {self.path}: {error.strerror or error}") from error
        try:
            self.migrate()
            self.conn.close()
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass  # another process made it first: theirs is as good as ours
        except OSError as error:
            raise StoreError(f"cannot create database {self.path}: {error.strerror or error}") from error
        finally:
            self.conn.close()
            temporary.unlink(missing_ok=True)

    def close(self) -> None:
        self.conn.close()

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; nested calls join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot write database {self.path}: {error}") from error
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(f"cannot write database {self.path}: {error}") from error

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): then there is nothing to undo.
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StoreError(f"database error in {self.path}: {error}") from error

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for schema inspection."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def _rows(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        cursor = self._execute(sql, parameters)
        names = [column[0] for column in cursor.description]
        try:
            return [dict(zip(names, row, strict=True)) for row in cursor]
        except sqlite3.Error as error:
            raise StoreError(f"database error in {self.path}: {error}") from error

    def _scalar(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        row = self._execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        if not self._scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
            return 0
        return int(self._scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in one transaction with its bookkeeping row.

        An existing database is copied aside first (facesyncd.db.bak-vN), so a failed upgrade loses nothing.
        """
        self._execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version()
        pending = [m for m in _migrations() if m[0] > current]
        if pending and current > 0:
            backup = self.path.with_name(f"{self.path.name}.bak-v{current}")
            try:
                target = sqlite3.connect(backup)
                self.conn.backup(target)
                target.close()
                os.chmod(backup, 0o600)
            except (sqlite3.Error, OSError) as error:
                raise StoreError(f"cannot back up {self.path} before migrating: {error}") from error
        applied = []
        for version, name, path in pending:
            with self.transaction():
                for statement in _statements(path.read_text(encoding="utf-8")):
                    self._execute(statement)
                self._execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, utc_now()),
                )
            applied.append(name)
        return applied

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value = self._scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def check_model(self, model_name: str, dimension: int) -> None:
        """Embeddings of two models cannot be compared: refuse a model of another size than the stored faces."""
        stored_dimension = self.get_meta("embedding_dim")
        if stored_dimension is None:
            with self.transaction():
                self.set_meta("embedding_dim", str(dimension))
                self.set_meta("model", model_name)
            return
        if int(stored_dimension) != dimension:
            raise StoreError(
                f"the database holds {stored_dimension}-d embeddings from model "
                f"{self.get_meta('model')!r}, but the configured model gives {dimension}-d: "
                f"use the same model pack, or start from a new state_dir"
            )

    def index_version(self) -> int:
        """Bumped by every transaction that changes which faces belong to identities."""
        return int(self.get_meta("index_version") or 0)

    def _bump_index_version(self) -> None:
        self.set_meta("index_version", str(self.index_version() + 1))

    # -- sources --------------------------------------------------------------------------------

    def ensure_source(self, name: str, url: str) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO sources (name, url) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET url = excluded.url",
                (name, url),
            )

    def watermark(self, name: str) -> str | None:
        value = self._scalar("SELECT watermark FROM sources WHERE name = ?", (name,))
        return None if value is None else str(value)

    def finish_sweep(self, name: str, watermark: str | None) -> None:
        with self.transaction():
            self._execute(
                "UPDATE sources SET watermark = ?, last_sweep_at = ?, last_error = NULL, last_error_at = NULL "
                "WHERE name = ?",
                (watermark, utc_now(), name),
            )

    def reconcile_due(self, name: str, every_seconds: float) -> bool:
        last = self._scalar("SELECT last_reconcile_at FROM sources WHERE name = ?", (name,))
        if last is None:
            return True
        age = datetime.now(UTC) - datetime.fromisoformat(str(last).replace("Z", "+00:00"))
        return age.total_seconds() >= every_seconds

    def mark_reconciled(self, name: str) -> None:
        with self.transaction():
            self._execute("UPDATE sources SET last_reconcile_at = ? WHERE name = ?", (utc_now(), name))

    def set_source_error(self, name: str, error: str) -> None:
        with self.transaction():
            self._execute(
                "UPDATE sources SET last_error = ?, last_error_at = ? WHERE name = ?", (scrub(error), utc_now(), name)
            )

    # -- assets ---------------------------------------------------------------------------------

    def get_asset(self, source: str, asset_id: str) -> AssetRow | None:
        rows = self._rows(
            "SELECT source, asset_id, state, checksum, sha256, attempts, type, original_file_name, width, height, "
            "checksum_kind "
            "FROM assets WHERE source = ? AND asset_id = ?",
            (source, asset_id),
        )
        return AssetRow(**rows[0]) if rows else None

    def record_listed(self, source: str, assets: Sequence[RemoteAsset]) -> ListedPage:
        """Save one listed page: what needs work, what was trashed, which crops lost their face.

        An asset whose checksum is unchanged and that was already handled is left alone: Immich's own
        jobs bump updatedAt all the time, and that must not cause a download.
        """
        now = utc_now()
        page = ListedPage()
        with self.transaction():
            for asset in assets:
                known = self.get_asset(source, asset.id)
                if asset.is_trashed:
                    if known is not None and known.state not in ("trashed", "deleted"):
                        page.trashed.append(asset.id)
                    continue
                unchanged = (
                    known is not None
                    and known.checksum == asset.checksum
                    and known.state in ("done", "skipped", "parked", "pending", "failed")
                )
                if unchanged:
                    self._execute(
                        "UPDATE assets SET updated_at = ?, checksum_kind = ? WHERE source = ? AND asset_id = ?",
                        (asset.updated_at, asset.checksum_kind, source, asset.id),
                    )
                    if known is not None and known.state in ("pending", "failed"):
                        page.needing_work += 1
                    continue
                page.needing_work += 1
                self._execute(
                    """
                    INSERT INTO assets (source, asset_id, type, original_file_name, checksum, checksum_kind,
                        updated_at, file_created_at, width, height, state, reason, sha256, attempts,
                        next_attempt_at, first_seen_at, changed_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, 0, NULL, ?, ?)
                    ON CONFLICT(source, asset_id) DO UPDATE SET
                        type = excluded.type, original_file_name = excluded.original_file_name,
                        checksum = excluded.checksum, checksum_kind = excluded.checksum_kind,
                        updated_at = excluded.updated_at, file_created_at = excluded.file_created_at,
                        width = excluded.width, height = excluded.height, state = 'pending', reason = NULL,
                        attempts = 0, next_attempt_at = NULL, changed_at = excluded.changed_at
                    """,
                    (
                        source,
                        asset.id,
                        asset.type,
                        asset.original_file_name,
                        asset.checksum,
                        asset.checksum_kind,
                        asset.updated_at,
                        asset.file_created_at,
                        asset.width,
                        asset.height,
                        now,
                        now,
                    ),
                )
                if known is not None and known.sha256 is not None:
                    # New bytes under a known asset: its old faces leave the facesets.
                    page.dropped.extend(self._detach_asset(source, asset.id))
        return page

    def assets_to_process(self, source: str, now: str) -> list[AssetRow]:
        rows = self._rows(
            "SELECT source, asset_id, state, checksum, sha256, attempts, type, original_file_name, width, height, "
            "checksum_kind "
            "FROM assets WHERE source = ? AND (state = 'pending' OR (state = 'failed' AND "
            "(next_attempt_at IS NULL OR next_attempt_at <= ?))) ORDER BY file_created_at, asset_id",
            (source, now),
        )
        return [AssetRow(**row) for row in rows]

    def known_asset_states(self, source: str) -> dict[str, str]:
        """asset id -> state, for every asset not yet known to be deleted."""
        rows = self._execute("SELECT asset_id, state FROM assets WHERE source = ? AND state != 'deleted'", (source,))
        return dict(rows.fetchall())

    def mark_skipped(self, source: str, skipped: Sequence[tuple[str, str]]) -> None:
        """(asset id, reason) pairs, in one transaction: a first sync may skip most of a library."""
        now = utc_now()
        with self.transaction():
            self.conn.executemany(
                "UPDATE assets SET state = 'skipped', reason = ?, changed_at = ? WHERE source = ? AND asset_id = ?",
                [(reason, now, source, asset_id) for asset_id, reason in skipped],
            )

    def mark_failed(self, source: str, asset_id: str, reason: str, *, max_attempts: int, retry_at: str) -> str:
        """Count a failed attempt; park the asset after max_attempts. Returns the new state."""
        with self.transaction():
            attempts = (
                int(
                    self._scalar("SELECT attempts FROM assets WHERE source = ? AND asset_id = ?", (source, asset_id))
                    or 0
                )
                + 1
            )
            state = "parked" if attempts >= max_attempts else "failed"
            self._execute(
                "UPDATE assets SET state = ?, reason = ?, attempts = ?, next_attempt_at = ?, changed_at = ? "
                "WHERE source = ? AND asset_id = ?",
                (state, scrub(reason), attempts, None if state == "parked" else retry_at, utc_now(), source, asset_id),
            )
        return state

    def retry_parked(self) -> int:
        with self.transaction():
            cursor = self._execute(
                "UPDATE assets SET state = 'pending', attempts = 0, next_attempt_at = NULL, changed_at = ? "
                "WHERE state IN ('parked', 'failed')",
                (utc_now(),),
            )
        return cursor.rowcount

    def remove_asset(self, source: str, asset_id: str, state: str) -> Dropped:
        """Mark an asset trashed/deleted; its faces leave the facesets unless another live asset or
        an imported file has the same bytes."""
        with self.transaction():
            dropped = self._detach_asset(source, asset_id)
            self._execute(
                "UPDATE assets SET state = ?, reason = NULL, changed_at = ? WHERE source = ? AND asset_id = ?",
                (state, utc_now(), source, asset_id),
            )
        return dropped

    def _detach_asset(self, source: str, asset_id: str) -> Dropped:
        sha256 = self._scalar("SELECT sha256 FROM assets WHERE source = ? AND asset_id = ?", (source, asset_id))
        self._execute("UPDATE assets SET sha256 = NULL WHERE source = ? AND asset_id = ?", (source, asset_id))
        if sha256 is None:
            return Dropped()
        return self._drop_blob_if_orphaned(sha256)

    def _drop_blob_if_orphaned(self, sha256: str) -> Dropped:
        users = self._scalar(
            "SELECT (SELECT COUNT(*) FROM assets WHERE sha256 = ? AND state = 'done') + "
            "(SELECT COUNT(*) FROM imports WHERE sha256 = ? AND state = 'done' AND superseded_at IS NULL)",
            (sha256, sha256),
        )
        if users:
            return Dropped()
        dropped = Dropped()
        rows = self._execute("SELECT id, crop, identity FROM faces WHERE sha256 = ?", (sha256,))
        for face_id, crop, identity in rows:
            dropped.crops.append(crop)
            if identity is not None:
                dropped.indexed_faces.append(face_id)
        self._execute("DELETE FROM faces WHERE sha256 = ?", (sha256,))
        self._execute("UPDATE assets SET sha256 = NULL WHERE sha256 = ?", (sha256,))
        self._execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        if dropped.indexed_faces:
            self._bump_index_version()
        return dropped

    # -- blobs and faces ------------------------------------------------------------------------

    def blob_exists(self, sha256: str) -> bool:
        return self._scalar("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)) is not None

    def link_asset(self, source: str, asset_id: str, sha256: str) -> None:
        """The bytes were embedded before (another asset or user): point this asset at them."""
        with self.transaction():
            self._execute(
                "UPDATE assets SET state = 'done', reason = 'duplicate content', sha256 = ?, attempts = 0, "
                "next_attempt_at = NULL, changed_at = ? WHERE source = ? AND asset_id = ?",
                (sha256, utc_now(), source, asset_id),
            )

    def save_blob_faces(
        self,
        sha256: str,
        *,
        size: int,
        width: int,
        height: int,
        decoded_from: str,
        model: str,
        faces: Sequence[DetectedFace],
        crops: Sequence[str],
    ) -> None:
        """Insert a blob and its faces (no-op if the blob exists). Call inside a transaction."""
        if self.blob_exists(sha256):
            return
        self._execute(
            "INSERT INTO blobs (sha256, size, width, height, decoded_from, model, embedded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sha256, size, width, height, decoded_from, model, utc_now()),
        )
        for face_index, (face, crop) in enumerate(zip(faces, crops, strict=True)):
            self._execute(
                "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha256,
                    face_index,
                    *face.bbox,
                    face.det_score,
                    json.dumps([list(point) for point in face.landmarks]),
                    face.embedding.astype("<f4", copy=False).tobytes(),
                    crop,
                ),
            )

    def mark_done(self, source: str, asset_id: str, sha256: str, reason: str | None) -> None:
        self._execute(
            "UPDATE assets SET state = 'done', reason = ?, sha256 = ?, attempts = 0, next_attempt_at = NULL, "
            "changed_at = ? WHERE source = ? AND asset_id = ?",
            (reason, sha256, utc_now(), source, asset_id),
        )

    def _faces(self, where: str, parameters: Sequence[Any] = ()) -> list[StoredFace]:
        import numpy as np

        faces = []
        for face_id, sha256, blob, identity in self._execute(
            f"SELECT id, sha256, embedding, identity FROM faces WHERE {where} ORDER BY id", parameters
        ):
            faces.append(StoredFace(face_id, sha256, np.frombuffer(blob, dtype=np.float32), identity))
        return faces

    def unmatched_new_faces(self) -> list[StoredFace]:
        return self._faces("identity IS NULL AND matched_at IS NULL")

    def pool_faces(self) -> list[StoredFace]:
        return self._faces("identity IS NULL AND matched_at IS NOT NULL")

    def iter_identity_faces(self, batch: int = 10_000) -> Iterator[tuple[list[int], NDArray[np.float32], list[int]]]:
        """Faces in identities as (ids, embeddings, identities) in chunks: rebuilding the index of a
        large library never holds every embedding twice."""
        import numpy as np

        cursor = self._execute("SELECT id, identity, embedding FROM faces WHERE identity IS NOT NULL ORDER BY id")
        while rows := cursor.fetchmany(batch):
            embeddings = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float32).reshape(len(rows), -1)
            yield [row[0] for row in rows], embeddings, [row[1] for row in rows]

    def identity_map(self) -> dict[int, int]:
        """face id -> identity for every face in an identity (what the index holds)."""
        return dict(self._execute("SELECT id, identity FROM faces WHERE identity IS NOT NULL").fetchall())

    def count_identity_faces(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL"))

    def record_matches(self, assignments: dict[int, tuple[int, float]], examined: Sequence[int]) -> None:
        """Faces in `assignments` join identities; every face in `examined` is marked as compared."""
        now = utc_now()
        with self.transaction():
            for face_id in examined:
                self._execute("UPDATE faces SET matched_at = ? WHERE id = ?", (now, face_id))
            for face_id, (identity, distance) in assignments.items():
                self._execute(
                    "UPDATE faces SET identity = ?, distance = ?, matched_at = ? WHERE id = ?",
                    (identity, distance, now, face_id),
                )
            if assignments:
                self._bump_index_version()

    def identities_of_blob(self, sha256: str) -> set[int]:
        return {
            row[0]
            for row in self._execute("SELECT identity FROM faces WHERE sha256 = ? AND identity IS NOT NULL", (sha256,))
        }

    def highest_identity(self) -> int:
        """The highest faceset number ever used: by an identity here, or by an earlier database whose
        facesets were adopted (`number_floor`), so that no number is ever given to another person."""
        highest = int(self._scalar("SELECT COALESCE(MAX(number), 0) FROM identities"))
        return max(highest, int(self.get_meta("number_floor") or 0))

    def raise_number_floor(self, number: int) -> None:
        """New facesets will number past `number`."""
        if number > int(self.get_meta("number_floor") or 0):
            with self.transaction():
                self.set_meta("number_floor", str(number))

    def is_empty(self) -> bool:
        """No asset and no identity yet: a new database (or one that was lost and made again)."""
        return self._scalar("SELECT 1 FROM assets LIMIT 1") is None and (
            self._scalar("SELECT 1 FROM identities LIMIT 1") is None
        )

    def create_identity(self, members: dict[int, float], *, origin: str = "cluster") -> int:
        """Open a new identity numbered past the highest ever used, with these faces (id -> distance)."""
        with self.transaction():
            number = self.highest_identity() + 1
            self._execute(
                "INSERT INTO identities (number, origin, created_at) VALUES (?, ?, ?)", (number, origin, utc_now())
            )
            now = utc_now()
            for face_id, distance in members.items():
                self._execute(
                    "UPDATE faces SET identity = ?, distance = ?, matched_at = ? WHERE id = ?",
                    (number, distance, now, face_id),
                )
            self._bump_index_version()
        return number

    def ensure_identity(self, number: int, origin: str) -> None:
        self._execute(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, ?, ?) ON CONFLICT(number) DO NOTHING",
            (number, origin, utc_now()),
        )

    # -- imports --------------------------------------------------------------------------------

    def import_state(self, path: str) -> str | None:
        value = self._scalar("SELECT state FROM imports WHERE path = ?", (path,))
        return None if value is None else str(value)

    def record_import(
        self,
        path: str,
        sha256: str,
        identity: int,
        *,
        face_id: int | None,
        reason: str | None,
        provenance: ImportProvenance | None = None,
    ) -> None:
        self.ensure_identity(identity, "import")
        source, asset_id, bbox = (
            (provenance.source, provenance.asset_id, json.dumps(list(provenance.bbox)))
            if provenance is not None
            else (None, None, None)
        )
        self._execute(
            "INSERT INTO imports (path, sha256, identity, state, reason, imported_at, source, asset_id, bbox, face_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, identity = excluded.identity, "
            "state = excluded.state, reason = excluded.reason, imported_at = excluded.imported_at, "
            "source = excluded.source, asset_id = excluded.asset_id, bbox = excluded.bbox, "
            "face_id = excluded.face_id, superseded_at = NULL",
            (
                path,
                sha256,
                identity,
                "done" if face_id is not None else "failed",
                reason,
                utc_now(),
                source,
                asset_id,
                bbox,
                face_id,
            ),
        )
        if face_id is not None:
            self._execute(
                "UPDATE faces SET identity = ?, distance = 0, matched_at = ? WHERE id = ?",
                (identity, utc_now(), face_id),
            )
            self._bump_index_version()

    def import_claims(self, asset_id: str) -> list[ImportClaim]:
        """Imported faces cut from this photo (known from the imported tree) that its own faces have
        not replaced yet."""
        rows = self._rows(
            "SELECT i.path, i.identity, i.bbox, i.face_id FROM imports i JOIN faces f ON f.id = i.face_id "
            "WHERE i.asset_id = ? AND i.state = 'done' AND i.superseded_at IS NULL AND i.bbox IS NOT NULL "
            "AND f.identity = i.identity ORDER BY i.path",
            (asset_id,),
        )
        return [
            ImportClaim(row["path"], row["identity"], tuple(json.loads(row["bbox"])), row["face_id"]) for row in rows
        ]

    def blob_boxes(self, sha256: str) -> list[tuple[int, tuple[float, float, float, float]]]:
        """(face id, box) of a blob's faces not yet in an identity."""
        rows = self._execute(
            "SELECT id, x1, y1, x2, y2 FROM faces WHERE sha256 = ? AND identity IS NULL ORDER BY id", (sha256,)
        )
        return [(row[0], (row[1], row[2], row[3], row[4])) for row in rows]

    def supersede_imports(self, replacements: Sequence[tuple[ImportClaim, int]]) -> Dropped:
        """Each (claim, face id): the photo's own face takes the imported face's place in its identity;
        the imported face (and its crop) goes. Call inside a transaction."""
        dropped = Dropped()
        now = utc_now()
        for claim, face_id in replacements:
            self._execute(
                "UPDATE faces SET identity = ?, distance = (SELECT distance FROM faces WHERE id = ?), matched_at = ? "
                "WHERE id = ?",
                (claim.identity, claim.face_id, now, face_id),
            )
            self._execute(
                "UPDATE imports SET face_id = ?, superseded_at = ? WHERE path = ?", (face_id, now, claim.path)
            )
            old = self._rows("SELECT sha256, crop FROM faces WHERE id = ?", (claim.face_id,))
            self._execute("DELETE FROM faces WHERE id = ?", (claim.face_id,))
            dropped.indexed_faces.append(claim.face_id)
            if old:
                dropped.crops.append(old[0]["crop"])
                dropped.extend(self._drop_blob_if_orphaned(old[0]["sha256"]))
        if replacements:
            self._bump_index_version()
        return dropped

    def faces_by_id(self, face_ids: Sequence[int]) -> list[StoredFace]:
        if not face_ids:
            return []
        return self._faces(f"id IN ({', '.join('?' * len(face_ids))})", list(face_ids))

    def faces_of_blob(self, sha256: str) -> list[tuple[int, float]]:
        """(face id, box area) of a blob's faces, largest first."""
        rows = self._execute(
            "SELECT id, (x2 - x1) * (y2 - y1) AS area FROM faces WHERE sha256 = ? ORDER BY area DESC", (sha256,)
        )
        return [(row[0], row[1]) for row in rows]

    # -- export ---------------------------------------------------------------------------------

    def export_faces(self) -> dict[int, list[ExportFace]]:
        """Live faces per identity, with one representative asset each (lowest source/asset id)."""
        rows = self._rows(
            """
            SELECT f.id AS face_id, f.sha256, f.identity, f.crop, f.x1, f.y1, f.x2, f.y2, f.det_score, f.distance,
                   (SELECT a.source FROM assets a WHERE a.sha256 = f.sha256 AND a.state = 'done'
                    ORDER BY a.source, a.asset_id LIMIT 1) AS source,
                   (SELECT a.asset_id FROM assets a WHERE a.sha256 = f.sha256 AND a.state = 'done'
                    ORDER BY a.source, a.asset_id LIMIT 1) AS asset_id
            FROM faces f WHERE f.identity IS NOT NULL ORDER BY f.identity, f.id
            """
        )
        result: dict[int, list[ExportFace]] = {}
        for row in rows:
            result.setdefault(row["identity"], []).append(
                ExportFace(
                    face_id=row["face_id"],
                    sha256=row["sha256"],
                    source=row["source"] or "import",
                    asset_id=row["asset_id"],
                    crop=row["crop"],
                    bbox=(row["x1"], row["y1"], row["x2"], row["y2"]),
                    det_score=row["det_score"],
                    distance=row["distance"],
                )
            )
        return result

    def identity_numbers(self) -> list[int]:
        return [row[0] for row in self._execute("SELECT number FROM identities ORDER BY number")]

    def all_crops(self) -> set[str]:
        return {row[0] for row in self._execute("SELECT crop FROM faces")}

    # -- cycles and status ----------------------------------------------------------------------

    def start_cycle(self) -> int:
        with self.transaction():
            cursor = self._execute("INSERT INTO cycles (started_at) VALUES (?)", (utc_now(),))
        return int(cursor.lastrowid or 0)

    def finish_cycle(self, cycle_id: int, *, ok: bool, error: str | None, report: dict[str, Any]) -> None:
        with self.transaction():
            self._execute(
                "UPDATE cycles SET finished_at = ?, ok = ?, error = ?, report = ? WHERE id = ?",
                (utc_now(), int(ok), None if error is None else scrub(error), scrub(json.dumps(report)), cycle_id),
            )
            # A daemon runs a cycle every few minutes: keep the recent history only.
            self._execute("DELETE FROM cycles WHERE id <= ?", (cycle_id - CYCLES_KEPT,))

    def status(self) -> dict[str, Any]:
        assets = {
            row["state"]: row["n"] for row in self._rows("SELECT state, COUNT(*) AS n FROM assets GROUP BY state")
        }
        # Two counts over the identity index: one pass that tests each row costs 6x as long.
        total = int(self._scalar("SELECT COUNT(*) FROM faces"))
        assigned = int(self._scalar("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL"))
        last = self._rows("SELECT started_at, finished_at, ok, error, report FROM cycles ORDER BY id DESC LIMIT 1")
        last_sync: dict[str, Any] | None = None
        if last:
            row = last[0]
            last_sync = {
                "started_at": row["started_at"],
                "finished_at": row["finished_at"],
                "ok": None if row["ok"] is None else bool(row["ok"]),
                "error": row["error"],
                "report": json.loads(row["report"]) if row["report"] else None,
            }
        throughput = self._rows(
            "SELECT json_extract(report, '$.faces_per_second') AS rate, finished_at FROM cycles "
            "WHERE json_extract(report, '$.faces_found') > 0 ORDER BY id DESC LIMIT 1"
        )
        sources = self._rows(
            "SELECT name, url, watermark, last_sweep_at, last_reconcile_at, last_error, last_error_at "
            "FROM sources ORDER BY name"
        )
        problems = self._rows(
            "SELECT source, asset_id, state, reason, attempts FROM assets WHERE state IN ('failed', 'parked') "
            "ORDER BY changed_at DESC LIMIT 50"
        )
        skipped = {
            row["reason"]: row["n"]
            for row in self._rows("SELECT reason, COUNT(*) AS n FROM assets WHERE state = 'skipped' GROUP BY reason")
        }
        return {
            "assets": assets,
            "skipped_reasons": skipped,
            "faces": {"total": total, "assigned": assigned, "pending": total - assigned},
            "identities": int(self._scalar("SELECT COUNT(*) FROM identities")),
            "highest_identity": self.highest_identity(),
            "last_sync": last_sync,
            "faces_per_second": throughput[0]["rate"] if throughput else None,
            "sources": sources,
            "problems": problems,
            "index_version": self.index_version(),
            "embedding_dim": self.get_meta("embedding_dim"),
            "model": self.get_meta("model"),
        }
