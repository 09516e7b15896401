"""bnkit.Flatten and bnkit.Dropout against tf_keras 2.21 and Keras 3.15.1 (run in a subprocess).

Flatten is deterministic: outputs and input gradients must be equal exactly.  Dropout masks
are random in both libraries, so the same *properties* are checked on both sides: values in
``{0, x / (1 - rate)}``, constancy along the ``noise_shape`` axes of size 1, a plausible kept
fraction, gradients through the same mask, identity in inference; rate validation must
raise the same exception types.
"""

from __future__ import annotations

import math

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

import bnkit

from .oracle_client import case_array, case_error, run_keras

pytestmark = pytest.mark.oracle

FLAVOURS = ("tf_keras", "keras3")
FLATTEN_SHAPES: list[tuple[int, ...]] = [(4,), (4, 3), (2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 4, 5)]
DATA_FORMATS = ("channels_first", "channels_last")
DROPOUT_SHAPE = (16, 10, 32)
# name -> (rate, noise_shape): the property cases
DROPOUT_CASES: dict[str, tuple[float, tuple[int | None, ...] | None]] = {
    "drop_half_time_shared": (0.5, (None, 1, None)),
    "drop_02_elementwise": (0.2, None),
    "drop_07_feature_shared": (0.7, (None, None, 1)),
}
RATES: list[float] = [0, 0.0, 0.5, 0.999, 1, 1.0, 1.5, -0.1, 2]


def _flatten_name(shape: tuple[int, ...], data_format: str) -> str:
    return f"flatten_{data_format}_rank{len(shape)}"


def _rate_name(index: int) -> str:
    return f"rate_{index}"


