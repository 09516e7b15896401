"""``save_model``: bnkit/torch models -> ``.keras`` or legacy ``.h5`` files Keras can load.

The config is written in the dialect both tf_keras 2.x and Keras 3 read: tf_keras-style
layer configs (``batch_input_shape``, ``"float32"`` dtypes, list-style inbound nodes, an
int BN axis) under ``{"module": "keras", "class_name": "Model"}``.  ``.keras`` weights use
the v3 layout (``layers/<snake_case>[_k]/vars/<i>`` with Keras 3's ``name`` attribute);
``.h5`` files use tf_keras' ``model_weights/<layer>/<layer>/<weight>:0`` layout.  The
recorded ``keras_version`` names the Keras whose dialect the file is in (see
:func:`written_version`).  Before
anything is written the config is re-planned with bnkit's own reader and every weight
shape is checked against it, so what is written is exactly what will be read back.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import write_atomically
from ._archive import write_archive
from ._attention import v3_groups as attention_groups
from ._graph import parse_model_config
from ._entry import present_rules, resolve_tensor
from ._export import export_sequential
from ._graph import keras3_nodes
from ._h5 import h5py_module
from ._layers import keras3_dialect
from ._mapping import rules_for, snake_case
from ._model import KerasModel
from ._plan import plan_model
from ._rnn import v3_groups
from .errors import KerasFormatError

__all__ = ["KERAS3_VERSION", "KERAS_VERSION", "SaveSummary", "save_model", "written_version"]

#: The Keras version whose layout bnkit writes (tf_keras 2.x layout, also read by Keras 3).
KERAS_VERSION = "2.21.0"
#: The Keras 3 version recorded for a Keras 3 model whose source recorded none (one built
#: from a Keras 3 config): the one bnkit's Keras 3 dialect is checked against.
KERAS3_VERSION = "3.15.1"
_KERAS3 = re.compile(r"3\.[0-9]+(\.[0-9]+)?[A-Za-z0-9]*([.+-][A-Za-z0-9]+)*")  # 3.15.1, 3.1.0rc1, 3.2.0.dev1
_MAX_ATTRIBUTE_BYTES = 64_000  # HDF5 object headers hold at most 64 KiB of attributes

LayerWeights = list[tuple[str, str, list[tuple[str, np.ndarray]]]]


@dataclass
class SaveSummary:
    """What :func:`save_model` wrote."""

    path: Path
    format: str
    layers: int
    parameters: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {self.path} ({self.format}): {self.layers} Keras layers, {self.parameters:,} weight values"]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


def save_model(model: nn.Module, path: str | os.PathLike[str], *, input_shape: Sequence[int] | None = None,
               overwrite: bool = True) -> SaveSummary:
    """Write ``model`` as a Keras model: ``.keras`` archive, or legacy HDF5 for ``.h5``.

    Args:
        model: a :class:`KerasModel` (from :func:`load_model`), or an ``nn.Sequential`` of
            supported modules (Conv2d, Linear, bnkit/torch batch norm, pooling, global
            pooling, Flatten, Dropout, activations, ZeroPad2d), e.g. ``bnkit.models.vgg16()``.
        path: target file; ``.h5``/``.hdf5`` gives legacy HDF5, anything else ``.keras``.
        input_shape: torch input shape without the batch, ``(C, H, W)`` or ``(F,)``;
            required for ``nn.Sequential`` models (written as a channels-last Keras model).
        overwrite: if False, an existing ``path`` raises ``FileExistsError``.

    Raises:
        UnsupportedLayerError: a module Keras cannot express exactly.
        KerasFormatError: the model was changed after loading so it no longer fits its config.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --force) to replace it")
    notes: list[str] = []
    if isinstance(model, KerasModel):
        config = model.keras_config
        modules: dict[str, tuple[nn.Module, int | None]] = {
            model.keras_name(key): (module, None) for key, module in model.layers.items()}
        notes.extend(model.keras_notes)
    else:
        if input_shape is None:
            raise ValueError("`input_shape` is required for a torch model: expected (C, H, W) or (F,); received: None")
        exported = export_sequential(model, tuple(input_shape))
        name = type(model).__name__.lower()
        config = {"module": "keras", "class_name": "Model", "registered_name": None,
                  "config": {"name": name, "trainable": True, "layers": exported.layers,
                             "input_layers": [["input_layer", 0, 0]],
                             "output_layers": [[exported.layers[-1]["name"], 0, 0]]}}
        modules = dict(exported.weighted)
        notes.extend(exported.notes)
    weights = _collect_weights(config, modules, target)
    version = written_version(model.keras_version if isinstance(model, KerasModel) else "", config)
    legacy = target.suffix.lower() in (".h5", ".hdf5")
    if legacy:
        write_atomically(target, lambda tmp: _write_legacy(tmp, config, weights, version))
    else:
        write_archive(target, config, version, lambda h5: _write_v3(h5, config, weights))
    total = sum(array.size for _, _, arrays in weights for _, array in arrays)
    return SaveSummary(target, "legacy HDF5" if legacy else ".keras archive", len(config["config"]["layers"]),
                       total, notes)


