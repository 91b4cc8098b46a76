"""The embedder with the real test pack: sizes from the model, batching, providers, errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, PHOTOS, TEST_PACK, requires_shared
from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.errors import ModelError
from facesyncd.imaging import decode_image
from facesyncd.onnx_embedder import OnnxEmbedder, choose_providers

pytestmark = requires_shared
CPU = ("CPUExecutionProvider",)


def embedder_for(pack: Path, **faces) -> OnnxEmbedder:
    return OnnxEmbedder(ModelSettings(pack=str(pack), providers=CPU), FaceSettings(**faces))


def load(path: Path):
    return decode_image(path, max_pixels=200_000_000)


def test_embedding_size_comes_from_the_model() -> None:
    from facesyncd.crops import cut

    embedder = embedder_for(TEST_PACK)
    image = load(PHOTOS / "groups" / "two_people.jpg")
    faces = embedder.faces(image)
    assert embedder.dimension == 128 and len(faces) == 2
    for face in faces:
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5
        assert len(face.landmarks) == 5 and cut(image, face.bbox, 0.3)[:2] == b"\xff\xd8"
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
    import onnxruntime

    real_session = onnxruntime.InferenceSession
    attempts: list[list[str]] = []

    def session(path: str, sess_options: object = None, providers: list[str] | None = None) -> object:
        attempts.append(list(providers or []))
        if providers and providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real_session(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    embedder = OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("auto",)), FaceSettings())
    embedder.load()
    assert embedder.providers == ["CPUExecutionProvider"]
    assert attempts[0] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ["CPUExecutionProvider"] in attempts


class _GpuLikeSession:
    """A real CPU session that reports a GPU provider, as onnxruntime-gpu's would, and records the
    shape of every input it is given."""

    def __init__(self, session: object, provider: str, shapes: list[tuple[int, ...]]) -> None:
        self._session, self._provider, self.shapes = session, provider, shapes

    def get_providers(self) -> list[str]:
        return [self._provider, "CPUExecutionProvider"] if self._provider else ["CPUExecutionProvider"]

    def run(self, names: object, feeds: dict[str, np.ndarray]) -> object:
        self.shapes.extend(value.shape for value in feeds.values())
        return self._session.run(names, feeds)

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


def _sessions_like(monkeypatch: pytest.MonkeyPatch, provider: str) -> dict[str, list[list[tuple[int, ...]]]]:
    """Make onnxruntime's sessions claim `provider` ('' for one that did not start); returns each
    model file's sessions' input shapes, one list per session."""
    import onnxruntime

    real_session = onnxruntime.InferenceSession
    shapes: dict[str, list[list[tuple[int, ...]]]] = {}

    def session(path: str, sess_options: object = None, providers: object = None) -> object:
        shapes.setdefault(Path(path).name, []).append([])
        made = real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        return _GpuLikeSession(made, provider, shapes[Path(path).name][-1])

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr("facesyncd.onnx_embedder._preloaded", True)
    return shapes


def test_on_a_gpu_each_session_sees_one_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU session pays for every new input shape (1.5-2.4 s per change of the recognizer's batch
    size, measured on CUDA), so on a GPU the detector takes one input size, single faces go to one
    recognizer session and several faces to a second one, padded to one batch size. The embeddings
    are the CPU's own for the same faces. (The faces themselves can differ a little: the CPU's
    detector takes an input trimmed to the photo's shape, which a GPU would pay for per shape.)"""
    from facesyncd.onnx_embedder import GPU_RECOGNIZER_BATCH, align

    photos = [
        PHOTOS / "wild" / "obama" / "obama.jpg",
        PHOTOS / "groups" / "two_people.jpg",
        PHOTOS / "groups" / "t1.jpg",
    ]
    images = [load(path) for path in photos]
    on_cpu = embedder_for(TEST_PACK, min_face_px=0)
    on_cpu.load()
    shapes = _sessions_like(monkeypatch, "CUDAExecutionProvider")
    embedder = OnnxEmbedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CUDAExecutionProvider",)), FaceSettings(min_face_px=0)
    )
    embedder.load()
    # Each GPU session has run once on its shape at load, so that no photo pays for its kernels.
    assert {name: [len(runs) for runs in sessions] for name, sessions in shapes.items()} == {
        "det_500m.onnx": [1],
        "rec_mobilefacenet_128d.onnx": [1, 1],
    }
    found = [embedder.faces(image) for image in images]
    many = embedder.embed_aligned([np.full((112, 112, 3), shade, np.uint8) for shade in range(0, 250, 10)])
    assert [len(faces) for faces in found] == [1, 2, 6]
    for image, faces in zip(images, found, strict=True):
        crops = [align(image.pixels, np.array(face.landmarks, np.float32), 112) for face in faces]
        assert np.allclose(np.stack([face.embedding for face in faces]), on_cpu.embed_aligned(crops), atol=1e-5)
    alone = on_cpu.embed_aligned([np.full((112, 112, 3), shade, np.uint8) for shade in range(0, 250, 10)])
    assert many.shape == (25, 128) and np.allclose(many, alone, atol=1e-5)
    (detector,) = shapes["det_500m.onnx"]
    single, batches = shapes["rec_mobilefacenet_128d.onnx"]
    assert set(detector) == {(1, 3, 640, 640)}
    assert single == [(1, 3, 112, 112)] * 2  # the warm-up, the one-face photo
    # the warm-up, two faces, six faces, and 25 faces in two calls
    assert batches == [(GPU_RECOGNIZER_BATCH, 3, 112, 112)] * 5


