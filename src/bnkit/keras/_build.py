"""Turn a parsed Keras graph into a :class:`KerasModel`, tracking shapes and layouts.

Each tensor is tracked by its Keras shape and a permutation ``perm`` (the torch tensor is
``keras_tensor.permute(perm)``).  Spatial layers ask for the layout they compute in
(channels-last Keras layers run on NCHW, i.e. ``perm = (0, 3, 1, 2)``); elementwise layers
accept any; a ``permute`` step is inserted only where a consumer needs another layout, and
each (tensor, layout) pair is permuted at most once.  Model inputs arrive and outputs leave
in Keras' layout.

The build is planned before anything is allocated: handlers return module *factories*
plus the Keras weight shapes, so :func:`load_model` can check the whole plan against the
file before creating a single tensor.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import nn

from .._repr import short
from ._config import LayerSpec, ModelSpec
from ._model import KerasModel, Step
from .errors import KerasFormatError

__all__ = ["MAX_BUILD_ELEMENTS", "Builder", "Info", "Plan", "identity", "moved", "plan_model"]

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

    def elements(self) -> int:
        return sum(math.prod(shape) for layer in self.weight_shapes.values() for shape in layer.values())

    def create(self) -> KerasModel:
        layers = {name: factory() for name, factory in self.factories.items()}
        return KerasModel(self.name, layers, self.steps, self.inputs, self.input_ranks, self.outputs,
                          self.slots, self.config, self.weight_shapes, self.notes)


class Builder:
    """The state handlers write into; see :mod:`bnkit.keras._handlers`."""

    def __init__(self, spec: ModelSpec, init: bool, source: object) -> None:
        self.spec, self.init, self.source = spec, init, source
        self.factories: dict[str, Callable[[], nn.Module]] = {}
        self.steps: list[Step] = []
        self.slots = 0
        self.cache: dict[tuple[int, Perm], int] = {}
        self.weight_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self.notes: list[str] = []
        self.reserved = {layer.name for layer in spec.layers}
        self.layer: LayerSpec | None = None

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

    def aux_name(self, suffix: str) -> str:
        name = f"{self.layer.name if self.layer else 'model'}_{suffix}"
        while name in self.reserved or name in self.factories:
            name += "_"
        return name

    def run(self, name: str, factory: Callable[[], nn.Module], slots: list[int], many: bool = False) -> int:
        """Register module ``name`` and a step calling it on ``slots``; returns the output slot."""
        self.factories[name] = factory
        out = self.new_slot()
        self.steps.append(Step("module", name, tuple(slots), out, many=many))
        return out


def plan_model(spec: ModelSpec, config: dict[str, Any], init: bool, source: object) -> Plan:
    """Plan a KerasModel for ``spec``; ``config`` is rewritten into bnkit's dialect."""
    from ._handlers import HANDLERS, input_layer

    builder = Builder(spec, init, source)
    infos: dict[str, Info] = {}
    canonical: list[dict[str, Any]] = []
    for layer in spec.layers:
        builder.layer = layer
        if layer.class_name == "InputLayer":
            infos[layer.name], layer_config = input_layer(builder, layer)
        else:
            arguments = [infos[ref] for ref in layer.inbound]
            infos[layer.name], layer_config = HANDLERS[layer.class_name](builder, layer, arguments)
        canonical.append({"module": "keras.layers", "class_name": layer.class_name, "config": layer_config,
                          "registered_name": None, "name": layer.name,
                          "inbound_nodes": [[[ref, 0, 0, {}] for ref in layer.inbound]] if layer.inbound else []})
    builder.layer = None
    inputs = [infos[name].slot for name in spec.inputs]
    ranks = [len(infos[name].shape) for name in spec.inputs]
    outputs = [builder.take(infos[name], identity(len(infos[name].shape))) for name in spec.outputs]
    _add_releases(builder, set(inputs) | set(outputs))
    model_config = {
        "module": "keras", "class_name": "Model", "registered_name": None,
        "config": {"name": spec.name, "trainable": True, "layers": canonical,
                   "input_layers": [[name, 0, 0] for name in spec.inputs],
                   "output_layers": [[name, 0, 0] for name in spec.outputs]},
    }
    plan = Plan(spec.name, builder.factories, builder.steps, inputs, ranks, outputs, builder.slots,
                model_config, builder.weight_shapes, builder.notes)
    if init and plan.elements() > MAX_BUILD_ELEMENTS:
        raise KerasFormatError(
            f"{source}: the config declares {plan.elements():,} weight values; expected at most "
            f"{MAX_BUILD_ELEMENTS:,} (an absurd or corrupted config)"
        )
    return plan


def _add_releases(builder: Builder, keep: set[int]) -> None:
    last_use: dict[int, int] = {}
    for index, step in enumerate(builder.steps):
        for slot in step.inputs:
            last_use[slot] = index
    for index, step in enumerate(builder.steps):
        release = tuple(s for s in set(step.inputs) if last_use[s] == index and s not in keep)
        builder.steps[index] = step._replace(release=release)
