"""Turn a parsed Keras graph into a :class:`KerasModel`, tracking shapes and layouts.

Each tensor is tracked by its Keras shape and a permutation ``perm`` (the torch tensor is
``keras_tensor.permute(perm)``).  Spatial layers ask for the layout they compute in
(channels-last Keras layers run on NCHW, i.e. ``perm = (0, 3, 1, 2)``); elementwise layers
accept any; a ``permute`` step is inserted only where a consumer needs another layout, and
each (tensor, layout) pair is permuted at most once.  Model inputs arrive and outputs leave
in Keras' layout.

The build is planned before anything is allocated: handlers return module *factories*
plus the Keras weight shapes, so :func:`load_model` can check the whole plan against the
file before creating a single tensor.  The graph walk itself is in :mod:`bnkit.keras._plan`;
this module holds the state handlers write into and the layout helpers they share.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import initializers
from .._repr import short
from ._config import LayerSpec, ModelSpec
from ._entry import WeightRule, present_rules, resolve_tensor
from ._layers import activation_module, keras3_dialect
from ._model import KerasLayerRow, KerasModel, Step
from .errors import KerasFormatError

__all__ = ["MAX_BUILD_ELEMENTS", "Builder", "Info", "Perm", "Plan", "Shape", "identity", "image", "inverse", "layout",
           "module_keys", "moved", "spatial", "weighted"]

#: build_from_config refuses configs with more weight elements than this (2**31, 8 GiB of float32).
MAX_BUILD_ELEMENTS = 2**31

Shape = tuple[int | None, ...]
Perm = tuple[int, ...]


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def moved(rank: int) -> Perm:
    """The channels-first permutation of a channels-last tensor: NHWC -> NCHW."""
    return (0, rank - 1) + tuple(range(1, rank - 1)) if rank >= 3 else identity(rank)


def inverse(perm: Perm) -> Perm:
    result = [0] * len(perm)
    for i, p in enumerate(perm):
        result[p] = i
    return tuple(result)


class Info(NamedTuple):
    """A tensor of the graph: Keras shape (batch first), torch layout, slot."""

    shape: Shape
    perm: Perm
    slot: int


class Plan(NamedTuple):
    """Everything needed to create a KerasModel, before any tensor exists."""

    name: str
    factories: dict[str, Callable[[], nn.Module]]
    steps: list[Step]
    inputs: list[int]
    input_ranks: list[int]
    outputs: list[int]
    slots: int
    config: dict[str, Any]
    weight_shapes: dict[str, dict[str, tuple[int, ...]]]
    notes: list[str]
    classes: dict[str, str]
    names: dict[str, str]
    origins: dict[str, tuple[tuple[str, ...], str, str]]
    data_format: str
    keras_data_format: str
    layer_rows: tuple[KerasLayerRow, ...] = ()

    def elements(self) -> int:
        return sum(math.prod(shape) for layer in self.weight_shapes.values() for shape in layer.values())

    def create(self) -> KerasModel:
        layers = {name: factory() for name, factory in self.factories.items()}
        return KerasModel(self.name, layers, self.steps, self.inputs, self.input_ranks, self.outputs,
                          self.slots, self.config, self.weight_shapes, self.notes, self.classes, self.names,
                          self.origins, self.data_format, self.keras_data_format, self.layer_rows)


class Builder:
    """The state a layer entry's ``plan`` writes into (see :mod:`bnkit.keras._entry`).

    ``init`` is True for :func:`build_from_config` (initialise weights with the config's
    Keras initializers) and False when loading (weights come from the file).
    """

    def __init__(self, spec: ModelSpec, init: bool, source: object) -> None:
        self.spec, self.init, self.source = spec, init, source
        self.factories: dict[str, Callable[[], nn.Module]] = {}
        self.steps: list[Step] = []
        self.slots = 0
        self.cache: dict[tuple[int, Perm], int] = {}
        self.weight_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self.notes: list[str] = []
        self.keys = module_keys([layer.name for layer in spec.layers])
        self.reserved = {layer.name for layer in spec.layers} | set(self.keys.values())
        self.layer: LayerSpec | None = None
        self.call = 0  # which call of the layer is planned (a shared layer has several)
        #: layer name -> fields of its written config entry that differ from a plain
        #: ``keras.layers`` layer (an operation layer's class, module and inbound node)
        self.written: dict[str, dict[str, Any]] = {}
        #: (layer name, call) -> {keyword: n}: the call's last n input tensors were passed as
        #: that keyword argument (``initial_state=``), so the writer can record them so
        #: (Keras 3 takes them as keyword tensors; tf_keras as extra inbound tensors)
        self.call_kwargs: dict[tuple[str, int], dict[str, int]] = {}
        #: module key -> the flat layer whose plan registered it (its own module or a helper)
        self.owners: dict[str, str] = {}

    # ---- errors and notes ------------------------------------------------------------
    def error(self, problem: str, expected: str, received: object) -> KerasFormatError:
        layer = self.layer
        where = f"layer {layer.name!r} ({layer.class_name})" if layer else "model"
        return KerasFormatError(f"{self.source}: {where}: {problem}; expected {expected}; received {short(received, 200)}")

    def note(self, text: str) -> None:
        name = self.layer.name if self.layer else "model"
        self.notes.append(f"{name}: {text}")

    # ---- slots, layouts, modules -------------------------------------------------------
    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def take(self, x: Info, perm: Perm) -> int:
        """The slot holding ``x`` in layout ``perm`` (adds one permute step if needed)."""
        if x.perm == perm:
            return x.slot
        key = (x.slot, perm)
        if key not in self.cache:
            inv = inverse(x.perm)
            slot = self.new_slot()
            self.steps.append(Step("permute", "", (x.slot,), slot, tuple(inv[p] for p in perm)))
            self.cache[key] = slot
        return self.cache[key]

    def item(self, slot: int, index: int) -> int:
        """The slot of output ``index`` of a module that returned a tuple into ``slot``."""
        out = self.new_slot()
        self.steps.append(Step("item", "", (slot,), out, index=index))
        return out

    def aux_name(self, suffix: str) -> str:
        """A fresh module key for a helper of the current layer (``conv_pad``, ``conv_relu``)."""
        name = f"{self.keys[self.layer.name] if self.layer else 'model'}_{suffix}"
        while name in self.reserved or name in self.factories:
            name += "_"
        return name

    def activate(self, name: str, slot: int, perm: Perm) -> int:
        """Apply the Keras activation ``name`` (a layer's ``activation=``) to ``slot``."""
        if name == "linear":
            return slot
        dim = perm.index(len(perm) - 1)
        keras3 = self.layer is not None and keras3_dialect(self.layer.config)  # hard_sigmoid changed in Keras 3
        return self.run(self.aux_name(name), lambda: activation_module(name, dim, keras3), [slot])

    def run(self, name: str, factory: Callable[[], nn.Module], slots: list[int], many: bool = False) -> int:
        """Register module ``name`` (a layer's Keras name, stored under its module key, or an
        :meth:`aux_name`) and a step calling it on ``slots``; returns the output slot."""
        name = self.keys.get(name, name)
        repeated = self.call > 0 and self.layer is not None and name == self.keys.get(self.layer.name)
        if not repeated:  # a shared layer's later calls reuse its module
            self.factories[name] = factory
            if self.layer is not None:
                self.owners.setdefault(name, self.layer.name)
        out = self.new_slot()
        self.steps.append(Step("module", name, tuple(slots), out, many=many))
        return out


_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def module_keys(names: Sequence[str]) -> dict[str, str]:
    """A torch module key for every Keras layer name: the name itself when it is made of
    letters, digits, '_' and '-', else the name with every other character replaced by '_'
    (torch keys cannot hold '.'; tf_keras names hold '/'), made unique against every name
    and key by appending '_'."""
    taken = set(names)
    keys: dict[str, str] = {}
    for name in names:
        if _SAFE.fullmatch(name):
            keys[name] = name
    for name in names:
        if name not in keys:
            key = re.sub(r"[^A-Za-z0-9_-]", "_", name)
            while key in taken:
                key += "_"
            taken.add(key)
            keys[name] = key
    return keys


def spatial(x: Info, data_format: str) -> tuple[int | None, ...]:
    """(channels, *spatial sizes) of a rank >= 3 Keras tensor."""
    if data_format == "channels_last":
        return (x.shape[-1], *x.shape[1:-1])
    return tuple(x.shape[1:])


def image(shape_cs: Sequence[int | None], data_format: str, batch: int | None) -> Shape:
    """The Keras shape of (channels, *spatial sizes) in ``data_format``."""
    c, *sizes = shape_cs
    return (batch, *sizes, c) if data_format == "channels_last" else (batch, c, *sizes)


def layout(data_format: str, rank: int = 4) -> Perm:
    """The torch layout a spatial layer computes in: channels first."""
    return moved(rank) if data_format == "channels_last" else identity(rank)


def weighted(b: Builder, make: Callable[[str | None], nn.Module], rules: Sequence[WeightRule],
             inits: dict[str, Any], trainable: bool) -> Callable[[], nn.Module]:
    """A factory for a module with Keras weights, built by ``make(device)``.

    When loading, the module is made on "meta" and every parameter and buffer replaced by
    an empty CPU tensor (the file fills those in ``rules``; ``to_empty`` is slow on first
    use).  Otherwise it is made normally and each weight whose Keras initializer is given
    in ``inits`` (keyed by Keras weight name) is drawn in Keras' layout.
    """
    init = b.init

    def factory() -> nn.Module:
        if not init:
            module = make("meta")
            for sub in module.modules():
                for name, parameter in list(sub.named_parameters(recurse=False)):
                    setattr(sub, name, nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype)))
                for name, buffer in list(sub.named_buffers(recurse=False)):
                    sub._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
        else:
            module = make(None)
            with torch.no_grad():
                for rule in present_rules(module, rules):
                    tensor = resolve_tensor(module, rule.torch)
                    if inits.get(rule.keras) is not None and tensor is not None:
                        values = initializers.get(inits[rule.keras])(rule.keras_shape(tensor))
                        rule.view(tensor, None).copy_(values)
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        return module

    return factory
