"""Keras-style model summaries for any ``nn.Module``: one forward pass, one table.

:func:`summary` runs a single forward pass (eval mode, ``torch.no_grad``, every module's
mode restored afterwards) with cheap forward hooks and returns a :class:`Summary`: the rows
as data, the totals, and ``str()`` giving the table. Nothing is printed unless ``print_fn``
is given.

Counting conventions (``style``):

* ``"keras"`` (default): a row's "Param #" is Keras' ``layer.count_params()``: parameters
  plus persistent floating-point buffers (``running_mean``, ``running_var``, the renorm
  statistics), the buffers counted as non-trainable. Integer buffers
  (``num_batches_tracked``) and non-persistent buffers never count. Parameters with
  ``requires_grad=False`` are non-trainable.
* ``"torch"``: parameters only, as torchinfo counts them.

Rows and decisions (documented here once):

* Rows are the modules without children, plus containers that own parameters or buffers
  directly (counting only their own state), in the order of their first call; the root gets
  a row only when it is such a module and is then named after the model.
* A module called several times, or reachable under two names, is one row (its first name;
  ``calls`` says how often it ran; the output shape is ``"multiple"`` when the calls gave
  different shapes, as in Keras). Totals count every tensor once, by identity, so shared
  modules and tied weights are not double counted.
* A module that never ran is listed after the called ones with output shape ``None``,
  printed ``(unused)``. Unlike Keras' ``0 (unused)`` (an unbuilt Keras layer has no weights)
  its parameters exist in PyTorch, so they are shown and counted in the totals; a lazy
  module that never ran has uninitialized parameters and counts 0.
* Output shapes replace the leading dimension by ``None`` when it equals the batch size of
  the pass (1 unless ``batch_size`` or ``input_data`` says otherwise); several tensor outputs
  (tuples, lists, dict values, nested) give a list of shapes.

Costs (:mod:`bnkit._summary_costs` has the rules): every row also records its multiply-adds
(``macs``: convolutions, linear layers and batch norms, summed over its calls), the bytes
of its counted tensors (``param_bytes``) and of its outputs (``output_bytes``); the summary
totals them. ``macs=True`` / ``memory=True`` show them as columns and totals, as
torchinfo's ``Mult-Adds`` and size lines do.

Loaded Keras models (:class:`bnkit.keras.KerasModel`): in the Keras convention the rows are
Keras' own (:mod:`bnkit._summary_keras`): one per layer of Keras' ``model.layers``, with its
Keras name, its class as in the config and its output shape in Keras' layout whatever torch
layout it computes in (``channels_last`` changes nothing there); the modules bnkit adds for a
layer (paddings, activations split from a ``Dense``, sequence masks) count in that layer's
row, a nested model is one row (Keras' ``expand_nested=False``), a functional model's inputs
are ``InputLayer`` rows shown as tf_keras prints them, ``[(None, 64, 64, 1)]``, and the title
is the Keras model's name.  Keras 3 also prints a ``NotEqual`` row for the mask of an
``Embedding(mask_zero=True)`` in a functional model; bnkit computes that mask inside the
Embedding's row.  ``style="torch"`` lists the torch modules, as for any other model.

Inputs: :mod:`bnkit._summary_inputs` builds and validates them from ``input_shape`` or
``input_data``.

Shapes: PyTorch's channels-first order by default; ``channels_last=True`` shows every
output of three or more dimensions with its channel dimension (1) moved last, as Keras'
``model.summary()`` prints the same network in its default ``channels_last`` layout, so the
two tables can be compared line by line.

Layouts: ``"keras2"``, the classic Keras 2 (<= 2.6) table of seed 000 (65 wide, columns end
at 29/55/65, underscores between rows, totals with thousands separators); ``"torch"``, a
torchsummary-like table (90 wide, ``-1`` for the batch). Columns widen to their longest
cell, so full type names such as ``BatchNormalization`` are never cut (Keras 2 cut them).
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from ._repr import short

from . import _summary_table
from ._summary_costs import call_macs, output_bytes, tensor_bytes
from ._summary_inputs import model_inputs
from ._summary_keras import keras_rows_for

__all__ = ["LAYOUTS", "STYLES", "Row", "Summary", "summary"]

STYLES = ("keras", "torch")
LAYOUTS = ("keras2", "torch")

Shape = tuple[Union[int, None], ...]
#: One shape, a list of shapes (several outputs), ``"multiple"`` (calls differed) or
#: ``None`` (the module never ran).
OutputShape = Union[Shape, list[Shape], str, None]


@dataclass(frozen=True)
class Row:
    """One line of the table: a module, its output shape and its own state."""

    name: str
    type: str
    output_shape: OutputShape
    params: int
    trainable: int
    depth: int
    calls: int = 1
    macs: int = 0  # multiply-adds of all its calls
    param_bytes: int = 0  # bytes of its counted parameters/buffers
    output_bytes: int = 0  # bytes of the outputs of all its calls

    @property
    def non_trainable(self) -> int:
        """Counted elements not trained by gradient descent."""
        return self.params - self.trainable

    @property
    def unused(self) -> bool:
        """The module never ran during the summary's forward pass."""
        return self.calls == 0


