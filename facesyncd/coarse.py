"""The pool's faces rounded to 8 bits, and the pass over them that each cycle bringing faces new to the
pool makes: how close each pooled face comes to the nearest new one, where only faces within a cut
matter (the one piece of work there that grows with the library: 200,000 pooled faces at 500,000).

A running process holds the pool as these codes (pool.PoolKeeper), a quarter of its float32
embeddings (100 MB instead of 400 at 200,000 faces of 512-d). Targets are rounded too, and the codes
multiplied by onnxruntime's integer matrix product, which costs about 0.6x float32's on a CPU
(benchmarks/bench_pool_reach.py). Each row's rounding error bounds how far the coarse product can lie
from the exact one, so a row whose bound stays below the floor is ruled out for certain; the few
others are read from the store and compared exactly. Nothing is approximate in what comes out: a row
at or above the floor gets its exact similarity. Without onnxruntime (an install for Immich's ML
service only), or for a small pool, numpy multiplies the codes: exact as well, at float32's cost."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

# An 8-bit code holds a component in -127..127 of its row's largest; stored plus this (unsigned: the
# integer product's fast kernels take unsigned rows times signed targets).
_ZERO = 128
_STEPS = 127.0
# A target's components in -63..63 of the largest: those kernels add two products of an unsigned row
# code (up to 255) and a signed target code in 16 bits, saturating past 32,767 (a wrong product,
# measured: 2 x 255 x 127 overflows, 2 x 255 x 63 does not).
_TARGET_STEPS = 63.0
# What float32 arithmetic may add to a bound on a product of 512 terms (the bound itself is ~0.03).
_SLACK = 1e-4
# Rows times targets below which numpy's product is used: the pass costs under 0.05 CPU-s there, about
# what a process pays once to load onnxruntime where the local engine has not.
WORTH = 1 << 22


@dataclass(frozen=True)
class CoarseRows:
    """Rows rounded to 8 bits, with what it takes to bound the error that made (round_rows)."""

    codes: NDArray[np.uint8]  # a row per row: each component over `scale`, rounded, plus _ZERO
    scale: NDArray[np.float32]  # a row's largest component (absolute) over _STEPS: row ~ (codes - _ZERO) * scale
    length: NDArray[np.float32]  # the rounded row's length
    error: NDArray[np.float32]  # the length of the row minus its rounding

    def __len__(self) -> int:
        return len(self.scale)

    def take(self, rows: NDArray[np.int64]) -> CoarseRows:
        return CoarseRows(self.codes[rows], self.scale[rows], self.length[rows], self.error[rows])


def round_rows(rows: NDArray[np.float32], block: int = 4096) -> CoarseRows:
    """CoarseRows of these float rows (a row of zeros stays zeros), a block of rows at a time (the
    temporaries of 200,000 rows at once cost more to allocate than the arithmetic)."""
    rows = np.asarray(rows, np.float32)
    codes = np.empty(rows.shape, np.uint8)
    scale, length, error = (np.empty(len(rows), np.float32) for _ in range(3))
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        largest = np.abs(part).max(axis=1, initial=0.0)
        factor = np.where(largest > 0, largest / _STEPS, 1.0).astype(np.float32)
        signed = np.rint(part / factor[:, None])
        rounded = signed * factor[:, None]
        codes[start : start + block] = signed + _ZERO
        scale[start : start + block] = factor
        length[start : start + block] = np.linalg.norm(rounded, axis=1)
        error[start : start + block] = np.linalg.norm(part - rounded, axis=1)
    return CoarseRows(codes, scale, length, error)


def closest(
    coarse: CoarseRows,
    targets: NDArray[np.float32],
    floor: float,
    exact: Callable[[NDArray[np.int64]], NDArray[np.float32]],
    block: int = 8192,
) -> NDArray[np.float32]:
    """Each row's similarity (dot product) to the nearest of `targets`: exact where it is at least
    `floor`, the rows' float embeddings read (`exact(rows)`: those rows, in that order) for the few
    the rounding cannot rule out; an upper bound below `floor` elsewhere; -inf with no targets."""
    found = np.full(len(coarse), -np.inf, np.float32)
    if not len(targets) or not len(coarse):
        return found
    wanted = _codes(targets)
    product = _integer_product(len(coarse) * len(targets))
    # row . target <= coarse product + |rounded row| * (largest target error) + (row error) * |largest target|
    for start in range(0, len(coarse), block):
        end = start + block
        found[start:end] = product(coarse.codes[start:end], wanted.codes).max(axis=1) * coarse.scale[start:end]
    found *= wanted.scale
    found += coarse.length * wanted.error + coarse.error * wanted.length + _SLACK
    unsure = np.flatnonzero(found >= floor)
    for start in range(0, len(unsure), block):
        rows = unsure[start : start + block]
        found[rows] = (exact(rows) @ targets.T).max(axis=1)
    return found


def _integer_product(size: int) -> Callable[[NDArray[np.uint8], NDArray[np.int8]], NDArray[np.generic]]:
    """(rows - _ZERO) @ targets, exactly: onnxruntime's integer product, for `size` rows times targets
    of at least WORTH; else (or without onnxruntime) numpy's float32 one, exact too (a sum of 512
    products of at most 127 x 63 stays far below float32's 2^24 integers), about as costly as
    comparing the float embeddings."""
    engine = _engine() if size >= WORTH else None
    if engine is not None:
        return lambda rows, targets: engine.run(None, {"rows": rows, "targets": targets})[0]
    return lambda rows, targets: (rows.astype(np.float32) - _ZERO) @ targets.astype(np.float32)


@dataclass(frozen=True)
class _Targets:
    codes: NDArray[np.int8]  # a column per target, all over one scale
    scale: float
    error: float  # the largest target error's length
    length: float  # the longest target's length


def _codes(targets: NDArray[np.float32]) -> _Targets:
    """The targets rounded to 8 bits over one scale (a product's row then needs one factor, not one
    per target), as the columns of the integer product."""
    largest = float(np.abs(targets).max())
    scale = largest / _TARGET_STEPS if largest > 0 else 1.0
    signed = np.rint(targets / np.float32(scale))
    error = float(np.linalg.norm(targets - signed * np.float32(scale), axis=1).max())
    length = float(np.linalg.norm(targets, axis=1).max())
    return _Targets(np.ascontiguousarray(signed.astype(np.int8).T), scale, error, length)


# The integer product as an ONNX model of one node (MatMulInteger: rows as uint8 with zero point _ZERO,
# times targets as int8, in int32), shipped built: the onnx package that builds it costs a process 1.1
# CPU-s to import, onnxruntime 0.05. tests/unit/test_coarse.py checks the file against its definition.
PRODUCT_MODEL = Path(__file__).with_name("coarse_product.onnx")


@functools.cache
def _engine() -> Any | None:
    """An onnxruntime session computing (rows - _ZERO) @ targets on the CPU (every onnxruntime build
    has the CPU provider); None without onnxruntime or when the session cannot be made (numpy's
    product is as exact)."""
    try:
        import onnxruntime
    except ImportError as error:
        log.debug("no onnxruntime (%s): the pool's codes are multiplied by numpy", error)
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # (idle threads that spin between calls burn CPU the cycle does not use)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(PRODUCT_MODEL.read_bytes(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # (onnxruntime raises many types) an install without the file, a build without the op
        log.warning("the pool is compared without onnxruntime's integer product: %s", error)
        return None
