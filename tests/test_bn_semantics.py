"""The one description of a BN (BNSpec) and the numerics fixed with it.

References: float64 NumPy statistics, torch.nn.BatchNorm2d, Keras' config conventions.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bnkit
from bnkit import BNSpec


# ---- empty batches: connected to gamma/beta, as torch.nn.BatchNorm2d ---------------------
@pytest.mark.parametrize("make", [
    lambda: bnkit.BatchNormalization(axis=1, num_features=3),
    lambda: bnkit.BatchNorm2d(3),
    lambda: bnkit.BatchNorm2d(3, renorm=True),
    lambda: bnkit.BatchNormalization(axis=1, num_features=3, virtual_batch_size=2),
], ids=["keras", "torch", "torch-renorm", "keras-ghost"])
def test_empty_batch_gives_zero_gradients_like_torch(make) -> None:
    reference, layer = nn.BatchNorm2d(3), make()
    x = torch.zeros(0, 3, 4, 4, requires_grad=True)
    for module in (reference, layer):
        module(x).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.bias.grad, torch.zeros(3))
    assert torch.equal(layer.running_mean, torch.zeros(3)) and torch.equal(layer.running_var, torch.ones(3))


# ---- renorm_clipping comes back exactly as given ------------------------------------------
def test_renorm_clipping_is_kept_exactly() -> None:
    bounds = {"rmax": 3, "rmin": 0.3, "dmax": 5.1}
    layer = bnkit.BatchNormalization(renorm=True, renorm_clipping=bounds)
    assert layer.renorm_clipping == bounds
    assert layer.renorm_clipping["rmin"] == 0.3 and repr(layer.renorm_clipping["rmin"]) == "0.3"
    assert layer.spec.keras_config()["renorm_clipping"] == bounds
    layer.set_renorm_clipping(rmin=0.7, dmax=None)
    assert layer.renorm_clipping == {"rmax": 3, "rmin": 0.7}
    torch_layer = bnkit.BatchNorm2d(4, renorm=True, renorm_clipping={"rmin": 0.3})
    assert torch_layer.renorm_clipping == {"rmin": 0.3}
    # the kernel still sees the float32 bounds (absent ones are infinite)
    assert torch_layer._clipping.tolist() == pytest.approx([0.3, float("inf"), float("inf")])


def test_renorm_clipping_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bnkit.BatchNormalization(renorm=True, renorm_clipping={"rmax": float("nan")})
    layer = bnkit.BatchNorm2d(3, renorm=True)
    with pytest.raises(ValueError, match="NaN"):
        layer.set_renorm_clipping(dmax=float("nan"))


# ---- the moving variance is computed directly (tiny channel variance, epsilon 1e-3) -------
@pytest.mark.parametrize("std", [1e-4, 1e-5])
@pytest.mark.parametrize("make, unbiased", [
    (lambda: bnkit.BatchNormalization(axis=1, momentum=0.0, num_features=4), True),           # fused path
    (lambda: bnkit.BatchNormalization(axis=1, momentum=0.0, fused=False, num_features=4), False),
    (lambda: bnkit.BatchNorm2d(4, momentum=1.0, eps=1e-3, virtual_batch_size=16), True),      # bnkit core, torch rules
], ids=["keras-fused", "keras-nonfused", "torch-ghost1"])
def test_moving_variance_matches_float64(std: float, make, unbiased: bool) -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((16, 4, 6, 6)) * std + 3.0).astype(np.float32)
    layer = make().train()
    layer(torch.from_numpy(data))
    expected = data.astype(np.float64).var(axis=(0, 2, 3), ddof=1 if unbiased else 0)
    np.testing.assert_allclose(layer.running_var.double().numpy(), expected, rtol=2e-3)
    # (invstd**-2 - eps was 0.6% off at std 1e-4 and 19% at 1e-5: the tolerance above catches that)


# ---- Keras family: axis=-1 meeting NCHW input ----------------------------------------------
@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (2, 3, 32, 32), (2, 8, 4, 4, 4)])
def test_axis_minus_one_on_channels_first_input_warns_once(shape) -> None:
    layer = bnkit.BatchNormalization()
    with pytest.warns(UserWarning, match="looks channels-first"):
        layer(torch.randn(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(shape))  # built: no second warning


@pytest.mark.parametrize("shape", [(4, 28, 28, 64), (4, 8, 8, 8), (2, 32, 32, 3), (2, 7, 7, 2048), (3, 5)])
def test_axis_minus_one_never_warns_on_channels_last_input(shape) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnkit.BatchNormalization()(torch.randn(shape))
        bnkit.BatchNormalization(num_features=8)(torch.randn(4, 16, 8, 8))  # asked for explicitly


def test_norm_layer_misuse_names_the_torch_class() -> None:
    layer = bnkit.BatchNormalization(64)  # norm_layer(num_features) puts 64 into `axis`
    with pytest.raises(ValueError, match="bnkit.BatchNorm2d"):
        layer(torch.randn(2, 64, 4, 4))


# ---- BNSpec ---------------------------------------------------------------------------------
def test_spec_resolves_keras_rules() -> None:
    built = BNSpec.create(axis=1).build((8, 3, 5, 5))
    assert (built.axes, built.features, built.fused, built.variance_rule) == ((1,), 3, True, "unbiased")
    built = BNSpec.create(axis=-1).build((8, 5))
    assert (built.fused, built.variance_rule, built.keras_weight_shape) == (False, "biased", (5,))
    built = BNSpec.create(axis=[1, 2]).build((8, 3, 2, 4))
    assert (built.axes, built.features, built.keras_weight_shape) == ((1, 2), 6, (1, 3, 2, 1))
    built = BNSpec.create(axis=-1, virtual_batch_size=2).build((8, 6, 5))
    assert built.keras_weight_shape == (1, 1, 1, 5) and built.variance_rule == "biased"
    assert BNSpec.create(axis=1, variance_rule="unbiased").build((8, 3)).variance_rule == "unbiased"
    with pytest.raises(ValueError, match="fused=True"):
        BNSpec.create(fused=True, renorm=True)


def test_spec_keras_config_round_trip_and_immutability() -> None:
    config = {"axis": 3, "momentum": 0.9, "epsilon": 1e-5, "center": False, "scale": True, "renorm": True,
              "renorm_clipping": {"rmax": 2.5, "dmax": 0.5}, "renorm_momentum": 0.8, "virtual_batch_size": 4}
    spec = BNSpec.from_keras_config(config)
    assert spec.keras_config() == config
    assert spec.replace(momentum=0.5).momentum == 0.5 and spec.momentum == 0.9
    with pytest.raises(AttributeError):
        spec.momentum = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="momentum"):
        spec.replace(momentum=2.0)
    with pytest.raises(TypeError, match="Unknown"):
        BNSpec.create(axsi=1)


def test_both_families_describe_themselves_with_one_spec() -> None:
    keras = bnkit.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5, num_features=3)
    torch_family = bnkit.BatchNorm2d(3, eps=1e-5, momentum=0.1)
    assert keras.spec.momentum == 0.9 and torch_family.spec.momentum == pytest.approx(0.9)
    assert torch_family.spec.epsilon == 1e-5 and torch_family.spec.variance_rule == "unbiased"
    torch_family.eps, torch_family.momentum = 1e-3, None  # torch attributes stay mutable
    assert torch_family.spec.epsilon == 1e-3 and torch_family.spec.momentum == 0.0  # next update: weight 1/1
    assert torch_family.spec.build((2, 3, 4, 4)).features == 3
