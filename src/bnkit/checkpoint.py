"""Checkpoints that carry their architecture: ``{architecture, state_dict}``.

The architecture is data, not pickled code: a builder name with its keyword arguments and
the list of surgery steps applied since (``insert_batch_norm``, ``fold_batch_norm``).
Loading rebuilds the model, replays the steps and loads the state dict with
``torch.load(weights_only=True)``, so no code from the file is ever executed.

A checkpoint is untrusted input: its record is checked field by field, and the size of the
model it declares is computed without allocating (on PyTorch's ``meta`` device, or from a
Keras config's plan) and compared with the tensors the file actually stores before any
real tensor is created, so a 2 kB file cannot make bnkit allocate gigabytes.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import write_atomically
from ._repr import short

__all__ = ["FORMAT", "MAX_ELEMENTS", "build", "declared_elements", "save_checkpoint", "load_checkpoint"]

FORMAT = "bnkit.checkpoint"
VERSION = 1
#: No architecture may declare more values (parameters and buffers) than this (8 GiB of float32).
MAX_ELEMENTS = 2**31
#: A checkpoint's model may hold at most this many values more than its file stores
#: (surgery replayed after the base model adds a few BN statistics).
ELEMENT_SLACK = 1 << 20
_TRANSFORMS = ("insert_batch_norm", "fold_batch_norm")


def _builders() -> dict[str, Any]:
    from . import models

    return {"vgg16": models.vgg16, "vgg19": models.vgg19}


def _check_record(architecture: Any, source: object) -> None:
    """Refuse a malformed architecture record with a message naming the field."""
    where = f"{source}: " if source else ""
    if not isinstance(architecture, dict):
        raise ValueError(f"{where}the architecture must be a dict; received {type(architecture).__name__} "
                         f"{short(architecture)}")
    name = architecture.get("builder")
    if name != "keras" and name not in _builders():
        raise ValueError(f"{where}unknown architecture builder: expected one of {sorted(_builders()) + ['keras']}; "
                         f"received: {short(name)}")
    if name == "keras" and not isinstance(architecture.get("config"), (dict, str)):
        raise ValueError(f"{where}a 'keras' architecture needs its Keras model config under 'config'; "
                         f"received: {short(architecture.get('config'))}")
    kwargs = architecture.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ValueError(f"{where}the architecture's 'kwargs' must be a dict of keyword arguments; "
                         f"received: {short(kwargs)}")
    steps = architecture.get("transforms", [])
    if not isinstance(steps, list):
        raise ValueError(f"{where}the architecture's 'transforms' must be a list; received: {short(steps)}")
    for index, step in enumerate(steps):
        op = step.get("op") if isinstance(step, dict) else None
        if op not in _TRANSFORMS:
            raise ValueError(f"{where}transform {index}: expected a dict with 'op' in {list(_TRANSFORMS)}; "
                             f"received: {short(step)}")
        if op == "insert_batch_norm" and (not isinstance(step.get("placement"), str)
                                         or not isinstance(step.get("bn_kwargs", {}), dict)
                                         or not isinstance(step.get("include_output", True), bool)):
            raise ValueError(f"{where}transform {index} (insert_batch_norm): expected a 'placement' string, "
                             f"a 'bn_kwargs' dict and an optional 'include_output' bool; received: {short(step)}")


def _base(architecture: dict[str, Any]) -> nn.Module:
    if architecture["builder"] == "keras":  # written by `bnkit convert`: the Keras config itself, as data
        from .keras import build_from_config

        return build_from_config(architecture["config"], data_format=architecture.get("data_format"))
    return _builders()[architecture["builder"]](**architecture.get("kwargs", {}))


def declared_elements(architecture: dict[str, Any], source: object = "") -> int:
    """How many values (parameters and buffers) the record's base model declares, allocating nothing.

    Keras configs are counted from their build plan; builders run on the ``meta`` device.
    Raises ValueError beyond :data:`MAX_ELEMENTS`.
    """
    _check_record(architecture, source)
    if architecture["builder"] == "keras":
        from .keras._plan import plan_model
        from .keras._graph import parse_model_config

        config = architecture["config"]
        if isinstance(config, str):
            import json

            try:
                config = json.loads(config)
            except ValueError as error:
                raise ValueError(f"{source}: the Keras config is not JSON: {error}") from error
        count = plan_model(parse_model_config(config, source or "config"), config, init=False,
                           source=source or "config").elements()
    else:
        try:
            with torch.device("meta"):
                model = _base(architecture)
        except TypeError as error:
            raise ValueError(f"{source}: the architecture's kwargs do not fit the builder "
                             f"{architecture['builder']!r}: {short(str(error), 200)}") from error
        count = sum(t.numel() for t in model.state_dict().values())
    if count > MAX_ELEMENTS:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}the architecture declares {count:,} values; expected at most {MAX_ELEMENTS:,} "
                         "(8 GiB of float32): an absurd or corrupted architecture")
    return count


def build(architecture: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its architecture record (builder + replayed surgery steps).

    The record is checked first and the model's size computed without allocating; records
    declaring more than :data:`MAX_ELEMENTS` values are refused.
    """
    from .surgery import fold_batch_norm, insert_batch_norm

    declared_elements(architecture)
    model = _base(architecture)
    for step in architecture.get("transforms", []):
        if step["op"] == "insert_batch_norm":
            # checkpoints written before include_output existed normalised the output layer too
            model, _ = insert_batch_norm(model, placement=step["placement"],
                                         include_output=step.get("include_output", True), **step.get("bn_kwargs", {}))
        else:
            model, _ = fold_batch_norm(model.eval())
    return model


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, architecture: dict[str, Any],
                    *, force: bool = False) -> Path:
    """Write ``model``'s state with its architecture; refuses to overwrite unless ``force``.

    The file is written to a temporary name and renamed, so an interrupted write never
    leaves a truncated checkpoint behind.
    """
    target = Path(path)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=True (or --force) to overwrite it")
    payload = {"format": FORMAT, "version": VERSION, "architecture": architecture,
               "state_dict": model.state_dict()}
    write_atomically(target, lambda staged: torch.save(payload, staged))
    return target


