"""Issue 24, behaviour 3: why the pool is searched exactly. Which pooled faces lie within
cluster_distance of the faces new to the pool: found exactly (identities.closest, every pooled face
times every new one), against a graph index over the pool (hnswlib, the "pool index" the issue
allows), built and asked in the same run.

The pool is as bench_new_faces.py makes it: strangers, each unlike any other (random unit vectors,
512-d). The new faces: 200 of people the pool holds one face of (0.35 to 0.55 from it, within the
cut), 200 strangers. Printed per size: CPU seconds of the exact pass; the index's build and query
CPU seconds; how many of the true neighbours within the cut the index found.

    .venv/bin/python benchmarks/bench_pool_reach.py [--sizes 20000 50000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CUT = 0.55  # [identities] cluster_distance
DIMENSION = 512
NEW = 200
# (M, ef_construction, ef): the main index's parameters before issue 24 first, then cheaper ones
GRAPHS = ((16, 100, 64), (16, 100, 128), (8, 40, 64))


def unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), np.float32)


def data(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = unit(rng.normal(size=(size, DIMENSION)))
    # a face of a person the pool holds once: at a chosen cosine distance from that face
    wanted = np.linspace(0.35, 0.55, NEW)
    base = pool[rng.choice(size, NEW, replace=False)]
    away = rng.normal(size=(NEW, DIMENSION))
    away = unit(away - (away * base).sum(axis=1, keepdims=True) * base)  # orthogonal to its face
    similar = 1.0 - wanted
    relatives = unit(similar[:, None] * base + np.sqrt(1.0 - similar**2)[:, None] * away)
    return pool, np.concatenate([relatives, unit(rng.normal(size=(NEW, DIMENSION)))])


def main(sizes: tuple[int, ...] = (20_000, 50_000)) -> list[tuple[str, str, str]]:
    import hnswlib

    from facesyncd.identities import closest

    rows: list[tuple[str, str, str]] = []
    for size in sizes:
        pool, new = data(size)
        started = time.process_time()
        truth = closest(pool, new) >= 1.0 - CUT
        exact = time.process_time() - started
        print(f"{size:>7} pooled faces: exact pass {exact:.3f} CPU-s, {int(truth.sum())} within the cut", flush=True)
        built: dict[tuple[int, int], tuple[object, float]] = {}
        for m, construction, ef in GRAPHS:
            if (m, construction) not in built:
                started = time.process_time()
                index = hnswlib.Index(space="cosine", dim=DIMENSION)
                index.init_index(max_elements=size, ef_construction=construction, M=m)
                index.set_num_threads(2)
                index.add_items(pool, np.arange(size))
                built[(m, construction)] = (index, time.process_time() - started)
            index, build = built[(m, construction)]
            index.set_ef(ef)  # type: ignore[attr-defined]
            index.set_num_threads(1)  # type: ignore[attr-defined]
            started = time.process_time()
            labels, distances = index.knn_query(new, k=32)  # type: ignore[attr-defined]
            query = time.process_time() - started
            found = np.zeros(size, bool)
            found[labels[distances <= CUT]] = True
            share = (found & truth).sum() / max(int(truth.sum()), 1)
            print(
                f"  hnswlib M {m} / ef_construction {construction} / ef {ef}: build {build:.1f} CPU-s, "
                f"query {query:.3f} CPU-s, found {int((found & truth).sum())} of {int(truth.sum())} ({share:.2f})",
                flush=True,
            )
            rows.append(
                (
                    f"pool faces within the cut of 400 new ones, {size:,} pooled strangers: hnswlib M {m} / "
                    f"ef_construction {construction} / ef {ef} against the exact pass",
                    f"found {share:.2f} of them; build {build:.1f} + query {query:.3f} CPU-s",
                    f"exact: all, {exact:.3f} CPU-s",
                )
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000])
    arguments = parser.parse_args()
    for row in main(tuple(arguments.sizes)):
        print(" | ".join(row))
