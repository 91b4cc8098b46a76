"""`.fsz` bundles: a faceset as one zip of its PNGs, as face tools (roop-unleashed) read them.

A bundle is its members, named in order, and is written straight from their files: never held in
memory (a faceset of 3,000 faces makes a bundle of 1 GB, which was built in memory, copied, and read
back whole to compare with the one on disk: 3 GB at once), nor made at all for a folder that already
holds it (an export that compares every folder read every PNG of the library to build every bundle).
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

# Read from a member's file at a time (copied into the zip, or checksummed).
_CHUNK = 1 << 20
# Every member's date: the same faces make the same bytes.
_DATE = (2000, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """A zip of these files under these names, in this order; stored, not compressed (PNGs are)."""

    members: tuple[tuple[str, Path], ...]  # (name in the zip, the file)

    def write(self, target: Path) -> None:
        """The zip at `target` (a path of its own: see write_atomic), a chunk of a file at a time."""
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
            for name, path in self.members:
                info = zipfile.ZipInfo(name, date_time=_DATE)
                info.external_attr = 0o644 << 16
                with path.open("rb") as source, archive.open(info, "w") as entry:
                    shutil.copyfileobj(source, entry, _CHUNK)

    def written_at(self, target: Path) -> bool:
        """Whether `target` holds this bundle: the same names in the same order, each stored with the
        size and checksum of its file now (the zip's own listing is read, and the members' files)."""
        try:
            with zipfile.ZipFile(target) as archive:
                entries = archive.infolist()
        except (OSError, zipfile.BadZipFile, ValueError, EOFError):
            return False
        if [entry.filename for entry in entries] != [name for name, _ in self.members]:
            return False
        try:
            if any(
                entry.compress_type != zipfile.ZIP_STORED or entry.file_size != path.stat().st_size
                for entry, (_, path) in zip(entries, self.members, strict=True)
            ):
                return False
            return all(entry.CRC == _checksum(path) for entry, (_, path) in zip(entries, self.members, strict=True))
        except OSError:
            return False


def _checksum(path: Path) -> int:
    """The file's CRC-32, as a zip stores it."""
    crc = 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc
