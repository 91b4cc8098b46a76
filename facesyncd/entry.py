"""The console script's entry point. The command line's imports take a moment (typer, httpx, the
settings); a Ctrl-C during them is an interrupt like any other (one line, exit 130), not Python's
traceback."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("facesyncd: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    run()
