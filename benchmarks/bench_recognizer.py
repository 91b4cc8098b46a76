"""Recognizer batching on this machine: ms per face by batch size.

The test pack's recognizer takes any batch size. This measures its forward pass at batch sizes 1 to
64 (with the onnxruntime threads of a sync worker), and facesyncd's own embed_aligned over 64 faces,
which on the CPU calls the recognizer one face at a time because that measured fastest. Aligned
crops are random pixels: the cost of a forward pass does not depend on what the face looks like.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from common import TEST_PACK, median, require_shared

BATCHES = (1, 4, 16, 64)


def per_face_ms(run: Callable[[list[np.ndarray]], object], crops: list[np.ndarray], repetitions: int = 5) -> float:
    run(crops)  # warm-up
    calls = max(1, 64 // len(crops))
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        for _ in range(calls):
            run(crops)
        times.append((time.perf_counter() - started) / (calls * len(crops)))
    return median(times) * 1000


def main() -> list[tuple[str, str, str]]:
    require_shared()
    from facesyncd.config import FaceSettings, ModelSettings
    from facesyncd.onnx_embedder import OnnxEmbedder

    embedder = OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), FaceSettings())
    embedder.load()
    recognizer = embedder._parts()[1]
    faces = list(np.random.default_rng(3).integers(0, 255, (64, recognizer.size, recognizer.size, 3), np.uint8))
    model = {batch: per_face_ms(recognizer.embed, faces[:batch]) for batch in BATCHES}
    ours = per_face_ms(embedder.embed_aligned, faces)
    spread = "  ".join(f"batch {b}: {t:.2f} ms ({model[1] / t:.2f}x)" for b, t in model.items())
    print(f"recognizer forward pass ({embedder.threads} onnxruntime thread(s)): {spread}")
    print(f"facesyncd embed_aligned over 64 faces: {ours:.2f} ms/face ({model[64] / ours:.2f}x the batch of 64)")
    best = min(model, key=lambda b: model[b])
    return [
        (
            "recognizer ms/face, batch 1 / 64 (CPU)",
            f"{model[1]:.2f} / {model[64]:.2f} ms",
            f"best batch here: {best}; facesyncd {ours:.2f} ms",
        )
    ]


if __name__ == "__main__":
    main()
