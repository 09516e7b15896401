"""Rows in Keras' terms for a loaded Keras model (:class:`bnkit.keras.KerasModel`).

A ``KerasModel`` computes with torch modules in torch layouts (a Keras ``Conv1D`` runs as
``nn.Conv1d`` on ``(N, C, L)``), plus helpers the planner adds (``conv_pad``,
``dense_relu``, sequence masks, permutes).  In the Keras convention :func:`bnkit.summary`
lists it as Keras' ``model.summary()`` does instead: one row per layer of Keras'
``model.layers`` (its Keras name, its class as in the config, its output shape in Keras'
layout), the helpers merged into the row of the layer they serve, a nested model as one
row (Keras' default ``expand_nested=False``), InputLayer rows for a functional model (shown
as a one-element list, as tf_keras prints them).  What each row covers was recorded when
the model was built (``model.keras_layer_rows``); this module watches the layers' outputs
during the summary's pass, replays the model's steps to know every tensor slot's shape,
and permutes each layer output back to Keras' layout.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import torch
from torch import Tensor, nn

from ._summary_costs import tensor_bytes

if TYPE_CHECKING:
    from .summary import OutputShape, Row

__all__ = ["KerasRows", "keras_rows_for"]


class _Leaf(NamedTuple):
    shape: torch.Size
    nbytes: int


#: What a slot holds: a tensor's shape and bytes, a tuple of those (a module returning
#: several tensors), or None (never computed).
_Tree = Union[_Leaf, tuple[Any, ...], None]


def _tree(value: Any) -> _Tree:
    if isinstance(value, Tensor):
        return _Leaf(value.shape, tensor_bytes(value))
    if isinstance(value, (list, tuple)):
        return tuple(_tree(item) for item in value)
    return None


class KerasRows:
    """Watches one ``KerasModel`` pass and turns the torch rows into Keras rows."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: dict[str, list[_Tree]] = {}

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Record every output of every layer module while the block runs."""
        layers: Any = self.model.layers
        handles = []

        def hook(key: str) -> Callable[..., None]:
            def record(module: nn.Module, inputs: Any, output: Any) -> None:
                self.calls.setdefault(key, []).append(_tree(output))
            return record

        try:
            for key, module in layers.items():
                handles.append(module.register_forward_hook(hook(key)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _slots(self, inputs: tuple[Any, ...]) -> dict[int, _Tree]:
        """Replay the model's steps on the recorded outputs: what every slot held."""
        model: Any = self.model
        values: dict[int, _Tree] = {slot: _tree(x) for slot, x in zip(model.input_slots, inputs)}
        used: dict[str, int] = {}
        for step in model.steps:
            source = values.get(step.inputs[0]) if step.inputs else None
            if step.op == "permute":
                values[step.output] = _Leaf(torch.Size(source.shape[p] for p in step.perm), source.nbytes) \
                    if isinstance(source, _Leaf) and len(source.shape) == len(step.perm) else None
            elif step.op == "item":
                values[step.output] = source[step.index] \
                    if isinstance(source, tuple) and step.index < len(source) else None
            else:
                calls, n = self.calls.get(step.target, []), used.get(step.target, 0)
                used[step.target] = n + 1
                values[step.output] = calls[n] if n < len(calls) else None
        return values

    def rows(self, torch_rows: list[Row], paths: list[str], inputs: tuple[Any, ...],
             batch: int | None) -> list[Row]:
        """One row per Keras layer: the state and costs of its modules' rows, its output."""
        from .summary import Row

        slots = self._slots(inputs)
        owned: dict[str, list[Row]] = {}
        for row, path in zip(torch_rows, paths):
            parts = path.split(".")
            if len(parts) >= 2 and parts[0] == "layers":
                owned.setdefault(parts[1], []).append(row)
        result = []
        for layer in self.model.keras_layer_rows:  # type: ignore[union-attr]
            mine = [row for key in layer.modules for row in owned.get(key, [])]
            shapes, nbytes = [], 0
            for call in layer.outputs:
                leaves = [(slots.get(slot), perm) for slot, perm in call]
                if not leaves or any(not isinstance(leaf, _Leaf) for leaf, _ in leaves):
                    continue
                if layer.class_name != "InputLayer":  # the input is no activation (see Summary.input_bytes)
                    nbytes += sum(leaf.nbytes for leaf, _ in leaves)  # type: ignore[union-attr]
                shown = [_keras_shape(leaf.shape, perm, batch) for leaf, perm in leaves]  # type: ignore[union-attr]
                shapes.append(shown[0] if len(shown) == 1 and layer.class_name != "InputLayer" else shown)
            shape: OutputShape = None if not shapes else shapes[0] if all(s == shapes[0] for s in shapes) \
                else "multiple"
            params = sum(row.params for row in mine)
            result.append(Row(layer.name, layer.class_name, shape, params, sum(row.trainable for row in mine), 1,
                              len(shapes), sum(row.macs for row in mine), sum(row.param_bytes for row in mine),
                              nbytes))
        return result


def _keras_shape(size: torch.Size, perm: tuple[int, ...], batch: int | None) -> tuple[int | None, ...]:
    """A torch tensor's shape in Keras' layout (the torch tensor is the Keras one ``.permute(perm)``),
    its batch dimension shown as None."""
    dims: list[int | None] = list(size)
    if len(perm) == len(dims):
        keras: list[int | None] = [0] * len(dims)
        for position, axis in enumerate(perm):
            keras[axis] = dims[position]
        dims = keras
    if dims and batch is not None and dims[0] == batch:
        dims[0] = None
    return tuple(dims)


def keras_rows_for(model: nn.Module) -> KerasRows | None:
    """A :class:`KerasRows` for a model built from a Keras config, else None."""
    rows = getattr(model, "keras_layer_rows", None)
    needed = ("layers", "steps", "input_slots")
    if not rows or not all(hasattr(model, name) for name in needed) or not isinstance(model.layers, nn.ModuleDict):
        return None
    return KerasRows(model)
