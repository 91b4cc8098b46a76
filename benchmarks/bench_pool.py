"""Reading the pool: what clustering pays each cycle to read every unmatched face's embedding, blur,
frontality and whether the photo's edge cuts it (what decides which faces may open a faceset), as
arrays (Store.pool_arrays, seed_mask: how it reads them), against reading them face by face with
their qualities (pool_faces, may_seed: how it read them before) and reading the same faces'
embeddings alone, in the same run. 100,000 faces (512-d) in the pool by default; CPU seconds,
median of 3.

    .venv/bin/python benchmarks/bench_pool.py [faces]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facesyncd.config import IdentitySettings
from facesyncd.identities import may_seed, seed_mask
from facesyncd.models import DecodeSource, DetectedFace, Quality
from facesyncd.store import Store


def build(path: Path, count: int) -> list[int]:
    rng = np.random.default_rng(5)
    store = Store(path)
    quality = Quality(det_score=0.8, size=0.5, blur=0.9, frontality=0.7, symmetry=0.9)
    with store.transaction():
        for number in range(count):
            vector = rng.normal(size=512).astype(np.float32)
            face = DetectedFace((20.0, 20.0, 140.0, 140.0), 0.8, ((50.0, 50.0),) * 5, vector / np.linalg.norm(vector))
            store.save_blob_faces(
                f"{number:064x}", size=1, width=400, height=300, decoded_from=DecodeSource.ORIGINAL,
                model="bench", faces=[face], crops=[f"c/{number}.jpg"], qualities=[quality],
            )  # fmt: skip
    ids = [face.id for face in store.unmatched_new_faces()]
    store.record_matches({}, ids)
    store.close()
    return ids


def cpu(work: object) -> float:
    runs = []
    for _ in range(3):
        started = time.process_time()
        work()  # type: ignore[operator]
        runs.append(time.process_time() - started)
    return sorted(runs)[1]


def main() -> list[tuple[str, str, str]]:
    count = int(sys.argv[1]) if len(sys.argv) > 1 and __name__ == "__main__" else 100_000
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "facesyncd.db"
        ids = build(path, count)
        store = Store(path)
        settings = IdentitySettings()

        def arrays() -> object:
            pool = store.pool_arrays()
            return seed_mask(pool.blur, pool.frontality, pool.cut, settings)

        read = cpu(arrays)
        faces = cpu(lambda: [face for face in store.pool_faces() if may_seed(face, settings)])
        embeddings = cpu(lambda: store.embeddings_of(ids))
        store.close()
    figure = (
        f"{read:.2f} CPU-s as arrays, {faces:.2f} face by face ({read / faces:.2f}x), {embeddings:.2f} for the "
        f"embeddings alone ({read / embeddings:.2f}x)"
    )
    print(f"pool of {count} faces, read with the seed rule's parts and the seed rule: {figure}")
    return [(f"reading a pool of {count:,} faces for clustering", figure, "-")]


if __name__ == "__main__":
    main()
