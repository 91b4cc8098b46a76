"""Adopt an existing tree of faceset folders: facesyncd's own, or the older script pipeline's.

What a tree may hold, and what becomes of it:
- `faceset_NNN/` with face images (JPEG, PNG, ...): identity NNN, the number kept; each image's
  largest face joins it. New facesets number past the highest number the tree shows.
- `faceset_NNN_<label>/` (the older pipeline's era splits, one person at one age): a labelled sub-set
  of identity NNN, exported back under the same folder name.
- `_thin/`, `_masked/`, `_merged/`, `_candidates/` (anything under them): the user's decisions. Their
  faces are held aside: they never form a faceset and never join one, and neither does the same face
  arriving later from Immich.
- `manifest.json` (the older pipeline's) or `faceset.json` (facesyncd's): where each image was cut
  from (`source`: an Immich asset id, or a photo's path; `bbox`) and its quality where given. When
  that photo arrives from Immich, its own face takes the imported face's place: the same face, not a
  second one.
- `NAME.txt`: the identity's name. `.fsz` bundles are ignored (their PNGs are the same crops); a file
  that is not an image is reported, never decoded.

Nothing in the tree is modified. Importing again only adds files that are new; importing into a
state that already has identities with the tree's numbers (from elsewhere) is refused unless `merge`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .config import FaceSettings
from .crops import Crops
from .embedder import Embedder
from .embedding import cut_faces, pad, save_faces
from .errors import FacesyncError, ImageError
from .export import (
    FACESET_RE,
    FOLDER_RE,
    MANIFEST,
    MAX_FACESET_NUMBER,
    NAME_FILE,
    SWAP_MANIFEST,
    faceset_number,
    highest_exported,
    read_json,
    read_text,
)
from .imaging import DecodedImage, decode_image
from .immich import ASSET_ID_RE
from .layouts import Layout
from .models import DecodeSource, DetectedFace, ImportProvenance, Quality
from .progress import Reporter, SilentReporter
from .store import Store

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".tif", ".tiff", ".bmp", ".gif"}
HELD_FOLDERS = {"_thin": "thin", "_masked": "masked", "_merged": "merged", "_candidates": "candidates"}
SKIPPED_NAMES = {MANIFEST, SWAP_MANIFEST, NAME_FILE}
NUMBER_IN_NAME = re.compile(r"faceset_(\d+)")


@dataclass
class ImportReport:
    identities: list[int] = field(default_factory=list)
    imported: int = 0
    already: int = 0
    held: int = 0
    forgotten: int = 0  # files of people `faceset forget` removed
    failed: dict[str, str] = field(default_factory=dict)  # image -> why no face came of it
    not_images: list[str] = field(default_factory=list)  # files left alone, never decoded
    outside: list[str] = field(default_factory=list)  # links out of the tree, never followed


class _Tree:
    """The tree being imported: nothing outside it is read. A link (a face file, a faceset folder, a
    held folder) that leads out of it is left alone, and so is anything that is not a plain file
    where a file is read (a named pipe would block the import for ever)."""

    # A manifest or NAME.txt larger than this is not one a faceset tree holds.
    MAX_TEXT_BYTES = 16 * 1024 * 1024

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.outside: list[str] = []

    def inside(self, path: Path) -> bool:
        try:
            inside = path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:
            self.outside.append(shown(path))
        return inside

    def regular_file(self, path: Path) -> bool:
        try:
            return stat.S_ISREG(path.stat().st_mode) and self.inside(path)
        except OSError:
            return False

    def text(self, path: Path) -> str | None:
        """A small text file of the tree (NAME.txt), or None (see export.read_text)."""
        return read_text(path, self.MAX_TEXT_BYTES) if self.inside(path) else None

    def json(self, path: Path) -> Any | None:
        """A small JSON file of the tree (a manifest), or None (see export.read_json)."""
        return read_json(path, self.MAX_TEXT_BYTES) if self.inside(path) else None


@dataclass(frozen=True)
class _Folder:
    """One folder of images to import, and what its faces become."""

    path: Path
    number: int | None  # the identity, None for a held folder
    subset: str | None = None
    held: str | None = None


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _largest_face(embedder: Embedder, image: DecodedImage) -> tuple[list[DetectedFace], DecodedImage]:
    # the older pipeline's tight, aligned crops (112x112) defeat the detector without a border
    for candidate in (image, pad(image)[0]):
        faces = embedder.faces(candidate, min_face_px=0)
        if faces:
            largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            return [largest], candidate
    return [], image


def _entries(folder: Path, tree: _Tree) -> list[dict[str, Any]]:
    """The faces[] of a folder's manifest, facesyncd's or the older pipeline's."""
    for name in (MANIFEST, SWAP_MANIFEST):
        data = tree.json(folder / name)
        faces = data.get("faces") if isinstance(data, dict) else None
        if isinstance(faces, list):
            return [entry for entry in faces if isinstance(entry, dict)]
    return []


