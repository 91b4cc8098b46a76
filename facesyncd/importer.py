"""Adopt an existing tree of `faceset_NNN/` folders as identities NNN.

Users of the older script pipeline have such trees. Each image's largest face joins identity NNN, so
later faces from Immich match it; the numbers are kept, and new facesets number after the highest.
Already imported files are skipped, so the command can be run again after adding files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import FaceSettings
from .crops import Crops
from .embedder import Embedder
from .errors import FacesyncError, ImageError
from .export import FACESET_RE, MANIFEST, highest_exported
from .imaging import DecodedImage, decode_image
from .immich import ASSET_ID_RE
from .models import DecodeSource, DetectedFace, ImportProvenance
from .quality import assess
from .store import Store

log = logging.getLogger(__name__)

# The older pipeline's folders hold face crops; tight, already aligned crops (112x112) defeat the
# detector unless surrounded by some background, so a second try pads the image.
PAD_FRACTION = 0.6


@dataclass
class ImportReport:
    identities: list[int] = field(default_factory=list)
    imported: int = 0
    already: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _pad(image: DecodedImage) -> DecodedImage:
    border = int(max(image.width, image.height) * PAD_FRACTION)
    padded = np.zeros((image.height + 2 * border, image.width + 2 * border, 3), np.uint8)
    padded[border : border + image.height, border : border + image.width] = image.pixels
    return DecodedImage(padded, image.format)


def _largest_face(embedder: Embedder, image: DecodedImage) -> tuple[list[DetectedFace], DecodedImage]:
    for candidate in (image, _pad(image)):
        faces = embedder.faces(candidate, min_face_px=0)
        if faces:
            largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            return [largest], candidate
    return [], image


def _provenance(folder: Path) -> dict[str, ImportProvenance]:
    """file name -> the photo and box it was cut from, where the folder's faceset.json (facesyncd's own
    export) says so. Such a face is replaced by the photo's own face once the photo arrives from
    Immich, instead of being counted twice."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        entries = data["faces"]
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    origins: dict[str, ImportProvenance] = {}
    for entry in entries if isinstance(entries, list) else []:
        try:
            asset_id, bbox = entry["asset_id"], tuple(float(v) for v in entry["bbox"])
            if isinstance(asset_id, str) and ASSET_ID_RE.match(asset_id) and len(bbox) == 4:
                source = entry.get("source")
                origins[str(entry["file"])] = ImportProvenance(
                    source if isinstance(source, str) else None,
                    asset_id.lower(),
                    bbox,
                )
        except (KeyError, TypeError, ValueError):
            continue
    return origins


def import_facesets(
    root: Path, store: Store, embedder: Embedder, crops: Crops, *, settings: FaceSettings
) -> ImportReport:
    """Import every image of every faceset_NNN folder under `root` (see the module's docstring)."""
    max_pixels = settings.max_image_megapixels * 1_000_000
    if not root.is_dir():
        raise FacesyncError(f"{root}: not a directory")
    folders = sorted(
        (int(match.group(1)), entry)
        for entry in root.iterdir()
        if entry.is_dir() and (match := FACESET_RE.match(entry.name))
    )
    if not folders:
        raise FacesyncError(f"{root}: no faceset_NNN folders found")
    embedder.load()
    store.check_model(embedder.name, embedder.dimension)
    # A tree facesyncd exported records the highest number it ever used: none of them goes to
    # another person, even one whose folder is gone.
    store.raise_number_floor(highest_exported(root))
    report = ImportReport()
    for number, folder in folders:
        if number <= 0:
            report.failed[str(folder)] = "faceset number must be positive"
            continue
        with store.transaction():
            store.ensure_identity(number, "import")
        report.identities.append(number)
        origins = _provenance(folder)
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.name == MANIFEST:
                continue
            key = str(path.resolve())
            if store.import_state(key) == "done":
                report.already += 1
                continue
            sha256, size = _sha256(path)
            try:
                faces: list[DetectedFace] = []
                image: DecodedImage | None = None
                if not store.blob_exists(sha256):
                    image = decode_image(path, max_pixels=max_pixels)
                    faces, image = _largest_face(embedder, image)
                    if not faces:
                        raise ImageError("no face found")
                names = crops.write_faces(sha256, image, [face.bbox for face in faces]) if image is not None else []
                with store.transaction():
                    if image is not None:
                        store.save_blob_faces(
                            sha256,
                            size=size,
                            width=image.width,
                            height=image.height,
                            decoded_from=DecodeSource.IMPORT,
                            model=embedder.name,
                            faces=faces,
                            crops=names,
                            qualities=[assess(image.pixels, f.bbox, f.landmarks, f.det_score) for f in faces],
                        )
                    blob_faces = store.faces_of_blob(sha256)
                    if not blob_faces:
                        raise ImageError("no face found")
                    store.record_import(
                        key, sha256, number, face_id=blob_faces[0][0], reason=None, provenance=origins.get(path.name)
                    )
                report.imported += 1
            except ImageError as error:
                with store.transaction():
                    store.record_import(key, sha256, number, face_id=None, reason=str(error))
                report.failed[key] = str(error)
                log.warning("import: %s: %s", path, error)
    return report
