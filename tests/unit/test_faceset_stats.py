"""What triggers keep of the faces table: the facesets summary (faces, best face, last change per
faceset) kept in faceset_stats, which after any write, by any path, equals the summary counted afresh
over every face; the marks of the facesets whose folders an export must write again; the pool's marks
(the arrays a process holds); and the names step's marks (the facesets whose votes it counts again)."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import zipfile
from pathlib import Path

import pytest

from conftest import mapped_from_file
from facesyncd.store import Store
from facesyncd.store.faces import LIVE_FACE

# Many facesets, few faces each: a write touches few of them, so a missed one shows.
PHOTOS = 40
IDENTITIES = 30


def reference(store: Store) -> list[tuple[int, int, int | None, str | None]]:
    """The summary worked out in Python from every face, identity and correction (the oracle)."""
    faces: dict[int, list[tuple[float, int]]] = {}
    last: dict[int, str] = {}
    for face, number, quality, moved, live in store.tuples(
        f"SELECT f.id, f.identity, COALESCE(f.quality, 0), COALESCE(f.placed_at, f.matched_at), {LIVE_FACE} "
        "FROM faces f WHERE f.identity IS NOT NULL"
    ):
        if live:
            faces.setdefault(number, []).append((-quality, face))
        last[number] = max(last.get(number, ""), moved or "")
    for at, undo in store.tuples("SELECT at, undo FROM corrections"):
        undone = json.loads(undo)
        for key in ("number", "from", "to", "kept", "before"):  # the facesets a correction names
            if isinstance(undone.get(key), int):
                last[undone[key]] = max(last.get(undone[key], ""), at)
    result = []
    for number, *times in store.tuples(
        "SELECT number, created_at, merged_at, locked_at, forgotten_at, hidden_at FROM identities ORDER BY number"
    ):
        best = min(faces[number])[1] if number in faces else None
        changed = max([last.get(number, ""), *(time or "" for time in times)]) or None
        result.append((number, len(faces.get(number, [])), best, changed))
    return result


def summary(store: Store) -> list[tuple[int, int, int | None, str | None]]:
    return [(s.number, s.faces, s.best_face, s.last_change) for s in store.facesets()]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(tmp_path / "facesyncd.db")
    now = "2026-01-01T00:00:00.000Z"
    with opened.transaction():
        opened.execute("INSERT INTO sources (name, url, watermark) VALUES ('alice', 'http://x', ?)", (now,))
        for number in range(1, IDENTITIES + 1):
            opened.ensure_identity(number, "cluster")
        for photo in range(PHOTOS):
            sha = f"{photo:064x}"
            opened.execute(
                "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES (?, 1, 'original', 'm', ?)",
                (sha, now),
            )
            opened.execute(
                "INSERT INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at) "
                "VALUES ('alice', ?, 'IMAGE', 'done', ?, ?, ?)",
                (f"{photo:08x}-0000-4000-8000-000000000000", sha, now, now),
            )
            for index in range(3):
                opened.execute(
                    "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
                    "identity, quality, matched_at) VALUES (?, ?, 0, 0, 1, 1, 0.9, '[]', x'00', 'c', ?, ?, ?)",
                    (sha, index, (photo + index) % IDENTITIES + 1, (photo * 7 + index) % 5 / 5, now),
                )
    yield opened
    opened.close()


def random_write(store: Store, rng: random.Random, step: int, embedding: bytes = b"\0") -> str:
    """One write of a kind that changes what the summary or a faceset's folder shows, by raw SQL (the
    triggers, not the store's methods, keep both: no write path may forget them); a face added has
    `embedding`."""
    face = rng.choice([row[0] for row in store.tuples("SELECT id FROM faces")] or [0])
    sha = f"{rng.randrange(PHOTOS):064x}"
    identity = rng.choice([None, *range(1, IDENTITIES + 1)])
    number, other = rng.randrange(1, IDENTITIES + 1), rng.randrange(1, IDENTITIES + 1)
    at = f"2026-02-{1 + step % 28:02d}T00:00:{step % 60:02d}.000Z"
    writes = {
        "face joins or leaves": ("UPDATE faces SET identity = ?, matched_at = ? WHERE id = ?", (identity, at, face)),
        "face quality": ("UPDATE faces SET quality = ? WHERE id = ?", (rng.random(), face)),
        "face placed": ("UPDATE faces SET placed_at = ? WHERE id = ?", (at, face)),
        "face deleted": ("DELETE FROM faces WHERE id = ?", (face,)),
        "face added": (
            "INSERT OR IGNORE INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
            "identity, quality, matched_at) VALUES (?, ?, 0, 0, 1, 1, 0.9, '[]', ?, 'c', ?, ?, ?)",
            (sha, 10 + step, embedding, identity, rng.random(), at),
        ),
        "photo trashed": ("UPDATE assets SET state = 'trashed' WHERE sha256 = ?", (sha,)),
        "photo withheld": ("UPDATE assets SET state = 'withheld' WHERE sha256 = ?", (sha,)),
        "photo back": ("UPDATE assets SET state = 'done' WHERE sha256 = ?", (sha,)),
        "listed again": (  # as a listing records it: an upsert, whose conflict rule reaches the triggers
            "INSERT INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at) "
            "SELECT source, asset_id, type, ?, sha256, first_seen_at, ? FROM assets WHERE sha256 = ? "
            "ON CONFLICT (source, asset_id) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at",
            (rng.choice(["done", "trashed"]), at, sha),
        ),
        "second asset": (
            "INSERT OR IGNORE INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at) "
            "VALUES ('alice', ?, 'IMAGE', ?, ?, ?, ?)",
            (f"{step:08x}-1111-4000-8000-000000000000", rng.choice(["done", "trashed"]), sha, at, at),
        ),
        "asset deleted": (  # a trashed one first: its photo's faces come back
            "DELETE FROM assets WHERE rowid = (SELECT rowid FROM assets WHERE sha256 = ? "
            "ORDER BY state = 'trashed' DESC LIMIT 1)",
            (sha,),
        ),
        "import kept": (
            "INSERT OR IGNORE INTO imports (path, sha256, identity, state, imported_at) VALUES (?, ?, ?, 'done', ?)",
            (f"/old/{step}.png", sha, identity or 1, at),
        ),
        "import superseded": ("UPDATE imports SET superseded_at = ? WHERE sha256 = ?", (at, sha)),
        "import deleted": ("DELETE FROM imports WHERE sha256 = ?", (sha,)),
        "correction": (  # a later one names this faceset; a rename's "before" is a name, not a number
            "INSERT INTO corrections (at, kind, summary, undo) VALUES (?, 'k', 's', ?)",
            (
                at,
                json.dumps(
                    {rng.choice(["number", "from", "to", "kept", "before"]): identity or "old name", "face": face}
                ),
            ),
        ),
        "faceset opened": (
            "INSERT OR IGNORE INTO identities (number, origin, created_at) VALUES (?, 'cluster', ?)",
            (IDENTITIES + 1 + step, at),
        ),
        "faceset renamed": ("UPDATE identities SET name = ? WHERE number = ?", (f"name {step}", number)),
        "faceset hidden or shown": (
            "UPDATE identities SET hidden_at = CASE WHEN hidden_at IS NULL THEN ? END WHERE number = ?",
            (at, number),
        ),
        "faceset merged": (  # its faces left where they are: a write the store never makes, but may
            "UPDATE identities SET merged_into = ?, merged_at = ? WHERE number = ? AND number != ?",
            (other, at, number, other),
        ),
        "faceset forgotten": ("UPDATE identities SET forgotten_at = ? WHERE number = ?", (at, number)),
        "face box": ("UPDATE faces SET x2 = ?, det_score = ? WHERE id = ?", (1 + rng.random(), rng.random(), face)),
        "face sub-set": ("UPDATE faces SET subset = ? WHERE id = ?", (rng.choice([None, "a", "b"]), face)),
        "photo renamed": (
            "UPDATE assets SET original_file_name = ?, owner_id = ? WHERE sha256 = ?",
            (f"IMG_{step}.jpg", rng.choice(["u1", "u2"]), sha),
        ),
    }
    kind = rng.choice(sorted(writes))
    sql, parameters = writes[kind]
    with store.transaction():
        store.execute(sql, parameters)
    return kind


def test_the_summary_follows_every_write(store: Store) -> None:
    rng = random.Random(24)
    assert summary(store) == reference(store)
    kinds = set()
    for step in range(300):
        kind = random_write(store, rng, step)
        kinds.add(kind)
        if step % 2 == 0:  # some writes pile up between two reads
            assert summary(store) == reference(store), f"after step {step} ({kind})"
    assert len(kinds) == 23  # every kind of write was tried


def test_a_reader_that_may_not_write_counts_the_stale_facesets_afresh(store: Store, tmp_path: Path) -> None:
    store.facesets()
    with store.transaction():
        store.execute("UPDATE assets SET state = 'trashed' WHERE sha256 = ?", (f"{3:064x}",))
        store.execute("UPDATE faces SET identity = 2 WHERE identity = 1")
    reader = Store(store.path, readonly=True)
    try:
        assert summary(reader) == reference(store)
        assert reader.scalar("SELECT COUNT(*) FROM faceset_stats_stale") > 0  # left for a writer
    finally:
        reader.close()
    assert summary(store) == reference(store)
    assert store.scalar("SELECT COUNT(*) FROM faceset_stats_stale") == 0  # kept by the writer


def test_a_page_does_not_wait_for_another_process_that_is_writing(store: Store) -> None:
    store.facesets()
    with store.transaction():
        store.execute("UPDATE faces SET identity = 3 WHERE identity = 4")
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a cycle in the middle of its write
    try:
        assert summary(store) == reference(store)
        assert store.scalar("SELECT COUNT(*) FROM faceset_stats_stale") > 0
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0  # waits again for its own writes
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert summary(store) == reference(store)
    assert store.scalar("SELECT COUNT(*) FROM faceset_stats_stale") == 0


def test_the_pool_size_counts_live_unheld_compared_faces_only(store: Store) -> None:
    counted = (
        "SELECT COUNT(*) FROM faces f WHERE f.identity IS NULL AND f.matched_at IS NOT NULL AND f.held IS NULL AND "
    )
    with store.transaction():
        store.execute("UPDATE faces SET identity = NULL WHERE id % 2 = 0")
        store.execute("UPDATE faces SET held = 'thin' WHERE id % 8 = 0")
        store.execute("UPDATE faces SET matched_at = NULL WHERE id % 6 = 0")
        store.execute("UPDATE assets SET state = 'trashed' WHERE sha256 = ?", (f"{1:064x}",))
    expected = store.scalar(counted + LIVE_FACE)
    assert 0 < expected < store.scalar(counted + "1")
    assert store.pool_size() == expected


def export_view(store: Store) -> dict[int, tuple[object, ...]]:
    """Everything an export writes of each faceset: its faces as the folder shows them, its name,
    where it was merged into, whether it is forgotten (the oracle: read whole, never through marks)."""
    faces = store.export_faces()
    names, retired, forgotten = store.identity_names(), store.retired_numbers(), set(store.forgotten_numbers())
    views = {
        number: (faces.get(number), names.get(number), retired.get(number), number in forgotten)
        for (number,) in store.tuples("SELECT number FROM identities")
    }
    return {number: view for number, view in views.items() if any(view)}  # no folder for nothing


# Two sequences: a write that matters only in rare states (an import deleted or superseded while its
# photo is in the trash) is met by one of them; removing any one trigger fails one of them.
@pytest.mark.parametrize("seed", [5, 9])
def test_every_write_that_changes_a_folder_marks_its_faceset_and_faces(store: Store, seed: int) -> None:
    """A faceset whose faces changed has each changed face marked (an export then writes those
    alone); one whose name, merge or standing changed is marked whole."""
    rng = random.Random(seed)
    kinds, caught, by_face = set(), 0, 0
    nothing: tuple[object, ...] = (None, None, None, False)
    for step in range(300):
        store.clear_export_marks(store.export_marks().upto)
        before = export_view(store)
        kind = random_write(store, rng, step)
        kinds.add(kind)
        after = export_view(store)
        changed = {number for number in before.keys() | after.keys() if before.get(number) != after.get(number)}
        marks = store.export_marks()
        assert changed <= marks.numbers, f"step {step} ({kind}) changed facesets {sorted(changed - marks.numbers)}"
        caught += len(changed)
        for number in changed - marks.whole:
            was, now = before.get(number, nothing), after.get(number, nothing)
            assert was[1:] == now[1:], f"step {step} ({kind}): faceset {number} changed, not marked whole"
            faces_was = {face.face_id: face for face in was[0] or []}  # type: ignore[attr-defined]
            faces_now = {face.face_id: face for face in now[0] or []}  # type: ignore[attr-defined]
            moved = {face for face in faces_was.keys() | faces_now.keys() if faces_was.get(face) != faces_now.get(face)}
            unmarked = moved - marks.faces.get(number, frozenset())
            assert not unmarked, f"step {step} ({kind}): faces {sorted(unmarked)} of faceset {number} unmarked"
            by_face += 1
    assert len(kinds) == 23 and caught > 100 and by_face > 50  # the writes did change folders, of every kind


def test_an_export_clears_only_the_marks_it_saw(store: Store) -> None:
    store.clear_export_marks(store.export_marks().upto)
    assert not store.export_marks().numbers
    with store.transaction():
        store.execute("UPDATE faces SET det_score = 0.5 WHERE identity IN (1, 2)")
    first = store.export_marks()
    assert first.numbers == {1, 2} and not first.whole
    ones = {row[0] for row in store.tuples("SELECT id FROM faces WHERE identity = 1")}
    assert first.faces[1] == ones
    with store.transaction():  # while that export runs, faceset 2 changes again, and 3
        store.execute("UPDATE faces SET det_score = 0.6 WHERE identity IN (2, 3)")
        store.execute("UPDATE identities SET name = 'Ann' WHERE number = 3")
    store.clear_export_marks(first.upto)
    assert store.export_marks().numbers == {2, 3} and store.export_marks().whole == {3}
    store.clear_export_marks(store.export_marks().upto, [3])  # a correction's export of faceset 3 alone
    assert store.export_marks().numbers == {2}


def tree_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("seed", [3, 11])
def test_folders_brought_in_line_from_their_marked_faces_are_those_a_whole_export_writes(
    store: Store, tmp_path: Path, seed: int
) -> None:
    """After every kind of write, the folders an export brings in line from the marked faces alone
    (and writes whole where those are not enough) hold, byte for byte, what an export of every face
    into an empty tree writes; and a whole export of the same tree finds nothing to write."""
    from facesyncd.export import export_all, remove_faceset, update_marked

    crops, facesets = tmp_path / "crops", tmp_path / "facesets"
    crops.mkdir()
    (crops / "c").write_bytes(b"the crop of a face added later")
    with store.transaction():
        store.execute("UPDATE faces SET crop = 'c' || id, x1 = id % 7, det_score = 0.5 + id % 5 / 10.0")
    for (crop,) in store.tuples("SELECT crop FROM faces"):
        (crops / crop).write_bytes(f"the crop {crop}".encode())

    def export_changes() -> frozenset[int]:
        marks = store.export_marks()
        partial = marks.partial(marks.numbers)
        faces = store.export_faces(faces={face for ids in partial.values() for face in ids})
        done, _ = update_marked(facesets, crops, partial, faces)
        rest = marks.numbers - done
        for number in set(store.forgotten_numbers()) & rest:
            remove_faceset(facesets, number)
        export_all(facesets, crops, store.export_faces(rest), names=store.identity_names(), only=rest)
        store.clear_export_marks(marks.upto)
        return done

    rng = random.Random(seed)
    export_all(facesets, crops, store.export_faces(), names=store.identity_names())
    store.clear_export_marks(store.export_marks().upto)
    (facesets / "faceset_001" / "notes.txt").write_text("the user's")
    export_all(facesets, crops, store.export_faces(), names=store.identity_names())
    fast, kinds = 0, set()
    for step in range(80):
        kind = random_write(store, rng, step)
        fast += len(export_changes())
        kinds.add(kind)
        fresh = tmp_path / f"fresh-{step}"
        export_all(fresh, crops, store.export_faces(), names=store.identity_names())
        ours = {name: files for name, files in tree_of(facesets).items() if not name.startswith("faceset_001/")}
        theirs = {name: files for name, files in tree_of(fresh).items() if not name.startswith("faceset_001/")}
        assert ours == theirs, f"step {step} ({kind})"
        assert export_all(facesets, crops, store.export_faces(), names=store.identity_names()) == 0, f"{step} ({kind})"
        shutil.rmtree(fresh)
    notes = json.loads((facesets / "faceset_001" / "faceset.json").read_text())
    assert (facesets / "faceset_001" / "notes.txt").is_file() and notes["user_files"] == ["notes.txt"]
    assert fast > 30 and len(kinds) > 15  # most changes were brought in line from their faces alone


# -- the pool's marks: the pool's arrays held between cycles ------------------------------------------

WIDTH = 4  # floats per embedding in these tests


def pool_write(store: Store, rng: random.Random, step: int) -> str:
    """One write of a kind that changes only what the pool's arrays show (the store's own writes
    are random_write's), by raw SQL."""
    face = rng.choice([row[0] for row in store.tuples("SELECT id FROM faces")] or [0])
    sha = f"{rng.randrange(PHOTOS):064x}"
    group = rng.choice([row[0] for row in store.tuples("SELECT grp FROM pool_members")] or [0])
    writes = {
        "face compared": ("UPDATE faces SET identity = NULL, matched_at = ? WHERE id = ?", (f"t{step}", face)),
        "face new": ("UPDATE faces SET identity = NULL, matched_at = NULL WHERE id = ?", (face,)),
        "face held": ("UPDATE faces SET held = ? WHERE id = ?", (rng.choice([None, "quarantine"]), face)),
        "face measured": (
            "UPDATE faces SET q_blur = ?, q_frontality = ? WHERE id = ?",
            (rng.choice([None, rng.random() * 100]), rng.choice([None, rng.random()]), face),
        ),
        "face embedded again": ("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face)),
        "face moved": ("UPDATE faces SET x1 = ?, y1 = ? WHERE id = ?", (rng.randrange(3), rng.randrange(3), face)),
        "face grouped": ("INSERT OR REPLACE INTO pool_members (face_id, grp) VALUES (?, ?)", (face, group)),
        "group regrouped": ("UPDATE pool_members SET grp = ? WHERE grp = ?", (face, group)),
        "group dropped": ("DELETE FROM pool_members WHERE grp = ?", (group,)),
        "photo measured": (
            "UPDATE blobs SET width = ?, height = ? WHERE sha256 = ?",
            (rng.choice([None, 1, 2000]), rng.choice([None, 1, 2000]), sha),
        ),
        "photo imported": (
            "UPDATE blobs SET decoded_from = ? WHERE sha256 = ?",
            (rng.choice(["import", "original"]), sha),
        ),
    }
    kind = rng.choice(sorted(writes))
    sql, parameters = writes[kind]
    with store.transaction():
        store.execute(sql, parameters)
    return kind


def embedding(rng: random.Random) -> bytes:
    import numpy as np

    return np.array([rng.random() for _ in range(WIDTH)], np.float32).tobytes()


def by_id(pool: object) -> dict[str, list[object]]:
    """A PoolArrays' rows sorted by face id, as lists (NaN as None: comparable), its embeddings'
    8-bit rounding included."""
    import numpy as np

    order = np.argsort(pool.ids)  # type: ignore[attr-defined]
    result = {}
    for name in ("ids", "blur", "frontality", "cut", "group"):
        array = getattr(pool, name)[order]
        result[name] = [None if isinstance(x, float) and x != x else x for x in array.tolist()]
    for name in ("codes", "scale", "length", "error"):
        result[name] = getattr(pool.coarse, name)[order].tolist()  # type: ignore[attr-defined]
    return result


# Three sequences: an import deleted or changed while its photo is in the trash is rare; removing any
# one trigger of migrations/0021 fails one of them.
@pytest.mark.parametrize("seed", [13, 18, 22])
def test_the_pool_held_between_cycles_follows_every_write(store: Store, seed: int, monkeypatch) -> None:
    """Issue 24: a running process holds the pool's arrays and reads again only the faces marked
    since (migrations/0021). After every kind of write (by raw SQL: the triggers keep the marks),
    what it holds is the pool read whole; and it never reads the pool whole but the first time."""
    from facesyncd.pool import PoolKeeper

    rng = random.Random(seed)
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
        store.execute("UPDATE faces SET identity = NULL WHERE id % 3 = 0")  # a pool of a third of them
        store.execute("INSERT INTO pool_members (face_id, grp) SELECT id, id % 4 FROM faces WHERE id % 3 = 0")
    keeper = PoolKeeper(store)
    whole_reads = 0
    read = store.pool_arrays

    def counted(ids: list[int] | None = None) -> object:
        nonlocal whole_reads
        whole_reads += ids is None
        return read(ids)

    monkeypatch.setattr(store, "pool_arrays", counted)
    kinds, changes, last = set(), 0, None
    for step in range(300):
        if rng.random() < 0.5:
            kind = random_write(store, rng, step, embedding(rng))
        else:
            kind = pool_write(store, rng, step)
        kinds.add(kind)
        if rng.random() < 0.4:
            continue  # marks pile up between reads
        held = by_id(keeper.get())
        assert held == by_id(read()), f"step {step} ({kind})"
        changes, last = changes + (held != last), held
        assert not store.tuples("SELECT 1 FROM pool_marks")  # what was read is cleared
    assert whole_reads == 1 and len(kinds) > 30 and changes > 25  # the writes did change the pool


def test_a_reader_behind_the_marks_another_cleared_reads_the_pool_whole(store: Store) -> None:
    """Two processes hold the pool (a daemon and a command): one's read clears marks the other has
    not read; that one then reads the pool whole, never a pool missing a change."""
    import numpy as np

    from facesyncd.pool import PoolKeeper

    rng = random.Random(2)
    with store.transaction():
        store.execute("UPDATE faces SET embedding = ?, identity = NULL WHERE id % 2 = 0", (embedding(rng),))
    first, second = PoolKeeper(store), PoolKeeper(store)
    assert len(first.get().ids) == len(second.get().ids) > 0
    with store.transaction():
        store.execute("UPDATE faces SET held = 'quarantine' WHERE id = (SELECT MIN(id) FROM faces WHERE id % 2 = 0)")
    assert store.pool_marks(0) is None  # the first reads cleared marks
    changed = second.get()
    assert by_id(first.get()) == by_id(changed) == by_id(store.pool_arrays())
    assert len(changed.ids) == int(np.sum(np.ones(len(changed.ids)))) and not store.tuples("SELECT 1 FROM pool_marks")


def test_a_pool_read_inside_a_transaction_that_is_undone_is_read_whole_after_a_drop(store: Store) -> None:
    """A cycle that fails after reading the pool may undo what it read (its transaction rolls back):
    the keeper then holds a pool the store never had. A failed cycle drops it (actions), and the next
    read is whole."""
    from facesyncd.pool import PoolKeeper

    rng = random.Random(3)
    with store.transaction():
        store.execute("UPDATE faces SET embedding = ?, identity = NULL WHERE id % 2 = 0", (embedding(rng),))
    keeper = PoolKeeper(store)
    before = by_id(keeper.get())

    class Failed(Exception):
        pass

    with pytest.raises(Failed), store.transaction():
        store.execute("UPDATE faces SET held = 'quarantine' WHERE id % 4 = 0")
        assert len(keeper.get().ids) < len(before["ids"])
        raise Failed
    assert by_id(keeper.get()) != by_id(store.pool_arrays()) == before  # why a failure must drop it
    keeper.drop()
    assert by_id(keeper.get()) == before


def test_the_pool_groups_sizes_held_are_those_the_store_has_after_any_writer(store: Store) -> None:
    """The sizes of the pool's groups are held between cycles and changed as the keeper replaces
    groups; another keeper's write, or one undone, makes the next ask read them again."""
    from facesyncd.pool import PoolKeeper

    first, second = PoolKeeper(store), PoolKeeper(store)
    assert first.group_sizes().as_dict() == {} == second.group_sizes().as_dict()
    reads = []
    read = store.pool_group_sizes
    store.pool_group_sizes = lambda: reads.append(1) or read()  # type: ignore[method-assign]
    first.replace_groups({1: [1, 2, 3], 4: [4], 5: [5, 6]}, set(), everything=True)  # the first token
    assert first.group_sizes().as_dict() == {1: 3, 4: 1, 5: 2} == read()[1].as_dict() and not reads
    first.replace_groups({4: [4, 7], 8: [8]}, {4, 5}, everything=False)
    assert (
        first.group_sizes().as_dict() == {1: 3, 4: 2, 8: 1} == read()[1].as_dict() and not reads
    )  # changed as written, not read
    assert second.group_sizes().as_dict() == {1: 3, 4: 2, 8: 1} and reads  # another process's write: read again
    reads.clear()
    second.replace_groups({9: [9]}, {8}, everything=False)
    assert first.group_sizes().as_dict() == {1: 3, 4: 2, 9: 1} == read()[1].as_dict() and reads

    class Failed(Exception):
        pass

    with pytest.raises(Failed), store.transaction():
        first.replace_groups({10: [10, 11]}, {9}, everything=False)
        assert first.group_sizes().as_dict() == {1: 3, 4: 2, 10: 2}
        raise Failed
    assert first.group_sizes().as_dict() == {1: 3, 4: 2, 9: 1} == read()[1].as_dict()  # the write undone: read again


def _pooled(store: Store, rng: random.Random) -> None:
    """A third of the faces in the pool, in groups, each face with its own embedding."""
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
        store.execute("UPDATE faces SET identity = NULL WHERE id % 3 = 0")
        store.execute("INSERT INTO pool_members (face_id, grp) SELECT id, id % 4 FROM faces WHERE id % 3 = 0")


def _counting_whole_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], object]:
    """store.pool_arrays counted: how many times it read the pool whole; and the uncounted read."""
    whole: list[int] = []
    read = store.pool_arrays

    def counted(ids: list[int] | None = None) -> object:
        if ids is None:
            whole.append(1)
        return read(ids)

    monkeypatch.setattr(store, "pool_arrays", counted)
    return whole, read