def written_version(source_version: str, config: dict[str, Any]) -> str:
    """The ``keras_version`` a file written from ``config`` records: the Keras 3 version its
    source recorded (``"3.15.1"``) when it was read from a Keras 3 file; :data:`KERAS3_VERSION`
    when none was recorded but the config carries Keras 3's dialect (a ``DTypePolicy`` dtype,
    ``{"args", "kwargs"}`` call nodes); else :data:`KERAS_VERSION`, the tf_keras 2 layout.

    Keras reads the number only to tell Keras 1 files (``"1"``) apart, so any 2.x or 3.x
    value loads alike; it tells readers (bnkit among them: see :func:`load_model`) which
    Keras' semantics the model follows.  A source version of another form (``"1.2.2"``, a
    damaged attribute) is never copied: bnkit's weights are not in Keras 1's layout.
    """
    if _KERAS3.fullmatch(source_version or ""):
        return source_version
    layers = config.get("config", {}).get("layers", [])
    if not source_version and (keras3_nodes(config) or any(
            isinstance(layer.get("config"), dict) and keras3_dialect(layer["config"]) for layer in layers)):
        return KERAS3_VERSION
    return KERAS_VERSION


def _collect_weights(config: dict[str, Any], modules: dict[str, tuple[nn.Module, int | None]],
                     target: Path) -> LayerWeights:
    """Every Keras weight as a float32 array, checked against bnkit's own plan of ``config``."""
    plan = plan_model(parse_model_config(config, target), config, init=False, source=target)
    layers: LayerWeights = []
    for layer in config["config"]["layers"]:
        name, cls = layer["name"], layer["class_name"]
        expected = plan.weight_shapes.get(name)
        if not rules_for(cls) or expected is None:
            layers.append((name, cls, []))
            continue
        module, channels = modules.get(name, (None, None))
        rules = present_rules(module, rules_for(cls)) if module is not None else []
        if not rules:
            raise KerasFormatError(
                f"Layer {name!r}: the model no longer fits its Keras config; expected a module with the weights "
                f"of a {cls}; received {type(module).__name__ if module is not None else 'nothing'}"
            )
        if [rule.keras for rule in rules] != list(expected):
            raise KerasFormatError(
                f"Layer {name!r}: expected weights {list(expected)} for its config; the module has "
                f"{[rule.keras for rule in rules]}"
            )
        arrays = []
        for rule in rules:
            view = rule.view(resolve_tensor(module, rule.torch).detach(), channels)  # type: ignore[union-attr]
            if view.numel() != int(np.prod(expected[rule.keras])):
                raise KerasFormatError(
                    f"Layer {name!r} weight {rule.keras}: expected shape {expected[rule.keras]}; the module "
                    f"holds {view.numel()} values"
                )
            array = view.to(device="cpu", dtype=torch.float32).contiguous().reshape(expected[rule.keras]).numpy()
            arrays.append((rule.keras, array))
        layers.append((name, cls, arrays))
    return layers


