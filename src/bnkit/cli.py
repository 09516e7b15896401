"""The ``bnkit`` command line: summaries, checkpoints, BN insertion and folding."""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from . import _cli_support as support
from . import checkpoint
from .models import PLACEMENTS

__all__ = ["main"]


def _architecture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-norm", choices=[p for p in PLACEMENTS if p], default=None,
                        help="put a BatchNormalization on every conv layer, before or after the activation")
    parser.add_argument("--batch-norm-dense", action="store_true", help="also on fc1 and fc2")
    parser.add_argument("--input-shape", type=support.shape, default=(3, 224, 224), help="channels,height,width")
    parser.add_argument("--classes", type=support.positive_int(1_000_000), default=1000)
    parser.add_argument("--width", type=support.width, default=1.0, help="channel multiplier, in (0, 16]")
    parser.add_argument("--no-top", action="store_true", help="without flatten/fc1/fc2/predictions")


def _architecture(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {"batch_norm": args.batch_norm, "batch_norm_dense": args.batch_norm_dense,
              "input_shape": list(args.input_shape), "classes": args.classes, "width": args.width,
              "include_top": not args.no_top}
    return {"builder": args.arch, "kwargs": kwargs, "transforms": []}


def _load(source: str, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    if Path(source).suffix in (".pt", ".pth") or Path(source).is_file():
        return support.read_checkpoint(source)
    if source not in ("vgg16", "vgg19"):
        raise ValueError(f"MODEL {source!r}: expected vgg16, vgg19 or a checkpoint file (.pt/.pth)")
    args.arch = source
    architecture = _architecture(args)
    support.check_vgg_size(source, architecture["kwargs"], forward=True)
    return checkpoint.build(architecture), architecture


def _cmd_summary(args: argparse.Namespace) -> int:
    from .summary import summary

    model, architecture = _load(args.model, args)
    kwargs = architecture.get("kwargs") if isinstance(architecture.get("kwargs"), dict) else {}
    shape = tuple(kwargs.get("input_shape", args.input_shape))
    print(summary(model, shape, style=args.style))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    support.check_output(args.output, args.force)
    architecture = _architecture(args)
    support.check_vgg_size(args.arch, architecture["kwargs"], forward=False)
    model = checkpoint.build(architecture)
    checkpoint.save_checkpoint(args.output, model, architecture, force=args.force)
    print(f"wrote {args.output}: {args.arch} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def _cmd_add_bn(args: argparse.Namespace) -> int:
    from .surgery import insert_batch_norm

    support.check_output(args.output, args.force)
    model, architecture = support.read_checkpoint(args.input)
    bn_kwargs = {"momentum": args.momentum, "epsilon": args.epsilon}
    data = None
    if args.calibration:
        kwargs = architecture.get("kwargs") if isinstance(architecture.get("kwargs"), dict) else {}
        x = support.load_calibration(args.calibration, kwargs.get("input_shape"))
        data = list(torch.split(x, args.batch_size))
    new_model, report = insert_batch_norm(model.eval(), placement=args.placement, calibration_data=data, **bn_kwargs)
    architecture = copy.deepcopy(architecture)
    architecture["transforms"].append({"op": "insert_batch_norm", "placement": args.placement, "bn_kwargs": bn_kwargs})
    checkpoint.save_checkpoint(args.output, new_model, architecture, force=args.force)
    print(report)
    print(f"wrote {args.output}")
    return 0


def _cmd_fold(args: argparse.Namespace) -> int:
    from .surgery import fold_batch_norm

    support.check_output(args.output, args.force)
    model, architecture = support.read_checkpoint(args.input)
    folded, report = fold_batch_norm(model.eval())
    architecture = copy.deepcopy(architecture)
    architecture["transforms"].append({"op": "fold_batch_norm"})
    checkpoint.save_checkpoint(args.output, folded, architecture, force=args.force)
    print(report)
    print(f"wrote {args.output}")
    return 0


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="no progress bars; the results table at the end")
    out.add_argument("--json", action="store_true", help="JSON lines on stdout only (one per epoch)")
    parser.add_argument("--no-fast-allocator", action="store_true",
                        help="do not re-run under tcmalloc/jemalloc when one is installed")


def _progress_mode(args: argparse.Namespace) -> str:
    return "json" if args.json else "quiet" if args.quiet else "bar"


def _require_experiment_packages(digits: bool = False) -> None:
    """Fail before any training when the ``experiments`` extra is missing (the plot comes last)."""
    from ._optional import optional_import

    optional_import("matplotlib", "for the plots")
    if digits:
        optional_import("sklearn.datasets", "for the 'digits' dataset")


def _cmd_demo(args: argparse.Namespace) -> int:
    _require_experiment_packages(digits=True)
    from .experiments import demo_config, run_experiment

    _announce_allocator(args)
    overrides: dict[str, Any] = {"output_dir": args.output_dir}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.seeds:
        overrides["seeds"] = tuple(range(args.seeds))
    if args.limit:
        overrides["limit"] = args.limit
    return _run(lambda: run_experiment(demo_config(**overrides), progress=_progress_mode(args)))


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except ValueError:
        if _rank() != 0:  # under torchrun a bad option fails on every rank alike: rank 0 alone says it
            return 2
        raise


def _train(args: argparse.Namespace) -> int:
    _require_experiment_packages()  # a dataset's own (scikit-learn, Pillow): checked as it loads
    from .experiments import ExperimentConfig, load_config, run_experiment

    if args.resume:
        _announce_allocator(args)
        return _run(lambda: run_experiment(resume=args.resume, progress=_progress_mode(args)))
    config = load_config(args.config) if args.config else ExperimentConfig()
    changes = {key: value for key, value in vars(args).items() if key in _TRAIN_FLAGS and value is not None}
    if "variants" in changes:
        changes["variants"] = [v.strip() for v in changes["variants"].split(",") if v.strip()]
    if changes:
        config = ExperimentConfig.from_dict({**config.to_dict(), **changes})
    _announce_allocator(args)  # after the checks: a bad option fails before a re-run under another allocator
    return _run(lambda: run_experiment(config, progress=_progress_mode(args)))


_TRAIN_FLAGS = ("name", "dataset", "image_size", "limit", "model", "width", "variants", "batch_size", "optimizer",
                "learning_rate", "schedule", "epochs", "seeds", "threads", "target_accuracy", "output_dir", "dropout",
                "sync_bn", "device")


def _run(job: Any) -> int:
    try:
        job()
    except KeyboardInterrupt:
        if _rank() != 0:
            return 130
        print("\ninterrupted: every finished epoch is checkpointed; continue with "
              "`bnkit train --resume RUN_DIR` (the run folder is printed above)", file=sys.stderr)
        return 130
    return 0


def _rank() -> int:
    """This process' rank under torchrun (0 when not launched by it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _announce_allocator(args: argparse.Namespace) -> None:
    from . import allocator

    if args.command_line and not args.no_fast_allocator:  # never re-run a caller's process
        allocator.reexec_with_fast_allocator()  # execve keeps the pid and torchrun's environment
    if not args.json and _rank() == 0:
        print(f"allocator: {allocator.describe()}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    from . import __version__

    root = support.OneLineParser(prog="bnkit", description="Batch normalization with tf.keras semantics for PyTorch.")
    root.add_argument("--version", action="version", version=f"bnkit {__version__}")
    root.add_argument("--debug", action="store_true",
                      help=f"show the traceback of a failure (also: environment variable {support.DEBUG_VARIABLE}=1)")
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train a narrow VGG16 on the digits without BN and with BN before/after the activation")
    p.add_argument("--epochs", type=support.positive_int(100_000), help="epochs per run (default 8)")
    p.add_argument("--seeds", type=support.positive_int(1000), help="number of seeds (default 3)")
    p.add_argument("--limit", type=support.positive_int(), help="use at most this many training images")
    p.add_argument("--output-dir", default="runs")
    _experiment_arguments(p)
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("train", help="run a configurable experiment (flags override the --config file)")
    p.add_argument("--config", help=".toml, .json or .yaml experiment file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--name")
    p.add_argument("--dataset", help="digits, a CIFAR-10 python folder, an image folder, or an .npz")
    p.add_argument("--image-size", type=support.positive_int(support.MAX_SIDE))
    p.add_argument("--limit", type=support.positive_int())
    p.add_argument("--model", choices=["vgg16", "vgg19"])
    p.add_argument("--width", type=support.width)
    p.add_argument("--variants", help="comma list of none, before_activation, after_activation, renorm, ghost")
    p.add_argument("--batch-size", type=support.positive_int(2**24),
                   help="the global batch: under torchrun each of N processes takes batch-size/N of every batch")
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--learning-rate", "--lr", type=support.real(0.0, 10.0, low_open=True), dest="learning_rate")
    p.add_argument("--schedule", choices=["constant", "cosine", "step"])
    p.add_argument("--epochs", type=support.positive_int(100_000))
    p.add_argument("--seeds", type=support.seeds, help="comma list, e.g. 0,1,2")
    p.add_argument("--threads", type=support.positive_int(support.MAX_THREADS))
    p.add_argument("--dropout", type=support.real(0.0, 1.0, high_open=True))
    p.add_argument("--target-accuracy", type=support.real(0.0, 1.0, low_open=True))
    p.add_argument("--output-dir")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="synchronized BN: statistics over the global batch of every torchrun process")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="cpu (default; gloo between processes) or cuda (GPU LOCAL_RANK per process; NCCL)")
    _experiment_arguments(p)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("summary", help="Keras-style summary of a VGG or a checkpoint")
    p.add_argument("model", help="vgg16, vgg19, or a checkpoint file")
    p.add_argument("--style", choices=["keras", "torch"], default="keras",
                   help="keras counts moving mean/variance as non-trainable parameters; torch counts parameters only")
    _architecture_arguments(p)
    p.set_defaults(run=_cmd_summary)

    p = sub.add_parser("build", help="write a freshly initialised VGG checkpoint")
    p.add_argument("arch", choices=["vgg16", "vgg19"])
    p.add_argument("output")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    _architecture_arguments(p)
    p.set_defaults(run=_cmd_build)

    p = sub.add_parser("add-bn", help="insert BatchNormalization into a checkpoint's model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--placement", choices=["before_activation", "after_activation"], default="before_activation")
    p.add_argument("--momentum", type=support.real(0.0, 1.0), default=0.99)
    p.add_argument("--epsilon", type=support.real(0.0, math.inf, low_open=True), default=1e-3)
    p.add_argument("--calibration", help=".npz with an array 'x' of inputs: initialise BN so outputs are preserved")
    p.add_argument("--batch-size", type=support.positive_int(2**24), default=32)
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=_cmd_add_bn)

    from .keras.cli import add_convert_parser

    add_convert_parser(sub)

    p = sub.add_parser("fold", help="fold BatchNormalization into neighbouring conv/linear layers")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=_cmd_fold)
    for command in sub.choices.values():  # `bnkit fold ... --debug` works as well as `bnkit --debug fold ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure is one line on stderr and exit status 2 (130 when interrupted).

    ``--debug`` (or the environment variable ``BNKIT_DEBUG=1``) lets the exception through,
    with its traceback.
    """
    args = parser().parse_args(argv)
    args.command_line = argv is None
    if args.debug or support.debug_requested(argv):
        return int(args.run(args))
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"bnkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (Exception, MemoryError) as error:  # noqa: BLE001 - the one place every failure is reported
        output = getattr(args, "output", None) or getattr(args, "output_dir", None)
        print(f"bnkit {args.command}: error: {support.describe(error, output)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
