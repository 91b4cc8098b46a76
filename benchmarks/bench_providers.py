"""The execution providers of this machine side by side: the same photos through the CPU and through
each GPU provider that onnxruntime offers here (CUDA, DirectML), with facesyncd's own embedder.

For each GPU provider it prints:
- whether the provider started (onnxruntime falls back to the CPU by itself when a GPU library is
  missing; facesyncd then warns, and this says so);
- whether it finds the same faces as the CPU (boxes matched by overlap) and embeds them alike
  (cosine per matched face: the identities a library holds must not depend on where it ran);
- detect + align + embed per photo, wall and process CPU seconds, against the CPU in the same run;
- the stage's way of running it, `workers` photos at once on one session, with the same faces as one
  at a time;
- the recognizer alone on batches of 64 aligned faces, ms per face;
- the input shapes each of its sessions was given: on a GPU each session must see one shape (a new
  one cost 1.4-2.4 s per change on CUDA: see docs/performance.md).

    .venv/bin/python benchmarks/bench_providers.py [provider ...]

The pack is the test pack unless FACESYNCD_BENCH_PACK names another (buffalo_l for 512-d).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common import PHOTOS, TEST_PACK, median, require_shared

GPU_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider")
# A photo's pass over the whole set is repeated; the median is reported.
REPEATS = 3
SAME_FACE_IOU = 0.5


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _images() -> list[Any]:
    from facesyncd.imaging import decode_image

    paths = sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [decode_image(path, max_pixels=50_000_000) for path in paths]


class _Recorded:
    """A session that notes the shape of every input it runs on (a Python call around run: a few
    microseconds a call)."""

    def __init__(self, session: Any, shapes: set[tuple[int, ...]]) -> None:
        self._session, self._shapes = session, shapes

    def run(self, names: Any, feeds: dict[str, Any]) -> Any:
        self._shapes.update(tuple(value.shape) for value in feeds.values())
        return self._session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _embedder(pack: Path, provider: str) -> tuple[Any, list[tuple[str, set[tuple[int, ...]]]]]:
    """The embedder on this provider, and each of its sessions' model file and the shapes it is given."""
    import onnxruntime

    from facesyncd.config import FaceSettings, ModelSettings
    from facesyncd.onnx_embedder import OnnxEmbedder

    sessions: list[tuple[str, set[tuple[int, ...]]]] = []
    real = onnxruntime.InferenceSession

    def recorded(path: str, *arguments: Any, **keywords: Any) -> Any:
        sessions.append((Path(path).name, set()))
        return _Recorded(real(path, *arguments, **keywords), sessions[-1][1])

    onnxruntime.InferenceSession = recorded  # type: ignore[misc]
    try:
        embedder = OnnxEmbedder(ModelSettings(pack=str(pack), providers=(provider,)), FaceSettings())
        embedder.load()
    finally:
        onnxruntime.InferenceSession = real  # type: ignore[misc]
    return embedder, sessions


def _pass_seconds(embedder: Any, images: list[Any]) -> tuple[float, float, float, list[Any]]:
    """Median wall and process-CPU seconds per photo over REPEATS passes, the slowest photo's wall
    seconds in any pass (a GPU stalls on an input shape it has not seen: one slow photo in a hundred
    hides in the median), and the last pass's faces."""
    embedder.faces(images[0])  # warm-up: a GPU provider builds its kernels on the first call
    walls, cpus, found, slowest = [], [], [], 0.0
    for _ in range(REPEATS):
        wall, cpu = time.perf_counter(), time.process_time()
        found = []
        for image in images:
            started = time.perf_counter()
            found.append(embedder.faces(image))
            slowest = max(slowest, time.perf_counter() - started)
        walls.append((time.perf_counter() - wall) / len(images))
        cpus.append((time.process_time() - cpu) / len(images))
    return median(walls), median(cpus), slowest, found


def _workers_pass(embedder: Any, images: list[Any]) -> tuple[float, float, list[Any]]:
    """Wall and process-CPU seconds per photo with the stage's workers sharing the session, and the
    faces found."""
    with ThreadPoolExecutor(max_workers=embedder.workers) as pool:
        started, cpu = time.perf_counter(), time.process_time()
        found = list(pool.map(embedder.faces, images))
        return (time.perf_counter() - started) / len(images), (time.process_time() - cpu) / len(images), found


