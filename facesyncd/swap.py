"""Swap-ready faces: one face per square PNG, the sets face-swap tools (roop-unleashed's `.fsz`) read.

Such a tool detects every face in every PNG of a set and averages their embeddings: one stray face in
one image spoils the whole set. So each PNG is checked with the same detector facesyncd embeds with:
when a second face intrudes (a group photo), it is masked out and the PNG checked again; a PNG that
still does not hold exactly one face is left out of the set, with the reason recorded.

The PNGs are a cache under state_dir/swap (like the crops): cut from the photo when a face is embedded
with `[export] format = "swap"` (else from the photo fetched again at the next export), checked the
first time a set wants them; rebuilt whole when the PNG size or padding changes.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .atomic import Scattered, write_atomic
from .boxes import overlap
from .bundles import Bundle
from .config import ExportSettings
from .embedder import Embedder
from .export import NAME_FILE, SCHEMA_VERSION, SWAP_MANIFEST, TOP_FOLDER, Plan, Source, faceset_name, photo_entry
from .imaging import DecodedImage
from .models import Box, ExportFace

log = logging.getLogger(__name__)

PARAMETERS = "parameters.json"
# A detection is the face itself when it overlaps the expected box this much (intersection over union).
SAME_FACE = 0.3
# An intruder is masked with this much of its box added on each side (hair, ears).
MASK_GROWTH = 0.15
# Faces this similar (cosine) are near-duplicates (a burst, an edited copy): the best one stays.
DUPLICATE_SIMILARITY = 0.95
# The export's own outlier gate, tighter than joining an identity: distance to the set's centre.
OUTLIER_DISTANCE = 0.45
# Why a chosen face is not in its set yet: its PNG could not be made (no photo, no crop); tried again.
NO_PNG = "no PNG yet (its photo could not be fetched)"


def square(box: Box, padding: float) -> tuple[float, float, float]:
    """The square around the face box: centred on it, its side the box's longer side widened by
    `padding` of it on each side. Returns (left, top, side) in the photo's pixels."""
    width, height = box[2] - box[0], box[3] - box[1]
    side = max(width, height) * (1 + 2 * padding)
    return (box[0] + box[2]) / 2 - side / 2, (box[1] + box[3]) / 2 - side / 2, side


def placed_box(box: Box, padding: float, size: int) -> Box:
    """Where the face box lies in its PNG (the square around it, `size` pixels on a side)."""
    left, top, side = square(box, padding)
    scale = size / side
    return ((box[0] - left) * scale, (box[1] - top) * scale, (box[2] - left) * scale, (box[3] - top) * scale)


def cut_square(pixels: NDArray[np.uint8], box: Box, padding: float, size: int) -> tuple[NDArray[np.uint8], Box]:
    """The square around the face, `size` pixels on a side; what lies outside the photo is black.
    Returns the pixels and the face box in them."""
    left, top, side = square(box, padding)
    scale = size / side
    matrix = np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]])
    out = cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
    return np.asarray(out, np.uint8), placed_box(box, padding, size)


@dataclass(frozen=True)
class Checked:
    """A PNG's pixels (an intruding face masked out), or the reason it cannot be used."""

    pixels: NDArray[np.uint8] | None
    note: str | None


def one_face(pixels: NDArray[np.uint8], face: Box, embedder: Embedder) -> Checked:
    """Exactly one face must be found in the PNG, the expected one: other faces are masked (filled with
    the image's mean colour) and the PNG checked again."""

    def found(image: NDArray[np.uint8]) -> list[Box]:
        return [detected.bbox for detected in embedder.faces(DecodedImage(image, "PNG"), min_face_px=0)]

    boxes = found(pixels)
    ours = [box for box in boxes if overlap(box, face) >= SAME_FACE]
    others = [box for box in boxes if overlap(box, face) < SAME_FACE]
    if not ours:
        return Checked(None, "the detector finds no face in the PNG")
    if not others:
        return Checked(pixels, None)
    masked = pixels.copy()
    fill = tuple(int(v) for v in pixels.reshape(-1, pixels.shape[-1]).mean(axis=0))
    for box in others:
        grow_x, grow_y = (box[2] - box[0]) * MASK_GROWTH, (box[3] - box[1]) * MASK_GROWTH
        corner = (int(box[0] - grow_x), int(box[1] - grow_y))
        far = (int(box[2] + grow_x), int(box[3] + grow_y))
        cv2.rectangle(masked, corner, far, fill, thickness=-1)
    again = found(masked)
    if len(again) == 1 and overlap(again[0], face) >= SAME_FACE:
        return Checked(masked, None)
    return Checked(None, f"{len(others)} other face(s) in the PNG could not be masked out")


