"""Plan a :class:`~bnkit.keras.KerasModel` for a parsed Keras graph, layer by layer, through
the layer table (:mod:`bnkit.keras._table`); see :mod:`bnkit.keras._build` for layouts."""
from __future__ import annotations

from typing import Any

from .._repr import short
from ._build import MAX_BUILD_ELEMENTS, Builder, Info, Perm, Plan, identity, inverse, moved
from ._config import ModelSpec, TensorId
from ._table import SUPPORTED_LAYERS, TABLE
from .errors import KerasFormatError, UnsupportedLayerError

__all__ = ["DATA_FORMATS", "SHOWN_NAMES", "check_data_format", "check_supported", "keras_data_format", "plan_model"]


#: How many layer names each blocking class shows.
SHOWN_NAMES = 3


def check_supported(spec: ModelSpec, source: object) -> None:
    """Refuse a graph with layers bnkit cannot rebuild, listing every blocking class at once:
    its count, its first layer names and why (not in the layer table, code, custom object...)."""
    blocked: dict[tuple[str, str], list[str]] = {}
    for layer in spec.layers:
        if layer.refusal or layer.class_name not in TABLE:
            blocked.setdefault((layer.class_name, layer.refusal), []).append(layer.name)
    if not blocked:
        return
    lines = []
    for (cls, why), names in blocked.items():
        shown = ", ".join(repr(name) for name in names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
        lines.append(f"{cls} x{len(names)} ({shown}): {why or 'no bnkit equivalent'}")
    total = sum(len(names) for names in blocked.values())
    raise UnsupportedLayerError(
        f"{source}: bnkit cannot rebuild {total} layer(s) of {len(blocked)} kind(s); expected built-in layers of "
        f"bnkit.keras.SUPPORTED_LAYERS ({len(SUPPORTED_LAYERS)} classes); received:\n  " + "\n  ".join(lines)
    )


DATA_FORMATS = ("channels_last", "channels_first")


def check_data_format(data_format: Any) -> str | None:
    """The ``data_format`` argument of load_model / build_from_config, checked."""
    if data_format is not None and data_format not in DATA_FORMATS:
        raise ValueError(f"`data_format` must be None, 'channels_last' or 'channels_first'; received: "
                         f"data_format={short(data_format)}")
    return data_format


def keras_data_format(spec: ModelSpec) -> str:
    """The layout of the model's images: channels_first when every layer that states a
    ``data_format`` says so, else channels_last (Keras' default)."""
    stated = {layer.config.get("data_format") for layer in spec.layers} - {None}
    return "channels_first" if stated == {"channels_first"} else "channels_last"


def _interface(rank: int, own: str, wanted: str) -> Perm:
    """The torch layout of a model input/output of this rank (see :func:`plan_model`)."""
    if own == wanted or rank not in (4, 5):
        return identity(rank)
    return moved(rank) if wanted == "channels_first" else inverse(moved(rank))


def plan_model(spec: ModelSpec, config: dict[str, Any], init: bool, source: object,
               data_format: str | None = None) -> Plan:
    """Plan a KerasModel for ``spec``; the config written back is the flat graph in bnkit's
    dialect (nested models expanded, shared layers with one inbound node per call).

    ``data_format``: the layout of the model's rank-4/5 inputs and outputs in torch.  None
    keeps Keras' layout; ``"channels_first"`` for a channels-last model takes and returns
    NCHW (NCDHW) tensors, so its convs and BNs run on them with no permutes inside
    (``"channels_last"`` for a channels-first model: NHWC).
    """
    check_supported(spec, source)
    own = keras_data_format(spec)
    wanted = check_data_format(data_format) or own
    builder = Builder(spec, init, source)
    layers = {layer.name: layer for layer in spec.layers}
    infos: dict[TensorId, Info] = {}
    canonical: dict[str, dict[str, Any]] = {}
    classes: dict[str, str] = {}
    for name, call in spec.order:
        layer = layers[name]
        builder.layer, builder.call = layer, call
        entry = TABLE[layer.class_name]
        arguments = [infos[tensor] for tensor in layer.calls[call]]
        info, layer_config = entry.plan(builder, layer, arguments)
        if layer.class_name == "InputLayer":  # the input arrives in the interface layout
            info = info._replace(perm=_interface(len(info.shape), own, wanted))
        infos[(name, call, 0)] = info
        if call:
            continue
        if entry.weights:
            classes[name] = entry.keras_class
        nodes = [[[ref, node, tensor, {}] for ref, node, tensor in inputs] for inputs in layer.calls if inputs]
        canonical[name] = {"module": "keras.layers", "class_name": entry.keras_class, "config": layer_config,
                           "registered_name": None, "name": name, "inbound_nodes": nodes,
                           **builder.written.get(name, {})}
    builder.layer = None
    inputs = [infos[(name, 0, 0)].slot for name in spec.inputs]
    ranks = [len(infos[(name, 0, 0)].shape) for name in spec.inputs]
    outputs = [builder.take(infos[tensor], _interface(len(infos[tensor].shape), own, wanted))
               for tensor in spec.outputs]
    _add_releases(builder, set(inputs) | set(outputs))
    model_config = {
        "module": "keras", "class_name": "Model", "registered_name": None,
        "config": {"name": spec.name, "trainable": True, "layers": list(canonical.values()),
                   "input_layers": [[name, 0, 0] for name in spec.inputs],
                   "output_layers": [list(tensor) for tensor in spec.outputs]},
    }
    origins = {layer.name: (layer.scope, layer.keras_name or layer.name, layer.v3_path) for layer in spec.layers
               if layer.name in classes}
    plan = Plan(spec.name, builder.factories, builder.steps, inputs, ranks, outputs, builder.slots,
                model_config, builder.weight_shapes, builder.notes, classes,
                {key: name for name, key in builder.keys.items() if key in builder.factories}, origins,
                wanted, own)
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