def _recognizer_ms(embedder: Any) -> float:
    size = embedder.aligned_size
    faces = list(np.random.default_rng(5).integers(0, 255, (64, size, size, 3), np.uint8))
    embedder.embed_aligned(faces)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        embedder.embed_aligned(faces)
        times.append((time.perf_counter() - started) / len(faces))
    return median(times) * 1000


def _compare(cpu_faces: list[list[Any]], gpu_faces: list[list[Any]]) -> tuple[int, int, int, list[float]]:
    """Faces on the CPU, on the GPU, matched pairs, and each pair's embedding cosine."""
    on_cpu = on_gpu = matched = 0
    cosines: list[float] = []
    for ours, theirs in zip(cpu_faces, gpu_faces, strict=True):
        on_cpu, on_gpu = on_cpu + len(ours), on_gpu + len(theirs)
        for face in ours:
            best = max(theirs, key=lambda other: _iou(face.bbox, other.bbox), default=None)
            if best is not None and _iou(face.bbox, best.bbox) >= SAME_FACE_IOU:
                matched += 1
                cosines.append(float(np.dot(face.embedding, best.embedding)))
    return on_cpu, on_gpu, matched, cosines


def main(requested: list[str]) -> int:
    require_shared()
    import onnxruntime

    pack = Path(os.environ.get("FACESYNCD_BENCH_PACK", TEST_PACK))
    available = onnxruntime.get_available_providers()
    print(f"onnxruntime {onnxruntime.__version__}, providers offered: {', '.join(available)}; pack {pack.name}")
    gpus = requested or [name for name in GPU_PROVIDERS if name in available]
    if not gpus:
        print("no GPU provider in this onnxruntime: nothing to compare")
        return 0
    images = _images()
    cpu, _ = _embedder(pack, "CPUExecutionProvider")
    cpu_wall, cpu_cpu, cpu_slowest, cpu_faces = _pass_seconds(cpu, images)
    cpu_rec = _recognizer_ms(cpu)
    print(
        f"CPU ({cpu.threads} thread(s)): {len(images)} photos, {cpu_wall * 1000:.1f} ms wall and "
        f"{cpu_cpu * 1000:.1f} ms CPU per photo, slowest photo {cpu_slowest * 1000:.0f} ms; recognizer "
        f"{cpu_rec:.2f} ms/face"
    )
    failed = 0
    for name in gpus:
        gpu, sessions = _embedder(pack, name)
        if gpu.providers[0] != name:
            print(f"{name}: did not start, the models run on {gpu.providers[0]}")
            failed += 1
            continue
        wall, cpu_seconds, slowest, gpu_faces = _pass_seconds(gpu, images)
        rec = _recognizer_ms(gpu)
        workers_wall, workers_cpu, workers_faces = _workers_pass(gpu, images)
        _, _, alike, worker_cosines = _compare(gpu_faces, workers_faces)
        on_cpu, on_gpu, matched, cosines = _compare(cpu_faces, gpu_faces)
        low = min(cosines) if cosines else float("nan")
        print(
            f"{name}: {on_gpu} faces against the CPU's {on_cpu}, {matched} matched; embedding cosine "
            f"median {median(cosines) if cosines else float('nan'):.5f}, lowest {low:.5f}"
        )
        print(
            f"{name}: {wall * 1000:.1f} ms wall ({wall / cpu_wall:.2f}x the CPU's) and {cpu_seconds * 1000:.1f} ms "
            f"CPU ({cpu_seconds / cpu_cpu:.2f}x) per photo, slowest photo {slowest * 1000:.0f} ms "
            f"({slowest / cpu_slowest:.2f}x); recognizer {rec:.2f} ms/face ({rec / cpu_rec:.2f}x)"
        )
        seen = "; ".join(f"{model}: {sorted(shapes)}" for model, shapes in sessions)
        print(
            f"{name}: input shapes per session ({'one each' if all(len(shapes) <= 1 for _, shapes in sessions) else 'SEVERAL'}): {seen}"
        )
        print(
            f"{name}: {gpu.workers} workers on one session: {workers_wall * 1000:.1f} ms wall and "
            f"{workers_cpu * 1000:.1f} ms CPU per photo; "
            f"{alike} of {sum(map(len, gpu_faces))} faces as one at a time, lowest cosine "
            f"{min(worker_cosines, default=float('nan')):.5f}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
