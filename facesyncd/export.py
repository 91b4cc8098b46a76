"""Faceset folders, written atomically: a cache derived from the store.

Each identity N with live faces gets `facesets_dir/faceset_NNN/`, in one of two layouts:
- crops (the default): one JPEG crop per face and `faceset.json`;
- swap: the faces a face-swap tool should get (swap.py chooses them), one PNG each, best first by
  name, the bundles `faceset_NNN.fsz` (every face) and `faceset_NNN.top.fsz` (the best `top_n`), a
  `manifest.json`, and a `NAME.txt` written once for the user to fill in; `facesets_dir/manifest.json`
  lists every faceset.
A new folder is made beside its final name (`.faceset_NNN.tmp`) and renamed into place. A folder that is
there is brought in line where it stands, only when its content changed (exporting twice changes
nothing), and at the cost of what changed, not of its size: `.facesyncd-pending` first lists every name
about to be added, replaced or removed, then the files change, then the new manifest replaces the old
and the list goes, so a crash anywhere leaves no file of facesyncd's taken for the user's. While the
folders are as the last export left them, a crops folder whose faceset only had faces change is
brought in line from those faces alone (update_marked): the other faces' lines are taken from its
manifest. Switching layout rebuilds each folder once, beside it, and swaps it in.

The folders are shared with people: a file in a faceset folder that facesyncd did not write (notes, a
hand-added photo, NAME.txt) is kept, carried into the rebuilt folder, and reported once (`user_files`
in the manifest lists what was reported). Folders that do not look like `faceset_<digits>` are never
touched; a `faceset_NNN` that facesyncd did not write is moved aside whole, never deleted.
`.facesyncd.json` at the top records the highest faceset number ever exported, so that a tree whose
database was lost can be adopted without giving a number to another person.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import PREFIX as ATOMIC_PREFIX
from .atomic import new_file_mode, remove_leftovers, write_atomic
from .bundles import Bundle
from .crashpoints import checkpoint
from .models import ExportFace

log = logging.getLogger(__name__)

FACESET_RE = re.compile(r"^faceset_(\d+)$")  # a faceset's folder
FOLDER_RE = re.compile(r"^faceset_(\d+)(?:_(.+))?$")  # or one of its labelled sub-sets'
MANIFEST = "faceset.json"  # the crops layout's
SWAP_MANIFEST = "manifest.json"  # the swap layout's, in each folder and at the top
MANIFESTS = (MANIFEST, SWAP_MANIFEST)
NAME_FILE = "NAME.txt"
TOP_FOLDER = "top"  # the swap layout's best top_n PNGs again, loose, for tools that take files
# The manifests' layout (docs/manifest.schema.json): 2 added schema_version, rank, top, file_name,
# taken_at, immich_url, png_box, top_folder and the tree's retired numbers.
SCHEMA_VERSION = 2
PRESERVED = ".facesyncd-preserved"
# In a folder being updated in place, the names being added, replaced or removed: a crash leaves them
# facesyncd's, present or not, until the next export finishes the update and removes this file.
PENDING_FILE = ".facesyncd-pending"
MARKER = ".facesyncd.json"
# The highest faceset number facesyncd gives or adopts: a folder or marker naming a higher one is not
# facesyncd's (a number that large would overflow the store's integers).
MAX_FACESET_NUMBER = 999_999
# A manifest or marker larger than this is not one facesyncd wrote.
MAX_TEXT_BYTES = 64 * 1024 * 1024


# What a file of a folder is made from: a file to link (or copy), bytes, or a bundle of files.
Source = Path | bytes | Bundle


@dataclass
class Plan:
    """What one faceset folder must hold: its manifest (under `manifest_name`), and each file by name,
    as a file to link, bytes to write or a bundle to write from its files. `placeholders` are
    written only where the folder has none (they are the user's from then on)."""

    manifest_name: str
    manifest: dict[str, Any]
    files: dict[str, Source]
    placeholders: dict[str, bytes] = field(default_factory=dict)


def faceset_name(number: int, subset: str | None = None) -> str:
    return f"faceset_{number:03d}" + (f"_{subset}" if subset else "")


def folders(
    faces_by_identity: Mapping[int, Sequence[ExportFace]],
) -> dict[str, tuple[int, str | None, list[ExportFace]]]:
    """Folder name -> (number, sub-set, faces): an identity's faces in its folder, those of a labelled
    sub-set (the older pipeline's era splits) in faceset_NNN_<label>."""
    grouped: dict[str, tuple[int, str | None, list[ExportFace]]] = {}
    for number, faces in faces_by_identity.items():
        for face in faces:
            name = faceset_name(number, face.subset)
            grouped.setdefault(name, (number, face.subset, []))[2].append(face)
    return grouped


def face_file(face: ExportFace) -> str:
    return face_file_of(face.face_id)


def face_file_of(face_id: int) -> str:
    """The name of a face's file in its folder (the crops layout)."""
    return f"face_{face_id:07d}.jpg"


def no_link(face: ExportFace) -> str | None:
    return None


def manifest(
    number: int,
    faces: Sequence[ExportFace],
    subset: str | None = None,
    name: str | None = None,
    link_of: Callable[[ExportFace], str | None] = no_link,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "number": number,
        **({"subset": subset} if subset else {}),
        **({"name": name} if name else {}),
        "faces": [face_entry(face, link_of) for face in faces],
    }


def face_entry(face: ExportFace, link_of: Callable[[ExportFace], str | None] = no_link) -> dict[str, Any]:
    """One face as the crops layout's manifest lists it."""
    return {
        **photo_entry(face, link_of),
        "file": face_file(face),
        "bbox": [round(v, 1) for v in face.bbox],
        "det_score": round(face.det_score, 4),
        "distance": None if face.distance is None else round(face.distance, 4),
        "quality": None if face.quality is None else face.quality.as_dict(),
    }


def photo_entry(face: ExportFace, link_of: Callable[[ExportFace], str | None]) -> dict[str, Any]:
    """Which face of which photo a manifest's entry is (either layout: the keys in this order)."""
    return {
        "face_id": face.face_id,
        "source": face.source,
        "asset_id": face.asset_id,
        "owner": face.owner,
        "file_name": face.file_name,
        "taken_at": face.taken,
        "immich_url": link_of(face),
    }


def read_text(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """A small text file of a faceset tree, or None: missing, not a plain file (a named pipe would block
    the reader for ever), larger than `max_bytes`, or not UTF-8."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) or status.st_size > max_bytes:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_json(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> Any | None:
    """A JSON file of a faceset tree (see read_text), or None: also for what is not JSON, or is nested
    deeper than Python recurses."""
    text = read_text(path, max_bytes)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def faceset_number(text: str) -> int | None:
    """The number a folder name gives (digits), or None when it is beyond MAX_FACESET_NUMBER."""
    number = int(text)
    return number if number <= MAX_FACESET_NUMBER else None


@dataclass(frozen=True)
class Exported:
    """What a faceset's folder holds of its faces, as its manifest says (either layout): the rank of
    each face exported (1: best), those in the top bundle, and why each face left out is."""

    ranks: dict[int, int]
    top: frozenset[int]
    left_out: dict[int, str]

    def status(self, face_id: int) -> str:
        if face_id in self.left_out:
            return f"left out: {self.left_out[face_id]}"
        if face_id in self.top:
            return f"top {self.ranks[face_id]}"
        if face_id in self.ranks:
            return f"exported #{self.ranks[face_id]}"
        return "not exported"


def exported(facesets_dir: Path, number: int) -> Exported | None:
    """What faceset `number`'s folder holds (None: no folder of facesyncd's for it)."""
    folder = facesets_dir / faceset_name(number)
    data = _read_manifest(folder) if folder.is_dir() and not folder.is_symlink() else None
    if data is None:  # (own_facesets would read the manifest to find the folder, and again here)
        return None
    faces = [
        face for face in data.get("faces") or [] if isinstance(face, dict) and isinstance(face.get("face_id"), int)
    ]
    ranks = {face["face_id"]: rank for rank, face in enumerate(faces, 1)}
    top: set[int] = set()
    bundles = [
        bundle for bundle in data.get("bundles") or [] if isinstance(bundle, str) and bundle.endswith(".top.fsz")
    ]
    if any("top" in face for face in faces):  # the swap manifest says which faces the top bundle holds
        top = {face["face_id"] for face in faces if face.get("top") is True}
    elif bundles and folder is not None:  # a manifest from before it did: the bundle's first faces
        top = {face["face_id"] for face in faces[: _top_size(folder, bundles[0])]}
    left = {
        entry["face_id"]: str(entry.get("why") or "")
        for entry in data.get("left_out") or []
        if isinstance(entry, dict) and isinstance(entry.get("face_id"), int)
    }
    return Exported(ranks, frozenset(top), left)


def _top_size(folder: Path, bundle: str) -> int:
    """How many faces the top bundle holds (its zip's entries)."""
    import zipfile

    try:
        with zipfile.ZipFile(folder / bundle) as archive:
            return len([name for name in archive.namelist() if name.lower().endswith(".png")])
    except (OSError, zipfile.BadZipFile):
        return 0


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a folder facesyncd wrote, in either layout."""
    for name in MANIFESTS:
        data = read_json(folder / name)
        if data is None:
            continue
        # Another program's manifest.json (the older pipeline's) is not ours.
        if isinstance(data, dict) and "faces" in data and (name == MANIFEST or data.get("written_by") == "facesyncd"):
            return {**data, "manifest": name} if name != MANIFEST else data
    return None


def _ours(path: Path) -> bool:
    data = read_json(path)
    return isinstance(data, dict) and data.get("written_by") == "facesyncd"


def _our_files(existing: dict[str, Any] | None) -> set[str]:
    """What facesyncd wrote in a folder, as its manifest says."""
    existing = existing or {}
    files = {str(existing.get("manifest", MANIFEST))}
    for face in existing.get("faces") or []:
        if isinstance(face, dict) and isinstance(face.get("file"), str):
            files.add(face["file"])
    files.update(str(name) for name in existing.get("bundles") or [])
    if existing.get("top_folder") == TOP_FOLDER:
        files.add(TOP_FOLDER)
    return files


def _pending(folder: Path) -> set[str]:
    """The names an update in place that did not finish was changing (see PENDING_FILE)."""
    names = read_json(folder / PENDING_FILE)
    if not isinstance(names, list):
        return set()
    pending = {PENDING_FILE, *(name for name in names if _safe_name(name))}
    if any(name.startswith(f"{TOP_FOLDER}/") for name in pending):
        pending.add(TOP_FOLDER)  # made by the update, before its manifest said so
    return pending


def _safe_name(name: object) -> bool:
    """A name a manifest may give one of facesyncd's files: in the folder, or in its top/ (a manifest
    is a file anyone with the folder can edit; nothing it names outside the folder is touched)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    if len(parts) == 2 and parts[0] != TOP_FOLDER:
        return False
    return len(parts) <= 2 and all(part not in ("", ".", "..") for part in parts)


@dataclass(frozen=True)
class _Folder:
    """One of our folders as it is: its manifest (None: not there, or not ours), the entries that
    facesyncd did not write, the plain files at its top, the inode of each entry (read once, from
    one listing), and the names its manifest and an unfinished update call facesyncd's."""

    path: Path
    existing: dict[str, Any] | None
    users: list[str]
    files: frozenset[str]
    inodes: dict[str, int] = field(default_factory=dict)
    ours: frozenset[str] = frozenset()

    @classmethod
    def read(cls, path: Path) -> _Folder:
        existing = _read_manifest(path) if path.is_dir() else None
        if existing is None:
            return cls(path, None, [], frozenset())
        ours = frozenset(_our_files(existing) | _pending(path))
        try:
            entries = list(os.scandir(path))
        except OSError:
            entries = []
        users = sorted(entry.name for entry in entries if _users(entry, ours))
        files = frozenset(entry.name for entry in entries if entry.is_file())
        return cls(path, existing, users, files, {entry.name: entry.inode() for entry in entries}, ours)

    def holds(self, name: str) -> bool:
        return name in self.files if "/" not in name else (self.path / name).is_file()


# A manifest's or the pending list's temporary file, left by a crash while it was written.
_LEFTOVERS = tuple(f"{ATOMIC_PREFIX}{name}." for name in (*MANIFESTS, PENDING_FILE))


def _users(entry: os.DirEntry[str], ours: frozenset[str]) -> bool:
    """Whether an entry of one of our folders is the user's: not named by its manifest (a manifest's
    temporary file, left by a crash while it was written, is facesyncd's too), or a folder (facesyncd
    writes none but top/, whatever a manifest says)."""
    if entry.name == TOP_FOLDER and TOP_FOLDER in ours:
        return False
    if entry.name in ours:
        return entry.is_dir(follow_symlinks=False)
    return not entry.name.startswith(_LEFTOVERS)


def _is_current(folder: _Folder, plan: Plan) -> bool:
    existing = folder.existing
    if existing is None or folder.path.is_symlink() or PENDING_FILE in folder.files:
        return False  # (an update in place that a crash cut short is finished)
    recorded = {key: value for key, value in existing.items() if key not in ("user_files", "manifest")}
    if recorded != plan.manifest or existing.get("manifest", MANIFEST) != plan.manifest_name:
        return False
    if sorted(existing.get("user_files") or []) != folder.users:
        return False  # a file the user added since: recorded (and reported) once
    return all(folder.holds(name) for name in plan.files)


def manifest_text(data: Mapping[str, Any]) -> str:
    """A manifest as JSON a person can read: a key per line, and each face (each entry of a list of
    entries) on a line of its own. Written entry by entry through the C encoder: json.dumps with an
    indent runs in Python, and took 10 ms per faceset of 100 faces, a third of writing its folder."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            text = "[\n  " + ",\n  ".join(json.dumps(item) for item in value) + "\n ]"
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


@dataclass(frozen=True)
class _Listed:
    """A crops manifest as manifest_text wrote it, in lines: those before its faces, each face's
    line by face id (in the order written: by id), and those after."""

    original: str
    head: list[str]
    faces: dict[int, str]
    tail: list[str]

    @classmethod
    def read(cls, folder: Path) -> _Listed | None:
        """None: no manifest, or one in another form (not as manifest_text writes it, no face)."""
        text = read_text(folder / MANIFEST)
        if text is None:
            return None
        lines = text.split("\n")
        try:
            start = lines.index(_FACES_OPEN) + 1
        except ValueError:
            return None
        end = start
        while end < len(lines) and lines[end].startswith(_FACE_LINE):
            end += 1
        block = lines[start:end]
        if not block or end == len(lines) or lines[end] not in (" ]", " ],"):
            return None
        if not all(line.endswith(",") for line in block[:-1]) or block[-1].endswith(","):
            return None
        try:  # by slicing, not a pattern: a third of the time of reading a folder's manifest
            ids = [int(line[len(_FACE_LINE) : line.index(",", len(_FACE_LINE))]) for line in block]
        except ValueError:
            return None
        if ids != sorted(set(ids)):
            return None
        faces = dict(zip(ids, [line[2:-1] for line in block[:-1]] + [block[-1][2:]], strict=True))
        return cls(text, lines[:start], faces, lines[end:])

    def text(self, faces: Sequence[str]) -> str:
        """The manifest with these face lines (JSON objects, in order) in place of its own."""
        body = [f"  {line}," for line in faces[:-1]] + [f"  {faces[-1]}"]
        return "\n".join([*self.head, *body, *self.tail])


# How manifest_text writes the list of faces: one face per line, each a JSON object opening with its id.
_FACES_OPEN = ' "faces": ['
_FACE_LINE = '  {"face_id": '


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _new_file_group(folder: Path) -> int:
    """The group a file made in `folder` gets: the folder's when it is set-group-ID, else ours."""
    status = folder.stat()
    return status.st_gid if status.st_mode & stat.S_ISGID else os.getegid()


def _place(source: Path, target: Path, group: int, mode: int) -> None:
    """Put one of facesyncd's own files (a crop, a PNG of state_dir) into a folder being written, as
    a file made there would be: a hard link shares the source's inode, so the source is first given
    the group and mode a new file in the folder gets (`group`: the folder's set-group-ID group;
    `mode`: the umask's), which the state directory, private to the service, does not show to
    anyone. Where that cannot be done (another owner's file, a file system without links), a copy."""
    try:
        status = source.stat()
        if status.st_gid != group:
            os.chown(source, -1, group)
        if stat.S_IMODE(status.st_mode) != mode:
            os.chmod(source, mode)
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        # The copy keeps the source's time, so that the next export sees it holds the same file.
        with_time = source.stat()
        os.utime(target, ns=(with_time.st_atime_ns, with_time.st_mtime_ns))


def _carry(source: Path, target: Path) -> None:
    """Put a user's entry into the rebuilt folder without touching the original (which stays until
    the swap, so a crash loses nothing): files are linked (or copied), folders copied that way,
    symbolic links recreated."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)  # type: ignore[arg-type]
    else:
        _link_or_copy(source, target)


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    """Remove one of our temporary names, whatever is there (a symbolic link is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _set_aside(facesets_dir: Path, entry: Path, why: str) -> Path:
    """Move `entry` into .facesyncd-preserved/ under a name no earlier move took."""
    keep_dir = facesets_dir / PRESERVED
    keep_dir.mkdir(exist_ok=True)
    keep = keep_dir / entry.name
    if keep.exists() or keep.is_symlink():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        keep = keep_dir / f"{entry.name}.{stamp}"
        serial = 1
        while keep.exists() or keep.is_symlink():
            serial += 1
            keep = keep_dir / f"{entry.name}.{stamp}.{serial}"
    os.replace(entry, keep)
    log.warning("moved %s, %s, to %s", entry, why, keep)
    return keep


def clean_leftovers(facesets_dir: Path) -> None:
    """Remove half-written folders a crash left behind; restore a folder caught mid-swap.

    Only a real folder holding our manifest is restored from `.faceset_NNN.old`; anything else under
    our temporary names (a symbolic link, a file) is removed, never followed."""
    try:
        names = [entry.name for entry in os.scandir(facesets_dir) if entry.name.startswith(".faceset_")]
    except OSError:
        return
    for entry in (facesets_dir / name for name in names):
        if entry.name.endswith(".old"):
            final = facesets_dir / entry.name[1:-4]
            genuine = entry.is_dir() and not entry.is_symlink() and _read_manifest(entry) is not None
            if genuine and not final.exists() and not final.is_symlink():
                os.replace(entry, final)
            else:
                _remove(entry)
        elif entry.name.endswith(".tmp"):
            _remove(entry)


def crops_plan(
    number: int,
    faces: Sequence[ExportFace],
    crops_dir: Path,
    subset: str | None = None,
    name: str | None = None,
    link_of: Callable[[ExportFace], str | None] = no_link,
) -> Plan:
    files: dict[str, Source] = {face_file(face): crops_dir / face.crop for face in faces}
    return Plan(MANIFEST, manifest(number, faces, subset, name, link_of), files)


def write_faceset(
    facesets_dir: Path,
    crops_dir: Path,
    number: int,
    faces: Sequence[ExportFace],
    missing: list[ExportFace] | None = None,
    subset: str | None = None,
    set_name: str | None = None,
    link_of: Callable[[ExportFace], str | None] = no_link,
) -> bool:
    """Write one faceset folder of the crops layout if it differs from the store. Returns whether
    anything was written.

    When crop files are gone: with `missing` given, the folder is left as it is (its files may be
    the only copies left) and the faces are added to `missing`, for the caller to restore their
    crops and export again; without it, those faces are left out (the folder then differs from the
    store and is written again once their crops are back). With no face at all, a folder is kept
    only for the user's files in it.
    """
    folder = _claim(facesets_dir, faceset_name(number, subset))
    plan = crops_plan(number, faces, crops_dir, subset, set_name, link_of)
    if _is_current(folder, plan):
        return False
    present = [face for face in faces if os.path.isfile(os.path.join(crops_dir, face.crop))]
    if len(present) < len(faces):
        if missing is not None:
            missing.extend(face for face in faces if face not in present)
            return False
        faces = present
        if not faces and not folder.users:
            return False
        plan = crops_plan(number, faces, crops_dir, subset, set_name, link_of)
    return _write_folder(facesets_dir, folder, plan)


def update_marked(
    facesets_dir: Path,
    crops_dir: Path,
    marked: Mapping[int, Collection[int]],
    faces: Mapping[int, Sequence[ExportFace]],
    link_of: Callable[[ExportFace], str | None] = no_link,
) -> tuple[frozenset[int], int]:
    """Bring the crops layout's folders of the `marked` facesets in line from their marked faces alone
    (number -> ids of its faces that changed; `faces`: those of them each faceset has now, as
    export_faces gives them), at the cost of those faces, not of the folders' sizes: the other faces'
    lines are taken from the manifest as it stands, and only the marked faces' files are placed or
    removed. Only for folders as the last export left them (the caller knows: nothing in the tree
    changed since), whose manifest is as manifest_text wrote it. A faceset for which that is not
    enough (no folder yet, or none for a sub-set a face joined; a folder left without faces; a crop
    missing; a manifest in another form) is left alone, for the caller to write whole. Returns the
    facesets done, and how many folders were written."""
    names: dict[int, list[str]] = {}
    try:
        entries = list(os.scandir(facesets_dir))
    except OSError:
        return frozenset(), 0
    for entry in entries:
        match = FOLDER_RE.match(entry.name)
        number = faceset_number(match.group(1)) if match else None
        if number is not None and number in marked:
            names.setdefault(number, []).append(entry.name)
    done: set[int] = set()
    written, mode = 0, new_file_mode()
    for number, ids in marked.items():
        folders_of = sorted(names.get(number, []))
        changes = _marked_changes(facesets_dir, crops_dir, number, folders_of, ids, faces.get(number, ()), link_of)
        if changes is None:
            continue
        for change in changes:
            _apply_marked(change, mode)
            written += 1
        done.add(number)
    return frozenset(done), written


@dataclass(frozen=True)
class _Change:
    """What one folder's marked faces change: its new manifest text, the files to place, to remove."""

    folder: Path
    text: str
    place: dict[str, Path | bytes]
    retire: list[str]


def _marked_changes(
    facesets_dir: Path,
    crops_dir: Path,
    number: int,
    names: Sequence[str],
    marked: Collection[int],
    faces: Sequence[ExportFace],
    link_of: Callable[[ExportFace], str | None],
) -> list[_Change] | None:
    """The changes of one faceset's folders (all decided before any is made), or None when its marked
    faces are not enough to decide them (see update_marked)."""
    wanted = {name: grouped for name, (_, _, grouped) in folders({number: faces}).items()}
    if not names or not set(wanted) <= set(names):
        return None
    changes = []
    for name in names:
        final = facesets_dir / name
        listed = _Listed.read(final) if final.is_dir() and not final.is_symlink() else None
        if listed is None or os.path.lexists(final / PENDING_FILE):
            return None  # (an update in place a kill cut short is finished by the whole path)
        lines = {face_id: line for face_id, line in listed.faces.items() if face_id not in marked}
        place: dict[str, Path | bytes] = {}
        for face in wanted.get(name, ()):
            if face.face_id not in listed.faces and os.path.lexists(final / face_file(face)):
                return None  # the user's entry has the name of a joining face's file: set aside first
            lines[face.face_id] = json.dumps(face_entry(face, link_of))
            place[face_file(face)] = crops_dir / face.crop
        if not lines:
            return None  # a folder left without faces goes, or stays for the user's files: written whole
        if not all(os.path.isfile(source) for source in place.values()):
            return None  # a crop to restore first (write_faceset's `missing`)
        if place:
            device = final.stat().st_dev
            place = {file: source for file, source in place.items() if not _same_file(final, {}, device, file, source)}
        retire = [face_file_of(face_id) for face_id in listed.faces if face_id in marked and face_id not in lines]
        text = listed.text([lines[face_id] for face_id in sorted(lines)])
        if place or retire or text != listed.original:
            changes.append(_Change(final, text, place, retire))
    return changes


def _apply_marked(change: _Change, mode: int) -> None:
    """One folder's marked change, in the order that needs no list of pending names: the files of the
    faces that left go first, then the manifest is replaced, then the files of the faces that joined
    are placed. A kill in between leaves a manifest naming a file that is not there (the next export
    places it, or drops it), never a file of facesyncd's that no manifest names (it would be taken for
    the user's). Writing the list and removing it cost a third of the update of a folder."""
    _retire(change.folder, change.retire)
    write_atomic(change.folder / MANIFEST, change.text.encode(), mode=mode, durable=False)
    if change.place:
        _put(change.folder, change.place, mode)


def _put(final: Path, files: Mapping[str, Source], mode: int) -> None:
    """Facesyncd's `files` (name -> what to make it from) into the folder `final`, each in place of
    what has its name."""
    group = _new_file_group(final)
    for name, source in files.items():
        target = final / name
        if "/" in name:
            target.parent.mkdir(exist_ok=True)
        # (a bundle replaces its old one in one rename: that stays until the new one is whole)
        if not isinstance(source, Bundle) and (target.is_symlink() or target.is_file()):
            target.unlink()
        if isinstance(source, Path):
            _place(source, target, group, mode)
        elif isinstance(source, Bundle):
            write_atomic(target, source.write, mode=mode, durable=False)
        else:
            target.write_bytes(source)
        checkpoint("export-update")


def _retire(final: Path, names: Sequence[str]) -> None:
    """Facesyncd's files of these names out of the folder `final` (never top/, nor any folder a
    hostile manifest names)."""
    for name in names:
        if name == TOP_FOLDER:
            continue
        path = final / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        checkpoint("export-retire")


def _claim(facesets_dir: Path, name: str) -> _Folder:
    """The folder as it is, once anything there that facesyncd did not write is set aside (its
    manifest read once)."""
    final = facesets_dir / name
    folder = None if final.is_symlink() else _Folder.read(final)
    if folder is None or (folder.existing is None and final.exists()):
        # A folder facesyncd did not write (an imported tree exported in place, a link): keep it whole.
        _set_aside(facesets_dir, final, "which facesyncd did not write")
        return _Folder(final, None, [], frozenset())
    return folder


def write_folder(facesets_dir: Path, name: str, plan: Plan) -> bool:
    """Make the folder `name` hold what `plan` says, carrying the user's files along. Returns whether
    anything was written."""
    return _write_folder(facesets_dir, _claim(facesets_dir, name), plan)


def _write_folder(facesets_dir: Path, folder: _Folder, plan: Plan) -> bool:
    folder = _out_of_the_way(folder, plan)
    final, existing, users = folder.path, folder.existing, folder.users
    placeholders = {name: data for name, data in plan.placeholders.items() if name not in users}
    if _is_current(folder, plan) and not placeholders:
        return False
    recorded_users = sorted({*users, *placeholders})
    new_users = [name for name in users if name not in (existing or {}).get("user_files", [])]
    wanted = dict(plan.manifest)
    if recorded_users:
        wanted["user_files"] = recorded_users
    top = final / TOP_FOLDER
    plain_top = not top.is_symlink() and (top.is_dir() or not top.exists())  # else its names lead elsewhere
    if existing is not None and existing.get("manifest", MANIFEST) == plan.manifest_name and plain_top:
        _update_in_place(folder, plan, wanted, placeholders)
    else:
        _rebuild(facesets_dir, folder, plan, wanted, placeholders)
    if new_users:
        log.warning(
            "kept %d file(s) in %s that facesyncd did not write: %s", len(new_users), final, ", ".join(new_users)
        )
    return True


def _out_of_the_way(folder: _Folder, plan: Plan) -> _Folder:
    """The folder once the user's entries named like a file facesyncd is to write there are renamed
    beside it, "face_0000003 (yours).jpg": a photo the user copied in from another faceset, then that
    face joined this one. Never replaced, nor taken for facesyncd's (and a folder of that name made
    every export of this one fail)."""
    wanted = {name.split("/")[0] for name in plan.files} | set(plan.placeholders) | {plan.manifest_name}
    clashes = [name for name in folder.users if name in wanted and name not in plan.placeholders]
    if not clashes:
        return folder
    users, files, inodes = list(folder.users), set(folder.files), dict(folder.inodes)
    for name in clashes:
        stem, dot, suffix = name.partition(".")
        free = next(
            candidate
            for count in itertools.count(1)
            if not os.path.lexists(
                folder.path / (candidate := f"{stem} (yours{'' if count == 1 else f' {count}'}){dot}{suffix}")
            )
        )
        os.rename(folder.path / name, folder.path / free)
        log.warning("%s: your %s has the name of a file facesyncd writes there: renamed %s", folder.path, name, free)
        users[users.index(name)] = free
        if name in files:
            files = (files - {name}) | {free}
        inodes[free] = inodes.pop(name, 0)
    return replace(folder, users=sorted(users), files=frozenset(files), inodes=inodes)


def _update_in_place(folder: _Folder, plan: Plan, wanted: dict[str, Any], placeholders: Mapping[str, bytes]) -> None:
    """Change only what differs: a faceset that gained a face gets one file and a new manifest, not a
    folder rebuilt whole (600 facesets of 100 faces each rebuilt cost 5 CPU-s per 1,000 new faces).
    The user's files are not touched."""
    final = folder.path
    bundles = [name for name, source in plan.files.items() if isinstance(source, Bundle)]
    remove_leftovers(final, *MANIFESTS, PENDING_FILE, *bundles)
    present = _ours_present(folder)
    device = final.stat().st_dev
    changed = {
        name: source
        for name, source in plan.files.items()
        if not _same_file(final, folder.inodes, device, name, source)
    }
    retired = sorted(present - set(plan.files))
    drop_top = not any(name.startswith(f"{TOP_FOLDER}/") for name in plan.files) and TOP_FOLDER in present
    _apply(final, changed, retired, (plan.manifest_name, manifest_text(wanted)), placeholders, drop_top=drop_top)


def _apply(
    final: Path,
    changed: Mapping[str, Source],
    retired: Sequence[str],
    manifest: tuple[str, str],
    placeholders: Mapping[str, bytes] | None = None,
    *,
    drop_top: bool = False,
) -> None:
    """Update a folder in place: the list of names about to change goes first (PENDING_FILE); then
    the `changed` files are placed and the `retired` ones removed; the new manifest (name, text)
    last, and the list goes."""
    top = final / TOP_FOLDER
    mode = new_file_mode()
    if changed or retired:
        # Not flushed to disk, nor is the manifest: a kill leaves each whole; a power cut at worst
        # leaves a face's file taken for the user's, in folders that are a cache of the store. The
        # names an unfinished update listed stay listed: a file it placed that this one leaves as it
        # is (the same file) is named by no manifest yet, and a kill now would leave it the user's.
        unfinished = _pending(final) - {PENDING_FILE}
        pending = json.dumps(sorted({*changed, *retired, *unfinished})).encode()
        write_atomic(final / PENDING_FILE, pending, mode=mode, durable=False)
        _put(final, changed, mode)
        _retire(final, retired)
        if drop_top and top.is_dir() and not top.is_symlink() and not any(top.iterdir()):
            top.rmdir()
    for name, data in (placeholders or {}).items():
        (final / name).write_bytes(data)
    write_atomic(final / manifest[0], manifest[1].encode(), mode=mode, durable=False)
    (final / PENDING_FILE).unlink(missing_ok=True)


def _ours_present(folder: _Folder) -> set[str]:
    """facesyncd's files in one of its folders, as its manifest says, that are there (top/ and
    everything in it counted as facesyncd's, as a rebuild does)."""
    ours = {name for name in folder.ours if _safe_name(name)}
    ours -= {str((folder.existing or {}).get("manifest", MANIFEST)), PENDING_FILE}
    top = folder.path / TOP_FOLDER
    present = {name for name in ours if name in folder.inodes}
    if TOP_FOLDER in present and top.is_dir() and not top.is_symlink():
        present.update(f"{TOP_FOLDER}/{entry.name}" for entry in os.scandir(top))
    present.update(name for name in ours if "/" in name and os.path.lexists(os.path.join(folder.path, name)))
    return present


def _same_file(folder: Path, inodes: Mapping[str, int], device: int, name: str, source: Source) -> bool:
    """Whether the folder's `name` already holds `source`: the file it was linked from (its inode, as
    the folder's listing gave it, `inodes`: one stat per file, of the source; without it, the target
    is stat'ed), a copy of the same size and time (see _place), the same bytes, or the same bundle."""
    target = os.path.join(folder, name)
    inode = inodes.get(name)
    if isinstance(source, Bundle):
        return not os.path.islink(target) and source.written_at(Path(target))
    try:
        if isinstance(source, bytes):
            status = os.lstat(target)
            if not stat.S_ISREG(status.st_mode):
                return False
            with open(target, "rb") as held:
                return status.st_size == len(source) and held.read() == source
        origin = os.stat(source)  # once: the listing's inode first, then the target's own stat
        if inode is not None and (inode, device) == (origin.st_ino, origin.st_dev):
            return True
        status = os.lstat(target)
    except OSError:
        return False
    if not stat.S_ISREG(status.st_mode):
        return False
    if (status.st_ino, status.st_dev) == (origin.st_ino, origin.st_dev):
        return True
    return status.st_nlink == 1 and (status.st_size, status.st_mtime_ns) == (origin.st_size, origin.st_mtime_ns)


def _rebuild(
    facesets_dir: Path, folder: _Folder, plan: Plan, wanted: dict[str, Any], placeholders: Mapping[str, bytes]
) -> None:
    """Make the folder whole beside its final name and rename it into place (a new folder, or one
    whose layout changed), carrying the user's files along."""
    final, users = folder.path, folder.users
    staging = facesets_dir / f".{final.name}.tmp"
    _remove(staging)
    try:
        staging.mkdir(parents=True)
        placed: dict[Path, Path] = {}  # a file wanted under two names (top/): one inode
        group, mode = _new_file_group(staging), new_file_mode()  # once per folder, not per file
        for name, source in plan.files.items():
            target = staging / name
            if "/" in name:  # top/: a folder of its own
                target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path) and source in placed:
                _link_or_copy(placed[source], target)
            elif isinstance(source, Path):
                _place(source, target, group, mode)
                placed[source] = target
            elif isinstance(source, Bundle):
                source.write(target)
                os.chmod(target, mode)
            else:
                target.write_bytes(source)
            checkpoint("export-file")
        for name in users:
            _carry(final / name, staging / name)
        for name, data in placeholders.items():
            (staging / name).write_bytes(data)
        (staging / plan.manifest_name).write_text(manifest_text(wanted), encoding="utf-8")
        _fsync_dir(staging)
    except OSError:
        _remove(staging)  # no half-written folder stays behind
        raise
    if final.exists():
        retired = facesets_dir / f".{final.name}.old"
        _remove(retired)
        os.replace(final, retired)
        checkpoint("export-swap")
        os.replace(staging, final)
        _remove(retired)
    else:
        os.replace(staging, final)
    _fsync_dir(facesets_dir)


def remove_faceset(facesets_dir: Path, number: int) -> int:
    """Delete faceset `number`'s folders (its sub-sets' too) entirely, the user's files in them
    included: a forgotten person is not kept anywhere. Returns how many folders went."""
    removed = 0
    if not facesets_dir.is_dir():
        return removed
    for entry in facesets_dir.iterdir():
        match = FOLDER_RE.match(entry.name)
        if match and int(match.group(1)) == number and (entry.is_dir() or entry.is_symlink()):
            _remove(entry)
            removed += 1
    return removed


def write_names(facesets_dir: Path, names: Mapping[int, str | None]) -> None:
    """Put names given by a command into the folders' NAME.txt (where there is one): NAME.txt is
    read back as the user's word for the name, so it must not keep the old one."""
    for folder_name, folder in own_folders(facesets_dir, names.keys()).items():
        number, _ = _number_and_subset(folder_name)
        if number in names and (folder / NAME_FILE).is_file():
            write_atomic(folder / NAME_FILE, ((names[number] or "") + "\n").encode())


FolderState = tuple[tuple[str, int, int, tuple[int, ...]], ...]


def folder_state(facesets_dir: Path, known: FolderState = (), written: Collection[int] | None = None) -> FolderState:
    """What a user may have changed in the tree since the last export, cheaply (no manifest read): the
    faceset folders there are, when each one's entries last changed (a file added or deleted), when
    its NAME.txt (read back as the set's name) changed, and its crops manifest's inode, size and
    time (a manifest edited where it stands: an export may take its lines as written).

    `known`: this state as read before an export that wrote the folders of the facesets `written`
    alone; another faceset's folder is taken from it, not looked at again (three stats per folder:
    0.15 CPU-s at 3,000 folders). A change made to one meanwhile then shows at the next look."""
    before = {entry[0]: entry for entry in known}
    found: list[tuple[str, int, int, tuple[int, ...]]] = []
    try:
        entries = list(os.scandir(facesets_dir))
    except OSError:
        return ()
    for entry in entries:
        match = FOLDER_RE.match(entry.name)
        if not match and entry.name not in (SWAP_MANIFEST, MARKER):
            continue
        if written is not None and match and entry.name in before and int(match.group(1)) not in written:
            found.append(before[entry.name])
            continue
        try:
            listed = entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            listed = 0
        try:
            named = os.stat(os.path.join(entry.path, NAME_FILE)).st_mtime_ns
        except OSError:
            named = 0
        try:
            status = os.stat(os.path.join(entry.path, MANIFEST))
            manifest: tuple[int, ...] = (status.st_ino, status.st_size, status.st_mtime_ns)
        except OSError:
            manifest = ()
        found.append((entry.name, listed, named, manifest))
    return tuple(sorted(found))


def changed_facesets(before: FolderState, now: FolderState) -> frozenset[int] | None:
    """The facesets whose folders differ between two looks at the tree (folder_state), when that is
    all that differs: the same folders there (none added, removed or renamed) and the files at the
    top as they were. None otherwise: only comparing every folder with the store tells what to do."""
    old = {entry[0]: entry for entry in before}
    new = {entry[0]: entry for entry in now}
    if old.keys() != new.keys():
        return None
    numbers: set[int] = set()
    for name, entry in new.items():
        if entry == old[name]:
            continue
        match = FOLDER_RE.match(name)
        number = faceset_number(match.group(1)) if match else None
        if number is None:
            return None
        numbers.add(number)
    return frozenset(numbers)


def folder_state_of(seen: Any) -> FolderState:
    """A FolderState back from its JSON (lists for tuples)."""
    return tuple(
        (str(name), int(listed), int(named), tuple(int(n) for n in manifest)) for name, listed, named, manifest in seen
    )


def own_folders(
    facesets_dir: Path, numbers: Collection[int] | None = None, besides: Collection[str] = ()
) -> dict[str, Path]:
    """Every folder that facesyncd wrote (it holds facesyncd's manifest): facesets and sub-sets;
    with `numbers`, only theirs; never those named in `besides` (no other manifest is read)."""
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(facesets_dir))  # (not Paths: 3,000 folders are listed in each export)
    except OSError:
        return found
    for entry in entries:
        match = FOLDER_RE.match(entry.name)
        number = faceset_number(match.group(1)) if match else None
        if (
            number is not None
            and (numbers is None or number in numbers)
            and entry.name not in besides
            and entry.is_dir(follow_symlinks=False)
            and _read_manifest(folder := facesets_dir / entry.name)
        ):
            found[entry.name] = folder
    return found


