"""Issue 24, behaviour 5: the face index at 10,000 / 100,000 / 500,000 faces of 512 dimensions.

Random unit vectors with identity structure (seeded): identities are random directions (nearly
orthogonal to one another, as different people's embeddings are), their faces noisy copies, 20 each.
Measured in the same run, per size: the index's build (CPU seconds), recall@10 against exact search
(numpy, batched) for 1,000 queries, batched and single queries; the same for hnswlib with the
parameters facesyncd used before issue 24 (M 16 / ef_construction 100 / ef 128), the baseline.
At the largest size: `facesyncd rebuild-index` on a real database (CPU of the whole command, both
cores counted, and peak memory), adding and removing 1,000 faces.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, peak_memory_probe

DIMENSION = 512
FACES_PER_IDENTITY = 20  # > k, so a query's true top 10 are its identity's faces, not near-ties
SIZES = (10_000, 100_000, 500_000)


def dataset(count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """count faces and the identity (from 1) of each."""
    rng = np.random.default_rng(seed)
    identities = max(1, count // FACES_PER_IDENTITY)
    centres = rng.normal(size=(identities, DIMENSION)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owners = np.arange(count) % identities
    data = centres[owners]
    for start in range(0, count, 50_000):  # in slices: no 2 GB float64 temporary at 500,000
        block = slice(start, start + 50_000)
        data[block] += rng.normal(scale=0.045, size=data[block].shape).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True), owners + 1


def cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def build(data: np.ndarray, owners: np.ndarray):  # -> tuple[FaceIndex, float]
    from facesyncd.index import FaceIndex

    started = cpu()
    index = FaceIndex(DIMENSION, capacity=len(data))
    for start in range(0, len(data), 10_000):  # as rebuild-index adds them
        rows = slice(start, start + 10_000)
        index.add(list(range(start, min(len(data), start + 10_000))), data[rows], owners[rows].tolist())
    # the rows sorted by identity, as rebuild-index saves them (else the first search would sort them)
    index._index._rows_by_owner()
    return index, cpu() - started


def hnsw_before(data: np.ndarray):  # -> tuple[hnswlib.Index, float]
    import hnswlib

    started = cpu()
    index = hnswlib.Index(space="cosine", dim=DIMENSION)
    index.init_index(max_elements=len(data), ef_construction=100, M=16)
    for start in range(0, len(data), 10_000):
        index.add_items(data[start : start + 10_000], np.arange(start, min(len(data), start + 10_000)))
    index.set_ef(128)
    return index, cpu() - started


def exact_top10(data: np.ndarray, queries: np.ndarray, batch: int = 256) -> tuple[np.ndarray, float]:
    started = cpu()
    result = []
    for start in range(0, len(queries), batch):
        similarity = queries[start : start + batch] @ data.T
        top = np.argpartition(-similarity, 10, axis=1)[:, :10]
        order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
        result.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(result), cpu() - started


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def rebuild_from_database(data: np.ndarray, owners: np.ndarray) -> tuple[float, float, float]:
    """`facesyncd rebuild-index` on a real database holding these faces: CPU seconds (all threads),
    wall seconds, peak MB."""
    directory = Path(tempfile.mkdtemp(prefix="bench-index-"))
    config = directory / "config.toml"
    config.write_text(
        f'state_dir = "{directory}"\n[[immich]]\nname = "b"\nurl = "http://127.0.0.1:9"\napi_key_env = "X"\n'
    )
    from facesyncd.store import Store

    store = Store(directory / "facesyncd.db")
    with store.transaction():
        store.set_meta("embedding_dim", str(DIMENSION))
        store.set_meta("model", "synthetic")
        store.conn.executemany(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, 'cluster', 'now')",
            ((int(n),) for n in np.unique(owners)),
        )
        store.conn.execute(
            "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES ('s', 0, 'import', 'm', 'now')"
        )
        store.conn.executemany(
            "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, identity) "
            "VALUES ('s', ?, 0, 0, 1, 1, 1, '[]', ?, 'c', ?)",
            ((i, row.tobytes(), int(owner)) for i, (row, owner) in enumerate(zip(data, owners, strict=True))),
        )
    store.close()
    before, started = children_cpu(), time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", peak_memory_probe(["--config", str(config), "rebuild-index"])],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "X": "unused"},
    )
    wall, spent = time.perf_counter() - started, children_cpu() - before
    peak = int(result.stderr.strip().splitlines()[-1]) / 1024
    subprocess.run(["rm", "-rf", str(directory)], check=False)
    return spent, wall, peak


def measure(size: int, *, largest: bool) -> dict[str, float]:
    data, owners = dataset(size + 1_000)
    base, base_owners, extra = data[:size], owners[:size], data[size:]
    rng = np.random.default_rng(11)
    queries = base[rng.choice(size, 1_000, replace=False)]
    queries = queries + rng.normal(scale=0.02, size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth, exact_cpu = exact_top10(base, queries)
    index, build_cpu = build(base, base_owners)
    started = cpu()
    labels, _ = index.query(queries, 10)
    batched_cpu = cpu() - started
    latencies = []
    for query in queries[:200]:
        began = time.perf_counter()
        index.query(query[None, :], 10)
        latencies.append(time.perf_counter() - began)
    figures = {
        "build": build_cpu,
        "recall": recall(labels, truth),
        "batched ms": batched_cpu,  # per 1,000 queries = ms per query
        "p50 ms": float(np.percentile(latencies, 50) * 1000),
        "p99 ms": float(np.percentile(latencies, 99) * 1000),
        "exact ms": exact_cpu,
    }
    if largest:
        started = cpu()
        index.add(list(range(size, size + 1_000)), extra, owners[size:].tolist())
        figures["add 1,000 ms"] = (cpu() - started) * 1000
        started = cpu()
        index.remove(list(range(size, size + 1_000)))  # photos deleted in Immich: their faces leave
        figures["remove 1,000 ms"] = (cpu() - started) * 1000
    del index
    before, before_cpu = hnsw_before(base)
    started = cpu()
    found, _ = before.knn_query(queries, k=10)
    figures["before: build"] = before_cpu
    figures["before: recall"] = recall(found, truth)
    figures["before: batched ms"] = cpu() - started
    del before
    if largest:
        figures["rebuild-index cpu"], figures["rebuild-index wall"], figures["rebuild-index MB"] = (
            rebuild_from_database(base, base_owners)
        )
    return figures


def main(sizes: tuple[int, ...] = SIZES) -> list[tuple[str, str, str]]:
    measured = {}
    for size in sizes:
        figures = measure(size, largest=size == sizes[-1])
        measured[size] = figures
        print(
            f"{size:>7} faces: build {figures['build']:.1f} CPU-s (hnswlib as before: {figures['before: build']:.1f}); "
            f"recall@10 {figures['recall']:.4f} (before: {figures['before: recall']:.4f}); "
            f"batched {figures['batched ms']:.2f} ms/query (before {figures['before: batched ms']:.2f}, "
            f"exact {figures['exact ms']:.2f}); single p50 / p99 {figures['p50 ms']:.2f} / {figures['p99 ms']:.2f} ms",
            flush=True,
        )
    largest = measured[sizes[-1]]
    names = "/".join(f"{size // 1000}k" for size in sizes)
    worst = min(figures["recall"] for figures in measured.values())
    print(
        f"rebuild-index at {sizes[-1]} faces: {largest['rebuild-index cpu']:.1f} CPU-s, "
        f"{largest['rebuild-index wall']:.1f} s, peak RSS {largest['rebuild-index MB']:.0f} MB; add / remove 1,000 faces: "
        f"{largest['add 1,000 ms']:.0f} / {largest['remove 1,000 ms']:.1f} ms CPU"
    )

    def series(key: str, digits: int) -> str:
        return " / ".join(f"{measured[size][key]:.{digits}f}" for size in sizes)

    rebuild_ratio = largest["rebuild-index cpu"] / largest["before: build"]
    return [
        (
            f"index recall@10 ({names})",
            series("recall", 4),
            f"hnswlib as before: {series('before: recall', 4)}; >= 0.99: {'yes' if worst >= 0.99 else 'NO'}",
        ),
        (f"index build CPU-s ({names})", series("build", 1), f"hnswlib as before: {series('before: build', 1)}"),
        (
            f"index query, ms per query batched; single p50 ({names})",
            f"{series('batched ms', 2)}; {series('p50 ms', 2)}",
            f"exact batched: {series('exact ms', 2)}; hnswlib as before: {series('before: batched ms', 2)}",
        ),
        (
            f"rebuild-index, {sizes[-1] // 1000}k faces (whole command)",
            f"{largest['rebuild-index cpu']:.1f} CPU-s, {largest['rebuild-index MB']:.0f} MB peak",
            f"{rebuild_ratio:.3f}x the hnswlib build alone ({largest['before: build']:.0f} CPU-s); "
            f"<= 0.5: {'yes' if rebuild_ratio <= 0.5 else 'NO'}",
        ),
        ("index add / remove 1,000 faces", f"{largest['add 1,000 ms']:.0f} / {largest['remove 1,000 ms']:.1f} ms", ""),
    ]


if __name__ == "__main__":
    chosen = tuple(int(size) for size in sys.argv[1:]) or SIZES
    for row in main(chosen):
        print(" | ".join(row))
