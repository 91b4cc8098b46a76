"""Issue 24, behaviour 6: the store queries behind the review page, `status` and `faceset list` at
10,000 / 100,000 / 500,000 faces.

A store shaped like a big, messy library: 5,000 facesets at 500,000 faces (one per 100 faces), a
third of the faces in the pool, photos in Immich's trash and deleted (their faces stay in the
database but leave every faceset), imported facesets, 2,000 corrections. Per query: CPU seconds of
this process (median of 3, after one warm-up run), as the page pays them; `facesets (before)` is the
summary query as it stood before issue 24, run on the same store (its ratio is the one to read).

Then the look-ups each cycle that finds something new makes (a person named by Immich in a third of
the photos, nobody's face set aside, nothing to process), each against the same look-up as it read
before (migration 0019), on the same store: the faces set aside, the new faces, the assets to process
and Immich's name votes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import REPO

sys.path.insert(0, str(REPO))

SIZES = (10_000, 100_000, 500_000)
FACES_PER_FACESET = 100


def make_store(path: Path, faces: int):  # -> Store
    from facesyncd.store import Store

    store = Store(path)
    facesets = max(10, faces // FACES_PER_FACESET)
    photos = faces // 2  # two faces per photo
    rng = np.random.default_rng(5)
    embedding = rng.normal(size=128).astype(np.float32).tobytes()
    now = "2026-12-01T00:00:00.000Z"
    with store.transaction():
        store.conn.execute("INSERT INTO sources (name, url, watermark) VALUES ('alice', 'http://x', ?)", (now,))
        store.set_meta("embedding_dim", "128")
        store.conn.executemany(
            "INSERT INTO identities (number, origin, created_at, name) VALUES (?, 'cluster', ?, ?)",
            ((n, now, f"person {n}" if n % 3 == 0 else None) for n in range(1, facesets + 1)),
        )
        store.conn.executemany(
            "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES (?, 1, 'original', 'm', ?)",
            ((f"{i:064x}", now) for i in range(photos)),
        )
        # 1 photo in 40 in Immich's trash, 1 in 60 deleted: their faces are kept and are not live
        states = ["trashed" if i % 40 == 7 else "deleted" if i % 60 == 11 else "done" for i in range(photos)]
        store.conn.executemany(
            "INSERT INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at, file_created_at) "
            "VALUES ('alice', ?, 'IMAGE', ?, ?, ?, ?, ?)",
            ((f"{i:08x}-0000-4000-8000-000000000000", states[i], f"{i:064x}", now, now, now) for i in range(photos)),
        )

        def identity(face: int) -> int | None:
            return None if face % 3 == 0 else (face * 7919) % facesets + 1

        store.conn.executemany(
            "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, identity, "
            "quality, matched_at, placed_at) VALUES (?, ?, 0, 0, 100, 100, 0.9, '[]', ?, 'c', ?, ?, ?, ?)",
            (
                (
                    f"{face // 2:064x}",
                    face % 2,
                    embedding,
                    identity(face),
                    float(rng.random()),
                    now,
                    now if face % 997 == 0 and identity(face) else None,
                )
                for face in range(faces)
            ),
        )
        store.conn.executemany(
            "INSERT INTO imports (path, sha256, identity, state, imported_at) VALUES (?, ?, ?, 'done', ?)",
            ((f"/old/faceset_{n:03d}/{n}.png", f"{n * 13 % photos:064x}", n, now) for n in range(1, facesets + 1)),
        )
        store.conn.executemany(
            "INSERT INTO asset_people (source, asset_id, name) VALUES ('alice', ?, ?)",
            ((f"{i:08x}-0000-4000-8000-000000000000", f"person {i % 500}") for i in range(0, photos, 3)),
        )
        store.conn.executemany(
            "INSERT INTO corrections (at, kind, summary, undo) VALUES (?, 'rename', 's', ?)",
            ((now, json.dumps({"number": n % facesets + 1, "before": None})) for n in range(2_000)),
        )
    return store


# The facesets summary as it stood before issue 24 (store/corrections.py), the baseline.
BEFORE = """
WITH live AS (
    SELECT f.identity, f.id, COALESCE(f.quality, 0) AS quality FROM faces f
    WHERE f.identity IS NOT NULL AND {live}),
