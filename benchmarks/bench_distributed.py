"""Cost of ``synchronized=True`` in data-parallel training, on 2 CPU processes (gloo).

    .venv/bin/python benchmarks/bench_distributed.py            # about 1-2 min
    .venv/bin/python benchmarks/bench_distributed.py --quick    # smoke run, ~20 s

Two processes, one thread each (the machine has 2 cores), train the same VGG16 at width 1/8
(``bnkit.models.vgg16(input_shape=(3, 32, 32), width=0.125, classes=10,
batch_norm="before_activation")``: 13 ``BatchNormalization(axis=1)`` layers, 8-64 channels)
wrapped in ``DistributedDataParallel``, in three variants built from the same weights:

* ``local``: the model as built (per-process BN statistics);
* ``synchronized``: ``bnkit.convert_sync_batchnorm(model)`` (global statistics: per BN layer
  one all-reduce of 2C+1 float64 numbers forward and one of 2C backward);
* ``synchronized_own_group``: the same with ``process_group=dist.new_group(...)`` of the same
  processes, so the BN all-reduces cannot queue behind DDP's gradient buckets.

One training step = zero_grad, forward, cross-entropy, backward (DDP's gradient all-reduce
included), SGD step.  The variants are timed alternately, round after round in an order
shuffled with a seed both processes share (collectives must match), a barrier between steps;
a step's time is the slower of the two processes.  Reported: median step times, the per-round
ratio to ``local`` (median and quartiles), the all-reduce traffic of each kind, the latency
of one isolated gloo all-reduce (2C+1 float64 numbers; DDP's gradient volume), the time a
synchronized step spends inside its BN all-reduces (waiting for the peer included), the
synchronized path's compute alone (no DDP, ``dist.all_reduce`` a no-op, each process on its
own) and the CPUs used by other processes meanwhile.  Results:
``benchmarks/results/distributed.json`` (``--json PATH`` elsewhere).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import bnkit
from _timing import CpuMeter  # benchmarks/ is the script's directory

HERE = Path(__file__).resolve().parent
BATCH = 32  # per process
WORLD = 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return bnkit.models.vgg16(input_shape=(3, 32, 32), width=0.125, classes=10, batch_norm="before_activation",
                              classifier_activation=None)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def _time_all_reduce(numel: int, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of one all-reduce of ``numel`` numbers (barrier before each)."""
    t = torch.zeros(numel, dtype=dtype)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank: int, port: int, rounds: int, warmup: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        base = _model()
        own = dist.new_group(list(range(WORLD)))
        models = {"local": base, "synchronized": bnkit.convert_sync_batchnorm(copy.deepcopy(base)),
                  "synchronized_own_group": bnkit.convert_sync_batchnorm(copy.deepcopy(base), own)}
        wrapped = {name: DDP(m) for name, m in models.items()}
        optims = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in wrapped.items()}
        gen = torch.Generator().manual_seed(100 + rank)  # each process its own data
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)

        real = dist.all_reduce

        def step(name: str) -> None:
            optims[name].zero_grad(set_to_none=True)
            F.cross_entropy(wrapped[name](x), y).backward()
            optims[name].step()

        # the synchronized layers' own traffic (DDP's reducer is C++, not dist.all_reduce)
        calls: list[int] = []

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(tensor.numel())
            return real(tensor, *args, **kwargs)

        dist.all_reduce = counting
        try:
            step("synchronized")
        finally:
            dist.all_reduce = real
        bn = [m for m in models["synchronized"].modules() if isinstance(m, bnkit.BatchNormalization)]
        channels = [m.num_features for m in bn]
        params = sum(p.numel() for p in base.parameters())

        for _ in range(warmup):
            for name in wrapped:
                step(name)
        order = random.Random(0)  # the same sequence in both processes
        samples: dict[str, list[float]] = {name: [] for name in wrapped}
        busy0, own0, t0 = CpuMeter._read()
        for _ in range(rounds):
            names = list(wrapped)
            order.shuffle(names)
            for name in names:
                dist.barrier()
                start = time.perf_counter()
                step(name)
                samples[name].append(time.perf_counter() - start)
        busy1, own1, t1 = CpuMeter._read()
        cpu = {"busy": busy1 - busy0, "own": own1 - own0, "wall": t1 - t0}
        # where the synchronized step's extra time goes: inside the BN all-reduces (waiting
        # for the other process included), per step
        inside: list[float] = []

        def timed(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            work = real(tensor, *args, **kwargs)
            inside.append(time.perf_counter() - start)
            return work

        in_all_reduce = []
        dist.all_reduce = timed
        try:
            for _ in range(max(5, rounds // 5)):
                inside.clear()
                dist.barrier()
                step("synchronized")
                in_all_reduce.append(sum(inside))
        finally:
            dist.all_reduce = real
        # the synchronized path's own compute, without communication: the plain models (no
        # DDP), dist.all_reduce a no-op, each process on its own
        def bare(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
            optim.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optim.step()

        plain = {n: (models[n], torch.optim.SGD(models[n].parameters(), lr=0.0)) for n in ("local", "synchronized")}
        compute: dict[str, list[float]] = {n: [] for n in plain}
        dist.all_reduce = lambda *args, **kwargs: None
        try:
            for r in range(warmup + rounds):
                for n in (("local", "synchronized") if r % 2 else ("synchronized", "local")):
                    start = time.perf_counter()
                    bare(*plain[n])
                    if r >= warmup:
                        compute[n].append(time.perf_counter() - start)
        finally:
            dist.all_reduce = real
        compute_ratio = statistics.median([s / b for s, b in zip(compute["synchronized"], compute["local"])])
        gathered: list[Any] = [None] * WORLD
        dist.all_gather_object(gathered, {"samples": samples, "in_all_reduce": statistics.median(in_all_reduce), "cpu": cpu,
                                          "compute_ratio": compute_ratio,
                                          "compute_ms": {n: 1e3 * statistics.median(v) for n, v in compute.items()}})
        latency = {
            "bn_all_reduce_2C+1_f64_C=64_s": _time_all_reduce(2 * 64 + 1, torch.float64, 200),
            "bn_all_reduce_2C+1_f64_C=8_s": _time_all_reduce(2 * 8 + 1, torch.float64, 200),
            "gradient_all_reduce_f32_s": _time_all_reduce(params, torch.float32, 30),
        }
        if rank == 0:
            slowest = {n: [max(g["samples"][n][i] for g in gathered) for i in range(rounds)] for n in wrapped}
            cpus = [g["cpu"] for g in gathered]
            # CPUs kept busy by other processes while the rounds ran (0 = a quiet machine)
            foreign = max(0.0, cpus[0]["busy"] - sum(c["own"] for c in cpus)) / cpus[0]["wall"]
            result = {
                "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                            "torch": torch.__version__, "cpus": os.cpu_count(), "threads_per_process": 1},
                "setup": {"processes": WORLD, "backend": "gloo", "batch_per_process": BATCH, "rounds": rounds,
                          "model": "vgg16 width=0.125 (3,32,32) classes=10 batch_norm=before_activation",
                          "bn_layers": len(bn), "bn_channels": channels, "parameters": params},
                "foreign_load_cpus": foreign,
                "step_ms": {n: 1e3 * statistics.median(v) for n, v in slowest.items()},
                "step_ms_quartiles": {n: [1e3 * q for q in _quartiles(v)] for n, v in slowest.items()},
                "ratio_over_local": {n: _quartiles([s / b for s, b in zip(slowest[n], slowest["local"])])
                                     for n in wrapped if n != "local"},
                "traffic_per_step": {
                    "bn_all_reduce_calls": len(calls),
                    "bn_numbers_f64": sum(calls),
                    "bn_bytes": 8 * sum(calls),
                    "expected_bn_numbers": sum(2 * c + 1 + 2 * c for c in channels),
                    "ddp_gradient_numbers_f32": params,
                    "ddp_gradient_bytes": 4 * params,
                },
                "latency": latency,
                "bn_all_reduce_ms_per_synchronized_step": [1e3 * g["in_all_reduce"] for g in gathered],
                "without_communication": {"ratio_synchronized_over_local": [g["compute_ratio"] for g in gathered],
                                          "step_ms": [g["compute_ms"] for g in gathered]},
            }
            Path(out).write_text(json.dumps(result, indent=2))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table(r: dict[str, Any]) -> str:
    ms, q = r["step_ms"], r["step_ms_quartiles"]
    t, lat = r["traffic_per_step"], r["latency"]
    lines = [
        f"foreign load while timing: {r['foreign_load_cpus']:.2f} CPUs (other processes; 0 = quiet)",
        "",
        "| variant | step (ms, median) | quartiles (ms) |",
        "|---|---|---|",
        *[f"| {n} | {ms[n]:.1f} | {q[n][0]:.1f}-{q[n][2]:.1f} |" for n in ms],
        "",
        *[f"ratio {n} / local (per round): median {med:.3f}, quartiles {lo:.3f}-{hi:.3f}"
          for n, (lo, med, hi) in r["ratio_over_local"].items()],
        f"BN traffic per step: {t['bn_all_reduce_calls']} all-reduces, {t['bn_numbers_f64']} float64 numbers "
        f"({t['bn_bytes'] / 1024:.1f} KiB; expected {t['expected_bn_numbers']}); "
        f"DDP gradients: {t['ddp_gradient_numbers_f32']} float32 ({t['ddp_gradient_bytes'] / 2**20:.2f} MiB)",
        f"one gloo all-reduce: 2C+1 f64 at C=8 {1e6 * lat['bn_all_reduce_2C+1_f64_C=8_s']:.0f} us, "
        f"C=64 {1e6 * lat['bn_all_reduce_2C+1_f64_C=64_s']:.0f} us; "
        f"the gradient volume {1e3 * lat['gradient_all_reduce_f32_s']:.2f} ms",
        "time inside the BN all-reduces per synchronized step (waits included), per process: "
        + ", ".join(f"{v:.1f} ms" for v in r["bn_all_reduce_ms_per_synchronized_step"]),
        "without communication (no DDP, all-reduce a no-op), synchronized / local compute per process: "
        + ", ".join(f"{v:.3f}" for v in r["without_communication"]["ratio_synchronized_over_local"])
        + " (local step " + ", ".join(f"{d['local']:.1f} ms" for d in r["without_communication"]["step_ms"]) + ")",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, no JSON unless --json")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (15 if args.quick else 150)
    target = args.json or (None if args.quick else HERE / "results" / "distributed.json")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(_free_port(), rounds, 3 if args.quick else 10, out), nprocs=WORLD, join=True)
        result = json.loads(Path(out).read_text())
    print(_table(result))
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
