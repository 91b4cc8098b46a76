"""Helpers shared by the benchmarks: test data location, the fake server, timing."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fake Immich server lives with the tests

SHARED = Path(os.environ.get("FACESYNCD_SHARED", REPO.parent / "shared")).resolve()
PHOTOS = SHARED / "testdata" / "photos"
TEST_PACK = SHARED / "testdata" / "models" / "buffalo_test"
API_KEY = "bench-key-0123456789abcdef"
API_KEY_ENV = "FACESYNCD_BENCH_KEY"


def require_shared() -> None:
    if not TEST_PACK.is_dir():
        sys.exit(f"benchmarks need the test data at {SHARED} (set FACESYNCD_SHARED)")


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def config_text(directory: Path, url: str, *, extra_faces: str = "", extra: str = "") -> str:
    return (
        f'state_dir = "{directory / "state"}"\nfacesets_dir = "{directory / "facesets"}"\n{extra}\n'
        f'[[immich]]\nname = "bench"\nurl = "{url}"\napi_key_env = "{API_KEY_ENV}"\n'
        f'[model]\npack = "{TEST_PACK}"\nproviders = ["CPUExecutionProvider"]\n'
        f"[faces]\n{extra_faces}\n"
    )


def peak_memory_probe(arguments: list[str]) -> str:
    """Python code that runs `facesyncd <arguments>` and prints its peak resident memory (kB) last on
    stderr. VmHWM is this process's own high-water mark; ru_maxrss is not usable here, as Linux
    carries the parent's resident size over fork and exec into it."""
    return (
        "import runpy, sys\n"
        f"sys.argv = ['facesyncd', *{arguments!r}]\n"
        "code = 0\n"
        "try:\n    runpy.run_module('facesyncd', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code or 0\n"
        "peak = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(peak, file=sys.stderr)\nsys.exit(code)\n"
    )
