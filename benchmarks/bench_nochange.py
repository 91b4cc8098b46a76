"""Issue 24, behaviour 1: a cycle with nothing new, at 10,000 and 100,000 faces (60% in 1,000 facesets
or 10% of that, 40% waiting in the pool), against the same cycle made to redo what it did before:
re-cluster the unchanged pool, look for merges, compare every folder, plus the model's load. Then a
cycle after the user deleted a face's file in one folder, against the same with every folder compared.

CPU seconds of the cycle in this process (`actions.sync`, the listing asked of a fake Immich with
nothing new: two requests), not wall time; each figure is the median of `rounds`.

    .venv/bin/python benchmarks/bench_nochange.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_curation import point_at, pooled_library

from common import require_shared
from fake_server import FakeServerProcess


def _cycle_seconds(config: Path, url: str, *, forced: bool) -> tuple[float, int]:
    """CPU seconds of one sync with nothing new (forced: the steps' records of the last run wiped, as
    before they were kept), and the requests it made."""
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    point_at(config, url, "BENCH_NOCHANGE_KEY")
    with open_app(load_settings(config)) as app:
        if forced:
            app.store.conn.execute("DELETE FROM meta WHERE key LIKE 'unchanged:%'")
        started = time.process_time()
        if forced:
            app.embedder.load()  # what every sync paid before it loaded the model only when needed
        report = actions.sync(app, reconcile=False, census=False)
        return time.process_time() - started, report.requests


def _hand_edit_seconds(config: Path, url: str, folder: int, *, remembered: bool) -> float:
    """CPU seconds of the sync after a face's file was deleted by hand in one faceset's folder (the
    sync puts it back). Not `remembered`: the folders' state the last export kept is wiped first,
    so that every folder is compared with the store, as before the export kept it."""
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    point_at(config, url, "BENCH_NOCHANGE_KEY")
    facesets = config.parent / "facesets"
    lost = sorted((facesets / f"faceset_{folder:03d}").glob("face_*"))[0]
    lost.unlink()
    with open_app(load_settings(config)) as app:
        if not remembered:
            app.store.conn.execute("DELETE FROM meta WHERE key = 'unchanged:publish'")
        started = time.process_time()
        actions.sync(app, reconcile=False, census=False)
        seconds = time.process_time() - started
    if not lost.is_file():
        raise RuntimeError(f"{lost} did not come back")
    return seconds


def main(sizes: tuple[int, ...] = (10_000, 100_000), rounds: int = 3) -> list[tuple[str, str, str]]:
    require_shared()
    rows = []
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix="bench-nochange-"))
        try:
            config, in_sets, pool, facesets = pooled_library(directory, size, per_faceset=60, most=1_000)
            with FakeServerProcess([]) as server:
                _cycle_seconds(config, server.url, forced=True)  # the state a first sync leaves
                _cycle_seconds(config, server.url, forced=False)
                quiet = [_cycle_seconds(config, server.url, forced=False) for _ in range(rounds)]
                forced = [_cycle_seconds(config, server.url, forced=True) for _ in range(rounds)]
                edits = [
                    (
                        _hand_edit_seconds(config, server.url, 1 + 2 * round_, remembered=True),
                        _hand_edit_seconds(config, server.url, 2 + 2 * round_, remembered=False),
                    )
                    for round_ in range(rounds)
                ]
            edited = statistics.median(seconds for seconds, _ in edits)
            edited_before = statistics.median(seconds for _, seconds in edits)
            now = statistics.median(seconds for seconds, _ in quiet)
            before = statistics.median(seconds for seconds, _ in forced)
            requests = max(count for _, count in quiet)
            print(
                f"{size:>7} faces ({in_sets} in {facesets} facesets, {pool} in the pool): nothing new costs "
                f"{now:.3f} CPU-s and {requests} requests; redoing it all {before:.2f} CPU-s ({before / now:.0f}x)",
                flush=True,
            )
            print(
                f"{size:>7} faces: a face's file deleted by hand in one folder costs the next sync {edited:.3f} "
                f"CPU-s; every folder compared, as before: {edited_before:.2f} CPU-s "
                f"({edited / edited_before:.3f}x)",
                flush=True,
            )
            rows.append(
                (
                    f"a sync with nothing new, {size:,} faces ({pool:,} in the pool)",
                    f"{now:.3f} CPU-s, {requests} requests (redoing it all: {before:.2f} CPU-s, {before / now:.0f}x)",
                    "≤ 0.3 CPU-s at 100,000, 2 requests",
                )
            )
            rows.append(
                (
                    f"  a face's file deleted by hand in one of {facesets:,} folders, the next sync",
                    f"{edited:.3f} CPU-s (every folder compared as before: {edited_before:.2f} CPU-s, "
                    f"{edited / edited_before:.3f}x)",
                    "the cost of the folder changed",
                )
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    main(tuple(arguments.sizes), arguments.rounds)
