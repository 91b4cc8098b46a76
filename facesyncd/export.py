"""Faceset folders, written atomically: a cache derived from the store.

Each identity N with live faces gets `facesets_dir/faceset_NNN/` with one JPEG crop per face and a
`faceset.json`. A folder is rebuilt beside its final name (`.faceset_NNN.tmp`) and swapped in by
rename, and only when its content changed, so exporting twice changes nothing.

The folders are shared with people: a file in a faceset folder that facesyncd did not write (notes, a
hand-added photo) is kept, carried into the rebuilt folder, and reported once (`user_files` in
`faceset.json` lists what was reported). Folders that do not look like `faceset_<digits>` are never
touched; a `faceset_NNN` that facesyncd did not write is moved aside whole, never deleted.
`.facesyncd.json` at the top records the highest faceset number ever exported, so that a tree whose
database was lost can be adopted without giving a number to another person.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import remove_leftovers, write_atomic
from .crashpoints import checkpoint
from .models import ExportFace

log = logging.getLogger(__name__)

FACESET_RE = re.compile(r"^faceset_(\d+)$")
MANIFEST = "faceset.json"
PRESERVED = ".facesyncd-preserved"
MARKER = ".facesyncd.json"


def faceset_name(number: int) -> str:
    return f"faceset_{number:03d}"


def face_file(face: ExportFace) -> str:
    return f"face_{face.face_id:07d}.jpg"


def manifest(number: int, faces: Sequence[ExportFace]) -> dict[str, Any]:
    return {
        "number": number,
        "faces": [
            {
                "face_id": face.face_id,
                "source": face.source,
                "asset_id": face.asset_id,
                "file": face_file(face),
                "bbox": [round(v, 1) for v in face.bbox],
                "det_score": round(face.det_score, 4),
                "distance": None if face.distance is None else round(face.distance, 4),
            }
            for face in faces
        ],
    }


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _our_files(existing: dict[str, Any] | None) -> set[str]:
    """What facesyncd wrote in a folder, as its manifest says."""
    files = {MANIFEST}
    for face in (existing or {}).get("faces") or []:
        if isinstance(face, dict) and isinstance(face.get("file"), str):
            files.add(face["file"])
    return files


def _user_entries(folder: Path, existing: dict[str, Any] | None) -> list[str]:
    """Entries of one of our folders that facesyncd did not write."""
    ours = _our_files(existing)
    try:
        return sorted(entry.name for entry in folder.iterdir() if entry.name not in ours)
    except OSError:
        return []


def _is_current(folder: Path, existing: dict[str, Any] | None, wanted: dict[str, Any], users: list[str]) -> bool:
    if existing is None or folder.is_symlink():
        return False
    if {key: value for key, value in existing.items() if key != "user_files"} != wanted:
        return False
    if sorted(existing.get("user_files") or []) != users:
        return False  # a file the user added since: recorded (and reported) once
    return all((folder / face["file"]).is_file() for face in wanted["faces"])


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
    if not facesets_dir.is_dir():
        return
    for entry in facesets_dir.iterdir():
        if not entry.name.startswith(".faceset_"):
            continue
        if entry.name.endswith(".old"):
            final = facesets_dir / entry.name[1:-4]
            genuine = entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file()
            if genuine and not final.exists() and not final.is_symlink():
                os.replace(entry, final)
            else:
                _remove(entry)
        elif entry.name.endswith(".tmp"):
            _remove(entry)


def write_faceset(
    facesets_dir: Path,
    crops_dir: Path,
    number: int,
    faces: Sequence[ExportFace],
    missing: list[ExportFace] | None = None,
) -> bool:
    """Write one faceset folder if it differs from the store. Returns whether anything was written.

    When crop files are gone: with `missing` given, the folder is left as it is (its files may be
    the only copies left) and the faces are added to `missing`, for the caller to restore their
    crops and export again; without it, those faces are left out (the folder then differs from the
    store and is written again once their crops are back). With no face at all, a folder is kept
    only for the user's files in it.
    """
    final = facesets_dir / faceset_name(number)
    if final.is_symlink() or (final.exists() and not (final / MANIFEST).exists()):
        # A folder facesyncd did not write (an imported tree exported in place, a link): keep it whole.
        _set_aside(facesets_dir, final, "which facesyncd did not write")
    existing = _read_manifest(final) if final.is_dir() else None
    users = _user_entries(final, existing) if existing is not None else []
    wanted = manifest(number, faces)
    if _is_current(final, existing, wanted, users):
        return False
    present: list[ExportFace] = []
    absent: list[ExportFace] = []
    for face in faces:
        (present if (crops_dir / face.crop).is_file() else absent).append(face)
    if absent:
        if missing is not None:
            missing.extend(absent)
            return False
        faces, wanted = present, manifest(number, present)
        if (not faces and not users) or _is_current(final, existing, wanted, users):
            return False
    new_users = [name for name in users if name not in (existing or {}).get("user_files", [])]
    if users:
        wanted["user_files"] = users
    staging = facesets_dir / f".{final.name}.tmp"
    _remove(staging)
    try:
        staging.mkdir(parents=True)
        for face in faces:
            _link_or_copy(crops_dir / face.crop, staging / face_file(face))
            checkpoint("export-file")
        for name in users:
            _carry(final / name, staging / name)
        (staging / MANIFEST).write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
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
    if new_users:
        log.warning(
            "kept %d file(s) in %s that facesyncd did not write: %s", len(new_users), final, ", ".join(new_users)
        )
    return True


def own_facesets(facesets_dir: Path) -> dict[int, Path]:
    """faceset_NNN folders that facesyncd wrote (they hold its manifest), by number."""
    found: dict[int, Path] = {}
    if not facesets_dir.is_dir():
        return found
    for entry in facesets_dir.iterdir():
        match = FACESET_RE.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file():
            found[int(match.group(1))] = entry
    return found


def _recorded_highest(facesets_dir: Path) -> int | None:
    try:
        marker = json.loads((facesets_dir / MARKER).read_text(encoding="utf-8"))
        return int(marker["highest_number"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


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
) -> int:
    """Bring every faceset folder in line with the store. Returns how many folders were written.

    A folder whose identity has no live face left (all its photos deleted) is removed, but for the
    files the user put in it; its number stays taken in the store and is never given to another
    identity. Faces whose crop files are gone are collected in `missing` (see write_faceset).
    """
    facesets_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(facesets_dir)
    remove_leftovers(facesets_dir, MARKER)
    written = 0
    for number, faces in sorted(faces_by_identity.items()):
        if faces and write_faceset(facesets_dir, crops_dir, number, faces, missing):
            written += 1
    for number, folder in sorted(own_facesets(facesets_dir).items()):
        if faces_by_identity.get(number):
            continue
        if _user_entries(folder, _read_manifest(folder)):
            written += write_faceset(facesets_dir, crops_dir, number, [])
            continue
        retired = facesets_dir / f".{folder.name}.tmp"
        _remove(retired)
        os.replace(folder, retired)
        _remove(retired)
        written += 1
    _write_marker(facesets_dir, max([highest_number, *faces_by_identity]))
    return written
