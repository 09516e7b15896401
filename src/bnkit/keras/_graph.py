"""Flatten a Keras model config into one graph: nested Sequential/functional models are
expanded in place (once per call) and shared layers keep one entry with several calls.

References in a config are ``[layer, node, tensor]``: the ``tensor``-th output of the
``node``-th call of ``layer``.  A plain layer may give several outputs (a recurrent layer
with ``return_state``: the output, then the states); the parser does not know how many, so
any index names a tensor ``(flat layer, call, index)`` and the planner refuses an index the
layer does not give.  Keyword tensors of a call (``initial_state=``, Keras 3) join its inputs
after the positional ones, as tf_keras records them.

Calls are numbered from 0, except that a nested model built on its own ``Input`` has that
graph as its node 0, so its calls count from 1: in tf_keras everywhere (any functional
model, a Sequential whose first layer is an InputLayer), in Keras 3 only in a model's
``output_layers`` and only for functional models.

Flat names: a layer keeps its Keras name unless an earlier layer of the flat graph took
it (the same name inside another nested model); then it is qualified by its nested
models' names (``backbone_conv``), made unique with '_'.  Each flat layer remembers its
Keras name, its nested models and its ``.keras`` weight path, so weights are found where
Keras stored them.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from .._repr import short
from ._call_args import KWARG_CLASSES, OP_CLASSES, CallArgs, check_outputs, op_call
from ._mask_ops import MaskDescription, strip_mask_ops
from ._config import (MODEL_CLASSES, LayerSpec, ModelSpec, Ref, TensorId, check_custom, endpoints, layer_entry,
                      node_refs, snake_case)
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["keras3_nodes", "parse_model_config"]

#: Nested models deeper than this are refused (a guard against absurd or hostile configs).
MAX_DEPTH = 32


class _Flat:
    """A layer of the flat graph being built."""

    def __init__(self, name: str, cls: str, config: dict[str, Any], refusal: str, keras_name: str,
                 scope: tuple[str, ...], v3_path: str, call: CallArgs | None) -> None:
        self.name, self.cls, self.config, self.refusal = name, cls, config, refusal
        self.keras_name, self.scope, self.v3_path, self.call = keras_name, scope, v3_path, call
        self.calls: list[tuple[TensorId, ...]] = []
        self.masks: list[MaskDescription | None] = []  # per call: the mask Keras 3 records for it

    def spec(self) -> LayerSpec:
        inbound = tuple(t[0] for t in self.calls[0]) if self.calls else ()
        masks = tuple(self.masks) if any(mask is not None for mask in self.masks) else ()
        return LayerSpec(self.name, self.cls, self.config, inbound, self.refusal, tuple(self.calls),
                         self.keras_name, self.scope, self.v3_path, self.call, masks)


class _Flattener:
    def __init__(self, source: object, keras3: bool) -> None:
        self.source, self.keras3 = source, keras3
        self.flat: dict[tuple[tuple[str, ...], str], _Flat] = {}
        self.taken: set[str] = set()
        self.order: list[tuple[str, int]] = []
        self.inputs: list[str] = []
        #: (nested models, layer, node index) -> the mask Keras 3 records for that call node
        self.masks: dict[tuple[tuple[str, ...], str, int], MaskDescription] = {}

    # ---- one model level ----------------------------------------------------------------
    def model(self, config: dict[str, Any], scope: tuple[str, ...], bound: list[TensorId] | None,
              frozen: bool, v3_prefix: str) -> list[TensorId]:
        source = self.source
        kind, body = config.get("class_name"), config.get("config")
        if kind not in MODEL_CLASSES or not isinstance(body, dict) or not isinstance(body.get("layers"), list):
            raise UnsupportedLayerError(
                f"{source}: the model class {short(kind)} is not supported; expected a Sequential or "
                "functional model (subclassed models carry code and cannot be rebuilt)")
        if len(scope) > MAX_DEPTH:
            raise KerasFormatError(f"{source}: models nested more than {MAX_DEPTH} deep; received {'/'.join(scope)}")
        if not scope:
            check_custom(config, "the model", kind, source, allow_registered=("Functional",))
        raw_layers = body["layers"]
        if kind != "Sequential":  # Keras 3 records sequence masks as NotEqual operations: see _mask_ops
            raw_layers, masks = strip_mask_ops(raw_layers, body.get("output_layers"))
            self.masks.update({(scope, consumer, node): mask for (consumer, node), mask in masks.items()})
        entries = [layer_entry(raw, index, source) for index, raw in enumerate(raw_layers)]
        frozen = frozen or body.get("trainable", True) is False  # a frozen model freezes every layer
        _check_unique([entry[0] for entry in entries], source)
        counts: Counter[str] = Counter()
        v3: dict[str, str] = {}
        for name, cls, *_ in entries:
            snake = snake_case(cls)
            v3[name] = f"{v3_prefix}layers/{snake}" + (f"_{counts[snake]}" if counts[snake] else "")
            counts[snake] += 1
        raws = {entry[0]: raw for entry, raw in zip(entries, raw_layers)}
        if kind == "Sequential":
            return self._sequential(entries, raws, body, config, scope, bound, frozen, v3)
        return self._functional(entries, raws, body, scope, bound, frozen, v3)

    def _sequential(self, entries: list[Any], raws: dict[str, Any], body: dict[str, Any], config: dict[str, Any],
                    scope: tuple[str, ...], bound: list[TensorId] | None, frozen: bool,
                    v3: dict[str, str]) -> list[TensorId]:
        source = self.source
        if bound is None and (not entries or entries[0][1] != "InputLayer"):
            shape = (entries[0][2].get("batch_input_shape") if entries else None) or body.get("build_input_shape") \
                or (config.get("build_config") or {}).get("input_shape")
            if not isinstance(shape, list):
                raise KerasFormatError(
                    f"{source}: the Sequential model has no input shape; expected an InputLayer, a "
                    "`batch_input_shape` on its first layer or a `build_input_shape`")
            taken = {entry[0] for entry in entries}
            name = next(f"input_{i}" for i in range(1, len(taken) + 2) if f"input_{i}" not in taken)
            entries = [(name, "InputLayer", {"batch_input_shape": shape, "name": name}, [], "")] + entries
            v3[name] = ""
        if not entries:
            raise KerasFormatError(f"{source}: the nested Sequential model {'/'.join(scope)!r} has no layers")
        current: list[TensorId] | None = bound
        for index, (name, cls, cfg, _, refusal) in enumerate(entries):
            if cls == "InputLayer":
                if index:
                    raise KerasFormatError(f"{source}: InputLayer {name!r} must come first in a Sequential model")
                if bound is None:
                    current = [self._call(scope, name, cls, cfg, refusal, v3[name], ())]
                    self.inputs.append(current[0][0])
                continue
            if current is None or len(current) != 1:
                raise KerasFormatError(f"{source}: Sequential layer {name!r} needs one input tensor; received "
                                       f"{0 if current is None else len(current)}")
            current = self._layer(scope, name, cls, cfg, refusal, raws.get(name), v3[name], current, frozen)
        if current is None or len(current) != 1:
            raise UnsupportedLayerError(f"{source}: a Sequential model whose last layer has several outputs")
        return current

    def _functional(self, entries: list[Any], raws: dict[str, Any], body: dict[str, Any], scope: tuple[str, ...],
                    bound: list[TensorId] | None, frozen: bool, v3: dict[str, str]) -> list[TensorId]:
        source = self.source
        inputs = endpoints(body.get("input_layers"), "input_layers", source)
        outputs = endpoints(body.get("output_layers"), "output_layers", source)
        by_name = {entry[0]: entry for entry in entries}
        input_names = [ref[0] for ref in inputs]
        for ref in inputs + outputs:
            if ref[0] not in by_name:
                raise KerasFormatError(f"{source}: model endpoint {ref[0]!r} is not a layer of the model")
        for name, cls, *_ in entries:
            if (cls == "InputLayer") != (name in input_names):
                raise KerasFormatError(
                    f"{source}: layer {name!r} ({cls}): expected InputLayers to be exactly the model inputs "
                    f"{input_names}")
        if bound is not None and len(bound) != len(inputs):
            raise KerasFormatError(f"{source}: nested model {'/'.join(scope)!r} has {len(inputs)} inputs; "
                                   f"it is called with {len(bound)}")
        resolved: dict[Ref, TensorId] = {}
        for position, name in enumerate(input_names):
            _, cls, cfg, _, refusal = by_name[name]
            if bound is None:
                resolved[(name, 0, 0)] = self._call(scope, name, cls, cfg, refusal, v3[name], ())
                self.inputs.append(resolved[(name, 0, 0)][0])
            else:
                resolved[(name, 0, 0)] = bound[position]
        pending = []
        for name, cls, cfg, nodes, refusal in entries:
            if cls in OP_CLASSES or cls in KWARG_CLASSES:  # tensors and constants in its single call
                inbound, call = op_call(nodes, name, source)
                check_outputs(cls, name, call, source)
                pending.append((name, cls, cfg, refusal, 0, list(inbound), call, None))
            elif cls != "InputLayer":
                offset = self._offset(cls, raws[name])
                pending.extend((name, cls, cfg, refusal, k + offset, refs, None, self.masks.get((scope, name, k)))
                               for k, refs in enumerate(node_refs(nodes, name, source)))
        plain: dict[tuple[str, int], TensorId] = {}  # (layer, node) -> its first output, for a plain layer

        def lookup(ref: Ref) -> TensorId | None:
            if ref in resolved:
                return resolved[ref]
            first = plain.get(ref[:2])
            return None if first is None else (first[0], first[1], ref[2])

        while pending:
            index = next((i for i, call in enumerate(pending) if all(lookup(ref) for ref in call[5])), None)
            if index is None:
                missing = sorted({ref for call in pending for ref in call[5] if lookup(ref) is None
                                  and ref[0] not in {c[0] for c in pending}})
                raise KerasFormatError(
                    f"{source}: the layer graph cannot be ordered: unknown tensors {missing[:5]} or a cycle through "
                    f"{[c[0] for c in pending][:5]}; expected a DAG of [layer, node, tensor] references")
            name, cls, cfg, refusal, node, refs, call, mask = pending.pop(index)
            outs = self._layer(scope, name, cls, cfg, refusal, raws[name], v3[name],
                               [lookup(r) for r in refs], frozen, call, mask)  # type: ignore[misc]
            for tensor, out in enumerate(outs):
                resolved[(name, node, tensor)] = out
            if cls not in MODEL_CLASSES or refusal:
                plain[(name, node)] = outs[0]
        results = []
        for ref in outputs:
            if self.keras3 and by_name[ref[0]][1] == "Functional" and ref[1] > 0:
                ref = (ref[0], ref[1] - 1, ref[2])  # Keras 3 counts a functional model's own node in endpoints
            found = lookup(ref)
            if found is None:
                raise KerasFormatError(f"{source}: model output {list(ref)} is not a tensor of the model")
            results.append(found)
        return results

    def _offset(self, cls: str, raw: Any) -> int:
        """1 for a tf_keras nested model built on its own Input, whose call nodes count from 1."""
        if self.keras3 or cls not in MODEL_CLASSES or not isinstance(raw, dict):
            return 0
        layers = (raw.get("config") or {}).get("layers") or [{}]
        own_input = isinstance(layers[0], dict) and layers[0].get("class_name") == "InputLayer"
        return 1 if cls != "Sequential" or own_input else 0

    # ---- one layer call -----------------------------------------------------------------
    def _layer(self, scope: tuple[str, ...], name: str, cls: str, cfg: dict[str, Any], refusal: str, raw: Any,
               v3_path: str, inputs: list[TensorId], frozen: bool, call: CallArgs | None = None,
               mask: MaskDescription | None = None) -> list[TensorId]:
        if cls in MODEL_CLASSES and not refusal:
            nested_frozen = frozen or cfg.get("trainable", True) is False
            return self.model(raw, scope + (name,), inputs, nested_frozen, v3_path + "/")
        if frozen:
            cfg = {**cfg, "trainable": False}
        return [self._call(scope, name, cls, cfg, refusal, v3_path, tuple(inputs), call, mask)]

    def _call(self, scope: tuple[str, ...], name: str, cls: str, cfg: dict[str, Any], refusal: str, v3_path: str,
              inputs: tuple[TensorId, ...], call: CallArgs | None = None,
              mask: MaskDescription | None = None) -> TensorId:
        flat = self.flat.get((scope, name))
        if flat is None:
            flat_name = name if name not in self.taken else "_".join(scope + (name,))
            while flat_name in self.taken:
                flat_name += "_"
            self.taken.add(flat_name)
            flat = self.flat[(scope, name)] = _Flat(flat_name, cls, cfg, refusal, name, scope, v3_path, call)
        flat.calls.append(inputs)
        flat.masks.append(mask)
        self.order.append((flat.name, len(flat.calls) - 1))
        return (flat.name, len(flat.calls) - 1, 0)


def _check_unique(names: list[str], source: object) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise KerasFormatError(f"{source}: layer name {name!r} appears twice; expected unique names")
        seen.add(name)


def keras3_nodes(value: Any, depth: int = 0) -> bool:
    """True when call nodes are Keras 3 dicts (``{"args": ..., "kwargs": ...}``)."""
    if depth > MAX_DEPTH + 2 or not isinstance(value, dict):
        return False
    layers = (value.get("config") or {}).get("layers") if isinstance(value.get("config"), dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict):
            nodes = layer.get("inbound_nodes")
            if isinstance(nodes, list) and any(isinstance(node, dict) for node in nodes):
                return True
            if layer.get("class_name") in MODEL_CLASSES and keras3_nodes(layer, depth + 1):
                return True
    return False


def parse_model_config(config: Any, source: object = "config") -> ModelSpec:
    """Check a model config ``{"class_name": ..., "config": {...}}`` and flatten it."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise KerasFormatError(
            f"{source}: expected a model config {{'class_name': ..., 'config': {{...}}}}; "
            f"received {type(config).__name__} {short(config)}")
    flattener = _Flattener(source, keras3_nodes(config))
    outputs = flattener.model(config, (), None, False, "")
    body = config["config"]
    name = body.get("name") if isinstance(body.get("name"), str) else "model"
    by_name = {flat.name: flat for flat in flattener.flat.values()}
    first = dict.fromkeys(flat_name for flat_name, _ in flattener.order)  # first-call order
    layers = tuple(by_name[flat_name].spec() for flat_name in first)
    return ModelSpec(name, str(config.get("class_name")), layers, tuple(flattener.inputs), tuple(outputs),
                     tuple(flattener.order), flattener.keras3)
