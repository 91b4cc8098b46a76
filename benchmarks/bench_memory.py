"""Target 5: peak memory of `sync` over the test photos, and whether it grows with the library.

glibc's allocator settles over the first few hundred assets (its mmap threshold rises to fit the
decoded images, which then come from the heap): 100 -> 1,000 assets adds some tens of MB, 1,000 ->
3,000 about nothing. MALLOC_MMAP_THRESHOLD_=1048576 keeps it flat from the start, at about 20% of
sync throughput (measured), so it is left to the user (README, Performance).

Each run is a fresh `facesyncd sync` process against the fake Immich (a separate process); peak RSS
is the child's own high-water mark (VmHWM). The 100-, 1,000- and 3,000-asset libraries are copies of the test JPEGs made
distinct by a comment segment, so every asset is downloaded, decoded and embedded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import API_KEY, API_KEY_ENV, PHOTOS, REPO, config_text, peak_memory_probe, require_shared
from fake_server import FakeServerProcess


def distinct_copies(count: int, directory: Path) -> list[Path]:
    sources = sorted(p for p in (PHOTOS / "wild").rglob("*.jpg") if p.read_bytes()[:2] == b"\xff\xd8")
    copies = []
    for index in range(count):
        data = sources[index % len(sources)].read_bytes()
        comment = f"facesyncd benchmark copy {index}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        target = directory / f"copy{index:05d}.jpg"
        target.write_bytes(data[:2] + segment + data[2:])
        copies.append(target)
    return copies


def peak_of_sync(files: list[Path]) -> tuple[float, int]:
    """Peak RSS in MB of one `facesyncd sync` over these files, and its exit code."""
    with FakeServerProcess(files) as server:
        directory = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        try:
            config = directory / "config.toml"
            config.write_text(config_text(directory, server.url))
            probe = peak_memory_probe(["--config", str(config), "--log-level", "warning", "sync"])
            result = subprocess.run(
                [sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                cwd=REPO,
                env={**os.environ, API_KEY_ENV: API_KEY},
            )
            return int(result.stderr.strip().splitlines()[-1]) / 1024, result.returncode
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> list[tuple[str, str, str]]:
    require_shared()
    photos = sorted(
        p for folder in ("wild", "groups", "noface", "edge") for p in (PHOTOS / folder).rglob("*") if p.is_file()
    )
    photos = [p for p in photos if p.name != "LABELS.tsv"]
    peak_photos, code = peak_of_sync(photos)
    print(f"sync over the {len(photos)} test photos (one 6000x4000): peak RSS {peak_photos:.0f} MB (exit {code})")
    scratch = Path(tempfile.mkdtemp(prefix="bench-copies-"))
    try:
        peaks = {}
        for count in (100, 1_000, 3_000):
            peaks[count], code = peak_of_sync(distinct_copies(count, scratch))
            print(f"sync over {count} distinct assets: peak RSS {peaks[count]:.0f} MB (exit {code})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [
        (
            "peak RSS, sync of the test photos",
            f"{peak_photos:.0f} MB",
            f"< 1500 MB: {'yes' if peak_photos < 1500 else 'NO'}",
        ),
        (
            "peak RSS, 100 vs 1,000 assets",
            f"{peaks[100]:.0f} vs {peaks[1_000]:.0f} MB",
            f"{peaks[1_000] / peaks[100]:.2f}x (flat ~1.0)",
        ),
        (
            "peak RSS, 1,000 vs 3,000 assets",
            f"{peaks[1_000]:.0f} vs {peaks[3_000]:.0f} MB",
            f"{peaks[3_000] / peaks[1_000]:.2f}x (flat ~1.0)",
        ),
    ]


if __name__ == "__main__":
    main()
