"""Plan a :class:`~bnkit.keras.KerasModel` for a parsed Keras graph, layer by layer, through
the layer table (:mod:`bnkit.keras._table`); see :mod:`bnkit.keras._build` for layouts."""
from __future__ import annotations

from typing import Any

from ._build import MAX_BUILD_ELEMENTS, Builder, Info, Plan, identity
from ._config import ModelSpec
from ._table import SUPPORTED_LAYERS, TABLE
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["check_supported", "plan_model"]


def check_supported(spec: ModelSpec, source: object) -> None:
    """Refuse a graph with a layer class the table lacks."""
    for layer in spec.layers:
        if layer.class_name not in TABLE:
            raise UnsupportedLayerError(
                f"{source}: layer {layer.name!r} has class {layer.class_name!r}, which bnkit cannot rebuild; "
                f"expected one of {', '.join(SUPPORTED_LAYERS)}"
            )


def plan_model(spec: ModelSpec, config: dict[str, Any], init: bool, source: object) -> Plan:
    """Plan a KerasModel for ``spec``; ``config`` is rewritten into bnkit's dialect."""
    check_supported(spec, source)
    builder = Builder(spec, init, source)
    infos: dict[str, Info] = {}
    canonical: list[dict[str, Any]] = []
    classes: dict[str, str] = {}
    for layer in spec.layers:
        builder.layer = layer
        entry = TABLE[layer.class_name]
        arguments = [infos[ref] for ref in layer.inbound]
        infos[layer.name], layer_config = entry.plan(builder, layer, arguments)
        if entry.weights:
            classes[layer.name] = entry.keras_class
        canonical.append({"module": "keras.layers", "class_name": entry.keras_class, "config": layer_config,
                          "registered_name": None, "name": layer.name,
                          "inbound_nodes": [[[ref, 0, 0, {}] for ref in layer.inbound]] if layer.inbound else [],
                          **builder.written.get(layer.name, {})})
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
                model_config, builder.weight_shapes, builder.notes, classes)
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
