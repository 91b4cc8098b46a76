"""The pool's pass over every pooled face through its 8-bit rounding (coarse.py): what comes out at
or above the floor is exact, nothing at or above it is missed, and only the few rows the rounding
cannot rule out are read as they are."""

from __future__ import annotations

import numpy as np
import pytest

import facesyncd.coarse as coarse
from facesyncd.coarse import closest, round_rows

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def every_pass_rounded(monkeypatch) -> None:
    """The tests' passes are small: through the rounding all the same."""
    monkeypatch.setattr(coarse, "WORTH", 0)


def unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), np.float32)


def library(dimension: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Strangers; for each target, rows at similarities from just under to just over the floor (0.45);
    and rows the rounding treats worst: every component alike (each code 255, the integer product's
    largest terms) and a single large component among small ones (a coarse grid for the rest)."""
    rng = np.random.default_rng(seed)
    targets = unit(rng.normal(size=(40, dimension)))
    targets[0] = unit(np.ones((1, dimension)) + 0.05 * rng.normal(size=(1, dimension)))[0]
    rows = [unit(rng.normal(size=(3000, dimension)))]
    for target in targets:
        away = unit(rng.normal(size=(30, dimension)))
        away = unit(away - (away @ target)[:, None] * target)
        similar = 0.45 + np.linspace(-0.03, 0.03, 30)
        rows.append(unit(similar[:, None] * target + np.sqrt(1 - similar**2)[:, None] * away))
    rows.append(unit(np.ones((20, dimension)) + 0.05 * rng.normal(size=(20, dimension))))
    spike = 0.02 * rng.normal(size=(20, dimension))
    spike[:, 0] = 1.0
    rows.append(unit(spike + 0.3 * targets[1]))
    return np.concatenate(rows), targets


@pytest.mark.parametrize("dimension", [128, 512])
def test_rows_at_or_above_the_floor_get_their_exact_similarity_and_the_rest_a_bound_below_it(dimension: int) -> None:
    rows, targets = library(dimension, seed=dimension)
    exact = (rows @ targets.T).max(axis=1)
    read: list[int] = []
    found = closest(round_rows(rows), targets, 0.45, lambda wanted: read.extend(wanted.tolist()) or rows[wanted])
    above = exact >= 0.45
    assert 300 < above.sum() < 2000  # the planted rows straddle the floor
    assert np.array_equal(found >= 0.45, above)
    # compared exactly, as without the rounding (to float32's last bits, which a product's shape moves)
    assert np.allclose(found[above], exact[above], rtol=0, atol=1e-6)
    assert (found >= exact - 1e-6).all()  # below the floor: an upper bound
    assert (found[:3000] > exact[:3000]).all()  # the rounding ruled every stranger out
    assert above.sum() <= len(read) < 2 * above.sum()  # and only the few others were read as they are


def test_without_onnxruntime_numpy_multiplies_the_codes_to_the_same_result(monkeypatch) -> None:
    rows, targets = library(512, seed=1)
    rounded = round_rows(rows)
    through_onnxruntime = closest(rounded, targets, 0.45, lambda wanted: rows[wanted])
    monkeypatch.setattr(coarse, "_engine", lambda: None)
    assert np.array_equal(closest(rounded, targets, 0.45, lambda wanted: rows[wanted]), through_onnxruntime)


def test_rounding_keeps_a_row_of_zeros_and_refuses_rows_of_other_embeddings() -> None:
    rows = np.zeros((3, 128), np.float32)
    rows[1, :] = 0.5
    rounded = round_rows(rows)
    assert np.isfinite(rounded.scale).all() and (rounded.codes[0] == 128).all() and rounded.error[1] < 1e-6
    targets = unit(np.ones((1, 128)))
    found = closest(rounded, targets, 0.5, lambda wanted: rows[wanted])
    assert found[1] == pytest.approx(np.sqrt(128) * 0.5) and found[0] < 0.5
    assert (closest(rounded, targets[:0], 0.5, lambda wanted: rows[wanted]) == -np.inf).all()


def test_a_session_that_cannot_be_made_leaves_the_pass_to_numpy(monkeypatch, tmp_path, caplog) -> None:
    """An install without the model file (or an onnxruntime without the operator) is warned about,
    and the pass goes on, as exact."""
    rows, targets = library(128, seed=3)
    rounded = round_rows(rows)
    through_onnxruntime = closest(rounded, targets, 0.45, lambda wanted: rows[wanted])
    monkeypatch.setattr(coarse, "PRODUCT_MODEL", tmp_path / "missing.onnx")
    coarse._engine.cache_clear()
    try:
        assert np.array_equal(closest(rounded, targets, 0.45, lambda wanted: rows[wanted]), through_onnxruntime)
        assert coarse._engine() is None and "without onnxruntime's integer product" in caplog.text
    finally:
        coarse._engine.cache_clear()


def test_a_small_pass_leaves_onnxruntime_alone(monkeypatch) -> None:
    """Below WORTH rows times targets, numpy's product costs less than loading onnxruntime would."""
    rows, targets = library(128, seed=2)
    rounded = round_rows(rows)
    through_onnxruntime = closest(rounded, targets, 0.45, lambda wanted: rows[wanted])
    monkeypatch.setattr(coarse, "WORTH", len(rows) * len(targets) + 1)
    monkeypatch.setattr(coarse, "_engine", lambda: pytest.fail("onnxruntime asked for"))
    assert np.array_equal(closest(rounded, targets, 0.45, lambda wanted: rows[wanted]), through_onnxruntime)


def test_the_shipped_product_model_is_the_integer_product_it_stands_for() -> None:
    """coarse_product.onnx (built once with the onnx package, which costs a process 1.1 CPU-s to
    import): one MatMulInteger of uint8 rows, zero point 128, by int8 targets, in int32; and what
    onnxruntime makes of it equals numpy's integer product, the largest codes included."""
    import onnx

    model = onnx.load(str(coarse.PRODUCT_MODEL))
    onnx.checker.check_model(model)
    [node] = model.graph.node
    [zero] = model.graph.initializer
    types = {value.name: value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)}
    assert node.op_type == "MatMulInteger" and list(node.input) == ["rows", "targets", "zero"]
    assert types == {
        "rows": onnx.TensorProto.UINT8,
        "targets": onnx.TensorProto.INT8,
        "product": onnx.TensorProto.INT32,
    }
    assert onnx.numpy_helper.to_array(zero).tolist() == 128
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 256, size=(300, 512), dtype=np.uint8)
    rows[0] = 255
    targets = rng.integers(-63, 64, size=(512, 20), dtype=np.int8)
    targets[:, 0] = 63
    product = coarse._engine().run(None, {"rows": rows, "targets": targets})[0]
    assert np.array_equal(product, (rows.astype(np.int64) - 128) @ targets.astype(np.int64))
