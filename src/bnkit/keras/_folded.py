"""Fold the batch norms of a loaded Keras model and keep it a :class:`KerasModel`.

Folding the traced graph of a ``KerasModel`` (:func:`bnkit.surgery.fold.fold_graph`) gives a
``torch.fx.GraphModule``: exact, but no longer tied to a Keras config, so it could not be
written as ``.keras``/``.h5`` or as a ``{"builder": "keras"}`` checkpoint.
:func:`fold_keras_model` (what :func:`bnkit.fold_batch_norm` does for a ``KerasModel``) runs
the same folding and carries its result back into Keras terms: each folded BatchNormalization
leaves the config (its consumers read its input instead) and the layer it folded into gets
``use_bias: true``; a model is rebuilt from that config and takes the folded weights.
Nothing is folded that the torch graph could not fold exactly, and anything the Keras
config cannot say (a BN inside a nested model, a layer without ``use_bias``) is refused
with a :class:`KerasFormatError` before anything is written.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .._repr import short
from ..surgery import FoldReport
from ..surgery.fold import fold_graph
from ._load import build_from_config
from ._model import KerasModel
from .errors import KerasFormatError

__all__ = ["fold_keras_model"]


def fold_keras_model(model: KerasModel) -> tuple[KerasModel, FoldReport]:
    """Return ``(folded copy, report)``: ``model``'s foldable BNs merged, as a :class:`KerasModel`.

    The copy's ``keras_config`` lacks the folded BatchNormalization layers, so
    :func:`bnkit.keras.save_model` and checkpoints write it as it is.  ``model`` must be in
    eval mode (as :func:`bnkit.fold_batch_norm` requires) and is left unchanged.

    Raises:
        TypeError: ``model`` is not a KerasModel.
        ValueError: ``model`` is in training mode.
        KerasFormatError: a fold cannot be expressed in the Keras config.
    """
    if not isinstance(model, KerasModel):
        raise TypeError(f"`model` must be a bnkit.keras.KerasModel; received: {short(model)}")
    if model.training:
        raise ValueError("`model` must be in inference mode to fold batch norm: call model.eval() first; "
                         "received a KerasModel with training=True")
    folded, report = fold_graph(model)
    if not report.folded:
        return copy.deepcopy(model), report
    config = copy.deepcopy(model.keras_config)
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    removed: list[str] = []
    for item in report.folded:
        bn_key, bn = _layer(model, layers, item.bn, "the folded batch norm")
        if bn["class_name"] != "BatchNormalization" or item.bn != f"layers.{bn_key}":
            raise _refuse(item.bn, f"it is not a top-level BatchNormalization layer ({bn['class_name']})")
        _, into = _layer(model, layers, item.into, "the layer it folded into")
        if "use_bias" not in into["config"]:
            raise _refuse(item.bn, f"{into['class_name']} {into['name']!r} has no `use_bias` to take the folded shift")
        into["config"]["use_bias"] = True
        _bypass(config["config"], bn)
        removed.append(bn["name"])
    config["config"]["layers"] = [layer for layer in config["config"]["layers"] if layer["name"] not in removed]
    rebuilt = build_from_config(config, data_format=model.data_format)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1:  # a model cast with .double()/.half() folds into the same dtype
        rebuilt.to(dtypes.pop())
    _take_weights(rebuilt, model, folded, report)
    rebuilt.keras_notes = list(model.keras_notes)
    rebuilt.keras_version = model.keras_version
    return rebuilt.eval(), report


def _layer(model: KerasModel, layers: dict[str, dict[str, Any]], target: str, what: str) -> tuple[str, dict[str, Any]]:
    """The module key and Keras layer config behind an fx target such as ``layers.conv1_conv``."""
    parts = target.split(".")
    if len(parts) < 2 or parts[0] != "layers" or parts[1] not in model.layers:
        raise _refuse(target, f"{what} is not one of the model's layers")
    key = parts[1]
    name = model.keras_name(key)
    if name not in layers:
        raise _refuse(target, f"{what} {name!r} is not a top-level layer of the Keras config (a nested model?)")
    return key, layers[name]


def _bypass(body: dict[str, Any], bn: dict[str, Any]) -> None:
    """Point every reference to ``bn``'s output at ``bn``'s own input instead."""
    nodes = bn.get("inbound_nodes") or []
    if len(nodes) != 1 or len(nodes[0]) != 1 or not _is_reference(nodes[0][0]):
        raise _refuse(bn["name"], f"its inbound nodes are not one tensor: {short(nodes)}")
    source = list(nodes[0][0][:3])

    def redirect(value: Any) -> Any:
        if _is_reference(value) and value[0] == bn["name"]:
            return [*source, *value[3:]]
        if isinstance(value, list):
            return [redirect(item) for item in value]
        if isinstance(value, dict):
            return {key: redirect(item) for key, item in value.items()}
        return value

    for layer in body["layers"]:
        if layer is not bn:
            layer["inbound_nodes"] = redirect(layer.get("inbound_nodes") or [])
    body["output_layers"] = redirect(body["output_layers"])


def _is_reference(value: Any) -> bool:
    """``[layer name, node index, tensor index, ...]`` as Keras configs name a tensor."""
    return (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


def _take_weights(rebuilt: KerasModel, model: KerasModel, folded: nn.Module, report: FoldReport) -> None:
    """Load the original weights, minus the folded BNs, overridden by the folded graph's."""
    gone = tuple(f"{item.bn}." for item in report.folded)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(gone)}
    state.update(folded.state_dict())
    expected = rebuilt.state_dict().keys()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise KerasFormatError(
            f"Model {model.name!r}: the folded weights do not fit the folded Keras config; expected "
            f"{short(missing)} too, and no {short(extra)}"
        )
    rebuilt.load_state_dict(state)


def _refuse(target: str, why: str) -> KerasFormatError:
    return KerasFormatError(f"Cannot write the folded model as a Keras model: batch norm fold at {target!r}: {why}")
