"""Dropout statistics and seeding; Flatten order (NumPy reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bnkit
from bnkit import functional as F

from . import reference as ref


def test_dropout_keeps_the_right_fraction_and_scales_by_one_over_keep() -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    y = bnkit.Dropout(0.3)(x, training=True)
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.005  # 100k draws: std of the fraction is 0.0015
    assert abs(y.mean().item() - 1.0) < 0.01


def test_dropout_noise_shape_broadcasts_with_none_resolved() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, 6)
    y = bnkit.Dropout(0.5, noise_shape=(None, 1, None))(x, training=True)
    mask = y / x
    assert torch.allclose(mask, mask[:, :1, :].expand_as(mask))  # same mask at every time step
    assert set(torch.unique(mask.round(decimals=4)).tolist()) == {0.0, 2.0}
    channels = bnkit.Dropout(0.5, noise_shape=(None, None, 1, 1))(torch.ones(8, 16, 3, 3), training=True)
    per_channel = channels.amax(dim=(2, 3))
    assert torch.equal(channels, per_channel[:, :, None, None].expand_as(channels))


def test_dropout_identity_in_inference_and_rate_zero_zeros_for_rate_one() -> None:
    x = torch.randn(5, 5)
    layer = bnkit.Dropout(0.5).eval()
    assert layer(x) is x
    assert bnkit.Dropout(0.0)(x, training=True) is x
    assert torch.equal(bnkit.Dropout(1.0)(x, training=True), torch.zeros(5, 5))
    training_layer = bnkit.Dropout(0.5).train()
    assert not torch.equal(training_layer(torch.ones(10, 10)), torch.ones(10, 10))


def test_dropout_seed_reproduces_the_sequence_independently_of_global_rng() -> None:
    x = torch.ones(64, 64)
    first = bnkit.Dropout(0.5, seed=7)
    torch.manual_seed(1)
    a1, a2 = first(x, training=True), first(x, training=True)
    second = bnkit.Dropout(0.5, seed=7)
    torch.manual_seed(999)
    b1, b2 = second(x, training=True), second(x, training=True)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # masks differ between calls
    assert not torch.equal(a1, bnkit.Dropout(0.5, seed=8)(x, training=True))
    second.reset_generator()
    assert torch.equal(second(x, training=True), a1)


def test_dropout_gradient_is_the_mask() -> None:
    x = torch.randn(50, 40, requires_grad=True)
    y = bnkit.Dropout(0.25, seed=3)(x, training=True)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, (y / x).detach())


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (2, 3, 4, 5), (2, 3, 4, 5, 2), (6,)])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_flatten_matches_the_keras_order(shape: tuple[int, ...], data_format: str) -> None:
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    y = bnkit.Flatten(data_format)(torch.from_numpy(x))
    np.testing.assert_array_equal(y.numpy(), ref.flatten(x, data_format))


def test_flatten_channels_first_gives_keras_dense_order_for_seed_002() -> None:
    # 64 feature maps of 32x32 flatten to 65,536 features (the tutorial's "65356" is a typo).
    x = torch.randn(2, 64, 32, 32)
    y = bnkit.Flatten("channels_first")(x)
    assert y.shape == (2, 65536)
    h, w, c = 5, 7, 9
    assert y[1, (h * 32 + w) * 64 + c] == x[1, c, h, w]


def test_moments_plain_and_weighted() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 3))
    mean, var = F.moments(torch.from_numpy(x), [0, 1])
    np.testing.assert_allclose(mean.numpy(), x.mean((0, 1)))
    np.testing.assert_allclose(var.numpy(), x.var((0, 1)))
    weights = (rng.uniform(size=(4, 5, 1)) > 0.5).astype(np.float64)
    mean, var = F.moments(torch.from_numpy(x), [0, 1], mask=torch.from_numpy(weights))
    sel = x[np.broadcast_to(weights, x.shape) > 0].reshape(-1, 3)
    np.testing.assert_allclose(mean.numpy(), sel.mean(0))
    np.testing.assert_allclose(var.numpy(), sel.var(0))
    _, unbiased = F.moments(torch.from_numpy(x), 0, correction=1)
    np.testing.assert_allclose(unbiased.numpy(), x.var(0, ddof=1))


def test_functional_batch_norm_returns_new_statistics_without_mutating() -> None:
    x = torch.randn(16, 3) * 2 + 1
    mean, var = torch.zeros(3), torch.ones(3)
    out, stats = F.batch_norm(x, mean, var, training=True, axis=-1, momentum=0.9)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))
    torch.testing.assert_close(stats.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(stats.running_var, 0.9 + 0.1 * x.var(0, unbiased=False))
    torch.testing.assert_close(out, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-3))
