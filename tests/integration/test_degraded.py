"""A messy library: degraded copies of the test photos (blurred, compressed, shrunk, grey, mirrored)
beside the originals. Degraded faces must not mix people in a faceset, and the originals' facesets
must stay as a clean library has them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from conftest import PHOTOS, TEST_PACK, Library, requires_shared
from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.imaging import decode_image
from facesyncd.onnx_embedder import OnnxEmbedder
from fake_immich import FakeImmich

pytestmark = requires_shared
KINDS = ("blur", "jpeg", "small", "grey", "mirror")


def degraded(path: Path, kind: str, rng: np.random.Generator, face_px: float) -> bytes:
    """One degraded copy of a photo, as the field report made them: Gaussian blur (sigma 1.5-3, for a
    face of ~100 px), JPEG at quality 15-25, the face shrunk to 48-64 px, grey, or mirrored."""
    pixels = decode_image(path, max_pixels=10**8).pixels
    quality = 95
    if kind == "blur":
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(1.5, 3.0) * face_px / 100)
    elif kind == "jpeg":
        quality = int(rng.integers(15, 26))
    elif kind == "small":
        scale = rng.uniform(48, 64) / face_px
        pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    elif kind == "grey":
        pixels = cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    else:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(encoded.tobytes())


def test_degraded_copies_mix_no_people_and_leave_the_originals_facesets_alone(fake: FakeImmich, tmp_path: Path) -> None:
    lib = Library(fake, tmp_path / "run", extra="")
    text = lib.config.read_text().replace("[faces]\n", "[faces]\nmin_face_px = 40\n", 1)
    lib.config.write_text(text)
    lib.add(["wild"])
    lib.cli("sync")
    clean = {face: number for number in lib.sets() for face in lib.faces(number)}
    clean_sets = {number: set(lib.faces(number)) for number in lib.sets()}

    engine = OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), FaceSettings())
    engine.load()
    rng = np.random.default_rng(20)
    for path in sorted((PHOTOS / "wild").rglob("*.jpg")):
        faces = engine.faces(decode_image(path, max_pixels=10**8))
        if not faces:
            continue
        face_px = min(faces[0].bbox[2] - faces[0].bbox[0], faces[0].bbox[3] - faces[0].bbox[1])
        kind = KINDS[int(rng.integers(len(KINDS)))]
        label = f"degraded/{kind}/{path.relative_to(PHOTOS / 'wild')}"
        asset = fake.add_asset("alice", degraded(path, kind, rng, face_px), f"{kind}_{path.name}", label=label)
        lib.labels[asset] = label
    lib.cli("sync")

    for number in lib.sets():
        people = Counter(label.split("/")[-2] for label in lib.faces(number).values())
        assert len(people) == 1, f"faceset {number:03d} mixes people: {dict(people)}"
    for number, faces in clean_sets.items():
        assert faces <= set(lib.faces(number)), f"faceset {number:03d} lost faces of the original photos"
    assert all(clean[face] == number for number in clean_sets for face in clean_sets[number])
