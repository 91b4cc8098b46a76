"""One exception tree for facesyncd.

Each boundary (HTTP, SQLite, the model runtime, the file system) translates its library's errors into
one of these, so the CLI can turn any of them into one line and a documented exit code.
"""

from __future__ import annotations


class FacesyncError(Exception):
    """Base of every error facesyncd raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        # The last line of defence: no message of ours carries an API key, whatever was quoted in it.
        from .redact import scrub

        super().__init__(*(scrub(arg) if isinstance(arg, str) else arg for arg in args))


class ConfigError(FacesyncError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class ImmichAuthError(FacesyncError):
    """Immich refused the API key (401/403)."""

    exit_code = 3


class PermissionMissing(ImmichAuthError):
    """Immich refused a request for the key's permissions (403): fatal for what facesyncd needs, a
    missed extra for what it can do without (a count, the partner list)."""


class ImmichUnreachable(FacesyncError):
    """Immich could not be reached, or kept failing after retries."""

    exit_code = 4


class ModelError(FacesyncError):
    """The face model pack is missing or unusable."""

    exit_code = 5


class EngineUnavailable(ModelError):
    """No face engine answers (every configured Immich ML service is down): the cycle stops, nothing
    is lost, and the next one tries again."""


class StoreError(FacesyncError):
    """The state database cannot be opened, migrated or written."""

    exit_code = 6


class AlreadyRunning(FacesyncError):
    """Another facesyncd process holds the state directory."""

    exit_code = 7


class Interrupted(FacesyncError):
    """A stop was requested (SIGTERM, SIGINT); work in hand was finished or rolled back."""

    exit_code = 130


class LocalWriteError(FacesyncError):
    """A local file could not be written: disk full, read-only file system, permissions."""

    exit_code = 8


def whose(path: object) -> str:
    """ " (it belongs to NAME, mode 750)" for a file or folder, or "" where that cannot be told."""
    import os

    try:
        import pwd

        status = os.stat(str(path))
        owner = pwd.getpwuid(status.st_uid).pw_name
    except (OSError, KeyError, ImportError):
        return ""
    return f" (it belongs to {owner}, mode {oct(status.st_mode & 0o777)[2:]})"


def permission_denied(error: PermissionError) -> LocalWriteError:
    """A file or folder this user may not enter, as one line that says whose it is and how to look:
    a state directory of the service (systemd's DynamicUser keeps it under /var/lib/private, 0700)
    is read with sudo, or shared through a group."""
    import os
    from pathlib import Path

    path = Path(str(error.filename)) if error.filename else None
    if path is None:
        return LocalWriteError(f"permission denied: {error.strerror or error}")
    blocked = path
    for entry in [path, *path.parents]:  # the outermost entry this user cannot enter or read
        wanted = os.X_OK if os.path.isdir(entry) else os.R_OK
        if os.path.exists(entry) and not os.access(entry, wanted):
            blocked = entry
    return LocalWriteError(
        f"permission denied: {path}: this user may not enter {blocked}{whose(blocked)}; run facesyncd as its "
        "owner, or with sudo (an admin command hands the files it makes back to the owner); to let others read "
        "the facesets, see 'Sharing with another user' in docs/export.md"
    )


class AddressInUse(FacesyncError):
    """The review page's address cannot be listened on: another program (another `serve`) has it."""

    exit_code = 10


class OrphanedFacesets(FacesyncError):
    """facesets_dir holds facesyncd's own facesets, but the database is new (it was lost or moved):
    numbering afresh would give their numbers to other people."""

    exit_code = 9


class ImmichError(FacesyncError):
    """A request failed in a way that concerns one asset only (not found, bad answer)."""


class AssetGone(ImmichError):
    """The asset no longer exists on the server (or the key lost access to it)."""


class ImageError(FacesyncError):
    """A file could not be decoded as an image, or is too large to decode safely."""