def _entries_by_file(entries: list[dict[str, Any]], images: list[str]) -> dict[str, dict[str, Any]]:
    """Which manifest entry describes which image: by the entry's file name; a manifest whose
    entries name no file (keyed by `source` and `bbox` only) lists the folder's images in their name
    order (best first, as the pipeline named them), so it is read in that order when it lists
    exactly as many faces as the folder has images, and not at all otherwise."""
    named = {file: entry for entry in entries if (file := _file_of(entry))}
    if named or len(entries) != len(images):
        return named
    return dict(zip(images, entries, strict=True))


def _file_of(entry: dict[str, Any]) -> str | None:
    for key in ("file", "png", "image", "crop", "path"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return PurePosixPath(value.replace("\\", "/")).name
    return None


def _provenance(entry: dict[str, Any]) -> ImportProvenance | None:
    """Where a face was cut from: an Immich asset id (facesyncd's `asset_id`, or a `source` that is
    one), else the file name of the `source` photo; and its box there."""
    try:
        bbox = tuple(float(v) for v in entry["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(bbox) != 4:
        return None
    source = entry.get("source")
    source = source if isinstance(source, str) and source else None
    asset = entry.get("asset_id") if isinstance(entry.get("asset_id"), str) else source
    if isinstance(asset, str) and ASSET_ID_RE.match(asset):
        return ImportProvenance(source, asset.lower(), (bbox[0], bbox[1], bbox[2], bbox[3]))
    if source is None:
        return None
    name = PureWindowsPath(source).name if "\\" in source else PurePosixPath(source).name
    return ImportProvenance(source, None, (bbox[0], bbox[1], bbox[2], bbox[3]), source_name=name or None)


def _quality(entry: dict[str, Any]) -> Quality | None:
    """The quality the tree recorded (measured on the original photo), where it has all five parts
    (frontality and symmetry may be null: measured by an engine without landmarks)."""
    recorded: dict[str, Any] = entry["quality"] if isinstance(entry.get("quality"), dict) else entry
    try:
        return Quality.from_parts(recorded)
    except (KeyError, TypeError, ValueError):
        return None


def _folders(root: Path, tree: _Tree) -> Iterator[_Folder]:
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or not tree.inside(entry):
            continue
        if entry.name in HELD_FOLDERS:
            held = HELD_FOLDERS[entry.name]
            yield _Folder(entry, None, held=held)
            for inner in sorted(path for path in entry.rglob("*") if path.is_dir() and tree.inside(path)):
                yield _Folder(inner, None, held=held)
            continue
        match = FOLDER_RE.match(entry.name)
        if match and (number := faceset_number(match.group(1))) is not None:
            yield _Folder(entry, number, subset=match.group(2))
        elif match:
            log.warning("import: %s: a faceset number over %d, left alone", entry, MAX_FACESET_NUMBER)


def _numbers(root: Path, tree: _Tree) -> list[int]:
    """Every faceset number the tree shows, in folder names anywhere in it (held folders too)."""
    return [
        number
        for path in root.rglob("*")
        if path.is_dir()
        and (match := NUMBER_IN_NAME.search(path.name))
        and (number := faceset_number(match.group(1))) is not None
        and tree.inside(path)
    ]


def import_facesets(
    root: Path,
    store: Store,
    embedder: Embedder,
    crops: Crops,
    *,
    settings: FaceSettings,
    merge: bool = False,
    layout: Layout,
    reporter: Reporter | None = None,
) -> ImportReport:
    """Import the tree at `root` (see the module's docstring). What the export `layout` cuts from each
    image (the swap layout's PNGs) is cut while the image is at hand (later it could only be cut from
    the tighter crop)."""
    max_pixels = settings.max_image_megapixels * 1_000_000
    if not root.is_dir():
        raise FacesyncError(f"{root}: not a directory")
    tree = _Tree(root)
    folders = [folder for folder in _folders(root, tree) if folder.number is None or folder.number > 0]
    if not any(folder.number is not None and FACESET_RE.match(folder.path.name) for folder in folders):
        raise FacesyncError(f"{root}: no faceset_NNN folders found")
    _refuse_taken_numbers(root, store, folders, merge)
    embedder.load()
    store.check_model(embedder.name, embedder.dimension)
    # No number the tree ever used goes to another person: the highest in its folder names, held
    # ones included, and the highest facesyncd's own export recorded.
    store.raise_number_floor(max([highest_exported(root), *_numbers(root, tree)]))
    report = ImportReport()
    names: dict[int, str] = {}
    reporter = reporter or SilentReporter()
    reporter.stage("importing folders", len(folders))
    for folder in folders:
        reporter.advance()
        if folder.number is not None and folder.number not in report.identities:
            report.identities.append(folder.number)  # an era folder alone makes its identity too
            with store.transaction():
                store.ensure_identity(folder.number, "import")
        if folder.number is not None and folder.subset is None and (name := _name(folder.path, tree)):
            names[folder.number] = name
        files = sorted(
            path
            for path in folder.path.iterdir()
            if tree.regular_file(path)
            and not path.name.startswith(".")
            and path.name not in SKIPPED_NAMES
            and path.suffix.lower() != ".fsz"
        )
        unnamed = [path for path in files if not _utf8(str(path))]
        for path in unnamed:  # the store keeps paths as UTF-8 text
            report.failed[shown(path)] = "its name is not UTF-8: left alone (rename it to import it)"
        files = [path for path in files if path not in unnamed]
        report.not_images.extend(str(path) for path in files if path.suffix.lower() not in IMAGE_SUFFIXES)
        images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        entries = _entries_by_file(_entries(folder.path, tree), [path.name for path in images])
        for path in images:
            key = str(path.resolve())
            if store.import_state(key) == "done" or _still_here(entries.get(path.name, {}), store):
                report.already += 1
                continue
            entry = entries.get(path.name, {})
            _import_file(path, key, folder, entry, store, embedder, crops, layout, max_pixels, report)
    known = store.identity_names()
    store.set_identity_names({number: name for number, name in names.items() if not known.get(number)})
    report.outside = sorted(set(tree.outside))
    if report.outside:
        log.warning("import: %d links lead out of %s: left alone", len(report.outside), root)
    return report


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name's undecodable bytes, kept as surrogates
        return False
    return True


def shown(path: Path) -> str:
    """A path as it can be printed and stored, whatever bytes its name holds."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _still_here(entry: dict[str, Any], store: Store) -> bool:
    """Whether the image is facesyncd's own export of a face this state still has (its folders are
    imported in place, or imported again): the face id its manifest gives, with the same box. A
    database started over may give that id to another face, which has another box."""
    face_id = entry.get("face_id")
    if not isinstance(face_id, int) or isinstance(face_id, bool) or not 0 < face_id < 2**63:
        return False
    box = store.face_box(face_id)
    try:
        given = [round(float(v), 1) for v in entry["bbox"]]
    except (KeyError, TypeError, ValueError):
        return False
    return box is not None and [round(v, 1) for v in box] == given


def _name(folder: Path, tree: _Tree) -> str | None:
    text = tree.text(folder / NAME_FILE)
    return (text or "").strip() or None


def _refuse_taken_numbers(root: Path, store: Store, folders: list[_Folder], merge: bool) -> None:
    """Numbers the state already gives to identities that did not come from this tree: importing
    would put two people under one number, unless the user says they are one (`merge`)."""
    if merge:
        return
    ours = store.import_identities_under(str(root.resolve()))
    taken = sorted(
        {folder.number for folder in folders if folder.number is not None} & set(store.identity_numbers()) - ours
    )
    if taken:
        listing = ", ".join(f"{number:03d}" for number in taken[:10]) + (" ..." if len(taken) > 10 else "")
        raise FacesyncError(
            f"{root}: the facesets {listing} already exist here (not from this tree); importing would add the "
            f"tree's faces to them: give --merge if they are the same people"
        )


def _import_file(
    path: Path,
    key: str,
    folder: _Folder,
    entry: dict[str, Any],
    store: Store,
    embedder: Embedder,
    crops: Crops,
    layout: Layout,
    max_pixels: int,
    report: ImportReport,
) -> None:
    sha256, size = _sha256(path)
    if store.is_forgotten_file(sha256):  # `faceset forget`: never imported again
        report.forgotten += 1
        return
    try:
        faces: list[DetectedFace] = []
        image: DecodedImage | None = None
        if not store.blob_exists(sha256):
            image = decode_image(path, max_pixels=max_pixels)
            faces, image = _largest_face(embedder, image)
            if not faces:
                raise ImageError("no face found")
            if store.forgotten_in(sha256, [faces[0].bbox]):  # a photo of a forgotten person's
                report.forgotten += 1
                return
        photo = None
        if image is not None:
            recorded = _quality(entry)
            photo = cut_faces(
                image, sha256, size, DecodeSource.IMPORT, faces, crops=crops, layout=layout, recorded_quality=recorded
            )
        with store.transaction():
            if photo is not None:
                save_faces(store, photo, embedder.name)
            blob_faces = store.faces_of_blob(sha256)
            if not blob_faces:
                raise ImageError("no face found")
            store.record_import(
                key,
                sha256,
                folder.number,
                face_id=blob_faces[0][0],
                reason=None,
                provenance=_provenance(entry),
                subset=folder.subset,
                held=folder.held,
            )
        if folder.held:
            report.held += 1
        else:
            report.imported += 1
    except ImageError as error:
        with store.transaction():
            store.record_import(key, sha256, folder.number, face_id=None, reason=str(error), held=folder.held)
        report.failed[key] = str(error)  # the command lists them: once, not logged as well
        log.debug("import: %s: %s", path, error)
