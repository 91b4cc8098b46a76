"""Faces per second through Immich's ML service with one, two and four services.

Each service is the tests' loopback stand-in, which sleeps DELAY seconds per request to play a GPU
box (its own CPU work on the small test pack is a few tens of ms, so the sleep dominates, as a remote
GPU's queue and network would). The photos go through facesyncd's ImmichMlEmbedder from as many
threads as the stage would use (URLs x concurrency). The baseline is one service, measured in the
same run; the local engine on this CPU is printed beside it for scale.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from common import PHOTOS, TEST_PACK, require_shared

DELAY = 0.25
CONCURRENCY = 2
PHOTO_COUNT = 24
ROUNDS = 3  # each photo this many times: a steadier figure


def main() -> list[tuple[str, str, str]]:
    require_shared()
    from fake_immich_ml import FakeImmichMl

    from facesyncd.config import FaceSettings, ModelSettings
    from facesyncd.imaging import DecodedImage, decode_image
    from facesyncd.immich_ml import ImmichMlEmbedder
    from facesyncd.onnx_embedder import OnnxEmbedder

    paths = sorted(p for p in (PHOTOS / "wild").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [decode_image(p, max_pixels=250_000_000) for p in paths[:PHOTO_COUNT]]
    faces_settings = FaceSettings(min_face_px=20)

    def faces_per_second(engine_faces: object, workers: int, rounds: list[DecodedImage]) -> tuple[float, int]:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            found = sum(len(faces) for faces in pool.map(engine_faces, rounds))  # type: ignore[arg-type]
        return found / (time.perf_counter() - started), found

    services = [FakeImmichMl(TEST_PACK).start() for _ in range(4)]
    try:
        for service in services:
            service.delay = DELAY
        rates: dict[int, float] = {}
        for count in (1, 2, 4):
            model = ModelSettings(
                backend="immich-ml", urls=tuple(s.url for s in services[:count]), concurrency=CONCURRENCY
            )
            engine = ImmichMlEmbedder(model, faces_settings)
            engine.faces(images[0])  # connections up, dimension known
            rates[count], found = faces_per_second(engine.faces, engine.workers, images * ROUNDS)
            print(f"{count} service(s), {engine.workers} requests at once: {rates[count]:.1f} faces/s ({found} faces)")
    finally:
        for service in services:
            service.stop()
    local = OnnxEmbedder(ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), faces_settings)
    local.faces(images[0])
    local_rate, _ = faces_per_second(local.faces, local.workers, images * ROUNDS)
    print(f"local engine on this CPU ({local.workers} workers): {local_rate:.1f} faces/s")
    return [
        (
            f"immich-ml faces/s, 1 / 2 / 4 services ({DELAY:g} s per request)",
            f"{rates[1]:.1f} / {rates[2]:.1f} / {rates[4]:.1f}",
            f"{rates[2] / rates[1]:.2f}x and {rates[4] / rates[1]:.2f}x one service; local CPU {local_rate:.1f}",
        )
    ]


if __name__ == "__main__":
    main()
