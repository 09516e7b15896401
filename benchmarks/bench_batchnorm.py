"""Speed of bnkit's BatchNormalization and Dropout on CPU, against native torch and Keras.

    .venv/bin/python benchmarks/bench_batchnorm.py                 # full run, about 10 min
    .venv/bin/python benchmarks/bench_batchnorm.py --quick         # smoke run, about 1 min
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/bench_batchnorm.py --json tcmalloc.json

For every shape and memory layout, the native ``torch.nn.BatchNorm2d``/``BatchNorm1d``
and the bnkit variants (plain, renorm, ghost with virtual_batch_size=8) are timed in the
same process on the same tensors, interleaved in rotation; each variant is reported as
the ratio of its median to the native median.  Training = forward (``training=True``) +
``backward(dy)``; inference = forward under ``torch.no_grad``.  tf_keras 2.21 and Keras 3
(torch backend) are timed in subprocesses of their own (see ``_keras_worker.py``);
TensorFlow is never imported in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _cases  # first: it makes bnkit importable from the checkout
import _report
from _timing import Block, Budget, Quiet, Timing, paired_ratios, parse_shape, quantile, shape_name, time_block_quiet

DEFAULT_SHAPES = "32x64x112x112,32x128x56x56,32x256x28x28,32x512x14x14,256x4096"
DEFAULT_KERAS_SHAPES = "32x256x28x28,256x4096"
DROPOUT_SHAPE = (32, 512, 14, 14)
Row = dict[str, Any]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny time budgets (about 1 minute)")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NCHW or (N, C) shapes, e.g. 32x256x28x28")
    p.add_argument("--layouts", default="nchw,channels_last", help="memory formats for 4-D shapes")
    p.add_argument("--variants", default="plain,renorm,ghost", help="bnkit variants: plain, renorm, ghost")
    p.add_argument("--modes", default="train,infer", help="train (forward+backward) and/or infer (no_grad forward)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads (default: all usable cores)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per block (default 20, --quick 0.3)")
    p.add_argument("--min-rounds", type=int, default=None, help="minimum rounds per block (default 15, --quick 3)")
    p.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True, help="Dropout benchmarks")
    p.add_argument("--keras", action=argparse.BooleanOptionalAction, default=True, help="tf_keras / Keras 3 comparisons (subprocesses)")
    p.add_argument("--keras-shapes", default=DEFAULT_KERAS_SHAPES, help="shapes for the Keras comparisons")
    p.add_argument("--keras-seconds", type=float, default=None, help="timed seconds per Keras block (default 10, --quick 0.3)")
    p.add_argument("--quiet-threshold", type=float, default=0.25,
                   help="foreign CPU load above which a block is contended (default 0.25 CPUs)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="max seconds to wait for a quiet machine before each block (default 60, --quick 0 = no wait)")
    p.add_argument("--retries", type=int, default=None, help="re-timings of a contended block (default 2, --quick 0)")
    p.add_argument("--redo-contended", type=Path, metavar="JSON",
                   help="re-time only the blocks of an earlier --json run whose load exceeded --quiet-threshold")
    p.add_argument("--profile-misses", action="store_true", help="torch.profiler table for every bnkit variant that misses its target")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--markdown", type=Path, help="write the result tables as Markdown")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else 20.0
    if args.keras_seconds is None:
        args.keras_seconds = 0.3 if args.quick else 10.0
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    if args.min_rounds is None:
        args.min_rounds = 3 if args.quick else 15
    return args


def _loadavg() -> float:
    return os.getloadavg()[0]


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _check_choices(values: Sequence[str], allowed: Sequence[str], flag: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {list(allowed)}")


def bn_row(shape: tuple[int, ...], layout: str, mode: str, variant: str, ours: Timing, base: Timing,
           block: Block) -> Row:
    pairs = paired_ratios(ours, base)
    return {
        "shape": shape_name(shape), "layout": layout, "mode": mode, "variant": variant,
        "bnkit_ms": ours.median_ms, "torch_ms": base.median_ms, "ratio": ours.median_ms / base.median_ms,
        "pair_median": quantile(pairs, 0.5), "pair_p25": quantile(pairs, 0.25), "pair_p75": quantile(pairs, 0.75),
        "bnkit_p25_ms": ours.quantile_ms(0.25), "bnkit_p75_ms": ours.quantile_ms(0.75),
        "torch_p25_ms": base.quantile_ms(0.25), "torch_p75_ms": base.quantile_ms(0.75),
        "rounds": block.rounds, "inner": block.inner, "foreign_load": block.foreign_load,
    }


def _reuse(previous: Sequence[Row], threshold: float, count: int, **key: str) -> list[Row]:
    """Rows of an earlier run matching ``key``, if all ``count`` of them ran uncontended."""
    rows = [r for r in previous if all(r.get(k) == v for k, v in key.items())]
    if len(rows) != count or any(r.get("foreign_load", 1.0) > threshold for r in rows):
        return []
    print(f"  reused from --redo-contended: {' '.join(key.values())}", flush=True)
    return [{**r, "reused": True} for r in rows]


def run_bn(args: argparse.Namespace, budget: Budget, quiet: Quiet, previous: Row) -> list[Row]:
    variants, modes = _split(args.variants), _split(args.modes)
    rows: list[Row] = []
    for shape in (parse_shape(s) for s in _split(args.shapes)):
        layouts = ["2d"] if len(shape) == 2 else _split(args.layouts)
        for layout in layouts:
            for mode in modes:
                old = [r for r in previous.get("bn", []) if r["variant"] in variants]
                kept = _reuse(old, quiet.threshold, len(variants), shape=shape_name(shape), layout=layout, mode=mode)
                if kept:
                    rows += kept
                    continue
                fns = _cases.bn_block(shape, layout, mode, variants)
                block = time_block_quiet([f.fn for f in fns], budget, quiet)
                timings = block.timings
                for named, timing in zip(fns[1:], timings[1:]):
                    row = bn_row(shape, layout, mode, named.name, timing, timings[0], block)
                    rows.append(row)
                    print(f"  {row['shape']:>14} {layout:>13} {mode:>5} {named.name:>6}: bnkit {row['bnkit_ms']:8.3f} ms"
                          f"  torch {row['torch_ms']:8.3f} ms  ratio {row['ratio']:.3f}  ({block.rounds} rounds"
                          f" x {block.inner}, {block.seconds:.1f}s, foreign load {block.foreign_load:.2f})", flush=True)
                del fns, block, timings
    return rows


def run_dropout(budget: Budget, quiet: Quiet, previous: Row) -> list[Row]:
    rows: list[Row] = []
    tests = [("dropout", "bnkit.Dropout(0.5)", "train", _cases.dropout_block(DROPOUT_SHAPE)),
             ("noise_shape", "Dropout(0.5, noise_shape=(None,None,1,1))", "forward",
              _cases.noise_shape_block(DROPOUT_SHAPE, backward=False)),
             ("noise_shape", "Dropout(0.5, noise_shape=(None,None,1,1))", "train",
              _cases.noise_shape_block(DROPOUT_SHAPE, backward=True))]
    for test, label, mode, fns in tests:
        kept = _reuse(previous.get("dropout", []), quiet.threshold, 1, test=test, mode=mode)
        if kept:
            rows += kept
            continue
        block = time_block_quiet([f.fn for f in fns], budget, quiet)
        ref, ours = block.timings
        row = {"test": test, "label": label, "shape": shape_name(DROPOUT_SHAPE), "mode": mode,
               "reference": fns[0].name, "ref_ms": ref.median_ms, "ours_ms": ours.median_ms,
               "ratio": ours.median_ms / ref.median_ms, "pair_median": quantile(paired_ratios(ours, ref), 0.5),
               "rounds": block.rounds, "inner": block.inner, "foreign_load": block.foreign_load}
        rows.append(row)
        print(f"  {label} {mode}: {row['ours_ms']:.3f} ms vs {fns[0].name} {row['ref_ms']:.3f} ms,"
              f" ratio {row['ratio']:.3f} (foreign load {block.foreign_load:.2f})", flush=True)
    return rows


def run_keras(args: argparse.Namespace, previous: Row) -> dict[str, Row]:
    """Each Keras flavour in a subprocess of its own; failures are recorded, not raised."""
    out: dict[str, Row] = {}
    for backend in ("tf_keras", "keras3"):
        old = previous.get("keras", {}).get(backend, {})
        if old.get("rows") and max(r.get("foreign_load", 1.0) for r in old["rows"]) <= args.quiet_threshold:
            print(f"[{backend}] reused from --redo-contended", flush=True)
            out[backend] = {**old, "reused": True}
            continue
        env = dict(os.environ)
        if backend == "tf_keras":
            env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        else:
            env.update(KERAS_BACKEND="torch")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.json"
            cmd = [sys.executable, str(HERE / "_keras_worker.py"), backend, str(path),
                   "--shapes", args.keras_shapes, "--variants", args.variants, "--threads", str(args.threads),
                   "--seconds", str(args.keras_seconds), "--min-rounds", str(args.min_rounds),
                   "--warmup", "1" if args.quick else "3", "--quiet-threshold", str(args.quiet_threshold),
                   "--quiet-wait", str(args.quiet_wait), "--retries", str(args.retries)]
            print(f"[{backend}] subprocess: {' '.join(cmd[1:])}", flush=True)
            try:
                proc = subprocess.run(cmd, check=False, env=env, timeout=1800, stderr=subprocess.PIPE, text=True)
                if proc.returncode != 0 or not path.exists():
                    out[backend] = {"error": f"exit code {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
                else:
                    out[backend] = json.loads(path.read_text())
                    print(proc.stderr.strip(), flush=True)
            except (OSError, subprocess.SubprocessError) as exc:
                out[backend] = {"error": repr(exc)}
    return out


def profile_misses(rows: Sequence[Row], variants: Sequence[str]) -> dict[str, str]:
    """A torch.profiler table (self CPU time) for each (shape, layout, mode, variant) off target."""
    tables: dict[str, str] = {}
    for r in rows:
        if r["ratio"] <= _report.bn_limit(r["variant"], r["layout"]):
            continue
        block = _cases.bn_block(parse_shape(r["shape"]), r["layout"], r["mode"], [r["variant"]])
        key = f"{r['shape']} {r['layout']} {r['mode']} {r['variant']}"
        tables.update(_cases.profile_calls(block, key, calls=5, row_limit=14))
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _check_choices(_split(args.variants), _cases.VARIANTS, "--variants")
    _check_choices(_split(args.modes), _cases.MODES, "--modes")
    _check_choices(_split(args.layouts), _cases.LAYOUTS, "--layouts")
    info, budget, quiet = _cases.start_run(args, argv)
    if "glibc" in info["allocator"]:
        print("  note: glibc malloc returns every block over its mmap threshold (at most 32 MiB) to the OS,\n"
              "  so each such tensor is page-faulted in again; LD_PRELOAD a tcmalloc to avoid that.")
    previous: Row = {}
    if args.redo_contended:
        previous = json.loads(args.redo_contended.read_text())
        old = previous["info"]
        if (old["allocator"].split()[0], old["threads"]) != (info["allocator"].split()[0], info["threads"]):
            raise SystemExit(f"--redo-contended: {args.redo_contended} ran with {old['allocator']}, {old['threads']} threads")
        info["redo_contended_from"] = str(args.redo_contended)
    started = time.perf_counter()
    results: Row = {"info": info, "bn": [], "dropout": [], "keras": {}}
    print("\nBatchNormalization (ratio = bnkit median / native torch median, same run):", flush=True)
    results["bn"] = run_bn(args, budget, quiet, previous)
    if args.dropout:
        print("\nDropout:", flush=True)
        results["dropout"] = run_dropout(budget, quiet, previous)
    if args.keras:
        print("\nKeras comparisons (own subprocesses):", flush=True)
        results["keras"] = run_keras(args, previous)
    if args.profile_misses:
        results["profiles"] = profile_misses(results["bn"], _split(args.variants))
    assert "tensorflow" not in sys.modules, "TensorFlow must not be imported in the main process"
    info["wall_s"] = time.perf_counter() - started
    info["loadavg_end"] = _loadavg()
    results["targets"] = _report.summarize(_report.targets(results), args.quiet_threshold)
    print("\n" + _report.render(results, "text"))
    print(f"total time: {info['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(_report.render(results, "markdown"))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