def own_facesets(facesets_dir: Path, numbers: Collection[int] | None = None) -> dict[int, Path]:
    """faceset_NNN folders that facesyncd wrote (they hold its manifest), by number (with `numbers`,
    only theirs)."""
    found: dict[int, Path] = {}
    for name, folder in own_folders(facesets_dir, numbers).items():
        match = FACESET_RE.match(name)
        if match:
            found[int(match.group(1))] = folder
    return found


def _recorded_highest(facesets_dir: Path) -> int | None:
    marker = read_json(facesets_dir / MARKER)
    highest = marker.get("highest_number") if isinstance(marker, dict) else None
    if not isinstance(highest, int) or isinstance(highest, bool) or not 0 <= highest <= MAX_FACESET_NUMBER:
        if highest is not None:
            log.warning("%s: ignoring highest_number %.40r (not a faceset number)", facesets_dir / MARKER, highest)
        return None
    return highest


def highest_exported(facesets_dir: Path) -> int:
    """The highest faceset number this tree ever held, by its marker and its folders."""
    return max([_recorded_highest(facesets_dir) or 0, *own_facesets(facesets_dir)])


def set_aside_facesets(facesets_dir: Path) -> int:
    """Move every folder facesyncd wrote into .facesyncd-preserved/ (`sync --fresh`: a new database
    starts over without overwriting them). Returns the highest number the tree held."""
    highest = highest_exported(facesets_dir)
    for folder in own_facesets(facesets_dir).values():
        _set_aside(facesets_dir, folder, "from before the database was made anew")
    return highest


