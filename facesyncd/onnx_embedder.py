"""Face detection and embedding with an insightface model pack, run directly through onnxruntime.

The pack's detector is an SCRFD network (insightface's `det_*.onnx`), its recognizer an ArcFace-style
network (`w600k_r50.onnx` in buffalo_l). This module reads both the way insightface 2.1 does (same
input scaling, anchor decoding, non-maximum suppression, 5-point alignment and normalisation), so
boxes, landmarks and embeddings are insightface's — `tests/test_embedder.py` compares them on the
test photos — without insightface itself, whose package metadata pulls in `opencv-python` (libGL on
a headless server) and plain `onnxruntime` (which collides with `onnxruntime-gpu`/`-directml`).

Only the detector and the recognizer of a pack are loaded; files are told apart by their graphs, as
insightface's model router does. The embedding size is whatever the recognizer gives (512 for
buffalo_l, 128 for the test pack). The execution provider is chosen here and nowhere else. Models
are never downloaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from .config import MODEL_PACK_COMMAND, FaceSettings, ModelSettings
from .errors import ModelError
from .imaging import DecodedImage
from .models import DetectedFace

log = logging.getLogger(__name__)

# Preference order for providers = ["auto"].
AUTO_PROVIDERS = ("DmlExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# The coarsest feature stride of SCRFD: input sides must be multiples of it.
DETECTOR_STRIDE = 32
# Faces per recognizer call on a GPU. Every such call takes exactly this many (padded), in a session
# of its own: see Recognizer.embed_batch.
GPU_RECOGNIZER_BATCH = 16
# SCRFD's own settings, as insightface uses them.
NMS_THRESHOLD = 0.4
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0
# Where ArcFace expects the five landmarks (eyes, nose, mouth corners) in a 112x112 crop.
ARCFACE_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def choose_providers(requested: tuple[str, ...], available: list[str]) -> list[str]:
    """Resolve the configured provider list against what this onnxruntime build offers.

    "auto" expands to DirectML, CUDA, CPU in that order. Unavailable providers are dropped with a
    warning; the CPU provider always ends the list, so a GPU provider that fails falls back to it.
    """
    wanted: list[str] = []
    for name in requested:
        for candidate in AUTO_PROVIDERS if name == "auto" else (name,):
            if candidate not in wanted:
                wanted.append(candidate)
    chosen = [name for name in wanted if name in available]
    for name in wanted:
        if name not in available and "auto" not in requested:
            log.warning("execution provider %s is not available in this onnxruntime (has: %s)", name, available)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


@dataclass(frozen=True)
class _Graph:
    """What the model router needs to know of an ONNX file, read without building a session."""

    inputs: list[list[int | str]]  # each input's shape; a dynamic axis is its name
    outputs: int
    first_nodes: list[str]


def _read_graph(path: Path) -> _Graph:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # a truncated or foreign file raises protobuf's own errors
        raise ModelError(f"cannot read model {path}: {error}") from error
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [
        [dimension.dim_value or dimension.dim_param for dimension in value.type.tensor_type.shape.dim]
        for value in model.graph.input
        if value.name not in initializers
    ]
    return _Graph(inputs, len(model.graph.output), [node.name for node in model.graph.node[:8]])


def task_of(graph: _Graph) -> str | None:
    """'detection', 'recognition' or None (landmark, attribute and swapper models are not used),
    decided as insightface 2.1's model router does."""
    if not graph.inputs:
        return None
    shape = graph.inputs[0]
    if graph.outputs >= 5:
        return "detection"
    spatial = shape[2:4] if len(shape) == 4 else []
    if len(spatial) != 2 or not all(isinstance(side, int) for side in spatial):
        return None
    height, width = int(spatial[0]), int(spatial[1])
    if (height, width) in ((192, 192), (96, 96)) or (len(graph.inputs) == 2 and height == 128):
        return None
    if height == width and height >= 112 and height % 16 == 0 and graph.outputs == 1:
        return "recognition"
    return None


_preloaded = False


def _preload_gpu_libraries(onnxruntime: Any, providers: list[str]) -> None:
    """Load the CUDA and cuDNN libraries before the first CUDA session, once per process.

    onnxruntime-gpu's CUDA provider is a library of its own that needs CUDA's and cuDNN's, and the
    dynamic loader finds them only on its search path. `./install.sh --cuda` installs them as
    NVIDIA's Python packages, beside onnxruntime, where the loader does not look: without this the
    session comes up on the CPU with no error. `preload_dlls` (onnxruntime-gpu 1.21 and newer) loads
    them from there, or by name from a system install. It reports what it could not load by
    printing; that goes to the log instead.
    """
    global _preloaded
    if _preloaded or "CUDAExecutionProvider" not in providers or not hasattr(onnxruntime, "preload_dlls"):
        return
    _preloaded = True
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            onnxruntime.preload_dlls()
    except Exception as error:  # a foreign layout of the libraries: the session still tries the loader's path
        log.warning("could not preload the CUDA libraries: %s", error)
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.warning("onnxruntime: %s", line.strip())


