"""What noticing the changes Immich's listing hides costs (issue 20, part 3), on a fake library of
50,000 assets served by a separate process.

An idle poll (the baseline: 2 requests) against an idle sweep (the poll plus one count request) and a
sweep after a force delete that skipped the trash (the count differs: the whole library is listed
again and the deletion applied). CPU seconds of this process (the server runs in its own), medians,
as ratios against the idle poll measured in the same run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import API_KEY, API_KEY_ENV, config_text, require_shared
from fake_server import FakeServerProcess


def _measure(run) -> tuple[float, int, object]:  # noqa: ANN001 (a callable returning a CycleReport)
    started = time.process_time()
    report = run()
    return time.process_time() - started, report.requests, report


def main(count: int = 50_000, rounds: int = 5) -> list[tuple[str, str, str]]:
    require_shared()
    os.environ[API_KEY_ENV] = API_KEY
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    started = time.perf_counter()
    with FakeServerProcess([], blank=count) as server:
        print(f"fake library of {count} assets ready in {time.perf_counter() - started:.0f} s")
        directory = Path(tempfile.mkdtemp(prefix="bench-census-"))
        try:
            config = directory / "config.toml"
            config.write_text(config_text(directory, server.url))
            app = open_app(load_settings(config))
            app.embedder.load()
            actions.sync(app)  # the first full listing: every asset known, the census's baseline
            polls, sweeps, found = [], [], []
            for _ in range(rounds):
                polls.append(_measure(lambda: actions.sync(app, reconcile=False, census=False, cluster=False)))
                sweeps.append(_measure(lambda: actions.sync(app, reconcile=False, census=True, cluster=False)))
                server.delete_one()
                found.append(_measure(lambda: actions.sync(app, reconcile=False, census=True, cluster=False)))
                assert found[-1][2].removed_assets == 1, "the sweep did not find the deletion"
            app.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    rows = []
    base = statistics.median(cpu for cpu, _, _ in polls)
    for what, runs in (
        ("idle poll (baseline)", polls),
        ("idle sweep (+1 count)", sweeps),
        ("sweep finding a force delete", found),
    ):
        cpu = statistics.median(c for c, _, _ in runs)
        requests = max(r for _, r, _ in runs)
        print(f"{what}: {requests} requests, {cpu * 1000:.0f} ms CPU, {cpu / base:.1f}x the idle poll")
        rows.append(
            (f"{what}, {count // 1000}k assets", f"{requests} requests, {cpu * 1000:.0f} ms CPU", f"{cpu / base:.1f}x")
        )
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
