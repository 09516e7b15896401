"""bnkit's Keras registries against tf_keras 2.21 itself.

TensorFlow must not be imported in the pytest process, so one module-scoped fixture writes
every case to ``tmp_path``, runs :data:`ORACLE_SCRIPT` once in a subprocess (environment from
``oracle_client.oracle_env("tf_keras")``) and reads the results back:

- regularizer penalties and constraint outputs on the same float32 inputs;
- the deterministic initializers' values;
- the exact ``(distribution, stddev / limit)`` every random initializer hands to its random
  generator (recorded by replacing tf_keras' generator), and moments of large seeded draws;
- the names each ``get`` accepts, with the class and serialisation Keras builds for them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from bnkit import constraints, initializers, regularizers

from .oracle_client import oracle_env

pytestmark = pytest.mark.oracle

ORACLE_SCRIPT = r'''
import json
import sys

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras.src import initializers as keras_initializers


class Recorder:
    """Stands in for an initializer's random generator; records what it is asked to draw."""

    def __init__(self):
        self.calls = []

    def _record(self, kind, shape, a, b, dtype):
        self.calls.append([kind, float(a), float(b)])
        return tf.zeros(shape, dtype)

    def truncated_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return self._record("truncated_normal", shape, mean, stddev, dtype)

    def random_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return self._record("untruncated_normal", shape, mean, stddev, dtype)

    def random_uniform(self, shape, minval=0.0, maxval=None, dtype=None, nonce=None):
        return self._record("uniform", shape, minval, maxval, dtype)


