"""The swap layout's `.fsz` bundles of 100 and 1,000 faces (PNGs of 340 KB, the size of a 512 px face):
written from their files a chunk at a time (bundles.Bundle), against the baseline of the same run,
the bundle built whole in memory and then written, as facesyncd did before; and what telling a
bundle on disk current costs (its listing and its files' checksums read), where the baseline built
the bundle again and read the one on disk back to compare. Process CPU seconds and the peak of the
memory Python allocated (tracemalloc), the median of REPEATS.

    .venv/bin/python benchmarks/bench_bundles.py
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

from common import median

PNG_BYTES = 340_000
SIZES = (100, 1_000)
REPEATS = 3


def _in_memory(members: list[tuple[str, Path]]) -> bytes:
    """The bundle as facesyncd built it before (swap.bundle, until 2026-12-04)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, path in members:
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _measured(work: Callable[[], object]) -> tuple[float, float]:
    """Median CPU seconds and peak MB allocated over REPEATS runs of `work`."""
    seconds, peaks = [], []
    for _ in range(REPEATS):
        tracemalloc.start()
        started = time.process_time()
        work()
        seconds.append(time.process_time() - started)
        peaks.append(tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
    return median(seconds), median(peaks)


def main() -> list[tuple[str, str, str]]:
    from facesyncd.bundles import Bundle

    rows = []
    folder = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    try:
        members = []
        for number in range(max(SIZES)):
            path = folder / f"{number}.png"
            path.write_bytes(os.urandom(PNG_BYTES))
            members.append((f"face_{number:07d}.png", path))
        for size in SIZES:
            chosen = members[:size]
            before_target, target = folder / "before.fsz", folder / "now.fsz"
            bundle = Bundle(tuple(chosen))
            before = _measured(lambda: before_target.write_bytes(_in_memory(chosen)))  # noqa: B023
            now = _measured(lambda: bundle.write(target))  # noqa: B023
            compared_before = _measured(lambda: _in_memory(chosen) == before_target.read_bytes())  # noqa: B023
            compared_now = _measured(lambda: bundle.written_at(target))  # noqa: B023
            print(
                f"{size:>5} faces ({size * PNG_BYTES / 1e6:.0f} MB): written {now[0]:.2f} CPU-s, {now[1]:.1f} MB held "
                f"(in memory first, as before: {before[0]:.2f} CPU-s, {before[1]:.0f} MB); told current "
                f"{compared_now[0]:.2f} CPU-s, {compared_now[1]:.1f} MB (built again and compared, as before: "
                f"{compared_before[0]:.2f} CPU-s, {compared_before[1]:.0f} MB)",
                flush=True,
            )
            rows.append(
                (
                    f"a swap bundle of {size:,} faces: written; told current (CPU-s, MB held)",
                    f"{now[0]:.2f}, {now[1]:.1f} MB; {compared_now[0]:.2f}, {compared_now[1]:.1f} MB",
                    f"as before: {before[0]:.2f}, {before[1]:.0f} MB; {compared_before[0]:.2f}, "
                    f"{compared_before[1]:.0f} MB",
                )
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for row in main():
        print(" | ".join(row))
