"""Files replaced whole: written beside their final name, synced, renamed into place.

A crash (kill -9, a power cut) leaves the old file or the new one, never half of either. Crops, the
face index and its sidecar, the daemon's state file and the faceset tree's marker all go through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PREFIX = ".tmp-"


def write_atomic(path: Path, content: bytes | Callable[[Path], None], *, mode: int | None = None) -> None:
    """Replace `path` with `content`: bytes, or a function that writes the file at the path it is given
    (for libraries that only write to a file name, such as hnswlib)."""
    handle, name = tempfile.mkstemp(prefix=f"{PREFIX}{path.name}.", dir=path.parent)
    temporary = Path(name)
    try:
        if callable(content):
            os.close(handle)
            content(temporary)
            with temporary.open("rb") as written:
                os.fsync(written.fileno())
        else:
            with os.fdopen(handle, "wb") as output:
                output.write(content)
                output.flush()
                os.fsync(output.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_leftovers(directory: Path, *names: str) -> None:
    """Temporary files of a process that was killed while writing in `directory`: of the files
    `names` only, when given (other writers may be at work there)."""
    patterns = [f"{PREFIX}{name}.*" for name in names] or [f"{PREFIX}*"]
    for pattern in patterns:
        for leftover in directory.glob(pattern):
            leftover.unlink(missing_ok=True)