class SwapCache:
    """state_dir/swap: a PNG per face (named like its crop), cut when its photo is at hand; checked
    for intruding faces the first time a set wants it (`.checked`), or left out with the reason why
    (`.excluded`)."""

    def __init__(self, directory: Path, size: int, padding: float) -> None:
        self.directory = directory
        self.size = size
        self.padding = padding
        self._prepared = False
        self._preparing = threading.Lock()
        self._tree = Scattered(directory)

    def prepare(self) -> None:
        """PNGs of another size or padding are no use: they go, and are made again. Once per process;
        a thread that asks meanwhile waits until the folder is ready (the stage's workers write PNGs
        at once: one of them wrote into the folder another was deleting)."""
        if self._prepared:
            return
        with self._preparing:
            if self._prepared:
                return
            wanted = {"size": self.size, "padding": self.padding}
            try:
                current = json.loads((self.directory / PARAMETERS).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                current = None
            if current != wanted:
                if self.directory.exists():
                    shutil.rmtree(self.directory)
                self.directory.mkdir(parents=True, exist_ok=True)
                self._tree.made()
                write_atomic(self.directory / PARAMETERS, json.dumps(wanted).encode())
            self._prepared = True

    def _path(self, crop: str, suffix: str) -> Path:
        self.prepare()
        return self.directory / Path(crop).with_suffix(suffix)

    def png(self, crop: str) -> Path:
        return self._path(crop, ".png")

    def has(self, crop: str) -> bool:
        return self.png(crop).is_file() or self._path(crop, ".excluded").is_file()

    def excluded(self, crop: str) -> str | None:
        try:
            return self._path(crop, ".excluded").read_text(encoding="utf-8").strip() or "left out"
        except OSError:
            return None

    def make(self, crop: str, pixels: NDArray[np.uint8], box: Box) -> None:
        """Cut the face's PNG from its photo's pixels (not checked yet)."""
        square_pixels, _ = cut_square(pixels, box, self.padding, self.size)
        self._write_png(crop, square_pixels)
        self._path(crop, ".checked").unlink(missing_ok=True)
        self._path(crop, ".excluded").unlink(missing_ok=True)

    def check(self, crop: str, box: Box, embedder: Embedder) -> None:
        """Make sure the PNG holds exactly the one face (masking intruders), once."""
        checked, png = self._path(crop, ".checked"), self.png(crop)
        if checked.is_file() or not png.is_file():
            return
        pixels = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if pixels is None:
            png.unlink(missing_ok=True)
            return
        placed = placed_box(box, self.padding, self.size)
        verdict = one_face(np.asarray(pixels, np.uint8), placed, embedder)
        if verdict.pixels is None:
            self._tree.write(self._path(crop, ".excluded"), (verdict.note or "left out").encode())
            png.unlink(missing_ok=True)
            return
        if verdict.pixels is not pixels:
            self._write_png(crop, verdict.pixels)
        self._tree.write(checked, b"")

    def _write_png(self, crop: str, pixels: NDArray[np.uint8]) -> None:
        target = self.png(crop)
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:
            raise OSError(f"cannot encode the PNG of {crop}")
        self._tree.write(target, bytes(encoded.tobytes()))

    def remove(self, crops: Sequence[str]) -> None:
        """The PNGs (and their notes) of faces that are gone."""
        if not self.directory.is_dir():
            return
        for crop in crops:
            for suffix in (".png", ".checked", ".excluded"):
                (self.directory / Path(crop).with_suffix(suffix)).unlink(missing_ok=True)

    def remove_leftovers(self) -> None:
        """Temporary files of a process killed while writing a PNG or its note."""
        self._tree.remove_leftovers()


def distances_from_centre(embeddings: dict[int, NDArray[np.float32]], face_ids: Sequence[int]) -> dict[int, float]:
    """Each face's cosine distance from the centre of these faces (the normalised mean): what the swap
    export leaves outliers out by, and what the review page shows."""
    present = [face_id for face_id in face_ids if face_id in embeddings]
    if not present:
        return {}
    vectors = np.stack([embeddings[face_id] for face_id in present])
    centre = vectors.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    return dict(zip(present, (1.0 - vectors @ centre).tolist(), strict=True))


def select(
    faces: Sequence[ExportFace], embeddings: dict[int, NDArray[np.float32]], min_quality: float
) -> tuple[list[ExportFace], dict[int, str]]:
    """The faces of one identity that go into its swap set, best first, and why the others do not:
    below min_quality; farther than OUTLIER_DISTANCE from the set's centre; a near-duplicate of a
    better face (similarity >= DUPLICATE_SIMILARITY). None is deleted: they all stay in the store."""
    left_out: dict[int, str] = {}

    def score(face: ExportFace) -> float:
        return face.quality.composite if face.quality is not None else 0.0

    candidates = []
    for face in faces:
        if score(face) < min_quality:
            left_out[face.face_id] = f"quality {score(face):.2f} under min_quality {min_quality:g}"
        elif face.face_id in embeddings:
            candidates.append(face)
    if candidates:
        from_centre = distances_from_centre(embeddings, [face.face_id for face in candidates])
        kept = []
        for face in candidates:
            distance = from_centre[face.face_id]
            if distance > OUTLIER_DISTANCE:
                left_out[face.face_id] = f"{distance:.2f} from the set's centre (over {OUTLIER_DISTANCE})"
            else:
                kept.append(face)
        candidates = kept
    chosen: list[ExportFace] = []
    for face in sorted(candidates, key=lambda face: (-score(face), face.face_id)):
        twin = next(
            (
                other
                for other in chosen
                if float(embeddings[face.face_id] @ embeddings[other.face_id]) >= DUPLICATE_SIMILARITY
            ),
            None,
        )
        if twin is not None:
            left_out[face.face_id] = f"a near-duplicate of face {twin.face_id}"
        else:
            chosen.append(face)
    return chosen, left_out


def plan(
    number: int,
    name: str | None,
    members: Sequence[ExportFace],
    chosen: Sequence[ExportFace],
    left_out: dict[int, str],
    cache: SwapCache,
    settings: ExportSettings,
    link_of: Callable[[ExportFace], str | None],
    subset: str | None = None,
) -> Plan:
    """The swap layout of one faceset (of all its `members`): the chosen faces that have a clean
    PNG, best first, the best top_n of them again in top/ (for tools that take files, not zips), the
    bundles [export] bundles asks for, and each face left out with its photo and why."""
    photo = {face.face_id: face.asset_id for face in members}
    usable: list[ExportFace] = []
    for face in chosen:
        note = cache.excluded(face.crop)
        if note is not None:
            left_out[face.face_id] = note
        elif cache.png(face.crop).is_file():
            usable.append(face)
        else:
            left_out[face.face_id] = NO_PNG
    # A face keeps its file name as long as it stays in the set (tools keep paths); its rank is the
    # manifest's order (and `rank`) and the bundles' order.
    files = {f"face_{face.face_id:07d}.png": face for face in usable}
    top = list(files)[: settings.top_n]
    folder = faceset_name(number, subset)
    bundles: dict[str, list[str]] = {}
    if files and settings.bundles in ("both", "full"):
        bundles[f"{folder}.fsz"] = list(files)
    if files and settings.bundles in ("both", "top"):
        bundles[f"{folder}.top.fsz"] = top
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "number": number,
        **({"subset": subset} if subset else {}),
        "name": name,
        "faces": [
            {
                "file": file,
                "rank": rank,
                "top": file in top,  # in top/ and the top bundle
                **photo_entry(face, link_of),
                "bbox": [round(v, 1) for v in face.bbox],
                "png_box": [round(v, 1) for v in placed_box(face.bbox, cache.padding, cache.size)],
                "det_score": round(face.det_score, 4),
                "distance": None if face.distance is None else round(face.distance, 4),
                "quality": None if face.quality is None else face.quality.as_dict(),
            }
            for rank, (file, face) in enumerate(files.items(), 1)
        ],
        "top_folder": TOP_FOLDER if top else None,
        "bundles": list(bundles),
        # The settings the files were made with: a change of any of them rewrites every folder.
        "png": {"size": cache.size, "padding": cache.padding, "top_n": settings.top_n, "bundles": settings.bundles},
        "left_out": [
            {"face_id": face_id, "asset_id": photo.get(face_id), "why": why}
            for face_id, why in sorted(left_out.items())
        ],
        "written_by": "facesyncd",  # the older pipeline writes a manifest.json too: this one is ours
    }
    contents: dict[str, Source] = {file: cache.png(face.crop) for file, face in files.items()}
    contents.update({f"{TOP_FOLDER}/{file}": cache.png(files[file].crop) for file in top})
    for bundle_name, bundled in bundles.items():  # (written from the PNGs only if the folder lacks it)
        contents[bundle_name] = Bundle(tuple((file, cache.png(files[file].crop)) for file in bundled))
    return Plan(SWAP_MANIFEST, manifest, contents, placeholders={NAME_FILE: ((name or "") + "\n").encode()})
