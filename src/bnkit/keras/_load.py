"""``load_model`` and ``build_from_config``: Keras model files -> :class:`KerasModel`."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ..layers import BatchNormalization
from ._archive import is_keras_archive, read_archive_json
from ._graph import parse_model_config
from ._h5 import open_h5, read_json_attr, translating
from ._model import KerasModel
from ._plan import check_data_format, plan_model
from ._weights import LoadReport, collect_targets, copy_planned, open_weights, plan_load
from .errors import KerasFormatError

__all__ = ["build_from_config", "load_model", "read_model_config"]


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config stored in a ``.keras`` archive or a full-model ``.h5`` file."""
    return _read_header(Path(path), with_version=False)[0]


def _read_header(source: Path, with_version: bool = True) -> tuple[dict[str, Any], str]:
    """``(model config, Keras version)`` of ``source`` (the version "" when unknown, not asked
    or not a short version text).

    A ``.h5`` file's snapshot is closed before this returns: freed, its memory serves the
    model's config and plan (the weights' index is made from a snapshot of its own).
    """
    if not source.is_file():
        raise FileNotFoundError(f"No Keras file at {source}")
    if is_keras_archive(source):
        config = read_archive_json(source)
        metadata = read_archive_json(source, "metadata.json", required=False) if with_version else None
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    else:
        h5 = open_h5(source, source)
        try:
            with translating(source, "read its model config"):
                config = read_json_attr(h5, "model_config", str(source))
            if config is None:
                raise KerasFormatError(
                    f"{source}: no `model_config` attribute: this is a weights-only file; expected a full model "
                    "saved with model.save(); build the model and call bnkit.keras.load_weights instead"
                )
            with translating(source, "read its Keras version"):
                version = h5.attrs.get("keras_version") if with_version else None
        finally:
            with contextlib.suppress(Exception):
                h5.close()
    if not isinstance(config, dict):
        raise KerasFormatError(f"{source}: the model config must be a JSON object; received {type(config).__name__}")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return config, version if isinstance(version, str) and len(version) <= 64 else ""


def load_model(path: str | os.PathLike[str], data_format: str | None = None) -> KerasModel:
    """Rebuild a Keras model saved with ``model.save()`` as a torch module, weights included.

    Reads ``.keras`` archives (Keras 3, tf_keras >= 2.13) and legacy ``.h5`` files
    (tf_keras 2.x and Keras 3).  The model is made of bnkit layers and torch modules,
    computes in NCHW internally, and takes and returns tensors in Keras' layout.  It is
    returned in ``eval()`` mode, like Keras' ``predict``; call ``.train()`` to train it.

    The config is checked first, then every stored weight against it (names, counts,
    shapes, dtypes, storage), and only then are tensors created and filled, so a damaged
    file raises before any model exists.

    ``data_format="channels_first"`` gives a channels-last Keras model an NCHW (NCDHW)
    interface for its rank-4/5 inputs and outputs: convs and BNs then run natively with no
    permutes inside, and outputs equal Keras' transposed to NCHW (``"channels_last"`` does
    the converse for a channels-first model; None, the default, keeps Keras' layout).

    Raises:
        FileNotFoundError: no file at ``path``.
        KerasFormatError: the file is damaged, unsafe, or its config and weights disagree.
        UnsupportedLayerError: a layer class bnkit cannot rebuild (Lambda, custom objects...).
    """
    data_format = check_data_format(data_format)
    source = Path(path)
    config, version = _read_header(source)
    spec = parse_model_config(config, source)
    plan = plan_model(spec, config, init=False, source=source, data_format=data_format)
    names = {layer.name for layer in spec.layers} | {layer.keras_name for layer in spec.layers if layer.keras_name}
    del spec, config  # what the model keeps of them is in the plan
    with open_weights(source, names) as (layout, stored):
        available = sum(int(ds.size) for layer in stored for ds in layer.datasets)
        if plan.elements() > available:
            raise KerasFormatError(
                f"{source}: the config needs {plan.elements():,} weight values; the file stores only "
                f"{available:,} (missing weights or a corrupted config)"
            )
        model = plan.create()
        del plan  # its memory serves what follows, before the weights are read
        targets, _ = collect_targets(model)
        report = LoadReport(str(source), layout)
        copies = plan_load(targets, stored, layout, report)
        if not report.ok:
            raise KerasFormatError(
                f"{source}: the stored weights do not match the model config; expected one weight per "
                "config entry with the config's shapes; received:\n  " + "\n  ".join(report.problems())
            )
        copy_planned(copies, str(source))
    model.keras_version = version
    if version.startswith("3."):
        model.keras_notes.extend(
            f"{name}: Keras 3 updates moving_variance with the biased batch variance; bnkit follows tf_keras 2 "
            "here (Bessel-corrected on this fused, 4-D/5-D layer), so training statistics differ from Keras 3"
            for name, layer in ((model.keras_name(k), m) for k, m in model.layers.items())
            if isinstance(layer, BatchNormalization) and layer.fused)
    return model.eval()


def build_from_config(config: dict[str, Any] | str, data_format: str | None = None) -> KerasModel:
    """Build a freshly initialised :class:`KerasModel` from a Keras model config.

    ``config`` is ``{"class_name": "Sequential"|"Functional"|"Model", "config": {...}}``
    (a dict or its JSON text), in the tf_keras or Keras 3 dialect, e.g. a model's
    ``keras_config``.  Kernels and biases use the config's Keras initializers.  This is
    what a checkpoint with ``{"builder": "keras", "config": ...}`` replays before loading
    its state dict.  ``data_format``: the interface layout, as in :func:`load_model`.
    """
    check_data_format(data_format)
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as error:
            raise KerasFormatError(
                f"The Keras config must be JSON; it fails at line {error.lineno}: {error.msg}") from error
    if not isinstance(config, dict):
        raise KerasFormatError(f"Expected a Keras model config dict; received {type(config).__name__}")
    spec = parse_model_config(config, "config")
    return plan_model(spec, config, init=True, source="config", data_format=data_format).create()
