"""Read one Keras model config level (tf_keras 2.x or Keras 3 dialect): the specs of the
flattened layer graph, and the parsing of single layer entries and their call nodes.

The config is data: it is read as JSON; nothing in it is ever imported or executed.
``Lambda`` layers, custom (registered) objects and non-float32 dtype policies get a
*refusal* that the planner reports together with every other blocking layer.  Nested
models and shared layers are resolved by :mod:`bnkit.keras._graph`; which layer classes
bnkit rebuilds is the layer table's business (:mod:`bnkit.keras._table`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._repr import short
from ._call_args import OP_CLASSES, CallArgs, TensorArg, app_layer_class, op_class
from ._mask_ops import MaskDescription
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["CODE_CLASSES", "MODEL_CLASSES", "CallArgs", "Entry", "LayerSpec", "ModelSpec", "Ref", "TensorArg",
           "TensorId", "check_custom", "check_ref", "endpoints", "layer_entry", "node_refs", "snake_case"]

MODEL_CLASSES = ("Sequential", "Functional", "Model")
CODE_CLASSES = ("Lambda",)  # TFOpLambda & co. name a function of a fixed table: see _call_args
_FLOAT32 = ("float32", None)

#: A reference in a config: (layer name, node index, tensor index).
Ref = tuple[str, int, int]
#: A tensor of the flattened graph: (flat layer name, call index, output index).
TensorId = tuple[str, int, int]


@dataclass(frozen=True)
class LayerSpec:
    """One Keras layer of the flattened graph.

    ``name`` is unique in the flattened graph (the Keras name, qualified by its nested
    models' names when that name is taken); ``calls`` lists the input tensors of every
    call (a shared layer has several); ``inbound`` names the first call's input layers.
    ``keras_name``, ``scope`` (the nested models holding it, outermost first) and
    ``v3_path`` (its weights' group in the ``.keras`` layout) say where the source file
    keeps its weights.

    ``call`` is set only for operation layers (see :mod:`bnkit.keras._call_args`): their
    call's arguments with constants kept and tensors replaced by :class:`TensorArg`.
    """

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: tuple[str, ...]
    refusal: str = ""  # why bnkit must refuse the layer whatever the table holds (code, custom object...)
    calls: tuple[tuple[TensorId, ...], ...] = ()
    keras_name: str = ""
    scope: tuple[str, ...] = ()
    v3_path: str = ""
    call: CallArgs | None = None
    #: Per call, the mask a Keras 3 config passes to it (``mask=``, taken out of the graph by
    #: :mod:`bnkit.keras._mask_ops`), or None; empty when no call has one.  See :meth:`mask_of`.
    recorded_masks: tuple[MaskDescription | None, ...] = ()

    def mask_of(self, call: int) -> MaskDescription | None:
        """The mask Keras 3 records for call ``call`` of this layer (None: none recorded):
        ``(layer, value, reduced)`` for ``layer != value`` (reduced with ``any`` over the last
        axis when ``reduced``: a ``Masking`` layer's), or ``("or"|"and", (description, ...),
        False)`` for the combined mask of a merge layer (Keras 3's ``LogicalOr``)."""
        return self.recorded_masks[call] if 0 <= call < len(self.recorded_masks) else None


@dataclass(frozen=True)
class ModelSpec:
    """A Keras model as a flat layer graph: layers in the order of their first call, the
    calls in a topological order, the input layers and the output tensors, and whether the
    config is in Keras 3's dialect."""

    name: str
    kind: str
    layers: tuple[LayerSpec, ...]
    inputs: tuple[str, ...]
    outputs: tuple[TensorId, ...]
    order: tuple[tuple[str, int], ...] = ()
    #: The call nodes are Keras 3's (``{"args", "kwargs"}``): a call then gets only the mask
    #: its node records when it has several tensor arguments (``initial_state``).
    keras3: bool = False

    def layer(self, name: str) -> LayerSpec:
        return next(spec for spec in self.layers if spec.name == name)


def snake_case(class_name: str) -> str:
    """Keras' snake_case of a class name, used for ``.keras`` weight paths: ``Conv2D`` ->
    ``conv2d``, ``BatchNormalization`` -> ``batch_normalization``."""
    text = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", text).lower()


Entry = tuple[str, str, dict[str, Any], Any, str]


def layer_entry(raw: Any, index: int, source: object) -> Entry:
    """``(name, class, config, inbound nodes, refusal)``; a refusal is reported by the planner
    together with every other blocking layer."""
    if not (isinstance(raw, dict) and isinstance(raw.get("class_name"), str) and isinstance(raw.get("config"), dict)):
        raise KerasFormatError(
            f"{source}: layer #{index} must be {{'class_name': str, 'config': dict}}; received {short(raw)}"
        )
    cls, cfg = op_class(raw)
    name = raw.get("name", cfg.get("name"))
    if not isinstance(name, str) or not name or len(name) > 1000:
        raise KerasFormatError(f"{source}: layer #{index} ({cls}) needs a non-empty name; received name={short(name)}")
    refusal = ""
    if cls in CODE_CLASSES:
        refusal = "its Python code is stored in the file and bnkit never executes code from a file"
    custom = "" if cls in OP_CLASSES or app_layer_class(raw) is not None else \
        _custom(raw, cls, ("Functional",) if cls in MODEL_CLASSES else ())
    integer_input = cls == "InputLayer" and dtype_name(cfg.get("dtype")) in INTEGER_INPUTS
    refusal = refusal or custom or ("" if integer_input else _dtype(cfg.get("dtype")))
    return name, cls, cfg, raw.get("inbound_nodes", []), refusal


def check_custom(raw: dict[str, Any], what: str, cls: Any, source: object,
                  allow_registered: tuple[str, ...] = ()) -> None:
    problem = _custom(raw, cls, allow_registered)
    if problem:
        raise UnsupportedLayerError(f"{source}: {what} ({cls}) is {problem}")


def _custom(raw: dict[str, Any], cls: Any, allow_registered: tuple[str, ...] = ()) -> str:
    module, registered = raw.get("module"), raw.get("registered_name")
    if module is not None and not (isinstance(module, str) and module.split(".")[0] in ("keras", "tf_keras")):
        return (f"a custom object from module {short(module)}; expected a built-in Keras class (custom code is "
                "never imported)")
    if registered is not None and registered != cls and registered not in allow_registered:
        return (f"a custom registered object {short(registered)}; expected a built-in Keras class (custom code "
                "is never imported)")
    return ""


#: Input dtypes a model may take besides float32: token ids for an Embedding.
INTEGER_INPUTS = ("int8", "int16", "int32", "int64", "uint8")


def dtype_name(dtype: Any) -> Any:
    """The dtype a config names: a string, or a Keras 3 dtype policy's ``name``."""
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        return inner.get("name") if isinstance(inner, dict) else None
    return dtype


def _dtype(dtype: Any) -> str:
    policy = dtype_name(dtype)
    return "" if policy in _FLOAT32 else f"dtype policy {short(policy)}; expected 'float32'"


def node_refs(nodes: Any, name: str, source: object) -> list[list[Ref]]:
    """The tensors each call of layer ``name`` consumes, from its ``inbound_nodes``."""
    if not isinstance(nodes, list):
        raise KerasFormatError(f"{source}: layer {name!r}: `inbound_nodes` must be a list; received {short(nodes)}")
    calls = []
    for node in nodes:
        refs: list[Ref] = []
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            _keras3_tensors(node.get("args", []), refs, name, source)
            kwargs = node.get("kwargs") or {}
            if isinstance(kwargs, dict):  # keyword tensors follow the positional ones, as tf_keras records them
                for key in TENSOR_KWARGS:
                    if kwargs.get(key) is not None:
                        _keras3_tensors(kwargs[key], refs, name, source)
                kwargs = {k: v for k, v in kwargs.items() if k not in TENSOR_KWARGS}
            if not isinstance(kwargs, dict) or not _ignorable(kwargs):
                raise UnsupportedLayerError(
                    f"{source}: layer {name!r} is called with arguments {short(kwargs)}; expected none")
        elif isinstance(node, list):  # tf_keras: [[name, node, tensor, kwargs], ...]
            for item in node:
                if not (isinstance(item, list) and len(item) in (3, 4)):
                    raise KerasFormatError(f"{source}: layer {name!r}: malformed inbound node {short(item)}")
                if len(item) == 4 and not (isinstance(item[3], dict) and _ignorable(item[3])):
                    raise UnsupportedLayerError(
                        f"{source}: layer {name!r} is called with arguments {short(item[3])}; expected none")
                refs.append(check_ref(item[:3], name, source))
        else:
            raise KerasFormatError(f"{source}: layer {name!r}: malformed inbound node {short(node)}")
        calls.append(refs)
    return calls


#: Call keywords whose tensors are inputs of the call: Keras 3 records them as keyword
#: arguments, tf_keras as further inbound tensors after the positional ones.
TENSOR_KWARGS = ("initial_state",)


def _ignorable(kwargs: dict[str, Any]) -> bool:
    """Call arguments that change nothing: absent masks, and the ``training`` flag Keras
    records at graph-building time (the caller's mode overrides it when the model runs)."""
    return all(v is None or (k == "training" and isinstance(v, bool)) for k, v in kwargs.items())


def _keras3_tensors(value: Any, refs: list[Ref], name: str, source: object) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            _keras3_tensors(item, refs, name, source)
    elif isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        if not isinstance(history, list) or len(history) != 3:
            raise KerasFormatError(f"{source}: layer {short(name)}: malformed keras_history {short(history)}")
        refs.append(check_ref(history, name, source))
    else:
        raise UnsupportedLayerError(
            f"{source}: layer {short(name)} is called with a non-tensor argument {short(value)}; expected tensors only"
        )


def check_ref(value: Any, name: str, source: object) -> Ref:
    """A ``[layer, node, tensor]`` reference, checked."""
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**20 for v in value[1:])):
        raise KerasFormatError(f"{source}: layer {name!r}: malformed tensor reference {short(value)}; expected "
                               "[layer name, node index, tensor index]")
    return (value[0], value[1], value[2])


def endpoints(value: Any, key: str, source: object) -> list[Ref]:
    """The ``input_layers`` / ``output_layers`` of a functional model config."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, list) and len(v) == 3 for v in value):
        raise KerasFormatError(f"{source}: `{key}` must be [[name, 0, 0], ...]; received {short(value)}")
    return [check_ref(v, key, source) for v in value]
