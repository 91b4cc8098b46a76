"""The store on real SQLite files: migrations, WAL, permissions, listing bookkeeping, numbering."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import with_extra_migration
from facesyncd.errors import StoreError
from facesyncd.models import DetectedFace, RemoteAsset
from facesyncd.store import Store
from facesyncd.store.database import migrations


def asset(asset_id: str, checksum: str = "c1", trashed: bool = False) -> RemoteAsset:
    return RemoteAsset(
        id=asset_id,
        type="IMAGE",
        original_file_name=f"{asset_id}.jpg",
        checksum=checksum,
        updated_at="2024-01-01T00:00:00.000Z",
        file_created_at="2023-01-01T00:00:00.000Z",
        is_trashed=trashed,
    )


def test_a_photo_listed_again_with_the_same_people_changes_nothing(store: Store) -> None:
    """Immich's jobs bump updatedAt all the time: a photo listed again with the people it had writes
    nothing (no change counted for clustering, merges or the names step); one whose people changed
    writes just that."""
    from dataclasses import replace

    def people() -> set[str]:
        return {name for (name,) in store.tuples("SELECT name FROM asset_people WHERE asset_id = 'a1'")}

    store.record_listed("alice", [replace(asset("a1"), people=("Ann", "Bob"))])
    assert people() == {"Ann", "Bob"}
    generation = store.generation()
    store.record_listed("alice", [replace(asset("a1"), people=("Bob", "Ann"), updated_at="2024-02-01T00:00:00.000Z")])
    assert store.generation() == generation
    store.record_listed("alice", [replace(asset("a1"), people=("Ann", "Cy"))])
    assert people() == {"Ann", "Cy"} and store.generation() > generation
    store.record_listed("alice", [replace(asset("a1"), people=())])
    assert people() == set()
    store.record_listed("alice", [asset("a1")])  # people not asked for: left as they are
    assert people() == set()


def face(seed: int) -> DetectedFace:
    vector = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return DetectedFace((0, 0, 100, 100), 0.9, ((1, 1),) * 5, vector / np.linalg.norm(vector))


def save_photo(
    store: Store, sha256: str, faces: list[DetectedFace], qualities: list[Any] | None = None, model: str = "m"
) -> None:
    """A photo's faces, as a stage saves them (crops named <sha256>_<n>)."""
    with store.transaction():
        store.save_blob_faces(
            sha256,
            size=1,
            width=10,
            height=10,
            decoded_from="original",
            model=model,
            faces=faces,
            crops=[f"{sha256}_{index}" for index in range(len(faces))],
            qualities=qualities,
        )


def photo_done(store: Store, asset_id: str, faces: list[DetectedFace], qualities: list[Any] | None = None) -> None:
    """Asset `asset_id` of alice (listed already) done, its photo (sha-<asset_id>) with these faces."""
    save_photo(store, f"sha-{asset_id}", faces, qualities)
    with store.transaction():
        store.mark_done("alice", asset_id, f"sha-{asset_id}", None)


