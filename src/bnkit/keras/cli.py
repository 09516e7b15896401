"""``bnkit convert``: Keras files <-> bnkit checkpoints.

    bnkit convert model.h5|model.keras out.pt      Keras model -> checkpoint
    bnkit convert in.pt out.keras|out.h5           checkpoint -> Keras model
    bnkit convert model.h5 model.keras             between Keras formats
    bnkit convert model.h5 out.pt --data-format channels_first   NCHW interface

A checkpoint written from a Keras file stores the architecture as data, the Keras model
config itself: ``{"builder": "keras", "config": {...}}``, next to the state dict.
Existing outputs are never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from .. import checkpoint
from ._load import load_model
from ._model import KerasModel
from ._save import save_model
from .errors import KerasFormatError

__all__ = ["KERAS_BUILDER", "add_convert_parser", "load_checkpoint_model", "run_convert"]

KERAS_BUILDER = "keras"
_CHECKPOINT = (".pt", ".pth")
_KERAS = (".keras", ".h5", ".hdf5")


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to ``bnkit``'s subparsers; returns its parser."""
    parser = subparsers.add_parser(
        "convert", help="convert Keras .h5/.keras files to bnkit checkpoints (.pt) and back",
        description="Convert Keras .h5/.keras files to bnkit checkpoints (.pt) and back, or between Keras formats.")
    parser.add_argument("input", help="a Keras .h5/.keras model or a bnkit .pt checkpoint")
    parser.add_argument("output", help="a .pt checkpoint or a .keras/.h5 Keras file")
    parser.add_argument("--input-shape", type=_shape, default=None,
                        help="C,H,W of a checkpoint's torch model when writing Keras (default: from the checkpoint)")
    parser.add_argument("--data-format", choices=("channels_last", "channels_first"), default=None,
                        help="layout of the checkpoint model's image inputs/outputs (default: Keras' own; "
                             "channels_first: NCHW, convs and BNs run without permutes)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    parser.set_defaults(run=run_convert)
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 3,224,224; received: {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 3,224,224; received: {text!r}")
    return shape


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a checkpoint's model (``{"builder": "keras"}`` architectures included).

    A malformed checkpoint is a ValueError naming the file (:func:`bnkit._cli_support.read_checkpoint`).
    """
    from .._cli_support import read_checkpoint

    return read_checkpoint(path)


def _describe(model: nn.Module) -> str:
    values = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    statistics = sum(b.numel() for b in model.buffers())
    if isinstance(model, KerasModel):
        classes = Counter(layer["class_name"] for layer in model.keras_config["config"]["layers"])
        kinds = ", ".join(f"{cls} x{count}" for cls, count in classes.items())
        return (f"Keras model {model.name!r}: {sum(classes.values())} layers ({kinds}); "
                f"{values:,} values ({statistics:,} in moving statistics)")
    return f"{type(model).__name__} with {values:,} values ({statistics:,} in moving statistics)"


def run_convert(args: argparse.Namespace) -> int:
    """Run ``bnkit convert INPUT OUTPUT``; prints what was converted."""
    source, target = Path(args.input), Path(args.output)
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    if not source.is_file():
        raise FileNotFoundError(f"No input file at {source}")
    out_kind = target.suffix.lower()
    if out_kind not in _CHECKPOINT + _KERAS:
        raise ValueError(f"OUTPUT must end in {', '.join(_CHECKPOINT + _KERAS)}; received: {target.name!r}")
    data_format = getattr(args, "data_format", None)
    if data_format is not None and (source.suffix.lower() in _CHECKPOINT or out_kind not in _CHECKPOINT):
        raise ValueError(f"--data-format sets the interface of a checkpoint written from a Keras file; received it "
                         f"for {source.name} -> {target.name}")
    if source.suffix.lower() in _CHECKPOINT:
        model, architecture = load_checkpoint_model(source)
        origin = f"checkpoint ({architecture.get('builder')})"
    else:
        model, architecture = load_model(source, data_format=data_format), {}
        origin = "Keras file"
    print(f"read {source}: {origin}, {_describe(model)}")
    if out_kind in _CHECKPOINT:
        if not isinstance(model, KerasModel):
            raise ValueError(f"{source} is already a checkpoint; expected a Keras .h5/.keras input for a .pt output")
        architecture = {"builder": KERAS_BUILDER, "config": model.keras_config}
        if model.data_format != model.keras_data_format:
            architecture["data_format"] = model.data_format
        checkpoint.save_checkpoint(target, model, architecture, force=args.force)
        print(f"wrote {target}: bnkit checkpoint, architecture = the Keras config ({len(model.layers)} modules, "
              f"{model.data_format} interface)")
        for note in model.keras_notes:
            print(f"  note: {note}")
        return 0
    shape = args.input_shape or (architecture.get("kwargs") or {}).get("input_shape")
    if not isinstance(model, KerasModel) and shape is None:
        raise KerasFormatError(f"{source}: the torch model's input shape is unknown; expected --input-shape C,H,W")
    print(save_model(model, target, input_shape=tuple(shape) if shape else None, overwrite=args.force))
    return 0