def _read(source: Path) -> Any:
    """``torch.load`` of a zip-format checkpoint whose members fit in the file (no bombs)."""
    size = source.stat().st_size
    try:
        with zipfile.ZipFile(source) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(f"{source} is not a bnkit checkpoint: expected the zip format torch.save writes; "
                         f"it cannot be opened as one ({error})") from error
    if declared > size:
        raise ValueError(f"{source}: its members declare {declared:,} bytes but the file has {size:,}; expected "
                         "uncompressed members as torch.save writes (a corrupted or crafted file)")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{source} is not a readable bnkit checkpoint: {short(str(error), 300)}") from error


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, architecture)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a bnkit checkpoint, a malformed architecture record, a model larger
            than the stored tensors (checked before allocating), or tensors that do not fit it.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No checkpoint at {source}")
    payload = _read(source)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        received = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{source} is not a bnkit checkpoint: expected format {FORMAT!r}; received: {short(received)}")
    if "architecture" not in payload or "state_dict" not in payload:
        raise ValueError(f"{source}: a bnkit checkpoint needs 'architecture' and 'state_dict'; "
                         f"found keys {short(sorted(map(str, payload)))}")
    architecture, state = payload["architecture"], payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: 'state_dict' must map names to tensors; received {short(state)}")
    stored = sum(t.numel() for t in state.values())
    declared = declared_elements(architecture, source)
    if declared > 2 * stored + ELEMENT_SLACK:
        raise ValueError(
            f"{source}: the architecture declares {declared:,} values but the file stores only {stored:,}; "
            "expected the tensors of the declared model (a corrupted or crafted checkpoint); nothing was built")
    model = build(architecture)
    _check_state(model, state, source)
    model.load_state_dict(state)
    return model, architecture


def _check_state(model: nn.Module, state: dict[str, Any], source: Path) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in found]
    problems += [f"unexpected {short(name)} {short(shape)}" for name, shape in found.items() if name not in expected]
    problems += [f"{name}: the file has {found[name]}, the model {shape}"
                 for name, shape in expected.items() if name in found and found[name] != shape]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(f"{source}: the stored tensors do not fit the architecture: " + "; ".join(problems[:8]) + more)
