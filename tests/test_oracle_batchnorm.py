"""bnkit.BatchNormalization against tf_keras 2.21 (and Keras 3.15.1) run live in a subprocess.

Every case runs several steps (training and inference interleaved) from non-trivial
state and compares, step by step, the output, dx, dgamma, dbeta, every weight by Keras
name, the regularization loss, and at the end the Keras weight shapes and names.

Tolerances: float32 ``atol=1e-5, rtol=1e-5``.  float16 inputs (cases with
``dtype="float16"``): outputs and dx are float16, so ``atol=rtol=4e-3`` (about two float16
ulps at |y| < 4); dgamma/dbeta sum float16-rounded products, ``atol=rtol=1e-2``; the
float32 moving statistics ``atol=rtol=1e-4``.

Error cases compare the exception *type* with tf_keras, except where bnkit deliberately
validates like Keras 3 (``ErrorCase.oracle == "keras3"``). Cases with ``keras3=True`` are
also compared with Keras 3, whose semantics equal tf_keras' non-fused path there.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import bnkit

from .oracle_client import case_array, case_error, run_keras

pytestmark = pytest.mark.oracle

TRAIN_INFER = (True, False, True, True, False, True)
RENORM_STEPS = (True, True, False, True, True, True, False, True)
ALL_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")
Tol = tuple[float, float]  # (atol, rtol)


@dataclass(frozen=True)
class BNCase:
    """One BatchNormalization scenario, run identically in bnkit and in Keras."""

    name: str
    shape: tuple[int, ...]
    config: Mapping[str, Any] = field(default_factory=dict)  # kwargs for both libraries
    keras_only: Mapping[str, Any] = field(default_factory=dict)  # e.g. the Keras dtype policy
    training: tuple[bool, ...] = TRAIN_INFER
    init: str = "random"  # "random": set all state; "none": keep the initializers; "neg_gamma"; "big_gamma"
    dtype: str = "float32"
    mask: bool = False
    adjustment: bool = False
    clipping_schedule: tuple[Mapping[str, float | None] | None, ...] | None = None
    lr: float | None = None
    keras3: bool = False  # also compare with Keras 3, where its semantics equal tf_keras'

    @property
    def axes(self) -> list[int]:
        axis = self.config.get("axis", -1)
        return sorted(a % len(self.shape) for a in (axis if isinstance(axis, list) else [axis]))

    @property
    def channels(self) -> int:
        return int(np.prod([self.shape[a] for a in self.axes]))

    def weight_names(self) -> list[str]:
        names = ["gamma"] if self.config.get("scale", True) else []
        names += ["beta"] if self.config.get("center", True) else []
        names += ["moving_mean", "moving_variance"]
        return names + (["moving_stddev", "renorm_mean", "renorm_stddev"] if self.config.get("renorm") else [])


CLIP = {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}
SCHEDULE: tuple[Mapping[str, float | None] | None, ...] = (
    None, None, None,
    {"rmax": 1.2, "rmin": 0.9, "dmax": 0.1},
    None,
    {"rmax": 3.0, "rmin": 0.2, "dmax": None},
    None,
    {"rmax": None, "rmin": None, "dmax": 0.05},
)
REGS = {"gamma_regularizer": "l2", "beta_regularizer": {"class_name": "L1", "config": {"l1": 0.5}}}
CONSTANTS = {
    "moving_variance_initializer": {"class_name": "Constant", "config": {"value": 4.0}},
    "moving_mean_initializer": {"class_name": "Constant", "config": {"value": 0.5}},
    "gamma_initializer": {"class_name": "Constant", "config": {"value": 2.0}},
    "beta_initializer": "ones",
}

CASES: list[BNCase] = [
    # ranks and axes (rank 4/5 with axis 1 or last take tf.keras' fused path: unbiased moving variance)
    BNCase("rank2", (8, 5), keras3=True),
    BNCase("rank2_axis0", (8, 5), {"axis": 0}, keras3=True),
    BNCase("rank2_momentum", (8, 5), {"momentum": 0.5, "epsilon": 1e-5}, keras3=True),
    BNCase("rank3_last", (8, 6, 5), keras3=True),
    BNCase("rank3_axis1", (8, 6, 5), {"axis": 1}, keras3=True),
    BNCase("rank3_neg2", (8, 6, 5), {"axis": -2}, keras3=True),
    BNCase("rank4_last_fused", (8, 4, 4, 3)),
    BNCase("rank4_axis1_fused", (8, 3, 4, 5), {"axis": 1}),
    BNCase("rank4_axis3_fused", (8, 4, 5, 3), {"axis": 3}),
    BNCase("rank4_neg3_fused", (8, 3, 4, 5), {"axis": -3}),
    BNCase("rank4_axis2_nonfused", (8, 3, 4, 5), {"axis": 2}, keras3=True),
    BNCase("rank4_neg2_nonfused", (8, 3, 4, 5), {"axis": -2}, keras3=True),
    BNCase("rank4_axes12", (8, 3, 3, 5), {"axis": [1, 2]}),
    BNCase("rank4_axes_neg1_neg3", (8, 3, 4, 5), {"axis": [-1, -3]}),
    BNCase("rank5_last_fused", (8, 2, 3, 4, 3)),
    BNCase("rank5_axis1_fused", (8, 3, 2, 3, 4), {"axis": 1}),
    BNCase("rank5_axis2_nonfused", (8, 2, 3, 4, 3), {"axis": 2}, keras3=True),
    # fused switch on rank 4
    BNCase("rank4_fused_none", (8, 4, 4, 3), {"fused": None}),
    BNCase("rank4_fused_true", (8, 4, 4, 3), {"fused": True}),
    BNCase("rank4_fused_true_axis1", (8, 3, 4, 4), {"axis": 1, "fused": True}),
    BNCase("rank4_fused_false", (8, 4, 4, 3), {"fused": False}),
    BNCase("rank4_fused_false_axis1", (8, 3, 4, 4), {"axis": 1, "fused": False}),
    # center / scale
    BNCase("rank2_no_center", (8, 5), {"center": False}, keras3=True),
    BNCase("rank2_no_scale", (8, 5), {"scale": False}, keras3=True),
    BNCase("rank2_no_affine", (8, 5), {"center": False, "scale": False}, keras3=True),
    BNCase("rank4_no_center_fused", (8, 4, 4, 3), {"center": False}),
    BNCase("rank4_no_scale_axis1", (8, 3, 4, 4), {"axis": 1, "scale": False}),
    # initializers (state left as initialised)
    BNCase("rank2_constants", (8, 5), CONSTANTS, init="none", keras3=True),
    BNCase("rank4_constants_fused", (8, 4, 4, 3), CONSTANTS, init="none"),
    BNCase("rank2_renorm_constants", (8, 5), {**CONSTANTS, "renorm": True, "renorm_momentum": 0.5}, init="none"),
    # batch renormalization
    BNCase("renorm_clip", (8, 5), {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5},
           training=RENORM_STEPS, keras3=True),
    BNCase("renorm_clip_schedule", (8, 5), {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5},
           training=RENORM_STEPS, clipping_schedule=SCHEDULE, keras3=True),
    BNCase("renorm_clip_rank4_schedule", (8, 3, 4, 4),
           {"axis": 1, "renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5, "momentum": 0.9},
           training=RENORM_STEPS, clipping_schedule=SCHEDULE),
    BNCase("renorm_rmax_only", (8, 6, 5), {"renorm": True, "renorm_clipping": {"rmax": 1.3}, "renorm_momentum": 0.5},
           training=RENORM_STEPS, keras3=True),
    BNCase("renorm_noclip", (8, 5), {"renorm": True, "renorm_momentum": 0.5}, training=RENORM_STEPS, keras3=True),
    BNCase("renorm_noclip_rank4", (8, 4, 4, 3), {"renorm": True}, training=RENORM_STEPS),
    BNCase("renorm_axes12", (8, 3, 3, 5), {"axis": [1, 2], "renorm": True, "renorm_clipping": CLIP,
                                          "renorm_momentum": 0.5}, training=RENORM_STEPS),
    # ghost batch normalization
    BNCase("vbs2_rank2", (8, 5), {"virtual_batch_size": 2}),
    BNCase("vbs4_rank2", (8, 5), {"virtual_batch_size": 4}),
    BNCase("vbs4_rank4", (8, 4, 4, 3), {"virtual_batch_size": 4}),
    BNCase("vbs2_rank4_axis1", (8, 3, 4, 4), {"axis": 1, "virtual_batch_size": 2}),
    BNCase("vbs2_rank3", (8, 6, 5), {"virtual_batch_size": 2}),
    BNCase("vbs2_renorm_rank2", (8, 5), {"virtual_batch_size": 2, "renorm": True, "renorm_clipping": CLIP,
                                         "renorm_momentum": 0.5}, training=RENORM_STEPS),
    BNCase("vbs4_renorm_rank4", (8, 4, 4, 3), {"virtual_batch_size": 4, "renorm": True, "renorm_momentum": 0.5},
           training=RENORM_STEPS),
    # adjustment
    BNCase("adjust_rank2", (8, 5), adjustment=True),
    BNCase("adjust_rank4", (8, 4, 4, 3), adjustment=True),
    BNCase("adjust_rank4_axis1", (8, 3, 4, 4), {"axis": 1}, adjustment=True),
    BNCase("adjust_renorm", (8, 5), {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5},
           training=RENORM_STEPS, adjustment=True),
    # frozen layer: training=True still means inference, no update
    BNCase("frozen_rank2", (8, 5), {"trainable": False}, training=(True, True, False), keras3=True),
    BNCase("frozen_rank4", (8, 4, 4, 3), {"trainable": False}, training=(True, True, False)),
    BNCase("frozen_renorm", (8, 5), {"trainable": False, "renorm": True}, training=(True, True, False)),
    # float16 inputs (Keras layer dtype float16: float32 weights and math, float16 output)
    BNCase("fp16_rank2", (8, 5), keras_only={"dtype": "float16"}, dtype="float16"),
    BNCase("fp16_rank4_fused", (8, 4, 4, 3), keras_only={"dtype": "float16"}, dtype="float16"),
    BNCase("fp16_rank4_axis1", (8, 3, 4, 4), {"axis": 1}, keras_only={"dtype": "float16"}, dtype="float16"),
    BNCase("fp16_renorm", (8, 5), {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5},
           keras_only={"dtype": "float16"}, dtype="float16", training=RENORM_STEPS),
    # masks on (B, T, F)
    BNCase("mask_rank3", (8, 6, 5), mask=True, keras3=True),
    BNCase("mask_rank3_momentum", (8, 6, 5), {"momentum": 0.5}, mask=True, keras3=True),
    BNCase("mask_rank3_renorm", (8, 6, 5), {"renorm": True, "renorm_clipping": CLIP, "renorm_momentum": 0.5},
           mask=True, training=RENORM_STEPS),
    # regularizers and constraints (one SGD step per call)
    BNCase("regularizers", (8, 5), REGS, lr=0.1, keras3=True),
    BNCase("regularizers_rank4_axes12", (8, 3, 3, 5), {"axis": [1, 2], **REGS}, lr=0.1),
    BNCase("regularizers_vbs", (8, 5), {"virtual_batch_size": 2, **REGS}, lr=0.1),
    BNCase("nonneg_gamma", (8, 5), {"gamma_constraint": "non_neg"}, init="neg_gamma", lr=0.1, keras3=True),
    BNCase("maxnorm_gamma_beta", (8, 5), {"gamma_constraint": "max_norm", "beta_constraint": "max_norm"},
           init="big_gamma", lr=0.1, keras3=True),
    BNCase("maxnorm_rank4_axes12", (8, 3, 3, 5), {"axis": [1, 2], "gamma_constraint": "max_norm"},
           init="big_gamma", lr=0.1),
    # A frozen layer keeps its penalties in tf_keras (bnkit follows it); Keras 3 reports none.
    BNCase("frozen_regularizers", (8, 5), {"trainable": False, **REGS}, training=(True, False)),
    BNCase("sgd_plain_rank4", (8, 4, 4, 3), lr=0.05),
    # batch size 1 in training: output = beta; the fused path uses 0 as the variance when n = 1
    BNCase("batch1_rank2", (1, 5), training=(True, False, True), keras3=True),
    BNCase("batch1_rank4_fused", (1, 1, 1, 3), training=(True, False, True)),
    BNCase("batch1_rank4_n_gt_1", (1, 2, 2, 3), training=(True, False, True)),
]
CASES_BY_NAME = {case.name: case for case in CASES}


@dataclass(frozen=True)
class ErrorCase:
    """A configuration Keras accepts or rejects; bnkit must raise the same exception type."""

    name: str
    config: Mapping[str, Any]
    shapes: tuple[tuple[int, ...], ...] = ((8, 3, 4, 4),)  # one call (training=True) per shape
    adjustment: bool = False
    keras_raises: bool = True  # guards the oracle itself
    oracle: str = "tf_keras"  # "keras3" where bnkit deliberately follows Keras 3's validation


ERROR_CASES: list[ErrorCase] = [
    ErrorCase("fused_renorm", {"fused": True, "renorm": True}),
    ErrorCase("fused_axis2", {"fused": True, "axis": 2}),
    ErrorCase("fused_axis_list", {"fused": True, "axis": [1, 2]}),
    ErrorCase("fused_rank2", {"fused": True}, shapes=((6, 5),)),
    ErrorCase("fused_rank3", {"fused": True}, shapes=((6, 5, 4),)),
    ErrorCase("fused_vbs", {"fused": True, "virtual_batch_size": 2}),
    ErrorCase("fused_adjustment", {"fused": True}, adjustment=True),
    ErrorCase("fused_none_axis_neg4_rank4", {"axis": -4}),
    ErrorCase("fused_false_axis0_rank4", {"axis": 0, "fused": False}, keras_raises=False),
    ErrorCase("fused_none_axis2_rank5", {"axis": 2}, shapes=((4, 2, 3, 2, 3),), keras_raises=False),
    ErrorCase("axis_out_of_range", {"axis": 5}),
    ErrorCase("axis_negative_out_of_range", {"axis": -5}),
    ErrorCase("axis_list_out_of_range", {"axis": [1, 4]}),
    ErrorCase("axis_duplicate", {"axis": [1, -3]}),
    ErrorCase("axis_string", {"axis": "a"}),
    ErrorCase("axis_float", {"axis": 1.0}),
    ErrorCase("vbs_zero", {"virtual_batch_size": 0}),
    ErrorCase("vbs_negative", {"virtual_batch_size": -2}),
    ErrorCase("vbs_axis0", {"virtual_batch_size": 2, "axis": 0}, shapes=((8, 3),)),
    ErrorCase("vbs_axis_list_with0", {"virtual_batch_size": 2, "axis": [0, 1]}, shapes=((8, 3),)),
    ErrorCase("vbs_adjustment", {"virtual_batch_size": 2}, shapes=((8, 3),), adjustment=True),
    ErrorCase("renorm_clipping_unknown_key", {"renorm": True, "renorm_clipping": {"rmax": 2.0, "rmni": 0.5}},
              shapes=((8, 3),)),
    ErrorCase("clipping_unknown_key_without_renorm", {"renorm_clipping": {"foo": 1.0}}, shapes=((8, 3),),
              keras_raises=False),
    ErrorCase("wrong_rank_second_call", {}, shapes=((8, 3), (8, 3, 2))),
    ErrorCase("wrong_channels_second_call", {"axis": 1}, shapes=((8, 3), (8, 4))),
    ErrorCase("vbs4_batch8_ok", {"virtual_batch_size": 4}, shapes=((8, 3),), keras_raises=False),
    # tf_keras accepts these; bnkit validates clipping values as Keras 3 does (see bnkit's check_clipping)
    ErrorCase("renorm_rmax_below_rmin", {"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2.0}},
              shapes=((8, 3),), oracle="keras3"),
    ErrorCase("renorm_negative_dmax", {"renorm": True, "renorm_clipping": {"dmax": -1.0}}, shapes=((8, 3),),
              oracle="keras3"),
    ErrorCase("renorm_clipping_unknown_key_keras3", {"renorm": True, "renorm_clipping": {"rmax": 2.0, "rmni": 0.5}},
              shapes=((8, 3),), oracle="keras3"),
]


# ---- inputs -----------------------------------------------------------------------------
def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _param_shape(case: BNCase) -> tuple[int, ...]:
    return tuple(case.shape[d] if d in case.axes else 1 for d in range(len(case.shape)))


def _initial_state(case: BNCase, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = case.channels
    if case.init == "none":
        return {}
    state = {
        "gamma": rng.uniform(0.5, 1.5, c),
        "beta": rng.normal(0.0, 0.5, c),
        "moving_mean": rng.normal(0.0, 1.0, c),
        "moving_variance": rng.uniform(0.5, 2.0, c),
        # renorm statistics far from the batch ones, so that r and d start out clipped
        "moving_stddev": rng.uniform(0.5, 1.5, c),
        "renorm_mean": rng.normal(0.0, 0.3, c),
        "renorm_stddev": rng.uniform(0.2, 0.5, c),
    }
    if case.init == "neg_gamma":
        state["gamma"] = -rng.uniform(0.1, 1.0, c)
    elif case.init == "big_gamma":
        state["gamma"] = rng.uniform(1.0, 3.0, c)
        state["beta"] = rng.normal(0.0, 2.0, c)
    return {k: v.astype(np.float32) for k, v in state.items() if k in case.weight_names()}


def _step_inputs(case: BNCase, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    loc = rng.normal(1.0, 1.5, _param_shape(case))
    scale = rng.uniform(0.5, 2.5, _param_shape(case))
    steps = []
    for _ in case.training:
        x = loc + scale * rng.normal(0.0, 1.0, case.shape) + rng.normal(0.0, 0.3)
        step = {"x": x.astype(np.float32), "dy": rng.normal(0.0, 1.0, case.shape).astype(np.float32)}
        if case.mask:
            step["mask"] = rng.uniform(size=case.shape[:2]) > 0.3
        steps.append(step)
    return steps


def _adjustment_arrays(case: BNCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(0.5, 1.5, _param_shape(case)[1:]).astype(np.float32)
    bias = rng.normal(0.0, 0.3, _param_shape(case)[1:]).astype(np.float32)
    return scale, bias


@dataclass
class Prepared:
    case: BNCase
    initial: dict[str, np.ndarray]
    steps: list[dict[str, np.ndarray]]
    adjustment: tuple[np.ndarray, np.ndarray] | None


def _prepare(case: BNCase) -> Prepared:
    rng = _rng(case.name)
    initial = _initial_state(case, rng)
    steps = _step_inputs(case, rng)
    adjustment = _adjustment_arrays(case, rng) if case.adjustment else None
    return Prepared(case, initial, steps, adjustment)


def _keras_spec(prep: Prepared, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    case, name = prep.case, prep.case.name
    steps = []
    for index, (step, training) in enumerate(zip(prep.steps, case.training)):
        keys = {k: f"{name}/in{index}/{k}" for k in step}
        arrays.update({keys[k]: v for k, v in step.items()})
        steps.append({"x": keys["x"], "training": training, "dy": keys["dy"], "mask": keys.get("mask")})
    initial = {}
    for weight, value in prep.initial.items():
        initial[weight] = f"{name}/init/{weight}"
        arrays[initial[weight]] = value
    adjustment = None
    if prep.adjustment is not None:
        adjustment = {"scale": f"{name}/adj/scale", "bias": f"{name}/adj/bias"}
        arrays[adjustment["scale"]], arrays[adjustment["bias"]] = prep.adjustment
    return {
        "name": name,
        "layer": "BatchNormalization",
        "config": {**case.config, **case.keras_only},
        "dtype": case.dtype,
        "steps": steps,
        "initial_weights": initial,
        "adjustment": adjustment,
        "renorm_clipping_schedule": list(case.clipping_schedule) if case.clipping_schedule else None,
        "optimizer_step": None if case.lr is None else {"lr": case.lr},
    }


def _error_spec(case: ErrorCase, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    rng = _rng(case.name)
    steps = []
    for index, shape in enumerate(case.shapes):
        key = f"{case.name}/x{index}"
        arrays[key] = rng.normal(size=shape).astype(np.float32)
        steps.append({"x": key, "training": True, "dy": None, "mask": None})
    adjustment = None
    if case.adjustment:
        adjustment = {"scale": f"{case.name}/adj", "bias": f"{case.name}/adj"}
        arrays[f"{case.name}/adj"] = np.ones(case.shapes[0][-1], np.float32)
    return {"name": case.name, "layer": "BatchNormalization", "config": dict(case.config), "steps": steps,
            "adjustment": adjustment}


@pytest.fixture(scope="module")
def prepared() -> dict[str, Prepared]:
    return {case.name: _prepare(case) for case in CASES}


@pytest.fixture(scope="module")
def tf_keras_results(prepared: dict[str, Prepared]) -> dict[str, Any]:
    arrays: dict[str, np.ndarray] = {}
    specs = [_keras_spec(prep, arrays) for prep in prepared.values()]
    specs += [_error_spec(case, arrays) for case in ERROR_CASES if case.oracle == "tf_keras"]
    return run_keras(specs, arrays, flavour="tf_keras")


@pytest.fixture(scope="module")
def keras3_results(prepared: dict[str, Prepared]) -> dict[str, Any]:
    arrays: dict[str, np.ndarray] = {}
    specs = [_keras_spec(prep, arrays) for prep in prepared.values() if prep.case.keras3]
    specs += [_error_spec(case, arrays) for case in ERROR_CASES if case.oracle == "keras3"]
    return run_keras(specs, arrays, flavour="keras3")


# ---- the bnkit side -----------------------------------------------------------------------
def _constant_adjustment(scale: np.ndarray, bias: np.ndarray) -> Callable[[torch.Size], tuple[torch.Tensor, ...]]:
    def adjustment(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        del shape
        return torch.from_numpy(scale), torch.from_numpy(bias)

    return adjustment


def _state(bn: Any, name: str) -> torch.Tensor | None:
    """bnkit's tensor for a Keras weight name (the read-only aliases), or None."""
    value: torch.Tensor | None = getattr(bn, name, None)
    return value