counted AS (SELECT identity, COUNT(*) AS faces FROM live GROUP BY identity),
best AS (
    SELECT identity, id FROM (
        SELECT identity, id, ROW_NUMBER() OVER (PARTITION BY identity ORDER BY quality DESC, id) AS rank
        FROM live) WHERE rank = 1),
moved AS (
    SELECT f.identity, MAX(COALESCE(f.placed_at, f.matched_at)) AS at FROM faces f
    WHERE f.identity IS NOT NULL GROUP BY f.identity),
touched AS (
    SELECT json_extract(undo, '$.number') AS number, at FROM corrections
    UNION ALL SELECT json_extract(undo, '$.from'), at FROM corrections
    UNION ALL SELECT json_extract(undo, '$.to'), at FROM corrections
    UNION ALL SELECT json_extract(undo, '$.kept'), at FROM corrections
    UNION ALL SELECT json_extract(undo, '$.before'), at FROM corrections),
corrected AS (SELECT number, MAX(at) AS at FROM touched WHERE number IS NOT NULL GROUP BY number)
SELECT i.number, COALESCE(counted.faces, 0), best.id FROM identities i
LEFT JOIN counted ON counted.identity = i.number LEFT JOIN best ON best.identity = i.number
LEFT JOIN moved ON moved.identity = i.number LEFT JOIN corrected ON corrected.number = i.number
ORDER BY i.number
"""


def cpu_seconds(function: Callable[[], object], runs: int = 3) -> float:
    function()  # warm: the page cache and the store's own caches, as on a machine serving the page
    spent = []
    for _ in range(runs):
        started = time.process_time()
        function()
        spent.append(time.process_time() - started)
    return statistics.median(spent)


# The look-ups as they read before migration 0019 (the baselines of cycle_lookups).
HELD_BEFORE = "SELECT id, held, embedding FROM faces NOT INDEXED WHERE held IS NOT NULL"
NEW_BEFORE = (
    "SELECT id, embedding FROM faces INDEXED BY faces_by_identity "
    "WHERE identity IS NULL AND matched_at IS NULL AND held IS NULL ORDER BY id"
)
DUE_BEFORE = (
    "SELECT * FROM assets WHERE source = 'alice' AND (state = 'pending' OR (state = 'failed' AND "
    "(next_attempt_at IS NULL OR next_attempt_at <= '2030'))) ORDER BY file_created_at, asset_id"
)
VOTES_BEFORE = """
SELECT f.identity, p.name, COUNT(DISTINCT f.id) FROM faces f
JOIN identities i ON i.number = f.identity
JOIN assets a ON a.sha256 = f.sha256 AND a.state = 'done'
JOIN asset_people p ON p.source = a.source AND p.asset_id = a.asset_id
WHERE i.merged_into IS NULL AND i.forgotten_at IS NULL
  AND (i.name_origin = 'immich' OR (i.name IS NULL AND i.name_origin IS NULL))
GROUP BY f.identity, p.name
"""
COUNTS_BEFORE = """
SELECT f.identity, COUNT(*) FROM faces f JOIN identities i ON i.number = f.identity
WHERE i.merged_into IS NULL AND i.forgotten_at IS NULL
  AND (i.name_origin = 'immich' OR (i.name IS NULL AND i.name_origin IS NULL)) AND {live} GROUP BY f.identity
