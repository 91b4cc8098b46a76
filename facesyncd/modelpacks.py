"""`facesyncd model fetch`: an insightface model pack, downloaded once, checked and unpacked where the
config looks for it ([model] pack: a folder, or a name under $INSIGHTFACE_HOME/models).

facesyncd never downloads a model by itself (a sync with no pack stops with the command to run): this
is the user's explicit step, replacing `curl` and `unzip`, which a minimal Debian lacks. The download's
sha256 is checked against a pinned value before anything is unpacked; a pack facesyncd knows no checksum
of needs both --url and --sha256. The zip is read member by member: only plain `.onnx` files are
unpacked (a member naming a path out of the folder, a link, anything else is skipped), into a folder
beside the target that is renamed into place, so an interrupted fetch leaves nothing half-unpacked.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ModelError

CHUNK = 1 << 20


@dataclass(frozen=True)
class PackSource:
    """Where a pack is published, and what its zip's bytes are."""

    url: str
    sha256: str
    size: int | None = None


# insightface's own release of buffalo_l (v0.7): the checksum of the 288,621,354-byte zip.
KNOWN_PACKS = {
    "buffalo_l": PackSource(
        "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        288_621_354,
    ),
}


@dataclass(frozen=True)
class Fetched:
    folder: Path
    files: list[str]
    downloaded: int


def source_of(name: str, url: str | None, sha256: str | None) -> PackSource:
    """The pack's source: a known pack's pinned one, or the URL and checksum given."""
    if url and sha256:
        return PackSource(url, sha256.lower())
    if url or sha256:
        raise ModelError("--url and --sha256 go together: a download is only unpacked once its checksum matches")
    known = KNOWN_PACKS.get(name)
    if known is None:
        raise ModelError(
            f"facesyncd knows no published checksum for a pack named {name!r} (it knows: "
            f"{', '.join(sorted(KNOWN_PACKS))}): give --url and --sha256"
        )
    return known


def fetch(
    source: PackSource,
    folder: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> Fetched:
    """Download `source`, check it and unpack its models into `folder`; `progress(bytes so far, total)`
    as it comes. A folder that already holds .onnx files is kept unless `force`."""
    if folder.is_dir() and any(folder.glob("*.onnx")) and not force:
        raise ModelError(f"{folder} holds a model pack already: give --force to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    received = 0
    with tempfile.TemporaryDirectory(prefix=".facesyncd-fetch-", dir=folder.parent) as scratch:
        archive = Path(scratch) / "pack.zip"
        with archive.open("wb") as output:
            for chunk, total in _download(source.url):
                digest.update(chunk)
                output.write(chunk)
                received += len(chunk)
                progress(received, total or source.size)
        found = digest.hexdigest()
        if found != source.sha256:
            raise ModelError(
                f"the download from {source.url} has sha256 {found}, not {source.sha256}: refused, nothing "
                "unpacked (a changed or damaged file; download it again, or check the URL)"
            )
        unpacked = Path(scratch) / "pack"
        files = _unpack(archive, unpacked)
        if not files:
            raise ModelError(f"the zip from {source.url} holds no .onnx model: nothing unpacked")
        if folder.exists():
            retired = Path(scratch) / "replaced"
            folder.rename(retired)
        unpacked.rename(folder)
    return Fetched(folder, files, received)


def _download(url: str) -> Iterator[tuple[bytes, int | None]]:
    """The body at `url` in chunks, with its announced length (GitHub answers with a redirect)."""
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(60.0)) as response:
            if response.status_code != 200:
                raise ModelError(f"downloading {url}: the server answered {response.status_code}")
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            for chunk in response.iter_bytes(CHUNK):
                yield chunk, total
    except httpx.HTTPError as error:
        raise ModelError(f"downloading {url}: {type(error).__name__}: {error}") from None


def _unpack(archive: Path, into: Path) -> list[str]:
    """The zip's .onnx files, flat into `into` (the published zips hold them at the top, or under one
    folder named like the pack)."""
    into.mkdir()
    names: list[str] = []
    try:
        with zipfile.ZipFile(archive) as opened:
            for member in opened.infolist():
                path = PurePosixPath(member.filename)
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if member.is_dir() or is_link or path.suffix.lower() != ".onnx" or ".." in path.parts:
                    continue
                if path.name in names:
                    raise ModelError(f"the zip holds two models named {path.name}: which one is meant is unclear")
                with opened.open(member) as source, (into / path.name).open("wb") as target:
                    shutil.copyfileobj(source, target, CHUNK)
                names.append(path.name)
    except zipfile.BadZipFile as error:
        raise ModelError(f"the download is not a zip file ({error}): nothing unpacked") from None
    return sorted(names)
