"""The database itself: opening and creating it, migrations, transactions, and the translation of
every sqlite3 error into StoreError. The other parts of the store build their queries on this.

SQLite in WAL mode (so `status` reads while `sync` writes), schema changes only through the numbered
files in facesyncd/migrations/ (shipped inside the package, read with importlib.resources), short
explicit transactions; a transaction opened inside another is a savepoint, undone alone.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ..errors import StoreError, whose

if TYPE_CHECKING:  # imported where used: `status` needs it not (sqlite_utils brings numpy, 60 ms)
    import sqlite_utils

# Tests point this at a folder holding one more migration; None: the package's own.
MIGRATIONS_DIR: Path | None = None

Parameters = Sequence[Any] | dict[str, Any]


# How long a statement waits for another process's write lock before it fails.
BUSY_TIMEOUT_MS = 30_000


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    script: str


def migrations() -> list[Migration]:
    """The numbered migrations, oldest first. Read lazily: nothing is read at import time."""
    if MIGRATIONS_DIR is not None:
        files = [(path.name, path.read_text(encoding="utf-8")) for path in MIGRATIONS_DIR.glob("*.sql")]
    else:
        folder = resources.files("facesyncd").joinpath("migrations")
        files = [(entry.name, entry.read_text(encoding="utf-8")) for entry in folder.iterdir()]
    found = [
        Migration(int(name[:4]), name.removesuffix(".sql"), script)
        for name, script in files
        if name.endswith(".sql") and name[:4].isdigit() and name[4:5] == "_"
    ]
    if not found:
        raise StoreError("the database migrations are missing from this installation of facesyncd")
    return sorted(found, key=lambda migration: migration.version)


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


class Database:
    """One connection to the state database. One instance per thread that uses it."""

    def __init__(self, path: Path, *, readonly: bool = False, threaded: bool = False, create: bool = True) -> None:
        """threaded: the connection may be used from another thread than the one that opened it
        (the daemon's worker); the caller makes sure one thread at a time uses it.
        create: make the database when there is none (sync, run, import); the other commands say
        that there is none instead."""
        self.path = path
        self.readonly = readonly
        self._db: sqlite_utils.Database | None = None
        self._savepoints = 0
        if not path.exists():
            if readonly or not create:
                raise StoreError(f"no database at {path} yet: run `facesyncd sync` first")
            self._create()
        self.conn = self._connect(path, readonly=readonly, threaded=threaded)
        if readonly:
            version = self.schema_version()
            if version == 0:
                self.conn.close()
                raise StoreError(f"the database {path} is not initialised yet (a first sync is creating it)")
            latest = max(migration.version for migration in migrations())
            if version < latest:  # a reader cannot migrate it, and would meet columns it lacks
                self.conn.close()
                raise StoreError(
                    f"the database {path} was written by an earlier facesyncd (schema {version}; this one "
                    f"uses {latest}): `facesyncd sync`, or a restart of the service, upgrades it"
                )
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
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as error:
            hint = ""
            if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
                hint = (
                    f"; this user may not write in {path.parent}{whose(path.parent)}, which SQLite needs even "
                    "to read the database: run facesyncd as its owner, or with sudo"
                )
            raise StoreError(f"cannot open database {path}: {error}{hint}") from error
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT. Inside another transaction: a savepoint, so an error undoes
        only what this block did (the outer transaction decides about the rest)."""
        if self.conn.in_transaction:
            with self._savepoint():
                yield
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot write database {self.path}: {error}") from error
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(f"cannot write database {self.path}: {error}") from error

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"facesyncd_{self._savepoints}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLITE_FULL may have rolled back the whole transaction
                try:
                    self.conn.execute(f"ROLLBACK TO {name}")
                    self.conn.execute(f"RELEASE {name}")
                except sqlite3.Error:
                    pass
            raise
        finally:
            self._savepoints -= 1
        self.execute(f"RELEASE {name}")

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): then there is nothing to undo.
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- statements: every sqlite3 error leaves as StoreError ------------------------------------

    def _error(self, error: sqlite3.Error) -> StoreError:
        return StoreError(f"database error in {self.path}: {error}")

    def execute(self, sql: str, parameters: Parameters = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, parameters)
        except sqlite3.Error as error:
            raise self._error(error) from error

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as error:
            raise self._error(error) from error

    @staticmethod
    def id_chunks(ids: Sequence[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
        """`ids` in chunks SQLite takes as parameters, each with its placeholders ("?, ?, ...")."""
        for start in range(0, len(ids), size):
            chunk = list(ids[start : start + size])
            yield chunk, ", ".join("?" * len(chunk))

    def rows(self, sql: str, parameters: Parameters = ()) -> list[dict[str, Any]]:
        cursor = self.execute(sql, parameters)
        names = [column[0] for column in cursor.description]
        try:
            return [dict(zip(names, row, strict=True)) for row in cursor]
        except sqlite3.Error as error:
            raise self._error(error) from error

    def tuples(self, sql: str, parameters: Parameters = ()) -> list[tuple[Any, ...]]:
        cursor = self.execute(sql, parameters)
        try:
            return cursor.fetchall()
        except sqlite3.Error as error:
            raise self._error(error) from error

    def chunks(self, sql: str, parameters: Parameters = (), size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of a large query, `size` at a time."""
        cursor = self.execute(sql, parameters)
        while True:
            try:
                rows = cursor.fetchmany(size)
            except sqlite3.Error as error:
                raise self._error(error) from error
            if not rows:
                return
            yield rows

    def scalar(self, sql: str, parameters: Parameters = ()) -> Any:
        try:
            row = self.execute(sql, parameters).fetchone()
        except sqlite3.Error as error:
            raise self._error(error) from error
        return None if row is None else row[0]

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for schema inspection."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        if not self.scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
            return 0
        return int(self.scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in one transaction with its bookkeeping row.

        An existing database is copied aside first (facesyncd.db.bak-vN), so a failed upgrade loses nothing.
        """
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version()
        pending = [migration for migration in migrations() if migration.version > current]
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
        for migration in pending:
            with self.transaction():
                for statement in _statements(migration.script):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, utc_now()),
                )
            applied.append(migration.name)
        return applied

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value = self.scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def generation(self) -> int:
        """How many changes clustering, merging or the export could see the store has had (triggers
        count them: migrations/0014)."""
        return int(self.get_meta("generation") or 0)

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def renew_token(self, key: str) -> str:
        """A fresh random token under meta `key`, returned: what a process that holds a copy of some
        rows compares with the store's to know they are still the ones it wrote. Random, not a count:
        a write undone, or another process's, never leaves a token the holder knows."""
        token = secrets.token_hex(8)
        self.set_meta(key, token)
        return token