def test_cuda_libraries_are_preloaded_once_and_a_provider_that_did_not_start_is_told(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime-gpu falls back to the CPU with no error when CUDA's libraries are not on the
    loader's path; facesyncd preloads them (where ./install.sh --cuda puts them) and, where that
    fails too, says that the models run on the CPU. onnxruntime prints its complaints: they go to the
    log."""
    import onnxruntime

    _sessions_like(monkeypatch, "")
    calls: list[int] = []

    def preload_dlls() -> None:
        calls.append(1)
        print("Failed to load libcublasLt.so.13: cannot open shared object file")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr("facesyncd.onnx_embedder._preloaded", False)
    OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=CPU), FaceSettings()).load()
    assert calls == []
    with caplog.at_level("WARNING", logger="facesyncd.onnx_embedder"):
        for _ in range(2):
            embedder = OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("auto",)), FaceSettings())
            embedder.load()
    assert calls == [1] and embedder.providers == ["CPUExecutionProvider"]
    messages = [record.getMessage() for record in caplog.records]
    assert "onnxruntime: Failed to load libcublasLt.so.13: cannot open shared object file" in messages
    assert sum("run on CPUExecutionProvider, not CUDAExecutionProvider" in m for m in messages) == 2


def test_faces_are_insightfaces_own_without_insightface() -> None:
    """facesyncd reads the pack with onnxruntime directly (insightface's package metadata would pull
    opencv-python and plain onnxruntime into every install); insightface 2.1 is the reference: the
    same boxes, landmarks and embeddings on every test photo."""
    from insightface.model_zoo import get_model
    from insightface.utils import face_align

    from facesyncd.onnx_embedder import align

    ours = embedder_for(TEST_PACK, min_face_px=0)
    detector = get_model(str(TEST_PACK / "det_500m.onnx"), providers=list(CPU))
    detector.prepare(ctx_id=0, input_size=(640, 640), det_thresh=0.5)
    recognizer = get_model(str(TEST_PACK / "rec_mobilefacenet_128d.onnx"), providers=list(CPU))
    compared = 0
    for path in sorted((PHOTOS / "groups").iterdir()) + sorted((PHOTOS / "wild" / "obama").iterdir()):
        image = load(path)
        boxes, landmarks = ours.detect(image)
        their_boxes, their_landmarks = detector.detect(image.pixels, input_size=ours._detector_input(image), max_num=0)
        assert boxes.shape == their_boxes.shape, path.name
        assert np.abs(boxes - their_boxes).max(initial=0) < 0.01, path.name
        assert np.abs(landmarks - their_landmarks).max(initial=0) < 0.01, path.name
        if not len(boxes):
            continue
        mine = ours.embed_aligned([align(image.pixels, points, 112) for points in landmarks])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # insightface calls a deprecated scikit-image API
            crops = [face_align.norm_crop(image.pixels, landmark=points, image_size=112) for points in their_landmarks]
        theirs = np.concatenate([recognizer.get_feat([crop]) for crop in crops])
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        assert float((mine * theirs).sum(axis=1).min()) > 0.9999, path.name
        compared += len(boxes)
    assert compared > 40


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


def test_the_model_router_tells_the_packs_files_apart() -> None:
    """buffalo_l holds five models; only the detector and the recognizer are loaded, told apart by
    their graphs as insightface's router does."""
    from facesyncd.onnx_embedder import _Graph, task_of

    assert task_of(_Graph([[1, 3, "h", "w"]], 9, [])) == "detection"  # det_10g / det_500m: SCRFD, 9 outputs
    assert task_of(_Graph([["n", 3, 112, 112]], 1, [])) == "recognition"  # w600k_r50
    assert task_of(_Graph([[1, 3, 192, 192]], 1, [])) is None  # 1k3d68 / 2d106det: landmarks
    assert task_of(_Graph([[1, 3, 96, 96]], 1, [])) is None  # genderage
    assert task_of(_Graph([[1, 3, 128, 128], [1, 512]], 1, [])) is None  # inswapper
    assert task_of(_Graph([[1, 3, 100, 100]], 1, [])) is None


def test_the_alignment_is_scikit_images_similarity_transform() -> None:
    from skimage.transform import SimilarityTransform

    from facesyncd.onnx_embedder import ARCFACE_LANDMARKS, similarity_transform

    rng = np.random.default_rng(7)
    for _ in range(20):
        points = ARCFACE_LANDMARKS * rng.uniform(0.5, 4) + rng.uniform(-50, 300, size=2) + rng.normal(size=(5, 2))
        reference = SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            reference.estimate(points, ARCFACE_LANDMARKS)
        assert np.abs(similarity_transform(points, ARCFACE_LANDMARKS) - reference.params[:2]).max() < 1e-9


def test_a_gpu_session_that_fails_its_first_run_is_a_clear_error_and_the_next_load_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm-up at load is a GPU session's first run: where the device cannot run it (its memory
    full, say), loading fails with what to do, and leaves nothing half loaded behind."""
    from facesyncd.errors import ModelError

    _sessions_like(monkeypatch, "CUDAExecutionProvider")
    failing = {"yes": True}
    real_run = _GpuLikeSession.run

    def run(self: _GpuLikeSession, names: object, feeds: dict[str, np.ndarray]) -> object:
        if failing["yes"]:
            raise RuntimeError("CUDA failure 2: out of memory")
        return real_run(self, names, feeds)

    monkeypatch.setattr(_GpuLikeSession, "run", run)
    embedder = OnnxEmbedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CUDAExecutionProvider",)), FaceSettings(min_face_px=0)
    )
    for _ in range(2):  # not loaded after a failure: the next use tries again, and says so again
        with pytest.raises(
            ModelError, match=r"failed its first run there \(RuntimeError: CUDA failure 2.*CPUExecutionProvider"
        ):
            embedder.faces(load(PHOTOS / "wild" / "obama" / "obama.jpg"))
    failing["yes"] = False
    assert len(embedder.faces(load(PHOTOS / "wild" / "obama" / "obama.jpg"))) == 1