def run_bnkit(prep: Prepared) -> Iterator[dict[str, Any]]:
    """Yield bnkit's observables step by step; the last item is ``{"layout": ...}``."""
    case = prep.case
    kwargs: dict[str, Any] = dict(case.config)
    if prep.adjustment is not None:
        kwargs["adjustment"] = _constant_adjustment(*prep.adjustment)
    bn = bnkit.BatchNormalization(**kwargs)
    dtype = getattr(torch, case.dtype)
    with torch.no_grad():  # build with an inference call (no state change), then set the state
        bn(torch.from_numpy(prep.steps[0]["x"]).to(dtype), training=False)
        for name, value in prep.initial.items():
            tensor = _state(bn, name)
            assert tensor is not None, f"bnkit layer has no {name!r}"
            tensor.copy_(torch.from_numpy(value))
    trainable = [p for p in bn.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=case.lr) if case.lr is not None and trainable else None
    for index, (step, training) in enumerate(zip(prep.steps, case.training)):
        if case.clipping_schedule is not None and case.clipping_schedule[index] is not None:
            bn.set_renorm_clipping(**case.clipping_schedule[index])
        for p in bn.parameters():
            p.grad = None
        x = torch.from_numpy(step["x"]).to(dtype).requires_grad_(True)
        mask = torch.from_numpy(step["mask"]) if "mask" in step else None
        y = bn(x, training=training, mask=mask)
        (y.float() * torch.from_numpy(step["dy"])).sum().backward()
        grads = {"dgamma": bn.weight, "dbeta": bn.bias}
        observed: dict[str, Any] = {"y": y.detach().numpy(), "dx": x.grad.numpy() if x.grad is not None else None}
        for key, param in grads.items():
            observed[key] = None if param is None or param.grad is None else param.grad.numpy().copy()
        if optimizer is not None:
            optimizer.step()
            bn.apply_constraints()
        observed["w"] = {n: None if _state(bn, n) is None else _state(bn, n).detach().numpy().copy()
                         for n in ALL_WEIGHTS}
        observed["losses"] = float(bn.regularization_loss().detach())
        yield observed
    yield {"layout": {"keras_weight_shape": tuple(bn.keras_weight_shape)}}


