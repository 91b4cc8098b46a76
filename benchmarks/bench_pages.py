"""Issue 21, part 2: the review page at the sizes of a big library: the grid of 5,000 facesets and a
faceset of 3,000 faces (100,000 faces in all), served by `facesyncd serve`.

For each page: time to the first byte and in all (median of 5), the HTML's weight, and how many
images it asks for at once (not lazy) against how many it shows; against `/healthz` (a page that
reads one value) measured in the same run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_curation import make_library

from common import REPO, require_shared


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> tuple[float, float, bytes]:
    """Seconds to the first byte, seconds in all, and the body."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:  # noqa: S310 (a loopback URL)
        first = answer.read(1)
        first_byte = time.perf_counter() - started
        body = first + answer.read()
    return first_byte, time.perf_counter() - started, body


def main(facesets: int = 5_000, per_set: int = 20, big: int = 3_000) -> list[tuple[str, str, str]]:
    require_shared()
    directory = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    port = free_port()
    server = None
    rows: list[tuple[str, str, str]] = []
    try:
        config = make_library(directory, facesets * per_set, facesets, big=big)
        server = subprocess.Popen(
            [sys.executable, "-m", "facesyncd", "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}"],
            cwd=REPO,
            env={**os.environ, "NOT_NEEDED": "unused-key-0123456789"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                fetch(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        pages = [("/healthz (baseline)", "/healthz"), (f"grid, {facesets} facesets", "/"),
                 (f"faceset of {big + per_set} faces", "/faceset/1"),
                 (f"faceset of {big + per_set} faces, farthest first", "/faceset/1?sort=distance")]  # fmt: skip
        baseline = None
        for what, path in pages:
            runs = [fetch(base + path) for _ in range(5)]
            first = statistics.median(run[0] for run in runs)
            whole = statistics.median(run[1] for run in runs)
            body = runs[0][2]
            images = len(re.findall(rb"<img ", body))
            eager = images - len(re.findall(rb'<img [^>]*loading="lazy"', body))
            baseline = baseline or first
            print(
                f"{what}: first byte {first * 1000:.0f} ms ({first / baseline:.1f}x /healthz), all {whole * 1000:.0f} ms, "
                f"{len(body) / 1024:.0f} KiB, {images} images ({eager} not lazy)"
            )
            rows.append((f"page: {what}", f"{first * 1000:.0f} ms first byte, {len(body) / 1024:.0f} KiB, "
                         f"{images} images ({eager} eager)", f"{first / baseline:.1f}x /healthz"))  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
