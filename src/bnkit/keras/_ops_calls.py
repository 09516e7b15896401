"""Handlers of operation layers: tf_keras ``TFOpLambda`` and Keras 3 operations.

The function name (``config["function"]``: ``"math.multiply"``, ``"__operators__.add"``,
``"numpy.Multiply"``, ``"nn.Relu6"``...) is looked up in :data:`FUNCTIONS`; anything else
raises :class:`UnsupportedLayerError` naming it.  Arguments are bound like Python binds
them (positional, then keyword, then the op's defaults); Keras 3 keeps an operation's own
settings (``axis``, ``keepdims``...) in its config.  Constant operands may be numbers or
nested lists; they broadcast like NumPy.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .._repr import short
from ._build import Builder, Info, identity
from ._call_args import CallArgs, TensorArg
from ._config import LayerSpec
from ._entry import LayerEntry
from ._layers import ACTIVATIONS, MultiSoftmax, activation_module
from ._ops import Result, as_torch, axes, broadcast_shapes, common, constant, permuted
from ._ops_layers import ConstantOp, Reduce, Reshape, Slot
from ._options import is_int
from .errors import UnsupportedLayerError

__all__ = ["ENTRIES", "FUNCTIONS", "operation"]


class Function(NamedTuple):
    """An operation: its kind, bnkit's name for it, its parameters in call order and defaults."""

    kind: str  # "binary", "unary", "softmax", "reduce", "reshape", "transpose"
    op: str
    params: tuple[str, ...]
    defaults: dict[str, Any] = {}


def _table() -> dict[str, Function]:
    table: dict[str, Function] = {}
    for op, names in {
        "add": ("__operators__.add", "math.add", "numpy.Add"),
        "subtract": ("__operators__.sub", "math.subtract", "numpy.Subtract"),
        "multiply": ("__operators__.mul", "math.multiply", "numpy.Multiply"),
        "divide": ("__operators__.truediv", "math.truediv", "math.divide", "numpy.Divide", "numpy.TrueDivide"),
        "maximum": ("math.maximum", "numpy.Maximum"), "minimum": ("math.minimum", "numpy.Minimum"),
        "power": ("__operators__.pow", "math.pow", "numpy.Power"),
    }.items():
        for name in names:
            table[name] = Function("binary", op, ("x1", "x2") if name.startswith("numpy.") else ("x", "y"))
    unary = {
        "negative": ("math.negative", "__operators__.neg", "numpy.Negative"), "abs": ("math.abs", "numpy.Abs"),
        "square": ("math.square", "numpy.Square"), "sqrt": ("math.sqrt", "numpy.Sqrt"), "rsqrt": ("math.rsqrt",),
        "exponential": ("math.exp", "numpy.Exp"), "log": ("math.log", "numpy.Log"),
        "sigmoid": ("math.sigmoid", "nn.sigmoid", "nn.Sigmoid"), "tanh": ("math.tanh", "nn.tanh", "numpy.Tanh"),
        "relu": ("nn.relu", "nn.Relu"), "relu6": ("nn.relu6", "nn.Relu6"), "elu": ("nn.elu",),
        "selu": ("nn.selu", "nn.Selu"), "silu": ("nn.silu", "nn.swish", "nn.Silu"),
        "softplus": ("math.softplus", "nn.softplus", "nn.Softplus"), "softsign": ("nn.softsign", "nn.Softsign"),
        "hard_sigmoid": ("nn.HardSigmoid",), "hard_silu": ("nn.HardSilu",), "mish": ("nn.Mish",),
    }
    for op, names in unary.items():
        for name in names:
            table[name] = Function("unary", op, ("x",))
    table["nn.gelu"] = Function("unary", "gelu", ("features", "approximate"), {"approximate": False})
    table["nn.Gelu"] = Function("unary", "gelu", ("x",), {"approximate": True})  # keras.ops.gelu's default
    table["nn.leaky_relu"] = Function("unary", "leaky_relu", ("features", "alpha"), {"alpha": 0.2})
    table["nn.LeakyRelu"] = Function("unary", "leaky_relu", ("x",), {"negative_slope": 0.2})
    table["nn.Elu"] = Function("unary", "elu", ("x",), {"alpha": 1.0})
    for name, log in (("nn.softmax", False), ("nn.log_softmax", True)):
        table[name] = Function("softmax", "log_softmax" if log else "softmax", ("logits", "axis"), {"axis": -1})
    table["nn.Softmax"] = Function("softmax", "softmax", ("x",), {"axis": -1})
    table["nn.LogSoftmax"] = Function("softmax", "log_softmax", ("x",), {"axis": -1})
    for op in ("mean", "sum", "max", "min"):
        table[f"math.reduce_{op}"] = Function("reduce", op, ("input_tensor", "axis", "keepdims"),
                                              {"axis": None, "keepdims": False})
        table[f"numpy.{op.capitalize()}"] = Function("reduce", op, ("x",), {"axis": None, "keepdims": False})
    table["reshape"] = Function("reshape", "reshape", ("tensor", "shape"))
    table["numpy.Reshape"] = Function("reshape", "reshape", ("x",))
    for name in ("transpose", "compat.v1.transpose"):
        table[name] = Function("transpose", "transpose", ("a", "perm"), {"perm": None})
    table["numpy.Transpose"] = Function("transpose", "transpose", ("x",), {"axes": None})
    table["__operators__.getitem"] = Function("slice", "getitem", ("tensor", "slice_spec"))
    return table