# ---- comparison ---------------------------------------------------------------------------
def _tolerances(case: BNCase) -> dict[str, Tol]:
    if case.dtype == "float16":
        return {"y": (4e-3, 4e-3), "dx": (4e-3, 4e-3), "grad": (1e-2, 1e-2), "w": (1e-4, 1e-4), "losses": (1e-4, 1e-4)}
    tol = (1e-5, 1e-5)
    return {"y": tol, "dx": tol, "grad": tol, "w": tol, "losses": tol}


def _mismatch(what: str, actual: np.ndarray | float | None, expected: np.ndarray | float | None, tol: Tol) -> str | None:
    if actual is None or expected is None:
        return None if actual is None and expected is None else f"{what}: bnkit={actual is not None} keras={expected is not None}"
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    if a.shape != e.shape:
        return f"{what}: size {a.size} vs keras {e.size}"
    if np.allclose(a, e, atol=tol[0], rtol=tol[1], equal_nan=True):
        return None
    diff = np.abs(a - e)
    worst = int(np.nanargmax(diff))
    return f"{what}: max|diff|={np.nanmax(diff):.3g} at {worst} (bnkit {a[worst]:.7g}, keras {e[worst]:.7g})"


def compare_case(prep: Prepared, results: Mapping[str, Any]) -> list[str]:
    case, name = prep.case, prep.case.name
    error = case_error(results, name)
    if error is not None:
        pytest.fail(f"Keras raised for {name}: {error}")
    tol = _tolerances(case)
    problems: list[str] = []
    keras_names = list(case_array(results, f"{name}/weight_names"))
    observed = list(run_bnkit(prep))
    layout = observed.pop()["layout"]
    for index, bn_step in enumerate(observed):
        prefix = f"{name}/{index}"
        y = case_array(results, f"{prefix}/y")
        if bn_step["y"].dtype != y.dtype:
            problems.append(f"step {index} y dtype: bnkit {bn_step['y'].dtype}, keras {y.dtype}")
        checks = [
            ("y", bn_step["y"], y, tol["y"]),
            ("dx", bn_step["dx"], results.get(f"{prefix}/dx"), tol["dx"]),
            ("dgamma", bn_step["dgamma"], results.get(f"{prefix}/dgamma"), tol["grad"]),
            ("dbeta", bn_step["dbeta"], results.get(f"{prefix}/dbeta"), tol["grad"]),
            ("losses", bn_step["losses"], float(case_array(results, f"{prefix}/losses")), tol["losses"]),
        ]
        checks += [(w, bn_step["w"][w], results.get(f"{prefix}/w/{w}"), tol["w"]) for w in ALL_WEIGHTS]
        for what, actual, expected, t in checks:
            problem = _mismatch(what, actual, expected, t)
            if problem:
                problems.append(f"step {index} (training={case.training[index]}) {problem}")
    shape = tuple(int(d) for d in case_array(results, f"{name}/shape/{keras_names[-1]}"))
    if layout["keras_weight_shape"] != shape:
        problems.append(f"keras_weight_shape: bnkit {layout['keras_weight_shape']}, keras {shape}")
    return problems


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_matches_tf_keras(name: str, prepared: dict[str, Prepared], tf_keras_results: dict[str, Any]) -> None:
    problems = compare_case(prepared[name], tf_keras_results)
    assert not problems, f"{name} vs tf_keras:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", [case.name for case in CASES if case.keras3])
