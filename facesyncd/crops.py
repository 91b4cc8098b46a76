"""Face crops: one JPEG per face under state_dir/crops, the material the faceset folders are made of.

Crops are named by content (`ab/<sha256>_<face index>.jpg`), so an asset tried again rewrites the same
files, and written atomically. They are a cache of the photos: a lost crop is restored from a copy in
an exported folder, else cut again from the photo.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .atomic import Scattered, write_atomic
from .export import face_file
from .imaging import DecodedImage, encode_jpeg
from .models import Box, ExportFace, Quality, UnmeasuredFace
from .quality import assess

log = logging.getLogger(__name__)

CROPS_MARKER = "facesyncd-crops.id"  # see Crops.state (not a dot name: those are half-written files)


def crop_name(sha256: str, face_index: int) -> str:
    return f"{sha256[:2]}/{sha256}_{face_index}.jpg"


def _region(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop's rectangle in the photo: the face box widened by `margin` of its size on each side,
    clipped to the photo (the whole photo for a box outside it)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    left = max(0, int(round(x1 - pad_x)))
    top = max(0, int(round(y1 - pad_y)))
    right = min(width, int(round(x2 + pad_x)))
    bottom = min(height, int(round(y2 + pad_y)))
    if right <= left or bottom <= top:
        return 0, 0, width, height
    return left, top, right, bottom


def cut(image: DecodedImage, box: Box, margin: float) -> bytes:
    """The face box widened by `margin` of its size on each side, clipped to the image, as JPEG."""
    left, top, right, bottom = _region(box, margin, image.width, image.height)
    return encode_jpeg(np.ascontiguousarray(image.pixels[top:bottom, left:right]))


class Crops:
    def __init__(self, directory: Path, margin: float) -> None:
        self.directory = directory
        self.margin = margin
        self._tree = Scattered(directory)

    def path(self, name: str) -> Path:
        return self.directory / name

    def state(self) -> str:
        """A token of this crops directory, made anew with the directory ("" while there is none): a
        directory lost and made again says so to an export that trusts its folders, which would not
        bring back the crops of faces it does not touch (a whole export restores them from the
        folders). Kept in a file, not taken from the directory's inode, which a new directory may
        reuse."""
        marker = self.directory / CROPS_MARKER
        try:
            return marker.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            if not self.directory.is_dir():
                return ""
        token = secrets.token_hex(8)
        try:
            write_atomic(marker, token.encode())
        except OSError:  # a full disk: the next export compares every folder, as without a token
            return ""
        return token

    def exists(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def write(self, name: str, data: bytes) -> None:
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tree.write(target, data)

    def write_faces(self, sha256: str, image: DecodedImage, boxes: Sequence[Box]) -> list[str]:
        """Cut and write the crop of each face of one photo; returns their names."""
        names = [crop_name(sha256, index) for index in range(len(boxes))]
        for name, box in zip(names, boxes, strict=True):
            self.write(name, cut(image, box, self.margin))
        return names

    def _open(self, crop: str, box: Box) -> tuple[NDArray[np.uint8], float, float] | None:
        """A crop's pixels and where its top-left corner lies in the photo; None when it is gone."""
        data = np.fromfile(self.directory / crop, dtype=np.uint8) if self.exists(crop) else None
        pixels = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
        if pixels is None:
            return None
        left, top, _, _ = _region(box, self.margin, 1 << 30, 1 << 30)  # only the photo's top-left clips
        return np.asarray(pixels, np.uint8), left, top

    def measure(self, face: UnmeasuredFace) -> Quality | None:
        """The quality of a face stored before qualities were measured, from its crop (the face's
        box and landmarks moved into the crop's pixels); None when the crop is gone."""
        opened = self._open(face.crop, face.bbox)
        if opened is None:
            return None
        pixels, left, top = opened
        box = (face.bbox[0] - left, face.bbox[1] - top, face.bbox[2] - left, face.bbox[3] - top)
        return assess(pixels, box, [(x - left, y - top) for x, y in face.landmarks], face.det_score)

    def crop_image(self, face: ExportFace) -> tuple[DecodedImage, Box] | None:
        """A face's crop as an image, and the face's box in it (for a face whose photo is not in
        Immich); None when the crop is gone."""
        opened = self._open(face.crop, face.bbox)
        if opened is None:
            return None
        pixels, left, top = opened
        box = (face.bbox[0] - left, face.bbox[1] - top, face.bbox[2] - left, face.bbox[3] - top)
        return DecodedImage(pixels, "JPEG"), box

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            (self.directory / name).unlink(missing_ok=True)

    def remove_leftovers(self) -> None:
        """Temporary files of a process killed while writing a crop."""
        self._tree.remove_leftovers()

    def sweep_orphans(self, known: set[str]) -> int:
        """Remove crops no face in the store names (a crash between writing and committing)."""
        removed = 0
        if self.directory.is_dir():
            for path in self.directory.glob("*/*.jpg"):
                if f"{path.parent.name}/{path.name}" not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def restore(
        self,
        missing: Sequence[ExportFace],
        facesets_dir: Path,
        photo_of: Callable[[ExportFace], DecodedImage | None],
    ) -> int:
        """Bring lost crops back: from a copy in an exported folder (no download), else cut again from
        the photo (`photo_of` fetches it, or None when it cannot). Returns how many came back."""
        restored = 0
        exported = {path.name: path for path in sorted(facesets_dir.glob("faceset_*/face_*.jpg"))}
        by_blob: dict[str, list[ExportFace]] = {}
        for face in missing:
            copy = exported.get(face_file(face))
            if copy is not None:
                self.write(face.crop, copy.read_bytes())
                restored += 1
            else:
                by_blob.setdefault(face.sha256, []).append(face)
        for faces in by_blob.values():
            image = photo_of(faces[0])
            if image is None:
                continue
            for face in faces:
                self.write(face.crop, cut(image, face.bbox, self.margin))
                restored += 1
        return restored
