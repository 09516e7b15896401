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
from ._repr import short
from .models import PLACEMENTS

__all__ = ["main"]


_SEEDS_HELP = "a count N (seeds 0..N-1) or a comma list of seeds (e.g. 0,1,2; a single seed 5 is 5,)"


def _seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: ``N`` means seeds 0..N-1, ``a,b,...`` means those seeds (``5,`` is seed 5 alone)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        try:
            count = int(parts[0])
        except ValueError:
            count = 0
        if not 1 <= count <= 1000:
            raise argparse.ArgumentTypeError(
                f"expected a count from 1 to 1,000 or a comma list of seeds such as 0,1,2; received: {short(text)}")
        return tuple(range(count))
    try:
        seeds = tuple(int(part) for part in parts if part)
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= seed < 2**32 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds in [0, 2**32) such as 0,1,2; received: {short(text)}")
    return seeds


def _listing(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


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
    print(summary(model, shape, style=args.style, macs=args.macs, memory=args.memory,
                  channels_last=args.shapes == "nhwc"))
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
    new_model, report = insert_batch_norm(model.eval(), placement=args.placement, calibration_data=data,
                                          include_output=args.include_output, **bn_kwargs)
    architecture = copy.deepcopy(architecture)
    architecture["transforms"].append({"op": "insert_batch_norm", "placement": args.placement, "bn_kwargs": bn_kwargs,
                                       "include_output": args.include_output})
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
    out.add_argument("--quiet", action="store_true",
                     help="no progress bars; the results table at the end (default: progress bars)")
    out.add_argument("--json", action="store_true",
                     help="JSON lines on stdout only: the run folder, then one per epoch (default: text)")
    parser.add_argument("--summary", action="store_true",
                        help="print the full Keras-style table of the BN model before training "
                             "(default: one line per variant; the table is always in the run folder's summary.txt)")
    parser.add_argument("--no-fast-allocator", action="store_true",
                        help="do not re-run under tcmalloc/jemalloc when one is installed (default: re-run)")


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
        overrides["seeds"] = args.seeds
    if args.limit:
        overrides["limit"] = args.limit
    return _run(lambda: run_experiment(demo_config(**overrides), progress=_progress_mode(args),
                                       full_summary=args.summary))


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
        return _run(lambda: run_experiment(resume=args.resume, progress=_progress_mode(args),
                                           full_summary=args.summary), args.resume)
    config = load_config(args.config) if args.config else ExperimentConfig()
    changes = {key: value for key, value in vars(args).items() if key in _TRAIN_FLAGS and value is not None}
    if "variants" in changes:
        changes["variants"] = [v.strip() for v in changes["variants"].split(",") if v.strip()]
    if "seeds" in changes:
        changes["seeds"] = list(changes["seeds"])
    if changes:
        config = ExperimentConfig.from_dict({**config.to_dict(), **changes})
    _announce_allocator(args)  # after the checks: a bad option fails before a re-run under another allocator
    return _run(lambda: run_experiment(config, progress=_progress_mode(args), full_summary=args.summary))


_TRAIN_FLAGS = ("name", "dataset", "image_size", "limit", "model", "width", "variants", "batch_size", "optimizer",
                "learning_rate", "schedule", "epochs", "seeds", "threads", "target_accuracy", "output_dir", "dropout",
                "sync_bn", "device")


def _run(job: Any, run_dir: str | None = None) -> int:
    try:
        job()
    except KeyboardInterrupt:
        if _rank() != 0:
            return 130
        where = f"`bnkit train --resume {run_dir}`" if run_dir else \
            "`bnkit train --resume RUN_DIR` (RUN_DIR: the run folder printed at the start)"
        print(f"\ninterrupted: every finished epoch is checkpointed; continue with {where}", file=sys.stderr)
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
    from .experiments import ExperimentConfig, demo_config

    root = support.OneLineParser(prog="bnkit", description="Batch normalization with tf.keras semantics for PyTorch.")
    root.add_argument("--version", action="version", version=f"bnkit {__version__}")
    root.add_argument("--debug", action="store_true",
                      help=f"show the traceback of a failure (also: environment variable {support.DEBUG_VARIABLE}=1)")
    sub = root.add_subparsers(dest="command", required=True)

    demo = demo_config()
    p = sub.add_parser("demo",
                       help="train a narrow VGG16 on the digits without BN and with BN before/after the activation",
                       description="Train a narrow VGG16 (width 1/8) on scikit-learn's digits without BN and with BN "
                                   "before/after the activation; every option's default is shown.")
    p.add_argument("--epochs", type=support.positive_int(100_000), help=f"epochs per run (default: {demo.epochs})")
    p.add_argument("--seeds", type=_seeds, metavar="N|S,S,...",
                   help=f"{_SEEDS_HELP} (default: {len(demo.seeds)}, i.e. seeds {_listing(demo.seeds)})")
    p.add_argument("--limit", type=support.positive_int(), help="use at most this many training images (default: all)")
    p.add_argument("--output-dir", default=demo.output_dir,
                   help="where the run folder <name>-<timestamp> is created (default: %(default)s)")
    _experiment_arguments(p)
    p.set_defaults(run=_cmd_demo)

    base = ExperimentConfig()
    p = sub.add_parser("train", help="run a configurable experiment (flags override the --config file)",
                       description="Train every variant x seed of an experiment. Each flag overrides the "
                                   "--config file's value; the defaults shown apply when neither sets it.")
    p.add_argument("--config", help=".toml, .json or .yaml experiment file with the same keys as these flags "
                                    "(default: none, the defaults below)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its folder; other flags are ignored (default: a new run)")
    p.add_argument("--name", help=f"run name, the prefix of the run folder (default: {base.name})")
    p.add_argument("--dataset", help="digits, a CIFAR-10 python folder, an image folder, or an .npz with x/y "
                                     f"(default: {base.dataset})")
    p.add_argument("--image-size", type=support.positive_int(support.MAX_SIDE), help=f"images are resized to this square size, >= 32 "
                                                  f"(default: {base.image_size})")
    p.add_argument("--limit", type=support.positive_int(), help="use at most this many training images (default: all)")
    p.add_argument("--model", choices=["vgg16", "vgg19"], help=f"the network (default: {base.model})")
    p.add_argument("--width", type=support.width, help=f"channel multiplier of the VGG (default: {base.width})")
    p.add_argument("--variants", help="comma list of none, before_activation, after_activation, renorm, ghost "
                                      f"(default: {','.join(v.name for v in base.variants)})")
    p.add_argument("--batch-size", type=support.positive_int(2**24),
                   help="the global batch: under torchrun each of N processes takes batch-size/N of every batch "
                        f"(default: {base.batch_size})")
    p.add_argument("--optimizer", choices=["sgd", "adam"],
                   help=f"sgd (momentum {base.sgd_momentum}) or adam (default: {base.optimizer})")
    p.add_argument("--learning-rate", "--lr", type=support.real(0.0, 10.0, low_open=True), dest="learning_rate",
                   help=f"initial learning rate (default: {base.learning_rate})")
    p.add_argument("--schedule", choices=["constant", "cosine", "step"],
                   help="learning-rate schedule over the steps; step: x0.1 at 50%% and 75%% "
                        f"(default: {base.schedule})")
    p.add_argument("--epochs", type=support.positive_int(100_000), help=f"epochs per run (default: {base.epochs})")
    p.add_argument("--seeds", type=_seeds, metavar="N|S,S,...",
                   help=f"{_SEEDS_HELP} (default: {len(base.seeds)}, i.e. seed {_listing(base.seeds)})")
    p.add_argument("--threads", type=support.positive_int(support.MAX_THREADS), help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dropout", type=support.real(0.0, 1.0, high_open=True), help=f"dropout rate after fc1 and fc2 (default: {base.dropout})")
    p.add_argument("--target-accuracy", type=support.real(0.0, 1.0, low_open=True),
                   help="validation accuracy whose epochs/steps/time-to-reach are reported "
                        f"(default: {base.target_accuracy})")
    p.add_argument("--output-dir",
                   help=f"where the run folder <name>-<timestamp> is created (default: {base.output_dir})")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="synchronized BN: statistics over the global batch of every torchrun process (default: off)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="cpu (gloo between processes) or cuda (GPU LOCAL_RANK per process; NCCL) "
                        f"(default: {base.device})")
    _experiment_arguments(p)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("summary", help="Keras-style summary of a VGG or a checkpoint")
    p.add_argument("model", help="vgg16, vgg19, or a checkpoint file")
    p.add_argument("--style", choices=["keras", "torch"], default="keras",
                   help="keras counts moving mean/variance as non-trainable parameters; torch counts parameters only "
                        "(default: %(default)s)")
    p.add_argument("--macs", action="store_true",
                   help="add a multiply-adds column (conv, linear, BN: 2 per element) and the total (default: off)")
    p.add_argument("--memory", action="store_true",
                   help="add parameter and output byte columns and the input/activation/parameter sizes "
                        "(default: off)")
    p.add_argument("--shapes", choices=["nchw", "nhwc"], default="nchw",
                   help="output shapes channels-first as PyTorch computes them, or channels-last as Keras "
                        "prints the same network (default: %(default)s)")
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
    p.add_argument("--include-output", action="store_true",
                   help="also put a BN after the output layer (the logits); skipped and listed by default")
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
