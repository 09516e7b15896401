"""One measurement of ``bench_keras_zoo.py`` in a process of its own; prints one JSON line.

    python _zoo_worker.py load bnkit|keras3|tf_keras FILE
    python _zoo_worker.py infer KIND FILE APP BATCH SIZE ITERS
    KIND: bnkit|bnkit-fast|bnkit-compiled|torch|keras3-torch|tf_keras, optionally with the suffix
    -heap (the process was started with glibc's malloc kept off mmap) and/or -passive (with
    ``OMP_WAIT_POLICY=PASSIVE``): ``bench_keras_zoo._env``

* ``load``: seconds of ``bnkit.keras.load_model`` or ``keras.models.load_model(compile=False)``
  (imports excluded) and the peak resident memory it added, in bytes: ``peak_added`` = the
  process' resident high-water mark after the load (VmHWM of ``/proc/self/status``) minus its
  resident size just before it (after ``import bnkit.keras`` / ``import keras``, whose own
  transient peak is reported as ``peak_before_baseline`` and is 0 when the high-water mark
  equals the resident size there); ``rss_added`` and ``file_pages_added`` (the part mapped
  from files: code pages of shared libraries) are measured right after the load.  For bnkit
  also ``probe_peak``, the high-water mark of its HDF5 probe process (a separate process,
  not in ``peak_added``), and ``second_peak_added``: what loading the same file again in
  the same process adds (``ru_maxrss`` growth; 0 when the second load stays below the first
  one's peak).
* ``infer``: median seconds of one inference on a random batch after warm-up: bnkit as loaded
  (NHWC interface), ``bnkit-fast`` (BNs folded, NCHW interface, channels_last memory),
  ``torch`` (the same architecture written in PyTorch, ``_torch_apps.py``, channels_last
  memory), Keras 3 on its torch backend and tf_keras (a ``tf.function``) running the file;
  ``bnkit-compiled``: bnkit-fast through ``torch.compile`` (inductor, ``freezing``: weights
  become constants, convolutions prepacked for oneDNN, pointwise ops fused), whose first call
  (compilation included) is reported on its own as ``first_call_s``.  ``ZOO_THREADS`` in the
  environment sets the number of threads (torch's intra-op threads, TensorFlow's intra- and
  inter-op threads).  Also reported:
  ``faults_per_call`` (minor page faults of the process per timed call: pages the allocator
  got fresh from the kernel, zero-filled, each time) and ``foreign_cpus`` (CPUs' worth of work
  done by other processes during the timed calls, from ``/proc/stat`` minus this process).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """The resident high-water mark: VmHWM, i.e. max(high-water mark, current resident size).
    ``getrusage``'s ``ru_maxrss`` can lag behind the current size by a few hundred KB (per-CPU
    counters not summed), which would hide a peak reached at the end of a load."""
    hwm = _status().get("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if ":" in line)
    return {key: int(value.split()[0]) * 1024 for key, value in fields
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def _probe_peak() -> int | None:
    """Peak resident memory of bnkit's HDF5 probe process (a child, not counted in ``peak_added``)."""
    from bnkit.keras import _probe

    worker = _probe._WORKER[0][1] if _probe._WORKER else None
    return _status(worker.pid).get("VmHWM") if worker is not None else None


def load(kind: str, file: str) -> dict[str, Any]:
    if kind == "bnkit":
        import bnkit.keras as bk

        loader: Callable[[], Any] = lambda: bk.load_model(file)  # noqa: E731
    elif kind == "keras3":
        import keras

        loader = lambda: keras.models.load_model(file, compile=False)  # noqa: E731
    else:
        import tf_keras

        loader = lambda: tf_keras.models.load_model(file, compile=False)  # noqa: E731
    baseline = _status()
    before = _rss()
    start = time.perf_counter()
    model = loader()
    seconds = time.perf_counter() - start
    after = _status()
    result = {"seconds": seconds, "peak_added": max(_peak() - before, 0),
              "peak_before_baseline": max(baseline["VmHWM"] - baseline["VmRSS"], 0),
              "rss_added": after["VmRSS"] - baseline["VmRSS"],
              "file_pages_added": after["RssFile"] - baseline["RssFile"]}
    if kind == "bnkit":
        result["probe_peak"] = _probe_peak()
        second = _rss()
        bk.load_model(file)  # the same file again in this process: what a load costs once warm
        result["second_peak_added"] = max(_peak() - second, 0)
    del model
    return result


def _busy_ticks() -> tuple[int, int]:
    """Busy clock ticks of the whole machine (``/proc/stat``) and of this process (all threads)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
    with open("/proc/self/stat") as handle:
        own = handle.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime, stime


def _time(step: Callable[[], Any], iters: int) -> dict[str, float]:
    for _ in range(3):
        step()
    samples = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    busy, own = _busy_ticks()
    wall = time.perf_counter()
    for _ in range(iters):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall
    busy_after, own_after = _busy_ticks()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"seconds": statistics.median(samples),
            "faults_per_call": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / iters,
            "foreign_cpus": max(busy_after - busy - (own_after - own), 0) / ticks / wall}


def infer(kind: str, file: str, app: str, batch: int, size: int, iters: int) -> dict[str, Any]:
    import numpy as np

    while kind.endswith(("-heap", "-passive")):  # allocator and OpenMP: set by the environment
        kind = kind.rsplit("-", 1)[0]
    threads = int(os.environ.get("ZOO_THREADS", "0"))  # 0: each framework's default
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if kind == "tf_keras":
        import tensorflow as tf
        import tf_keras

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        model = tf_keras.models.load_model(file, compile=False)
        call = tf.function(lambda t: model(t, training=False))
        tensor = tf.constant(x)
        return _time(lambda: call(tensor).numpy(), iters)
    import torch

    if threads:
        torch.set_num_threads(threads)
    if kind == "keras3-torch":
        import keras

        model = keras.models.load_model(file, compile=False)
        tensor = torch.from_numpy(x)
    elif kind == "torch":
        sys.path.insert(0, str(HERE))
        from _torch_apps import APPS

        model = APPS[app](1000).eval().to(memory_format=torch.channels_last)
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    else:
        import bnkit
        import bnkit.keras as bk

        if kind == "bnkit":
            model, tensor = bk.load_model(file), torch.from_numpy(x)
        else:
            model, _ = bnkit.fold_batch_norm(bk.load_model(file, data_format="channels_first"))
            model = model.eval().to(memory_format=torch.channels_last)
            tensor = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    extra: dict[str, Any] = {}
    if kind == "bnkit-compiled":
        with torch.no_grad():  # freezing needs the weights without autograd history
            model = torch.compile(model, options={"freezing": True})
            start = time.perf_counter()
            model(tensor)
            extra["first_call_s"] = time.perf_counter() - start
            timing = _time(lambda: model(tensor), iters)
    else:
        with torch.inference_mode():
            if kind == "keras3-torch":
                timing = _time(lambda: model(tensor, training=False), iters)
            else:
                timing = _time(lambda: model(tensor), iters)
    return {**timing, **extra, "threads": torch.get_num_threads()}


def main() -> int:
    mode, kind = sys.argv[1], sys.argv[2]
    if mode == "load":
        result = load(kind, sys.argv[3])
    else:
        file, app, batch, size, iters = sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])
        result = infer(kind, file, app, batch, size, iters)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
