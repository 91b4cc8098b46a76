"""Issue 24, behaviour 3: what 1,000 new faces cost at 10,000 / 100,000 / 500,000 faces.

A library as bench_nochange.py makes it (60% of the faces in facesets of 100 or so, 40% waiting in the
pool, each unlike any other), exported and synced once. Then 1,000 faces arrive as a stage leaves
them (embedded, not yet compared): 600 of people the library has (each near a face of one of TOUCHED
facesets: the same change at every size) and 400 strangers. One sync (nothing more listed by the fake
Immich) assigns them, clusters the pool, looks for merges and exports; CPU seconds of each step in this
process, and of the whole cycle. Then, as a running daemon meets them: a process that has run a cycle
(its index and pool loaded) gets another 1,000, REPEATS times (see daemon_seconds); of its cycle, what
the three passes that grow with the library by design cost (PASSES), and the rest: the new faces' own.
Last, what that daemon pays for a correction another process made (corrections_seconds).

The embeddings are 128-d by default (the test pack's recognizer); `--dimension 512` makes them
buffalo_l's size, where the passes that read the whole library read 4x the bytes.

    .venv/bin/python benchmarks/bench_new_faces.py [--sizes 10000 100000 500000] [--dimension 512]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_curation import QUALITY, point_at, pooled_library

from common import require_shared
from fake_server import FakeServerProcess

NEW = 1_000
# The faces of known people land in this many facesets, at every size (the smallest library has 60):
# the same change in each library. Spread over all of a library's facesets instead, 600 faces touch 60
# folders at 10,000 faces and about 550 at 500,000: a cost of what changed, measured apart (daemon_seconds).
TOUCHED = 60
# A running daemon's cycle is measured this many times, each with its own 1,000 new faces: the median
# (one cycle's CPU swings by a quarter on this shared machine).
REPEATS = 3
STEPS = ("assign_new_faces", "open_new_facesets", "merge_identities", "adopt_immich_names", "publish")


def add_new_faces(config: Path, seed: int = 12, first: int = 0, touched: int | None = TOUCHED) -> None:
    """NEW faces as a stage commits them: 60% close to a face of one of `touched` facesets drawn at
    random (None: of any), 10% of 20 people new to the library (5 photos each), 30% strangers.
    `first`: the number of the first (a second batch starts after the first one's)."""
    from facesyncd.store import Store
    from facesyncd.store.faces import PART_COLUMNS

    state = Path(next(line for line in config.read_text().splitlines() if line.startswith("state_dir")).split('"')[1])
    store = Store(state / "facesyncd.db")
    rng = np.random.default_rng(seed)
    # Drawn by the seed, not by SQLite's RANDOM(): the same faces in every run, so that the pool's
    # clustering can be compared run by run with the whole pool's (see sync_seconds).
    if touched is None:
        rows = store.tuples("SELECT embedding FROM faces WHERE identity IS NOT NULL ORDER BY id")
    else:
        every = [row[0] for row in store.tuples("SELECT DISTINCT identity FROM faces WHERE identity IS NOT NULL")]
        chosen = rng.choice(sorted(every), size=min(touched, len(every)), replace=False)
        marks = ",".join("?" * len(chosen))
        query = f"SELECT embedding FROM faces WHERE identity IN ({marks}) ORDER BY id"
        rows = store.tuples(query, tuple(int(n) for n in chosen))
    known = [rows[int(k)] for k in rng.choice(len(rows), size=min(NEW, len(rows)), replace=False)]
    dimension = len(known[0][0]) // 4
    crop_source = next((state / "crops").rglob("*.jpg"))
    now = "2026-12-02T00:00:00.000Z"
    newcomers = rng.normal(size=(NEW // 50, dimension))
    with store.transaction():
        for k in range(NEW):
            if k < NEW * 6 // 10:
                vector = np.frombuffer(known[k][0], np.float32) + rng.normal(scale=0.02, size=dimension)
            elif k < NEW * 7 // 10:
                vector = newcomers[(k - NEW * 6 // 10) // 5] + rng.normal(scale=0.6, size=dimension)
            else:
                vector = rng.normal(size=dimension)
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
            n = first + k
            sha = _sha(n)
            crop = f"{sha[:2]}/{sha}_0.jpg"
            (state / "crops" / crop).parent.mkdir(exist_ok=True)
            shutil.copyfile(crop_source, state / "crops" / crop)
            store.execute(
                "INSERT INTO blobs (sha256, size, width, height, decoded_from, model, embedded_at) "
                "VALUES (?, 1, 1000, 1000, 'original', 'buffalo_test', ?)",
                (sha, now),
            )
            store.execute(
                "INSERT INTO assets (source, asset_id, type, state, sha256, checksum, first_seen_at, changed_at, "
                "file_created_at, original_file_name) VALUES ('alice', ?, 'IMAGE', 'done', ?, ?, ?, ?, ?, ?)",
                (f"{0xFFFF0000 + n:08x}-1111-4000-8000-000000000000", sha, sha[:27], now, now, now, f"NEW_{n}.jpg"),
            )
            store.execute(
                "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
                f"quality, {PART_COLUMNS}) VALUES (?, 0, 100, 100, 300, 300, 0.9, '[]', ?, ?, 0.8, ?, ?, ?, ?, ?)",
                (sha, vector.tobytes(), crop, *QUALITY),
            )
    store.close()


def newcomers() -> set[frozenset[str]]:
    """The photos of each of the people add_new_faces brought, as the faceset each should open."""
    first = NEW * 6 // 10
    return {frozenset(_sha(first + person * 5 + k) for k in range(5)) for person in range(NEW // 50)}


def _sha(n: int) -> str:
    return f"{0xFFFF0000 + n:064x}"


def sync_seconds(config: Path, url: str) -> tuple[float, dict[str, float], Any, dict[str, Any]]:
    """CPU seconds of one sync, in all and per step, and its report; and the clustering compared
    with clustering the whole pool at once as before issue 24 (the same pool, right after the
    assignment): its CPU seconds, and whether it finds the same clusters."""
    import facesyncd.cycle.identify as identify
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings
    from facesyncd.identities import may_seed

    spent = dict.fromkeys(STEPS, 0.0)
    opened: list[frozenset[str]] = []
    compared: dict[str, Any] = {}
    open_identities = identify._open_identities

    def timed(name: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def run(*arguments: Any, **keywords: Any) -> Any:
            pool = []
            if name == "open_new_facesets":  # the baseline's pool, read before the step (not its cost)
                reading = time.process_time()
                parts = arguments[0]
                pool = [face for face in parts.store.pool_faces() if may_seed(face, parts.settings)]
                compared["reading"] = compared.get("reading", 0.0) + time.process_time() - reading
            started = time.process_time()
            try:
                return step(*arguments, **keywords)
            finally:
                spent[name] += time.process_time() - started
                if pool:
                    compared.update(whole_pool(parts.settings, pool))
                    compared["clustering"] = spent[name] - compared.get("opening", 0.0)

        return run

    def whole_pool(settings: Any, pool: list[Any]) -> dict[str, Any]:
        started = time.process_time()
        clustering = identify.cluster_faces(pool, settings)
        found = {frozenset(pool[row].sha256 for row in cluster.rows) for cluster in clustering.clusters}
        people = newcomers()
        return {
            "whole": time.process_time() - started,
            "same": found == set(opened),
            "clusters": len(found),
            "people found": (len(set(opened) & people), len(found & people), len(people)),
        }

    def recorded(parts: Any, pool: list[Any], clusters: list[Any], *rest: Any) -> None:
        opened.extend(frozenset(pool[row].sha256 for row in cluster.rows) for cluster in clusters)
        started = time.process_time()
        open_identities(parts, pool, clusters, *rest)
        compared["opening"] = compared.get("opening", 0.0) + time.process_time() - started

    point_at(config, url, "BENCH_NEW_KEY")
    identify._open_identities = recorded
    try:
        with steps_wrapped(timed), open_app(load_settings(config)) as app:
            started = time.process_time()
            report = actions.sync(app, reconcile=False, census=False)
            # the comparison ran inside the sync, and read the pool for it: not the sync's own cost
            extra = compared.get("whole", 0.0) + compared.get("reading", 0.0)
            return time.process_time() - started - extra, spent, report, compared
    finally:
        identify._open_identities = open_identities


@contextmanager
def wrapped(
    targets: dict[str, tuple[Any, str]], wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """Each of `targets` (name -> the module or class holding it, its attribute) replaced by
    `wrap(name, original)` while inside, put back after."""
    originals = {name: (holder, attribute, getattr(holder, attribute)) for name, (holder, attribute) in targets.items()}
    for name, (holder, attribute, original) in originals.items():
        setattr(holder, attribute, wrap(name, original))
    try:
        yield
    finally:
        for holder, attribute, original in originals.values():
            setattr(holder, attribute, original)


def timer(spent: dict[str, float]) -> Callable[[str, Callable[..., Any]], Callable[..., Any]]:
    """A `wrap` for `wrapped` that adds the CPU seconds of each call into `spent[name]`."""

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def run(*arguments: Any, **keywords: Any) -> Any:
            started = time.process_time()
            try:
                return original(*arguments, **keywords)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - started

        return run

    return wrap


def steps_wrapped(wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> AbstractContextManager[None]:
    """The cycle's STEPS replaced by `wrap(name, step)` while inside, put back after."""
    import facesyncd.cycle as cycle

    return wrapped({name: (cycle, name) for name in STEPS}, wrap)


@dataclass
class Daemon:
    """CPU seconds of a running daemon's cycles (daemon_seconds)."""

    total: float  # the cycle with NEW faces, TOUCHED facesets getting the known ones (the median of REPEATS)
    steps: dict[str, float]
    whole_publish: float  # the next NEW's publish with each touched folder written whole
    loading: float  # once per process, before
    spread: float  # the next NEW's cycle, the known faces from any faceset
    spread_publish: float
    spread_folders: int  # the facesets that last cycle touched
    passes: dict[str, float]  # of `total`, the passes that grow with the library by design (PASSES)
    correction: float  # applying a merge another process made (corrections_seconds)
    correction_reloaded: float  # the same with the index loaded again, as before

    @property
    def rest(self) -> float:
        return self.total - sum(self.passes.values())


# The three passes of a cycle that read something of the whole library, each exact by design: the
# routed search compares each new face with every identity's centre and reads each identity it is
# routed to (index.py), the pool's pass compares each face new to the pool with every pooled face
# (coarse.py), the look at the folders stats every faceset's folder for the user's changes
# (export.folder_state). What is left of a cycle is the cost of the new faces themselves.
PASSES = {
    "the routed search": ("facesyncd.index", "FaceIndex", "query"),
    "the pool's pass": ("facesyncd.identities", None, "closest"),
    "the folder look": ("facesyncd.cycle.publish", None, "folder_state"),
}


def passes_timed(spent: dict[str, float]) -> AbstractContextManager[None]:
    """CPU seconds of each of PASSES added into `spent` while inside."""
    import importlib

    def holder(module: str, owner: str | None) -> Any:
        found = importlib.import_module(module)
        return getattr(found, owner) if owner else found

    targets = {name: (holder(module, owner), attribute) for name, (module, owner, attribute) in PASSES.items()}
    return wrapped(targets, timer(spent))


def daemon_seconds(config: Path, url: str) -> Daemon:
    """CPU seconds of a running daemon's cycle when a batch of NEW faces arrives, in all, per step and
    per pass of PASSES (the median of REPEATS batches, one cycle each): the process has run a cycle
    before and holds its index, the pool and its groups' sizes, and has looked for merges once (a
    process's first look compares every pair of facesets, its later ones the centres that moved), all
    apart, as `facesyncd run` has; a `sync` pays those in every new process. Then the baseline of its
    publish: another batch, each touched folder written whole from every face of its faceset, as before
    the export's marks named faces (migrations/0020). Then one more, its known faces drawn from any
    faceset (as many folders to write as facesets touched). Last, corrections_seconds."""
    import facesyncd.cycle.identify as identify
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings
    from facesyncd.layouts import CropsLayout
    from facesyncd.models import CycleReport

    spent = dict.fromkeys(STEPS, 0.0)
    passes = dict.fromkeys(PASSES, 0.0)

    def cycle() -> tuple[float, dict[str, float]]:
        spent.update(dict.fromkeys(STEPS, 0.0))
        passes.update(dict.fromkeys(PASSES, 0.0))
        with steps_wrapped(timer(spent)), passes_timed(passes):
            started = time.process_time()
            actions.sync(app, reconcile=False, census=False)
            return time.process_time() - started, dict(spent)

    point_at(config, url, "BENCH_NEW_KEY")
    with open_app(load_settings(config)) as app:
        actions.sync(app, reconcile=False, census=False)
        # A running daemon holds its index, the pool's arrays and its groups' sizes from its first cycle
        # with new faces on, and has looked at every pair of facesets for merges once: done here, apart.
        started = time.process_time()
        app.caches.index.get()
        app.pool.get()
        app.pool.group_sizes()
        identify._merge(app.identify_parts(), CycleReport())
        loading = time.process_time() - started
        runs = []
        for repeat in range(REPEATS):
            add_new_faces(config, seed=13 + 10 * repeat, first=(1 + repeat) * NEW)
            total, steps = cycle()
            runs.append((total, steps, dict(passes)))
        total, steps, passes_of_total = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
        first = (1 + REPEATS) * NEW
        add_new_faces(config, seed=14, first=first)
        by_marks = CropsLayout.write_marked
        CropsLayout.write_marked = lambda *_: (frozenset(), 0)  # type: ignore[method-assign,assignment]
        try:
            whole_publish = cycle()[1]["publish"]
        finally:
            CropsLayout.write_marked = by_marks  # type: ignore[method-assign]
        add_new_faces(config, seed=15, first=first + NEW, touched=None)
        spread, spread_steps = cycle()
        folders = app.store.scalar(
            "SELECT COUNT(DISTINCT identity) FROM faces WHERE sha256 >= ? AND sha256 < ? AND identity IS NOT NULL",
            (_sha(first + NEW), _sha(first + 2 * NEW)),
        )
        correction, correction_reloaded = corrections_seconds(app)
        return Daemon(
            total,
            steps,
            whole_publish,
            loading,
            spread,
            spread_steps["publish"],
            int(folders or 0),
            passes_of_total,
            correction,
            correction_reloaded,
        )


def corrections_seconds(app: Any) -> tuple[float, float]:
    """CPU seconds of a running daemon's applying a correction another process made (one faceset
    merged into another on the review page): taking the faces it changed into the index it holds;
    then, for the next such merge, dropping the index and loading it again, as before."""
    from facesyncd import actions
    from facesyncd.curation import Merge
    from facesyncd.store import Store

    numbers = sorted(app.caches.index.get().face_counts())

    def merged(kept: int, other: int, *, reloaded: bool) -> float:
        store = Store(app.settings.database_path)  # (as the review page's process does)
        try:
            Merge(kept, (other,)).apply(store, lambda crops: [])
        finally:
            store.close()
        if reloaded:
            app.caches.index.drop()
        started = time.process_time()
        actions.apply_corrections(app)
        return time.process_time() - started

    return merged(numbers[0], numbers[1], reloaded=False), merged(numbers[2], numbers[3], reloaded=True)


def main(sizes: tuple[int, ...] = (10_000, 100_000, 500_000), dimension: int = 128) -> list[tuple[str, str, str]]:
    require_shared()
    measured: dict[int, tuple[float, dict[str, float]]] = {}
    daemon: dict[int, Daemon] = {}
    wholes: dict[int, dict[str, Any]] = {}
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix="bench-new-faces-"))
        try:
            config, _, pool, facesets = pooled_library(
                directory, size, per_faceset=100, most=5_000, dimension=dimension
            )
            with FakeServerProcess([]) as server:
                sync_seconds(config, server.url)  # the state a sync leaves: index saved, pool clustered
                add_new_faces(config)
                total, steps, report, compared = sync_seconds(config, server.url)
                daemon[size] = daemon_seconds(config, server.url)
            measured[size] = (total, steps)
            wholes[size] = compared
            print(
                f"{size:>7} faces of {dimension}-d ({pool} in the pool, {facesets} facesets): {NEW} new faces cost "
                f"{total:.2f} CPU-s "
                f"({', '.join(f'{name} {seconds:.2f}' for name, seconds in steps.items())}); "
                f"{report.faces_assigned} assigned, {len(report.identities_created)} facesets opened; clustering alone "
                f"{compared['clustering']:.2f} CPU-s, the whole pool as before: {compared['whole']:.2f} CPU-s, "
                f"{'the same' if compared['same'] else 'OTHER'} {compared['clusters']} clusters; of the "
                f"{compared['people found'][2]} new people, found whole: {compared['people found'][0]} "
                f"(as before: {compared['people found'][1]}); in a running daemon's cycle: {daemon[size].total:.2f} "
                f"CPU-s ({', '.join(f'{name} {seconds:.2f}' for name, seconds in daemon[size].steps.items())}); "
                f"its publish with each folder written whole, as before: {daemon[size].whole_publish:.2f} CPU-s; "
                f"loading its index, pool and groups and a first look for merges before: {daemon[size].loading:.2f} "
                f"CPU-s; the known faces spread over {daemon[size].spread_folders} facesets: {daemon[size].spread:.2f} "
                f"CPU-s, publish {daemon[size].spread_publish:.2f}; of that daemon cycle, "
                f"{', '.join(f'{name} {seconds:.2f}' for name, seconds in daemon[size].passes.items())}, the rest "
                f"{daemon[size].rest:.2f}; applying a merge another process made: {daemon[size].correction:.2f} CPU-s, "
                f"the index loaded again as before: {daemon[size].correction_reloaded:.2f}",
                flush=True,
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    names = "/".join(f"{size // 1000}k" for size in sizes) + f" faces of {dimension}-d"
    growth = measured[sizes[-1]][0] / measured[sizes[0]][0]

    def series(values: list[float]) -> str:
        return " / ".join(f"{value:.2f}" for value in values)

    same = all(wholes[size]["same"] for size in sizes)
    return [
        (
            f"1,000 new faces, CPU-s of the sync ({names})",
            series([measured[size][0] for size in sizes]),
            f"{growth:.1f}x from {sizes[0]:,} to {sizes[-1]:,}; flat is the target",
        ),
        *(
            (f"  of which {name.replace('_', ' ')}", series([measured[size][1][name] for size in sizes]), "")
            for name in STEPS
        ),
        (
            f"1,000 new faces, a running daemon's cycle ({names}; its index and pool loaded and a first look "
            f"for merges made before, apart; the median of {REPEATS} batches)",
            series([daemon[size].total for size in sizes]),
            f"{daemon[sizes[-1]].total / daemon[sizes[0]].total:.1f}x from {sizes[0]:,} to {sizes[-1]:,}",
        ),
        *(
            (f"  of which {name.replace('_', ' ')}", series([daemon[size].steps[name] for size in sizes]), "")
            for name in STEPS
        ),
        *(
            (
                f"  of which {name} (exact; it grows with the library by design)",
                series([daemon[size].passes[name] for size in sizes]),
                "",
            )
            for name in PASSES
        ),
        (
            "  the rest of that cycle: the new faces' own cost",
            series([daemon[size].rest for size in sizes]),
            f"{daemon[sizes[-1]].rest / daemon[sizes[0]].rest:.1f}x from {sizes[0]:,} to {sizes[-1]:,}",
        ),
        (
            "  loading the index, the pool and its groups' sizes and a first look for merges, once per process, "
            "before that cycle",
            series([daemon[size].loading for size in sizes]),
            "",
        ),
        (
            "  its publish with each touched folder written whole instead, as before (the next 1,000)",
            series([daemon[size].whole_publish for size in sizes]),
            f"from the marked faces alone: "
            f"{daemon[sizes[-1]].steps['publish'] / daemon[sizes[-1]].whole_publish:.2f}x of that at {sizes[-1]:,}",
        ),
        (
            f"  the next 1,000 with the known faces from any faceset, not {TOUCHED} (facesets touched: "
            f"{' / '.join(str(daemon[size].spread_folders) for size in sizes)}): the cycle, then its publish",
            f"{series([daemon[size].spread for size in sizes])}; {series([daemon[size].spread_publish for size in sizes])}",
            "a folder more to write per faceset touched: a cost of the change",
        ),
        (
            "  a running daemon applying a merge of two facesets that another process made (the review page): "
            "the faces it changed taken into its index; the index dropped and loaded again instead, as before",
            f"{series([daemon[size].correction for size in sizes])}; "
            f"{series([daemon[size].correction_reloaded for size in sizes])}",
            f"{daemon[sizes[-1]].correction / daemon[sizes[-1]].correction_reloaded:.2f}x of that at {sizes[-1]:,}",
        ),
        (
            "  clustering alone (the rest: opening facesets, matching the pool to them)",
            series([wholes[size]["clustering"] for size in sizes]),
            "",
        ),
        (
            "  clustering the whole pool instead, as before",
            series([wholes[size]["whole"] for size in sizes]),
            f"clusters {'the same' if same else 'NOT the same'}; new people found whole: "
            f"{'/'.join(str(wholes[s]['people found'][0]) for s in sizes)} "
            f"(as before: {'/'.join(str(wholes[s]['people found'][1]) for s in sizes)}) "
            f"of {wholes[sizes[0]]['people found'][2]}",
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--dimension", type=int, default=128, help="the embeddings' size (512: buffalo_l's)")
    arguments = parser.parse_args()
    for row in main(tuple(arguments.sizes), arguments.dimension):
        print(" | ".join(row))
