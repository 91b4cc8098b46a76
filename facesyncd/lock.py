"""One process at a time writes a state directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import AlreadyRunning, LocalWriteError

LOCK_FILE = "facesyncd.lock"


def _try_lock(descriptor: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on state_dir for the duration; AlreadyRunning if another process has it.

    The kernel drops the lock when the process dies, kill -9 included, so a stale file never blocks.
    """
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise LocalWriteError(
            f"cannot write in the state directory {state_dir}: {error.strerror or error} "
            f"(it must be writable by the user facesyncd runs as)"
        ) from error
    try:
        if not _try_lock(descriptor):
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() if hasattr(os, "pread") else ""
            raise AlreadyRunning(
                f"another facesyncd process{f' (pid {holder})' if holder else ''} is using {state_dir}; "
                f"`facesyncd status` works meanwhile"
            )
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        yield
    finally:
        os.close(descriptor)
