"""``bnkit convert``: Keras files <-> bnkit checkpoints.

    bnkit convert model.h5|model.keras out.pt      Keras model -> checkpoint
    bnkit convert in.pt out.keras|out.h5           checkpoint -> Keras model
    bnkit convert model.h5 model.keras             between Keras formats
    bnkit convert model.h5 out.pt --data-format channels_first   NCHW interface

Options work on the model read, in this order: ``--summary`` prints its table in Keras'
convention (parameters + BN moving statistics, as Keras' ``model.summary()``) and a line
in PyTorch's (parameters only, ``sum(p.numel())``); ``--fold`` folds its batch norms into
neighbouring conv/dense layers and prints what was folded and what was kept (a Keras
model stays a Keras model: folded BNs leave its config, so it is written as Keras or as a
checkpoint like any other); ``--check`` reloads what was written and compares its outputs
on a random input with the model read (exit status 1 above ``--rtol``).

A checkpoint written from a Keras file stores the architecture as data, the Keras model
config itself: ``{"builder": "keras", "config": {...}}``, next to the state dict.
Existing outputs are never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import checkpoint
from .._repr import short
from ._load import load_model
from ._model import KerasModel
from ._save import save_model
from .errors import KerasFormatError

__all__ = ["KERAS_BUILDER", "add_convert_parser", "load_checkpoint_model", "run_convert"]

KERAS_BUILDER = "keras"
_CHECKPOINT = (".pt", ".pth")
_KERAS = (".keras", ".h5", ".hdf5")
_DATA_FORMATS = ("channels_last", "channels_first")
_DEFAULT_RTOL = 1e-5


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to ``bnkit``'s subparsers; returns its parser."""
    parser = subparsers.add_parser(
        "convert", help="convert Keras .h5/.keras files to bnkit checkpoints (.pt) and back",
        description="Convert Keras .h5/.keras files to bnkit checkpoints (.pt) and back, or between Keras "
                    "formats; optionally summarise, fold batch norms and check what was written.")
    parser.add_argument("input", help="a Keras .h5/.keras model or a bnkit .pt checkpoint")
    parser.add_argument("output", help="a .pt checkpoint or a .keras/.h5 Keras file")
    parser.add_argument("--input-shape", type=_shape, default=None,
                        help="the model's input shape without the batch, in the layout its forward takes "
                             "(C,H,W for a torch checkpoint, H,W,C for a channels-last Keras model); needed "
                             "where the file leaves sizes open (default: from the file)")
    parser.add_argument("--summary", action="store_true",
                        help="print the model's table (Keras' counts) and its PyTorch-convention totals")
    parser.add_argument("--fold", action="store_true",
                        help="fold batch norms into neighbouring conv/dense layers before writing")
    parser.add_argument("--check", action="store_true",
                        help="reload OUTPUT and compare its outputs with the model read on a random input")
    parser.add_argument("--rtol", type=_tolerance, default=None,
                        help="--check's limit on max|difference| / max|output| (default 1e-5)")
    parser.add_argument("--data-format", choices=_DATA_FORMATS, default=None,
                        help="layout of the image inputs/outputs of a checkpoint written from a Keras file "
                             "(default: Keras' own; channels_first: NCHW, convs and BNs run without permutes)")
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


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e-5; received: {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; received: {text!r}")
    return value


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


def _refuse_combinations(args: argparse.Namespace, source: Path, target: Path, from_checkpoint: bool) -> None:
    if args.data_format is not None and (from_checkpoint or target.suffix.lower() not in _CHECKPOINT):
        raise ValueError(f"--data-format sets the interface of a checkpoint written from a Keras file; received it "
                         f"for {source.name} -> {target.name}")
    if args.rtol is not None and not args.check:
        raise ValueError(f"--rtol is the limit of --check; received --rtol {args.rtol} without --check")
    if target.resolve() == source.resolve():
        raise ValueError(f"OUTPUT must differ from INPUT; received {source} for both")


def run_convert(args: argparse.Namespace) -> int:
    """Run ``bnkit convert INPUT OUTPUT``; prints what was converted (exit 1: ``--check`` failed)."""
    source, target = Path(args.input), Path(args.output)
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    if not source.is_file():
        raise FileNotFoundError(f"No input file at {source}")
    out_kind = target.suffix.lower()
    if out_kind not in _CHECKPOINT + _KERAS:
        raise ValueError(f"OUTPUT must end in {', '.join(_CHECKPOINT + _KERAS)}; received: {target.name!r}")
    from_checkpoint = source.suffix.lower() in _CHECKPOINT
    _refuse_combinations(args, source, target, from_checkpoint)
    if from_checkpoint:
        model, architecture = load_checkpoint_model(source)
        origin = f"checkpoint ({architecture.get('builder')})"
    else:
        model, architecture = load_model(source, data_format=args.data_format), {}
        origin = "Keras file"
    model.eval()
    if out_kind in _CHECKPOINT and not isinstance(model, KerasModel):
        raise ValueError(f"{source} is already a checkpoint; expected a Keras .h5/.keras input for a .pt output")
    shape = args.input_shape or (architecture.get("kwargs") or {}).get("input_shape")
    if not isinstance(model, KerasModel) and out_kind in _KERAS and shape is None:
        raise KerasFormatError(f"{source}: the torch model's input shape is unknown; expected --input-shape C,H,W")
    print(f"read {source}: {origin}, {_describe(model)}")
    shapes = input_shapes(model, args.input_shape or (tuple(shape) if shape else None), source) \
        if args.summary or args.check else []
    if args.summary:
        _print_summary(model, shapes)
    original = model
    if args.fold:
        model = _fold(model)
    if out_kind in _CHECKPOINT:
        architecture = {"builder": KERAS_BUILDER, "config": model.keras_config}
        if model.data_format != model.keras_data_format:
            architecture["data_format"] = model.data_format
        checkpoint.save_checkpoint(target, model, architecture, force=args.force)
        print(f"wrote {target}: bnkit checkpoint, architecture = the Keras config ({len(model.layers)} modules, "
              f"{model.data_format} interface)")
        for note in model.keras_notes:
            print(f"  note: {note}")
    else:
        print(save_model(model, target, input_shape=tuple(shape) if shape else None, overwrite=args.force))
    if args.check:
        return _check(original, model, target, shapes, _DEFAULT_RTOL if args.rtol is None else args.rtol)
    return 0


def _print_summary(model: nn.Module, shapes: list[tuple[int, ...]]) -> None:
    from ..summary import summary

    keras_order = isinstance(model, KerasModel) and model.keras_data_format == "channels_last"
    table = summary(model, input_data=random_inputs(model, shapes, batch=1), channels_last=keras_order)
    print("Keras convention (parameters + BN moving statistics, as Keras' model.summary() counts them):")
    print(table)
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    print(f"PyTorch convention (parameters only): Total params: {total:,}, Trainable params: {trainable:,}, "
          f"Non-trainable params: {total - trainable:,}")


def _fold(model: nn.Module) -> nn.Module:
    from ..surgery import fold_batch_norm
    from ._folded import fold_keras_model

    folded, report = fold_keras_model(model) if isinstance(model, KerasModel) else fold_batch_norm(model)
    print(report)
    return folded


def _check(original: nn.Module, written: nn.Module, target: Path, shapes: list[tuple[int, ...]],
           rtol: float) -> int:
    """Reload ``target``; its outputs must equal the model read (and the folded one) within ``--rtol``."""
    if target.suffix.lower() in _CHECKPOINT:
        reloaded, _ = load_checkpoint_model(target)
    else:
        reloaded = load_model(target, data_format=original.data_format if isinstance(original, KerasModel) else None)
    reloaded.eval()
    inputs = random_inputs(original, shapes, batch=2)
    to_keras = not isinstance(original, KerasModel)  # a torch model written as Keras: NCHW -> NHWC
    compared = [("the model read", original)] + ([("the folded model", written)] if written is not original else [])
    ok = True
    for what, model in compared:
        difference = relative_difference(model, reloaded, inputs, to_keras)
        ok = ok and difference <= rtol
        print(f"check: {target.name} reloaded vs {what} on random input(s) "
              f"{', '.join(str((2, *s)) for s in shapes)}: max relative difference {difference:.3g} "
              f"(limit {rtol:g}): {'ok' if difference <= rtol else 'FAILED'}")
    return 0 if ok else 1


def input_shapes(model: nn.Module, given: tuple[int, ...] | None, source: Path) -> list[tuple[int, ...]]:
    """The shapes (no batch) of ``model``'s inputs, in its forward's layout, for summaries and checks."""
    if not isinstance(model, KerasModel):
        if given is None:
            raise ValueError(f"{source}: the torch model's input shape is unknown; expected --input-shape C,H,W")
        return [tuple(given)]
    declared = [tuple(shape[1:]) for shape in model.input_shapes]
    if given is not None:
        if len(declared) != 1:
            raise ValueError(f"--input-shape gives one input; {source} has {len(declared)} inputs")
        if len(given) != len(declared[0]) or any(d is not None and d != g for d, g in zip(declared[0], given)):
            raise ValueError(f"--input-shape must fit the model's input shape {short(declared[0])} (None: any size); "
                             f"received {','.join(map(str, given))}")
        return [tuple(given)]
    for shape in declared:
        if any(size is None for size in shape):
            raise ValueError(f"{source}: the model's input shape {short(shape)} leaves sizes open (None); "
                             "expected --input-shape with every size")
    return [tuple(int(s) for s in shape) for shape in declared]  # type: ignore[arg-type]


def random_inputs(model: nn.Module, shapes: list[tuple[int, ...]], batch: int) -> list[Tensor]:
    """Inputs from a fixed seed: standard normal values, or token ids for a model with an embedding.

    Token ids (integers below the smallest embedding's size, in the input's dtype) go to
    integer inputs and, in a model with an embedding, to every ``(batch, steps)`` input, as
    Keras' Embedding takes float ids too.
    """
    generator = torch.Generator().manual_seed(0)
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    inputs = []
    for shape, dtype in zip(shapes, _input_dtypes(model, len(shapes))):
        integer = dtype.startswith(("int", "uint"))
        if integer or (sizes and len(shape) == 1):
            ids = torch.randint(0, min(sizes, default=2), (batch, *shape), generator=generator)
            inputs.append(ids if integer else ids.to(torch.get_default_dtype()))
        else:
            inputs.append(torch.randn((batch, *shape), generator=generator))
    return inputs


def _input_dtypes(model: nn.Module, count: int) -> list[str]:
    if not isinstance(model, KerasModel):
        return ["float32"] * count
    layers = {layer["name"]: layer for layer in model.keras_config["config"]["layers"]}
    dtypes = []
    for entry in model.keras_config["config"]["input_layers"]:
        dtype = layers.get(entry[0], {}).get("config", {}).get("dtype") or "float32"
        if isinstance(dtype, dict):  # Keras 3: {"class_name": "DTypePolicy", "config": {"name": "float32"}}
            dtype = (dtype.get("config") or {}).get("name") or "float32"
        dtypes.append(str(dtype))
    return dtypes


def relative_difference(reference: nn.Module, other: nn.Module, inputs: list[Tensor], to_keras: bool) -> float:
    """max |other - reference| / max |reference| over all outputs (``to_keras``: ``other`` takes NHWC)."""
    with torch.no_grad():
        expected = _outputs(reference(*inputs))
        moved = [x.permute(0, *range(2, x.dim()), 1) if to_keras and x.dim() > 2 else x for x in inputs]
        received = _outputs(other(*moved))
    if len(expected) != len(received):
        return math.inf
    worst = 0.0
    for want, got in zip(expected, received):
        if to_keras and got.dim() > 2:
            got = got.permute(0, got.dim() - 1, *range(1, got.dim() - 1))
        if want.shape != got.shape:
            return math.inf
        scale = float(want.abs().max()) if want.numel() else 0.0
        worst = max(worst, float((got - want).abs().max()) / scale if scale > 0 else float((got - want).abs().max()))
    return worst


def _outputs(value: Tensor | tuple[Tensor, ...]) -> list[Tensor]:
    return [t.float() for t in (value if isinstance(value, (tuple, list)) else (value,))]
