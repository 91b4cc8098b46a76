"""The facesets shared with another OS user, as the README's recipe sets it up: the service writes with
`UMask=0027` into a set-group-ID folder of a group the reader belongs to; the reader reads every file.

These tests need root (to be two users at once): CI runs the suite as root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PHOTOS, add_photos, requires_shared, run_cli, write_config
from fake_immich import FakeImmich

pytestmark = [
    requires_shared,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX users and groups"),
]

SERVICE = 64_801  # the service's user (DynamicUser) and its own group
READER = 64_802  # another user: roop-unleashed's, a backup's, a Samba share's
SHARED = 64_803  # the group both belong to ("facesets" in the README)


def _as_root() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("being two users at once needs root: run the suite as root (CI does) to test sharing")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: it runs the reader as another user")


@pytest.fixture
def shared_home() -> Iterator[Path]:
    """A folder the reader can reach (pytest's own temporary folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="facesyncd-sharing-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def unreadable(folder: Path) -> list[str]:
    """What the reader (in the shared group only) cannot read under `folder`: every file is read
    whole, every folder listed, as that user."""
    script = 'cd "$1" && find . -mindepth 1 \\( -type d -exec ls {} + -o -type f -exec cat {} + \\) >/dev/null; exit 0'
    result = subprocess.run(
        ["setpriv", f"--reuid={READER}", f"--regid={READER}", f"--groups={SHARED}", "sh", "-c", script, "-", folder],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("layout", ["swap", "crops"])
def test_a_user_in_the_shared_group_reads_every_exported_file(fake: FakeImmich, shared_home: Path, layout: str) -> None:
    _as_root()
    facesets = shared_home / "facesets"
    facesets.mkdir()
    os.chown(facesets, 0, SHARED)
    facesets.chmod(0o2750)  # `install -d -m 2750 -g facesets`
    state = shared_home / "state"
    state.mkdir(mode=0o750)
    add_photos(fake, [*(f"wild/obama/obama{n}.jpg" for n in ("", 1, 2)), "wild/biden"])
    config = write_config(shared_home, fake.url, extra=f'[export]\nformat = "{layout}"\ntop_n = 2\n')

    before = os.umask(0o027)  # the unit's UMask=0027
    try:
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
        assert list(facesets.glob("faceset_*")), result.stdout
        assert unreadable(facesets) == []
        assert unreadable(state) != [], "the reader reads the private state directory: the test proves nothing"

        # An admin command run with sudo in the service's state directory: its files go back to the
        # service's user, and the shared folder's files keep the shared group.
        for root, directories, files in os.walk(state):
            for name in [root, *(os.path.join(root, entry) for entry in directories + files)]:
                os.chown(name, SERVICE, SERVICE, follow_symlinks=False)
        fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama3.jpg", label="wild/obama/obama3.jpg")
        result = run_cli("--config", str(config), "sync")
        assert result.returncode == 0, result.stderr
    finally:
        os.umask(before)
    assert unreadable(facesets) == []
    for root, directories, files in os.walk(facesets):
        for name in directories + files:
            status = os.lstat(os.path.join(root, name))
            assert (status.st_uid, status.st_gid) == (SERVICE, SHARED), os.path.join(root, name)
            assert stat.S_IMODE(status.st_mode) & 0o007 == 0, f"{name} is readable by everyone"