def migrations_up_to(version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until MIGRATIONS_DIR is set back to None: the migrations of a facesyncd whose schema ends at
    `version` (a database made then is one an older facesyncd made)."""
    import facesyncd.store.database as database

    older = tmp_path / f"migrations-{version}"
    older.mkdir()
    for migration in migrations():
        if migration.version <= version:
            (older / f"{migration.name}.sql").write_text(migration.script)
    monkeypatch.setattr(database, "MIGRATIONS_DIR", older)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(tmp_path / "state" / "facesyncd.db")
    opened.ensure_source("alice", "http://immich")
    yield opened
    opened.close()


def test_new_database_is_migrated_wal_and_private(store: Store) -> None:
    assert store.schema_version() == max(migration.version for migration in migrations())
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert {"assets", "faces", "identities", "blobs", "sources", "cycles"} <= set(store.db.table_names())


def test_a_newer_migration_is_applied_after_a_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "facesyncd.db"
    Store(path).close()
    migrations = with_extra_migration(
        tmp_path, monkeypatch, "9999_test_column.sql", "ALTER TABLE identities ADD COLUMN note TEXT;\n"
    )
    upgraded = Store(path)
    assert upgraded.schema_version() == 9999
    assert "note" in upgraded.db["identities"].columns_dict
    backup = tmp_path / f"facesyncd.db.bak-v{len(list(migrations.glob('*.sql'))) - 1}"
    assert backup.exists()
    assert "note" not in {row[1] for row in sqlite3.connect(backup).execute("PRAGMA table_info(identities)")}
    upgraded.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "facesyncd.db"
    Store(path).close()
    with_extra_migration(tmp_path, monkeypatch, "9999_broken.sql", "CREATE TABLE half (x);\nTHIS IS NOT SQL;\n")
    with pytest.raises(StoreError):
        Store(path)
    check = sqlite3.connect(path)
    assert "half" not in {row[0] for row in check.execute("SELECT name FROM sqlite_master")}


def test_a_database_file_is_only_visible_once_it_holds_its_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first store made the file, then migrated it: a reader in between met `no such table`.
    Now the file appears (by a link) only after migrating, and a failed migration leaves none."""
    path = tmp_path / "state" / "facesyncd.db"
    seen_during_migration: list[bool] = []
    migrate = Store.migrate

    def watching(self: Store) -> list[str]:
        seen_during_migration.append(path.exists())
        return migrate(self)

    monkeypatch.setattr(Store, "migrate", watching)
    Store(path).close()
    assert seen_during_migration[0] is False, "the database file was visible before its tables"
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert {"assets", "faces", "schema_migrations"} <= tables
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(Store, "migrate", migrate)

    broken = tmp_path / "broken" / "facesyncd.db"
    with_extra_migration(tmp_path, monkeypatch, "9999_broken.sql", "THIS IS NOT SQL;\n")
    with pytest.raises(StoreError):
        Store(broken)
    assert list(broken.parent.iterdir()) == [], "a failed first migration left a database behind"


def test_a_reader_meeting_a_half_made_database_is_told_so(tmp_path: Path) -> None:
    path = tmp_path / "facesyncd.db"
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()  # e.g. made by an older version
    with pytest.raises(StoreError, match="not initialised yet"):
        Store(path, readonly=True)
    with pytest.raises(StoreError, match="no database at"):
        Store(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_unchanged_assets_listed_again_need_no_work(store: Store) -> None:
    first = store.record_listed("alice", [asset("a"), asset("b")])
    assert first.needing_work == 2
    photo_done(store, "a", [face(1)])
    again = store.record_listed("alice", [asset("a"), asset("b")])
    assert again.needing_work == 1  # b is still pending; a is done and unchanged
    changed = store.record_listed("alice", [asset("a", checksum="c2")])
    assert changed.needing_work == 1 and changed.dropped.crops == ["sha-a_0"]
    assert changed.dropped.indexed_faces == []  # the face was in no identity
    assert store.get_asset("alice", "a").state == "pending"


def test_trashed_assets_are_reported_once(store: Store) -> None:
    store.record_listed("alice", [asset("a")])
    assert store.record_listed("alice", [asset("a", trashed=True)]).trashed == ["a"]
    store.remove_asset("alice", "a", "trashed")
    assert store.record_listed("alice", [asset("a", trashed=True)]).trashed == []
    assert store.record_listed("alice", [asset("never-seen", trashed=True)]).trashed == []


def test_identity_numbers_are_never_reused(store: Store) -> None:
    store.record_listed("alice", [asset("a")])
    photo_done(store, "a", [face(1), face(2)])
    ids = [f.id for f in store.unmatched_new_faces()]
    assert store.create_identity({ids[0]: 0.1}) == 1
    assert store.create_identity({ids[1]: 0.1}) == 2
    assert store.remove_asset("alice", "a", "deleted").indexed_faces == ids
    assert store.export_faces() == {}
    with store.transaction():
        store.ensure_identity(216, "import")
    assert store.highest_identity() == 216
    store.record_listed("alice", [asset("b")])
    photo_done(store, "b", [face(3)])
    assert store.create_identity({store.unmatched_new_faces()[0].id: 0.1}) == 217


def test_embeddings_of_another_model_or_size_are_refused(store: Store) -> None:
    store.check_model("buffalo_test", 128)
    store.check_model("buffalo_test", 128)
    store.check_model("buffalo_test", 0)  # a remote engine's size is known only from its first face
    with pytest.raises(StoreError, match="holds 128-d embeddings"):
        store.check_model("buffalo_test", 512)
    with pytest.raises(StoreError, match="embeddings of model pack buffalo_test .* asks for model pack buffalo_l"):
        store.check_model("buffalo_l", 128)
    with pytest.raises(StoreError, match="asks for model buffalo_test through immich-ml"):
        store.check_model("immich-ml:buffalo_test", 0)


def test_the_first_face_of_a_remote_engine_records_its_size(store: Store) -> None:
    store.check_model("immich-ml:buffalo_l", 0)
    assert store.get_meta("embedding_dim") is None

    save_photo(store, "b" * 64, [face(1)], model="immich-ml:buffalo_l")
    assert store.get_meta("embedding_dim") == "8"
    wider = DetectedFace((0, 0, 100, 100), 0.9, (), np.ones(16, np.float32) / 4)
    with pytest.raises(StoreError, match="holds 8-d embeddings"):
        save_photo(store, "c" * 64, [wider], model="immich-ml:buffalo_l")
    assert not store.blob_exists("c" * 64)


def test_readonly_store_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `facesyncd sync` first"):
        Store(tmp_path / "none.db", readonly=True)


def test_a_full_disk_in_a_batch_write_is_a_store_error(store: Store) -> None:
    """The prefilter's skipped-asset batch (executemany) let sqlite3's own error through: a traceback
    and exit 1 instead of 6."""
    store.record_listed("alice", [asset(f"a{i:05d}", checksum="c" * 200) for i in range(300)])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match="full"):
        store.mark_skipped("alice", [(f"a{i:05d}", "a reason long enough to need new pages " * 20) for i in range(300)])
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.status()["assets"]["skipped"] == 0, "the batch was half written"


def test_a_failing_inner_transaction_undoes_only_its_own_part(store: Store) -> None:
    """Nested transactions are savepoints: the outer one decides about the rest."""
    with store.transaction():
        store.set_meta("outer", "1")
        with pytest.raises(RuntimeError), store.transaction():
            store.set_meta("inner", "1")
            raise RuntimeError("inner fails")
        store.set_meta("after", "1")
    assert (store.get_meta("outer"), store.get_meta("inner"), store.get_meta("after")) == ("1", None, "1")
    with pytest.raises(RuntimeError), store.transaction():
        store.set_meta("whole", "1")
        with store.transaction():
            store.set_meta("nested", "1")
        raise RuntimeError("outer fails")
    assert store.get_meta("whole") is None and store.get_meta("nested") is None


def test_version_10_keeps_every_asset_and_adds_the_withheld_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0010 copies the assets table to widen its CHECK constraint: every row and column survives, the
    indexes are there again, and a partner's photo can now be withheld."""
    import facesyncd.store.database as database

    migrations_up_to(9, tmp_path, monkeypatch)
    path = tmp_path / "facesyncd.db"
    before = Store(path)
    before.ensure_source("alice", "http://immich")
    before.record_listed("alice", [asset("a1"), asset("a2", trashed=False)])
    before.execute(
        "UPDATE assets SET state = 'trashed', owner_id = 'bob', checksum_kind = 'sha1' WHERE asset_id = 'a2'"
    )
    with pytest.raises(sqlite3.IntegrityError):
        before.conn.execute("UPDATE assets SET state = 'withheld' WHERE asset_id = 'a1'")
    rows = before.conn.execute("SELECT * FROM assets ORDER BY asset_id").fetchall()
    columns = [row[1] for row in before.conn.execute("PRAGMA table_info(assets)")]
    before.close()

    monkeypatch.setattr(database, "MIGRATIONS_DIR", None)
    after = Store(path)
    assert after.schema_version() >= 10
    names = [row[1] for row in after.conn.execute("PRAGMA table_info(assets)")]
    assert sorted(names) == sorted(columns)
    moved = after.conn.execute(f"SELECT {', '.join(columns)} FROM assets ORDER BY asset_id").fetchall()
    assert [tuple(row) for row in moved] == [tuple(row) for row in rows]
    indexes = {row[1] for row in after.conn.execute("PRAGMA index_list(assets)")}
    assert {"assets_by_state", "assets_by_sha256", "assets_by_checksum"} <= indexes
    after.conn.execute("UPDATE assets SET state = 'withheld' WHERE asset_id = 'a1'")
    assert after.census_offset("alice") is None and after.census_due("alice", 900)
    after.close()


def test_a_reader_of_a_database_from_an_earlier_version_is_told_how_to_upgrade_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` (a read-only reader) met "no such column: census_at" after an upgrade, before any sync."""
    import facesyncd.store.database as database

    migrations_up_to(9, tmp_path, monkeypatch)
    path = tmp_path / "facesyncd.db"
    Store(path).close()
    monkeypatch.setattr(database, "MIGRATIONS_DIR", None)
    with pytest.raises(StoreError, match=r"earlier facesyncd \(schema 9; .*`facesyncd sync`"):
        Store(path, readonly=True)
    Store(path).close()  # a writer migrates it
    assert Store(path, readonly=True).status()["assets"] is not None


def test_a_faces_quality_reads_back_as_written_and_a_part_that_is_no_number_is_refused(store: Store) -> None:
    from facesyncd.models import Quality

    measured = Quality(det_score=0.91, size=0.5, blur=0.25, frontality=0.75, symmetry=0.5)
    unmeasured = Quality(det_score=0.8, size=0.4, blur=0.3, frontality=None, symmetry=None)
    store.record_listed("alice", [asset("a")])
    photo_done(store, "a", [face(1), face(2), face(3)], [measured, unmeasured, None])
    ids = [f.id for f in store.unmatched_new_faces()]
    expected = [measured, unmeasured, None]
    assert [f.quality for f in store.unmatched_new_faces()] == expected
    store.create_identity(dict.fromkeys(ids, 0.1))
    assert [f.quality for f in store.export_faces()[1]] == expected
    with pytest.raises(StoreError, match="CHECK constraint failed: q_blur"):
        store.execute("UPDATE faces SET q_blur = 'high' WHERE id = ?", (ids[0],))
    assert [f.quality for f in store.export_faces()[1]] == expected


def test_the_pool_as_arrays_is_the_pool_read_face_by_face(store: Store) -> None:
    """What clustering reads of every pool face (Store.pool_arrays) says what the faces read whole
    say: ids, embeddings, blur and frontality (NaN: not measured), cut by the edge; and which
    faces may seed a faceset, by either."""
    from facesyncd.coarse import round_rows
    from facesyncd.config import IdentitySettings
    from facesyncd.identities import may_seed, seed_mask
    from facesyncd.models import Quality

    inside = DetectedFace((2, 2, 8, 8), 0.9, ((1, 1),) * 5, face(9).embedding)
    qualities = [
        Quality(det_score=0.9, size=0.5, blur=0.9, frontality=0.8, symmetry=0.5),
        Quality(det_score=0.9, size=0.5, blur=0.1, frontality=0.8, symmetry=0.5),
        Quality(det_score=0.9, size=0.5, blur=0.9, frontality=None, symmetry=None),
        None,
        Quality(det_score=0.9, size=0.5, blur=0.9, frontality=0.05, symmetry=0.5),
    ]
    store.record_listed("alice", [asset("a")])
    photo_done(store, "a", [inside, face(1), inside, face(2), inside], qualities)
    store.record_matches({}, [f.id for f in store.unmatched_new_faces()])
    whole = store.pool_faces()
    arrays = store.pool_arrays()
    assert arrays.ids.tolist() == [f.id for f in whole]
    rounded = round_rows(np.stack([f.embedding for f in whole]))  # (a quarter of the memory: coarse.py)
    assert all(np.array_equal(getattr(arrays.coarse, part), getattr(rounded, part)) for part in vars(rounded))
    assert arrays.cut.tolist() == [f.cut for f in whole] == [False, True, False, True, False]
    assert np.array_equal(arrays.blur, [0.9, 0.1, 0.9, np.nan, 0.9], equal_nan=True)
    assert np.array_equal(arrays.frontality, [0.8, 0.8, np.nan, np.nan, 0.05], equal_nan=True)
    assert arrays.group.tolist() == [-1] * 5, "no clustering grouped them yet"
    for settings in (IdentitySettings(), IdentitySettings(seed_from_cut_faces=True)):
        mask = seed_mask(arrays.blur, arrays.frontality, arrays.cut, settings)
        assert mask.tolist() == [may_seed(f, settings) for f in whole]
    assert mask.tolist() == [True, False, True, True, False]
    assert [f.id for f in store.faces_by_ids(arrays.ids[::-2].tolist())] == arrays.ids[::2].tolist()


def test_the_identity_of_each_face_in_one_is_what_its_row_says(store: Store) -> None:
    """Store.identity_map (read as one text of numbers): every face in an identity, none in the pool.
    A value that is no integer in such a text (the pool groups' sizes) is an error, never pairs read
    out of step."""
    assert store.identity_map() == {}
    store.record_listed("alice", [asset("a")])
    photo_done(store, "a", [face(k) for k in range(6)])
    faces = [f.id for f in store.unmatched_new_faces()]
    first, second = store.create_identity({}), store.create_identity({})
    store.record_matches({faces[0]: (first, 0.1), faces[2]: (second, 0.2), faces[5]: (first, 0.3)}, faces)
    rows = dict(store.tuples("SELECT id, identity FROM faces WHERE identity IS NOT NULL"))
    assert store.identity_map() == rows == {faces[0]: first, faces[2]: second, faces[5]: first}
    with store.transaction():  # what facesyncd never writes (a hand-edited database): said, not misread
        store.execute("INSERT INTO pool_groups (grp, faces) VALUES (7, 3), (9, '2.5')")
    with pytest.raises(StoreError, match="no integer"):
        store.pool_group_sizes()


def test_a_match_gives_way_to_the_users_corrections_made_while_it_was_saved(store: Store) -> None:
    """record_matches, set-wise (one statement per chunk of faces, not one per face): every face
    examined is marked as compared; a face joins its identity unless the user placed it meanwhile,
    rejected it from that identity, or locked, merged away or forgot the identity."""
    store.record_listed("alice", [asset("a")])
    photo_done(store, "a", [face(k) for k in range(7)])
    faces = sorted(f.id for f in store.unmatched_new_faces())
    first, second, locked, merged, forgotten = (store.create_identity({}) for _ in range(5))
    with store.transaction():  # what the user did while the match was computed
        store.execute("UPDATE faces SET identity = ? WHERE id = ?", (second, faces[1]))
        store.reject(faces[2], first, store.record_correction("reject", "not them", {}))
        store.set_locked(locked, True)
        store.merge_identities(merged, first)
        store.execute("UPDATE identities SET forgotten_at = '2026-12-06T00:00:00Z' WHERE number = ?", (forgotten,))
    wanted = {
        faces[0]: (first, 0.1),
        faces[1]: (first, 0.2),
        faces[2]: (first, 0.3),
        faces[3]: (locked, 0.1),
        faces[4]: (merged, 0.1),
        faces[5]: (forgotten, 0.1),
    }
    store.record_matches(wanted, faces)
    rows = {
        face_id: (identity, matched)
        for face_id, identity, matched in store.tuples("SELECT id, identity, matched_at FROM faces")
    }
    assert {face_id: identity for face_id, (identity, _) in rows.items()} == {
        faces[0]: first,
        faces[1]: second,
        faces[2]: None,
        faces[3]: None,
        faces[4]: None,
        faces[5]: None,
        faces[6]: None,
    }
    assert all(matched is not None for _, matched in rows.values())
    assert store.scalar("SELECT distance FROM faces WHERE id = ?", (faces[0],)) == 0.1


def test_what_each_cycle_asks_is_read_through_an_index_of_it_not_among_every_face(store: Store) -> None:
    """The faces set aside, the new faces, the assets to process and the photos that show a person
    Immich names are each found through an index of just those: among every face or asset, each
    cost 0.1-0.6 CPU-s per cycle at 500,000 (issue 24). Checked on SQLite's plans of the statements
    the store runs (a plan depends on the schema, not on how many rows there are)."""
    store.record_listed("alice", [asset("a"), asset("b")])
    photo_done(store, "a", [face(1), face(2)])
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        store.held_faces()
        store.unmatched_new_faces()
        store.assets_to_process("alice", "2030-01-01T00:00:00.000Z")
        store.name_votes()
        store.export_faces(faces=[1, 2])  # the faces an export's marks name
    finally:
        store.conn.set_trace_callback(None)
    plans = {
        sql: [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for sql in statements
        if sql.lstrip().upper().startswith("SELECT")
    }
    used = " ".join(line for plan in plans.values() for line in plan)
    for index in (
        "faces_held",
        "faces_new",
        "assets_by_source_state (source=? AND state=?)",
        "SEARCH f USING INTEGER PRIMARY KEY (rowid=?)",
    ):
        assert index in used, (index, plans)
    for sql, plan in plans.items():
        assert not [line for line in plan if line in ("SCAN faces", "SCAN f", "SCAN assets", "SCAN a")], (sql, plan)
        if "asset_people" in sql:
            assert plan[0].startswith("SCAN p"), ("the photos Immich names people in come first", plan)


def test_version_18_moves_each_faces_quality_parts_into_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0018 reads the JSON text each face's parts were kept in: parts as facesyncd wrote them (a
    frontality not measured included) become numbers; text that is not what it wrote (not JSON, a
    part missing or not a number), or none, becomes no quality, as it was read before."""
    import json

    import facesyncd.store.database as database

    migrations_up_to(17, tmp_path, monkeypatch)
    path = tmp_path / "facesyncd.db"
    before = Store(path)
    written = [
        {"det_score": 0.91, "size": 0.5, "blur": 0.25, "frontality": 0.75, "symmetry": 0.5},
        {"det_score": 1, "size": 0.4, "blur": 0.3, "frontality": None, "symmetry": None},
        '{"det_score": 0.9, oops',
        {"det_score": "high", "size": 0.5, "blur": 0.25, "frontality": 0.75, "symmetry": 0.5},
        {"det_score": 0.9, "size": 0.5, "frontality": 0.75, "symmetry": 0.5},
        [0.9, 0.5],
        None,
    ]
    with before.transaction():
        before.execute(
            "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) "
            "VALUES ('sha-a', 1, 'original', 'm', 'x')"
        )
        for index, parts in enumerate(written):
            text = parts if isinstance(parts, str) or parts is None else json.dumps(parts)
            before.execute(
                "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
                "quality, quality_parts) VALUES ('sha-a', ?, 0, 0, 10, 10, 0.9, '[]', x'00', 'c.jpg', 0.5, ?)",
                (index, text),
            )
    before.close()
    monkeypatch.setattr(database, "MIGRATIONS_DIR", None)
    after = Store(path)
    assert after.schema_version() >= 18
    assert "quality_parts" not in {row[1] for row in after.conn.execute("PRAGMA table_info(faces)")}
    rows = after.tuples(
        "SELECT q_det_score, q_size, q_blur, q_frontality, q_symmetry, quality FROM faces ORDER BY face_index"
    )
    assert rows == [
        (0.91, 0.5, 0.25, 0.75, 0.5, 0.5),
        (1.0, 0.4, 0.3, None, None, 0.5),
        *[(None, None, None, None, None, 0.5)] * 5,
    ]
    after.close()


def test_identities_in_one_photo_are_found_among_those_asked_about(store: Store) -> None:
    store.record_listed("alice", [asset("x"), asset("y")])
    photo_done(store, "x", [face(1), face(2)])
    photo_done(store, "y", [face(3), face(4)])
    first, second, third, fourth = (f.id for f in store.unmatched_new_faces())
    one, two, three = (store.create_identity({face_id: 0.1}) for face_id in (first, second, third))
    with store.transaction():
        store.execute("UPDATE faces SET identity = ? WHERE id = ?", (two, fourth))
    assert store.photos_shared() == {frozenset((one, two)), frozenset((two, three))}
    assert store.photos_shared({one, two}) == {frozenset((one, two))}
    assert store.photos_shared({one, three}) == set()
    assert store.photos_shared(set()) == set()


def test_migration_20_marks_whole_the_facesets_marked_before_faces_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which face of a faceset 0017 marked is not known: its folder is compared whole once; marks
    made after the migration name the faces."""
    import facesyncd.store.database as database

    migrations_up_to(19, tmp_path, monkeypatch)
    path = tmp_path / "facesyncd.db"
    before = Store(path)
    before.ensure_source("alice", "http://immich")
    before.record_listed("alice", [asset("a", "c1"), asset("b", "c2")])
    photo_done(before, "a", [face(1), face(2)])
    photo_done(before, "b", [face(3)])
    a_faces = [row[0] for row in before.tuples("SELECT id FROM faces WHERE sha256 = 'sha-a' ORDER BY id")]
    b_face = before.scalar("SELECT id FROM faces WHERE sha256 = 'sha-b'")
    before.create_identity(dict.fromkeys(a_faces, 0.1))
    before.create_identity({b_face: 0.1})
    with before.transaction():
        before.execute("DELETE FROM export_stale")
        before.execute("UPDATE faces SET det_score = 0.5 WHERE id = ?", (a_faces[0],))
    assert [row[0] for row in before.tuples("SELECT number FROM export_stale")] == [1]
    before.close()

    monkeypatch.setattr(database, "MIGRATIONS_DIR", None)
    after = Store(path)
    marks = after.export_marks()
    assert marks.whole == {1} and not marks.faces
    after.clear_export_marks(marks.upto)
    with after.transaction():
        after.execute("UPDATE faces SET det_score = 0.6 WHERE id = ?", (b_face,))
        after.execute("UPDATE assets SET original_file_name = 'renamed.jpg' WHERE asset_id = 'a'")
    marks = after.export_marks()
    assert not marks.whole and marks.faces == {1: frozenset(a_faces), 2: frozenset({b_face})}
    after.close()