def _write_marker(facesets_dir: Path, highest: int) -> None:
    recorded = _recorded_highest(facesets_dir)
    if recorded is not None and recorded >= highest:
        return
    write_atomic(facesets_dir / MARKER, (json.dumps({"highest_number": max(highest, recorded or 0)}) + "\n").encode())


def export_all(
    facesets_dir: Path,
    crops_dir: Path,
    faces_by_identity: Mapping[int, Sequence[ExportFace]],
    missing: list[ExportFace] | None = None,
    *,
    highest_number: int = 0,
    names: Mapping[int, str] | None = None,
    only: Collection[int] | None = None,
    link_of: Callable[[ExportFace], str | None] = no_link,
) -> int:
    """Bring every faceset folder in line with the store, in the crops layout (with `only`, the
    folders of those numbers: `faces_by_identity` holds theirs). Returns how many folders were
    written. Faces whose crop files are gone are collected in `missing` (see write_faceset)."""
    wanted = folders(faces_by_identity)

    def write(name: str, faces: Sequence[ExportFace]) -> bool:
        number, subset = _number_and_subset(name)
        return write_faceset(
            facesets_dir, crops_dir, number, faces, missing, subset, (names or {}).get(number), link_of
        )

    by_folder = {name: faces for name, (_, _, faces) in wanted.items()}
    return _export(facesets_dir, by_folder, write, highest_number, only)


