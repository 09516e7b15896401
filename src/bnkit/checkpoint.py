"""Checkpoints that carry their architecture: ``{architecture, state_dict}``.

The architecture is data, not pickled code: a builder name with its keyword arguments and
the list of surgery steps applied since (``insert_batch_norm``, ``fold_batch_norm``).
Loading rebuilds the model, replays the steps and loads the state dict with
``torch.load(weights_only=True)``, so no code from the file is ever executed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import write_atomically

__all__ = ["FORMAT", "build", "save_checkpoint", "load_checkpoint"]

FORMAT = "bnkit.checkpoint"
VERSION = 1


def build(architecture: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its architecture record (builder + replayed surgery steps)."""
    from . import models
    from .surgery import fold_batch_norm, insert_batch_norm

    builders = {"vgg16": models.vgg16, "vgg19": models.vgg19}
    name = architecture.get("builder")
    if name == "keras":  # written by `bnkit convert`: the Keras config itself, as data
        from .keras import build_from_config

        model: nn.Module = build_from_config(architecture["config"],
                                             data_format=architecture.get("data_format"))
    elif name in builders:
        model = builders[name](**architecture.get("kwargs", {}))
    else:
        raise ValueError(f"Unknown architecture builder: expected one of {sorted(builders) + ['keras']}; received: {name!r}")
    for step in architecture.get("transforms", []):
        op = step.get("op")
        if op == "insert_batch_norm":
            model, _ = insert_batch_norm(model, placement=step["placement"], **step.get("bn_kwargs", {}))
        elif op == "fold_batch_norm":
            model, _ = fold_batch_norm(model.eval())
        else:
            raise ValueError(f"Unknown transform in checkpoint: expected 'insert_batch_norm' or 'fold_batch_norm'; received: {op!r}")
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


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, architecture)``."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No checkpoint at {source}")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{source} is not a readable bnkit checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{source} is not a bnkit checkpoint: expected format {FORMAT!r}; "
                         f"received: {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}")
    architecture = payload["architecture"]
    model = build(architecture)
    model.load_state_dict(payload["state_dict"])
    return model, architecture
