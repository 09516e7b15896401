"""Small models for ``tests/test_torch_tools.py`` (torchvision/timm are not installable here).

* :class:`ConvNet`: ``Conv2d -> BN -> ReLU -> Conv2d -> BN -> ReLU -> pool -> Linear``.
* :class:`MLP`: ``Linear -> BatchNorm1d -> ReLU -> Linear``.
* :class:`Nested`: a BN inside a submodule inside a submodule, a functional residual add.
* :class:`ResNet`: a narrow ResNet of :class:`BasicBlock` s with a ``norm_layer`` argument in the
  manner of torchvision's ``resnet18(norm_layer=...)`` (default ``nn.BatchNorm2d``).
* :class:`EfficientNetLike`: a stem and two MBConv blocks (1x1 expansion, depthwise conv, BN,
  SiLU, squeeze-and-excitation, 1x1 projection, residual), default ``nn.BatchNorm2d``.

Every BN is built by ``norm_layer(num_channels)``; ``norm_layer`` is any callable.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]

__all__ = ["BasicBlock", "ConvNet", "EfficientNetLike", "MBConv", "MLP", "Nested", "NormLayer", "ResNet",
           "SqueezeExcite"]


class ConvNet(nn.Module):
    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d, in_channels: int = 3, width: int = 6,
                 classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm_layer(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), norm_layer(width), nn.ReLU(),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


class MLP(nn.Module):
    def __init__(self, norm_layer: NormLayer = nn.BatchNorm1d, features: int = 7, hidden: int = 8,
                 classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.bn = norm_layer(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.bn(self.fc1(x))))


class _Inner(nn.Module):
    def __init__(self, norm_layer: NormLayer, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 1)
        self.norm = norm_layer(width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x))) + x


class Nested(nn.Module):
    """BN layers two levels down, reached through a Sequential and a ModuleDict."""

    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), norm_layer(width))
        self.blocks = nn.ModuleDict({"a": _Inner(norm_layer, width), "b": nn.Sequential(_Inner(norm_layer, width))})
        self.out = nn.Conv2d(width, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.blocks["b"](self.blocks["a"](x))
        return self.out(x).flatten(1)


def conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, and a projection shortcut (1x1 conv + BN) when the shape changes."""

    def __init__(self, inp: int, out: int, stride: int = 1, norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inp, out, stride)
        self.bn1 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out, out)
        self.bn2 = norm_layer(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride=stride, bias=False), norm_layer(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """A small ResNet: stem, one stage per entry of ``widths`` (``blocks`` blocks each), pool, fc."""

    def __init__(self, widths: Sequence[int] = (8, 16), blocks: int = 1, classes: int = 5,
                 norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inp = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(inp, width, 1 if i == 0 else 2, norm_layer)]
            stage += [BasicBlock(width, width, 1, norm_layer) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inp = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + BN + SiLU, depthwise 3x3 + BN + SiLU, SE, 1x1 project + BN."""

    def __init__(self, inp: int, out: int, expand: int = 4, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        hidden = inp * expand
        self.expand = nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False), norm_layer(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            norm_layer(hidden), nn.SiLU(),
        )
        self.se = SqueezeExcite(hidden, max(1, inp // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, out, 1, bias=False), norm_layer(out))
        self.residual = stride == 1 and inp == out

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return y + x if self.residual else y


class EfficientNetLike(nn.Module):
    def __init__(self, classes: int = 5, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), norm_layer(8), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(8, 8, norm_layer=norm_layer),
                                    MBConv(8, 12, stride=2, norm_layer=norm_layer))
        self.head = nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), norm_layer(16), nn.SiLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))
