"""BatchNormalization against the NumPy reference, over a table of configurations.

Each case runs several training steps from a non-trivial initial state (random gamma,
beta, moving statistics), interleaved with inference steps, and compares the output and
every moving statistic after every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import bnkit

from . import reference as ref


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    steps: int = 4
    channels_last: bool = False


CASES = [
    Case("rank2", (16, 5)),
    Case("rank3_last", (4, 6, 5)),
    Case("rank3_axis1", (4, 5, 6), {"axis": 1}),
    Case("rank4_nhwc_fused", (4, 3, 3, 5)),
    Case("rank4_nchw_fused", (4, 5, 3, 3), {"axis": 1}),
    Case("rank4_nchw_channels_last_memory", (4, 5, 3, 3), {"axis": 1}, channels_last=True),
    Case("rank4_nchw_not_fused", (4, 5, 3, 3), {"axis": 1, "fused": False}),
    Case("rank4_axis2", (4, 3, 5, 3), {"axis": 2}),
    Case("rank5_last", (2, 3, 2, 2, 4)),
    Case("rank5_axis1", (2, 4, 2, 3, 2), {"axis": 1}),
    Case("rank5_axis2_not_fused", (2, 3, 4, 2, 2), {"axis": 2}),
    Case("multi_axis_adjacent", (4, 3, 3, 5), {"axis": [1, 2]}),
    Case("multi_axis_split", (4, 3, 2, 5), {"axis": [-1, -3]}),
    Case("axis0", (6, 4), {"axis": 0}),
    Case("no_center", (8, 5), {"center": False}),
    Case("no_scale", (8, 5), {"scale": False}),
    Case("no_affine", (4, 3, 3, 5), {"center": False, "scale": False}),
    Case("momentum_eps", (8, 3, 2, 2), {"axis": 1, "momentum": 0.5, "epsilon": 1e-5}),
    Case("renorm", (16, 5), {"renorm": True, "renorm_momentum": 0.5,
                             "renorm_clipping": {"rmax": 1.5, "rmin": 0.8, "dmax": 0.3}}, steps=6),
    Case("renorm_no_clip", (4, 3, 3, 5), {"renorm": True, "renorm_momentum": 0.6}, steps=5),
    Case("renorm_nchw", (4, 5, 3, 3), {"axis": 1, "renorm": True, "renorm_momentum": 0.5,
                                       "renorm_clipping": {"rmax": 2.0, "dmax": 0.5}}, steps=5),
    Case("ghost_rank2", (8, 5), {"virtual_batch_size": 2}),
    Case("ghost_rank2_vbs4", (8, 5), {"virtual_batch_size": 4}),
    Case("ghost_nchw", (8, 5, 3, 3), {"axis": 1, "virtual_batch_size": 4}),
    Case("ghost_nhwc", (8, 3, 3, 5), {"virtual_batch_size": 2}),
    Case("ghost_channels_last_memory", (8, 5, 3, 3), {"axis": 1, "virtual_batch_size": 4}, channels_last=True),
    Case("ghost_renorm", (8, 5), {"virtual_batch_size": 4, "renorm": True, "renorm_momentum": 0.5,
                                  "renorm_clipping": {"rmax": 1.2, "dmax": 0.2}}, steps=5),
    Case("ghost_multi_axis", (8, 3, 2, 4), {"axis": [2, 3], "virtual_batch_size": 2}),
    Case("ghost_rank3_no_affine", (8, 4, 5), {"virtual_batch_size": 4, "center": False, "scale": False}),
    Case("ghost_renorm_channels_last_memory", (8, 5, 3, 3),
         {"axis": 1, "virtual_batch_size": 2, "renorm": True, "renorm_momentum": 0.5,
          "renorm_clipping": {"rmax": 1.2, "rmin": 0.9, "dmax": 0.2}}, channels_last=True, steps=5),
    Case("ghost_rank5_channels_last_memory", (4, 3, 2, 3, 2), {"axis": 1, "virtual_batch_size": 2},
         channels_last=True),
]


def _initial_state(bn: bnkit.BatchNormalization, rng: np.random.Generator) -> ref.BNState:
    c = bn.num_features
    values = {
        "weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.5, c),
        "running_mean": rng.normal(0, 0.5, c), "running_var": rng.uniform(0.5, 2.0, c),
    }
    if bn.renorm:
        values.update(running_stddev=rng.uniform(0.8, 1.6, c), renorm_mean=rng.normal(0, 0.3, c),
                      renorm_stddev=rng.uniform(0.5, 1.5, c))
        values["running_var"] = values["running_stddev"] ** 2 - bn.epsilon
    with torch.no_grad():
        for name, value in values.items():
            tensor = getattr(bn, name)
            if tensor is not None:
                tensor.copy_(torch.from_numpy(value))
    return ref.BNState(values["running_mean"], values["running_var"], values.get("running_stddev"),
                       values.get("renorm_mean"), values.get("renorm_stddev"))


def _config(bn: bnkit.BatchNormalization) -> ref.BNConfig:
    return ref.BNConfig(axes=list(bn.built.axes), momentum=bn.momentum, epsilon=bn.epsilon, unbiased=bool(bn.fused),
                        renorm=bn.renorm, renorm_momentum=bn.renorm_momentum,
                        clipping=bn.renorm_clipping, virtual_batch_size=bn.virtual_batch_size)


def _as_input(x: np.ndarray, case: Case) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32))
    if not case.channels_last:
        return t
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_training_and_inference_match_numpy(case: Case) -> None:
    rng = np.random.default_rng(0)
    bn = bnkit.BatchNormalization(**case.kwargs)
    bn(_as_input(rng.normal(size=case.shape), case), training=False)  # build
    state = _initial_state(bn, rng)
    cfg = _config(bn)
    gamma = None if bn.weight is None else bn.weight.detach().double().numpy()
    beta = None if bn.bias is None else bn.bias.detach().double().numpy()
    for step in range(case.steps):
        x = rng.normal(1.0 + step, 1.0 + 0.5 * step, size=case.shape)
        y = bn(_as_input(x, case), training=True)
        expected, state = ref.batch_norm_train(x, gamma, beta, state, cfg)
        np.testing.assert_allclose(y.detach().numpy(), expected, atol=2e-5, rtol=1e-5, err_msg=f"step {step} output")
        np.testing.assert_allclose(bn.running_mean.numpy(), state.mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(bn.running_var.numpy(), state.var, atol=1e-5, rtol=1e-5)
        if bn.renorm:
            np.testing.assert_allclose(bn.moving_stddev.numpy(), state.stddev, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(bn.renorm_mean.numpy(), state.renorm_mean, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(bn.renorm_stddev.numpy(), state.renorm_stddev, atol=1e-5, rtol=1e-5)
        x_eval = rng.normal(0.5, 2.0, size=(3,) + case.shape[1:]) if case.kwargs.get("axis") != 0 else x
        y_eval = bn(_as_input(x_eval, case), training=False)
        np.testing.assert_allclose(y_eval.detach().numpy(), ref.batch_norm_infer(x_eval, gamma, beta, state, cfg),
                                   atol=2e-5, rtol=1e-5, err_msg=f"step {step} inference")


def test_renorm_clipping_schedule_changes_the_output() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 4.0, size=(16, 4))
    bn = bnkit.BatchNormalization(renorm=True, renorm_clipping={"rmax": 1.0, "rmin": 1.0, "dmax": 0.0},
                                  num_features=4)
    bn(torch.zeros(2, 4), training=False)  # build: resolves the axes
    state = _initial_state(bn, rng)
    cfg = _config(bn)
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    for bounds in ({"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}, {"rmax": 1.5, "rmin": 0.5, "dmax": 1.0},
                   {"rmax": None, "rmin": None, "dmax": None}):
        bn.set_renorm_clipping(**bounds)
        cfg.clipping = {k: v for k, v in bounds.items() if v is not None}
        y = bn(torch.from_numpy(x.astype(np.float32)), training=True)
        expected, state = ref.batch_norm_train(x, gamma, beta, state, cfg)
        np.testing.assert_allclose(y.detach().numpy(), expected, atol=2e-5, rtol=1e-5)
    assert bn.renorm_clipping == {}


def test_adjustment_applied_before_gamma_beta_in_training_only() -> None:
    rng = np.random.default_rng(2)
    scale, shift = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    seen: list[torch.Size] = []

    def adjustment(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(shape)
        return torch.tensor(scale, dtype=torch.float32), torch.tensor(shift, dtype=torch.float32)

    bn = bnkit.BatchNormalization(adjustment=adjustment, num_features=5)
    bn(torch.zeros(2, 5), training=False)
    state = _initial_state(bn, rng)
    x = rng.normal(size=(8, 5))
    y = bn(torch.from_numpy(x.astype(np.float32)), training=True)
    expected, state = ref.batch_norm_train(x, bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy(),
                                           state, _config(bn), adjustment=(scale, shift))
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=2e-5, rtol=1e-5)
    assert seen == [torch.Size([8, 5])]
    y_eval = bn(torch.from_numpy(x.astype(np.float32)), training=False)
    np.testing.assert_allclose(y_eval.detach().numpy(), ref.batch_norm_infer(x, bn.weight.detach().numpy(),
                               bn.bias.detach().numpy(), state, _config(bn)), atol=2e-5, rtol=1e-5)
    assert len(seen) == 1


def test_mask_weights_the_moments() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6, 3))
    mask = rng.uniform(size=(4, 6)) > 0.4
    bn = bnkit.BatchNormalization(num_features=3)
    bn(torch.zeros(2, 6, 3), training=False)
    state = _initial_state(bn, rng)
    y = bn(torch.from_numpy(x.astype(np.float32)), training=True, mask=torch.from_numpy(mask))
    expected, state = ref.batch_norm_train(x, bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy(),
                                           state, _config(bn), mask=mask)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), state.var, atol=1e-5, rtol=1e-5)
    # The mask must matter: the unmasked statistics give a different output.
    assert not np.allclose(y.detach().numpy(), ref.batch_norm_train(x, bn.weight.detach().double().numpy(),
                           bn.bias.detach().double().numpy(), state, _config(bn))[0], atol=1e-3)
