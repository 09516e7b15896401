"""The callables timed by ``bench_batchnorm.py``: bnkit variants and native baselines.

Every callable of a block works on the *same* input tensors, so they differ only in the
layer.  Training callables do what one training step does to a BN layer: clear the
gradients (set to ``None``, so no accumulation kernel runs), forward with
``training=True``, ``backward`` with a fixed upstream gradient ``dy`` that has the
input's memory format.  Inference callables run under ``torch.no_grad``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import bnkit

RENORM_CLIPPING: dict[str, float] = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}
VIRTUAL_BATCH_SIZE = 8
VARIANTS: tuple[str, ...] = ("plain", "renorm", "ghost")
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")
MODES: tuple[str, ...] = ("train", "infer")


@dataclass(frozen=True)
class Named:
    name: str
    fn: Callable[[], object]


def make_bnkit_layer(variant: str, channels: int) -> bnkit.BatchNormalization:
    """A bnkit layer for a variant name (``plain``, ``renorm`` or ``ghost``)."""
    if variant == "plain":
        return bnkit.BatchNormalization(axis=1, num_features=channels)
    if variant == "renorm":
        return bnkit.BatchNormalization(
            axis=1, renorm=True, renorm_clipping=RENORM_CLIPPING, num_features=channels
        )
    if variant == "ghost":
        return bnkit.BatchNormalization(
            axis=1, virtual_batch_size=VIRTUAL_BATCH_SIZE, num_features=channels
        )
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def make_native_layer(shape: Sequence[int]) -> nn.Module:
    channels = shape[1]
    if len(shape) == 4:
        return nn.BatchNorm2d(channels)
    if len(shape) == 2:
        return nn.BatchNorm1d(channels)
    raise ValueError(f"only 2-D and 4-D shapes are benchmarked; received {tuple(shape)}")


def make_input(shape: Sequence[int], layout: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Input ``x`` and upstream gradient ``dy`` (float32) in the requested memory format."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen) * 2.0 + 0.5
    dy = torch.randn(*shape, generator=gen)
    if layout == "channels_last":
        if len(shape) != 4:
            raise ValueError("channels_last needs a 4-D shape")
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    elif layout != "nchw" and not (layout == "2d" and len(shape) == 2):
        raise ValueError(f"unknown layout {layout!r}")
    return x, dy


def _train_step(layer: nn.Module, x: Tensor, dy: Tensor, keras_call: bool) -> Callable[[], object]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        y = layer(x, training=True) if keras_call else layer(x)
        y.backward(dy)

    return step


def _infer_step(layer: nn.Module, x: Tensor, keras_call: bool) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return layer(x, training=False) if keras_call else layer(x)

    return step


def bn_block(shape: Sequence[int], layout: str, mode: str, variants: Sequence[str]) -> list[Named]:
    """Baseline first, then one callable per bnkit variant, all on the same tensors."""
    x, dy = make_input(shape, layout)
    native = make_native_layer(shape)
    if mode == "train":
        x.requires_grad_(True)
        native.train()
        fns = [Named("torch", _train_step(native, x, dy, keras_call=False))]
        for variant in variants:
            layer = make_bnkit_layer(variant, shape[1])
            fns.append(Named(variant, _train_step(layer, x, dy, keras_call=True)))
        return fns
    if mode == "infer":
        native.eval()
        fns = [Named("torch", _infer_step(native, x, keras_call=False))]
        for variant in variants:
            layer = make_bnkit_layer(variant, shape[1]).eval()
            fns.append(Named(variant, _infer_step(layer, x, keras_call=True)))
        return fns
    raise ValueError(f"unknown mode {mode!r}")


def dropout_block(shape: Sequence[int]) -> list[Named]:
    """bnkit.Dropout(0.5) vs torch.nn.Dropout(0.5), forward + backward."""
    x, dy = make_input(shape, "nchw")
    x.requires_grad_(True)
    ours, theirs = bnkit.Dropout(0.5).train(), nn.Dropout(0.5).train()

    def native() -> None:
        x.grad = None
        theirs(x).backward(dy)

    def bnk() -> None:
        x.grad = None
        ours(x, training=True).backward(dy)

    return [Named("torch.nn.Dropout", native), Named("bnkit.Dropout", bnk)]


def noise_shape_block(shape: Sequence[int], backward: bool) -> list[Named]:
    """Per-channel dropout mask vs one broadcast multiply ``x * s`` with s of shape (B, C, 1, 1)."""
    x, dy = make_input(shape, "nchw")
    scale = torch.rand(shape[0], shape[1], 1, 1) + 0.5
    layer = bnkit.Dropout(0.5, noise_shape=(None, None, 1, 1)).train()
    if backward:
        x.requires_grad_(True)

        def multiply() -> None:
            x.grad = None
            (x * scale).backward(dy)  # type: ignore[no-untyped-call]

        def drop() -> None:
            x.grad = None
            layer(x, training=True).backward(dy)

    else:

        def multiply() -> None:
            with torch.no_grad():
                x * scale

        def drop() -> None:
            with torch.no_grad():
                layer(x, training=True)

    return [Named("x * s", multiply), Named("bnkit.Dropout(noise_shape)", drop)]
