"""Issue 24, behaviour 1: a cycle with nothing new, at 10,000 and 100,000 faces (60% in 1,000 facesets
or 10% of that, 40% waiting in the pool), against the same cycle made to redo what it did before:
re-cluster the unchanged pool, look for merges, compare every folder, plus the model's load.

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
            now = statistics.median(seconds for seconds, _ in quiet)
            before = statistics.median(seconds for seconds, _ in forced)
            requests = max(count for _, count in quiet)
            print(
                f"{size:>7} faces ({in_sets} in {facesets} facesets, {pool} in the pool): nothing new costs "
                f"{now:.3f} CPU-s and {requests} requests; redoing it all {before:.2f} CPU-s ({before / now:.0f}x)",
                flush=True,
            )
            rows.append(
                (
                    f"a sync with nothing new, {size:,} faces ({pool:,} in the pool)",
                    f"{now:.3f} CPU-s, {requests} requests (redoing it all: {before:.2f} CPU-s, {before / now:.0f}x)",
                    "≤ 0.3 CPU-s at 100,000, 2 requests",
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
