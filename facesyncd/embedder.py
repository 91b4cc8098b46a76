"""The embedder seam: what the cycle, the importer and the daemon need of a face engine.

They call `make_embedder()` and speak to the `Embedder` protocol; only the factory names an engine:
the local onnxruntime one (onnx_embedder.py) or Immich's machine-learning service (immich_ml.py).
The embedding size is always the engine's: never assumed.
"""

from __future__ import annotations

from typing import Protocol

from .config import FaceSettings, ModelSettings
from .imaging import DecodedImage
from .models import DetectedFace


class Embedder(Protocol):
    """Finds faces in an image and gives each an L2-normalised embedding."""

    dimension: int  # known after load(); 0 for a remote engine until its first face
    providers: list[str]  # where it runs, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]
    workers: int  # images it can take at once (the stage's default number of workers)

    @property
    def name(self) -> str:
        """The engine and model, recorded in the store: embeddings of two models never mix. The local
        engine's is the pack's name (as stores made before other engines recorded it); others prefix
        theirs ("immich-ml:buffalo_l")."""
        ...

    def load(self) -> None:
        """Load the models (once); raises ModelError with what is missing and where."""
        ...

    def check(self) -> None:
        """Raise ModelError now if the engine plainly cannot be had (no pack where the config says),
        without loading it: a cycle loads the model only when a photo needs it."""
        ...

    def faces(self, image: DecodedImage, *, min_face_px: int | None = None) -> list[DetectedFace]:
        """Every face of the image that passes the size and score gates, best first."""
        ...

    def abort(self) -> None:
        """Break off work in flight (from another thread, when a stop takes too long)."""
        ...


def make_embedder(model: ModelSettings, faces: FaceSettings) -> Embedder:
    if model.backend == "immich-ml":
        from .immich_ml import ImmichMlEmbedder

        return ImmichMlEmbedder(model, faces)
    from .onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(model, faces)
