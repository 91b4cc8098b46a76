"""Face detection and embedding with an insightface model pack through onnxruntime.

Only the detector and the recognizer of the pack are loaded (insightface's model zoo picks each file's
task). The embedding size is whatever the recognizer gives (512 for buffalo_l, 128 for the test pack).
The execution provider is chosen here and nowhere else. Models are never downloaded.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import FaceSettings, ModelSettings
from .errors import ModelError
from .imaging import DecodedImage, encode_jpeg
from .models import DetectedFace

log = logging.getLogger(__name__)

# Preference order for providers = ["auto"].
AUTO_PROVIDERS = ("DmlExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# The coarsest feature stride of insightface's detectors (SCRFD, RetinaFace): input sides must be
# multiples of it.
DETECTOR_STRIDE = 32
# Faces per recognizer call on a GPU.
GPU_RECOGNIZER_BATCH = 64


def default_workers() -> int:
    """Assets prepared at once when [sync] workers = 0: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)


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


class FaceEmbedder:
    """Detects faces and computes L2-normalised embeddings. Loads lazily, under a lock."""

    def __init__(self, model: ModelSettings, faces: FaceSettings) -> None:
        self._model_settings = model
        self._face_settings = faces
        self._lock = threading.Lock()
        self._detector: Any = None
        self._recognizer: Any = None
        self.providers: list[str] = []
        self.threads = 0
        self.dimension = 0
        self._detector_on_cpu = True
        self._recognizer_on_cpu = True

    @property
    def name(self) -> str:
        return self._model_settings.pack_dir().name

    def load(self) -> None:
        with self._lock:
            if self._detector is not None:
                return
            self._load()

    def _load(self) -> None:
        pack = self._model_settings.pack_dir()
        files = sorted(pack.glob("*.onnx")) if pack.is_dir() else []
        if not files:
            raise ModelError(
                f"model pack not found: no .onnx files in {pack}. Download the insightface pack "
                f"'{pack.name}' (e.g. buffalo_l.zip from the insightface model releases) and unzip it "
                f"there, or set [model] pack to the directory that holds it"
            )
        try:
            import onnxruntime
            from insightface.model_zoo import get_model
        except ImportError as error:
            raise ModelError(f"cannot import the model runtime ({error}); run ./install.sh") from error
        onnxruntime.set_default_logger_severity(3)
        providers = choose_providers(self._model_settings.providers, onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        # Several workers run the models at once (see sync.py): on a small CPU, one onnxruntime thread
        # each keeps every core busy without oversubscribing (measured: 2 workers x 1 thread embed 1.5x
        # faster than 1 x 2 on 2 cores).
        threads = self._model_settings.threads or max(1, (os.cpu_count() or 1) // default_workers())
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.threads = threads
        for path in files:
            model, providers = self._load_file(get_model, path, providers, options)
            task = getattr(model, "taskname", None)
            if task == "detection" and self._detector is None:
                self._detector = model
            elif task == "recognition" and self._recognizer is None:
                self._recognizer = model
        if self._detector is None or self._recognizer is None:
            missing = "detector" if self._detector is None else "recognizer"
            raise ModelError(f"model pack {pack} has no {missing} model")
        size = self._model_settings.det_size
        self._detector.prepare(ctx_id=0, input_size=(size, size), det_thresh=self._face_settings.min_det_score)
        self.providers = list(self._recognizer.session.get_providers())
        self._detector_on_cpu = self._detector.session.get_providers()[0] == "CPUExecutionProvider"
        self._recognizer_on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.dimension = self._probe_dimension()
        log.info(
            "model %s loaded from %s: %d-d embeddings, providers %s",
            pack.name,
            pack,
            self.dimension,
            ", ".join(self.providers),
        )

    @staticmethod
    def _load_file(get_model: Any, path: Path, providers: list[str], options: Any) -> tuple[Any, list[str]]:
        """Load one model file; a provider that fails to start (a GPU library missing, say) is
        dropped with a warning and the next one is tried, down to the CPU."""
        while True:
            try:
                # One session per model file, whatever the input size: insightface's per-size static
                # sessions would each cost a model rewrite and a session (see _detector_input).
                model = get_model(str(path), providers=providers, sess_options=options, static_shape_sessions=False)
                return model, providers
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

    def _probe_dimension(self) -> int:
        declared = self._recognizer.output_shape[-1] if self._recognizer.output_shape else None
        if isinstance(declared, int) and declared > 0:
            return declared
        size = self._recognizer.input_size
        return int(self._recognizer.get_feat([np.zeros((size[1], size[0], 3), np.uint8)]).shape[-1])

    @property
    def _batch_fixed(self) -> bool:
        return isinstance(self._recognizer.input_shape[0], int) and self._recognizer.input_shape[0] == 1

    def embed_aligned(self, aligned: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """Embed aligned face crops (recognizer input size, BGR); rows are L2-normalised.

        On a GPU the faces go in batches. On the CPU one face per call is fastest (a batch of 64
        costs 1.5x as much per face: benchmarks/bench_recognizer.py), and some exported recognizers
        have their batch dimension fixed at 1: both get one call per face.
        """
        self.load()
        if not aligned:
            return np.zeros((0, self.dimension), np.float32)
        step = 1 if self._batch_fixed or self._recognizer_on_cpu else GPU_RECOGNIZER_BATCH
        raw = np.concatenate(
            [self._recognizer.get_feat(aligned[start : start + step]) for start in range(0, len(aligned), step)]
        )
        raw = raw.astype(np.float32).reshape(len(aligned), -1)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)

    def detect(self, image: DecodedImage) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Boxes (n, 5: x1, y1, x2, y2, score) and 5-point landmarks (n, 5, 2), in image pixels."""
        self.load()
        boxes, landmarks = self._detector.detect(image.pixels, input_size=self._detector_input(image), max_num=0)
        if landmarks is None:
            raise ModelError("the detector of this pack gives no landmarks; facesyncd needs a 5-point detector")
        return boxes, landmarks

    def _detector_input(self, image: DecodedImage) -> tuple[int, int] | None:
        """The detector's input (width, height) for this image: det_size on the long side and, where
        the model takes any input size, the short side only as long as the image needs, rounded up
        to the detector's coarsest stride. A 3:2 photo then costs the model 640x448 instead of
        640x640 (a third less work) with the same pixels: the rest would be padding. Models with a
        fixed input get None (their own size), and so do GPUs, where detection is cheap and a new input
        shape costs a new kernel search."""
        if getattr(self._detector, "static_input_size", None) is not None or not self._detector_on_cpu:
            return None
        size = self._model_settings.det_size
        long_side, short_side = max(image.width, image.height), min(image.width, image.height)
        short = int(size * short_side / long_side) if long_side else size
        short = min(size, -(-max(short, 1) // DETECTOR_STRIDE) * DETECTOR_STRIDE)
        return (size, short) if image.width >= image.height else (short, size)

    def faces(self, image: DecodedImage, *, min_face_px: int | None = None) -> list[DetectedFace]:
        """Detect, filter by size and score, align and embed every face of an image."""
        from insightface.utils import face_align

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
        size = self._recognizer.input_size[0]
        with warnings.catch_warnings():
            # insightface calls a scikit-image API deprecated in 0.26; the result is unchanged.
            warnings.simplefilter("ignore", FutureWarning)
            aligned = [face_align.norm_crop(image.pixels, landmark=landmarks[i], image_size=size) for i in keep]
        embeddings = self.embed_aligned(aligned)
        return [
            DetectedFace(
                bbox=tuple(float(v) for v in boxes[i, :4]),  # type: ignore[arg-type]
                det_score=float(boxes[i, 4]),
                landmarks=tuple((float(x), float(y)) for x, y in landmarks[i]),
                embedding=embeddings[row],
                crop_jpeg=crop_face(image, boxes[i, :4], self._face_settings.crop_margin),
            )
            for row, i in enumerate(keep)
        ]


def crop_face(image: DecodedImage, box: NDArray[np.float32], margin: float) -> bytes:
    """The face box widened by `margin` of its size on each side, clipped to the image, as JPEG."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    left = max(0, int(round(x1 - pad_x)))
    top = max(0, int(round(y1 - pad_y)))
    right = min(image.width, int(round(x2 + pad_x)))
    bottom = min(image.height, int(round(y2 + pad_y)))
    if right <= left or bottom <= top:
        left, top, right, bottom = 0, 0, image.width, image.height
    return encode_jpeg(image.pixels[top:bottom, left:right])
