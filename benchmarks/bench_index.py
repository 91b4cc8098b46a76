"""Target 3: the face index at 200,000 faces of 512 dimensions.

Random unit vectors with identity structure (seeded): identities are random directions, their faces
noisy copies. Measures, against exact search (numpy, batched) in the same run: build time and its
growth from 10k to 200k (extrapolated to 1M), `facesyncd rebuild-index` on a real database of 200k
faces (time and peak memory), adding and removing 1,000 faces, query latency p50/p99, recall@10.

hnswlib's parameters were chosen by a sweep at this size (2 cores): M 16 / ef_construction 100 / ef
128 gives recall 0.995 at p50 0.48 ms; M 24 / ef 64 gives 0.998 at 0.32 ms but builds 1.45x slower,
and M 24 / ef_construction 200 / ef 32 gives 0.990 at 0.18 ms but builds 2.5x slower. Every face a
sync adds costs one insertion and one query, so the cheaper build wins.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, peak_memory_probe

DIMENSION = 512
FACES_PER_IDENTITY = 20  # > k, so a query's true top 10 are its identity's faces, not near-ties


def dataset(count: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    identities = max(1, count // FACES_PER_IDENTITY)
    centres = rng.normal(size=(identities, DIMENSION)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owners = np.arange(count) % identities
    data = centres[owners] + rng.normal(scale=0.045, size=(count, DIMENSION)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def build(data: np.ndarray):
    from facesyncd.index import FaceIndex

    index = FaceIndex(DIMENSION)
    started = time.perf_counter()
    index.add(list(range(len(data))), data, [0] * len(data))
    return index, time.perf_counter() - started


def exact_top10(data: np.ndarray, queries: np.ndarray, batch: int = 256) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = []
    for start in range(0, len(queries), batch):
        similarity = queries[start : start + batch] @ data.T
        top = np.argpartition(-similarity, 10, axis=1)[:, :10]
        order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
        result.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(result), time.perf_counter() - started


def rebuild_from_database(data: np.ndarray) -> tuple[float, float]:
    """`facesyncd rebuild-index` on a real database holding these faces: seconds, peak MB."""
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
        store.ensure_identity(1, "import")
        store.conn.execute(
            "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES ('s', 0, 'import', 'm', 'now')"
        )
        store.conn.executemany(
            "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, identity) "
            "VALUES ('s', ?, 0, 0, 1, 1, 1, '[]', ?, 'c', 1)",
            ((i, row.tobytes()) for i, row in enumerate(data)),
        )
    store.close()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", peak_memory_probe(["--config", str(config), "rebuild-index"])],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "X": "unused"},
    )
    seconds = time.perf_counter() - started
    peak = int(result.stderr.strip().splitlines()[-1]) / 1024
    subprocess.run(["rm", "-rf", str(directory)], check=False)
    return seconds, peak


def main(full: int = 200_000) -> list[tuple[str, str, str]]:
    rows = []
    sizes = [size for size in (10_000, 25_000, 50_000, 100_000, full) if size <= full]
    data = dataset(full + 1_000)
    base, extra = data[:full], data[full:]
    timings = {}
    for size in sizes[:-1]:
        _, seconds = build(base[:size])
        timings[size] = seconds
    index, seconds = build(base)
    timings[full] = seconds
    exponent = math.log(timings[full] / timings[sizes[0]]) / math.log(full / sizes[0])
    million = timings[full] * (1_000_000 / full) ** exponent
    print("index build (in memory, all cores):")
    for size, secs in timings.items():
        print(f"  {size:>7} faces: {secs:6.1f} s")
    print(f"  growth ~ n^{exponent:.2f}; extrapolated to 1,000,000 faces: {million / 60:.1f} min")

    started = time.perf_counter()
    index.add(list(range(full, full + 1_000)), extra, [0] * 1_000)
    add_seconds = time.perf_counter() - started

    rng = np.random.default_rng(11)
    queries = base[rng.choice(full, 1_000, replace=False)] + rng.normal(scale=0.02, size=(1_000, DIMENSION)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    reference = np.concatenate([base, extra])
    truth, exact_seconds = exact_top10(reference, queries)
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        labels, _ = index.query(query[None, :], 10)
        latencies.append(time.perf_counter() - started)
        found.append(labels[0])
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    started = time.perf_counter()
    batched_labels, _ = index.query(queries, 10)
    batched_per_query = (time.perf_counter() - started) / len(queries) * 1000
    batched_recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(batched_labels, truth, strict=True)]))
    p50, p99 = np.percentile(latencies, 50) * 1000, np.percentile(latencies, 99) * 1000
    exact_per_query = exact_seconds / len(queries) * 1000
    print(f"add 1,000 faces to the built index: {add_seconds * 1000:.0f} ms")
    print(
        f"query (k=10): p50 {p50:.3f} ms, p99 {p99:.3f} ms; exact numpy (batched 256): {exact_per_query:.3f} ms/query"
    )
    print(f"recall@10 vs exact: {recall:.4f}; speed-up per query: {exact_per_query / p50:.1f}x (single queries)")
    print(
        f"batched queries (1,000 at once, all cores): {batched_per_query:.4f} ms/query, recall@10 {batched_recall:.4f},"
        f" {exact_per_query / batched_per_query:.1f}x faster than batched exact search"
    )
    started = time.perf_counter()
    index.remove(list(range(full, full + 1_000)))  # photos deleted in Immich: their faces leave
    remove_seconds = time.perf_counter() - started
    print(f"remove 1,000 faces (marked deleted, no rebuild): {remove_seconds * 1000:.1f} ms")
    rebuild_seconds, peak_mb = rebuild_from_database(base)
    print(f"facesyncd rebuild-index on a database of {full} faces: {rebuild_seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
    rows += [
        (
            "index build 200k x 512 (rebuild-index)",
            f"{rebuild_seconds:.1f} s, {peak_mb:.0f} MB peak",
            f"1M extrapolated {million / 60:.1f} min",
        ),
        ("index add 1,000 faces", f"{add_seconds * 1000:.0f} ms", ""),
        ("index remove 1,000 faces", f"{remove_seconds * 1000:.1f} ms", f"vs a rebuild: {rebuild_seconds:.0f} s"),
        ("index query p50 / p99", f"{p50:.3f} / {p99:.3f} ms", f"p50 <= 1 ms: {'yes' if p50 <= 1 else 'NO'}"),
        ("index recall@10", f"{recall:.4f}", f">= 0.99: {'yes' if recall >= 0.99 else 'NO'}"),
        ("index vs exact, single query", f"{exact_per_query:.3f} ms exact", f"{exact_per_query / p50:.1f}x (>= 20x)"),
        (
            "index vs exact, batched",
            f"{batched_per_query:.4f} ms/query",
            f"{exact_per_query / batched_per_query:.1f}x (>= 20x)",
        ),
    ]
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
