"""The embedder seam: what the cycle, the importer and the daemon need of a face engine.

They call `make_embedder()` and speak to the `Embedder` protocol; only the factory names an engine
(today the local onnxruntime one, in onnx_embedder.py). The embedding size is always the engine's:
never assumed.
"""

from __future__ import annotations

import os
from typing import Protocol

from .config import FaceSettings, ModelSettings
from .imaging import DecodedImage
from .models import DetectedFace


class Embedder(Protocol):
    """Finds faces in an image and gives each an L2-normalised embedding."""

    dimension: int  # known after load()
    providers: list[str]  # where it runs, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]

    @property
    def name(self) -> str:
        """The model's name, recorded in the store: embeddings of two models never mix."""
        ...

    def load(self) -> None:
        """Load the models (once); raises ModelError with what is missing and where."""
        ...

    def faces(self, image: DecodedImage, *, min_face_px: int | None = None) -> list[DetectedFace]:
        """Every face of the image that passes the size and score gates, best first."""
        ...


def make_embedder(model: ModelSettings, faces: FaceSettings) -> Embedder:
    from .onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(model, faces)


def default_workers() -> int:
    """Assets prepared at once when [sync] workers = 0: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)
