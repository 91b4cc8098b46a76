"""The embedder with the real test pack: sizes from the model, batching, providers, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, PHOTOS, TEST_PACK, requires_shared
from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.embedder import FaceEmbedder, choose_providers
from facesyncd.errors import ModelError
from facesyncd.imaging import decode_image

pytestmark = requires_shared
CPU = ("CPUExecutionProvider",)


def embedder_for(pack: Path, **faces) -> FaceEmbedder:
    return FaceEmbedder(ModelSettings(pack=str(pack), providers=CPU), FaceSettings(**faces))


def load(path: Path):
    return decode_image(path, max_pixels=200_000_000)


def test_embedding_size_comes_from_the_model() -> None:
    embedder = embedder_for(TEST_PACK)
    faces = embedder.faces(load(PHOTOS / "groups" / "two_people.jpg"))
    assert embedder.dimension == 128 and len(faces) == 2
    for face in faces:
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5
        assert len(face.landmarks) == 5 and face.crop_jpeg[:2] == b"\xff\xd8"
    assert embedder.providers == ["CPUExecutionProvider"]


def test_a_recognizer_fixed_at_batch_one_gives_the_same_embeddings(tmp_path: Path) -> None:
    pack = tmp_path / "batch1"
    pack.mkdir()
    shutil.copy(TEST_PACK / "det_500m.onnx", pack)
    shutil.copy(MODELS / "extra" / "rec_mobilefacenet_128d_batch1.onnx", pack)
    image = load(PHOTOS / "groups" / "t1.jpg")
    batched = embedder_for(TEST_PACK, min_face_px=0).faces(image)
    single = embedder_for(pack, min_face_px=0).faces(image)
    assert len(batched) == len(single) == 6
    for a, b in zip(batched, single, strict=True):
        assert float(a.embedding @ b.embedding) > 0.9999


def test_same_person_is_close_and_different_people_are_far() -> None:
    embedder = embedder_for(TEST_PACK)
    obama = [embedder.faces(load(PHOTOS / "wild" / "obama" / n))[0].embedding for n in ("obama.jpg", "obama2.jpg")]
    biden = embedder.faces(load(PHOTOS / "wild" / "biden" / "biden.jpg"))[0].embedding
    assert 1 - float(obama[0] @ obama[1]) < 0.45
    assert 1 - float(obama[0] @ biden) > 0.55


def test_small_faces_and_low_scores_are_dropped() -> None:
    image = load(PHOTOS / "groups" / "solvay_conference_1927.jpg")
    everyone = embedder_for(TEST_PACK, min_face_px=0).faces(image)
    large = embedder_for(TEST_PACK, min_face_px=90).faces(image)
    assert len(everyone) == 29
    assert 0 < len(large) < 29
    assert all(min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]) >= 90 for f in large)
    confident = embedder_for(TEST_PACK, min_face_px=0, min_det_score=0.8).faces(image)
    assert all(f.det_score >= 0.8 for f in confident) and len(confident) < 29


def test_a_missing_pack_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"no .onnx files in {tmp_path / 'buffalo_l'}"):
        embedder_for(tmp_path / "buffalo_l").load()


def test_a_pack_name_resolves_under_insightface_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    assert ModelSettings(pack="buffalo_l").pack_dir() == tmp_path / "models" / "buffalo_l"


def test_a_pack_without_recognizer_is_refused(tmp_path: Path) -> None:
    shutil.copy(TEST_PACK / "det_500m.onnx", tmp_path)
    with pytest.raises(ModelError, match="has no recognizer"):
        embedder_for(tmp_path).load()


def test_provider_choice_falls_back_to_cpu() -> None:
    assert choose_providers(("auto",), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(("auto",), ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(("auto",), ["DmlExecutionProvider", "CPUExecutionProvider"])[0] == "DmlExecutionProvider"
    assert choose_providers(("CUDAExecutionProvider",), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_provider_that_fails_to_start_falls_back_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here, so a GPU provider's start failure is simulated: onnxruntime's CPU build is told
    to start a provider it does not have. The fallback code runs for real on the real pack."""
    import insightface.model_zoo as model_zoo

    real_get_model = model_zoo.get_model
    attempts: list[list[str]] = []

    def get_model(path: str, providers: list[str], **options: object) -> object:
        attempts.append(list(providers))
        if providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real_get_model(path, providers=providers, **options)

    monkeypatch.setattr(model_zoo, "get_model", get_model)
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    embedder = FaceEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("auto",)), FaceSettings())
    embedder.load()
    assert embedder.providers == ["CPUExecutionProvider"]
    assert attempts[0] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ["CPUExecutionProvider"] in attempts


def _boxes(faces) -> np.ndarray:
    return np.array(sorted(f.bbox for f in faces), np.float32)


def test_the_detector_reads_only_the_image_not_padding() -> None:
    """A dynamic detector gets det_size on the long side and the short side rounded up to 32, not a
    square: the same faces come back, at the same places."""
    tight = embedder_for(TEST_PACK, min_face_px=0)
    tight.load()
    square = embedder_for(TEST_PACK, min_face_px=0)
    square.load()
    square._detector_on_cpu = False  # the GPU path keeps the configured square input
    for name, expected in (("two_people.jpg", (640, 384)), ("selfie-many-people.jpg", (640, 640))):
        image = load(PHOTOS / "groups" / name)
        assert tight._detector_input(image) == expected
        assert square._detector_input(image) is None
        ours, theirs = _boxes(tight.faces(image)), _boxes(square.faces(image))
        assert len(ours) == len(theirs) > 0
        assert np.abs(ours - theirs).max() < 3
    portrait = load(PHOTOS / "wild" / "biden" / "biden.jpg")  # 970 x 2204
    assert tight._detector_input(portrait) == (288, 640)


def test_a_detector_with_a_fixed_input_size_gets_that_size(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(TEST_PACK / "det_500m.onnx"))
    for dimension, value in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], (640, 640), strict=True):
        dimension.dim_value = value
    onnx.save(model, str(tmp_path / "det_fixed.onnx"))
    shutil.copy(TEST_PACK / "rec_mobilefacenet_128d.onnx", tmp_path)
    embedder = embedder_for(tmp_path, min_face_px=0)
    image = load(PHOTOS / "groups" / "two_people.jpg")
    assert len(embedder.faces(image)) == 2
    assert embedder._detector_input(image) is None
