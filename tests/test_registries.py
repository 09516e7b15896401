"""Fast tests of bnkit's Keras registries: initializers, regularizers, constraints (no TensorFlow)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from bnkit import constraints as cons
from bnkit import initializers as inits
from bnkit import regularizers as regs

MODULES: dict[str, ModuleType] = {"initializers": inits, "regularizers": regs, "constraints": cons}
SRC = Path(inits.__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------

NAMED: list[tuple[ModuleType, str, type, dict[str, Any]]] = [
    (inits, "zeros", inits.Zeros, {}),
    (inits, "Zeros", inits.Zeros, {}),
    (inits, "zero", inits.Zeros, {}),
    (inits, "ZerosV2", inits.Zeros, {}),
    (inits, "ones", inits.Ones, {}),
    (inits, "one", inits.Ones, {}),
    (inits, "constant", inits.Constant, {"value": 0}),
    (inits, "random_normal", inits.RandomNormal, {"mean": 0.0, "stddev": 0.05, "seed": None}),
    (inits, "normal", inits.RandomNormal, {"mean": 0.0, "stddev": 0.05, "seed": None}),
    (inits, "random_uniform", inits.RandomUniform, {"minval": -0.05, "maxval": 0.05, "seed": None}),
    (inits, "uniform", inits.RandomUniform, {"minval": -0.05, "maxval": 0.05, "seed": None}),
    (inits, "truncated_normal", inits.TruncatedNormal, {"mean": 0.0, "stddev": 0.05, "seed": None}),
    (
        inits,
        "variance_scaling",
        inits.VarianceScaling,
        {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal", "seed": None},
    ),
    (inits, "glorot_uniform", inits.GlorotUniform, {"seed": None}),
    (inits, "glorot_uniformV2", inits.GlorotUniform, {"seed": None}),
    (inits, "GlorotNormal", inits.GlorotNormal, {"seed": None}),
    (inits, "he_normal", inits.HeNormal, {"seed": None}),
    (inits, "he_uniform", inits.HeUniform, {"seed": None}),
    (inits, "lecun_normal", inits.LecunNormal, {"seed": None}),
    (inits, "LecunUniformV2", inits.LecunUniform, {"seed": None}),
    (regs, "l1", regs.L1, {"l1": 0.01}),
    (regs, "L1", regs.L1, {"l1": 0.01}),
    (regs, "l2", regs.L2, {"l2": 0.01}),
    (regs, "L2", regs.L2, {"l2": 0.01}),
    (regs, "l1_l2", regs.L1L2, {"l1": 0.01, "l2": 0.01}),
    (regs, "L1L2", regs.L1L2, {"l1": 0.0, "l2": 0.0}),
    (cons, "non_neg", cons.NonNeg, {}),
    (cons, "NonNeg", cons.NonNeg, {}),
    (cons, "nonneg", cons.NonNeg, {}),
    (cons, "unit_norm", cons.UnitNorm, {"axis": 0}),
    (cons, "unitnorm", cons.UnitNorm, {"axis": 0}),
    (cons, "max_norm", cons.MaxNorm, {"max_value": 2, "axis": 0}),
    (cons, "MaxNorm", cons.MaxNorm, {"max_value": 2, "axis": 0}),
    (cons, "maxnorm", cons.MaxNorm, {"max_value": 2, "axis": 0}),
    (cons, "min_max_norm", cons.MinMaxNorm, {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
    (cons, "MinMaxNorm", cons.MinMaxNorm, {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
]


@pytest.mark.parametrize(("module", "name", "cls", "config"), NAMED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_name_gives_class_with_keras_defaults(module: ModuleType, name: str, cls: type, config: dict) -> None:
    obj = module.get(name)
    assert type(obj) is cls
    assert obj.get_config() == config


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_every_registered_name_resolves_and_works(module_name: str) -> None:
    module = MODULES[module_name]
    names = module._REGISTRY.factories
    assert len(names) >= {"initializers": 40, "regularizers": 6, "constraints": 11}[module_name]
    for name in names:
        obj = module.get(name)
        if module is inits:
            assert obj((3, 4)).shape == (3, 4), name
        elif module is regs:
            assert obj(torch.ones(3)).dim() == 0, name
        else:
            assert obj(torch.ones(3, 2)).shape == (3, 2), name


def test_none_instances_classes() -> None:
    assert regs.get(None) is None and cons.get(None) is None
    for module, obj in ((inits, inits.Constant(3.0)), (regs, regs.L2(0.5)), (cons, cons.MaxNorm(1.0))):
        assert module.get(obj) is obj
    assert type(inits.get(inits.HeNormal)) is inits.HeNormal
    assert type(regs.get(regs.L1)) is regs.L1 and type(cons.get(cons.UnitNorm)) is cons.UnitNorm


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

INSTANCES = [
    inits.Zeros(),
    inits.Ones(),
    inits.Constant(2.5),
    inits.Constant(-3),
    inits.RandomNormal(1.0, 2.0, seed=3),
    inits.RandomUniform(-1.0, 3.0, seed=4),
    inits.TruncatedNormal(0.5, 0.1),
    inits.VarianceScaling(2.0, "fan_avg", "uniform", 5),
    inits.VarianceScaling(0.5, "fan_out", "normal"),
    inits.GlorotUniform(1),
    inits.GlorotNormal(),
    inits.HeNormal(2),
    inits.HeUniform(),
    inits.LecunNormal(),
    inits.LecunUniform(9),
    regs.L1(0.3),
    regs.L2(0.7),
    regs.L1L2(0.2, 0.05),
    regs.L1L2(),
    regs.l1_l2(),
    cons.NonNeg(),
    cons.UnitNorm(axis=[0, 1, 2]),
    cons.MaxNorm(3, axis=-1),
    cons.MinMaxNorm(0.5, 1.5, 0.7, axis=[1, 2]),
]


@pytest.mark.parametrize("obj", INSTANCES, ids=repr)
def test_config_round_trips(obj: Any) -> None:
    module = inits if isinstance(obj, inits.Initializer) else regs if isinstance(obj, regs.Regularizer) else cons
    serialized = json.loads(json.dumps(module.serialize(obj)))
    assert serialized["module"] == f"keras.{module.__name__.rsplit('.', 1)[-1]}"
    assert serialized["class_name"] == type(obj).__name__ and serialized["registered_name"] is None
    for identifier in (serialized, {"class_name": type(obj).__name__, "config": obj.get_config()}):
        rebuilt = module.get(identifier)
        assert type(rebuilt) is type(obj) and rebuilt.get_config() == obj.get_config()
    assert type(obj).from_config(obj.get_config()).get_config() == obj.get_config()
    assert repr(obj) == f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in obj.get_config().items())})"


def test_config_details() -> None:
    assert repr(inits.Constant(2.0)) == "Constant(value=2.0)"
    assert repr(cons.MaxNorm()) == "MaxNorm(max_value=2, axis=0)"
    assert inits.VarianceScaling(distribution="Normal").distribution == "truncated_normal"
    assert inits.VarianceScaling(distribution="UNIFORM").get_config()["distribution"] == "uniform"
    assert inits.get({"class_name": "Ones", "config": {"dtype": "float32"}}).get_config() == {}  # Keras drops dtype
    assert inits.get({"class_name": "Constant", "config": None}).get_config() == {"value": 0}
    assert regs.L1(None).l1 == 0.01 and regs.L1L2(l1=None).l1 == 0.0
    assert regs.get({"class_name": "l1_l2", "config": {"l2": 0.5}}).get_config() == {"l1": 0.01, "l2": 0.5}
    assert inits.serialize(None) is None and regs.serialize(None) is None and cons.serialize(None) is None


class _KerasLikeConstant:
    """Looks like a tf_keras initializer instance to the registry (module name and get_config)."""

    def get_config(self) -> dict[str, Any]:
        return {"value": 3.0}


_KerasLikeConstant.__module__ = "tf_keras.src.initializers.initializers"
_KerasLikeConstant.__name__ = "Constant"


def test_keras_instances_are_rebuilt_from_their_config() -> None:
    init = inits.get(_KerasLikeConstant())
    assert type(init) is inits.Constant and init.value == 3.0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_name", sorted(MODULES))
@pytest.mark.parametrize("identifier", ["zeroes", "L1l2", "nonNeg", "Orthogonal"])
def test_unknown_name_is_value_error_listing_names(module_name: str, identifier: str) -> None:
    module = MODULES[module_name]
    with pytest.raises(ValueError, match=r"Unknown \w+ for `identifier`") as info:
        module.get(identifier)
    message = str(info.value)
    assert f"received: {identifier!r}" in message and "Expected one of:" in message
    assert all(repr(name) in message for name in module._REGISTRY.display_names)
    with pytest.raises(ValueError, match="`gamma_arg`"):
        module.get({"class_name": identifier, "config": {}}, arg_name="gamma_arg")


@pytest.mark.parametrize("module_name", sorted(MODULES))
@pytest.mark.parametrize("identifier", [3, 2.5, True, b"zeros", ["zeros"], ("l2",), int, object()])
def test_wrong_type_is_type_error_naming_argument_and_value(module_name: str, identifier: Any) -> None:
    with pytest.raises(TypeError, match="`beta_arg`") as info:
        MODULES[module_name].get(identifier, arg_name="beta_arg")
    assert repr(identifier) in str(info.value) and "received:" in str(info.value)


def test_initializer_none_is_type_error() -> None:
    with pytest.raises(TypeError, match="received: None"):
        inits.get(None)


@pytest.mark.parametrize(
    ("module", "identifier", "fragment"),
    [
        (inits, {"config": {}}, "'config': {}"),
        (inits, {"class_name": 3}, "'class_name': 3"),
        (regs, {"class_name": "L2", "config": [0.1]}, "[0.1]"),
        (cons, {"class_name": "MaxNorm", "config": {}, "extra": 1}, "'extra': 1"),
        (inits, {"class_name": "Constant", "config": {"valeu": 1}}, "['valeu']"),
        (regs, {"class_name": "L2", "config": {"l1": 0.1}}, "['l1']"),
        (inits, {"class_name": "VarianceScaling", "config": {"scale": 0}}, "`scale`"),
        (inits, {"class_name": "VarianceScaling", "config": {"mode": "fan_x"}}, "mode='fan_x'"),
        (inits, {"class_name": "VarianceScaling", "config": {"distribution": "gaussian"}}, "distribution='gaussian'"),
        (inits, {"class_name": "RandomNormal", "config": {"stddev": "a"}}, "stddev='a'"),
        (inits, {"class_name": "RandomUniform", "config": {"seed": 1.5}}, "seed=1.5"),
        (inits, {"class_name": "Constant", "config": {"value": "a"}}, "value='a'"),
        (regs, {"class_name": "L1", "config": {"l1": -0.1}}, "l1=-0.1"),
        (regs, {"class_name": "L2", "config": {"l2": "x"}}, "l2='x'"),
        (regs, {"class_name": "L1L2", "config": {"l1": math.nan}}, "l1=nan"),
        (regs, {"class_name": "L1L2", "config": {"l2": math.inf}}, "l2=inf"),
        (regs, {"class_name": "L2", "config": {"l2": True}}, "l2=True"),
        (cons, {"class_name": "MaxNorm", "config": {"max_value": "2"}}, "max_value='2'"),
        (cons, {"class_name": "UnitNorm", "config": {"axis": "0"}}, "axis='0'"),
        (cons, {"class_name": "UnitNorm", "config": {"axis": []}}, "axis=[]"),
        (cons, {"class_name": "MinMaxNorm", "config": {"rate": None}}, "rate=None"),
    ],
)
def test_bad_dicts_and_values_are_value_errors(module: ModuleType, identifier: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)expected") as info:
        module.get(identifier)
    assert fragment in str(info.value)


def test_call_time_errors() -> None:
    with pytest.raises(ValueError, match=r"floating point dtype; received: torch\.int32"):
        inits.RandomNormal()((2,), dtype=torch.int32)
    for value, dtype in ((2.5, torch.int32), (-1, torch.uint8), (2, torch.bool)):  # values the dtype cannot hold
        with pytest.raises(ValueError, match=rf"Constant\(value={value}\).*received: {dtype}"):
            inits.Constant(value)((2,), dtype=dtype)
    with pytest.raises(TypeError, match="dtype='float32'"):
        inits.Zeros()((2,), dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape=\(2, -1\)"):
        inits.Ones()((2, -1))
    with pytest.raises(ValueError, match=r"axis=\[0, 3\]"):
        cons.UnitNorm(axis=[0, 3])(torch.ones(2, 3))
    with pytest.raises(TypeError, match="user callables have no Keras config"):
        regs.serialize(regs.get(lambda x: x.sum()))


def test_user_callables_are_checked() -> None:
    seen: list[Any] = []

    def init(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        seen.append((shape, dtype))
        return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)

    out = inits.get(init)([2, 3], dtype=torch.float32)
    assert seen == [((2, 3), torch.float32)] and out.dtype == torch.float32 and out[1, 2] == 5
    for bad in (lambda s, dtype: torch.zeros(3), lambda s, dtype: np.zeros(s)):
        with pytest.raises(ValueError, match=r"expected a torch.Tensor of shape \(2, 3\); received: "):
            inits.get(bad)((2, 3))

    assert float(regs.get(lambda x: x.abs().sum())(torch.tensor([-1.0, 2.0]))) == 3.0
    for bad_reg in (lambda x: x.abs(), lambda x: 1.0):
        with pytest.raises(ValueError, match=r"scalar \(0-d\) torch.Tensor"):
            regs.get(bad_reg)(torch.ones(3))

    assert torch.equal(cons.get(torch.relu)(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
    for bad_con in (lambda w: w.sum(), lambda w: w.tolist()):
        with pytest.raises(ValueError, match=r"torch.Tensor of shape \(3,\)"):
            cons.get(bad_con)(torch.ones(3))


# ---------------------------------------------------------------------------------------------
# Initializer values and statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_constant_initializers_are_exact(dtype: torch.dtype) -> None:
    for init, value in ((inits.Zeros(), 0), (inits.Ones(), 1), (inits.Constant(), 0), (inits.Constant(-3), -3)):
        out = init((2, 3), dtype=dtype, device="cpu")
        assert out.dtype == dtype and out.shape == (2, 3) and bool((out == value).all())
    if dtype.is_floating_point:
        assert bool((inits.Constant(2.5)((4,), dtype=dtype) == 2.5).all())
    assert inits.Zeros()(()).shape == () and inits.Ones()((0, 4)).shape == (0, 4)


@pytest.mark.parametrize(
    ("shape", "fans"),
    [
        ((), (1, 1)),
        ((7,), (7, 7)),
        ((3, 5), (3, 5)),
        ((1, 1, 7), (1, 7)),
        ((3, 3, 16, 32), (144, 288)),
        ((2, 3, 4, 5, 6), (120, 144)),
        ((0, 3), (0, 3)),
    ],
)
def test_compute_fans(shape: tuple[int, ...], fans: tuple[int, int]) -> None:
    assert inits.compute_fans(shape) == fans


def test_sampling_params_follow_keras_formulas() -> None:
    shape = (3, 3, 16, 32)  # fan_in 144, fan_out 288
    assert inits.GlorotUniform().sampling_params(shape) == ("uniform", pytest.approx(math.sqrt(6 / 432)))
    assert inits.HeUniform().sampling_params(shape) == ("uniform", pytest.approx(math.sqrt(6 / 144)))
    assert inits.LecunUniform().sampling_params(shape) == ("uniform", pytest.approx(math.sqrt(3 / 144)))
    correction = 0.87962566103423978
    assert inits.GlorotNormal().sampling_params(shape) == (
        "truncated_normal",
        pytest.approx(math.sqrt(2 / 432) / correction),
    )
    assert inits.HeNormal().sampling_params(shape) == (
        "truncated_normal",
        pytest.approx(math.sqrt(2 / 144) / correction),
    )
    assert inits.LecunNormal().sampling_params(shape) == (
        "truncated_normal",
        pytest.approx(math.sqrt(1 / 144) / correction),
    )
    vs = inits.VarianceScaling(3.0, "fan_out", "untruncated_normal")
    assert vs.sampling_params(shape) == ("untruncated_normal", pytest.approx(math.sqrt(3 / 288)))
    assert vs.sampling_params((0, 0)) == ("untruncated_normal", pytest.approx(math.sqrt(3.0)))  # n = max(1, fan)


BIG = (5, 5, 40, 1000)  # 10**6 draws; fan_in 1000, fan_out 25000


@pytest.mark.parametrize(
    ("init", "mean", "std", "low", "high"),
    [
        (inits.RandomNormal(1.0, 2.0), 1.0, 2.0, None, None),
        (inits.RandomUniform(-1.0, 3.0), 1.0, 4 / math.sqrt(12), -1.0, 3.0),
        (inits.TruncatedNormal(0.5, 2.0), 0.5, 2.0 * 0.87962566103423978, -3.5, 4.5),
        (inits.GlorotUniform(), 0.0, math.sqrt(2 / 26000), -math.sqrt(6 / 26000), math.sqrt(6 / 26000)),
        (inits.GlorotNormal(), 0.0, math.sqrt(2 / 26000), None, None),
        (inits.HeNormal(), 0.0, math.sqrt(2 / 1000), -2 * math.sqrt(2 / 1000) / 0.8796256610342398, None),
        (inits.HeUniform(), 0.0, math.sqrt(2 / 1000), -math.sqrt(6 / 1000), math.sqrt(6 / 1000)),
        (inits.LecunNormal(), 0.0, math.sqrt(1 / 1000), None, 2 * math.sqrt(1 / 1000) / 0.8796256610342398),
        (inits.LecunUniform(), 0.0, math.sqrt(1 / 1000), -math.sqrt(3 / 1000), math.sqrt(3 / 1000)),
        (inits.VarianceScaling(4.0, "fan_out", "untruncated_normal"), 0.0, math.sqrt(4 / 25000), None, None),
    ],
    ids=repr,
)
def test_random_initializer_statistics(
    init: Any, mean: float, std: float, low: float | None, high: float | None
) -> None:
    x = init(BIG, generator=torch.Generator().manual_seed(0)).double()
    assert x.dtype == torch.float64 and x.shape == BIG
    assert float(x.mean()) == pytest.approx(mean, abs=5e-3 * std)
    assert float(x.std()) == pytest.approx(std, rel=5e-3)
    slack = 1e-6 * std  # float32 rounding of the affine map
    if low is not None:  # bounded distributions come within a hair of their bounds
        assert low - slack <= float(x.min()) <= low + 1e-3 * std
    if high is not None:
        assert high - 1e-3 * std <= float(x.max()) <= high + slack


def test_seeds_and_generators_make_draws_reproducible() -> None:
    for cls in (inits.RandomNormal, inits.RandomUniform, inits.TruncatedNormal, inits.GlorotUniform, inits.HeNormal):
        seeded = cls(seed=11)
        a, b = seeded((50,)), seeded((50,))
        assert torch.equal(a, b) and torch.equal(a, cls(seed=11)((50,)))  # Keras: seeded = same values
        assert not torch.equal(a, cls(seed=12)((50,)))
        assert not torch.equal(cls()((50,)), cls()((50,)))  # unseeded: torch's global RNG
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        x1, x2 = seeded((50,), generator=g1), seeded((50,), generator=g2)
        assert torch.equal(x1, x2) and not torch.equal(x1, a)  # an explicit generator wins over the seed
        assert not torch.equal(x1, seeded((50,), generator=g1))  # and advances
        torch.manual_seed(3)
        y1 = cls()((50,))
        torch.manual_seed(3)
        assert torch.equal(y1, cls()((50,)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_random_initializers_honour_dtype(dtype: torch.dtype) -> None:
    for init in (inits.RandomNormal(seed=1), inits.HeUniform(seed=1), inits.TruncatedNormal(seed=1)):
        out = init((3, 4), dtype=dtype, device=torch.device("cpu"))
        assert out.dtype == dtype and out.shape == (3, 4) and bool(torch.isfinite(out).all())
    ref = inits.HeUniform(seed=1)((3, 4))
    torch.testing.assert_close(inits.HeUniform(seed=1)((3, 4), dtype=torch.float16).float(), ref, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Regularizer and constraint formulas
# ---------------------------------------------------------------------------------------------


def test_regularizer_formulas() -> None:
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    l1, l2 = float(x.abs().sum()), float((x**2).sum())
    cases = [
        (regs.L1(0.3), 0.3 * l1),
        (regs.L2(0.7), 0.7 * l2),
        (regs.L1L2(0.2, 0.05), 0.2 * l1 + 0.05 * l2),
        (regs.L1L2(), 0.0),
        (regs.get("l1_l2"), 0.01 * (l1 + l2)),
        (regs.L2(0.0), 0.0),
    ]
    for reg, expected in cases:
        out = reg(x)
        assert out.dim() == 0 and out.dtype == torch.float64
        assert float(out) == pytest.approx(expected, rel=1e-12), reg
    w = x.clone().requires_grad_(True)
    regs.L2(0.7)(w).backward()
    torch.testing.assert_close(w.grad, 1.4 * x)  # l2 * sum(x**2): no 1/2


def _norms(w: np.ndarray, axis: Any) -> np.ndarray:
    return np.sqrt((w.astype(np.float64) ** 2).sum(axis=tuple(np.atleast_1d(axis)), keepdims=True))


@pytest.mark.parametrize(("shape", "axis"), [((6, 4), 0), ((6, 4), 1), ((1, 3, 3, 2), [0, 1, 2]), ((5,), -1)])
def test_norm_constraint_properties(shape: tuple[int, ...], axis: Any) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3
    w_before = w.clone()
    unit = cons.UnitNorm(axis)(w)
    np.testing.assert_allclose(_norms(unit.numpy(), axis), 1.0, rtol=1e-5)
    capped = cons.MaxNorm(0.5, axis)(w)
    np.testing.assert_allclose(_norms(capped.numpy(), axis), np.minimum(_norms(w.numpy(), axis), 0.5), rtol=1e-5)
    squeezed = cons.MinMaxNorm(1.0, 2.0, rate=1.0, axis=axis)(w)
    np.testing.assert_allclose(_norms(squeezed.numpy(), axis), np.clip(_norms(w.numpy(), axis), 1.0, 2.0), rtol=1e-5)
    half = cons.MinMaxNorm(0.0, 0.5, rate=0.5, axis=axis)(w)
    n = _norms(w.numpy(), axis)
    np.testing.assert_allclose(_norms(half.numpy(), axis), 0.5 * np.clip(n, 0, 0.5) + 0.5 * n, rtol=1e-5)
    inverted = cons.MinMaxNorm(2.0, 1.0, axis=axis)(w)  # Keras' clip raises max_value to min_value
    np.testing.assert_allclose(_norms(inverted.numpy(), axis), 2.0, rtol=1e-5)
    assert torch.equal(w, w_before)  # inputs are never modified


def test_constraint_edge_values() -> None:
    zeros = torch.zeros(3, 2)
    for con in (cons.UnitNorm(), cons.MaxNorm(), cons.MinMaxNorm(0.5, 1.0)):
        assert torch.equal(con(zeros), zeros)  # epsilon: no division by zero
    special = torch.tensor([-math.inf, -1.5, -0.0, 0.0, 2.0, math.inf, math.nan])
    out = cons.NonNeg()(special)
    assert torch.isnan(out[0]) and torch.isnan(out[6])  # Keras' w * (w >= 0): -inf * 0 = nan
    assert out[1] == 0 and math.copysign(1.0, float(out[2])) == -1.0 and out[4] == 2.0 and out[5] == math.inf
    assert cons.NonNeg()(torch.tensor([-1.0, 1.0], dtype=torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Library hygiene
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["_registry.py", "initializers.py", "regularizers.py", "constraints.py"])
def test_library_never_imports_tensorflow_or_keras(filename: str) -> None:
    source = (SRC / filename).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported} & {"tensorflow", "tf_keras", "keras"}
    assert len(source.splitlines()) < 300
    assert not any(isinstance(node, ast.Assert) for node in ast.walk(tree))
