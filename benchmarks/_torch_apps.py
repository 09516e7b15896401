"""ResNet50, MobileNetV2 and EfficientNetB0 written directly in PyTorch (NCHW), as the
Keras applications define them (same layers, same parameter counts; stride on ResNet's
first 1x1 conv and biases on its convs, as in Keras), for the inference baseline of
``bench_keras_zoo.py``.  Padding is symmetric, as a PyTorch author would write it."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        out, eps = 4 * width, 1.001e-5
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, stride), _bn(width, eps), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1), _bn(width, eps), nn.ReLU(),
            nn.Conv2d(width, out, 1), _bn(out, eps))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride), _bn(out, eps)) if shortcut else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet50(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3), _bn(64, 1.001e-5), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(_Bottleneck(cin, width, stride if index == 0 else 1, index == 0))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, act: type[nn.Module] | None,
             eps: float = 1e-3) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               _bn(cout, eps)]
    return layers + ([act()] if act is not None else [])


class _Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = _conv_bn(cin, mid, 1, 1, 1, nn.ReLU6) if expand != 1 else []
        layers += _conv_bn(mid, mid, 3, stride, mid, nn.ReLU6) + _conv_bn(mid, cout, 1, 1, 1, None)
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v2(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = _conv_bn(3, 32, 3, 2, 1, nn.ReLU6)
    cin = 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for index in range(repeats):
            layers.append(_Inverted(cin, cout, stride if index == 0 else 1, expand))
            cin = cout
    layers += _conv_bn(cin, 1280, 1, 1, 1, nn.ReLU6)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid, squeezed = cin * expand, max(1, int(cin * 0.25))
        layers = _conv_bn(cin, mid, 1, 1, 1, nn.SiLU) if expand != 1 else []
        self.expand_dw = nn.Sequential(*layers, *_conv_bn(mid, mid, kernel, stride, mid, nn.SiLU))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, squeezed, 1), nn.SiLU(),
                                nn.Conv2d(squeezed, mid, 1), nn.Sigmoid())
        self.project = nn.Sequential(*_conv_bn(mid, cout, 1, 1, 1, None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand_dw(x)
        y = self.project(y * self.se(y))
        return x + y if self.residual else y


class _Preprocess(nn.Module):
    """Keras' Rescaling(1/255) + Normalization(mean, variance) of EfficientNet's input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.45))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    def forward(self, x: Tensor) -> Tensor:
        return (x / 255.0 - self.mean) / self.std


def efficientnet_b0(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_Preprocess(), *_conv_bn(3, 32, 3, 2, 1, nn.SiLU)]
    cin = 32
    for kernel, repeats, cout, expand, stride in ((3, 1, 16, 1, 1), (3, 2, 24, 6, 2), (5, 2, 40, 6, 2),
                                                  (3, 3, 80, 6, 2), (5, 3, 112, 6, 1), (5, 4, 192, 6, 2),
                                                  (3, 1, 320, 6, 1)):
        for index in range(repeats):
            layers.append(_MBConv(cin, cout, kernel, stride if index == 0 else 1, expand))
            cin = cout
    layers += _conv_bn(cin, 1280, 1, 1, 1, nn.SiLU)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


APPS = {"ResNet50": resnet50, "MobileNetV2": mobilenet_v2, "EfficientNetB0": efficientnet_b0}