def _build_specs(flavour: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    rng = np.random.default_rng(zlib.crc32(b"dropout_flatten"))
    arrays: dict[str, np.ndarray] = {}
    specs: list[dict[str, Any]] = []
    for shape in FLATTEN_SHAPES:
        for data_format in DATA_FORMATS:
            name = _flatten_name(shape, data_format)
            arrays[f"{name}/x"] = rng.normal(size=shape).astype(np.float32)
            out_shape = (shape[0], int(np.prod(shape[1:])))
            arrays[f"{name}/dy"] = rng.normal(size=out_shape).astype(np.float32)
            specs.append({"name": name, "layer": "Flatten", "config": {"data_format": data_format},
                          "steps": [{"x": f"{name}/x", "training": None, "dy": f"{name}/dy"}]})
    specs.append({"name": "flatten_bad_format", "layer": "Flatten", "config": {"data_format": "NCHW"}, "steps": []})
    arrays["scalar"] = np.array(1.5, np.float32)
    specs.append({"name": "flatten_rank0", "layer": "Flatten", "config": {},
                  "steps": [{"x": "scalar", "training": None}]})
    x = _dropout_input(rng)
    arrays["drop/x"] = x
    arrays["drop/dy"] = rng.normal(size=DROPOUT_SHAPE).astype(np.float32)
    for name, (rate, noise_shape) in DROPOUT_CASES.items():
        config = {"rate": rate, "noise_shape": None if noise_shape is None else list(noise_shape)}
        specs.append({"name": name, "layer": "Dropout", "config": config,
                      "steps": [{"x": "drop/x", "training": True, "dy": "drop/dy"},
                                {"x": "drop/x", "training": False, "dy": "drop/dy"}]})
    for index, rate in enumerate(RATES):
        specs.append({"name": _rate_name(index), "layer": "Dropout", "config": {"rate": rate}, "steps": []})
    for rate in (0.0, 1.0):
        specs.append({"name": f"drop_train_rate{rate:g}", "layer": "Dropout", "config": {"rate": rate},
                      "steps": [{"x": "drop/x", "training": True}]})
    for spec in specs:
        spec["keras"] = flavour
    return specs, arrays


def _dropout_input(rng: np.random.Generator) -> np.ndarray:
    """Entries bounded away from zero, so a zero output always means "dropped"."""
    magnitude = rng.uniform(0.5, 2.0, DROPOUT_SHAPE)
    return (magnitude * rng.choice([-1.0, 1.0], DROPOUT_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results() -> dict[str, dict[str, Any]]:
    results = {}
    for flavour in FLAVOURS:
        specs, arrays = _build_specs(flavour)
        results[flavour] = run_keras(specs, arrays, flavour=flavour)
    return results


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return _build_specs("tf_keras")[1]


# ---- Flatten --------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("shape", FLATTEN_SHAPES, ids=lambda s: f"rank{len(s)}")
def test_flatten_matches_keras(
    shape: tuple[int, ...], data_format: str, flavour: str,
    keras_results: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray],
) -> None:
    name = _flatten_name(shape, data_format)
    results = keras_results[flavour]
    x = torch.from_numpy(arrays[f"{name}/x"]).requires_grad_(True)
    y = bnkit.Flatten(data_format=data_format)(x)
    (y * torch.from_numpy(arrays[f"{name}/dy"])).sum().backward()
    expected = case_array(results, f"{name}/0/y")
    assert tuple(y.shape) == expected.shape
    np.testing.assert_array_equal(y.detach().numpy(), expected)
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.numpy(), case_array(results, f"{name}/0/dx"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flatten_errors_match_keras(flavour: str, keras_results: dict[str, dict[str, Any]]) -> None:
    results = keras_results[flavour]
    keras_bad_format = case_error(results, "flatten_bad_format")
    keras_rank0 = case_error(results, "flatten_rank0")
    assert keras_bad_format is not None and keras_rank0 is not None
    with pytest.raises(Exception) as bad_format:
        bnkit.Flatten(data_format="NCHW")
    assert type(bad_format.value).__name__ == keras_bad_format.split(":")[0]
    with pytest.raises(Exception) as rank0:
        bnkit.Flatten()(torch.tensor(1.5))
    assert type(rank0.value).__name__ == keras_rank0.split(":")[0]


# ---- Dropout --------------------------------------------------------------------------------
def _check_dropout_properties(
    who: str, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray,
    rate: float, noise_shape: tuple[int | None, ...] | None,
) -> None:
    kept = y != 0
    scaled = x / (1.0 - rate)
    np.testing.assert_allclose(y[kept], scaled[kept], rtol=1e-6, err_msg=f"{who}: kept values != x/(1-rate)")
    for axis, size in enumerate(noise_shape or ()):
        if size == 1:
            assert (kept == kept.take([0], axis=axis)).all(), f"{who}: mask varies along broadcast axis {axis}"
    # the mask has one independent draw per element of the noise shape; the kept fraction is
    # a binomial proportion over those draws, so allow 5 standard deviations (about 1 in 2
    # million for a correct implementation)
    draws = math.prod(x.shape[axis] if size is None else size for axis, size in enumerate(noise_shape or x.shape))
    fraction = kept.mean()
    tolerance = 5.0 * math.sqrt(rate * (1.0 - rate) / draws)
    assert abs(fraction - (1.0 - rate)) <= tolerance, (
        f"{who}: kept fraction {fraction:.3f} for rate {rate} over {draws} independent draws")
    np.testing.assert_allclose(dx, dy * kept / (1.0 - rate), rtol=1e-6, err_msg=f"{who}: dx not through the mask")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("name", list(DROPOUT_CASES))
def test_dropout_properties_match_keras(
    name: str, flavour: str, keras_results: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]
) -> None:
    rate, noise_shape = DROPOUT_CASES[name]
    x_np, dy_np = arrays["drop/x"], arrays["drop/dy"]
    results = keras_results[flavour]
    # the oracle has the properties ...
    _check_dropout_properties(f"{flavour} {name}", x_np, case_array(results, f"{name}/0/y"),
                              case_array(results, f"{name}/0/dx"), dy_np, rate, noise_shape)
    np.testing.assert_array_equal(case_array(results, f"{name}/1/y"), x_np)
    # ... and so does bnkit
    torch.manual_seed(zlib.crc32(name.encode()))
    layer = bnkit.Dropout(rate, noise_shape=noise_shape)
    x = torch.from_numpy(x_np).requires_grad_(True)
    y = layer(x, training=True)
    (y * torch.from_numpy(dy_np)).sum().backward()
    assert x.grad is not None
    _check_dropout_properties(f"bnkit {name}", x_np, y.detach().numpy(), x.grad.numpy(), dy_np, rate, noise_shape)
    np.testing.assert_array_equal(layer(x, training=False).detach().numpy(), x_np)


def test_dropout_training_none_follows_module_mode(arrays: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(arrays["drop/x"])
    layer = bnkit.Dropout(0.5, noise_shape=(None, 1, None), seed=3)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    assert (y == 0).any() and not torch.equal(y, x)
    assert torch.equal(layer(x, training=False), x)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("index", range(len(RATES)), ids=[repr(r) for r in RATES])
def test_dropout_rate_validation_matches_keras(
    index: int, flavour: str, keras_results: dict[str, dict[str, Any]]
) -> None:
    keras_error = case_error(keras_results[flavour], _rate_name(index))
    try:
        bnkit.Dropout(RATES[index])
        ours = None
    except Exception as error:  # noqa: BLE001 - the type is compared
        ours = f"{type(error).__name__}: {error}"
    keras_type = None if keras_error is None else keras_error.split(":")[0]
    our_type = None if ours is None else ours.split(":")[0]
    assert our_type == keras_type, f"rate={RATES[index]!r}: bnkit {ours!r}, {flavour} {keras_error!r}"
    if ours is not None:
        assert repr(RATES[index]) in ours or str(RATES[index]) in ours, "message must show the received rate"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dropout_rate0_is_identity_in_training(
    flavour: str, keras_results: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]
) -> None:
    x = arrays["drop/x"]
    np.testing.assert_array_equal(case_array(keras_results[flavour], "drop_train_rate0/0/y"), x)
    np.testing.assert_array_equal(bnkit.Dropout(0.0)(torch.from_numpy(x), training=True).numpy(), x)


def test_dropout_rate1_in_training(keras_results: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    """tf_keras raises at call time; bnkit follows Keras 3 (all zeros), a documented choice."""
    tf_keras_error = case_error(keras_results["tf_keras"], "drop_train_rate1")
    assert tf_keras_error is not None and tf_keras_error.startswith("ValueError")
    keras3: Mapping[str, Any] = keras_results["keras3"]
    expected = case_array(keras3, "drop_train_rate1/0/y")
    y = bnkit.Dropout(1.0)(torch.from_numpy(arrays["drop/x"]), training=True)
    np.testing.assert_array_equal(y.numpy(), expected)
    assert not expected.any()
