"""One photo's faces, from found to stored: what the stage (photos from Immich) and the importer (a
tree's face images) both do once a photo's faces are found. Each face is measured (quality.py), its
crop cut, and what the export layout cuts from the photo is cut while the pixels are at hand (outside
any transaction); then the photo and its faces are written in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .crops import Crops
from .imaging import DecodedImage
from .layouts import Layout
from .models import DecodeSource, DetectedFace, Quality
from .quality import assess
from .store import Store


@dataclass(frozen=True)
class PhotoFaces:
    """A photo's faces, ready to store: its bytes' hash and size, its pixel size, where the pixels
    came from, and per face the detection, the crop's name and the quality."""

    sha256: str
    size: int
    width: int
    height: int
    decoded_from: DecodeSource
    faces: list[DetectedFace]
    crops: list[str]
    qualities: list[Quality | None]


def cut_faces(
    image: DecodedImage,
    sha256: str,
    size: int,
    decoded_from: DecodeSource,
    faces: Sequence[DetectedFace],
    *,
    crops: Crops,
    layout: Layout,
    recorded_quality: Quality | None = None,
) -> PhotoFaces:
    """Measure and cut `faces` of `image` (files only; nothing is written to the store). A quality
    recorded elsewhere (an imported tree measured the original photo) is taken as it is."""
    boxes = [face.bbox for face in faces]
    qualities: list[Quality | None] = [
        recorded_quality or assess(image.pixels, face.bbox, face.landmarks, face.det_score) for face in faces
    ]
    names = crops.write_faces(sha256, image, boxes)
    layout.photo_at_hand(image.pixels, names, boxes)
    return PhotoFaces(sha256, size, image.width, image.height, decoded_from, list(faces), names, qualities)


def save_faces(store: Store, photo: PhotoFaces, model: str) -> None:
    """The photo and its faces into the store (nothing if its bytes are there already). Call inside
    the caller's transaction."""
    store.save_blob_faces(
        photo.sha256,
        size=photo.size,
        width=photo.width,
        height=photo.height,
        decoded_from=photo.decoded_from,
        model=model,
        faces=photo.faces,
        crops=photo.crops,
        qualities=photo.qualities,
    )
