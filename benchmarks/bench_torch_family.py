"""Speed of bnkit's PyTorch-family layers and of ``bnkit.convert_batchnorm``, on CPU.

    .venv/bin/python benchmarks/bench_torch_family.py            # full run, ~10 min on a quiet 2-core VM
    .venv/bin/python benchmarks/bench_torch_family.py --quick    # smoke run, under a minute
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/bench_torch_family.py

Every figure is a ratio to a baseline timed in the same process on the same tensors,
interleaved round after round in shuffled order (``_timing.time_block``), medians of
many rounds:

* ``layers``: ``bnkit.BatchNorm2d``/``BatchNorm1d`` with default arguments vs
  ``torch.nn.BatchNorm2d``/``BatchNorm1d``, training (forward + backward) and inference
  (``no_grad`` forward), NCHW and channels_last, and a 2-D (N, C) input; in float32 and
  after ``.half()`` / ``.bfloat16()`` (bnkit layer vs nn layer of the same dtype; the
  Keras-family ``bnkit.BatchNormalization(axis=1).half()`` rides along for information).
  Targets: <= 1.03x in float32, <= 1.2x in float16/bfloat16.  Each float32 block also
  times a second ``nn`` layer (``torch-control``, an A/A test, ``--no-control`` to skip): with
  default arguments both families run the same code, so the control's ratio is the noise
  floor of that cell (glibc's page faults on the 25 MB tensors make some cells bimodal).
* ``extras`` (information): ``bnkit.BatchNorm2d(renorm=True)`` and
  ``(virtual_batch_size=8)`` vs ``nn.BatchNorm2d``, float32.
* ``overhead`` (information): a tiny input, where the per-call Python cost shows.
* ``convert``: ``bnkit.convert_batchnorm`` on a ResNet-50 (defined below: bottlenecks
  [3, 4, 6, 3], 53 BatchNorm2d, 25.6 M parameters), each call on a fresh deep copy, against
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (the torch converter, same job) on
  copies of the same model; and the memory it costs: bytes of parameters + buffers before
  and after, whether every old tensor is still the model's (shared, not copied), bytes
  that torch's allocator handed out and kept (``torch.profiler``, ``profile_memory``),
  Python-heap growth (``tracemalloc``) and RSS growth.  Targets: median < 50 ms; no new
  memory beyond the option's new state (none for the default conversion).

The raw results go to ``benchmarks/results/torch_family-<allocator>.json`` (full runs;
``--json PATH`` elsewhere, ``--no-json`` for none; ``--quick`` writes none by default).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _cases  # first: it makes bnkit importable from the checkout
import bnkit
import torch
from _timing import (Block, Budget, CpuMeter, Quiet, Timing, paired_ratios, parse_shape, quantile, shape_name,
                     time_block_quiet, wait_quiet)
from torch import nn

Row = dict[str, Any]
DEFAULT_SHAPES = "32x64x56x56,32x128x28x28,32x256x14x14,32x512x7x7,256x4096"
QUICK_SHAPES = "8x32x28x28,64x512"
OVERHEAD_SHAPE = (8, 16, 8, 8)
DTYPES = {"float32": ("float", torch.float32), "float16": ("half", torch.float16),
          "bfloat16": ("bfloat16", torch.bfloat16)}
TARGET = {"float32": 1.03, "float16": 1.2, "bfloat16": 1.2}
CONVERT_TARGET_MS = 50.0
VIRTUAL_BATCH_SIZE = 8


# ---- arguments ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, tiny budgets (under a minute)")
    p.add_argument("--sections", default="layers,extras,overhead,convert", help="which parts to run")
    p.add_argument("--shapes", default=None, help=f"NCHW or (N, C) shapes (default {DEFAULT_SHAPES})")
    p.add_argument("--layouts", default="nchw,channels_last", help="memory formats for 4-D shapes")
    p.add_argument("--dtypes", default="float32,float16,bfloat16", help="dtypes of the layers section")
    p.add_argument("--modes", default="train,infer", help="train (forward+backward) and/or infer")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per block (default 4, --quick 0.1)")
    p.add_argument("--min-rounds", type=int, default=None, help="minimum rounds per block (default 15, --quick 3)")
    p.add_argument("--convert-runs", type=int, default=None, help="timed conversions per variant (default 20, --quick 3)")
    p.add_argument("--quiet-threshold", type=float, default=0.25, help="foreign CPU load that marks a block contended")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="max seconds to wait for a quiet machine before a block (default 10, --quick 0)")
    p.add_argument("--retries", type=int, default=None, help="re-timings of a contended block (default 1, --quick 0)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="time a second torch.nn layer in each float32 block (an A/A control: the noise floor)")
    p.add_argument("--redo-contended", type=Path, metavar="JSON",
                   help="re-time only the blocks of an earlier run whose foreign load exceeded --quiet-threshold")
    p.add_argument("--profile-misses", action="store_true",
                   help="torch.profiler tables of both steps for every default-layer cell off its target")
    p.add_argument("--render", type=Path, metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    p.add_argument("--json", type=Path, default=None, help="where to write the raw results")
    p.add_argument("--no-json", action="store_true", help="write no JSON")
    args = p.parse_args(argv)
    quick = args.quick
    args.shapes = args.shapes or (QUICK_SHAPES if quick else DEFAULT_SHAPES)
    args.seconds = args.seconds if args.seconds is not None else (0.1 if quick else 4.0)
    args.min_rounds = args.min_rounds if args.min_rounds is not None else (3 if quick else 15)
    args.convert_runs = args.convert_runs if args.convert_runs is not None else (3 if quick else 20)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if quick else 10.0)
    args.retries = args.retries if args.retries is not None else (0 if quick else 1)
    return args


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def allocator_name(info: Row) -> str:
    return str(info["allocator"]).split()[0]


# ---- the layer blocks ---------------------------------------------------------------------------
def _to_dtype(layer: nn.Module, dtype: str) -> nn.Module:
    return getattr(layer, DTYPES[dtype][0])()  # .float() / .half() / .bfloat16(), as a user writes it


def _native(shape: Sequence[int]) -> nn.Module:
    return _cases.make_native_layer(shape)


def _bnkit_torch(shape: Sequence[int], **options: Any) -> nn.Module:
    cls = bnkit.BatchNorm2d if len(shape) == 4 else bnkit.BatchNorm1d
    return cls(shape[1], **options)


def _bnkit_keras(shape: Sequence[int]) -> nn.Module:
    return bnkit.BatchNormalization(axis=1, num_features=shape[1])


def make_block(shape: tuple[int, ...], layout: str, mode: str, dtype: str,
               candidates: Sequence[tuple[str, Callable[[], nn.Module], bool]]) -> list[_cases.Named]:
    """The nn baseline first, then each candidate ``(name, factory, keras_call)``, same tensors and dtype."""
    x, dy = _cases.make_input(shape, layout)
    torch_dtype = DTYPES[dtype][1]
    x, dy = x.to(torch_dtype), dy.to(torch_dtype)  # .to keeps the memory format
    layers = [("torch", _native(shape), False)] + [(name, factory(), keras) for name, factory, keras in candidates]
    fns = []
    if mode == "train":
        x.requires_grad_(True)
    for name, layer, keras_call in layers:
        layer = _to_dtype(layer, dtype)
        if mode == "train":
            layer.train()
            fns.append(_cases.Named(name, _cases._train_step(layer, x, dy, keras_call)))
        else:
            layer.eval()
            fns.append(_cases.Named(name, _cases._infer_step(layer, x, keras_call)))
    return fns


def block_rows(section: str, shape: tuple[int, ...], layout: str, mode: str, dtype: str,
               fns: Sequence[_cases.Named], block: Block, targets: dict[str, float | None]) -> list[Row]:
    base = block.timings[0]
    rows = []
    for named, ours in zip(fns[1:], block.timings[1:]):
        pairs = paired_ratios(ours, base)
        ratio = ours.median_ms / base.median_ms
        target = targets.get(named.name)
        rows.append({
            "section": section, "dtype": dtype, "shape": shape_name(shape), "layout": layout, "mode": mode,
            "variant": named.name, "ours_ms": ours.median_ms, "torch_ms": base.median_ms, "ratio": ratio,
            "extra_us": (ours.median_ms - base.median_ms) * 1e3,
            "pair_median": quantile(pairs, 0.5), "pair_p25": quantile(pairs, 0.25), "pair_p75": quantile(pairs, 0.75),
            "ours_p25_ms": ours.quantile_ms(0.25), "ours_p75_ms": ours.quantile_ms(0.75),
            "torch_p25_ms": base.quantile_ms(0.25), "torch_p75_ms": base.quantile_ms(0.75),
            "rounds": block.rounds, "inner": block.inner, "seconds": block.seconds,
            "foreign_load": block.foreign_load, "target": target,
            "met": None if target is None else ratio <= target,
        })
    return rows


def _print_rows(rows: Sequence[Row]) -> None:
    for r in rows:
        verdict = "" if r["target"] is None else ("  ok" if r["met"] else f"  MISS (> {r['target']})")
        print(f"  {r['dtype']:>8} {r['shape']:>13} {r['layout']:>13} {r['mode']:>5} {r['variant']:>14}:"
              f" {r['ours_ms']:8.3f} ms vs torch {r['torch_ms']:8.3f} ms  ratio {r['ratio']:.3f}"
              f" (pairs {r['pair_p25']:.3f}-{r['pair_p75']:.3f}; {r['rounds']}x{r['inner']},"
              f" load {r['foreign_load']:.2f}){verdict}", flush=True)


class Previous:
    """Rows of an earlier run (``--redo-contended``): a block is reused when it ran uncontended."""

    def __init__(self, results: Row | None, threshold: float) -> None:
        self.results = results or {}
        self.threshold = threshold

    def block(self, section: str, shape: Sequence[int], layout: str, mode: str, dtype: str, count: int) -> list[Row]:
        key = {"dtype": dtype, "shape": shape_name(shape), "layout": layout, "mode": mode}
        rows = [r for r in self.results.get(section, []) if all(r.get(k) == v for k, v in key.items())]
        if len(rows) != count or any(r.get("foreign_load", 1.0) > self.threshold for r in rows):
            return []
        return [{**r, "reused": True} for r in rows]


def timed_rows(section: str, shape: tuple[int, ...], layout: str, mode: str, dtype: str,
               candidates: Sequence[tuple[str, Callable[[], nn.Module], bool]], targets: dict[str, float | None],
               budget: Budget, quiet: Quiet, previous: Previous) -> list[Row]:
    """One block (the nn baseline and the candidates), timed, or reused from an uncontended earlier run."""
    kept = previous.block(section, shape, layout, mode, dtype, len(candidates))
    if kept:
        rows = kept
        print(f"  (reused from {previous.results['info'].get('json', 'the earlier run')})", flush=True)
    else:
        fns = make_block(shape, layout, mode, dtype, candidates)
        block = time_block_quiet([f.fn for f in fns], budget, quiet)
        rows = block_rows(section, shape, layout, mode, dtype, fns, block, targets)
        del fns, block
    _print_rows(rows)
    return rows


def cells(args: argparse.Namespace, shapes: Sequence[tuple[int, ...]]) -> list[tuple[tuple[int, ...], str, str]]:
    out = []
    for shape in shapes:
        for layout in (["2d"] if len(shape) == 2 else _split(args.layouts)):
            for mode in _split(args.modes):
                out.append((shape, layout, mode))
    return out


def run_layers(args: argparse.Namespace, budget: Budget, quiet: Quiet, previous: Previous) -> list[Row]:
    rows: list[Row] = []
    shapes = [parse_shape(s) for s in _split(args.shapes)]
    for dtype in _split(args.dtypes):
        if dtype not in DTYPES:
            raise SystemExit(f"--dtypes: unknown {dtype!r}; choose from {list(DTYPES)}")
        for shape, layout, mode in cells(args, shapes):
            candidates = [("bnkit", lambda s=shape: _bnkit_torch(s), False)]
            if args.control and dtype == "float32":  # a second nn layer: the noise floor of this cell
                candidates.append(("torch-control", lambda s=shape: _native(s), False))
            if dtype != "float32":
                candidates.append(("keras-family", lambda s=shape: _bnkit_keras(s), True))
            rows += timed_rows("layers", shape, layout, mode, dtype, candidates, {"bnkit": TARGET[dtype]},
                               budget, quiet, previous)
    return rows


def run_extras(args: argparse.Namespace, budget: Budget, quiet: Quiet, previous: Previous) -> list[Row]:
    rows: list[Row] = []
    shapes = [parse_shape(s) for s in _split(args.shapes)]
    for shape, layout, mode in cells(args, shapes):
        candidates = [("renorm", lambda s=shape: _bnkit_torch(s, renorm=True), False),
                      (f"vbs{VIRTUAL_BATCH_SIZE}", lambda s=shape: _bnkit_torch(s, virtual_batch_size=VIRTUAL_BATCH_SIZE), False)]
        rows += timed_rows("extras", shape, layout, mode, "float32", candidates, {}, budget, quiet, previous)
    return rows


def run_overhead(args: argparse.Namespace, budget: Budget, quiet: Quiet, previous: Previous) -> list[Row]:
    rows: list[Row] = []
    for mode in _split(args.modes):
        new = timed_rows("overhead", OVERHEAD_SHAPE, "nchw", mode, "float32",
                         [("bnkit", lambda: _bnkit_torch(OVERHEAD_SHAPE), False)], {}, budget, quiet, previous)
        for r in new:
            print(f"    per-call difference: {r['extra_us']:+.2f} us", flush=True)
        rows += new
    return rows


def profile_misses(rows: Sequence[Row]) -> dict[str, str]:
    """torch.profiler tables (self CPU time) of the nn and bnkit steps of each default-layer miss."""
    tables: dict[str, str] = {}
    for r in rows:
        if r["section"] != "layers" or r["variant"] != "bnkit" or r["met"] is not False:
            continue
        shape = parse_shape(r["shape"])
        fns = make_block(shape, r["layout"], r["mode"], r["dtype"], [("bnkit", lambda s=shape: _bnkit_torch(s), False)])
        key = f"{r['dtype']} {r['shape']} {r['layout']} {r['mode']}"
        tables.update(_cases.profile_calls(fns, key, calls=10, row_limit=12))
    return tables


# ---- ResNet-50 ----------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, stages = 64, []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride=2 if (b == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- convert_batchnorm --------------------------------------------------------------------------
def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) by qualified name."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    out[f"{prefix}.{name}" if prefix else name] = t
    return out


def storage_bytes(tensors: dict[str, torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors.values():
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CONVERTERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "torch convert_sync_batchnorm": nn.SyncBatchNorm.convert_sync_batchnorm,  # the baseline
    "bnkit convert_batchnorm": bnkit.convert_batchnorm,
    "bnkit convert_batchnorm(renorm=True)": lambda m: bnkit.convert_batchnorm(m, renorm=True),
}


def memory_of(template: nn.Module, convert: Callable[[nn.Module], nn.Module]) -> Row:
    """What one conversion of a fresh copy keeps and allocates."""
    from torch.profiler import ProfilerActivity, profile

    model = copy.deepcopy(template)
    before = state_tensors(model)
    before_ptrs = {t.untyped_storage().data_ptr() for t in before.values()}
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    new_root = convert(model)
    py_now, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    rss1 = rss_bytes()
    after = state_tensors(new_root)
    same_object = sum(1 for k, t in before.items() if after.get(k) is t)
    new = {k: t for k, t in after.items() if t.untyped_storage().data_ptr() not in before_ptrs}
    row = {
        "state_tensors_before": len(before), "state_tensors_after": len(after),
        "state_bytes_before": storage_bytes(before), "state_bytes_after": storage_bytes(after),
        "old_tensors_kept_same_object": same_object,
        "new_state_tensors": len(new), "new_state_bytes": storage_bytes(new) if new else 0,
        "new_state_names_sample": sorted(new)[:6],
        "tracemalloc_net_bytes": py_now, "tracemalloc_peak_bytes": py_peak,
        "rss_delta_bytes": rss1 - rss0,
        "bn_layers_after": sum(1 for m in new_root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)),
    }
    del model, new_root, before, after, new
    # torch's allocator, seen by the profiler: every tensor allocated during the call, and what is left
    model = copy.deepcopy(template)
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        new_root = convert(model)
    allocated = freed = 0
    for event in prof.events():
        value = event.self_cpu_memory_usage if event.name != "[memory]" else event.cpu_memory_usage
        allocated += max(value, 0)
        freed += max(-value, 0)
    row.update(torch_allocated_bytes=allocated, torch_freed_bytes=freed, torch_kept_bytes=allocated - freed)
    del model, new_root
    return row


def run_convert(args: argparse.Namespace, quiet: Quiet, previous: Previous) -> Row:
    old = previous.results.get("convert")
    if old and old.get("foreign_load", 1.0) <= previous.threshold:
        print("  (reused from the earlier run)", flush=True)
        return {**old, "reused": True}
    torch.manual_seed(0)
    template = ResNet50()
    n_params = sum(p.numel() for p in template.parameters())
    n_bn = sum(1 for m in template.modules() if isinstance(m, nn.BatchNorm2d))
    state = state_tensors(template)
    print(f"  ResNet-50: {n_params:,} parameters, {n_bn} BatchNorm2d, parameters + buffers"
          f" {storage_bytes(state) / 2**20:.1f} MiB", flush=True)
    names = list(CONVERTERS)
    timings = {name: Timing() for name in names}
    copying = Timing()
    for name in names:  # warm-up: one conversion each
        CONVERTERS[name](copy.deepcopy(template))
    wait_quiet(quiet)
    meter = CpuMeter()
    rng = random.Random(12345)
    order = list(names)
    for _ in range(args.convert_runs):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            model = copy.deepcopy(template)  # untimed set-up (timed apart, for scale)
            copying.samples.append(time.perf_counter() - start)
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                CONVERTERS[name](model)
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            timings[name].samples.append(elapsed)
            del model
    load = meter.foreign_load()
    base = timings[names[0]]
    rows = []
    for name in names:
        t = timings[name]
        pairs = paired_ratios(t, base)
        target = CONVERT_TARGET_MS if name.startswith("bnkit") else None
        rows.append({"converter": name, "median_ms": t.median_ms, "p25_ms": t.quantile_ms(0.25),
                     "p75_ms": t.quantile_ms(0.75), "ratio_to_torch": t.median_ms / base.median_ms,
                     "pair_median": quantile(pairs, 0.5), "runs": len(t.samples), "target_ms": target,
                     "met": None if target is None else t.median_ms < target, "samples_ms": [s * 1e3 for s in t.samples]})
        print(f"  {name:>38}: median {t.median_ms:7.2f} ms (IQR {t.quantile_ms(0.25):.2f}-{t.quantile_ms(0.75):.2f},"
              f" {len(t.samples)} runs), {t.median_ms / base.median_ms:.2f}x torch's converter", flush=True)
    print(f"  (copy.deepcopy of the model, untimed set-up: median {copying.median_ms:.1f} ms; foreign load {load:.2f})")
    memory = {}
    for name in names:
        memory[name] = m = memory_of(template, CONVERTERS[name])
        print(f"  memory, {name}: state {m['state_bytes_before']:,} -> {m['state_bytes_after']:,} B;"
              f" {m['old_tensors_kept_same_object']}/{m['state_tensors_before']} old tensors kept (same objects);"
              f" {m['new_state_tensors']} new state tensors, {m['new_state_bytes']:,} B;"
              f" torch allocator: {m['torch_allocated_bytes']:,} B allocated, {m['torch_kept_bytes']:,} B kept;"
              f" tracemalloc net {m['tracemalloc_net_bytes']:,} B (peak {m['tracemalloc_peak_bytes']:,});"
              f" RSS {m['rss_delta_bytes']:+,} B", flush=True)
    return {"model": {"name": "ResNet-50 (v1.5, defined in this script)", "parameters": n_params,
                      "batchnorm2d": n_bn, "state_bytes": storage_bytes(state)},
            "timing": rows, "deepcopy_median_ms": copying.median_ms, "foreign_load": load, "memory": memory}


# ---- report -------------------------------------------------------------------------------------
def render(results: Row) -> str:
    lines: list[str] = []
    rows = results.get("layers", [])
    if rows:
        lines.append("Default layers: ratio bnkit / torch.nn (pair IQR); load = foreign CPUs; then, for information,"
                     " a second torch.nn layer / the first (A/A control, float32) or Keras-family BatchNormalization (16-bit)")
        keys: dict[tuple[str, str, str, str], dict[str, Row]] = {}
        for r in rows:
            keys.setdefault((r["dtype"], r["shape"], r["layout"], r["mode"]), {})[r["variant"]] = r
        lines.append(f"  {'dtype':>8} {'shape':>13} {'layout':>13} {'mode':>5}  {'bnkit':>22}  {'target':>9}"
                     f"  {'load':>4}  control/keras")
        for (dtype, shape, layout, mode), byv in keys.items():
            b = byv["bnkit"]
            k = byv.get("keras-family") or byv.get("torch-control")
            mark = "ok" if b["met"] else "MISS"
            lines.append(f"  {dtype:>8} {shape:>13} {layout:>13} {mode:>5}  {b['ratio']:6.3f} ({b['pair_p25']:.2f}-{b['pair_p75']:.2f})"
                         f"  {mark:>4} {b['target']:<4}  {b['foreign_load']:4.2f}  " + ("" if k is None else f"{k['ratio']:.2f}"))
        met = [r for r in rows if r["variant"] == "bnkit"]
        for dtype in dict.fromkeys(r["dtype"] for r in met):
            sub = [r for r in met if r["dtype"] == dtype]
            worst = max(sub, key=lambda r: r["ratio"])
            lines.append(f"  {dtype}: {sum(r['met'] for r in sub)}/{len(sub)} cells <= {TARGET[dtype]}x; worst {worst['ratio']:.3f}"
                         f" ({worst['shape']} {worst['layout']} {worst['mode']})")
        control = [r["ratio"] for r in rows if r["variant"] == "torch-control"]
        if control:
            lines.append(f"  A/A control (torch.nn / torch.nn): {min(control):.3f}-{max(control):.3f}")
    extras = results.get("extras", [])
    if extras:
        lines.append("\nExtras (float32, information): ratio to torch.nn")
        keys2: dict[tuple[str, str, str], dict[str, Row]] = {}
        for r in extras:
            keys2.setdefault((r["shape"], r["layout"], r["mode"]), {})[r["variant"]] = r
        variants = list(dict.fromkeys(r["variant"] for r in extras))
        lines.append(f"  {'shape':>13} {'layout':>13} {'mode':>5}  " + "  ".join(f"{v:>8}" for v in variants))
        for (shape, layout, mode), byv in keys2.items():
            lines.append(f"  {shape:>13} {layout:>13} {mode:>5}  " + "  ".join(f"{byv[v]['ratio']:8.2f}" for v in variants))
    over = results.get("overhead", [])
    for r in over:
        lines.append(f"\nTiny input {r['shape']} {r['mode']}: bnkit {r['ours_ms'] * 1e3:.1f} us vs torch"
                     f" {r['torch_ms'] * 1e3:.1f} us ({r['extra_us']:+.2f} us, ratio {r['ratio']:.3f})")
    conv = results.get("convert")
    if conv:
        lines.append(f"\nconvert on {conv['model']['name']}: {conv['model']['parameters']:,} parameters,"
                     f" {conv['model']['batchnorm2d']} BatchNorm2d")
        for r in conv["timing"]:
            mem = conv["memory"][r["converter"]]
            verdict = "" if r["met"] is None else ("  ok (< 50 ms)" if r["met"] else "  MISS (>= 50 ms)")
            lines.append(f"  {r['converter']:>38}: {r['median_ms']:6.2f} ms ({r['ratio_to_torch']:.2f}x torch's),"
                         f" new state {mem['new_state_bytes']:,} B in {mem['new_state_tensors']} tensors,"
                         f" kept by torch's allocator {mem['torch_kept_bytes']:,} B,"
                         f" old tensors shared {mem['old_tensors_kept_same_object']}/{mem['state_tensors_before']}{verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    sections = _split(args.sections)
    unknown = set(sections) - {"layers", "extras", "overhead", "convert"}
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}")
    info, budget, quiet = _cases.start_run(args, argv)
    info["budget"] = {"seconds": budget.seconds, "min_rounds": budget.min_rounds, "warmup_calls": budget.warmup_calls}
    results: Row = {"info": info}
    previous = Previous(None, quiet.threshold)
    if args.redo_contended:
        old = json.loads(args.redo_contended.read_text())
        if (allocator_name(old["info"]), old["info"]["threads"]) != (allocator_name(info), info["threads"]):
            raise SystemExit(f"--redo-contended: {args.redo_contended} ran with {old['info']['allocator']},"
                             f" {old['info']['threads']} threads")
        old["info"]["json"] = str(args.redo_contended)
        previous = Previous(old, quiet.threshold)
        info["redo_contended_from"] = str(args.redo_contended)
    started = time.perf_counter()
    if "layers" in sections:
        print("\nDefault layers (bnkit.BatchNorm2d/1d vs torch.nn, same dtype):", flush=True)
        results["layers"] = run_layers(args, budget, quiet, previous)
    if "extras" in sections:
        print("\nExtras (float32):", flush=True)
        results["extras"] = run_extras(args, budget, quiet, previous)
    if "overhead" in sections:
        print(f"\nPer-call overhead, {shape_name(OVERHEAD_SHAPE)}:", flush=True)
        results["overhead"] = run_overhead(args, budget, quiet, previous)
    if "convert" in sections:
        print("\nconvert_batchnorm:", flush=True)
        results["convert"] = run_convert(args, quiet, previous)
    if args.profile_misses and results.get("layers"):
        results["profiles"] = profile_misses(results["layers"])
    info["wall_s"] = time.perf_counter() - started
    info["loadavg_end"] = os.getloadavg()[0]
    print("\n" + render(results))
    print(f"\ntotal time: {info['wall_s']:.0f} s")
    path = args.json
    if path is None and not args.quick:
        path = HERE / "results" / f"torch_family-{allocator_name(info)}.json"
    if path is not None and not args.no_json:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
