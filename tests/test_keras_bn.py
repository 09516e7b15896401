"""torch.nn.BatchNorm*d <-> bnkit.BatchNormalization: statistics, rules, refusals."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnkit
from bnkit.keras import from_torch_batchnorm, to_torch_batchnorm


def _trained_torch(bn: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    bn.train()
    for _ in range(3):
        bn(torch.randn(*shape) * 2 + 1)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    return bn


def _steps(module: nn.Module, shape: tuple[int, ...], seed: int = 1) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    module.train()
    return [module(torch.randn(*shape) * 3 - 1) for _ in range(3)]


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm2d, (6, 5, 4, 3)), (nn.BatchNorm3d, (4, 5, 3, 2, 2))])
def test_batchnorm_2d_3d_convert_exactly_in_training_and_eval(cls: type[nn.Module], shape: tuple[int, ...]) -> None:
    torch_bn = _trained_torch(cls(5, eps=1e-3, momentum=0.3), shape)
    ours = from_torch_batchnorm(torch_bn)
    assert (ours.axis, ours.momentum, ours.epsilon, ours.center, ours.scale) == (1, 0.7, 1e-3, True, True)
    for mine, theirs in zip(_steps(ours, shape), _steps(torch_bn, shape)):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(ours.running_mean, torch_bn.running_mean)
    torch.testing.assert_close(ours.running_var, torch_bn.running_var)  # fused path: unbiased, like torch
    x = torch.randn(*shape)
    torch.testing.assert_close(ours.eval()(x), torch_bn.eval()(x))
    back = to_torch_batchnorm(ours)
    assert type(back) is cls and back.momentum == pytest.approx(0.3) and back.eps == 1e-3
    torch.testing.assert_close(back.eval()(x), torch_bn(x))


def test_batchnorm1d_differs_only_in_the_documented_running_variance() -> None:
    torch_bn = _trained_torch(nn.BatchNorm1d(4, momentum=0.5), (10, 4))
    ours = from_torch_batchnorm(torch_bn)
    before = torch_bn.running_var.clone()
    torch.manual_seed(3)
    x = torch.randn(10, 4)
    torch.testing.assert_close(ours.eval()(x), torch_bn.eval()(x))
    torch.testing.assert_close(ours.train()(x), torch_bn.train()(x))
    torch.testing.assert_close(ours.running_mean, torch_bn.running_mean)
    biased = x.var(dim=0, unbiased=False)
    torch.testing.assert_close(ours.running_var, 0.5 * before + 0.5 * biased)  # Keras' non-fused rule
    torch.testing.assert_close(torch_bn.running_var, 0.5 * before + 0.5 * biased * 10 / 9)


def test_affine_false_and_the_training_flag_are_kept() -> None:
    torch_bn = _trained_torch(nn.BatchNorm2d(3, affine=False), (4, 3, 2, 2)).eval()
    ours = from_torch_batchnorm(torch_bn)
    assert not ours.training and ours.weight is None and ours.bias is None
    assert type(to_torch_batchnorm(ours)) is nn.BatchNorm2d and not to_torch_batchnorm(ours).affine


@pytest.mark.parametrize("center, scale", [(False, True), (True, False)])
def test_center_or_scale_off_becomes_a_frozen_identity_parameter(center: bool, scale: bool) -> None:
    layer = bnkit.BatchNormalization(axis=1, center=center, scale=scale, num_features=3)
    x = torch.randn(4, 3, 2, 2)
    layer(x)
    with torch.no_grad():
        (layer.weight if scale else layer.bias).uniform_(0.5, 2.0)  # type: ignore[union-attr]
    bn = to_torch_batchnorm(layer.eval())
    assert bn.affine and bn.weight.requires_grad is scale and bn.bias.requires_grad is center
    torch.testing.assert_close(bn.eval()(x), layer(x))


@pytest.mark.parametrize("rank, cls", [(2, nn.BatchNorm1d), (3, nn.BatchNorm1d), (4, nn.BatchNorm2d),
                                       (5, nn.BatchNorm3d)])
def test_the_built_rank_or_the_rank_argument_picks_the_class(rank: int, cls: type) -> None:
    built = bnkit.BatchNormalization(axis=1)
    built(torch.randn(*([4, 3] + [2] * (rank - 2))))
    assert type(to_torch_batchnorm(built)) is cls
    assert type(to_torch_batchnorm(bnkit.BatchNormalization(axis=1, num_features=3), rank=rank)) is cls


@pytest.mark.parametrize("kwargs, message", [
    ({"renorm": True}, "renorm"),
    ({"virtual_batch_size": 2}, "virtual_batch_size"),
    ({"adjustment": lambda shape: (torch.ones(()), torch.zeros(()))}, "adjustment"),
    ({"trainable": False}, "trainable=False"),
    ({"gamma_regularizer": "l2"}, "regularizers or constraints"),
    ({"axis": -1}, "axis=-1"),
    ({"axis": [1, 2]}, r"axis=\[1, 2\]"),
])
def test_to_torch_refuses_what_torch_cannot_express(kwargs: dict, message: str) -> None:
    layer = bnkit.BatchNormalization(**{"axis": 1, **kwargs})
    layer(torch.randn(4, 3, 2, 5))
    with pytest.raises(ValueError, match=message):
        to_torch_batchnorm(layer)


def test_to_torch_needs_a_rank_and_a_bnkit_layer() -> None:
    with pytest.raises(ValueError, match="received: rank=None"):
        to_torch_batchnorm(bnkit.BatchNormalization(axis=1, num_features=3))
    with pytest.raises(TypeError, match="received: BatchNorm2d"):
        to_torch_batchnorm(nn.BatchNorm2d(3))  # type: ignore[arg-type]


def test_from_torch_refuses_cumulative_averages_and_untracked_statistics() -> None:
    with pytest.raises(ValueError, match="momentum=None"):
        from_torch_batchnorm(nn.BatchNorm2d(3, momentum=None))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        from_torch_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(TypeError, match="received: LazyBatchNorm2d"):
        from_torch_batchnorm(nn.LazyBatchNorm2d())
    with pytest.raises(TypeError, match="received: LayerNorm"):
        from_torch_batchnorm(nn.LayerNorm(3))  # type: ignore[arg-type]


@pytest.mark.parametrize("cls, shape", [(bnkit.BatchNorm1d, (10, 4)), (bnkit.BatchNorm2d, (6, 4, 3, 3)),
                                        (bnkit.BatchNorm3d, (4, 4, 3, 2, 2))])
def test_from_torch_takes_the_bnkit_torch_family_like_nn(cls: type[nn.Module], shape: tuple[int, ...]) -> None:
    native = {bnkit.BatchNorm1d: nn.BatchNorm1d, bnkit.BatchNorm2d: nn.BatchNorm2d, bnkit.BatchNorm3d: nn.BatchNorm3d}
    ours_torch = _trained_torch(cls(4, eps=1e-3, momentum=0.3, gamma_regularizer="l2"), shape)
    plain = _trained_torch(native[cls](4, eps=1e-3, momentum=0.3), shape)
    mine, theirs = from_torch_batchnorm(ours_torch), from_torch_batchnorm(plain)
    assert (mine.axis, mine.momentum, mine.epsilon, mine.center, mine.scale) == (1, 0.7, 1e-3, True, True)
    assert mine.built == theirs.built and mine.regularizers["gamma"] is not None
    for name in ("running_mean", "running_var", "weight", "bias"):
        torch.testing.assert_close(getattr(mine, name), getattr(theirs, name))
    for a, b in zip(_steps(mine, shape), _steps(theirs, shape)):
        torch.testing.assert_close(a, b)
    no_bias = from_torch_batchnorm(cls(4, bias=False))
    assert (no_bias.center, no_bias.scale, no_bias.bias) == (False, True, None)


@pytest.mark.parametrize("options", [{"renorm": True}, {"virtual_batch_size": 2}, {"synchronized": True}])
def test_from_torch_refuses_the_torch_family_extras(options: dict) -> None:
    with pytest.raises(ValueError, match=f"converts plain batch normalization.*received: .*{next(iter(options))}="):
        from_torch_batchnorm(bnkit.BatchNorm2d(3, **options))
    with pytest.raises(ValueError, match="momentum=None"):
        from_torch_batchnorm(bnkit.BatchNorm2d(3, momentum=None))
    with pytest.raises(TypeError, match="received: SyncBatchNorm"):
        from_torch_batchnorm(bnkit.SyncBatchNorm(3))
