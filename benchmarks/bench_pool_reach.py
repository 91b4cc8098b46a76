"""Issue 24, behaviour 3: why the pool is searched exactly. Which pooled faces lie within
cluster_distance of the faces new to the pool: found exactly (every pooled face times every new
one), against a graph index over the pool (hnswlib, the "pool index" the issue
allows), built and asked in the same run. Then the exact pass as a cycle runs it, through the pool's
8-bit rounding (coarse.py), against the same pass in float32, at 128-d and 512-d up to the 200,000
pooled faces of a library of 500,000.

The pool is as bench_new_faces.py makes it: strangers, each unlike any other (random unit vectors,
512-d). The new faces: 200 of people the pool holds one face of (0.35 to 0.55 from it, within the
cut), 200 strangers. Printed per size: CPU seconds of the exact pass; the index's build and query
CPU seconds; how many of the true neighbours within the cut the index found. For the rounding: the
median of 3 runs of each pass, taken in turns, whether both found the same faces, and the rounding's
own CPU seconds (once per process: a running process keeps the rounded rows with the pool).

    .venv/bin/python benchmarks/bench_pool_reach.py [--sizes 20000 50000] [--coarse-sizes 20000 200000]
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


def data(size: int, seed: int = 0, dimension: int = DIMENSION) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = unit(rng.normal(size=(size, dimension)))
    # a face of a person the pool holds once: at a chosen cosine distance from that face
    wanted = np.linspace(0.35, 0.55, NEW)
    base = pool[rng.choice(size, NEW, replace=False)]
    away = rng.normal(size=(NEW, dimension))
    away = unit(away - (away * base).sum(axis=1, keepdims=True) * base)  # orthogonal to its face
    similar = 1.0 - wanted
    relatives = unit(similar[:, None] * base + np.sqrt(1.0 - similar**2)[:, None] * away)
    return pool, np.concatenate([relatives, unit(rng.normal(size=(NEW, dimension)))])


def float32_pass(pool: np.ndarray, new: np.ndarray, block: int = 8192) -> np.ndarray:
    """Each pooled face's similarity to its nearest new face, every pair in float32, a block of rows
    at a time: the pass as it was before the pool was held rounded (the baseline)."""
    found = np.empty(len(pool), np.float32)
    for start in range(0, len(pool), block):
        found[start : start + block] = (pool[start : start + block] @ new.T).max(axis=1)
    return found


def rounded(sizes: tuple[int, ...] = (20_000, 50_000, 200_000)) -> list[tuple[str, str, str]]:
    """The exact pass through the pool's 8-bit rounding (coarse.closest) against the float32 pass."""
    from facesyncd.coarse import closest, round_rows

    rows: list[tuple[str, str, str]] = []
    for dimension in (128, 512):
        for size in sizes:
            pool, new = data(size, dimension=dimension)
            started = time.process_time()
            coarse = round_rows(pool)
            rounding = time.process_time() - started
            read: list[int] = []

            def exact(wanted: np.ndarray, pool: np.ndarray = pool, read: list[int] = read) -> np.ndarray:
                read.append(len(wanted))  # (a cycle reads these from the store)
                return pool[wanted]

            closest(coarse.take(np.arange(10)), new, 1.0 - CUT, exact)  # (onnxruntime's session made)
            spent: dict[str, list[float]] = {"float32": [], "rounded": []}
            for _ in range(3):
                started = time.process_time()
                plain = float32_pass(pool, new)
                spent["float32"].append(time.process_time() - started)
                read.clear()
                started = time.process_time()
                through = closest(coarse, new, 1.0 - CUT, exact)
                spent["rounded"].append(time.process_time() - started)
            base, coarse_pass = (float(np.median(spent[name])) for name in ("float32", "rounded"))
            differ = (plain >= 1.0 - CUT) != (through >= 1.0 - CUT)
            # (a face at the cut itself lands on either side with float32's last bit, in any pass)
            same = "the same faces" if (np.abs(plain[differ] - (1.0 - CUT)) < 1e-6).all() else "OTHER faces"
            memory = f"{coarse.codes.nbytes / 2**20:.0f} MB held against {pool.nbytes / 2**20:.0f}"
            print(
                f"{size:>7} pooled faces of {dimension}-d: through the rounding {coarse_pass:.3f} CPU-s, in float32 "
                f"{base:.3f} ({coarse_pass / base:.2f}x), {same} ({int(differ.sum())} at the cut itself), "
                f"{sum(read)} rows read as they are; {memory}; rounding them {rounding:.3f} CPU-s",
                flush=True,
            )
            rows.append(
                (
                    f"the pool's pass for 400 new faces over {size:,} pooled faces of {dimension}-d: through their "
                    "8-bit rounding, against every pair in float32 (median of 3)",
                    f"{coarse_pass:.3f} vs {base:.3f} CPU-s: {coarse_pass / base:.2f}x, {same}, {sum(read)} rows "
                    f"read as they are; {memory}; rounding {rounding:.3f} CPU-s (on reading the pool)",
                    "the same faces, less CPU and memory",
                )
            )
    return rows


def main(
    sizes: tuple[int, ...] = (20_000, 50_000), coarse_sizes: tuple[int, ...] = (20_000, 50_000, 200_000)
) -> list[tuple[str, str, str]]:
    import hnswlib

    rows: list[tuple[str, str, str]] = []
    for size in sizes:
        pool, new = data(size)
        started = time.process_time()
        truth = float32_pass(pool, new) >= 1.0 - CUT
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
    return rows + rounded(coarse_sizes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--coarse-sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    arguments = parser.parse_args()
    for row in main(tuple(arguments.sizes), tuple(arguments.coarse_sizes)):
        print(" | ".join(row))
