"""Keras applications in bnkit: load time and memory, and inference speed, against Keras.

    python benchmarks/bench_keras_zoo.py [--dir /tmp/bnkit-zoo-bench] [--repeats 5] [--iters 10] [--json out.json]
    python benchmarks/bench_keras_zoo.py --memory-only [--repeats 3] [--json results/keras_zoo.json --note "..."]

ResNet50, MobileNetV2 and EfficientNetB0 (224x224, 1000 classes, ``weights=None``, random BN
statistics) are built and saved once by Keras 3 and by tf_keras (``tests/keras_fixtures/zoo_jobs.py``).
Every measurement runs in a fresh process (``_zoo_worker.py``), interleaved, files in the page cache:

* load: ``bnkit.keras.load_model`` against ``load_model`` of the Keras that wrote the file (Keras 3
  on TensorFlow, tf_keras), ``.keras`` and ``.h5``; targets: time ratio <= 0.5, bnkit's added peak
  memory <= 1.5x the weights' size;
* inference, batch 1 and 32: bnkit as loaded (NHWC), bnkit folded with the NCHW interface
  (``bnkit-fast``), the same architecture written in PyTorch (``_torch_apps.py``), Keras 3 on its
  torch backend (Keras-3 ``.keras`` file) and tf_keras in a ``tf.function`` (tf_keras ``.h5``);
  targets: bnkit-fast faster than both Keras and within 1.1x of PyTorch.  ``--kinds`` picks the
  variants; also ``bnkit-compiled`` (bnkit-fast through ``torch.compile`` with inductor's
  freezing; its first call, compilation included, reported apart) and, for any variant, a
  ``-heap`` suffix: the process runs with glibc's malloc kept off ``mmap`` (``HEAP_ENV``), so
  large activations are not faulted in afresh on every call.  ``--threads N`` sets every
  framework's threads; the workers also report page faults per call and the CPUs used by other
  processes during the timed calls.  ``--json FILE --infer-key KEY`` writes the inference rows
  under KEY of an existing results file, leaving the rest of it as it is.

``--memory-only`` measures bnkit's load memory alone (memory does not suffer from a busy
machine the way timings do) and, with ``--json``, updates only the memory fields of that
existing results file.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JOBS = ROOT / "tests" / "keras_fixtures" / "zoo_jobs.py"
WORKER = HERE / "_zoo_worker.py"
APPS = ("ResNet50", "MobileNetV2", "EfficientNetB0")
SIZE, CLASSES = 224, 1000
WRITERS = {"keras3": "keras3", "tf_keras": "tf_keras"}
# glibc's malloc kept off mmap: freed blocks stay in the heap for the next call instead of going
# back to the kernel and coming back as fresh zero-filled pages (one page fault per 4 KiB).
HEAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
# OpenMP threads that wait for each other sleep instead of spinning: with another process busy on
# one of the cores, a spinning thread holds up the one the scheduler took off its core.
SUFFIX_ENV = {"-heap": HEAP_ENV, "-passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
INFER_FILES = {"bnkit": ("keras3", "keras"), "bnkit-fast": ("keras3", "keras"),
               "bnkit-compiled": ("keras3", "keras"), "torch": ("keras3", "keras"),
               "keras3-torch": ("keras3", "keras"), "tf_keras": ("tf_keras", "h5")}
DEFAULT_KINDS = ("bnkit", "bnkit-fast", "torch", "keras3-torch", "tf_keras")


def _env(kind: str) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    if kind == "keras3-torch":
        env["KERAS_BACKEND"] = "torch"
    for suffix, extra in SUFFIX_ENV.items():
        if f"{suffix}-" in f"{kind}-":
            env.update(extra)
    return env


def _base(kind: str) -> str:
    """The variant without its environment suffixes."""
    while kind.endswith(tuple(SUFFIX_ENV)):
        kind = kind.rsplit("-", 1)[0]
    return kind


def _make(work: Path) -> dict[str, Any]:
    counts = {}
    for flavour in WRITERS:
        folder = work / flavour
        done = folder / f"zoo_{flavour}_build.json"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            job = folder / "job.json"
            job.write_text(json.dumps({"workdir": str(folder), "stage": "build", "models": [
                {"app": app, "size": SIZE, "classes": CLASSES} for app in APPS]}), encoding="utf-8")
            subprocess.run([sys.executable, str(JOBS), flavour, str(job)], env=_env(flavour), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts[flavour] = json.loads(done.read_text(encoding="utf-8"))
    return counts


def _worker(*args: str) -> dict[str, Any]:
    kind = args[1]
    out = subprocess.run([sys.executable, str(WORKER), *args], env=_env(kind), check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_load(work: Path, counts: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for flavour, keras_kind in WRITERS.items():
        for app in APPS:
            weights = 4 * counts[flavour][app]["counts"]["total"]
            for fmt in ("keras", "h5"):
                file = str(work / flavour / f"{app}.{fmt}")
                runs: dict[str, list[dict[str, Any]]] = {"bnkit": [], keras_kind: []}
                for _ in range(repeats):
                    for kind in runs:
                        runs[kind].append(_worker("load", kind, file))
                ours = statistics.median(r["seconds"] for r in runs["bnkit"])
                theirs = statistics.median(r["seconds"] for r in runs[keras_kind])
                memory = statistics.median(r["peak_added"] for r in runs["bnkit"]) / weights
                rows.append({"writer": flavour, "app": app, "format": fmt, "bnkit_s": ours,
                             f"{keras_kind}_s": theirs, "ratio": ours / theirs, "memory_x_weights": memory})
                print(f"load {flavour:8s} {app:15s} .{fmt:5s} bnkit {ours:6.2f}s  {keras_kind} {theirs:6.2f}s  "
                      f"ratio {ours / theirs:5.2f}  peak {memory:4.2f}x weights", flush=True)
    return rows


def bench_memory(work: Path, counts: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """bnkit's load memory only (no Keras, no timing): the median of ``repeats`` fresh processes.

    bnkit's bytecode is compiled and cached first, as in an installed package: modules compiled
    at import instead leave ~1.5 MB of freed memory behind, which a load then reuses."""
    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    rows = []
    for flavour in WRITERS:
        for app in APPS:
            weights = 4 * counts[flavour][app]["counts"]["total"]
            for fmt in ("keras", "h5"):
                runs = [_worker("load", "bnkit", str(work / flavour / f"{app}.{fmt}")) for _ in range(repeats)]
                med = {key: statistics.median(r[key] for r in runs) for key in
                       ("peak_added", "rss_added", "file_pages_added", "second_peak_added", "probe_peak")}
                row = {"writer": flavour, "app": app, "format": fmt, "weights_mb": weights / 1e6,
                       "memory_x_weights": med["peak_added"] / weights,
                       **{f"{key}_mb": value / 1e6 for key, value in med.items()},
                       "peak_before_baseline_max_mb": max(r["peak_before_baseline"] for r in runs) / 1e6}
                rows.append(row)
                print(f"memory {flavour:8s} {app:15s} .{fmt:5s} peak {row['memory_x_weights']:5.3f}x weights "
                      f"({row['peak_added_mb']:.1f} MB for {weights / 1e6:.1f} MB; code pages "
                      f"{row['file_pages_added_mb']:.1f} MB; second load {row['second_peak_added_mb']:.1f} MB; "
                      f"HDF5 probe process {row['probe_peak_mb']:.1f} MB)", flush=True)
    return rows


def _merge_memory(path: Path, rows: list[dict[str, Any]], note: str) -> None:
    """Write the memory figures into the load rows of an existing results file, timings untouched."""
    result = json.loads(path.read_text(encoding="utf-8"))
    by_key = {(r["writer"], r["app"], r["format"]): r for r in rows}
    for row in result.get("load", []):
        new = by_key.get((row["writer"], row["app"], row["format"]))
        if new is not None:
            row.update({k: v for k, v in new.items() if k not in ("writer", "app", "format")})
    result["memory_note"] = note
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")


def _ratio(kind: str, base: str, times: dict[str, list[float]]) -> float:
    """Median over the interleaved rounds of kind's time / base's time in the same round."""
    return statistics.median(a / b for a, b in zip(times[kind], times[base]))


def bench_infer(work: Path, repeats: int, iters: int, kinds: tuple[str, ...] = DEFAULT_KINDS,
                apps: tuple[str, ...] = APPS, batches: tuple[int, ...] = (1, 32)) -> list[dict[str, Any]]:
    """Each round runs every kind once (fresh processes, in turn); figures are medians of rounds."""
    rows = []
    for app in apps:
        for batch in batches:
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            for _ in range(repeats):
                for kind in kinds:
                    flavour, fmt = INFER_FILES[_base(kind)]
                    file = str(work / flavour / f"{app}.{fmt}")
                    runs[kind].append(_worker("infer", kind, file, app, str(batch), str(SIZE), str(iters)))
            times = {kind: [r["seconds"] for r in values] for kind, values in runs.items()}
            med = {kind: statistics.median(values) for kind, values in times.items()}
            row: dict[str, Any] = {"app": app, "batch": batch, **{f"{k}_ms": v * 1e3 for k, v in med.items()}}
            for kind, values in runs.items():
                row[f"{kind}_faults_per_call"] = statistics.median(r["faults_per_call"] for r in values)
                if "first_call_s" in values[0]:
                    row[f"{kind}_first_call_s"] = statistics.median(r["first_call_s"] for r in values)
            foreign = [r["foreign_cpus"] for values in runs.values() for r in values]
            row["foreign_cpus_median"], row["foreign_cpus_max"] = statistics.median(foreign), max(foreign)
            pairs = [("bnkit-fast", "torch"), ("bnkit-fast", "keras3-torch"), ("bnkit", "keras3-torch")]
            pairs += [(kind, "tf_keras") for kind in kinds if kind != "tf_keras"]
            pairs += [(kind, "bnkit-fast") for kind in kinds if kind.startswith("bnkit-") and kind != "bnkit-fast"]
            for kind, base in pairs:
                if kind in times and base in times:
                    name = kind.replace("bnkit-", "").replace("-", "_")
                    row[f"{name}_vs_{base.replace('-', '_').replace('bnkit_', '')}"] = _ratio(kind, base, times)
            rows.append(row)
            print(f"infer {app:15s} batch {batch:2d}: " + "  ".join(f"{k} {v * 1e3:7.1f}ms" for k, v in med.items()),
                  flush=True)
            print("    /tf_keras (median of rounds): " + "  ".join(
                f"{k} {_ratio(k, 'tf_keras', times):.2f}" for k in kinds if k != "tf_keras" and "tf_keras" in kinds)
                + f"  | foreign load {row['foreign_cpus_median']:.2f} CPUs (max {row['foreign_cpus_max']:.2f})",
                flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bnkit-zoo-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip", choices=("load", "infer"))
    parser.add_argument("--memory-only", action="store_true",
                        help="only bnkit's load memory; with --json, merged into that existing results file")
    parser.add_argument("--note", default="", help="with --memory-only or --infer-key: when and how it was measured")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help="inference variants, comma-separated: " + ", ".join(INFER_FILES)
                        + "; suffixes -heap: glibc's malloc kept off mmap, -passive: OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--threads", type=int, default=0,
                        help="inference threads of every framework (0: their defaults, all cores)")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--infer-key", help="with --json: write the inference rows under this key of that "
                        "existing results file, everything else in it untouched")
    args = parser.parse_args()
    counts = _make(args.dir)
    if args.memory_only:
        rows = bench_memory(args.dir, counts, args.repeats)
        if args.json:
            _merge_memory(args.json, rows, args.note)
        return 0
    kinds = tuple(args.kinds.split(","))
    unknown = [kind for kind in kinds if _base(kind) not in INFER_FILES]
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; known: {', '.join(INFER_FILES)} (optionally with -heap, -passive)")
    apps, batches = tuple(args.apps.split(",")), tuple(int(b) for b in args.batches.split(","))
    if args.threads:
        os.environ["ZOO_THREADS"] = str(args.threads)  # read by the workers
    if args.infer_key:
        if not args.json:
            parser.error("--infer-key needs --json (an existing results file)")
        rows = bench_infer(args.dir, args.repeats, args.iters, kinds, apps, batches)
        result = json.loads(args.json.read_text(encoding="utf-8"))
        result[args.infer_key] = rows
        result[f"{args.infer_key}_note"] = {"note": args.note, "repeats": args.repeats, "iters": args.iters,
                                            "threads": args.threads or "default", "kinds": list(kinds),
                                            "suffix_env": SUFFIX_ENV}
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return 0
    result: dict[str, Any] = {"size": SIZE, "classes": CLASSES, "repeats": args.repeats, "cpus": os.cpu_count()}
    if args.skip != "load":
        result["load"] = bench_load(args.dir, counts, args.repeats)
    if args.skip != "infer":
        result["infer"] = bench_infer(args.dir, args.repeats, args.iters, kinds, apps, batches)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
