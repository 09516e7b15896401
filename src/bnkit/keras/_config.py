"""Parse a Keras model config (tf_keras 2.x or Keras 3 dialect) into a plain layer graph.

The config is data: it is read as JSON; ``Lambda`` layers, custom (registered) objects,
nested models and shared layers are refused with an
:class:`~bnkit.keras.UnsupportedLayerError` naming the layer; nothing in the config is ever
imported or executed.  Which layer classes bnkit rebuilds is the layer table's business
(:mod:`bnkit.keras._table`), checked by the planner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._repr import short
from ._call_args import OP_CLASSES, CallArgs, TensorArg, app_layer_class, op_call, op_class
from ._mask_ops import strip_mask_ops
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["CallArgs", "LayerSpec", "ModelSpec", "TensorArg", "parse_model_config"]

_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_CODE_CLASSES = ("Lambda",)  # TFOpLambda & co. name a function of a fixed table: see _call_args
_FLOAT32 = ("float32", None)

Ref = tuple[str, int, int]


@dataclass(frozen=True)
class LayerSpec:
    """One Keras layer: its class, config and the tensors its single call consumes.

    ``call`` is set only for operation layers (see :mod:`bnkit.keras._call_args`): their
    call's arguments with constants kept and tensors replaced by :class:`TensorArg`.
    """

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: tuple[str, ...]
    refusal: str = ""  # why bnkit must refuse the layer whatever the table holds (code, custom object...)
    call: CallArgs | None = None
    #: Keras 3 calls this layer with the mask ``layer != value`` (reduced with ``any`` over the
    #: last axis when the flag is set; see :mod:`bnkit.keras._mask_ops`).
    mask_of: tuple[str, float, bool] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A Keras model as a layer graph, layers in a topological order."""

    name: str
    kind: str
    layers: tuple[LayerSpec, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def layer(self, name: str) -> LayerSpec:
        return next(spec for spec in self.layers if spec.name == name)


def parse_model_config(config: Any, source: object = "config") -> ModelSpec:
    """Check and normalise a model config ``{"class_name": ..., "config": {...}}``."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise KerasFormatError(
            f"{source}: expected a model config {{'class_name': ..., 'config': {{...}}}}; "
            f"received {type(config).__name__} {short(config)}"
        )
    kind = config.get("class_name")
    body = config["config"]
    if kind not in _MODEL_CLASSES or not isinstance(body.get("layers"), list):
        raise UnsupportedLayerError(
            f"{source}: the model class {short(kind)} is not supported; expected a Sequential or "
            "functional model (subclassed models carry code and cannot be rebuilt)"
        )
    _check_custom(config, "the model", kind, source, allow_registered=("Functional",))
    name = body.get("name") if isinstance(body.get("name"), str) else "model"
    raw_layers, masks = (body["layers"], {}) if kind == "Sequential" else \
        strip_mask_ops(body["layers"], body.get("output_layers"))
    entries = [_entry(raw, index, source) for index, raw in enumerate(raw_layers)]
    if body.get("trainable", True) is False:  # a frozen model freezes every layer (BN: inference statistics)
        entries = [(n, cls, {**cfg, "trainable": False}, nodes, why) for n, cls, cfg, nodes, why in entries]
    if kind == "Sequential":
        return _sequential(name, entries, body, config, source)
    return _functional(name, entries, body, source, masks)


Entry = tuple[str, str, dict[str, Any], Any, str]


def _entry(raw: Any, index: int, source: object) -> Entry:
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
    if cls in _CODE_CLASSES:
        refusal = "its Python code is stored in the file and bnkit never executes code from a file"
    elif cls in _MODEL_CLASSES:
        refusal = "a nested model; load_model expects a flat graph (load_weights can read nested weight files)"
    custom = "" if cls in OP_CLASSES or app_layer_class(raw) is not None else _custom(raw, cls)
    refusal = refusal or custom or _dtype(cfg.get("dtype"))
    return name, cls, cfg, raw.get("inbound_nodes", []), refusal


def _check_custom(raw: dict[str, Any], what: str, cls: Any, source: object,
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


def _dtype(dtype: Any) -> str:
    policy = dtype
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        policy = inner.get("name") if isinstance(inner, dict) else None
    return "" if policy in _FLOAT32 else f"dtype policy {short(policy)}; expected 'float32'"


def _sequential(name: str, entries: list[Entry], body: dict[str, Any],
                config: dict[str, Any], source: object) -> ModelSpec:
    layers: list[LayerSpec] = []
    if not entries or entries[0][1] != "InputLayer":
        shape = (entries[0][2].get("batch_input_shape") if entries else None) or body.get("build_input_shape") \
            or (config.get("build_config") or {}).get("input_shape")
        if not isinstance(shape, list):
            raise KerasFormatError(
                f"{source}: the Sequential model has no input shape; expected an InputLayer, a "
                "`batch_input_shape` on its first layer or a `build_input_shape`"
            )
        taken = {entry[0] for entry in entries}
        input_name = next(f"input_{i}" for i in range(1, len(taken) + 2) if f"input_{i}" not in taken)
        entries = [(input_name, "InputLayer", {"batch_input_shape": shape, "name": input_name}, [], "")] + entries
    previous: str | None = None
    for layer_name, cls, cfg, _, refusal in entries:
        if cls == "InputLayer" and previous is not None:
            raise KerasFormatError(f"{source}: InputLayer {layer_name!r} must come first in a Sequential model")
        layers.append(LayerSpec(layer_name, cls, cfg, () if previous is None else (previous,), refusal))
        previous = layer_name
    _check_unique(layers, source)
    return ModelSpec(name, "Sequential", tuple(layers), (layers[0].name,), (layers[-1].name,))


def _functional(name: str, entries: list[Entry], body: dict[str, Any],
                source: object, masks: dict[str, tuple[str, float, bool]]) -> ModelSpec:
    layers = [_op_layer(n, cls, cfg, nodes, source, why) if cls in OP_CLASSES
              else LayerSpec(n, cls, cfg, _inbound(nodes, n, source), why, mask_of=masks.get(n))
              for n, cls, cfg, nodes, why in entries]
    _check_unique(layers, source)
    inputs = _endpoints(body.get("input_layers"), "input_layers", source)
    outputs = _endpoints(body.get("output_layers"), "output_layers", source)
    by_name = {spec.name: spec for spec in layers}
    for endpoint in inputs + outputs:
        if endpoint not in by_name:
            raise KerasFormatError(f"{source}: model endpoint {short(endpoint)} is not a layer of the model")
    for spec in layers:
        if (spec.class_name == "InputLayer") != (spec.name in inputs):
            raise KerasFormatError(
                f"{source}: layer {spec.name!r} ({spec.class_name}): expected InputLayers to be exactly "
                f"the model inputs {list(inputs)}"
            )
        for ref in spec.inbound:
            if ref not in by_name:
                raise KerasFormatError(f"{source}: layer {short(spec.name)} consumes unknown layer {short(ref)}")
    return ModelSpec(name, "Functional", _topological(layers, source), inputs, outputs)


def _op_layer(name: str, cls: str, cfg: dict[str, Any], nodes: Any, source: object, refusal: str) -> LayerSpec:
    inbound, call = op_call(nodes, name, source)
    return LayerSpec(name, cls, cfg, inbound, refusal, call=call)


def _inbound(nodes: Any, name: str, source: object) -> tuple[str, ...]:
    if not isinstance(nodes, list):
        raise KerasFormatError(f"{source}: layer {short(name)}: `inbound_nodes` must be a list; received {short(nodes)}")
    if not nodes:
        return ()
    if len(nodes) > 1:
        raise UnsupportedLayerError(
            f"{source}: layer {name!r} is called {len(nodes)} times (a shared layer); expected one call per layer"
        )
    node = nodes[0]
    refs: list[Ref] = []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        _keras3_tensors(node.get("args", []), refs, name, source)
        kwargs = node.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not _ignorable(kwargs):
            raise UnsupportedLayerError(
                f"{source}: layer {short(name)} is called with arguments {short(kwargs)}; expected none"
            )
    elif isinstance(node, list):  # tf_keras: [[name, node, tensor, kwargs], ...]
        for item in node:
            if not (isinstance(item, list) and len(item) in (3, 4)):
                raise KerasFormatError(f"{source}: layer {short(name)}: malformed inbound node {short(item)}")
            if len(item) == 4 and not (isinstance(item[3], dict) and _ignorable(item[3])):
                raise UnsupportedLayerError(
                    f"{source}: layer {short(name)} is called with arguments {short(item[3])}; expected none"
                )
            refs.append((item[0], item[1], item[2]))
    else:
        raise KerasFormatError(f"{source}: layer {short(name)}: malformed inbound node {short(node)}")
    return tuple(_ref(ref, name, source) for ref in refs)


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
        refs.append((history[0], history[1], history[2]))
    else:
        raise UnsupportedLayerError(
            f"{source}: layer {short(name)} is called with a non-tensor argument {short(value)}; expected tensors only"
        )


def _ref(ref: Ref, name: str, source: object) -> str:
    layer, node, tensor = ref
    if not isinstance(layer, str) or node != 0 or tensor != 0:
        raise UnsupportedLayerError(
            f"{source}: layer {short(name)} consumes {short(list(ref))}; expected the single output of a "
            "single-call layer ([name, 0, 0])"
        )
    return layer


def _endpoints(value: Any, key: str, source: object) -> tuple[str, ...]:
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, list) and len(v) == 3 for v in value):
        raise KerasFormatError(f"{source}: `{key}` must be [[name, 0, 0], ...]; received {short(value)}")
    return tuple(_ref((v[0], v[1], v[2]), key, source) for v in value)


def _check_unique(layers: list[LayerSpec], source: object) -> None:
    seen: set[str] = set()
    for spec in layers:
        if spec.name in seen:
            raise KerasFormatError(f"{source}: layer name {spec.name!r} appears twice; expected unique names")
        seen.add(spec.name)


def _topological(layers: list[LayerSpec], source: object) -> tuple[LayerSpec, ...]:
    """The config order when it is topological (Keras writes it so), else a stable sort of it."""
    done: set[str] = set()
    ordered: list[LayerSpec] = []
    pending = list(layers)
    while pending:
        index = next((i for i, spec in enumerate(pending) if all(ref in done for ref in spec.inbound)), None)
        if index is None:
            raise KerasFormatError(
                f"{source}: the layer graph has a cycle through {[s.name for s in pending][:5]}; expected a DAG"
            )
        spec = pending.pop(index)
        done.add(spec.name)
        ordered.append(spec)
    return tuple(ordered)
