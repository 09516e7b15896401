"""bnkit's PyTorch family with its options against the NumPy reference (tests/reference.py).

PyTorch's conventions map onto the reference's Keras ones: Keras momentum = 1 - torch
momentum (``momentum=None``: 1 - 1/t at step t), epsilon = eps, the unbiased variance rule.
Several training steps, so the statistics are far from their initial values.
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
    cls: type
    shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    channels_last: bool = False


CLIP = {"rmax": 1.3, "rmin": 0.8, "dmax": 0.4}
CASES = [
    Case("renorm", bnkit.BatchNorm2d, (8, 4, 3, 3), {"momentum": 0.1, "renorm": True, "renorm_momentum": 0.3,
                                                      "renorm_clipping": CLIP}),
    Case("renorm_cumulative", bnkit.BatchNorm1d, (8, 5), {"momentum": None, "renorm": True, "renorm_momentum": 0.5}),
    Case("ghost_nchw", bnkit.BatchNorm2d, (8, 4, 3, 3), {"momentum": 0.2, "virtual_batch_size": 2}),
    Case("ghost_channels_last", bnkit.BatchNorm2d, (8, 4, 3, 3), {"virtual_batch_size": 4}, channels_last=True),
    Case("ghost_rows", bnkit.BatchNorm1d, (12, 5), {"momentum": 0.3, "virtual_batch_size": 3}),
    Case("ghost_renorm_3d", bnkit.BatchNorm3d, (8, 3, 2, 2, 2), {"virtual_batch_size": 4, "renorm": True,
                                                                  "renorm_clipping": CLIP}),
    Case("cumulative_ghost", bnkit.BatchNorm1d, (8, 5, 4), {"momentum": None, "virtual_batch_size": 2}),
    Case("no_affine_renorm", bnkit.BatchNorm2d, (6, 3, 2, 2), {"affine": False, "renorm": True, "eps": 1e-3}),
]


def _input(x: np.ndarray, case: Case) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32))
    return t.contiguous(memory_format=torch.channels_last) if case.channels_last else t


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_family_options_match_numpy(case: Case) -> None:
    rng = np.random.default_rng(0)
    bn = case.cls(case.shape[1], **case.kwargs).train()
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, case.shape[1])))
            bn.bias.copy_(torch.from_numpy(rng.normal(size=case.shape[1])))
    gamma = None if bn.weight is None else bn.weight.detach().double().numpy()
    beta = None if bn.bias is None else bn.bias.detach().double().numpy()
    c = case.shape[1]
    state = ref.BNState(np.zeros(c), np.ones(c), np.ones(c) if bn.renorm else None,
                        np.zeros(c) if bn.renorm else None, np.ones(c) if bn.renorm else None)
    for step in range(1, 5):
        momentum = 1.0 / step if bn.momentum is None else bn.momentum
        cfg = ref.BNConfig(axes=[1], momentum=1.0 - momentum, epsilon=bn.eps, unbiased=True, renorm=bn.renorm,
                           renorm_momentum=1.0 - bn.renorm_momentum, clipping=bn.renorm_clipping,
                           virtual_batch_size=bn.virtual_batch_size)
        x = rng.normal(1.0 + step, 1.0 + 0.5 * step, size=case.shape)
        y = bn(_input(x, case))
        expected, state = ref.batch_norm_train(x, gamma, beta, state, cfg)
        np.testing.assert_allclose(y.detach().numpy(), expected, atol=2e-5, rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(bn.running_mean.numpy(), state.mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(bn.running_var.numpy(), state.var, atol=1e-5, rtol=1e-5)
        if bn.renorm:
            for name, value in (("running_stddev", state.stddev), ("renorm_mean", state.renorm_mean),
                                ("renorm_stddev", state.renorm_stddev)):
                np.testing.assert_allclose(getattr(bn, name).numpy(), value, atol=1e-5, rtol=1e-5, err_msg=name)
        assert int(bn.num_batches_tracked) == step
        x_eval = rng.normal(0.5, 2.0, size=(3,) + case.shape[1:])
        y_eval = bn.eval()(_input(x_eval, case))
        np.testing.assert_allclose(y_eval.detach().numpy(), ref.batch_norm_infer(x_eval, gamma, beta, state, cfg),
                                   atol=2e-5, rtol=1e-5)
        bn.train()


def test_untracked_ghost_layer_uses_batch_statistics_in_eval() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(8, 4, 3, 3))
    bn = bnkit.BatchNorm2d(4, track_running_stats=False, virtual_batch_size=2).eval()
    expected = torch.nn.BatchNorm2d(4, track_running_stats=False).eval()(torch.from_numpy(x).float())
    torch.testing.assert_close(bn(torch.from_numpy(x).float()), expected)
    assert bn.running_mean is None and bn.num_batches_tracked is None


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"renorm": True, "track_running_stats": False}, ValueError, "track_running_stats"),
    ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size=0"),
    ({"virtual_batch_size": 2, "synchronized": True}, ValueError, "virtual_batch_size"),
    ({"renorm": True, "renorm_clipping": {"rmaxx": 2}}, ValueError, "rmaxx"),
    ({"renorm_momentum": 1.5}, ValueError, "renorm_momentum=1.5"),
    ({"momentum": -0.1}, ValueError, "momentum=-0.1"),
    ({"eps": -1.0}, ValueError, "eps=-1.0"),
    ({"affine": "yes"}, TypeError, "affine='yes'"),
    ({"gamma_regularizer": "l7"}, ValueError, "l7"),
])
def test_torch_family_argument_errors(kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        bnkit.BatchNorm2d(4, **kwargs)
    assert fragment in str(info.value)


def test_torch_family_regularizers_and_constraints() -> None:
    bn = bnkit.BatchNorm2d(3, gamma_regularizer="l2", beta_constraint="non_neg")
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([-1.0, 0.5, -2.0]))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), bn)
    torch.testing.assert_close(bnkit.regularization_loss(model), torch.tensor(ref.l2(np.array([1.0, 2.0, 3.0]))))
    bnkit.apply_constraints(model)
    torch.testing.assert_close(bn.bias.detach(), torch.tensor([0.0, 0.5, 0.0]))