#: Supported function names (tf_keras ``TFOpLambda`` and Keras 3 ``<module>.<class>``).
FUNCTIONS: dict[str, Function] = _table()
_IGNORED = ("name",)
_CONFIG_NAMES = {"newshape": "shape", "axes": "perm", "negative_slope": "alpha"}


def _bind(b: Builder, spec: LayerSpec, fn: Function, call: CallArgs) -> dict[str, Any]:
    """The op's arguments by name: call positionals, call keywords, Keras 3 config, defaults."""
    if len(call.args) > len(fn.params):
        raise b.error("too many positional arguments", f"at most {len(fn.params)} ({', '.join(fn.params)})",
                      list(call.args))
    bound = dict(zip(fn.params, call.args))
    for key, value in call.kwargs.items():
        if key in _IGNORED or (key == "conjugate" and value is False):  # tf.transpose's real-valued default
            continue
        if key not in fn.params and key not in fn.defaults or key in bound:
            raise UnsupportedLayerError(str(b.error(f"unsupported argument `{key}` of {spec.config['function']}",
                                                    f"arguments among {list(fn.params)}", value)))
        bound[key] = value
    if spec.class_name == "KerasOperation":
        for key, value in spec.config.items():
            if key not in ("name", "function", "trainable", "dtype") and value is not None:
                bound[key] = value
    for key, value in fn.defaults.items():
        bound.setdefault(key, value)
    return {_CONFIG_NAMES.get(k, k): v for k, v in bound.items()}