def _on_cpu(session: Any) -> bool:
    """Whether the session runs on the CPU (onnxruntime's first provider of it), not a GPU."""
    return bool(session.get_providers()[0] == "CPUExecutionProvider")


def _session(path: Path, providers: list[str], options: Any) -> tuple[Any, list[str]]:
    """An onnxruntime session for one model file; a provider that fails to start (a GPU library
    missing, say) is dropped with a warning and the next one is tried, down to the CPU."""
    import onnxruntime

    while True:
        try:
            return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers), providers
        except Exception as error:  # onnxruntime raises many types
            if len(providers) > 1:
                log.warning(
                    "execution provider %s failed for %s (%s); falling back to %s",
                    providers[0],
                    path.name,
                    error,
                    providers[1],
                )
                providers = providers[1:]
                continue
            raise ModelError(f"cannot load model {path}: {error}") from error


def _nms(detections: NDArray[np.float32], threshold: float) -> list[int]:
    """Greedy non-maximum suppression over rows sorted by score (insightface's, +1 pixel areas)."""
    x1, y1, x2, y2 = (detections[:, column] for column in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-detections[:, 4], kind="stable")
    keep: list[int] = []
    while order.size > 0:
        first = int(order[0])
        keep.append(first)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[first], x2[rest]) - np.maximum(x1[first], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[first], y2[rest]) - np.maximum(y1[first], y1[rest]) + 1)
        inter = width * height
        overlap = inter / (areas[first] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return keep


def default_workers() -> int:
    """Assets prepared at once when [sync] workers = 0: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)


class Detector:
    """SCRFD: boxes with scores and five landmarks per face."""

    def __init__(self, session: Any, graph: _Graph) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]
        self.batched = len(session.get_outputs()[0].shape) == 3
        count = len(self.output_names)
        if count not in (6, 9, 10, 15):
            raise ModelError(f"the detector has {count} outputs; facesyncd reads SCRFD detectors (6, 9, 10 or 15)")
        self.levels = 3 if count in (6, 9) else 5
        self.strides = [8, 16, 32] if self.levels == 3 else [8, 16, 32, 64, 128]
        self.anchors = 2 if self.levels == 3 else 1
        self.has_landmarks = count in (9, 15)
        shape = graph.inputs[0]
        sides = shape[2:4]
        self.fixed_input = (
            (int(sides[1]), int(sides[0])) if all(isinstance(side, int) and side > 0 for side in sides) else None
        )
        self._centres: dict[tuple[int, int, int], NDArray[np.float32]] = {}

    def detect(
        self, pixels: NDArray[np.uint8], input_size: tuple[int, int], threshold: float
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Boxes (n, 5: x1, y1, x2, y2, score) and landmarks (n, 5, 2) in the image's pixels, for an
        input of (width, height), best first."""
        width, height = self.fixed_input or input_size
        image_ratio = pixels.shape[0] / pixels.shape[1]
        if image_ratio > height / width:
            new_height = height
            new_width = int(new_height / image_ratio)
        else:
            new_width = width
            new_height = int(new_width * image_ratio)
        scale = new_height / pixels.shape[0]
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(pixels, (new_width, new_height))
        blob = cv2.dnn.blobFromImage(
            canvas, 1.0 / DETECTOR_STD, (width, height), (DETECTOR_MEAN,) * 3, swapRB=True
        ).astype(np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        scores_list, boxes_list, points_list = [], [], []
        for level, stride in enumerate(self.strides):

            def output(group: int, level: int = level) -> NDArray[np.float32]:
                value = outputs[level + group * self.levels]
                return np.asarray(value[0] if self.batched else value, np.float32)

            scores = output(0).reshape(-1)
            distances = output(1) * stride
            centres = self._anchor_centres(height // stride, width // stride, stride)
            chosen = np.where(scores >= threshold)[0]
            scores_list.append(scores[chosen])
            boxes_list.append(
                np.concatenate([centres - distances[:, 0:2], centres + distances[:, 2:4]], axis=1)[chosen]
            )
            if self.has_landmarks:
                offsets = output(2) * stride
                points = np.stack(
                    [centres + offsets[:, index : index + 2] for index in range(0, offsets.shape[1], 2)], axis=1
                )
                points_list.append(points[chosen])
        scores = np.concatenate(scores_list)
        if scores.size == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        order = np.argsort(-scores, kind="stable")
        boxes = np.concatenate(boxes_list) / scale
        detections = np.hstack([boxes, scores[:, None]]).astype(np.float32)[order]
        landmarks = (np.concatenate(points_list) / scale)[order] if self.has_landmarks else None
        keep = _nms(detections, NMS_THRESHOLD)
        if landmarks is None:
            raise ModelError("the detector of this pack gives no landmarks; facesyncd needs a 5-point detector")
        return detections[keep], landmarks[keep].astype(np.float32)

    def _anchor_centres(self, rows: int, columns: int, stride: int) -> NDArray[np.float32]:
        key = (rows, columns, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:rows, :columns]
            grid = np.stack([xs, ys], axis=-1).astype(np.float32)
            centres = np.asarray((grid * stride).reshape(-1, 2), np.float32)
            if self.anchors > 1:
                centres = np.repeat(centres, self.anchors, axis=0)
            if len(self._centres) < 100:
                self._centres[key] = centres
            return centres
        return self._centres[key]


def similarity_transform(source: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """The rotation, uniform scale and translation that best maps `source` points onto `target` in the
    least-squares sense (Umeyama 1991), as a 2x3 matrix: how insightface (through scikit-image) aligns
    a face's five landmarks onto ArcFace's template."""
    count, dimension = source.shape
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / count
    signs = np.ones(dimension)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1
    left, singular, right = np.linalg.svd(covariance)
    rank = int(np.count_nonzero(singular > singular.max() * dimension * np.finfo(float).eps))
    if rank == 0:
        raise ValueError("degenerate landmarks")
    if rank == dimension - 1:
        if np.linalg.det(left) * np.linalg.det(right) > 0:
            rotation = left @ right
        else:
            flipped = signs.copy()
            flipped[-1] = -1
            rotation = left @ np.diag(flipped) @ right
    else:
        rotation = left @ np.diag(signs) @ right
    scale = float(singular @ signs) / float(source_centred.var(axis=0).sum())
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - scale * rotation @ source_mean
    return matrix


def align(pixels: NDArray[np.uint8], landmarks: NDArray[np.float32], size: int) -> NDArray[np.uint8]:
    """The face warped so its landmarks sit where ArcFace expects them, `size` pixels square."""
    if size % 112 == 0:
        template = ARCFACE_LANDMARKS * (size / 112.0)
    else:
        ratio = size / 128.0
        template = ARCFACE_LANDMARKS * ratio
        template[:, 0] += 8.0 * ratio
    matrix = similarity_transform(np.asarray(landmarks, np.float64), template)
    return np.asarray(cv2.warpAffine(pixels, matrix, (size, size), borderValue=0.0), np.uint8)


class Recognizer:
    """ArcFace-style: an aligned face in, an embedding out."""

    def __init__(self, session: Any, graph: _Graph) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        shape = graph.inputs[0]
        self.size = int(shape[2])
        self.batch_fixed = isinstance(shape[0], int) and shape[0] == 1
        # Models converted from MXNet normalise inside the graph (their first nodes subtract and
        # multiply); the others expect (x - 127.5) / 127.5, as insightface decides.
        names = graph.first_nodes
        mxnet = any(n.startswith(("Sub", "_minus")) for n in names) and any(
            n.startswith(("Mul", "_mul")) for n in names
        )
        self.mean, self.std = (0.0, 1.0) if mxnet else (127.5, 127.5)
        declared = session.get_outputs()[0].shape[-1]
        self.declared_dimension = declared if isinstance(declared, int) and declared > 0 else None

        # A second session of the same model for batches, on a GPU only (embed_batch).
        self.batch_session: Any = None

    def _blob(self, faces: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        blob = cv2.dnn.blobFromImages(faces, 1.0 / self.std, (self.size, self.size), (self.mean,) * 3, swapRB=True)
        return np.asarray(blob, np.float32)

    def embed(self, faces: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        return np.asarray(self.session.run([self.output_name], {self.input_name: self._blob(faces)})[0])

    def embed_batch(self, faces: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """Up to GPU_RECOGNIZER_BATCH faces in one call of the batch session, padded to exactly that
        many. A GPU session pays for every new input shape: on an H200 with onnxruntime-gpu 1.31,
        each change of batch size between calls cost 1.4-2.4 s, so that photos of one, two and
        three faces in turn made the GPU 16x slower than the CPU (benchmarks/bench_providers.py). One
        face per photo, the usual case, goes to the single-face session instead of paying for the
        padding; each session then only ever sees one shape."""
        blob = self._blob(faces)
        padded = np.zeros((GPU_RECOGNIZER_BATCH, *blob.shape[1:]), np.float32)
        padded[: len(faces)] = blob
        outputs = self.batch_session.run([self.output_name], {self.input_name: padded})[0]
        return np.asarray(outputs[: len(faces)])


class OnnxEmbedder:
    """Detects faces and computes L2-normalised embeddings. Loads lazily, under a lock."""

    def __init__(self, model: ModelSettings, faces: FaceSettings) -> None:
        self._model_settings = model
        self._face_settings = faces
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._recognizer: Recognizer | None = None
        self.providers: list[str] = []
        self.workers = default_workers()
        self.threads = 0
        self.dimension = 0
        self._detector_on_cpu = True

    @property
    def name(self) -> str:
        return self._model_settings.pack_dir().name

    def load(self) -> None:
        with self._lock:
            if self._detector is None:
                try:
                    self._load()
                except BaseException:
                    # half loaded is not loaded: the next call tries again (and fails as clearly)
                    self._detector = self._recognizer = None
                    raise

    def abort(self) -> None:
        """Nothing in flight to break off: a model call here ends by itself."""

    def check(self) -> None:
        self._files()

    def _files(self) -> list[Path]:
        pack = self._model_settings.pack_dir()
        # A zip unpacked into the pack's folder may have put the files one folder down.
        files = (sorted(pack.glob("*.onnx")) or sorted(pack.glob("*/*.onnx"))) if pack.is_dir() else []
        if not files:
            raise ModelError(
                f"model pack not found: no .onnx files in {pack}. Get the insightface pack "
                f"'{pack.name}' (`facesyncd model fetch`, or by hand: `{MODEL_PACK_COMMAND.format(folder=pack)}`), "
                f"or set [model] pack to the folder that holds it"
            )
        return files

    def _load(self) -> None:
        files = self._files()
        pack = self._model_settings.pack_dir()
        try:
            import onnxruntime
        except ImportError as error:
            raise ModelError(
                f"cannot import onnxruntime ({error}): install facesyncd with one of its extras, "
                f'e.g. pip install "facesyncd[cpu]"'
            ) from error
        onnxruntime.set_default_logger_severity(3)
        providers = choose_providers(self._model_settings.providers, onnxruntime.get_available_providers())
        _preload_gpu_libraries(onnxruntime, providers)
        chosen = providers[0]
        options = onnxruntime.SessionOptions()
        # Several workers run the models at once (see the stage): on a small CPU, one onnxruntime
        # thread each keeps every core busy without oversubscribing (measured: 2 workers x 1 thread
        # embed 1.5x faster than 1 x 2 on 2 cores).
        threads = self._model_settings.threads or max(1, (os.cpu_count() or 1) // default_workers())
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.threads = threads
        for path in files:
            graph = _read_graph(path)
            task = task_of(graph)
            if task == "detection" and self._detector is None:
                session, providers = _session(path, providers, options)
                self._detector = Detector(session, graph)
            elif task == "recognition" and self._recognizer is None:
                session, providers = _session(path, providers, options)
                self._recognizer = Recognizer(session, graph)
                if not _on_cpu(session) and not self._recognizer.batch_fixed:
                    self._recognizer.batch_session = _session(path, providers, options)[0]
        if self._detector is None or self._recognizer is None:
            missing = "detector" if self._detector is None else "recognizer"
            raise ModelError(f"model pack {pack} has no {missing} model")
        self.providers = list(self._recognizer.session.get_providers())
        if self.providers[0] != chosen:
            # onnxruntime falls back to the CPU by itself, with no error, when a GPU provider's
            # libraries are missing: say so, or a GPU user waits on the CPU without knowing why.
            log.warning(
                "the models run on %s, not %s: the provider did not start (for CUDA, install with "
                "./install.sh --cuda, which brings CUDA's and cuDNN's libraries)",
                self.providers[0],
                chosen,
            )
        self._detector_on_cpu = _on_cpu(self._detector.session)
        self.dimension = self._recognizer.declared_dimension or int(
            self._recognizer.embed([np.zeros((self._recognizer.size,) * 2 + (3,), np.uint8)]).shape[-1]
        )
        self._warm_up()
        log.info(
            "model %s loaded from %s: %d-d embeddings, providers %s",
            pack.name,
            pack,
            self.dimension,
            ", ".join(self.providers),
        )

    def _warm_up(self) -> None:
        """Run each GPU session once on the one input shape it will see, at load, so that no photo
        pays for it: a GPU provider builds its kernels at a session's first run (on an H200 the first
        photo with several faces took 1.1 s, against 7 ms a photo after it). CPU sessions need none."""
        assert self._detector is not None and self._recognizer is not None
        recognizer = self._recognizer
        face = np.zeros((recognizer.size, recognizer.size, 3), np.uint8)
        try:
            if not self._detector_on_cpu:
                size = self._model_settings.det_size
                self._detector.detect(np.zeros((size, size, 3), np.uint8), (size, size), 1.0)
            if not _on_cpu(recognizer.session):
                recognizer.embed([face])
            if recognizer.batch_session is not None:
                recognizer.embed_batch([face])
        except Exception as error:  # onnxruntime raises many types (the device's memory full, say)
            raise ModelError(
                f"model pack {self._model_settings.pack_dir()} loaded on {self.providers[0]} but failed its "
                f"first run there ({type(error).__name__}: {error}); set [model] providers to another, "
                f'e.g. ["CPUExecutionProvider"]'
            ) from error

    @property
    def aligned_size(self) -> int:
        """The side of the aligned face the recognizer takes (112 for insightface's packs)."""
        return self._parts()[1].size

    def _parts(self) -> tuple[Detector, Recognizer]:
        self.load()
        assert self._detector is not None and self._recognizer is not None
        return self._detector, self._recognizer

    def embed_aligned(self, aligned: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """Embed aligned face crops (recognizer input size, BGR); rows are L2-normalised.

        On a GPU several faces go in fixed-size batches (Recognizer.embed_batch). On the CPU one
        face per call is fastest (a batch of 64 costs 1.5x as much per face:
        benchmarks/bench_recognizer.py), and some exported recognizers have their batch dimension
        fixed at 1: both get one call per face.
        """
        _, recognizer = self._parts()
        if not aligned:
            return np.zeros((0, self.dimension), np.float32)
        if recognizer.batch_session is None or len(aligned) == 1:
            parts = [recognizer.embed([face]) for face in aligned]
        else:
            step = GPU_RECOGNIZER_BATCH
            parts = [recognizer.embed_batch(aligned[start : start + step]) for start in range(0, len(aligned), step)]
        raw = np.concatenate(parts)
        raw = raw.astype(np.float32).reshape(len(aligned), -1)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)

    def detect(self, image: DecodedImage) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Boxes (n, 5: x1, y1, x2, y2, score) and 5-point landmarks (n, 5, 2), in image pixels."""
        detector, _ = self._parts()
        size = self._model_settings.det_size
        return detector.detect(
            image.pixels, self._detector_input(image) or (size, size), self._face_settings.min_det_score
        )

    def _detector_input(self, image: DecodedImage) -> tuple[int, int] | None:
        """The detector's input (width, height) for this image: det_size on the long side and, where
        the model takes any input size, the short side only as long as the image needs, rounded up
        to the detector's coarsest stride. A 3:2 photo then costs the model 640x448 instead of
        640x640 (a third less work) with the same pixels: the rest would be padding. Models with a
        fixed input get None (their own size), and so do GPUs, where detection is cheap and a new input
        shape costs a new kernel search."""
        detector, _ = self._parts()
        if detector.fixed_input is not None or not self._detector_on_cpu:
            return None
        size = self._model_settings.det_size
        long_side, short_side = max(image.width, image.height), min(image.width, image.height)
        short = int(size * short_side / long_side) if long_side else size
        short = min(size, -(-max(short, 1) // DETECTOR_STRIDE) * DETECTOR_STRIDE)
        return (size, short) if image.width >= image.height else (short, size)

    def faces(self, image: DecodedImage, *, min_face_px: int | None = None) -> list[DetectedFace]:
        """Detect, filter by size and score, align and embed every face of an image."""
        _, recognizer = self._parts()
        min_px = self._face_settings.min_face_px if min_face_px is None else min_face_px
        boxes, landmarks = self.detect(image)
        keep = [
            i
            for i in range(len(boxes))
            if boxes[i, 4] >= self._face_settings.min_det_score
            and min(boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]) >= min_px
        ]
        if not keep:
            return []
        embeddings = self.embed_aligned([align(image.pixels, landmarks[i], recognizer.size) for i in keep])
        return [
            DetectedFace(
                bbox=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
                det_score=float(boxes[i, 4]),
                landmarks=tuple((float(x), float(y)) for x, y in landmarks[i]),
                embedding=embeddings[row],
            )
            for row, i in enumerate(keep)
        ]