@pytest.mark.parametrize("seed, mapped", [(13, True), (22, True), (13, False)])
def test_a_new_process_takes_the_pool_from_its_file_and_the_marks_since(
    store: Store, tmp_path: Path, seed: int, mapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: between processes the pool's arrays are kept in a file (pool.POOL_FILE). After every
    kind of write, a new process (a new keeper) holds what the store has, from the file (its arrays
    mapped from it, npz.rows, or read where they are not) and the faces marked since, never the
    whole pool but the first time; the file is written again as marks pile up, and the marks are
    cleared up to it (they do not pile up for ever)."""
    import facesyncd.npz as npz
    import facesyncd.pool as pool_module
    from facesyncd.pool import POOL_FILE, PoolKeeper

    monkeypatch.setattr(npz, "MAP_ROWS", mapped)
    monkeypatch.setattr(pool_module, "_SAVE_AT_LEAST", 6)  # (the test's pool is small)
    rng = random.Random(seed)
    _pooled(store, rng)
    file = tmp_path / POOL_FILE
    whole, read = _counting_whole_reads(store, monkeypatch)
    writes = []
    write_file = PoolKeeper._write_file
    monkeypatch.setattr(PoolKeeper, "_write_file", lambda self: writes.append(1) or write_file(self))
    daemon = PoolKeeper(store, file)
    assert by_id(daemon.get()) == by_id(read()) and whole == [1] and file.exists()
    marks_left = []
    for step in range(300):
        kind = random_write(store, rng, step, embedding(rng)) if rng.random() < 0.5 else pool_write(store, rng, step)
        if rng.random() < 0.3:
            assert by_id(daemon.get()) == by_id(read()), f"step {step} ({kind}): the daemon"
        if rng.random() < 0.3:
            new_process = PoolKeeper(store, file)
            assert by_id(new_process.get()) == by_id(read()), f"step {step} ({kind}): a new process"
            assert mapped_from_file(new_process._coarse.codes) == mapped
        marks_left.append(len(store.tuples("SELECT 1 FROM pool_marks")))
    assert whole == [1] and len(writes) > 5
    assert max(marks_left) < 40 and min(marks_left[100:]) < 10  # cleared as the file is written


def test_a_pool_file_that_is_not_the_stores_is_passed_over(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file the store did not keep (another store's, one damaged, one whose marks since were
    cleared, one written in a transaction that was undone) is passed over: the pool is read whole,
    as the store has it; a file that cannot be written costs the cycle nothing."""
    import facesyncd.pool as pool_module
    from facesyncd.pool import POOL_FILE, PoolKeeper

    monkeypatch.setattr(pool_module, "_SAVE_AT_LEAST", 0)  # every read of a mark writes the file
    monkeypatch.setattr(pool_module, "SAVE_BEHIND", 0.0)
    _pooled(store, random.Random(4))
    file = tmp_path / POOL_FILE
    whole, read = _counting_whole_reads(store, monkeypatch)

    def new_process() -> dict[str, list[object]]:
        whole.clear()
        held = by_id(PoolKeeper(store, file).get())
        assert held == by_id(read())
        return held

    def change() -> None:
        with store.transaction():
            store.execute(  # a pooled face set aside, or back (a mark each time)
                "UPDATE faces SET held = CASE WHEN held IS NULL THEN 'quarantine' END "
                "WHERE id = (SELECT MIN(id) FROM faces WHERE identity IS NULL)"
            )

    new_process()
    assert whole == [1] and file.exists()
    before = len(new_process()["ids"])
    change()
    assert len(new_process()["ids"]) == before - 1 and not whole  # the file, and the marks since
    change()

    other = Store(tmp_path / "other.db")  # another store's file: its token is not this one's
    with other.transaction():
        other.set_meta("pool_file_token", "0123456789abcdef")
    PoolKeeper(other, tmp_path / "other-pool.npz").get()
    shutil.copyfile(tmp_path / "other-pool.npz", file)
    new_process()
    assert whole == [1]

    file.write_bytes(file.read_bytes()[:200])  # damaged: cut short
    with caplog.at_level("WARNING"):
        new_process()
    assert whole == [1] and "unreadable" in caplog.text

    caplog.clear()  # (that read wrote the file again) damaged: a bit flipped in the codes, size and form kept
    damaged = bytearray(file.read_bytes())
    with zipfile.ZipFile(file) as archive:
        codes = archive.getinfo("codes.npy")
    damaged[codes.header_offset + codes.file_size // 2 + 64] ^= 0x10
    file.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING"):
        new_process()
    assert whole == [1] and "damaged" in caplog.text

    change()  # marked after the file; then a keeper without a file clears every mark
    PoolKeeper(store).get()
    new_process()
    assert whole == [1]

    class Failed(Exception):
        pass

    with pytest.raises(Failed), store.transaction():  # a file written in a transaction that is undone
        change()
        PoolKeeper(store, file).get()
        raise Failed
    new_process()
    assert whole == [1]

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pool_module, "write_atomic", full)
    change()
    with caplog.at_level("WARNING"):
        new_process()
    assert "cannot write the pool's file" in caplog.text
    change()
    monkeypatch.undo()  # (the counting too: a plain keeper now)
    assert by_id(PoolKeeper(store, file).get()) == by_id(store.pool_arrays())


def test_a_process_that_groups_the_whole_pool_leaves_a_file_the_next_one_reads(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouping the whole pool marks every pooled face: the process that did it writes the file
    again, so that the next process reads it, not the whole pool."""
    import facesyncd.pool as pool_module
    from facesyncd.pool import POOL_FILE, PoolKeeper

    monkeypatch.setattr(pool_module, "_SAVE_AT_LEAST", 2)  # (the test's pool is small)
    monkeypatch.setattr(pool_module, "_READ_WHOLE_PAST", 2)
    _pooled(store, random.Random(6))
    file = tmp_path / POOL_FILE
    whole, read = _counting_whole_reads(store, monkeypatch)
    first = PoolKeeper(store, file)
    ids = first.get().ids.tolist()
    assert whole == [1] and len(ids) > 8
    first.replace_groups({face: [face] for face in ids}, set(), everything=True)  # every face its own group
    whole.clear()
    held = by_id(PoolKeeper(store, file).get())
    assert held == by_id(read()) and held["group"] == held["ids"] and not whole


def test_a_pool_read_whole_when_no_mark_is_left_is_not_read_whole_again(store: Store, monkeypatch) -> None:
    """With every mark cleared, the newest mark is the newest cleared, not 0: a keeper that read the
    pool whole then reads only what is marked after, not the whole pool at each read."""
    from facesyncd.pool import PoolKeeper

    _pooled(store, random.Random(5))
    PoolKeeper(store).get()  # clears every mark
    assert not store.tuples("SELECT 1 FROM pool_marks")
    whole, _ = _counting_whole_reads(store, monkeypatch)
    keeper = PoolKeeper(store)
    keeper.get()
    keeper.get()
    assert whole == [1]


# -- the names step's marks ----------------------------------------------------------------------------


def names_write(store: Store, rng: random.Random, step: int) -> str:
    """One write of a kind that changes only what the names step counts, by raw SQL."""
    asset = rng.choice([row for row in store.tuples("SELECT source, asset_id FROM assets")])
    number = rng.randrange(1, IDENTITIES + 1)
    person = rng.choice(["Ann", "Bob", "Cara"])
    writes = {
        "person named": (
            "INSERT OR IGNORE INTO asset_people (source, asset_id, name) VALUES (?, ?, ?)",
            (*asset, person),
        ),
        "person unnamed": ("DELETE FROM asset_people WHERE source = ? AND asset_id = ?", asset),
        "person renamed": (
            "UPDATE OR IGNORE asset_people SET name = ? WHERE source = ? AND asset_id = ?",
            (person, *asset),
        ),
        "named by immich": (
            "UPDATE identities SET name = ?, name_origin = 'immich' WHERE number = ?",
            (person, number),
        ),
        "named by the user": ("UPDATE identities SET name_origin = 'user' WHERE number = ?", (number,)),
        "name cleared": ("UPDATE identities SET name = NULL, name_origin = NULL WHERE number = ?", (number,)),
    }
    kind = rng.choice(sorted(writes))
    sql, parameters = writes[kind]
    with store.transaction():
        store.execute(sql, parameters)
    return kind


# Two sequences of 900 writes: an import deleted while its photo is in the trash is rare; removing any
# one trigger of migrations/0022 fails one of them.
@pytest.mark.parametrize("seed", [6, 9])
def test_every_write_that_changes_a_facesets_name_votes_marks_it(store: Store, seed: int) -> None:
    """Issue 24: the names step counts again only the facesets marked since its last count
    (migrations/0022). After every kind of write (by raw SQL: the triggers keep the marks), each
    faceset whose votes changed is marked, and the votes of the marked ones alone are those of a
    whole count."""
    rng = random.Random(seed)
    with store.transaction():
        for source, asset_id in store.tuples("SELECT source, asset_id FROM assets"):
            if rng.random() < 0.6:
                store.execute(
                    "INSERT INTO asset_people (source, asset_id, name) VALUES (?, ?, ?)",
                    (source, asset_id, rng.choice(["Ann", "Bob", "Cara"])),
                )
    kinds, caught = set(), 0
    for step in range(900):
        store.clear_name_marks(store.name_marks()[0])
        before = store.name_votes()
        kind = (random_write if rng.random() < 0.5 else names_write)(store, rng, step)
        kinds.add(kind)
        after = store.name_votes()
        _, marked = store.name_marks()
        changed = {number for number in before.keys() | after.keys() if before.get(number) != after.get(number)}
        assert changed <= marked, f"step {step} ({kind}): votes of {sorted(changed - marked)} changed, unmarked"
        for number in marked:  # (one faceset at a time: read from its faces, not from every named photo)
            assert store.name_votes({number}).get(number) == after.get(number), f"step {step} ({kind})"
        caught += len(changed)
    assert len(kinds) > 25 and caught > 50  # the writes did change votes, of many kinds


def test_a_name_given_up_is_counted_for_every_faceset_it_kept_from_another(store: Store) -> None:
    """Facesets 1 and 2 both show Ann: 1 takes the name, 2 may not (a name is not taken twice). The
    user renames 1: Ann is free, and 2, whose own votes did not change (not marked), takes it at the
    next count, as a count of every faceset would."""
    from facesyncd.config import IdentitySettings
    from facesyncd.cycle.names import adopt_immich_names
    from facesyncd.models import CycleReport

    settings = IdentitySettings(name_min_faces=1)
    with store.transaction():
        store.execute(
            "INSERT INTO asset_people (source, asset_id, name) SELECT a.source, a.asset_id, 'Ann' FROM assets a "
            "WHERE a.sha256 IN (SELECT sha256 FROM faces WHERE identity IN (1, 2))"
        )
    adopt_immich_names(store, settings, CycleReport())
    names = store.identity_names()
    assert names.get(1) == "Ann" and names.get(2) != "Ann"
    adopt_immich_names(store, settings, CycleReport())  # (nothing changed: nothing counted)
    with store.transaction():
        store.set_name(1, "Annie")  # the user's
        store.execute("UPDATE faces SET det_score = 0.5 WHERE identity = 3")  # and the store changed
    assert 2 not in store.name_marks()[1]
    adopt_immich_names(store, settings, CycleReport())
    assert store.identity_names()[2] == "Ann"


def index_write(store: Store, rng: random.Random, step: int, embedding: bytes) -> str:
    """One write of a kind that changes only what the face index holds (random_write's face writes
    aside), by raw SQL."""
    face = rng.choice([row[0] for row in store.tuples("SELECT id FROM faces")] or [0])
    sha = f"{rng.randrange(PHOTOS):064x}"
    number, other = rng.randrange(1, IDENTITIES + 1), rng.randrange(1, IDENTITIES + 1)
    writes = {
        "face embedded anew": ("UPDATE faces SET embedding = ? WHERE id = ?", (embedding, face)),
        "faces moved whole": ("UPDATE faces SET identity = ? WHERE identity = ?", (other, number)),
        "photo's faces deleted": ("DELETE FROM faces WHERE sha256 = ?", (sha,)),
        "face moved, nothing else": ("UPDATE faces SET identity = ? WHERE id = ?", (number, face)),
    }
    kind = rng.choice(sorted(writes))
    sql, parameters = writes[kind]
    with store.transaction():
        store.execute(sql, parameters)
    return kind


def held_index(index: object, store: Store) -> tuple[dict[int, int], dict[int, int], list[list[float]]]:
    """What an index holds, to compare with the store: each face's identity, each identity's face
    count, and each face's vector (by face id)."""
    faces = sorted(index.identity_of)  # type: ignore[attr-defined]
    vectors = index._index.vectors(faces).tolist() if faces else []  # type: ignore[attr-defined]
    return dict(index.identity_of), index.face_counts(), vectors  # type: ignore[attr-defined]


def store_index(store: Store) -> tuple[dict[int, int], dict[int, int], list[list[float]]]:
    import numpy as np

    identity_of = Store.identity_map(store)  # (the store's own, not one a test counts the calls of)
    faces = sorted(identity_of)
    counts: dict[int, int] = {}
    for number in identity_of.values():
        counts[number] = counts.get(number, 0) + 1
    stored = store.embeddings_of(faces)
    return identity_of, counts, [np.asarray(stored[face], np.float32).tolist() for face in faces]


def sums_held(index: object, store: Store) -> bool:
    """Whether each identity's sum the index keeps (what its centre and mean distances come from) is
    the sum of its faces' embeddings in the store."""
    import numpy as np

    identity_of = Store.identity_map(store)
    stored = store.embeddings_of(sorted(identity_of))
    sums: dict[int, np.ndarray] = {}
    for face, number in identity_of.items():
        sums[number] = sums.get(number, np.zeros(WIDTH)) + np.asarray(stored[face], np.float64)
    kept = index._sums  # type: ignore[attr-defined]
    return kept.keys() == sums.keys() and all(np.allclose(kept[n], sums[n], atol=1e-9) for n in sums)


@pytest.mark.parametrize("seed", [3, 8, 21])
def test_a_new_process_brings_the_index_in_step_from_the_marks_alone(
    store: Store, seed: int, tmp_path: Path, monkeypatch
) -> None:
    """Issue 24: a new process read every face in an identity (Store.identity_map: 0.13-0.21 CPU-s
    at 310,000 faces) to bring the index's file in step; it now reads the faces marked since the
    file was written (migrations/0023). After every kind of write, by raw SQL, an index loaded so
    holds what the store has (each face's identity and embedding, each identity's count), and no
    load reads the whole map; files are written now and then (their marks cleared). Each identity's
    sum of embeddings is taken from the file and the marks, never by summing every row again."""
    from facesyncd.index import _Routed, load_or_build

    rng = random.Random(seed)
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
    state = tmp_path / "state"
    load_or_build(store, state, WIDTH)  # built and written with the store's mark
    whole_reads = 0
    read_whole = store.identity_map

    def counted() -> dict[int, int]:
        nonlocal whole_reads
        whole_reads += 1
        return read_whole()

    monkeypatch.setattr(store, "identity_map", counted)
    summed = []
    totals = _Routed.totals
    monkeypatch.setattr(_Routed, "totals", lambda self: summed.append(1) or totals(self))
    kinds, written = set(), 0
    for step in range(200):
        write = random_write if rng.random() < 0.6 else index_write
        kinds.add(write(store, rng, step, embedding(rng)))
        if rng.random() < 0.5:
            continue  # marks pile up between loads
        save = rng.random() < 0.3
        loaded = load_or_build(store, state, WIDTH, save_behind=save)
        written += save and loaded.behind_on_disk == 0
        assert held_index(loaded, store) == store_index(store), f"step {step}"
        assert sums_held(loaded, store), f"step {step}"
    assert whole_reads == 0 and not summed and written > 5
    assert len(kinds) > 25 and len(read_whole()) > 10  # (every kind tried; faces still in identities)


@pytest.mark.parametrize("seed", [5, 12])
def test_the_centres_written_from_their_marks_are_those_writing_every_centre_gives(
    store: Store, seed: int, tmp_path: Path
) -> None:
    """Issue 24: a new process wrote every identity's centre after each cycle that placed a face
    (3,000 rows, 6 MB at 512-d); it writes those the store marked since (migrations/0024). After
    every kind of write, by raw SQL, the centres so written from an index in step with the store
    are the rows writing every centre gives, and only marked ones were written."""
    import numpy as np

    from facesyncd.index import load_or_build

    rng = random.Random(seed)
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
    state = tmp_path / "state"

    def rows() -> dict[int, tuple[list[float], int]]:
        found = store.tuples("SELECT number, centre, faces FROM identity_centres")
        return {number: (np.frombuffer(blob, np.float32).tolist(), count) for number, blob, count in found}

    def write() -> frozenset[int] | None:
        index = load_or_build(store, state, WIDTH)
        with store.transaction():
            marked = store.centre_marks()
            store.save_centres(index.centres(marked), index.face_counts(), only=marked)
        return marked

    assert write() is None and store.centres_current()  # the first write: every centre
    kinds, partial = set(), 0
    for step in range(150):
        before = rows()
        write_kind = random_write if rng.random() < 0.6 else index_write
        kinds.add(write_kind(store, rng, step, embedding(rng)))
        if rng.random() < 0.5:
            continue  # marks pile up between writes
        marked = write()
        assert marked is not None and store.centres_current(), f"step {step}"
        partial += 1
        after = rows()
        every = load_or_build(store, state, WIDTH)  # what writing every centre gives
        counts = every.face_counts()
        assert after.keys() == counts.keys(), f"step {step}"
        for number, (centre, count) in after.items():
            assert count == counts[number] and np.allclose(centre, every.centres([number])[number], atol=1e-6), step
        assert {number for number in after.keys() | before.keys() if after.get(number) != before.get(number)} <= marked
    assert len(kinds) > 25 and partial > 50


def test_an_index_file_without_its_totals_or_with_totals_its_rows_deny_is_summed_again(
    store: Store, tmp_path: Path, monkeypatch
) -> None:
    """A file written before the totals were kept with the rows, or whose totals do not count the
    identities its rows hold (each as Totals gives them): every row is summed again, and the index
    holds the store's sums."""
    import numpy as np

    from facesyncd.index import INDEX_FILE, _Routed, load_or_build

    rng = random.Random(6)
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
    state = tmp_path / "state"
    built = load_or_build(store, state, WIDTH)
    numbers, sums, counts = built._totals()
    summed = []
    totals = _Routed.totals
    monkeypatch.setattr(_Routed, "totals", lambda self: summed.append(1) or totals(self))
    assert sums_held(load_or_build(store, state, WIDTH), store) and summed == []  # taken as saved
    one_more, moved = counts.copy(), counts.copy()
    one_more[0] += 1
    moved[0], moved[1] = moved[0] + 1, moved[1] - 1  # (as many in all)
    shifted = numbers.copy()
    shifted[-1] += 1000
    wrong = [
        None,  # written before the totals were kept
        (numbers, sums, one_more),  # a count the rows deny
        (numbers, sums, moved),  # two counts the rows deny
        (shifted, sums, counts),  # an identity the rows lack
        (numbers[::-1], sums[::-1], counts[::-1]),  # out of order
        (numbers, sums[:, :2], counts),  # of another width
        (numbers, sums.astype(np.float32), counts),  # of another kind
        (numbers[:-1], sums[:-1], counts[:-1]),  # an identity missing
    ]
    for step, kept in enumerate(wrong, start=1):
        rows = _Routed(WIDTH)
        rows.load(state / INDEX_FILE)  # (its rows mapped: written beside, then renamed, as the index does)
        rows.save(state / "rewritten", kept)  # type: ignore[arg-type]
        (state / "rewritten").replace(state / INDEX_FILE)
        loaded = load_or_build(store, state, WIDTH)
        assert held_index(loaded, store) == store_index(store) and sums_held(loaded, store), step
        assert len(summed) == step, step


def test_an_index_file_the_marks_do_not_describe_is_compared_whole_then_written_with_them(
    store: Store, tmp_path: Path
) -> None:
    """A file another process wrote after it (its marks cleared past this one's), a file of another
    store, or one from before the marks: the whole map is read, never a file missing a change;
    the next load is from the marks again."""
    from facesyncd.index import INDEX_FILE, SIDECAR_FILE, load_or_build

    rng = random.Random(4)
    with store.transaction():
        for (face,) in store.tuples("SELECT id FROM faces"):
            store.execute("UPDATE faces SET embedding = ? WHERE id = ?", (embedding(rng), face))
    state, aside = tmp_path / "state", tmp_path / "aside"
    load_or_build(store, state, WIDTH)
    aside.mkdir()
    for name in (INDEX_FILE, SIDECAR_FILE):
        shutil.copy(state / name, aside / name)
    token = store.index_file_token()
    for step in range(6):
        index_write(store, rng, step, embedding(rng))
    load_or_build(store, state, WIDTH)  # another process writes its file: the marks up to it go
    for step in range(6, 12):
        index_write(store, rng, step, embedding(rng))
    for name in (INDEX_FILE, SIDECAR_FILE):  # the first file back, as the store's
        shutil.copy(aside / name, state / name)
    store.kept_index_file(str(token), 0)
    assert store.index_marks(json.loads((state / SIDECAR_FILE).read_text())["mark"]) is None

    whole_reads = []
    read_whole = store.identity_map
    store.identity_map = lambda: whole_reads.append(1) or read_whole()  # type: ignore[method-assign]
    loaded = load_or_build(store, state, WIDTH)
    assert whole_reads == [1] and held_index(loaded, store) == store_index(store)
    store.kept_index_file("another store's", 0)  # the file is not the store's
    loaded = load_or_build(store, state, WIDTH)
    assert whole_reads == [1, 1] and held_index(loaded, store) == store_index(store)
    sidecar = json.loads((state / SIDECAR_FILE).read_text())
    del sidecar["token"], sidecar["mark"]  # written before the marks
    (state / SIDECAR_FILE).write_text(json.dumps(sidecar))
    loaded = load_or_build(store, state, WIDTH)
    assert whole_reads == [1, 1, 1] and held_index(loaded, store) == store_index(store)
    index_write(store, rng, 12, embedding(rng))
    loaded = load_or_build(store, state, WIDTH)
    assert whole_reads == [1, 1, 1] and held_index(loaded, store) == store_index(store)