def main(spec_path, arrays_path, out_npz, out_json):
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    arrays = dict(np.load(arrays_path))
    out, info = {}, {"errors": {}, "params": {}, "names": {}}

    def run(case, fn):
        try:
            fn(case)
        except Exception as e:  # reported per case, compared by the test
            info["errors"][case["id"]] = f"{type(e).__name__}: {e}"

    def regularize(case):
        reg = keras.regularizers.get(case["identifier"])
        out[case["id"]] = np.asarray(reg(tf.constant(arrays[case["x"]])))

    def constrain(case):
        con = keras.constraints.get(case["identifier"])
        out[case["id"]] = np.asarray(con(tf.constant(arrays[case["x"]])))

    def fill(case):
        init = keras.initializers.get(case["identifier"])
        out[case["id"]] = np.asarray(init(tuple(case["shape"]), dtype=case["dtype"]))

    def params(case):
        init = keras.initializers.get(case["identifier"])
        init._random_generator = recorder = Recorder()
        init(tuple(case["shape"]), dtype="float32")
        info["params"][case["id"]] = recorder.calls

    def moments(case):
        x = np.asarray(keras.initializers.get(case["identifier"])(tuple(case["shape"]))).astype("float64")
        out[case["id"]] = np.array([x.mean(), x.std(), x.min(), x.max()])

    for key, fn in (("regularizers", regularize), ("constraints", constrain), ("fills", fill),
                    ("params", params), ("moments", moments)):
        for case in spec[key]:
            run(case, fn)

    keras_initializers.populate_deserializable_objects()
    candidates = dict(spec["names"], initializers=sorted(set(spec["names"]["initializers"])
                                                          | set(keras_initializers.LOCAL.ALL_OBJECTS)))
    for module, names in candidates.items():
        mod = getattr(keras, module)
        table = info["names"][module] = {}
        for name in names:
            try:
                obj = mod.get(name)
            except Exception:
                table[name] = None
                continue
            serialized = None if isinstance(obj, str) else mod.serialize(obj)
            table[name] = {"class_name": type(obj).__name__, "serialized": serialized}
    np.savez(out_npz, **out)
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(info, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:5])
'''

SHAPES = [(5,), (1, 3, 3, 1), (1, 1, 7), (4, 6), (3, 3, 2, 4)]
AXES: dict[tuple[int, ...], list[Any]] = {
    (5,): [0, -1],
    (1, 3, 3, 1): [0, -1, [0, 1, 2], [1, 2], 2],
    (1, 1, 7): [0, -1, [0, 1], 2],
    (4, 6): [0, 1, -1, [0, 1]],
    (3, 3, 2, 4): [0, 3, [0, 1, 2]],
}
REGULARIZERS: list[Any] = [
    "l1",
    "l2",
    "l1_l2",
    "L1",
    "L2",
    "L1L2",
    {"class_name": "L1", "config": {"l1": 0.3}},
    {"class_name": "L2", "config": {"l2": 0.7}},
    {"class_name": "L1L2", "config": {"l1": 0.2, "l2": 0.05}},
    {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.5}},
    {"class_name": "l1_l2", "config": {}},
]
INIT_SHAPES = [(), (5,), (0, 3), (4, 6), (1, 1, 7), (1, 3, 3, 1), (3, 3, 16, 32), (2, 3, 4, 5, 6)]
VARIANCE_SCALING: list[Any] = [
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "variance_scaling",
    {"class_name": "VarianceScaling", "config": {"scale": 2.5, "mode": "fan_out", "distribution": "uniform"}},
    {
        "class_name": "VarianceScaling",
        "config": {"scale": 0.3, "mode": "fan_avg", "distribution": "untruncated_normal"},
    },
    {"class_name": "VarianceScaling", "config": {"scale": 1.5, "mode": "fan_in", "distribution": "normal"}},
    {"class_name": "VarianceScaling", "config": {"scale": 0.7, "mode": "fan_out", "distribution": "Truncated_Normal"}},
]
RANDOM: list[Any] = [
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "normal",
    "uniform",
    {"class_name": "RandomNormal", "config": {"mean": 1.0, "stddev": 3.0}},
    {"class_name": "RandomUniform", "config": {"minval": -2.0, "maxval": 0.5}},
    {"class_name": "TruncatedNormal", "config": {"mean": -1.0, "stddev": 0.25}},
]
FILLS: list[tuple[Any, str]] = [
    ("zeros", "float32"),
    ("ones", "float32"),
    ("one", "float64"),
    ("zero", "int32"),
    ("Ones", "float16"),
    ("constant", "float32"),
    ({"class_name": "Constant", "config": {"value": 2.5}}, "float32"),
    ({"class_name": "Constant", "config": {"value": -3}}, "int32"),
    ({"class_name": "Constant", "config": {"value": 0.1}}, "float16"),
    ({"class_name": "Constant", "config": {"value": 0.1}}, "float64"),
]
MOMENTS: list[Any] = [
    {"class_name": name, "config": {"seed": 7}}
    for name in ("GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform")
] + [
    {"class_name": "TruncatedNormal", "config": {"mean": 0.5, "stddev": 2.0, "seed": 3}},
    {
        "class_name": "VarianceScaling",
        "config": {"scale": 3.0, "mode": "fan_out", "distribution": "untruncated_normal", "seed": 1},
    },
]
MOMENT_SHAPE = (5, 5, 40, 1000)
EXTRA_NAMES = {
    "regularizers": ["OrthogonalRegularizer", "orthogonal_regularizer", "l1l2", "L1l2", "zeros"],
    "constraints": ["RadialConstraint", "radial_constraint", "minmaxnorm", "Constraint", "nonNeg"],
    "initializers": ["zeroes", "he", "Glorot_Uniform"],
}
# Names Keras knows and bnkit deliberately does not: rank >= 2 initializers (BatchNormalization's
# weights are vectors), the rank-4 radial constraint, the orthogonal regularizer and base classes.
UNSUPPORTED = {
    "Orthogonal",
    "OrthogonalV2",
    "orthogonal",
    "Identity",
    "IdentityV2",
    "identity",
    "Initializer",
    "initializer",
    "OrthogonalRegularizer",
    "orthogonal_regularizer",
    "RadialConstraint",
    "radial_constraint",
    "Constraint",
}
MODULES = {"initializers": initializers, "regularizers": regularizers, "constraints": constraints}


def _constraint_cases() -> list[Any]:
    cases: list[Any] = []
    for shape in SHAPES:
        cases.append((shape, "non_neg"))
        for axis in AXES[shape]:
            cases += [
                (shape, {"class_name": "UnitNorm", "config": {"axis": axis}}),
                (shape, {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": axis}}),
                (shape, {"class_name": "MaxNorm", "config": {"max_value": 0.5, "axis": axis}}),
                (shape, {"class_name": "MinMaxNorm", "config": {"axis": axis}}),
                (
                    shape,
                    {
                        "class_name": "MinMaxNorm",
                        "config": {"min_value": 0.5, "max_value": 1.5, "rate": 0.7, "axis": axis},
                    },
                ),
                (shape, {"class_name": "MinMaxNorm", "config": {"min_value": 2.0, "max_value": 1.0, "axis": axis}}),
            ]
    cases += [((5,), name) for name in ("unit_norm", "max_norm", "min_max_norm", "nonneg", "maxnorm", "unitnorm")]
    cases.append(("special", "non_neg"))
    return cases


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240521)
    arrays = {}
    for shape in SHAPES:
        x = rng.normal(0.0, 1.0, size=shape) * rng.choice([0.05, 0.6, 3.0], size=shape[-1:])
        if len(shape) == 2:  # all-zero slices along both axes: the epsilon matters
            x[:, 2] = 0.0
            x[1] = 0.0
        arrays[str(shape)] = x.astype(np.float32)
    arrays["special"] = np.array([-np.inf, -1.5, -0.0, 0.0, 2.0, np.inf, np.nan], dtype=np.float32)
    return arrays


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("registries-oracle")
    arrays = _inputs()
    spec = {
        "regularizers": [
            {"id": f"reg{i}/{s}", "identifier": ident, "x": str(s)}
            for i, ident in enumerate(REGULARIZERS)
            for s in SHAPES
        ],
        "constraints": [
            {"id": f"con{i}", "identifier": ident, "x": str(s) if s != "special" else s}
            for i, (s, ident) in enumerate(_constraint_cases())
        ],
        "fills": [
            {"id": f"fill{i}/{s}", "identifier": ident, "dtype": dtype, "shape": list(s)}
            for i, (ident, dtype) in enumerate(FILLS)
            for s in INIT_SHAPES[:4]
        ],
        "params": [
            {"id": f"par{i}/{s}", "identifier": ident, "shape": list(s)}
            for i, ident in enumerate(VARIANCE_SCALING + RANDOM)
            for s in INIT_SHAPES
        ],
        "moments": [
            {"id": f"mom{i}", "identifier": ident, "shape": list(MOMENT_SHAPE)} for i, ident in enumerate(MOMENTS)
        ],
        "names": {
            key: sorted(set(module._REGISTRY.factories) | set(EXTRA_NAMES[key])) for key, module in MODULES.items()
        },
    }
    paths = [tmp / name for name in ("spec.json", "arrays.npz", "out.npz", "out.json", "oracle.py")]
    paths[0].write_text(json.dumps(spec), encoding="utf-8")
    np.savez(paths[1], **arrays)
    paths[4].write_text(ORACLE_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(paths[4]), *map(str, paths[:4])],
        env=oracle_env("tf_keras"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"tf_keras oracle failed with exit code {proc.returncode}:\n{proc.stderr[-8000:]}", pytrace=False)
    with np.load(paths[2]) as loaded:
        values = {key: loaded[key] for key in loaded.files}
    return {"spec": spec, "arrays": arrays, "values": values, **json.loads(paths[3].read_text(encoding="utf-8"))}


def _expect(oracle: dict[str, Any], case_id: str) -> np.ndarray:
    assert case_id not in oracle["errors"], oracle["errors"][case_id]
    return oracle["values"][case_id]


def test_regularizer_penalties_match_tf_keras(oracle: dict[str, Any]) -> None:
    for case in oracle["spec"]["regularizers"]:
        reg = regularizers.get(case["identifier"])
        assert reg is not None
        got = reg(torch.from_numpy(oracle["arrays"][case["x"]]))
        assert got.dim() == 0 and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), _expect(oracle, case["id"]), rtol=2e-6, atol=0, err_msg=case["id"])


def test_constraint_outputs_match_tf_keras(oracle: dict[str, Any]) -> None:
    for case in oracle["spec"]["constraints"]:
        con = constraints.get(case["identifier"])
        assert con is not None
        got = con(torch.from_numpy(oracle["arrays"][case["x"]])).numpy()
        np.testing.assert_allclose(
            got,
            _expect(oracle, case["id"]),
            rtol=2e-6,
            atol=1e-7,
            err_msg=f"{case['id']}: {case['identifier']} on {case['x']}",
        )


def test_deterministic_initializers_match_tf_keras(oracle: dict[str, Any]) -> None:
    for case in oracle["spec"]["fills"]:
        got = initializers.get(case["identifier"])(tuple(case["shape"]), dtype=getattr(torch, case["dtype"]))
        expected = _expect(oracle, case["id"])
        assert str(got.dtype).removeprefix("torch.") == str(expected.dtype), case["id"]
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=case["id"])


def test_random_initializer_parameters_match_tf_keras(oracle: dict[str, Any]) -> None:
    for case in oracle["spec"]["params"]:
        assert case["id"] not in oracle["errors"], oracle["errors"][case["id"]]
        [[kind, a, b]] = oracle["params"][case["id"]]
        init = initializers.get(case["identifier"])
        if isinstance(init, initializers.VarianceScaling):
            dist, value = init.sampling_params(case["shape"])
            expected = (dist, 0.0 if dist != "uniform" else -value, value)
        else:
            config = init.get_config()
            dist = {"RandomNormal": "untruncated_normal", "TruncatedNormal": "truncated_normal"}.get(
                type(init).__name__, "uniform"
            )
            expected = (dist, config.get("mean", config.get("minval")), config.get("stddev", config.get("maxval")))
        assert kind == expected[0], case
        assert (a, b) == pytest.approx(expected[1:], rel=1e-12), case


def test_random_initializer_moments_match_tf_keras(oracle: dict[str, Any]) -> None:
    for case in oracle["spec"]["moments"]:
        mean, std, low, high = (float(v) for v in _expect(oracle, case["id"]))
        init = initializers.get(case["identifier"])
        x = init(MOMENT_SHAPE).double()
        assert float(x.mean()) == pytest.approx(mean, abs=6e-3 * std), case
        assert float(x.std()) == pytest.approx(std, rel=6e-3), case
        if getattr(init, "distribution", "truncated_normal") != "untruncated_normal":  # bounded: extremes ~ bounds
            assert float(x.min()) == pytest.approx(low, abs=1e-2 * std), case
            assert float(x.max()) == pytest.approx(high, abs=1e-2 * std), case


def _same_config(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Equal configs, floats compared at float32 precision (tf_keras stores coefficients as float32)."""
    if ours.keys() != theirs.keys():
        return False
    return all(
        math.isclose(a, b, rel_tol=1e-7) if isinstance(a, float) or isinstance(b, float) else a == b
        for a, b in ((ours[k], theirs[k]) for k in ours)
    )


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_names_match_tf_keras(oracle: dict[str, Any], module_name: str) -> None:
    module = MODULES[module_name]
    table = oracle["names"][module_name]
    for name, keras_result in table.items():
        if name in UNSUPPORTED:
            continue
        if keras_result is None or keras_result["class_name"] == "str":  # tf_keras' regularizers.get returns
            with pytest.raises(ValueError, match=repr(name)):  # unknown names unchanged (a str); bnkit rejects them
                module.get(name)
            continue
        ours = module.get(name)
        assert type(ours).__name__ == keras_result["class_name"], name
        serialized = keras_result["serialized"]
        assert _same_config(ours.get_config(), serialized["config"]), (name, ours, serialized)
        rebuilt = module.get(serialized)  # tf_keras' serialisation, read by bnkit
        assert type(rebuilt) is type(ours) and _same_config(rebuilt.get_config(), serialized["config"])
        ours_serialized = module.serialize(ours)
        assert {k: v for k, v in ours_serialized.items() if k != "config"} == {
            k: v for k, v in serialized.items() if k != "config"
        }
    accepted_by_keras = {name for name, result in table.items() if result and result["class_name"] != "str"}
    assert set(module._REGISTRY.factories) <= accepted_by_keras