def _number_and_subset(name: str) -> tuple[int, str | None]:
    match = FOLDER_RE.match(name)
    assert match is not None, name
    return int(match.group(1)), match.group(2)


def export_plans(
    facesets_dir: Path,
    plans: Mapping[str, Plan],
    *,
    highest_number: int = 0,
    only: Collection[int] | None = None,
    retired: Mapping[int, int] | None = None,
) -> int:
    """Bring every faceset folder in line with these plans, by folder name (the swap layout); writes
    the tree's manifest.json too, which also says where the faces of each number merged away went
    (`retired`: number -> the number they are in now). With `only`, the folders of those numbers
    (`plans` holds theirs), and the tree manifest keeps its entries of the others."""
    retired = retired or {}

    def write(name: str, faces: Sequence[Any]) -> bool:
        number, subset = _number_and_subset(name)
        empty = {"schema_version": SCHEMA_VERSION, "number": number, "faces": [], "written_by": "facesyncd"}
        if number in retired:  # a folder kept for the user's files: it says where its faces went
            empty["merged_into"] = retired[number]
        return write_folder(facesets_dir, name, plans.get(name) or Plan(SWAP_MANIFEST, empty, {}))

    written = _export(
        facesets_dir, {name: plan.manifest["faces"] for name, plan in plans.items()}, write, highest_number, only
    )
    path = facesets_dir / SWAP_MANIFEST
    kept: list[dict[str, Any]] = []
    if only is not None and path.is_file() and not path.is_symlink() and _ours(path):
        before = read_json(path)
        listed = before.get("facesets") if isinstance(before, dict) else None
        kept = [
            entry
            for entry in listed or []
            if isinstance(entry, dict) and isinstance(entry.get("number"), int) and entry["number"] not in only
        ]
    entries = kept + [
        {
            "number": plan.manifest["number"],
            "folder": name,
            **({"subset": plan.manifest["subset"]} if plan.manifest.get("subset") else {}),
            "name": plan.manifest.get("name"),
            "faces": len(plan.manifest["faces"]),
            "files": sorted(plan.files),
        }
        for name, plan in plans.items()
        if plan.manifest["faces"]
    ]
    tree = {
        "schema_version": SCHEMA_VERSION,
        "facesets": sorted(entries, key=lambda entry: str(entry.get("folder"))),
        "retired": [{"number": number, "merged_into": into} for number, into in sorted(retired.items())],
        "written_by": "facesyncd",
    }
    data = manifest_text(tree).encode()
    if path.is_symlink() or (path.exists() and not _ours(path)):
        # The older pipeline's tree manifest, when facesets_dir is that tree: kept, not overwritten.
        _set_aside(facesets_dir, path, "which facesyncd did not write")
    if not path.is_file() or path.read_bytes() != data:
        write_atomic(path, data)
    return written


