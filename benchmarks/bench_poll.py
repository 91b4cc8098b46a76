"""Target 2: polling cost on a fake library of 100,000 assets (served by a separate process).

All assets carry Immich faces far under min_face_px, so the prefilter skips every one without a
download. Measures the first full listing (assets per second), the whole first cycle, and then a
cycle with no changes: its requests and seconds (the model and database already open).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import API_KEY, API_KEY_ENV, config_text, require_shared
from fake_server import FakeServerProcess


def main(count: int = 100_000) -> list[tuple[str, str, str]]:
    require_shared()
    os.environ[API_KEY_ENV] = API_KEY
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    started = time.perf_counter()
    with FakeServerProcess([], blank=count) as server:
        print(f"fake library of {count} assets ready in {time.perf_counter() - started:.0f} s")
        directory = Path(tempfile.mkdtemp(prefix="bench-poll-"))
        try:
            config = directory / "config.toml"
            config.write_text(config_text(directory, server.url))
            settings = load_settings(config)
            app = open_app(settings)
            app.embedder.load()
            first = actions.sync(app)
            listing_rate = first.listed / first.listing_seconds
            cycle_rate = first.listed / first.seconds
            print(
                f"first cycle: listed {first.listed} assets in {first.listing_seconds:.1f} s "
                f"({listing_rate:.0f} assets/s), {first.requests} requests"
            )
            print(
                f"  whole first cycle incl. the prefilter's faces request per asset: {first.seconds:.1f} s "
                f"({cycle_rate:.0f} assets/s), {first.skipped} skipped"
            )
            idle = [actions.sync(app) for _ in range(5)]
            seconds = sorted(report.seconds for report in idle)[2]
            requests = max(report.requests for report in idle)
            print(f"cycle with no changes: {requests} requests, median {seconds * 1000:.0f} ms")
            app.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return [
        ("first full listing", f"{listing_rate:.0f} assets/s", f">= 5000: {'yes' if listing_rate >= 5000 else 'NO'}"),
        (
            "first cycle, all skipped by the prefilter",
            f"{cycle_rate:.0f} assets/s",
            f">= 5000: {'yes' if cycle_rate >= 5000 else 'NO'} (one faces request per asset)",
        ),
        (
            "no-change cycle (100k library)",
            f"{requests} requests, {seconds * 1000:.0f} ms",
            f"<= 2 and < 1 s: {'yes' if requests <= 2 and seconds < 1 else 'NO'}",
        ),
    ]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