def test_matches_keras3(name: str, prepared: dict[str, Prepared], keras3_results: dict[str, Any]) -> None:
    problems = compare_case(prepared[name], keras3_results)
    assert not problems, f"{name} vs Keras 3:\n  " + "\n  ".join(problems)


def test_weight_names_follow_keras(tf_keras_results: dict[str, Any]) -> None:
    """The oracle's weight lists equal what the cases predict (guards the case table itself)."""
    for case in CASES:
        names = list(case_array(tf_keras_results, f"{case.name}/weight_names"))
        assert names == case.weight_names(), case.name


def _bnkit_error(case: ErrorCase) -> str | None:
    rng = _rng(case.name)
    kwargs = dict(case.config)
    if case.adjustment:
        ones = np.ones(case.shapes[0][-1], np.float32)
        kwargs["adjustment"] = _constant_adjustment(ones, ones)
    try:
        bn = bnkit.BatchNormalization(**kwargs)
        for shape in case.shapes:
            bn(torch.from_numpy(rng.normal(size=shape).astype(np.float32)), training=True)
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return f"{type(error).__name__}: {error}"
    return None


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.name)
def test_error_types_match_keras(
    case: ErrorCase, tf_keras_results: dict[str, Any], keras3_results: dict[str, Any]
) -> None:
    results = tf_keras_results if case.oracle == "tf_keras" else keras3_results
    keras_error = case_error(results, case.name)
    assert (keras_error is not None) == case.keras_raises, f"oracle: {keras_error}"
    ours = _bnkit_error(case)
    keras_type = None if keras_error is None else keras_error.split(":")[0]
    our_type = None if ours is None else ours.split(":")[0]
    assert our_type == keras_type, f"bnkit: {ours!r}\nkeras: {keras_error!r}"
