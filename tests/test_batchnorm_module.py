"""BatchNormalization as a PyTorch citizen: gradients, state, dtypes, edge cases, compile."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import bnkit
from bnkit import functional as F

from . import reference as ref

GRADCHECK_CASES = [
    {"axis": 1},
    {"axis": -1},
    {"axis": [1, 2]},
    {"axis": 1, "virtual_batch_size": 2},
    {"renorm": True, "renorm_clipping": {"rmax": 1.1, "rmin": 0.9, "dmax": 0.1}},
    {"axis": 1, "renorm": True, "virtual_batch_size": 2, "renorm_clipping": {"rmax": 1.1, "rmin": 0.9, "dmax": 0.1}},
    {"adjustment": lambda shape: (torch.full(shape[-1:], 1.5, dtype=torch.float64),
                                  torch.full(shape[-1:], 0.2, dtype=torch.float64))},
    {"center": False},
    {"scale": False},
    # ghost BN over the innermost axis runs on the row kernel (bnkit._kernels.RowNormalize)
    {"virtual_batch_size": 2},
    {"virtual_batch_size": 2, "center": False},
    {"virtual_batch_size": 2, "scale": False},
    {"virtual_batch_size": 2, "renorm": True, "renorm_clipping": {"rmax": 1.1, "rmin": 0.9, "dmax": 0.1}},
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("kwargs", GRADCHECK_CASES, ids=lambda k: ",".join(sorted(k)))
def test_gradcheck_float64(kwargs: dict, channels_last: bool) -> None:
    torch.manual_seed(0)
    bn = bnkit.BatchNormalization(**kwargs, dtype=torch.float64)
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bn(x, training=False)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
        if bn.bias is not None:
            bn.bias.normal_()
    x.requires_grad_(True)
    params = [p for p in (bn.weight, bn.bias) if p is not None]

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        out, _ = F.batch_norm(
            x, bn.running_mean, bn.running_var, *(ps if len(ps) == 2 else (None, ps[0]) if bn.weight is None else (ps[0], None)),
            training=True, axis=list(bn.built.axes), epsilon=bn.epsilon,
            renorm=None if not bn.renorm else F.RenormState(bn.running_stddev, bn.renorm_mean, bn.renorm_stddev, 0.99, bn._clipping),
            virtual_batch_size=bn.virtual_batch_size, adjustment=bn.adjustment,
        )
        return out

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_renorm_gradient_treats_r_and_d_as_constants() -> None:
    """Unclipped r, d depend on the batch, so finite differences cannot check them (they
    are stop-gradient by definition); compare with autograd through a plain formula."""
    torch.manual_seed(1)
    bn = bnkit.BatchNormalization(axis=1, renorm=True, virtual_batch_size=2, num_features=3, dtype=torch.float64)
    with torch.no_grad():
        bn.renorm_mean.fill_(0.3)
        bn.renorm_stddev.fill_(1.7)
        bn.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 3, 2, 2, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    dy = torch.randn_like(x)
    gx, gw, gb = torch.autograd.grad((bn(x, training=True) * dy).sum(), (x, bn.weight, bn.bias))

    w = bn.weight.detach().clone().requires_grad_(True)
    b = bn.bias.detach().clone().requires_grad_(True)
    groups = [x[j::2] for j in range(2)]  # Keras' strided ghost batches
    stats = [(g.mean((0, 2, 3), keepdim=True), g.var((0, 2, 3), unbiased=False, keepdim=True)) for g in groups]
    mean = sum(m for m, _ in stats) / 2
    var = sum(v for _, v in stats) / 2
    r = (torch.sqrt(var + 1e-3) / 1.7).detach()
    d = ((mean - 0.3) / 1.7).detach()
    out = torch.stack([(g - m) / torch.sqrt(v + 1e-3) for g, (m, v) in zip(groups, stats)], 1).flatten(0, 1)
    y = (out * r + d) * w.view(1, 3, 1, 1) + b.view(1, 3, 1, 1)
    ex, ew, eb = torch.autograd.grad((y * dy).sum(), (x, w, b))
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)
    torch.testing.assert_close(gb, eb)


def test_matches_torch_batchnorm2d_with_converted_hyperparameters() -> None:
    torch.manual_seed(0)
    ours = bnkit.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5)
    theirs = torch.nn.BatchNorm2d(6, momentum=0.1, eps=1e-5)
    for _ in range(3):
        x = torch.randn(8, 6, 5, 5, requires_grad=True) * 3 + 2
        y1, y2 = ours(x, training=True), theirs(x)
        torch.testing.assert_close(y1, y2)
        g1, = torch.autograd.grad(y1.square().sum(), x)
        g2, = torch.autograd.grad(y2.square().sum(), x)
        torch.testing.assert_close(g1, g2)
    # tf.keras' fused path feeds the Bessel-corrected variance, as PyTorch does.
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    theirs.eval()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(ours(x, training=False), theirs(x))


def test_training_none_follows_module_mode_and_trainable_false_forces_inference() -> None:
    bn = bnkit.BatchNormalization(axis=1, num_features=3)
    x = torch.randn(8, 3) * 4 + 3
    bn.eval()
    bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3))
    bn.train()
    bn(x)
    assert not torch.equal(bn.running_mean, torch.zeros(3))
    frozen = bnkit.BatchNormalization(axis=1, num_features=3, trainable=False)
    y = frozen(x, training=True)
    assert torch.equal(frozen.running_mean, torch.zeros(3))
    torch.testing.assert_close(y, x / torch.sqrt(torch.tensor(1.0 + 1e-3)))
    assert not frozen.weight.requires_grad and not frozen.bias.requires_grad
    frozen.trainable = True
    assert frozen.weight.requires_grad
    frozen(x, training=True)
    assert not torch.equal(frozen.running_mean, torch.zeros(3))


def test_batch_of_one_gives_beta_like_keras() -> None:
    bn = bnkit.BatchNormalization(num_features=4)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    y = bn(torch.randn(1, 4), training=True)
    torch.testing.assert_close(y, bn.bias.detach().unsqueeze(0))
    torch.testing.assert_close(bn.running_var, torch.full((4,), 0.99))  # biased variance 0


def test_empty_batch_leaves_statistics_untouched() -> None:
    bn = bnkit.BatchNormalization(axis=1, num_features=3, renorm=True)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    for training in (True, False):
        y = bn(torch.empty(0, 3, 4, 4), training=training)
        assert y.shape == (0, 3, 4, 4)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]) and torch.isfinite(v).all(), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_float32_math(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    bn = bnkit.BatchNormalization(axis=1)
    x = (torch.randn(8, 4, 3, 3) * 3 + 5).to(dtype)
    y = bn(x, training=True)
    assert y.dtype == dtype and bn.weight.dtype == torch.float32 and bn.running_var.dtype == torch.float32
    rng_state = ref.BNState(np.zeros(4), np.ones(4))
    expected, state = ref.batch_norm_train(x.double().numpy(), None, None, rng_state, ref.BNConfig([1], unbiased=True))
    np.testing.assert_allclose(y.detach().double().numpy(), expected, atol=0.05 if dtype == torch.bfloat16 else 5e-3)
    np.testing.assert_allclose(bn.running_var.numpy(), state.var, rtol=1e-5)  # statistics in float32 exactly


def test_lazy_and_eager_builds_agree_and_state_dict_round_trips() -> None:
    torch.manual_seed(0)
    lazy = bnkit.BatchNormalization(axis=1, renorm=True)
    eager = bnkit.BatchNormalization(axis=1, renorm=True, num_features=5)
    x = torch.randn(6, 5, 2)
    lazy(x, training=True)
    eager(x, training=True)
    for (k1, v1), (k2, v2) in zip(lazy.state_dict().items(), eager.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2)
    assert list(lazy.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                      "running_stddev", "renorm_mean", "renorm_stddev"]
    buffer = io.BytesIO()
    torch.save(lazy.state_dict(), buffer)
    buffer.seek(0)
    fresh = bnkit.BatchNormalization(axis=1, renorm=True)  # unbuilt: loads into lazy state
    fresh.load_state_dict(torch.load(buffer))
    x2 = torch.randn(3, 5, 2)
    torch.testing.assert_close(fresh(x2, training=False), lazy(x2, training=False))


def test_keras_aliases_are_the_stored_tensors_and_keras_names_load() -> None:
    bn = bnkit.BatchNormalization(axis=[1, 2], renorm=True)
    bn(torch.randn(4, 3, 3, 5), training=False)
    assert bn.keras_weight_shape == (1, 3, 3, 1)
    assert bn.gamma is bn.weight and bn.beta is bn.bias
    assert bn.moving_mean is bn.running_mean and bn.moving_variance is bn.running_var
    assert bn.moving_stddev is bn.running_stddev
    keras_state = {"gamma": torch.full((1, 3, 3, 1), 2.0), "beta": torch.full((1, 3, 3, 1), 0.5),
                   "moving_mean": torch.ones(1, 3, 3, 1), "moving_variance": torch.full((1, 3, 3, 1), 4.0),
                   "moving_stddev": torch.full((1, 3, 3, 1), 2.0), "renorm_mean": torch.zeros(1, 3, 3, 1),
                   "renorm_stddev": torch.ones(1, 3, 3, 1)}
    bn.load_state_dict(keras_state)
    assert torch.equal(bn.weight.detach(), torch.full((9,), 2.0))
    assert torch.equal(bn.running_var, torch.full((9,), 4.0))
    ghost = bnkit.BatchNormalization(virtual_batch_size=2)
    ghost(torch.randn(4, 7), training=False)
    assert ghost.keras_weight_shape == (1, 1, 7)


def test_reset_parameters_and_running_stats_use_the_initializers() -> None:
    bn = bnkit.BatchNormalization(
        num_features=3, gamma_initializer={"class_name": "Constant", "config": {"value": 3.0}},
        moving_variance_initializer={"class_name": "Constant", "config": {"value": 4.0}}, renorm=True)
    assert torch.equal(bn.weight.detach(), torch.full((3,), 3.0))
    assert torch.equal(bn.running_var, torch.full((3,), 4.0))
    assert torch.equal(bn.running_stddev, torch.full((3,), 2.0))  # sqrt of the variance initializer
    bn(torch.randn(8, 3) * 5, training=True)
    bn.reset_running_stats()
    assert torch.equal(bn.running_var, torch.full((3,), 4.0)) and torch.equal(bn.renorm_stddev, torch.full((3,), 2.0))


def test_device_and_dtype_kwargs_reach_every_tensor() -> None:
    bn = bnkit.BatchNormalization(num_features=4, renorm=True, device="cpu", dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in bn.state_dict().values())
    y = bn(torch.randn(5, 4, dtype=torch.float64), training=True)
    assert y.dtype == torch.float64
    assert bn.fused is False  # float64 is never fused in tf.keras


def test_regularization_loss_and_constraints() -> None:
    bn = bnkit.BatchNormalization(num_features=3, gamma_regularizer="l2",
                                  beta_regularizer={"class_name": "L1", "config": {"l1": 0.5}},
                                  gamma_constraint="non_neg", beta_constraint="max_norm")
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([2.0, -2.0, 2.0]))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), bn, bnkit.BatchNormalization(num_features=3))
    expected = ref.l2(np.array([-1.0, 2, 3])) + ref.l1(np.array([2.0, -2, 2]), 0.5)
    assert bnkit.regularization_loss(model).item() == pytest.approx(expected)
    bnkit.apply_constraints(model)
    np.testing.assert_allclose(bn.weight.detach().numpy(), ref.non_neg(np.array([-1.0, 2, 3])))
    np.testing.assert_allclose(bn.bias.detach().numpy(), ref.max_norm(np.array([2.0, -2, 2])), rtol=1e-6)
    assert bnkit.regularization_loss(torch.nn.Linear(2, 2)).item() == 0.0


def test_extra_repr_names_the_configuration() -> None:
    text = repr(bnkit.BatchNormalization(axis=1, renorm=True, num_features=8))
    assert "BatchNormalization(8, axis=1, momentum=0.99, epsilon=0.001" in text and "renorm=True" in text


def _adjust(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full(shape[-1:], 1.5), torch.full(shape[-1:], 0.2)


COMPILE_CASES = [
    ({"axis": 1}, (8, 3, 4, 4), False),
    ({"axis": -1}, (8, 4, 4, 3), False),
    ({"axis": 1, "renorm": True}, (8, 3, 4, 4), False),
    ({"axis": 1, "virtual_batch_size": 4}, (8, 3, 4, 4), False),
    ({"virtual_batch_size": 4}, (8, 5), False),  # ghost BN on the row kernel
    ({"axis": -1, "virtual_batch_size": 2, "renorm": True}, (8, 4, 4, 3), False),
    ({"axis": [1, 2], "renorm": True, "renorm_clipping": {"rmax": 1.5}}, (8, 3, 2, 4), False),
    ({"adjustment": _adjust}, (8, 5), False),
    ({}, (4, 6, 3), True),
]


@pytest.mark.parametrize("kwargs, shape, masked", COMPILE_CASES, ids=lambda v: str(v)[:40])
def test_torch_compile_fullgraph_matches_eager(kwargs: dict, shape: tuple[int, ...], masked: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = bnkit.BatchNormalization(**kwargs)
    compiled_module = bnkit.BatchNormalization(**kwargs)
    for layer in (eager, compiled_module):
        layer(torch.zeros(shape), training=False)  # build before compiling
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    mask = (torch.rand(shape[:-1]) > 0.3) if masked else None
    for _ in range(2):
        x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
        y1, y2 = eager(x, training=True, mask=mask), compiled(x, training=True, mask=mask)
        torch.testing.assert_close(y1, y2)
        torch.testing.assert_close(torch.autograd.grad((y1 * x).sum(), x)[0],
                                   torch.autograd.grad((y2 * x).sum(), x)[0])
    torch.testing.assert_close(eager.running_var, compiled_module.running_var)
    torch.testing.assert_close(eager.running_mean, compiled_module.running_mean)


def test_second_derivatives_native_paths_and_refused_on_the_row_kernel() -> None:
    """Native-kernel paths are twice differentiable (gradgradcheck); the row kernel of ghost BN
    over an innermost axis refuses a second derivative instead of returning a wrong one."""
    torch.manual_seed(0)
    w = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    saturated = F.RenormState(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                              torch.ones(3, dtype=torch.float64), 0.99,
                              torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))  # r = 1, d = 0
    for kwargs in ({}, {"virtual_batch_size": 2}, {"renorm": saturated}):
        def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, kwargs: dict = kwargs) -> torch.Tensor:
            return F.batch_norm(x, None, None, w, b, training=True, axis=1, **kwargs)[0]
        assert torch.autograd.gradgradcheck(f, (x, w, b))
    rows = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = F.batch_norm(rows, None, None, w, b, training=True, virtual_batch_size=2)[0]
    (grad,) = torch.autograd.grad((y ** 3).sum(), rows, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
