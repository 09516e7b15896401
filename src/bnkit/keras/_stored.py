"""Index the weights stored in a Keras file, in every layout Keras has written.

* legacy HDF5 (``save_weights("w.h5")``: at the root; ``model.save("m.h5")``: under
  ``model_weights``): ``layer_names``, then per layer group ``weight_names`` (the
  authoritative order), datasets at ``group[weight_name]``.  A group named after a layer with
  weights holds that layer's weights only (a MultiHeadAttention's ``mha/query/kernel:0``).
  Nested models list all their
  trainable weights before the non-trainable ones; the owner of a weight is the longest
  run of path components before its name, ending last, that is a known layer name (``conv1/conv/kernel:0``
  -> ``conv1/conv``; Keras 3's ``model/c1/kernel`` -> ``c1``; ``lstm/lstm_cell/kernel:0`` ->
  ``lstm``), else the component before its name, so they split back per layer.
* recurrent layers keep their weights in their cell (``lstm/lstm_cell/kernel:0``; ``.keras``:
  ``layers/lstm/cell/vars/0``), a Bidirectional in its forward and backward layers
  (``bi/forward_gru/gru_cell/kernel:0``; ``layers/bidirectional/forward_layer/cell/vars``):
  those weights are the layer's own, in that order.
* the Keras-1 applications files (``block1_conv1_W_1:0``): the same, byte-string attributes.
* the v3 layout (``.weights.h5`` and ``model.weights.h5`` in ``.keras``):
  ``layers/<snake_case class>[_k]/vars/<i>``, numbered in the layer's weight order, with a
  ``name`` attribute on ``vars`` in Keras 3 files (none in tf_keras ones).

Only the index (names, dataset handles, shapes) is built here; values are read later,
straight into the destination tensors.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ._h5 import dataset_problem, read_names, translating
from .errors import KerasFormatError

__all__ = ["StoredLayer", "index_weights"]


@dataclass
class StoredLayer:
    """The weights of one Keras layer as stored in a file."""

    name: str | None
    path: str
    class_key: str | None = None
    names: list[str] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)
    positional: bool = False
    group: str | None = None  # legacy HDF5: the top-level layer group holding the weights


def index_weights(h5: Any, label: str, file_size: int | None,
                  names: Collection[str] = ()) -> tuple[str, list[StoredLayer]]:
    """``(layout, layers)`` for an open file; layout is ``"legacy"`` or ``"v3"``; ``names``:
    the layer names expected (they tell which part of a weight's path names its layer).

    Layers without weights are left out.  Every dataset is checked (dtype, storage) here,
    before any value is read.
    """
    with translating(label, "index its weights"):
        if "model_weights" in h5:
            layout, layers = "legacy", _legacy(h5["model_weights"], "model_weights", label, names)
        elif read_names(h5, "layer_names", label) is not None:
            layout, layers = "legacy", _legacy(h5, "", label, names)
        elif "layers" in h5 or "vars" in h5:
            layout, layers = "v3", _v3(h5, "", label)
        else:
            raise KerasFormatError(
                f"{label}: no Keras weights found; expected a `layer_names` attribute, a "
                f"`model_weights` group or a `layers` group; found members {sorted(h5.keys())[:10]}"
            )
        for layer in layers:
            for name, dataset in zip(layer.names, layer.datasets):
                problem = dataset_problem(dataset, file_size)
                if problem:
                    raise KerasFormatError(f"{label}: weight {layer.path}/{name}: {problem}")
    return layout, layers


def _owner(weight_name: str, layer_name: str, names: Collection[str]) -> str:
    parts = weight_name.split("/")[:-1]
    # runs of components, the one ending last first, then the longest
    runs = ["/".join(parts[i:j]) for j in range(len(parts), 0, -1) for i in range(j)]
    found = next((run for run in runs if run in names), None)
    if found is not None:
        return found
    return parts[-1] if parts else layer_name


def _legacy(group: Any, prefix: str, label: str, names: Collection[str]) -> list[StoredLayer]:
    layer_names = read_names(group, "layer_names", label) or []
    if "top_level_model_weights" in group and "top_level_model_weights" not in layer_names:
        layer_names = layer_names + ["top_level_model_weights"]
    layers: list[StoredLayer] = []
    for layer_name in layer_names:
        path = f"{prefix}/{layer_name}".lstrip("/")
        if layer_name not in group:
            raise KerasFormatError(
                f"{label}: `layer_names` lists {layer_name!r} but the file has no group {path!r} (missing weights)"
            )
        sub = group[layer_name]
        weight_names = read_names(sub, "weight_names", f"{label}:{path}") or []
        owners: dict[str, StoredLayer] = {}
        wrappers = _wrappers(weight_names)
        for weight_name in weight_names:
            if weight_name not in sub:
                raise KerasFormatError(
                    f"{label}: layer {layer_name!r} lists weight {weight_name!r} but the file has no such "
                    "dataset (missing weights)"
                )
            # a weighted layer's own group holds only its weights (MultiHeadAttention's ``mha/value/kernel:0``
            # belongs to ``mha`` even when a layer is named ``value``)
            owner = layer_name if layer_name in names else _owner(weight_name, layer_name, names)
            if owner not in names:  # no known layer in the path: an RNN's cell weights are the RNN's
                parts = _without_cells(weight_name.split("/"), wrappers)
                owner = parts[-2] if len(parts) >= 2 else layer_name
            stored = owners.setdefault(owner, StoredLayer(owner, path if owner == layer_name else f"{path}/{owner}",
                                                          group=layer_name))
            stored.names.append(weight_name)
            stored.datasets.append(sub[weight_name])
        layers.extend(owners.values())
    return layers


_CELL = re.compile(r"(simple_rnn|lstm|gru)_cell(_\d+)?")
#: Sub-objects whose ``.keras`` weights belong to the layer holding them, in weight order
#: (a MultiHeadAttention's projections: tf_keras names them ``_query_dense``, Keras 3 ``query_dense``).
_V3_PARTS = ("cell", "forward_layer", "backward_layer", "_query_dense", "query_dense", "_key_dense", "key_dense",
             "_gate_dense", "_value_dense", "value_dense", "_output_dense", "output_dense")


def _wrappers(weight_names: list[str]) -> set[str]:
    """The Bidirectional layers among the path components: those holding a ``forward_*``
    layer with a recurrent cell (``bi/forward_gru/gru_cell/kernel:0`` -> ``bi``)."""
    found = set()
    for name in weight_names:
        parts = name.split("/")
        for index in range(1, len(parts) - 2):
            if parts[index].startswith("forward_") and _CELL.fullmatch(parts[index + 1]):
                found.add(parts[index - 1])
    return found


def _without_cells(parts: list[str], wrappers: set[str]) -> list[str]:
    """A weight path without recurrent-cell components: ``lstm/lstm_cell/kernel:0`` ->
    ``lstm/kernel:0``, ``bi/forward_gru/gru_cell/bias:0`` -> ``bi/bias:0`` (the weights of
    an RNN layer's cell, or of a Bidirectional's inner layers, are the layer's own)."""
    kept: list[str] = []
    for index, part in enumerate(parts[:-1]):
        cell_next = index + 1 < len(parts) - 1 and _CELL.fullmatch(parts[index + 1]) is not None
        if _CELL.fullmatch(part) or (cell_next and index > 0 and parts[index - 1] in wrappers):
            continue
        kept.append(part)
    return kept + parts[-1:]


def _v3_nested(group: Any, prefix: str, label: str, stored: StoredLayer) -> None:
    """Append the weights a layer keeps in sub-objects (an RNN's ``cell``, a Bidirectional's
    ``forward_layer``/``backward_layer``), depth first in Keras' order."""
    for part in _V3_PARTS:
        if part in group and hasattr(group[part], "keys"):
            sub, path = group[part], f"{prefix}/{part}"
            if "vars" in sub:
                found = _v3_vars(sub["vars"], path, label)
                stored.names.extend(f"{part}/{name}" for name in found.names)
                stored.datasets.extend(found.datasets)
            _v3_nested(sub, path, label, stored)


def _v3(group: Any, prefix: str, label: str) -> list[StoredLayer]:
    layers: list[StoredLayer] = []
    if "vars" in group:
        stored = _v3_vars(group["vars"], prefix, label)
        _v3_nested(group, prefix, label, stored)
        if stored.datasets:
            if not prefix:  # variables the model owns directly
                stored.name, stored.class_key = "top_level_model_weights", None
            layers.append(stored)
    if "layers" in group:
        children = group["layers"]
        for key in children:
            child_prefix = f"{prefix}/layers/{key}".lstrip("/")
            layers.extend(_v3(children[key], child_prefix, label))
    return layers


def _v3_vars(vars_group: Any, prefix: str, label: str) -> StoredLayer:
    keys = list(vars_group.keys())
    if any(not key.isdigit() for key in keys) or sorted(int(k) for k in keys) != list(range(len(keys))):
        raise KerasFormatError(
            f"{label}: {prefix}/vars must hold datasets named 0..n-1; found {sorted(keys)[:10]}"
        )
    raw_name = vars_group.attrs.get("name")
    name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else raw_name
    class_key = prefix.rsplit("/", 1)[-1] if prefix.count("/layers/") == 0 else prefix
    stored = StoredLayer(str(name) if name is not None else None, prefix or "vars", class_key, positional=True)
    for index in range(len(keys)):
        stored.names.append(str(index))
        stored.datasets.append(vars_group[str(index)])
    return stored
