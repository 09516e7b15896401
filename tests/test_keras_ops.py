"""Keras shape, arithmetic, normalisation, activation, regularisation, application and
operation layers (``bnkit.keras._ops*``): outputs equal Keras' own, errors name the problem.

Oracle tests build small models in tf_keras 2.21 and Keras 3 (``keras_fixtures/ops_models.py``,
one subprocess per flavour and stage, both flavours at once), save them as ``.h5`` and
``.keras``, and compare bnkit's outputs with Keras' on the same inputs; round trips write
bnkit's model back and let Keras predict with it.  The other tests check the torch side
against NumPy formulas written here from Keras' documented definitions.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bnkit.keras as bk
from bnkit.keras._layers import ACTIVATIONS, activation_module
from tests.oracle_client import oracle_env

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "ops_models.py"
FLAVOURS = ("tf_keras", "keras3")
MODELS = ("activations", "preprocessing", "normalisation", "activation_layers", "merges_and_shapes",
          "regularisation", "application_layers", "operations")
TOLERANCE = 1e-5  # max |bnkit - Keras| / max |Keras|


def _run(work: dict[str, Path], argv: dict[str, list[str]], timeout: int = 600) -> dict[str, dict[str, str]]:
    """Run ops_models.py for each flavour at once; the status json it writes, per flavour."""
    processes = {flavour: subprocess.Popen([sys.executable, str(JOBS), flavour, *args], env=oracle_env(flavour),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for flavour, args in argv.items()}
    results = {}
    for flavour, process in processes.items():
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"Keras ({flavour}) timed out after {timeout} s", pytrace=False)
        status = work[flavour] / ("built.json" if argv[flavour][0] == "build" else "predicted.json")
        if process.returncode != 0 or not status.exists():
            pytest.fail(f"Keras ({flavour}) failed ({process.returncode}):\n{stderr[-6000:]}", pytrace=False)
        results[flavour] = json.loads(status.read_text(encoding="utf-8"))
    return results


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = {flavour: tmp_path_factory.mktemp(f"ops_{flavour}") for flavour in FLAVOURS}
    status = _run(work, {flavour: ["build", str(work[flavour])] for flavour in FLAVOURS})
    for flavour, models in status.items():
        for name, result in models.items():
            if result != "ok":
                pytest.fail(f"Keras ({flavour}) could not build {name}: {result}", pytrace=False)
    return work


def _outputs(model: torch.nn.Module, ref: Any) -> list[np.ndarray]:
    xs = [torch.from_numpy(ref[f"x{i}"]) for i in range(len(model.input_slots))]
    with torch.no_grad():
        ys = model(*xs)
    return [y.numpy() for y in (ys if isinstance(ys, tuple) else (ys,))]


def _relative(ys: list[np.ndarray], ref: Any) -> float:
    assert len(ys) == sum(key.startswith("y") for key in ref.files)
    return max(float(np.abs(y - ref[f"y{i}"]).max() / np.abs(ref[f"y{i}"]).max()) for i, y in enumerate(ys))


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_outputs_equal_keras(built: dict[str, Path], flavour: str, name: str, fmt: str) -> None:
    path = built[flavour] / f"{name}.{fmt}"
    if (flavour, name, fmt) == ("keras3", "operations", "h5"):
        # Keras 3's legacy .h5 config drops the module that tells an operation (`x + 3`) from a
        # layer; Keras 3 itself cannot reload this file ("Unknown layer: 'TrueDivide'").
        with pytest.raises(bk.UnsupportedLayerError, match="non-tensor argument 3.0"):
            bk.load_model(path)
        return
    model = bk.load_model(path)
    with np.load(built[flavour] / f"{name}_ref.npz") as ref:
        assert _relative(_outputs(model, ref), ref) <= TOLERANCE


#: Models whose round trip Keras reads back.  Not here: Keras 3 drops list-valued ``axis``
#: arguments when it reads *any* legacy .h5 config (keras/src/legacy/saving/saving_utils.py),
#: so LayerNormalization/Normalization/Softmax over several axes cannot survive Keras 3 .h5;
#: Keras 3 operation layers cannot live in .h5 at all (Keras 3 cannot read its own such files).
_ALL = ("activations", "preprocessing", "normalisation", "activation_layers", "merges_and_shapes", "regularisation",
        "application_layers", "operations")
ROUND_TRIPS = {
    "tf_keras": [(n, f) for n in _ALL for f in ("h5", "keras")],
    "keras3": [(n, "keras") for n in _ALL]
    + [(n, "h5") for n in ("activations", "merges_and_shapes", "regularisation", "application_layers")],
}


@pytest.fixture(scope="module")
def round_trips(built: dict[str, Path]) -> dict[str, dict[str, str]]:
    files: dict[str, list[str]] = {}
    for flavour, cases in ROUND_TRIPS.items():
        files[flavour] = []
        for name, fmt in cases:
            model = bk.load_model(built[flavour] / f"{name}.keras")
            target = f"{name}~rt.{fmt}"
            bk.save_model(model, built[flavour] / target)
            files[flavour].append(target)
    return _run(built, {flavour: ["predict", str(built[flavour]), *names] for flavour, names in files.items()})


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "name", "fmt"),
                         [(flavour, n, f) for flavour, cases in ROUND_TRIPS.items() for n, f in cases])
def test_round_trip_back_to_keras(built: dict[str, Path], round_trips: dict[str, dict[str, str]], flavour: str,
                                  name: str, fmt: str) -> None:
    target = f"{name}~rt.{fmt}"
    assert round_trips[flavour][target] == "ok", round_trips[flavour][target]
    with np.load(built[flavour] / f"{name}_ref.npz") as ref, np.load(built[flavour] / f"{target}_pred.npz") as pred:
        ys = [pred[f"y{i}"] for i in range(len(pred.files))]
        assert _relative(ys, ref) <= TOLERANCE


# ---- torch side against NumPy formulas ---------------------------------------------------
def _np_softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_keras_sparsemax(x: np.ndarray) -> np.ndarray:
    """keras.activations.sparsemax (last axis), as keras/src/backend/*/nn.py computes it."""
    ordered = -np.sort(-x, axis=-1)
    cumulative = np.cumsum(ordered, axis=-1)
    ranks = np.arange(1, x.shape[-1] + 1)
    support = ordered - (cumulative - 1) / ranks > 0
    tau = (np.where(support, cumulative, 0.0).sum(-1, keepdims=True) - 1) / support.sum(-1, keepdims=True)
    return np.maximum(x - tau, 0.0)


_ERF = np.vectorize(math.erf)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6), "sigmoid": _np_sigmoid,
    "tanh": np.tanh, "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "log_softmax": lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)), "celu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)),
    "softplus": _np_softplus, "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * _np_sigmoid(x), "silu": lambda x: x * _np_sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + _ERF(x / math.sqrt(2))), "exponential": np.exp,
    "mish": lambda x: x * np.tanh(_np_softplus(x)),
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1),  # tf_keras 2
    "hard_silu": lambda x: x * np.clip(x + 3, 0, 6) / 6, "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x), "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0.0),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0.0)),
    "tanh_shrink": lambda x: x - np.tanh(x), "log_sigmoid": lambda x: -_np_softplus(-x),
    "sparse_plus": lambda x: np.where(x <= -1, 0.0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "sparse_sigmoid": lambda x: np.clip((x + 1) / 2, 0, 1),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2, "sparsemax": _np_keras_sparsemax,
}


def test_every_activation_has_a_numpy_reference() -> None:
    assert sorted(NUMPY_ACTIVATIONS) == sorted(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_formula(name: str) -> None:
    x = np.random.default_rng(0).normal(0, 3, (5, 9)).astype(np.float32)
    x[0] = [-4, -1, -0.5, -1e-3, 0, 1e-3, 0.5, 1, 4]
    y = activation_module(name, 1)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, NUMPY_ACTIVATIONS[name](x.astype(np.float64)), rtol=2e-6, atol=2e-6)


def test_keras3_hard_sigmoid_is_relu6_over_6() -> None:
    x = np.linspace(-5, 5, 41, dtype=np.float32)
    y = activation_module("hard_sigmoid", 0, keras3=True)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, np.clip(x + 3, 0, 6) / 6, rtol=1e-6, atol=1e-7)


# ---- planning from configs: layouts and errors -------------------------------------------
def _model(layers: list[dict[str, Any]], shape: list[int | None]) -> dict[str, Any]:
    body = [{"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [None, *shape]},
             "name": "x", "inbound_nodes": []}]
    previous = "x"
    for layer in layers:
        body.append({"inbound_nodes": [[[previous, 0, 0, {}]]], **layer, "name": layer["config"]["name"]})
        previous = layer["config"]["name"]
    return {"class_name": "Functional", "config": {"name": "m", "layers": body, "input_layers": [["x", 0, 0]],
                                                   "output_layers": [[previous, 0, 0]]}}


def _layer(cls: str, **config: Any) -> dict[str, Any]:
    return {"class_name": cls, "config": {"name": config.pop("name", cls.lower()), **config}}


def test_layer_normalization_on_a_moved_layout_matches_numpy() -> None:
    """Conv2D runs NCHW inside; a LayerNormalization over Keras axes (1, 3) must still see Keras' axes."""
    model = bk.build_from_config(_model([_layer("Conv2D", filters=3, kernel_size=1),
                                         _layer("LayerNormalization", axis=[1, 3], epsilon=0.01)], [4, 5, 2]))
    ln = model.layers["layernormalization"]
    with torch.no_grad():
        ln.weight.copy_(torch.randn(ln.weight.shape))
        ln.bias.copy_(torch.randn(ln.bias.shape))
    x = torch.randn(2, 4, 5, 2)
    conv = model.layers["conv2d"]
    h = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy().astype(np.float64)
    mean = h.mean(axis=(1, 3), keepdims=True)
    var = h.var(axis=(1, 3), keepdims=True)
    gamma = ln.weight.detach().numpy().reshape(1, 4, 1, 3)
    beta = ln.bias.detach().numpy().reshape(1, 4, 1, 3)
    expected = (h - mean) / np.sqrt(var + 0.01) * gamma + beta
    np.testing.assert_allclose(model(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_permute_costs_no_step_until_the_output() -> None:
    model = bk.build_from_config(_model([_layer("Permute", dims=[2, 1]), _layer("Activation", activation="relu"),
                                         _layer("Permute", dims=[2, 1], name="back")], [3, 4]))
    x = torch.randn(2, 3, 4)
    assert [step.op for step in model.steps] == ["module"]  # two Permutes cancel: no permute step at all
    torch.testing.assert_close(model(x), torch.relu(x))


@pytest.mark.parametrize(("layer", "shape", "error", "pattern"), [
    (_layer("Reshape", target_shape=[5, -1]), [3, 4], bk.KerasFormatError, r"target_shape.*12 elements.*\[5, -1\]"),
    (_layer("Reshape", target_shape=[-1, -1]), [3, 4], bk.KerasFormatError, r"at most one -1.*\[-1, -1\]"),
    (_layer("Permute", dims=[1, 1]), [3, 4], bk.KerasFormatError, r"permutation of \[1, 2\].*\[1, 1\]"),
    (_layer("Rescaling", scale=[1.0, 2.0]), [3, 4], bk.KerasFormatError, r"`scale` does not broadcast.*\[2\]"),
    (_layer("Activation", activation="glu"), [4], bk.UnsupportedLayerError, r"glu"),
    (_layer("Activation", activation="swishy"), [4], bk.UnsupportedLayerError, r"'swishy'"),
    (_layer("LayerNormalization", axis=0), [4], bk.KerasFormatError, r"not the batch axis.*received 0"),
    (_layer("Normalization", mean=[1.0, 2.0]), [4], bk.KerasFormatError, r"together.*\[\[1.0, 2.0\], None\]"),
    (_layer("Normalization", mean=[1.0, 2.0], variance=[1.0, 1.0]), [4], bk.KerasFormatError,
     r"`mean` does not broadcast.*\(4,\).*\(2,\)"),
    (_layer("PReLU", shared_axes=[3]), [4, 2], bk.KerasFormatError, r"`shared_axes`.*\[3\]"),
    (_layer("Subtract"), [4], bk.KerasFormatError, r"exactly two inputs.*1"),
])
def test_invalid_configs_name_the_value(layer: dict[str, Any], shape: list[int], error: type[Exception],
                                        pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        bk.build_from_config(_model([layer], shape))


def _tf_op(function: str, kwargs: dict[str, Any], name: str = "tf.op") -> dict[str, Any]:
    return {"class_name": "TFOpLambda", "config": {"name": name, "function": function, "dtype": "float32"},
            "name": name, "inbound_nodes": [["x", 0, 0, kwargs]]}


def _op_model(layer: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    body = [{"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [None, *shape]},
             "name": "x", "inbound_nodes": []}, layer]
    return {"class_name": "Functional", "config": {"name": "m", "layers": body, "input_layers": [["x", 0, 0]],
                                                   "output_layers": [[layer["name"], 0, 0]]}}


def test_unknown_tf_function_is_refused_by_name() -> None:
    with pytest.raises(bk.UnsupportedLayerError, match=r"TFOpLambda function 'math.cumsum' is not supported"):
        bk.build_from_config(_op_model(_tf_op("math.cumsum", {"axis": 1}), [4]))


def test_unknown_tf_argument_is_refused_by_name() -> None:
    with pytest.raises(bk.UnsupportedLayerError, match=r"argument `axes` of math.reduce_mean"):
        bk.build_from_config(_op_model(_tf_op("math.reduce_mean", {"axes": [1]}), [4, 3]))


@pytest.mark.parametrize(("function", "kwargs", "expected"), [
    ("math.multiply", {"y": 0.25}, lambda x: x * 0.25),
    ("__operators__.add", {"y": [1.0, 2.0, 3.0]}, lambda x: x + np.array([1.0, 2.0, 3.0])),
    ("math.truediv", {"y": 3.0}, lambda x: x / 3.0),
    ("math.maximum", {"y": 0.1}, lambda x: np.maximum(x, 0.1)),
    ("nn.relu6", {}, lambda x: np.clip(x, 0, 6)),
    ("math.reduce_max", {"axis": [1], "keepdims": False}, lambda x: x.max(1)),
    ("math.reduce_mean", {"axis": -1, "keepdims": True}, lambda x: x.mean(-1, keepdims=True)),
    ("nn.softmax", {"axis": 1}, lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("reshape", {"shape": [-1, 3, 4]}, lambda x: x.reshape(-1, 3, 4)),
    ("compat.v1.transpose", {"perm": [0, 2, 1], "conjugate": False}, lambda x: x.transpose(0, 2, 1)),
])
def test_tf_operation_with_constants(function: str, kwargs: dict[str, Any], expected: Any) -> None:
    model = bk.build_from_config(_op_model(_tf_op(function, kwargs), [4, 3]))
    x = np.random.default_rng(1).normal(0, 2, (2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected(x.astype(np.float64)), rtol=1e-6,
                               atol=1e-6)


def test_constant_first_operand() -> None:
    """tf_keras stores ``2 - x`` as ``["_CONSTANT_VALUE", -1, 2.0, {"y": [x, 0, 0]}]``."""
    layer = {"class_name": "TFOpLambda", "config": {"name": "tf.math.subtract", "function": "math.subtract"},
             "name": "tf.math.subtract", "inbound_nodes": [["_CONSTANT_VALUE", -1, 2.0, {"y": ["x", 0, 0]}]]}
    model = bk.build_from_config(_op_model(layer, [5]))
    x = torch.randn(3, 5)
    torch.testing.assert_close(model(x), 2.0 - x)


# ---- training-only noise: the identity at inference, Keras' noise in training -------------
def _noise_model(layer: dict[str, Any], shape: list[int]) -> torch.nn.Module:
    return bk.build_from_config(_model([layer], shape))


@pytest.mark.parametrize("layer", [_layer("GaussianNoise", stddev=0.5), _layer("GaussianDropout", rate=0.3),
                                   _layer("AlphaDropout", rate=0.2), _layer("SpatialDropout1D", rate=0.3),
                                   _layer("ActivityRegularization", l1=0.1)])
def test_noise_layers_are_the_identity_at_inference(layer: dict[str, Any]) -> None:
    model = _noise_model(layer, [50, 8]).eval()
    x = torch.randn(4, 50, 8)
    assert torch.equal(model(x), x)


def test_gaussian_noise_and_dropout_in_training_have_keras_moments() -> None:
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    noisy = _noise_model(_layer("GaussianNoise", stddev=0.5), [200_000]).train()(x[None])[0]
    assert abs(float(noisy.mean()) - 2.0) < 0.01 and abs(float(noisy.std()) - 0.5) < 0.01
    dropped = _noise_model(_layer("GaussianDropout", rate=0.3), [200_000]).train()(x[None])[0]
    expected_std = 2.0 * math.sqrt(0.3 / 0.7)  # x * N(1, rate / (1 - rate))
    assert abs(float(dropped.mean()) - 2.0) < 0.01 and abs(float(dropped.std()) - expected_std) < 0.02


def test_alpha_dropout_in_training_keeps_selu_moments() -> None:
    """Keras' AlphaDropout keeps zero mean and unit variance of standardised inputs."""
    torch.manual_seed(0)
    x = torch.randn(1, 400_000)
    y = _noise_model(_layer("AlphaDropout", rate=0.2), [400_000]).train()(x)[0]
    assert abs(float(y.mean())) < 0.01 and abs(float(y.var()) - 1.0) < 0.02
    saturated = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = (0.8 * (1 + 0.2 * saturated ** 2)) ** -0.5
    dropped_value = a * saturated - a * saturated * 0.2
    share = float((torch.abs(y - dropped_value) < 1e-5).float().mean())
    assert abs(share - 0.2) < 0.005


def test_spatial_dropout_drops_whole_channels() -> None:
    torch.manual_seed(0)
    y = _noise_model(_layer("SpatialDropout2D", rate=0.5), [6, 7, 64]).train()(torch.ones(8, 6, 7, 64))
    per_channel = y.permute(0, 3, 1, 2).reshape(8 * 64, 42)
    assert torch.all((per_channel == 0).all(1) | (per_channel == 2.0).all(1))
    assert 0.35 < float((per_channel == 0).all(1).float().mean()) < 0.65


def test_unknown_keras3_operation_is_refused_by_name() -> None:
    layer = {"module": "keras.src.ops.numpy", "class_name": "Cumsum", "registered_name": "Cumsum",
             "config": {"name": "cumsum", "axis": 1}, "name": "cumsum", "inbound_nodes": [{"args": [
                 {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "keras_history": ["x", 0, 0]}}],
                 "kwargs": {}}]}
    with pytest.raises(bk.UnsupportedLayerError, match=r"Keras 3 operation function 'numpy.Cumsum' is not supported"):
        bk.build_from_config(_op_model(layer, [4]))


def test_keras3_operation_with_a_constant_and_its_settings() -> None:
    tensor = {"class_name": "__keras_tensor__", "config": {"shape": [None, 4, 3], "keras_history": ["x", 0, 0]}}
    layer = {"module": "keras.src.ops.numpy", "class_name": "Mean", "registered_name": "Mean",
             "config": {"name": "mean", "axis": [1], "keepdims": True}, "name": "mean",
             "inbound_nodes": [{"args": [tensor], "kwargs": {}}]}
    model = bk.build_from_config(_op_model(layer, [4, 3]))
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(model(x), x.mean(1, keepdim=True))
    sub = {"module": "keras.src.ops.numpy", "class_name": "Subtract", "registered_name": "Subtract",
           "config": {"name": "subtract"}, "name": "subtract", "inbound_nodes": [{"args": [1.5, tensor], "kwargs": {}}]}
    torch.testing.assert_close(bk.build_from_config(_op_model(sub, [4, 3]))(x), 1.5 - x)
