"""One photo's faces, from found to stored: what the stage (photos from Immich) and the importer (a
tree's face images) both do. The faces are found (again with a border around the photo when it
seems to have none: a face that fills the whole frame is missed by the detector), each is measured
(quality.py), its crop cut, and what the export layout cuts from the photo is cut while the pixels
are at hand (outside any transaction); then the photo and its faces are written in the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import clip
from .crops import Crops
from .embedder import Embedder
from .imaging import DecodedImage
from .layouts import Layout
from .models import DecodeSource, DetectedFace, Quality
from .quality import assess
from .store import Store

# The border around a photo that seems to have no face, as a fraction of its longer side: the
# detector misses a face that fills the whole frame (10 of 10 test photos cut to their face box, or
# closer), and finds each with this much room around it (scores 0.74-0.88; 0.61-0.83 with 0.25).
PAD_FRACTION = 0.6


def pad(image: DecodedImage, fraction: float = PAD_FRACTION) -> tuple[DecodedImage, int]:
    """The image with a black border on every side (`fraction` of its longer side), and the border's
    width."""
    border = int(max(image.width, image.height) * fraction)
    padded = np.zeros((image.height + 2 * border, image.width + 2 * border, 3), np.uint8)
    padded[border : border + image.height, border : border + image.width] = image.pixels
    return DecodedImage(padded, image.format), border


def find_faces(embedder: Embedder, image: DecodedImage) -> list[DetectedFace]:
    """The faces of the photo, in its own pixels; when none is found, those found with a border
    around it (boxes and landmarks moved back, boxes cut to the photo)."""
    faces = embedder.faces(image)
    if faces:
        return faces
    padded, border = pad(image)
    found = []
    for face in embedder.faces(padded):
        x1, y1, x2, y2 = (value - border for value in face.bbox)
        box = clip((x1, y1, x2, y2), image.width, image.height)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue  # a "face" in the border alone
        landmarks = tuple((x - border, y - border) for x, y in face.landmarks)
        found.append(DetectedFace(bbox=box, det_score=face.det_score, landmarks=landmarks, embedding=face.embedding))
    return found


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
