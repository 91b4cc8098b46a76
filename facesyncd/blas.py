"""How many threads numpy's matrix products may use while facesyncd works: one.

A cycle's products are small and many (a batch of new faces against the hundred or so faces of each
identity it is routed to, one identity at a time; the pool's blocks; the centres), and OpenBLAS's
worker threads spin between them, waiting for the next: on two cores that spinning doubled the CPU of a
daemon's cycle of 1,000 new faces at 10,000 faces (benchmarks/bench_new_faces.py, 2026-12-04: 1.01
against 0.48 CPU-s). facesyncd runs beside Immich, on the same machine: CPU it burns waiting is taken
from Immich. onnxruntime's threads (detection, embedding) are set apart (embedder, coarse) and not
touched here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


@contextmanager
def one_thread() -> Iterator[None]:
    """Inside, the BLAS libraries loaded (numpy's, scipy's) use one thread; as they were after."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
