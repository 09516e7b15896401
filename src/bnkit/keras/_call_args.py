"""Call arguments of operation layers, and the applications' registered layers, read as data.

tf_keras records ``tf.math.multiply(x, 0.5)`` in a functional model as a ``TFOpLambda``
layer (``config["function"] == "math.multiply"``) whose inbound node carries the other
arguments: ``[["x_layer", 0, 0, {"y": 0.5, "name": null}]]`` (each node is one such list, not a
list of them); a constant first argument is ``["_CONSTANT_VALUE", -1, value, {...}]``, and a
tensor among the kwargs is ``[layer, node, index]``.  Keras 3 records ``x * 0.5`` as an
operation class of ``keras.src.ops.*`` (``Multiply`` with module ``keras.src.ops.numpy``)
whose node is ``{"args": [tensor, 0.5], "kwargs": {}}``.  Both become one :class:`CallArgs`
on the layer spec (class ``TFOpLambda``/``SlicingOpLambda`` or ``KerasOperation``, with
``config["function"]`` set to e.g. ``"numpy.Multiply"`` for the latter).  Nothing is
imported or executed: the function name is only looked up in bnkit's own table
(:mod:`bnkit.keras._ops_calls`), which also writes the node back as it was read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._repr import short
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["APP_LAYERS", "KWARG_CLASSES", "OP_CLASSES", "CallArgs", "TensorArg", "app_layer_class", "check_outputs",
           "op_call", "op_class"]

#: Layer classes whose call arguments travel with the layer.
OP_CLASSES = ("TFOpLambda", "SlicingOpLambda", "KerasOperation")
#: Layer classes whose call takes tensors as keyword arguments (``mha(q, value=v)``): their
#: single call is read like an operation layer's.  Each names its call flags that would give
#: it a second output, which bnkit does not rebuild (refused when the graph is read).
KWARG_CLASSES: dict[str, tuple[str, ...]] = {"MultiHeadAttention": ("return_attention_scores",)}

#: Registered (custom) layers of keras/tf_keras applications bnkit rebuilds from their config.
APP_LAYERS: dict[str, tuple[str, ...]] = {
    "LayerScale": ("keras.src.applications.convnext", "tf_keras.src.applications.convnext"),
    "CustomScaleLayer": ("keras.src.applications.inception_resnet_v2",
                         "tf_keras.src.applications.inception_resnet_v2"),
}


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: the layer's ``index``-th inbound tensor."""

    index: int


@dataclass(frozen=True)
class CallArgs:
    """The positional and keyword arguments of an operation layer's call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def app_layer_class(raw: dict[str, Any]) -> str | None:
    """The class of an application layer bnkit knows, else None: by class and module, or by
    class alone in legacy ``.h5`` configs, which keep no module (tf_keras writes
    ``Custom>CustomScaleLayer`` there)."""
    cls, module = raw.get("class_name"), raw.get("module")
    if not isinstance(cls, str):
        return None
    cls = cls.removeprefix("Custom>")
    legacy = "module" not in raw and "registered_name" not in raw
    return cls if cls in APP_LAYERS and (legacy or module in APP_LAYERS[cls]) else None


def op_class(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(class, config)`` of a layer entry; Keras 3 operations become ``KerasOperation``
    with ``config["function"] = "<ops module>.<class>"``."""
    cls, cfg, module = raw["class_name"], raw["config"], raw.get("module")
    if app_layer_class(raw) is not None:
        return app_layer_class(raw), cfg  # type: ignore[return-value]
    if isinstance(module, str) and module.startswith("keras.src.ops.") and isinstance(cls, str):
        return "KerasOperation", {**cfg, "function": f"{module[len('keras.src.ops.'):]}.{cls}"}
    return cls, cfg


def _is_ref(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:])


def op_call(nodes: Any, name: str, source: object) -> tuple[tuple[tuple[str, int, int], ...], CallArgs]:
    """``(inbound tensors as (layer, node, tensor) references, call arguments)`` of an
    operation layer's single call (node > 0: a later call of a shared layer or nested model)."""
    if not isinstance(nodes, list) or len(nodes) != 1:
        raise UnsupportedLayerError(
            f"{source}: operation layer {short(name)} must be called exactly once; received inbound_nodes "
            f"{short(nodes)}")
    node, refs = nodes[0], []

    def tensor(ref: list[Any]) -> TensorArg:
        layer, node_index, index = ref
        refs.append((layer, node_index, index))
        return TensorArg(len(refs) - 1)

    def keras3(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            history = (value.get("config") or {}).get("keras_history")
            if not _is_ref(history):
                raise KerasFormatError(f"{source}: layer {short(name)}: malformed keras_history {short(history)}")
            return tensor(history)
        if isinstance(value, list):
            return [keras3(v) for v in value]
        if isinstance(value, dict):
            return {k: keras3(v) for k, v in value.items()}
        return value

    def tf_keras(value: Any) -> Any:
        if _is_ref(value):
            return tensor(value)
        if isinstance(value, list):
            return [tf_keras(v) for v in value]
        if isinstance(value, dict):
            return {k: tf_keras(v) for k, v in value.items()}
        return value

    if isinstance(node, dict) and isinstance(node.get("args", []), list) and isinstance(node.get("kwargs", {}), dict):
        call = CallArgs(tuple(keras3(node.get("args", []))), keras3(node.get("kwargs") or {}))
    elif isinstance(node, list) and len(node) == 1 and isinstance(node[0], list):
        return op_call([node[0]], name, source)  # the list-wrapped form of the node below
    elif isinstance(node, list) and len(node) == 4 and isinstance(node[3], dict):
        first, node_index, index, kwargs = node
        if first == "_CONSTANT_VALUE" and node_index == -1:
            head = index
        elif _is_ref([first, node_index, index]):
            head = tensor([first, node_index, index])
        else:
            raise KerasFormatError(f"{source}: layer {short(name)}: malformed inbound node {short(node)}")
        call = CallArgs((head,), tf_keras(kwargs))
    else:
        raise KerasFormatError(f"{source}: layer {short(name)}: malformed inbound node {short(node)}")
    return tuple(refs), call


def check_outputs(cls: str, name: str, call: CallArgs, source: object) -> None:
    """Refuse a call of a :data:`KWARG_CLASSES` layer with a flag that gives it two outputs."""
    for flag in KWARG_CLASSES.get(cls, ()):
        if call.kwargs.get(flag) is True:
            raise UnsupportedLayerError(
                f"{source}: layer {short(name)} ({cls}) is called with `{flag}=True`, which gives it a second "
                f"output that bnkit does not rebuild; expected {flag}=False")
