"""Files made by root in folders that belong to the service's user go back to that user.

The service runs as its own user (systemd's DynamicUser); an admin command run with sudo would leave
root-owned files behind (the database's -wal and -shm, the index, crops, faceset folders) that the
service can then neither open nor replace. When root works in a state directory another user owns,
everything in it and in the facesets directory is handed back to that user, before the command and
after it, whatever way it ends. The group is the state directory's, but in a set-group-ID folder (the
export guide's recipe for sharing the facesets with a group) it is that folder's, as for the service's files.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def kept_by_owner(state_dir: Path, *others: Path) -> Iterator[None]:
    owner = _foreign_owner(state_dir)
    if owner is None:
        yield
        return
    uid, gid = owner
    log.info("running as root in %s, which belongs to uid %d: its files stay that user's", state_dir, uid)
    folders = [state_dir, *others]
    _hand_back(folders, uid, gid)
    try:
        yield
    finally:
        _hand_back(folders, uid, gid)


def _foreign_owner(state_dir: Path) -> tuple[int, int] | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        status = state_dir.stat()
    except OSError:
        return None
    return None if status.st_uid == 0 else (status.st_uid, status.st_gid)


def _hand_back(folders: list[Path], uid: int, state_gid: int) -> None:
    for folder in folders:
        try:
            status = folder.stat()
        except OSError:
            continue
        if not stat.S_ISDIR(status.st_mode):
            continue
        gid = status.st_gid if status.st_mode & stat.S_ISGID else state_gid
        _chown(folder, uid, gid)
        for root, directories, files in os.walk(folder):
            for name in directories + files:
                _chown(Path(root) / name, uid, gid)


def _chown(path: Path, uid: int, gid: int) -> None:
    try:
        status = path.lstat()
        if (status.st_uid, status.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as error:  # gone meanwhile, or a file system without owners
        log.debug("cannot hand %s back to uid %d: %s", path, uid, error)
