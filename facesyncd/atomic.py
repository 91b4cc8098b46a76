"""Files replaced whole: written beside their final name (or in their tree's scratch folder, see
Scattered), synced, renamed into place.

A crash (kill -9, a power cut) leaves the old file or the new one, never half of either. Crops, the
face index and its sidecar, the daemon's state file and the faceset tree's marker all go through here.
Such a file gets the mode any new file gets (0666 less the umask), not mkstemp's 0600: another user in
the group (`UMask=0027`) reads the exports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PREFIX = ".tmp-"


def _read_umask() -> int:
    """The process's umask, without changing it: Linux says it in /proc (os.umask can only read it by
    setting it, and another thread creating a file meanwhile would get the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_START


def _umask_at_start() -> int:
    # Read once, when the module is imported (single-threaded then), where /proc is not at hand.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK_AT_START = _umask_at_start()


def new_file_mode() -> int:
    """The mode a file made now gets: 0666 less the umask."""
    return 0o666 & ~_read_umask()


def write_atomic(
    path: Path,
    content: bytes | Callable[[Path], None],
    *,
    mode: int | None = None,
    durable: bool = True,
    scratch: Path | None = None,
) -> None:
    """Replace `path` with `content`: bytes, or a function that writes the file at the path it is given
    (for libraries that only write to a file name, such as hnswlib). `mode`: for a secret (0600);
    else the umask decides. `durable`: on disk before it replaces the file (a power cut then leaves
    the old content or the new); without it, a kill still leaves one or the other, and a write
    costs no flush (files of a cache, written by the hundred). `scratch`: the folder the file is
    written in first (on the same file system; see Scattered), else beside `path`."""
    handle, name = tempfile.mkstemp(prefix=f"{PREFIX}{path.name}.", dir=scratch or path.parent)
    temporary = Path(name)
    try:
        if callable(content):
            os.close(handle)
            content(temporary)
            if durable:
                with temporary.open("rb") as written:
                    os.fsync(written.fileno())
        else:
            with os.fdopen(handle, "wb") as output:
                output.write(content)
                output.flush()
                if durable:
                    os.fsync(output.fileno())
        os.chmod(temporary, new_file_mode() if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_leftovers(directory: Path, *names: str) -> None:
    """Temporary files of a process that was killed while writing in `directory`: of the files
    `names` only, when given (other writers may be at work there)."""
    # One listing, matched by prefix: glob's pattern matching per entry cost 0.9 CPU-s over the
    # 500,000 crops of a large library.
    prefixes = tuple(f"{PREFIX}{name}." for name in names) or (PREFIX,)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(prefixes):
            Path(entry.path).unlink(missing_ok=True)


# The folder of a Scattered tree its files are written in first.
SCRATCH = "scratch"


class Scattered:
    """A tree of many files in many folders (the crops, the swap PNGs: 500,000 in 256 folders at
    500,000 faces), each written whole through one scratch folder beside them, so that what a killed
    process left half-written is looked for there alone (looking through every folder cost each new
    process 0.55-1.1 CPU-s over 500,000 crops; the scratch folder alone, under 1 ms). A tree that has
    no scratch folder yet (written in place, by an older facesyncd) is looked through whole once, then
    gets one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._scratch: Path | None = None

    def write(self, path: Path, content: bytes | Callable[[Path], None], *, durable: bool = True) -> None:
        """write_atomic into the tree (`path` is in one of its folders)."""
        if self._scratch is None and (self.directory / SCRATCH).is_dir():
            self._scratch = self.directory / SCRATCH
        scratch = self._scratch
        try:
            write_atomic(path, content, durable=durable, scratch=scratch)
        except FileNotFoundError:
            if scratch is None or scratch.is_dir():
                raise
            # The tree was lost meanwhile (a user deleted it; its owner makes its folders again):
            # in place, until a look for leftovers makes the scratch folder again.
            self._scratch = None
            write_atomic(path, content, durable=durable)

    def remove_leftovers(self) -> None:
        """Temporary files of a process killed while writing into the tree."""
        scratch = self.directory / SCRATCH
        if scratch.is_dir():
            remove_leftovers(scratch)
        elif self.directory.is_dir():
            for folder in self.directory.iterdir():
                if folder.is_dir():
                    remove_leftovers(folder)
            scratch.mkdir(exist_ok=True)
        self._scratch = None  # (looked for again at the next write)

    def made(self) -> None:
        """The tree was just made, empty: nothing to look through, its scratch folder now."""
        (self.directory / SCRATCH).mkdir(parents=True, exist_ok=True)
        self._scratch = None
