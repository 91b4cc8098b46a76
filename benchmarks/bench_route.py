"""How many identities the routed search must read (index.ROUTE) for the neighbours assignment asks
for, on a library harder than bench_index.py's: there every identity has 20 faces and a query's true
neighbours all lie in its own identity, so that recall cannot tell one ROUTE from another.

Here identities come in families of look-alikes (FAMILY identities whose centres share a direction:
cosine about 0.5 between relatives, as siblings' embeddings are), of sizes from 5 to 500 faces
(most small, a few large, as facesets are), 512-d. Three kinds of query, 1,000 each, none of them in
the index: a new face of a known person, a face of a relative the library does not have (a new
sibling: its true neighbours spread over the family), and a stranger (a random direction). For each
ROUTE, against exact search (numpy) in the same run: recall of the 16 nearest faces (what
cycle/identify.py asks for, NEIGHBOURS), whether the nearest face is the exact one, what share of the
faces within match_distance of a query it found (what an assignment rests on: a stranger's nearest
faces, far off, change nothing), and the CPU seconds per 1,000 queries.

    .venv/bin/python benchmarks/bench_route.py [--sizes 100000 500000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

DIMENSION = 512
K = 16  # cycle/identify.py NEIGHBOURS
FAMILY = 5
ROUTES = (8, 16, 32, 64)
QUERIES = 1_000
# Per component: two faces of one person at cosine about 0.6 (distance 0.4, within [identities]
# match_distance = 0.45, as real embeddings of one person mostly are); relatives' faces about 0.3.
NOISE = 0.035
MATCH_DISTANCE = 0.45


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def library(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """count faces, the identity of each, and every identity's centre."""
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(int(min(500, max(5, rng.pareto(1.2) * 10))))
    sizes[-1] -= sum(sizes) - count
    families = -(-len(sizes) // FAMILY)
    shared = _unit(rng.normal(size=(families, DIMENSION)))
    own = _unit(rng.normal(size=(len(sizes), DIMENSION)))
    centres = _unit(shared[np.arange(len(sizes)) // FAMILY] + own)  # relatives at cosine about 0.5
    owners = np.repeat(np.arange(len(sizes)), sizes)
    faces = np.empty((count, DIMENSION), np.float32)
    for start in range(0, count, 50_000):
        block = slice(start, start + 50_000)
        faces[block] = _unit(centres[owners[block]] + rng.normal(scale=NOISE, size=(len(owners[block]), DIMENSION)))
    return faces, owners, centres


def query_sets(centres: np.ndarray, owners: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    known = centres[owners[rng.choice(len(owners), QUERIES)]]  # drawn by faces: large identities more often
    family_of = rng.integers(0, len(centres) // FAMILY, QUERIES) * FAMILY
    sibling = _unit(centres[family_of] + _unit(rng.normal(size=(QUERIES, DIMENSION))))
    noise = rng.normal(scale=NOISE, size=(QUERIES, DIMENSION))
    return {
        "a known person": _unit(known + noise),
        "a relative new to the library": _unit(sibling + noise),
        "a stranger": _unit(rng.normal(size=(QUERIES, DIMENSION))),
    }


def exact(faces: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The K nearest faces of each query, nearest first, and their cosine distances."""
    found, distances = [], []
    for start in range(0, len(queries), 250):
        similarity = queries[start : start + 250] @ faces.T
        top = np.argpartition(-similarity, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        found.append(top)
        distances.append(1.0 - np.take_along_axis(similarity, top, axis=1))
    return np.concatenate(found), np.concatenate(distances)


def main(sizes: tuple[int, ...] = (100_000, 500_000)) -> list[tuple[str, str, str]]:
    import facesyncd.index as index_module
    from facesyncd.blas import one_thread
    from facesyncd.index import FaceIndex

    rows = []
    for size in sizes:
        rng = np.random.default_rng(21)
        faces, owners, centres = library(size, rng)
        index = FaceIndex(DIMENSION, capacity=size)
        for start in range(0, size, 20_000):
            block = slice(start, start + 20_000)
            index.add(list(range(start, min(size, start + 20_000))), faces[block], (owners[block] + 1).tolist())
        queries = query_sets(centres, owners, rng)
        truth = {kind: exact(faces, these) for kind, these in queries.items()}
        index.query(queries["a stranger"][:100], K)  # the first search sorts the rows by identity: apart
        print(f"{size:,} faces in {len(centres):,} identities (families of {FAMILY}), {K} neighbours:", flush=True)
        for route in ROUTES:
            index_module.ROUTE = route
            figures = []
            for kind, these in queries.items():
                with one_thread():
                    started = time.process_time()
                    found, _ = index.query(these, K)
                    seconds = time.process_time() - started
                wanted, distances = truth[kind]
                recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, wanted, strict=True)]))
                nearest = float(np.mean(found[:, 0] == wanted[:, 0]))
                close = [set(t[d <= MATCH_DISTANCE]) for t, d in zip(wanted, distances, strict=True)]
                within = sum(len(c) for c in close)
                kept = sum(len(c & set(f)) for c, f in zip(close, found, strict=True))
                share = f"{kept / within:.4f} of {within:,}" if within else "none there"
                figures.append(
                    f"{kind}: recall {recall:.4f}, nearest {nearest:.4f}, within match_distance {share}, "
                    f"{seconds:.2f} CPU-s"
                )
            line = "; ".join(figures)
            print(f"  ROUTE {route:>2}: {line}", flush=True)
            rows.append((f"routed search, {size:,} faces, ROUTE {route}", line, ""))
        index_module.ROUTE = 32
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    main(tuple(parser.parse_args().sizes))
