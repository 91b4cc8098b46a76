"""Issue 24, behaviour 4: what decoding large JPEGs at a reduced scale could save the stage, measured.

On 12-24 MP photos (the test photos scaled up, with a sensor's grain so that they compress as camera
photos do, and the two large test photos as they are), one thread, CPU seconds:

- the stage's work per photo as facesyncd does it today: decode at full size, detect, align and embed,
  measure and cut (the parts of `cycle/stage.py` that touch pixels);
- decoding alternatives against the full decode of the same files: OpenCV's reduced decode at the
  smallest scale whose long side still fills the detector's input, and the floor any single-pass
  decode of a JPEG pays: reading its entropy-coded data once (libjpeg-turbo's transform with no
  output, through ctypes; left out, with the reason, where libturbojpeg is not installed);
- the stage's CPU if decoding cost only that floor (the most a reduced decode that still reads the
  face regions at full resolution could give);
- whether faces found on a reduced decode give today's embeddings: landmarks from the reduced image,
  alignment from the full-resolution pixels, cosine against today's embedding of the same face.

    .venv/bin/python benchmarks/bench_decode.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import PHOTOS, TEST_PACK, require_shared

SOURCES = (
    "groups/two_people.jpg",
    "groups/obama_and_biden.jpg",
    "wild/katy_perry/img26.jpg",
    "wild/matt_damon/img33.jpg",
    "groups/couple.jpg",
    "groups/kit_with_rose.jpg",
    "wild/angelina_jolie/img1.jpg",
    "groups/t1.jpg",
)
AS_THEY_ARE = ("groups/craft-beer.jpg", "noface/book-beside-flowers.jpg")  # 24 and 12 MP camera photos
REPEATS = 3


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def large_photos(directory: Path) -> list[Path]:
    """The test photos at 12 and 24 MP, alternately, with grain (sigma 2.5), JPEG quality 92."""
    import cv2

    rng = np.random.default_rng(1)
    made = []
    for index, name in enumerate(SOURCES):
        image = cv2.imread(str(PHOTOS / name))
        scale = ((12e6 if index % 2 == 0 else 24e6) / (image.shape[0] * image.shape[1])) ** 0.5
        large = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC).astype(np.float32)
        large += rng.normal(0, 2.5, large.shape).astype(np.float32)
        path = directory / f"{index}_{Path(name).stem}.jpg"
        cv2.imwrite(str(path), np.clip(large, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        made.append(path)
    return made + [PHOTOS / name for name in AS_THEY_ARE]


def best_of(work: Callable[[], Any]) -> float:
    spent = []
    for _ in range(REPEATS):
        started = cpu()
        work()
        spent.append(cpu() - started)
    return min(spent)


class EntropyPass:
    """libjpeg-turbo reading a JPEG's coefficients once and writing nothing (TJXOPT_NOOUTPUT with a
    filter that does nothing): what any decode of the file costs at least."""

    NOOUTPUT = 16

    def __init__(self) -> None:
        found = ctypes.util.find_library("turbojpeg")
        if found is None:
            raise OSError("libturbojpeg is not installed (Debian: libturbojpeg0)")
        self.library = ctypes.CDLL(found)

        class Region(ctypes.Structure):
            _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]

        class Transform(ctypes.Structure):
            pass

        self.filter_type = ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_short),
            Region,
            Region,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(Transform),
        )
        Transform._fields_ = [
            ("r", Region),
            ("op", ctypes.c_int),
            ("options", ctypes.c_int),
            ("data", ctypes.c_void_p),
            ("customFilter", self.filter_type),
        ]
        self.transform_type = Transform
        self.library.tjInitTransform.restype = ctypes.c_void_p
        self.library.tjDestroy.argtypes = [ctypes.c_void_p]
        self.library.tjTransform.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_ulong),
            ctypes.POINTER(Transform),
            ctypes.c_int,
        ]
        self.nothing = self.filter_type(lambda *arguments: 0)

    def read(self, data: bytes) -> None:
        transform = self.transform_type()
        transform.options = self.NOOUTPUT
        transform.customFilter = self.nothing
        handle = self.library.tjInitTransform()
        outputs, sizes = (ctypes.c_void_p * 1)(), (ctypes.c_ulong * 1)()
        try:
            if self.library.tjTransform(handle, data, len(data), 1, outputs, sizes, ctypes.byref(transform), 0):
                raise OSError("libturbojpeg could not read the file")
        finally:
            self.library.tjDestroy(handle)


def reduced_flag(width: int, height: int, det_size: int) -> tuple[int, int]:
    """OpenCV's smallest reduced decode whose long side still fills the detector's input."""
    import cv2

    flags = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
    for factor, flag in flags.items():
        if max(width, height) // factor >= det_size:
            return factor, flag
    return 1, cv2.IMREAD_COLOR


def measure(paths: list[Path]) -> dict[str, Any]:
    import cv2

    from facesyncd.config import FaceSettings, ModelSettings
    from facesyncd.crops import cut
    from facesyncd.embedding import find_faces
    from facesyncd.imaging import decode_image
    from facesyncd.onnx_embedder import OnnxEmbedder
    from facesyncd.quality import assess

    cv2.setNumThreads(1)
    model = ModelSettings(pack=str(TEST_PACK), threads=1)
    embedder = OnnxEmbedder(model, FaceSettings(min_face_px=0))
    embedder.load()
    try:
        entropy: EntropyPass | None = EntropyPass()
        entropy_why = ""
    except OSError as error:
        entropy, entropy_why = None, str(error)
    totals = dict.fromkeys(("decode", "find faces", "measure and cut", "reduced", "entropy"), 0.0)
    cosines: list[float] = []
    resampled: list[float] = []
    faces_today = 0
    for path in paths:
        data = path.read_bytes()
        encoded = np.frombuffer(data, np.uint8)
        image = decode_image(path, max_pixels=250_000_000)
        totals["decode"] += best_of(lambda: decode_image(path, max_pixels=250_000_000))  # noqa: B023
        faces = find_faces(embedder, image)
        totals["find faces"] += best_of(lambda: find_faces(embedder, image))  # noqa: B023
        totals["measure and cut"] += best_of(
            lambda: [
                (assess(image.pixels, face.bbox, face.landmarks, face.det_score), cut(image, face.bbox, 0.3))  # noqa: B023
                for face in faces  # noqa: B023
            ]
        )
        factor, flag = reduced_flag(image.width, image.height, model.det_size)
        totals["reduced"] += best_of(lambda: cv2.imdecode(encoded, flag))  # noqa: B023
        if entropy is not None:
            totals["entropy"] += best_of(lambda: entropy.read(data))  # noqa: B023
        faces_today += len(faces)
        if not faces:
            continue
        cosines += found_on(embedder, image, faces, cv2.imdecode(encoded, flag))
        # The same full decode brought to the detector's size by area averaging (what a reduced decode
        # does) instead of today's bilinear resize: how far today's embeddings move with the detector's
        # resampling alone, the pixels of the faces unchanged.
        long_side = max(image.width, image.height)
        side = model.det_size
        shape = (round(image.width * side / long_side), round(image.height * side / long_side))
        resampled += found_on(embedder, image, faces, cv2.resize(image.pixels, shape, interpolation=cv2.INTER_AREA))
    return {
        **totals,
        "cosines": cosines,
        "resampled": resampled,
        "faces": faces_today,
        "entropy why": entropy_why,
    }


def found_on(embedder: Any, image: Any, faces: list[Any], small: np.ndarray) -> list[float]:
    """Today's faces found again on `small` (the photo at the detector's scale): each one's cosine to
    today's embedding, aligned from the full-resolution pixels by the landmarks found there (0: not
    found)."""
    from facesyncd.imaging import DecodedImage
    from facesyncd.onnx_embedder import align

    scale = image.width / small.shape[1]
    boxes, landmarks = embedder.detect(DecodedImage(small, "JPEG"))
    if not len(boxes):
        return [0.0] * len(faces)
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2 * scale
    found = []
    for face in faces:
        centre = np.array([(face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2])
        nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
        vector = embedder.embed_aligned([align(image.pixels, landmarks[nearest] * scale, embedder.aligned_size)])[0]
        found.append(float(vector @ face.embedding))
    return found


def main() -> list[tuple[str, str, str]]:
    require_shared()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as directory:
        paths = large_photos(Path(directory))
        found = measure(paths)
    stage = found["decode"] + found["find faces"] + found["measure and cut"]
    decode = found["decode"]
    cosines = np.array(found["cosines"])
    rows = [
        (
            f"the stage on {len(paths)} photos of 12-24 MP ({found['faces']} faces), CPU-s, one thread",
            f"{stage:.2f}: decode {decode:.2f}, find faces {found['find faces']:.2f}, "
            f"measure and cut {found['measure and cut']:.2f}",
            f"decoding is {decode / stage:.0%} of it",
        ),
        (
            "  OpenCV's reduced decode (1/2-1/8, the long side at least the detector's) against the full decode",
            f"{found['reduced'] / decode:.2f}x",
            "detection only: the faces still need full-resolution pixels",
        ),
    ]
    if found["entropy"]:
        floor = found["entropy"] / decode
        rows += [
            (
                "  reading the entropy-coded data once (libjpeg-turbo, no output): any decode's floor",
                f"{floor:.2f}x",
                "",
            ),
            (
                "  the stage if decoding cost only that floor",
                f"{(stage - decode * (1 - floor)) / stage:.2f}x today's",
                "target <= 0.70x",
            ),
        ]
    else:
        rows.append(("  the entropy-coded data's floor", "not measured", found["entropy why"]))
    rows.append(
        (
            "  faces found on the reduced decode, aligned from full-resolution pixels: cosine to today's",
            f"median {np.median(cosines):.4f}, min {cosines.min():.4f}, {int((cosines >= 0.999).sum())} of "
            f"{len(cosines)} >= 0.999",
            "target: all >= 0.999",
        )
    )
    resampled = np.array(found["resampled"])
    rows.append(
        (
            "  today's faces found again on the full decode resized by area averaging, not bilinear: cosine to today's",
            f"median {np.median(resampled):.4f}, min {resampled.min():.4f}, {int((resampled >= 0.999).sum())} of "
            f"{len(resampled)} >= 0.999",
            "the detector's resampling alone moves the embeddings this far",
        )
    )
    return rows


if __name__ == "__main__":
    for row in main():
        print(" | ".join(row))
