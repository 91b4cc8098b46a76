"""The state database: the only package with SQL.

SQLite is the truth; the face index and the faceset folders are derived from it. The store is made of
focused parts over one connection: `database` (opening, migrations, transactions and savepoints,
every sqlite3 error translated into StoreError), `faces` (blobs, faces, identities, imports),
`assets` (sources, listing bookkeeping, asset states), `cycles` (cycle records, status) and
`corrections` (the user's corrections, their history, and the constraints they set). `Store`
is all of them at once.
"""

from __future__ import annotations

from .assets import AssetQueries
from .corrections import CorrectionQueries
from .cycles import CycleQueries
from .database import utc_now

__all__ = ["Store", "utc_now"]


class Store(AssetQueries, CycleQueries, CorrectionQueries):
    """Typed access to the state database. One instance per thread that uses it."""