def operation(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    name = spec.config.get("function")
    fn = FUNCTIONS.get(name) if isinstance(name, str) else None
    if fn is None or spec.call is None:
        what = "Keras 3 operation" if spec.class_name == "KerasOperation" else f"tf_keras {spec.class_name}"
        raise UnsupportedLayerError(str(b.error(f"{what} function {short(name)} is not supported (bnkit rebuilds "
                                                "operations from a fixed table and never runs code)",
                                                f"one of {sorted(FUNCTIONS)}", name)))
    args = _bind(b, spec, fn, spec.call)
    first = args.get(fn.params[0])
    if fn.kind != "binary" and not isinstance(first, TensorArg):
        raise b.error(f"{name} needs a tensor as its first argument", "a layer output", first)
    info = _KINDS[fn.kind](b, spec, fn, args, xs)
    b.written[spec.name] = _written(spec, spec.call, xs)
    if spec.class_name == "KerasOperation":
        b.note("a Keras 3 operation layer is written back only to .keras files (legacy .h5 configs drop the "
               "module that tells it from a layer; Keras 3 cannot read it there either)")
        config = {k: v for k, v in spec.config.items() if k != "function"}
        return info, {**config, "name": spec.name}
    return info, {**common(spec), "function": name}


def _ref(spec: LayerSpec, index: int) -> list[Any]:
    """The written reference of the call's ``index``-th tensor: [layer, node, tensor] of the flat graph."""
    return list(spec.calls[0][index]) if spec.calls else [spec.inbound[index], 0, 0]


def _written(spec: LayerSpec, call: CallArgs, xs: list[Info]) -> dict[str, Any]:
    """The class, module and inbound node bnkit writes for an operation layer: as read, so that
    the Keras that wrote it (and bnkit) reads it back."""
    if spec.class_name == "KerasOperation":
        def keras3(value: Any) -> Any:
            if isinstance(value, TensorArg):
                history = _ref(spec, value.index)
                return {"class_name": "__keras_tensor__", "config": {
                    "shape": list(xs[value.index].shape), "dtype": "float32", "keras_history": history}}
            if isinstance(value, list):
                return [keras3(v) for v in value]
            if isinstance(value, dict):
                return {k: keras3(v) for k, v in value.items()}
            return value

        module, _, cls = str(spec.config["function"]).rpartition(".")
        return {"module": f"keras.src.ops.{module}", "class_name": cls, "registered_name": cls,
                "inbound_nodes": [{"args": keras3(list(call.args)), "kwargs": keras3(call.kwargs)}]}

    def tf_keras(value: Any) -> Any:
        if isinstance(value, TensorArg):
            return _ref(spec, value.index)
        if isinstance(value, list):
            return [tf_keras(v) for v in value]
        if isinstance(value, dict):
            return {k: tf_keras(v) for k, v in value.items()}
        return value

    first = call.args[0] if call.args else None
    head = tf_keras(first) if isinstance(first, TensorArg) else ["_CONSTANT_VALUE", -1, first]
    return {"class_name": spec.class_name, "inbound_nodes": [[*head, tf_keras(call.kwargs)]]}


def _module_name(b: Builder, spec: LayerSpec) -> str:
    """A ModuleDict key for the layer (tf_keras names ops ``tf.math.multiply``; '.' is not allowed)."""
    name = spec.name.replace(".", "_")
    if name == spec.name:
        return name
    while name in b.reserved or name in b.factories:
        name += "_"
    return name


def _binary(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    operands = [args.get(p) for p in fn.params[:2]]
    tensors = [xs[o.index] for o in operands if isinstance(o, TensorArg)]
    if not tensors:
        raise b.error(f"{spec.config['function']} needs a tensor operand", "a layer output", operands)
    constants = [constant(b, o, p) for o, p in zip(operands, fn.params) if not isinstance(o, TensorArg)]
    rank = max([len(t.shape) for t in tensors] + [c.ndim for c in constants])
    # one common layout when every tensor has the full rank; Keras' own otherwise (NumPy broadcasting)
    perm = tensors[0].perm if all(len(t.shape) == rank for t in tensors) else identity(rank)
    slots, values, shapes = [], [], []
    for operand, param in zip(operands, fn.params):
        if isinstance(operand, TensorArg):
            x = xs[operand.index]
            slots.append(b.take(x, perm if len(x.shape) == rank else identity(len(x.shape))))
            values.append(Slot(len(slots) - 1))
            shapes.append(x.shape)
        else:
            array = constant(b, operand, param)
            values.append(as_torch(array, rank, perm))
            shapes.append(array.shape)
    shape = broadcast_shapes(b, shapes)
    if len(shape) != rank:
        raise b.error("a constant has more axes than the tensor", f"at most {rank} axes", shapes)
    op = fn.op
    slot = b.run(_module_name(b, spec), lambda: ConstantOp(op, values), slots, many=True)
    return Info(shape, perm, slot)


def _unary(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x = xs[args[fn.params[0]].index]
    factory: Callable[[], nn.Module]
    if fn.op == "gelu":
        approximate = args.get("approximate")
        if not isinstance(approximate, bool):
            raise b.error("invalid `approximate`", "True or False", approximate)
        factory = lambda: nn.GELU("tanh" if approximate else "none")  # noqa: E731
    elif fn.op in ("leaky_relu", "elu"):
        value = args.get("alpha")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise b.error("invalid `alpha`", "a number", value)
        factory = (lambda: nn.LeakyReLU(float(value))) if fn.op == "leaky_relu" else (lambda: nn.ELU(float(value)))
    elif fn.op in ACTIVATIONS:
        keras3 = spec.class_name == "KerasOperation"
        factory = lambda: activation_module(fn.op, 0, keras3)  # noqa: E731
    else:
        factory = lambda: _Elementwise(fn.op)  # noqa: E731
    slot = b.run(_module_name(b, spec), factory, [x.slot])
    return Info(x.shape, x.perm, slot)


class _Elementwise(nn.Module):
    """``negative``, ``abs``, ``square``, ``sqrt``, ``rsqrt``, ``log``."""

    _FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "negative": torch.neg, "abs": torch.abs, "square": torch.square, "sqrt": torch.sqrt,
        "rsqrt": torch.rsqrt, "log": torch.log,
    }

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._FUNCTIONS[self.op](x)

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


def _softmax(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x = xs[args[fn.params[0]].index]
    keras_axes = axes(b, args.get("axis"), len(x.shape), batch=True)
    dims = tuple(sorted(x.perm.index(a) for a in keras_axes))
    log = fn.op == "log_softmax"
    slot = b.run(_module_name(b, spec), lambda: MultiSoftmax(dims, log), [x.slot])
    return Info(x.shape, x.perm, slot)


def _reduce(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x = xs[args[fn.params[0]].index]
    rank, keepdims = len(x.shape), args.get("keepdims")
    if args.get("axis") is None:
        raise UnsupportedLayerError(str(b.error("a reduction over every axis (batch included) is not supported",
                                                "an `axis` without the batch axis", None)))
    if not isinstance(keepdims, bool):
        raise b.error("invalid `keepdims`", "True or False", keepdims)
    keras_axes = axes(b, args["axis"], rank)
    perm = x.perm if keepdims else identity(rank)
    dims = tuple(sorted(perm.index(a) for a in keras_axes))
    slot = b.run(_module_name(b, spec), lambda: Reduce(fn.op, dims, keepdims), [b.take(x, perm)])
    if keepdims:
        return Info(tuple(1 if d in keras_axes else s for d, s in enumerate(x.shape)), perm, slot)
    return Info(tuple(s for d, s in enumerate(x.shape) if d not in keras_axes), identity(rank - len(keras_axes)), slot)


def _reshape(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x, shape = xs[args[fn.params[0]].index], args.get("shape")
    if not (isinstance(shape, list) and shape and shape[0] in (-1, None)
            and all(is_int(d) and (d > 0 or d == -1) for d in shape[1:]) and shape.count(-1) <= 1):
        raise UnsupportedLayerError(str(b.error("unsupported reshape", "a shape [-1, d1, ...] keeping the batch axis "
                                                "with at most one other -1", shape)))
    target = tuple(shape[1:])
    sizes = x.shape[1:]
    total = None if None in sizes else int(torch.tensor(sizes).prod()) if sizes else 1
    fixed = int(torch.tensor([d for d in target if d != -1] or [1]).prod())
    if total is not None and (total % fixed if -1 in target else total != fixed):
        raise b.error("the shape does not fit the input", f"{total} elements per sample", shape)
    out = tuple((None if total is None else total // fixed) if d == -1 else d for d in target)
    slot = b.run(_module_name(b, spec), lambda: Reshape(target), [b.take(x, identity(len(x.shape)))])
    return Info((x.shape[0], *out), identity(len(out) + 1), slot)


def _transpose(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x, order = xs[args[fn.params[0]].index], args.get("perm")
    rank = len(x.shape)
    if not (isinstance(order, list) and sorted(order) == list(range(rank)) and order[0] == 0):
        raise UnsupportedLayerError(str(b.error("unsupported transpose", f"a permutation of range({rank}) keeping "
                                                "the batch axis first", order)))
    keras_perm = tuple(order)
    return Info(tuple(x.shape[p] for p in keras_perm), permuted(keras_perm, x.perm), x.slot)


def _slice(b: Builder, spec: LayerSpec, fn: Function, args: dict[str, Any], xs: list[Info]) -> Info:
    x, items = xs[args[fn.params[0]].index], args.get("slice_spec")
    items = items if isinstance(items, list) else [items]
    rank = len(x.shape)
    parts: list[slice | int] = []
    for item in items:
        if is_int(item):
            parts.append(item)
        elif isinstance(item, dict) and set(item) == {"start", "stop", "step"} and \
                all(v is None or is_int(v) for v in item.values()) and (item["step"] or 1) > 0:
            parts.append(slice(item["start"], item["stop"], item["step"]))
        else:
            raise UnsupportedLayerError(str(b.error("unsupported slice", "ints and slices with a positive step",
                                                    item)))
    if not parts or parts[0] != slice(None, None, None) or len(parts) > rank:
        raise UnsupportedLayerError(str(b.error("unsupported slice", f"at most {rank} entries, the first `:` "
                                                "(the whole batch)", items)))
    shape: list[int | None] = [x.shape[0]]
    for axis, part in enumerate(parts[1:], start=1):
        size = x.shape[axis]
        if is_int(part):
            if size is None or not -size <= part < size:  # type: ignore[operator]
                raise b.error(f"index out of range on axis {axis}", f"an index in [-{size}, {size})", part)
        else:
            shape.append(None if size is None else len(range(*part.indices(size))))  # type: ignore[union-attr]
    shape.extend(x.shape[len(parts):])
    key = tuple(parts)
    slot = b.run(_module_name(b, spec), lambda: Slice(key), [b.take(x, identity(rank))])
    return Info(tuple(shape), identity(len(shape)), slot)


class Slice(nn.Module):
    """``x[key]`` for a tuple of ints and slices (Keras' own layout)."""

    def __init__(self, key: tuple[slice | int, ...]) -> None:
        super().__init__()
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.key]

    def extra_repr(self) -> str:
        return f"key={self.key}"


_KINDS: dict[str, Callable[[Builder, LayerSpec, Function, dict[str, Any], list[Info]], Info]] = {
    "binary": _binary, "unary": _unary, "softmax": _softmax, "reduce": _reduce, "reshape": _reshape,
    "transpose": _transpose, "slice": _slice,
}

ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("TFOpLambda", operation), LayerEntry("SlicingOpLambda", operation),
    LayerEntry("KerasOperation", operation),
)
