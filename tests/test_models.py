"""VGG builders: Keras layer names, published parameter counts, options, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnkit
from bnkit.models import vgg16, vgg19

KERAS_VGG16_LAYERS = [
    "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool", "block4_conv1", "block4_conv2",
    "block4_conv3", "block4_pool", "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
    "flatten", "fc1", "fc2", "predictions",
]


def _count(model: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for _, b in model.named_buffers())
    return params, stats


def test_vgg16_has_keras_layer_names_in_order() -> None:
    names = [n for n in dict(vgg16().named_children()) if not n.endswith(("_relu", "_softmax"))]
    assert names == KERAS_VGG16_LAYERS


@pytest.mark.parametrize("build, params", [(vgg16, 138_357_544), (vgg19, 143_667_240)])
def test_published_parameter_counts(build, params: int) -> None:
    assert _count(build()) == (params, 0)


@pytest.mark.parametrize("build, total, non_trainable, placement", [
    (vgg16, 138_374_440, 8_448, "after_activation"),
    (vgg16, 138_374_440, 8_448, "before_activation"),
    (vgg19, 143_689_256, 11_008, "after_activation"),
])
def test_bn_counts_in_keras_convention(build, total: int, non_trainable: int, placement: str) -> None:
    params, stats = _count(build(batch_norm=placement))
    assert (params + stats, stats) == (total, non_trainable)


def test_placement_order() -> None:
    before = list(dict(vgg16(batch_norm="before_activation").named_children()))
    after = list(dict(vgg16(batch_norm="after_activation").named_children()))
    assert before[:4] == ["block1_conv1", "block1_conv1_bn", "block1_conv1_relu", "block1_conv2"]
    assert after[:4] == ["block1_conv1", "block1_conv1_relu", "block1_conv1_bn", "block1_conv2"]
    dense = list(dict(vgg16(batch_norm="before_activation", batch_norm_dense=True, dropout=0.5).named_children()))
    assert dense[dense.index("fc1"):dense.index("fc1") + 4] == ["fc1", "fc1_bn", "fc1_relu", "fc1_dropout"]
    assert all(isinstance(m, bnkit.BatchNormalization) for n, m in vgg16(batch_norm="after_activation").named_children()
               if n.endswith("_bn"))


def test_small_inputs_width_pooling_and_heads() -> None:
    net = vgg16(input_shape=(3, 32, 32), width=0.125, classes=10, batch_norm="before_activation",
                classifier_activation=None)
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and not torch.allclose(out.sum(1), torch.ones(4))
    probs = vgg16(input_shape=(3, 48, 64), width=0.125, classes=7)(torch.randn(2, 3, 48, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    features = vgg19(include_top=False, pooling="avg", input_shape=(3, 32, 32), width=0.125)(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 64)
    maps = vgg16(include_top=False, input_shape=(3, 64, 64), width=0.125)(torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 64, 2, 2)


def test_flatten_is_channels_first_so_keras_fc1_kernels_drop_in() -> None:
    net = vgg16(input_shape=(3, 64, 64), width=0.125)
    assert isinstance(net.flatten, bnkit.Flatten) and net.flatten.data_format == "channels_first"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"batch_norm": "before"}, "'before'"),
    ({"pooling": "mean"}, "'mean'"),
    ({"input_shape": (3, 16, 16)}, "(3, 16, 16)"),
    ({"input_shape": (224, 224)}, "(224, 224)"),
    ({"width": 0}, "width=0"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"classifier_activation": "relu"}, "'relu'"),
])
def test_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        vgg16(**kwargs)
    assert fragment in str(info.value)
