"""Faceset folders, written atomically: a cache derived from the store.

Each identity N with live faces gets `facesets_dir/faceset_NNN/` with one JPEG crop per face and a
`faceset.json`. A folder is rebuilt beside its final name (`.faceset_NNN.tmp`) and swapped in by
rename, and only when its content changed, so exporting twice changes nothing. Folders that do not
look like `faceset_<digits>` are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .crashpoints import checkpoint
from .store import ExportFace

log = logging.getLogger(__name__)

FACESET_RE = re.compile(r"^faceset_(\d+)$")
MANIFEST = "faceset.json"
PRESERVED = ".facesyncd-preserved"


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


def _is_current(folder: Path, wanted: dict[str, Any]) -> bool:
    try:
        existing = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if existing != wanted:
        return False
    present = {entry.name for entry in folder.iterdir()}
    return present == {MANIFEST} | {face["file"] for face in wanted["faces"]}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


def clean_leftovers(facesets_dir: Path) -> None:
    """Remove half-written folders a crash left behind; restore a folder caught mid-swap."""
    if not facesets_dir.is_dir():
        return
    for entry in facesets_dir.iterdir():
        if entry.name.startswith(".faceset_") and entry.name.endswith(".old"):
            final = facesets_dir / entry.name[1:-4]
            if not final.exists():
                os.replace(entry, final)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".faceset_") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)


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
    store and is written again once their crops are back).
    """
    final = facesets_dir / faceset_name(number)
    wanted = manifest(number, faces)
    if _is_current(final, wanted):
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
        if not faces or _is_current(final, wanted):
            return False
    if final.exists() and not (final / MANIFEST).exists():
        # A folder facesyncd did not write (an imported tree exported in place, say): keep it whole.
        keep = facesets_dir / PRESERVED / final.name
        keep.parent.mkdir(exist_ok=True)
        os.replace(final, keep)
        log.warning("moved %s, which facesyncd did not write, to %s", final, keep)
    staging = facesets_dir / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for face in faces:
            _link_or_copy(crops_dir / face.crop, staging / face_file(face))
            checkpoint("export-file")
        (staging / MANIFEST).write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
        _fsync_dir(staging)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # no half-written folder stays behind
        raise
    if final.exists():
        retired = facesets_dir / f".{final.name}.old"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        checkpoint("export-swap")
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(facesets_dir)
    return True


def export_all(
    facesets_dir: Path,
    crops_dir: Path,
    faces_by_identity: Mapping[int, Sequence[ExportFace]],
    missing: list[ExportFace] | None = None,
) -> int:
    """Bring every faceset folder in line with the store. Returns how many folders were written.

    A folder whose identity has no live face left (all its photos deleted) is removed; its number
    stays taken in the store and is never given to another identity. Faces whose crop files are
    gone are collected in `missing` (see write_faceset).
    """
    facesets_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(facesets_dir)
    written = 0
    for number, faces in sorted(faces_by_identity.items()):
        if faces and write_faceset(facesets_dir, crops_dir, number, faces, missing):
            written += 1
    for entry in facesets_dir.iterdir():
        match = FACESET_RE.match(entry.name)
        if match and entry.is_dir() and not faces_by_identity.get(int(match.group(1))):
            if (entry / MANIFEST).exists():  # only folders facesyncd wrote
                retired = facesets_dir / f".{entry.name}.tmp"
                os.replace(entry, retired)
                shutil.rmtree(retired, ignore_errors=True)
                written += 1
    return written
