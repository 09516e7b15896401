"""Plan a :class:`~bnkit.keras.KerasModel` for a parsed Keras graph, layer by layer, through
the layer table (:mod:`bnkit.keras._table`); see :mod:`bnkit.keras._build` for layouts."""
from __future__ import annotations

from typing import Any

from .._repr import short
from ._build import MAX_BUILD_ELEMENTS, Builder, Info, Perm, Plan, identity, inverse, moved
from ._config import MODEL_CLASSES, LayerSpec, ModelSpec, TensorId, layer_entry
from ._graph import keras3_nodes
from ._model import KerasLayerRow
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
        arguments = [_tensor(infos, layers, tensor, source) for tensor in layer.calls[call]]
        planned, layer_config = entry.plan(builder, layer, arguments)
        outs = planned if isinstance(planned, list) else [planned]  # a layer with several outputs gives a list
        if layer.class_name == "InputLayer":  # the input arrives in the interface layout
            outs = [outs[0]._replace(perm=_interface(len(outs[0].shape), own, wanted))]
        for index, info in enumerate(outs):
            infos[(name, call, index)] = info
        if call:
            continue
        if entry.weights:
            classes[name] = entry.keras_class
        canonical[name] = {"module": "keras.layers", "class_name": entry.keras_class, "config": layer_config,
                           "registered_name": None, "name": name, "inbound_nodes": [],
                           **builder.written.get(name, {})}
    builder.layer = None
    keras3 = keras3_nodes(config)
    for layer in spec.layers:
        if "inbound_nodes" not in builder.written.get(layer.name, {}):
            canonical[layer.name]["inbound_nodes"] = [_node(layer, call, builder.call_kwargs, infos, keras3)
                                                      for call in range(len(layer.calls)) if layer.calls[call]]
    inputs = [infos[(name, 0, 0)].slot for name in spec.inputs]
    ranks = [len(infos[(name, 0, 0)].shape) for name in spec.inputs]
    outputs = [builder.take(info, _interface(len(info.shape), own, wanted))
               for info in (_tensor(infos, layers, tensor, source) for tensor in spec.outputs)]
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
                wanted, own, _layer_rows(spec, config, infos, builder.owners))
    if init and plan.elements() > MAX_BUILD_ELEMENTS:
        raise KerasFormatError(
            f"{source}: the config declares {plan.elements():,} weight values; expected at most "
            f"{MAX_BUILD_ELEMENTS:,} (an absurd or corrupted config)"
        )
    return plan


def _layer_rows(spec: ModelSpec, config: dict[str, Any], infos: dict[TensorId, Info],
                owners: dict[str, str]) -> tuple[KerasLayerRow, ...]:
    """The layers as Keras' ``model.layers`` lists them (config order, a Sequential's
    InputLayer left out; Keras 3's recorded ``NotEqual`` masks, taken out of the graph, are
    no layers there either), each with its module keys and output tensors, for
    :func:`bnkit.summary`."""
    body = config["config"]
    modules: dict[str, list[str]] = {}
    for key, flat in owners.items():
        modules.setdefault(flat, []).append(key)
    top = {(layer.keras_name or layer.name): layer for layer in spec.layers if not layer.scope}
    rows = []
    for index, raw in enumerate(body["layers"]):
        name, cls, *_ = layer_entry(raw, index, "config")
        if cls == "InputLayer" and config.get("class_name") == "Sequential":
            continue
        if cls in MODEL_CLASSES and name not in top:
            members = [layer for layer in spec.layers if layer.scope[:1] == (name,)]
            keys = [key for layer in members for key in modules.get(layer.name, [])]
            outputs = _leaving({layer.name for layer in members}, spec)
        elif name in top:
            layer = top[name]
            keys = modules.get(layer.name, [])
            outputs = [[(layer.name, call, i) for i in range(_count(infos, layer.name, call))]
                       for call in range(len(layer.calls))]
        else:  # taken out of the graph (a Keras 3 mask operation)
            continue
        rows.append(KerasLayerRow(name, cls, tuple(keys), tuple(
            tuple((infos[t].slot, infos[t].perm) for t in call if t in infos) for call in outputs)))
    return tuple(rows)


def _count(infos: dict[TensorId, Info], name: str, call: int) -> int:
    count = 0
    while (name, call, count) in infos:
        count += 1
    return count


def _leaving(members: set[str], spec: ModelSpec) -> list[list[TensorId]]:
    """The tensors a nested model gives (made by its layers, read outside it or model
    outputs), grouped by call."""
    found: dict[TensorId, None] = {}
    for layer in spec.layers:
        if layer.name not in members:
            found.update((t, None) for call in layer.calls for t in call if t[0] in members)
    found.update((t, None) for t in spec.outputs if t[0] in members)
    calls: dict[int, list[TensorId]] = {}
    for tensor in found:
        calls.setdefault(tensor[1], []).append(tensor)
    return [calls[call] for call in sorted(calls)]


def _tensor(infos: dict[TensorId, Info], layers: dict[str, LayerSpec], tensor: TensorId, source: object) -> Info:
    """The planned tensor ``tensor``; a clear error when the config names an output its layer lacks."""
    if tensor in infos:
        return infos[tensor]
    name, call, index = tensor
    count = sum(1 for key in infos if key[:2] == (name, call))
    layer = layers.get(name)
    raise KerasFormatError(
        f"{source}: the config uses output {index} of layer {name!r}"
        f"{f' ({layer.class_name})' if layer else ''} (call {call}); expected an output index below {count}, the "
        "outputs that layer gives with its config (e.g. a recurrent layer's states need return_state=True)")


def _node(layer: LayerSpec, call: int, call_kwargs: dict[tuple[str, int], dict[str, int]],
          infos: dict[TensorId, Info], keras3: bool) -> Any:
    """The inbound node written for one call: tf_keras' list of ``[layer, node, tensor, {}]``,
    or, for a call with keyword tensors (``initial_state``) read from Keras 3, Keras 3's
    ``{"args", "kwargs"}`` (Keras 3 passes a list node's tensors as one positional argument;
    tf_keras records keyword tensors as extra inbound tensors, which is the list node)."""
    tensors = layer.calls[call]
    keywords = call_kwargs.get((layer.name, call), {})
    if not keras3 or not keywords:
        return [[ref, node, tensor, {}] for ref, node, tensor in tensors]

    def keras_tensor(tensor: TensorId) -> dict[str, Any]:
        return {"class_name": "__keras_tensor__",
                "config": {"shape": list(infos[tensor].shape), "dtype": "float32", "keras_history": list(tensor)}}

    positional = len(tensors) - sum(keywords.values())
    args = [keras_tensor(tensor) for tensor in tensors[:positional]]
    kwargs, start = {}, positional
    for keyword, count in keywords.items():
        kwargs[keyword] = [keras_tensor(tensor) for tensor in tensors[start:start + count]]
        start += count
    return {"args": args, "kwargs": kwargs}


def _add_releases(builder: Builder, keep: set[int]) -> None:
    last_use: dict[int, int] = {}
    for index, step in enumerate(builder.steps):
        for slot in step.inputs:
            last_use[slot] = index
    for index, step in enumerate(builder.steps):
        release = tuple(s for s in set(step.inputs) if last_use[s] == index and s not in keep)
        builder.steps[index] = step._replace(release=release)
