"""What ``bench_batchnorm.py`` and ``bench_torch_family.py`` share: the callables they time
(bnkit variants and native baselines), the start of a run and the profiler tables.

Importing this module makes ``bnkit`` importable: when it is not installed, the checkout's
``src/`` goes on ``sys.path``.

Every callable of a block works on the *same* input tensors, so they differ only in the
layer.  Training callables do what one training step does to a BN layer: clear the
gradients (set to ``None``, so no accumulation kernel runs), forward with
``training=True``, ``backward`` with a fixed upstream gradient ``dy`` that has the
input's memory format.  Inference callables run under ``torch.no_grad``.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _timing import Budget, Quiet, machine_info
from torch import Tensor, nn

try:
    import bnkit
except ModuleNotFoundError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import bnkit

RENORM_CLIPPING: dict[str, float] = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}
VIRTUAL_BATCH_SIZE = 8
VARIANTS: tuple[str, ...] = ("plain", "renorm", "ghost")
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")
MODES: tuple[str, ...] = ("train", "infer")


@dataclass(frozen=True)
class Named:
    name: str
    fn: Callable[[], object]


def make_bnkit_layer(variant: str, channels: int) -> bnkit.BatchNormalization:
    """A bnkit layer for a variant name (``plain``, ``renorm`` or ``ghost``)."""
    if variant == "plain":
        return bnkit.BatchNormalization(axis=1, num_features=channels)
    if variant == "renorm":
        return bnkit.BatchNormalization(
            axis=1, renorm=True, renorm_clipping=RENORM_CLIPPING, num_features=channels
        )
    if variant == "ghost":
        return bnkit.BatchNormalization(
            axis=1, virtual_batch_size=VIRTUAL_BATCH_SIZE, num_features=channels
        )
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def make_native_layer(shape: Sequence[int]) -> nn.Module:
    channels = shape[1]
    if len(shape) == 4:
        return nn.BatchNorm2d(channels)
    if len(shape) == 2:
        return nn.BatchNorm1d(channels)
    raise ValueError(f"only 2-D and 4-D shapes are benchmarked; received {tuple(shape)}")


def make_input(shape: Sequence[int], layout: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Input ``x`` and upstream gradient ``dy`` (float32) in the requested memory format."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen) * 2.0 + 0.5
    dy = torch.randn(*shape, generator=gen)
    if layout == "channels_last":
        if len(shape) != 4:
            raise ValueError("channels_last needs a 4-D shape")
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    elif layout != "nchw" and not (layout == "2d" and len(shape) == 2):
        raise ValueError(f"unknown layout {layout!r}")
    return x, dy


def _train_step(layer: nn.Module, x: Tensor, dy: Tensor, keras_call: bool) -> Callable[[], object]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        y = layer(x, training=True) if keras_call else layer(x)
        y.backward(dy)

    return step


def _infer_step(layer: nn.Module, x: Tensor, keras_call: bool) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return layer(x, training=False) if keras_call else layer(x)

    return step


def bn_block(shape: Sequence[int], layout: str, mode: str, variants: Sequence[str]) -> list[Named]:
    """Baseline first, then one callable per bnkit variant, all on the same tensors."""
    x, dy = make_input(shape, layout)
    native = make_native_layer(shape)
    if mode == "train":
        x.requires_grad_(True)
        native.train()
        fns = [Named("torch", _train_step(native, x, dy, keras_call=False))]
        for variant in variants:
            layer = make_bnkit_layer(variant, shape[1])
            fns.append(Named(variant, _train_step(layer, x, dy, keras_call=True)))
        return fns
    if mode == "infer":
        native.eval()
        fns = [Named("torch", _infer_step(native, x, keras_call=False))]
        for variant in variants:
            layer = make_bnkit_layer(variant, shape[1]).eval()
            fns.append(Named(variant, _infer_step(layer, x, keras_call=True)))
        return fns
    raise ValueError(f"unknown mode {mode!r}")


def dropout_block(shape: Sequence[int]) -> list[Named]:
    """bnkit.Dropout(0.5) vs torch.nn.Dropout(0.5), forward + backward."""
    x, dy = make_input(shape, "nchw")
    x.requires_grad_(True)
    ours, theirs = bnkit.Dropout(0.5).train(), nn.Dropout(0.5).train()

    def native() -> None:
        x.grad = None
        theirs(x).backward(dy)

    def bnk() -> None:
        x.grad = None
        ours(x, training=True).backward(dy)

    return [Named("torch.nn.Dropout", native), Named("bnkit.Dropout", bnk)]


def noise_shape_block(shape: Sequence[int], backward: bool) -> list[Named]:
    """Per-channel dropout mask vs one broadcast multiply ``x * s`` with s of shape (B, C, 1, 1)."""
    x, dy = make_input(shape, "nchw")
    scale = torch.rand(shape[0], shape[1], 1, 1) + 0.5
    layer = bnkit.Dropout(0.5, noise_shape=(None, None, 1, 1)).train()
    if backward:
        x.requires_grad_(True)

        def multiply() -> None:
            x.grad = None
            (x * scale).backward(dy)  # type: ignore[no-untyped-call]

        def drop() -> None:
            x.grad = None
            layer(x, training=True).backward(dy)

    else:

        def multiply() -> None:
            with torch.no_grad():
                x * scale

        def drop() -> None:
            with torch.no_grad():
                layer(x, training=True)

    return [Named("x * s", multiply), Named("bnkit.Dropout(noise_shape)", drop)]


def start_run(args: argparse.Namespace, argv: Sequence[str] | None) -> tuple[dict[str, Any], Budget, Quiet]:
    """Set torch's threads, print the machine; ``(info, budget, quiet)`` from the parsed arguments.

    ``args`` needs ``threads``, ``quick``, ``seconds``, ``min_rounds``, ``quiet_threshold``,
    ``quiet_wait`` and ``retries``; ``info`` is the run's record (machine, versions, argv, load).
    """
    torch.set_num_threads(args.threads)
    info: dict[str, Any] = {**machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "argv": sys.argv[1:] if argv is None else list(argv), "loadavg_start": os.getloadavg()[0]}
    print(f"allocator: {info['allocator']}" + (f" (LD_PRELOAD={info['ld_preload']})" if info["ld_preload"] else ""))
    print(f"cpu: {info['cpu_model']}, {info['usable_cpus']} usable CPUs; torch {info['torch']}, {info['threads']} threads")
    budget = Budget(seconds=args.seconds, min_rounds=args.min_rounds, warmup_calls=1 if args.quick else 3)
    quiet = Quiet(threshold=args.quiet_threshold, max_wait_s=args.quiet_wait, retries=args.retries)
    info["quiet"] = {"threshold": quiet.threshold, "max_wait_s": quiet.max_wait_s, "retries": quiet.retries}
    return info, budget, quiet


def profile_calls(fns: Sequence[Named], key: str, calls: int, row_limit: int) -> dict[str, str]:
    """torch.profiler tables (self CPU time) of ``calls`` calls of each callable, after 3 warm-up
    calls each; printed, and returned as ``{"<key> [<name>]": table}``."""
    from torch.profiler import ProfilerActivity, profile

    for named in fns:
        for _ in range(3):
            named.fn()
    tables: dict[str, str] = {}
    for named in fns:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                named.fn()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
        tables[f"{key} [{named.name}]"] = table
        print(f"\n=== profile, {calls} calls: {key}, {named.name} ===\n{table}", flush=True)
    return tables
