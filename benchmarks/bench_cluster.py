"""Clustering the pool of unmatched faces: time and peak memory against one exact run.

A first sync puts every face in the pool (19,462 in the pipeline facesyncd grew out of), and years of
strangers in the background keep it large. One exact average-linkage run holds a distance matrix of
16 bytes per pair; facesyncd splits a pool over identities.EXACT_LIMIT into the components of its
nearest-neighbour graph first. Pools: people of 20 faces each plus as many strangers seen once,
512-d, seeded. Each run is a child process, measured by its own peak RSS (VmHWM).
"""

from __future__ import annotations

import subprocess
import sys

from common import REPO

CHILD = """
import sys, time
sys.path.insert(0, {benchmarks!r})
import numpy as np
from bench_index import dataset
from facesyncd.identities import cluster_pool
count, limit = int(sys.argv[1]), int(sys.argv[2])
people, _ = dataset(count // 2, seed=3)
rng = np.random.default_rng(4)
strangers = rng.normal(size=(count - len(people), people.shape[1])).astype(np.float32)
pool = np.concatenate([people, strangers / np.linalg.norm(strangers, axis=1, keepdims=True)])
pool = pool[rng.permutation(len(pool))]
started = time.perf_counter()
result = cluster_pool(pool, [str(i) for i in range(count)], cluster_distance=0.55, member_distance=0.45,
                      min_faces=3, exact_limit=limit)
seconds = time.perf_counter() - started
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(result.clusters), seconds, int(peak) / 1024)
"""


def run(count: int, limit: int) -> tuple[int, float, float]:
    code = CHILD.format(benchmarks=str(REPO / "benchmarks"))
    result = subprocess.run(
        [sys.executable, "-c", code, str(count), str(limit)], capture_output=True, text=True, check=True, cwd=REPO
    )
    clusters, seconds, peak = result.stdout.split()
    return int(clusters), float(seconds), float(peak)


def main() -> list[tuple[str, str, str]]:
    rows = []
    exact = run(10_000, 10_000)
    ours = run(10_000, 0)
    print(
        f"pool of 10,000: one exact run {exact[1]:.1f} s, {exact[2]:.0f} MB peak, {exact[0]} clusters;"
        f" facesyncd {ours[1]:.1f} s, {ours[2]:.0f} MB peak, {ours[0]} clusters"
    )
    rows.append(
        (
            "cluster a pool of 10,000 faces (512-d)",
            f"{ours[1]:.1f} s, {ours[2]:.0f} MB",
            f"one exact run: {exact[1]:.1f} s, {exact[2]:.0f} MB; same clusters: {'yes' if ours[0] == exact[0] else 'NO'}",
        )
    )
    large = run(50_000, 0)
    print(
        f"pool of 50,000: facesyncd {large[1]:.1f} s, {large[2]:.0f} MB peak, {large[0]} clusters"
        " (one exact run would hold 20 GB)"
    )
    rows.append(("cluster a pool of 50,000 faces", f"{large[1]:.1f} s, {large[2]:.0f} MB", "one exact run: ~20 GB"))
    return rows


if __name__ == "__main__":
    main()