def _export(
    facesets_dir: Path,
    faces_by_folder: Mapping[str, Sequence[Any]],
    write: Callable[[str, Sequence[Any]], bool],
    highest_number: int,
    only: Collection[int] | None = None,
) -> int:
    """A folder whose faces are all gone (all its photos deleted) is removed, but for the files the
    user put in it; its number stays taken in the store and is never given to another identity."""
    facesets_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(facesets_dir)
    remove_leftovers(facesets_dir, MARKER, SWAP_MANIFEST)
    written = 0
    for name, faces in sorted(faces_by_folder.items()):
        if faces and write(name, faces):
            written += 1
    # The folders left without faces (those with faces were written above, their manifests read there).
    with_faces = {name for name, faces in faces_by_folder.items() if faces}
    for name, folder in sorted(own_folders(facesets_dir, only, besides=with_faces).items()):
        # In the swap layout NAME.txt is facesyncd's placeholder for the name (kept in the store):
        # alone, it keeps no folder. (In the crops layout a NAME.txt is the user's own file.)
        left = _Folder.read(folder)
        placeholder = NAME_FILE if (left.existing or {}).get("manifest") == SWAP_MANIFEST else None
        if [entry for entry in left.users if entry != placeholder]:
            written += write(name, [])
            continue
        retired = facesets_dir / f".{folder.name}.tmp"
        _remove(retired)
        os.replace(folder, retired)
        _remove(retired)
        written += 1
    numbers = [_number_and_subset(name)[0] for name in faces_by_folder]
    _write_marker(facesets_dir, max([highest_number, *numbers]))
    return written
