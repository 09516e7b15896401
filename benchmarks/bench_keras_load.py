"""How fast bnkit reads a full VGG16 Keras file, against h5py reading it into NumPy.

    python benchmarks/bench_keras_load.py [--dir /tmp/bnkit-keras-bench] [--repeats 5] [--json out.json]

Two 528 MB files with random weights are generated once (outside the repository):

* ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` in the Keras-applications layout
  (Keras-1-era names, byte-string attributes), written with h5py;
* ``vgg16_full.h5``, a full-model file (``model_config`` + ``model_weights``) written by
  ``bnkit.keras.save_model(bnkit.models.vgg16())`` (and ``vgg16_full.keras``, the same as an
  archive).

Each measurement runs in a fresh process, interleaved with the others, with the files in
the page cache:

* ``h5py``: open the file and read every dataset into a new NumPy array (the baseline);
* ``load_weights``: ``bnkit.keras.load_weights(vgg16(), file)`` (the model is built before
  the clock starts);
* ``load_model``: ``bnkit.keras.load_model(full file)`` (model creation included), for the
  ``.h5`` file and for the same model saved as ``vgg16_full.keras``.

Reported: median (and best) wall time, the median's ratio to the h5py median of the same run
(target <= 1.5),
and peak resident memory over the process's baseline, in multiples of the weights' size
(target <= 2; for ``load_weights`` this includes the model the weights go into).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

APPS = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
FULL = "vgg16_full.h5"
ARCHIVE = "vgg16_full.keras"
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
KINDS = ("h5py", "load_weights", "load_model", "load_model_keras")


def _write_apps_file(path: Path) -> None:
    import h5py

    rng = np.random.default_rng(0)
    names = [b"input_1"]
    with h5py.File(path, "w") as h5:
        h5.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        channels = 3

        def layer(name: str, kernel_shape: tuple[int, ...]) -> None:
            group = h5.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()])
            group.create_dataset(f"{name}_W_1:0", data=rng.standard_normal(kernel_shape, dtype=np.float32) * 0.01)
            group.create_dataset(f"{name}_b_1:0", data=rng.standard_normal(kernel_shape[-1], dtype=np.float32) * 0.01)
            names.append(name.encode())

        for b, block in enumerate(BLOCKS, start=1):
            for i, filters in enumerate(block, start=1):
                layer(f"block{b}_conv{i}", (3, 3, channels, filters))
                channels = filters
            h5.create_group(f"block{b}_pool").attrs["weight_names"] = np.array([], dtype="S1")
            names.append(f"block{b}_pool".encode())
        h5.create_group("flatten").attrs["weight_names"] = np.array([], dtype="S1")
        names.append(b"flatten")
        layer("fc1", (7 * 7 * 512, 4096))
        layer("fc2", (4096, 4096))
        layer("predictions", (4096, 1000))
        h5.attrs["layer_names"] = np.array(names)


def _write_full_files(directory: Path) -> None:
    import bnkit.keras
    from bnkit.models import vgg16

    model = vgg16()
    bnkit.keras.save_model(model, directory / FULL, input_shape=(3, 224, 224))
    bnkit.keras.save_model(model, directory / ARCHIVE, input_shape=(3, 224, 224))


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since exec; ``ru_maxrss`` would include the parent's)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(kind: str, directory: Path) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    import h5py
    import torch

    import bnkit.keras
    from bnkit.models import vgg16

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = vgg16() if kind == "load_weights" else None
    base = _status_mib("VmRSS")
    start = time.perf_counter()
    if kind == "h5py":
        arrays = []
        with h5py.File(directory / APPS, "r") as h5:
            h5.visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    elif kind == "load_weights":
        bnkit.keras.load_weights(model, directory / APPS)
    else:
        model = bnkit.keras.load_model(directory / (FULL if kind == "load_model" else ARCHIVE))
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"seconds": seconds, "peak_over_base_mib": peak - base, "model_mib": 0.0 if model is None else
            sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bnkit-keras-bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.dir)))
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    if not (args.dir / APPS).exists():
        print(f"writing {args.dir / APPS} ...", flush=True)
        _write_apps_file(args.dir / APPS)
    if not (args.dir / FULL).exists() or not (args.dir / ARCHIVE).exists():
        print(f"writing {args.dir / FULL} and {ARCHIVE} ...", flush=True)
        _write_full_files(args.dir)
    weights_mib = (args.dir / APPS).stat().st_size / 2**20
    for name in (APPS, FULL, ARCHIVE):  # into the page cache
        with open(args.dir / name, "rb") as handle:
            while handle.read(1 << 24):
                pass
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats + 1):
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--measure", kind],
                                 capture_output=True, text=True, check=True)
            if repeat:  # the first round only warms up
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["seconds"] for r in runs["h5py"])
    rows = []
    for kind in KINDS:
        seconds = statistics.median(r["seconds"] for r in runs[kind])
        peak = max(r["peak_over_base_mib"] + r["model_mib"] * (kind == "load_weights") for r in runs[kind])
        rows.append({"kind": kind, "median_s": seconds, "ratio_to_h5py": seconds / base,
                     "min_s": min(r["seconds"] for r in runs[kind]),
                     "peak_mib": peak, "peak_over_weights": peak / weights_mib,
                     "all_s": [round(r["seconds"], 3) for r in runs[kind]]})
    print(f"VGG16 weights: {weights_mib:.1f} MiB; {args.repeats} runs each, medians; CPUs: {os.cpu_count()}")
    print(f"{'':18}{'median s':>10}{'x h5py':>9}{'min s':>8}{'peak MiB':>10}{'x weights':>11}")
    for row in rows:
        print(f"{row['kind']:18}{row['median_s']:10.3f}{row['ratio_to_h5py']:9.2f}{row['min_s']:8.3f}"
              f"{row['peak_mib']:10.0f}{row['peak_over_weights']:11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"weights_mib": weights_mib, "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
