"""How far a face re-detected in an exported crop lies from the same face in the whole photo.

An older tree (the one-shot pipeline's, or a user's hand-sorted one) holds 512 px square cut-outs, the
face box widened by half its size on each side; faces of it the user quarantined (`_thin/`) must stay
aside when the very photos they were cut from arrive from Immich, also where the tree does not say
which photo a crop came from. That match is by embedding: this measures the bound it needs (the
distance between a photo's face and the same face re-detected in its crop, for large and small faces,
PNG and JPEG cut-outs) against what it must not catch (the same person's other photos, other people).

    .venv/bin/python benchmarks/measure_crop_distance.py [--pack DIR]

Not a speed benchmark: it prints distances (cosine), for the identify stage's HELD_CROP_DISTANCE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from common import PHOTOS, TEST_PACK, require_shared
from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.imaging import DecodedImage, decode_image
from facesyncd.onnx_embedder import OnnxEmbedder
from facesyncd.swap import cut_square


def largest(embedder: OnnxEmbedder, pixels: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]] | None:
    faces = embedder.faces(DecodedImage(pixels, "JPEG"), min_face_px=0)
    if not faces:
        return None
    face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return face.embedding, face.bbox


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", type=Path, default=TEST_PACK)
    arguments = parser.parse_args()
    require_shared()
    embedder = OnnxEmbedder(
        ModelSettings(pack=str(arguments.pack), providers=("CPUExecutionProvider",)), FaceSettings(min_face_px=0)
    )
    photos = sorted(path for path in (PHOTOS / "wild").rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))
    # (face width in the photo: None = as it is; PNG or JPEG cut-out)
    variants = [(None, ".png"), (None, ".jpg"), (120, ".png"), (60, ".png"), (60, ".jpg")]
    print(f"{len(photos)} photos of {len({p.parent.name for p in photos})} people, pack {arguments.pack.name}")
    people: list[str] = []
    whole: list[np.ndarray] = []
    crops: dict[tuple[int | None, str], list[np.ndarray | None]] = {variant: [] for variant in variants}
    for path in photos:
        image = decode_image(path, max_pixels=10**9).pixels
        found = largest(embedder, image)
        if found is None:
            continue
        people.append(path.parent.name)
        whole.append(found[0])
        for width, suffix in variants:
            pixels, box = image, found[1]
            if width is not None:  # the photo smaller, so that its face is `width` pixels wide
                scale = width / (box[2] - box[0])
                if scale < 1:
                    pixels = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                    again = largest(embedder, pixels)
                    if again is None:
                        crops[(width, suffix)].append(None)
                        continue
                    box = again[1]
            cut, _ = cut_square(pixels, box, 0.5, 512)
            options = [cv2.IMWRITE_JPEG_QUALITY, 85] if suffix == ".jpg" else []
            encoded = cv2.imencode(suffix, cut, options)[1]
            decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
            in_crop = largest(embedder, np.asarray(decoded, np.uint8))
            crops[(width, suffix)].append(None if in_crop is None else in_crop[0])
    vectors = np.stack(whole)
    same_person = np.array([[a == b for b in people] for a in people])
    print("distance from the photo's face to the same face re-detected in its 512 px crop (padding 0.5):")
    print(
        f"  {'face width':>10} {'format':>6} {'n':>3} {'median':>7} {'p95':>6} {'max':>6}"
        f" | nearest other photo: {'same person min':>15} {'other people min':>16}"
    )
    for (width, suffix), found_crops in crops.items():
        same, own, other = [], [], []
        for row, crop in enumerate(found_crops):
            if crop is None:
                continue
            distances = 1.0 - vectors @ crop
            same.append(float(distances[row]))
            others = np.ones(len(people), bool)
            others[row] = False
            mine = others & same_person[row]
            if mine.any():
                own.append(float(distances[mine].min()))
            other.append(float(distances[~same_person[row]].min()))
        print(
            f"  {str(width or 'as is'):>10} {suffix[1:]:>6} {len(same):>3} {np.median(same):7.3f}"
            f" {np.percentile(same, 95):6.3f} {max(same):6.3f} | {' ':>21}{min(own):15.3f} {min(other):16.3f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