@dataclass(frozen=True)
class Summary:
    """What :func:`summary` found; ``str(summary)`` is the table in ``layout``."""

    rows: tuple[Row, ...]
    total: int
    trainable: int
    non_trainable: int
    style: str
    model_name: str = "model"
    layout: str = "keras2"
    macs: int = 0  # multiply-adds of the whole forward pass
    param_bytes: int = 0  # every counted tensor once
    activation_bytes: int = 0  # the outputs of every row
    input_bytes: int = 0
    show_macs: bool = field(default=False, compare=False)
    show_memory: bool = field(default=False, compare=False)
    channels_last: bool = False

    @property
    def estimated_bytes(self) -> int:
        """Input, forward activations and counted tensors together (torchinfo's estimate, forward only)."""
        return self.input_bytes + self.activation_bytes + self.param_bytes

    def lines(self, layout: str | None = None) -> list[str]:
        """The table as lines without newlines, in ``layout`` (default: ``self.layout``)."""
        layout = self.layout if layout is None else _check_choice("layout", layout, LAYOUTS)
        return _summary_table.keras2_lines(self) if layout == "keras2" else _summary_table.torch_lines(self)

    def __str__(self) -> str:
        return "\n".join(self.lines())


def summary(
    model: nn.Module,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    style: str = "keras",
    batch_size: int | None = None,
    input_data: Tensor | Sequence[Tensor] | Mapping[str, Tensor] | None = None,
    dtypes: torch.dtype | Sequence[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    print_fn: Callable[[str], Any] | None = None,
    layout: str = "keras2",
    macs: bool = False,
    memory: bool = False,
    channels_last: bool = False,
) -> Summary:
    """Summarize ``model`` by running it once; return a :class:`Summary`.

    Args:
        model: any ``nn.Module``.
        input_shape: one input shape without the batch dimension, e.g. ``(3, 224, 224)``,
            or a list of such shapes for a model taking several positional inputs. Inputs
            are zeros (the global random state is left alone).
        style: ``"keras"`` (parameters + persistent float buffers, Keras' numbers; a loaded
            Keras model is listed by its Keras layers) or ``"torch"`` (parameters only, one
            row per torch module).
        batch_size: batch of the generated inputs (default 1); only with ``input_shape``.
        input_data: instead of ``input_shape``: a tensor, a sequence of tensors (positional
            inputs) or a mapping (keyword inputs).
        dtypes: dtype of the generated inputs, one for all or one per input (default: the
            dtype of the model's first floating-point parameter, else torch's default).
        device: where inputs go (default: the device of the model's first tensor, else CPU).
        print_fn: called with each line of the table, e.g. ``print``.
        layout: ``"keras2"`` (classic Keras 2 table) or ``"torch"`` (torchsummary-like).
        macs: show a ``MACs`` column (multiply-adds per row) and their total.
        memory: show ``Param bytes``/``Output bytes`` columns and the input, activation,
            parameter and estimated total sizes.
        channels_last: show outputs of 3+ dimensions channels-last, as Keras prints them
            (the Keras rows of a loaded Keras model are in Keras' layout already).

    Raises:
        TypeError / ValueError: for invalid arguments, naming the argument and the value.
        RuntimeError: when the model fails on the generated inputs (the cause is chained).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received: {type(model).__name__} {short(model)}")
    style = _check_choice("style", style, STYLES)
    layout = _check_choice("layout", layout, LAYOUTS)
    for name, value in (("macs", macs), ("memory", memory), ("channels_last", channels_last)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False; received: {name}={value!r:.80}")
    if print_fn is not None and not callable(print_fn):
        raise TypeError(f"`print_fn` must be a callable taking one string, or None; received: {short(print_fn)}")
    args, kwargs, batch = model_inputs(model, input_shape, input_data, batch_size, dtypes, device)

    model_name = type(model).__name__.lower()
    display = getattr(model, "display_names", None)  # e.g. a loaded Keras model's layer names
    shown: dict[str, str] = display() if callable(display) else {}
    named = [(name, module) for name, module in model.named_modules()
             if _owns_state(module) or next(module.children(), None) is None]
    modules = [(shown.get(name, name) or model_name, name.count(".") + 1 if name else 0, module)
               for name, module in named]
    keras = keras_rows_for(model) if style == "keras" else None
    with keras.watch() if keras is not None else contextlib.nullcontext():
        records = _run(model, modules, args, kwargs)
    rows, seen, order = _rows(modules, records, style, batch, channels_last)
    total_macs = sum(row.macs for row in rows)
    if keras is not None:  # a loaded Keras model: its Keras layers, as Keras lists them
        model_name = str(getattr(model, "name", model_name))
        rows = keras.rows(rows, [named[i][0] for i in order], args, batch)
    total = sum(size for size, _, _ in seen.values())
    trained = sum(size for size, trains, _ in seen.values() if trains)
    inputs = sum(tensor_bytes(t) for t in (*args, *kwargs.values()) if isinstance(t, Tensor))
    result = Summary(tuple(rows), total, trained, total - trained, style, model_name, layout,
                     macs=total_macs, param_bytes=sum(n for _, _, n in seen.values()),
                     activation_bytes=sum(row.output_bytes for row in rows), input_bytes=inputs,
                     show_macs=macs, show_memory=memory, channels_last=channels_last)
    if print_fn is not None:
        for line in result.lines():
            print_fn(line)
    return result


def _rows(
    modules: list[tuple[str, int, nn.Module]], records: list[_Record], style: str, batch: int | None,
    channels_last: bool = False,
) -> tuple[list[Row], dict[int, tuple[int, bool, int]], list[int]]:
    """Rows in first-call order (unused last); every counted tensor once: id -> (size, trainable,
    bytes); the index in ``modules`` of every row."""
    rows: list[Row] = []
    seen: dict[int, tuple[int, bool, int]] = {}
    order = sorted(range(len(modules)), key=lambda i: records[i][0])  # stable: unused keep their order
    for key in order:
        name, depth, module = modules[key]
        params = trainable = size_bytes = 0
        for tensor, trains in _counted(module, style):
            size = 0 if is_lazy(tensor) else tensor.numel()
            nbytes = 0 if is_lazy(tensor) else tensor_bytes(tensor)
            seen[id(tensor)] = (size, trains, nbytes)
            params, trainable = params + size, trainable + (size if trains else 0)
            size_bytes += nbytes
        _, calls, shape, macs, out_bytes = records[key]
        rows.append(Row(name, type(module).__name__, _display_shape(shape, batch, channels_last), params, trainable,
                        depth, calls, macs, size_bytes, out_bytes))
    return rows, seen, order


# ---- the forward pass -----------------------------------------------------------------
_Raw = Union[torch.Size, list[torch.Size], str, None]
_Record = tuple[float, int, _Raw, int, int]  # first-call order, calls, raw shape, MACs, output bytes


def _run(
    model: nn.Module, modules: list[tuple[str, int, nn.Module]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[_Record]:
    """Run the model once with hooks; per module: (first-call order, calls, raw shape, MACs, output bytes)."""
    unused = float("inf")
    records: list[list[Any]] = [[unused, 0, None, 0, 0] for _ in modules]
    counter = itertools.count()

    def pre_hook(key: int, module: nn.Module, inputs: Any) -> None:
        if records[key][0] == unused:
            records[key][0] = next(counter)

    def post_hook(key: int, module: nn.Module, inputs: Any, output: Any) -> None:
        pre_hook(key, module, inputs)  # modules without children are ordered at their end
        record, shape = records[key], _raw_shape(output)
        if record[1] == 0:
            record[2] = shape
        elif record[2] != shape:
            record[2] = "multiple"
        record[1] += 1
        record[3] += call_macs(module, inputs, output)
        record[4] += output_bytes(output)

    modes = [(module, module.training) for module in model.modules()]
    handles = []
    try:
        for key, (_, _, module) in enumerate(modules):
            if next(module.children(), None) is not None:  # a container: order by its start
                handles.append(module.register_forward_pre_hook(partial(pre_hook, key)))
            handles.append(module.register_forward_hook(partial(post_hook, key)))
        model.eval()
        with torch.no_grad():
            try:
                model(*args, **kwargs)
            except Exception as err:
                shapes = [tuple(t.shape) for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
                raise RuntimeError(
                    f"`model` failed on the summary's forward pass; expected it to accept inputs of "
                    f"shapes {shapes} (check `input_shape`, `dtypes`, `device`); received "
                    f"{type(err).__name__}: {err}"
                ) from err
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return [(r[0], r[1], r[2], r[3], r[4]) for r in records]


def _raw_shape(output: Any) -> _Raw:
    if isinstance(output, Tensor):
        return output.shape
    shapes: list[torch.Size] = []
    stack = [output]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            shapes.append(item.shape)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
    return shapes


def _display_shape(raw: _Raw, batch: int | None, channels_last: bool = False) -> OutputShape:
    if raw is None or isinstance(raw, str):
        return raw

    def one(size: torch.Size) -> Shape:
        dims: list[int | None] = list(size)
        if dims and batch is not None and dims[0] == batch:
            dims[0] = None
        if channels_last and len(dims) >= 3:  # (N, C, *spatial) -> (N, *spatial, C)
            dims = [dims[0], *dims[2:], dims[1]]
        return tuple(dims)

    return one(raw) if isinstance(raw, torch.Size) else [one(s) for s in raw]


# ---- counting -------------------------------------------------------------------------
def _owns_state(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None or \
        next(module.buffers(recurse=False), None) is not None


def _counted(module: nn.Module, style: str) -> list[tuple[Tensor, bool]]:
    """The module's own counted tensors with their trainability."""
    tensors: list[tuple[Tensor, bool]] = [(p, p.requires_grad) for p in module.parameters(recurse=False)]
    if style == "keras":
        transient = getattr(module, "_non_persistent_buffers_set", set())
        for name, buffer in module.named_buffers(recurse=False):
            if name not in transient and (is_lazy(buffer) or buffer.is_floating_point()):
                tensors.append((buffer, False))
    return tensors


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; received: {name}={short(value)}")
    return value