"""


def cycle_lookups(store) -> dict[str, float]:  # store: Store
    """Each look-up of a cycle that finds something new, and the same as it read before, on `store`."""
    from facesyncd.store.faces import LIVE_FACES

    return {
        "held faces": cpu_seconds(store.held_faces),
        "held faces (before)": cpu_seconds(lambda: store.tuples(HELD_BEFORE)),
        "new faces": cpu_seconds(store.unmatched_new_faces),
        "new faces (before)": cpu_seconds(lambda: store.tuples(NEW_BEFORE)),
        "assets to process": cpu_seconds(lambda: store.assets_to_process("alice", "2030")),
        "assets to process (before)": cpu_seconds(lambda: store.tuples(DUE_BEFORE)),
        "name votes": cpu_seconds(store.name_votes),
        "name votes (before)": cpu_seconds(
            lambda: (store.tuples(VOTES_BEFORE), store.tuples(COUNTS_BEFORE.format(live=LIVE_FACES)))
        ),
    }


def measure(faces: int) -> dict[str, float]:
    from facesyncd.store.faces import LIVE_FACE

    directory = Path(tempfile.mkdtemp(prefix="bench-queries-"))
    try:
        started = time.perf_counter()
        store = make_store(directory / "facesyncd.db", faces)
        made = time.perf_counter() - started
        middle = max(10, faces // FACES_PER_FACESET) // 2
        before = BEFORE.format(live=LIVE_FACE)
        results = {
            "facesets (before)": cpu_seconds(lambda: store.tuples(before), runs=1),
            "facesets: grid, faceset list": cpu_seconds(store.facesets),
            "facesets(n): a faceset's page": cpu_seconds(lambda: store.facesets(middle)),
            "faces of a faceset": cpu_seconds(lambda: store.faces_of_identity(middle)),
            "pool size": cpu_seconds(store.pool_size),
            "the pool page's 500 newest faces": cpu_seconds(lambda: store.pool(500)),
            "status": cpu_seconds(store.status),
        }
        # after a cycle that moved faces into 100 facesets: what the next page pays
        store.clear_name_marks(store.name_marks()[0])  # (the store's making marked every faceset)
        with store.transaction():
            store.conn.execute(
                "UPDATE faces SET identity = id % 100 + 1, matched_at = '2026-12-02' "
                "WHERE id IN (SELECT id FROM faces WHERE identity IS NULL LIMIT 1000)"
            )
        started = time.process_time()
        store.facesets()
        results["facesets after 1,000 faces joined"] = time.process_time() - started
        results.update(cycle_lookups(store))
        # the names step counts the facesets that cycle marked (migrations/0022), not every named photo
        marked = store.name_marks()[1]
        results[f"name votes of the {len(marked)} facesets marked"] = cpu_seconds(lambda: store.name_votes(marked))
        results[f"name votes of the {len(marked)} facesets marked (before)"] = cpu_seconds(store.name_votes)
        store.close()
        print(f"  {faces:>7} faces (store made in {made:.0f} s):", flush=True)
        for name, seconds in results.items():
            print(f"    {name:<36} {seconds:8.3f} CPU-s", flush=True)
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(sizes: tuple[int, ...] = SIZES) -> list[tuple[str, str, str]]:
    print("store queries of the page, status and faceset list (CPU seconds):")
    measured = {faces: measure(faces) for faces in sizes}
    rows = []
    largest = measured[sizes[-1]]
    for name in largest:
        if name.endswith("(before)"):
            continue
        if f"{name} (before)" in largest and name != "facesets: grid, faceset list":
            figures = " / ".join(
                f"{measured[size][name]:.3f} vs {measured[size][f'{name} (before)']:.3f}" for size in sizes
            )
            ratio = largest[name] / max(largest[f"{name} (before)"], 1e-9)
            rows.append(
                (f"a cycle's {name}, vs before ({'/'.join(f'{s // 1000}k' for s in sizes)})", figures, f"{ratio:.3f}x")
            )
            continue
        figures = " / ".join(f"{measured[size][name]:.3f}" for size in sizes)
        worst = max(measured[size][name] for size in sizes)
        rows.append(
            (
                f"{name} ({'/'.join(f'{s // 1000}k' for s in sizes)})",
                f"{figures} CPU-s",
                f"< 0.2: {'yes' if worst < 0.2 else 'NO'}",
            )
        )
    ratio = largest["facesets: grid, faceset list"] / max(largest["facesets (before)"], 1e-9)
    rows.append(
        (
            f"facesets summary vs before, {sizes[-1] // 1000}k faces",
            f"{largest['facesets: grid, faceset list']:.3f} vs {largest['facesets (before)']:.3f} CPU-s",
            f"{ratio:.3f}x",
        )
    )
    return rows


if __name__ == "__main__":
    chosen = tuple(int(size) for size in sys.argv[1:]) or SIZES
    for row in main(chosen):
        print(" | ".join(row))