def _write_v3(h5: Any, config: dict[str, Any], weights: LayerWeights) -> None:
    counts: Counter[str] = Counter()
    root = h5.create_group("layers")
    configs = {layer["name"]: layer.get("config") or {} for layer in config["config"]["layers"]}
    for name, cls, arrays in weights:
        snake = snake_case(cls)
        key = snake if counts[snake] == 0 else f"{snake}_{counts[snake]}"
        counts[snake] += 1
        layer_group = root.create_group(key)
        groups = v3_groups(cls, len(arrays)) or attention_groups(cls, len(arrays), configs.get(name, {})) \
            or [("", len(arrays))]
        start = 0
        for sub, count in groups:  # RNN weights live under their cell (see _rnn.v3_groups), MHA's under its projections
            group = (layer_group.require_group(sub) if sub else layer_group).create_group("vars")
            if not sub:
                group.attrs["name"] = name
            for index, (_, array) in enumerate(arrays[start:start + count]):
                group.create_dataset(str(index), data=array)
            start += count
    h5.create_group("vars").attrs["name"] = config["config"]["name"]


def _write_legacy(path: Path, config: dict[str, Any], weights: LayerWeights, version: str) -> None:
    h5py = h5py_module()
    legacy = _legacy_config(config)
    with h5py.File(path, "w") as h5:
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = version
        h5.attrs["model_config"] = legacy
        group = h5.create_group("model_weights")
        group.attrs["backend"] = "tensorflow"
        group.attrs["keras_version"] = version
        _write_names(group, "layer_names", [name for name, _, _ in weights])
        # sorted, as tf_keras does: a name that is a path prefix of others ('conv1' of 'conv1/conv')
        # is then created before them
        for name, _, arrays in sorted(weights, key=lambda item: item[0]) + [("top_level_model_weights", "", [])]:
            layer_group = group.require_group(name)
            _write_names(layer_group, "weight_names", [f"{name}/{weight}:0" for weight, _ in arrays])
            for weight, array in arrays:
                layer_group.create_dataset(f"{name}/{weight}:0", data=array)


def _legacy_config(config: dict[str, Any]) -> str:
    import json

    body = dict(config["config"])
    body["layers"] = [_legacy_layer(layer) for layer in body["layers"]]
    return json.dumps({"class_name": "Functional", "config": body})


def _legacy_layer(layer: dict[str, Any]) -> dict[str, Any]:
    """A layer entry as tf_keras writes it in ``.h5`` configs: no module, and a class it
    registered itself (an application's ``Custom>CustomScaleLayer``) under that name."""
    out = {k: v for k, v in layer.items() if k not in ("module", "registered_name")}
    registered = layer.get("registered_name")
    if isinstance(registered, str) and registered.startswith("Custom>"):
        out["class_name"] = registered
    return out


def _write_names(obj: Any, key: str, names: list[str]) -> None:
    """Write a list-of-strings attribute as tf_keras does, chunked past HDF5's header limit."""
    h5py = h5py_module()
    if not names:
        obj.attrs[key] = np.array([], dtype=np.float64)
        return
    encoded = [name.encode("utf-8") for name in names]
    chunks = [encoded]
    while sum(len(n) + 16 for n in max(chunks, key=len)) > _MAX_ATTRIBUTE_BYTES and len(max(chunks, key=len)) > 1:
        chunks = [part for chunk in chunks for part in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:])]
    if len(chunks) == 1:
        obj.attrs[key] = np.array(names, dtype=h5py.string_dtype())
        return
    for index, chunk in enumerate(chunks):
        obj.attrs[f"{key}{index}"] = np.array([n.decode("utf-8") for n in chunk], dtype=h5py.string_dtype())

