"""Timing and machine-description helpers shared by the benchmark scripts.

Nothing here imports torch or TensorFlow, so the Keras worker can use it under either.

Method: the callables of one *block* (a baseline and its competitors on the same
inputs) are warmed up, then timed interleaved, round after round, each round running
every callable once, so that a slow drift of the machine (frequency, noisy neighbours,
page cache) hits them all alike.  By default the order within a round is shuffled
(seeded) from round to round: with a fixed rotation ``f0, f1, ..., fk, f0, ...`` the
callable that always follows the baseline was measured 2-10 % slower than the same
callable placed elsewhere, a bias that shuffling spreads evenly.  Each sample times
``inner`` consecutive calls with ``time.perf_counter``; the per-call time of a callable
is the median of its samples.  The number of rounds comes from a time budget per
block, clamped to ``[min_rounds, max_rounds]``.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Fn = Callable[[], object]


@dataclass(frozen=True)
class Budget:
    """How long to spend on one block."""

    seconds: float = 18.0  # target wall time of the timed rounds of one block
    min_rounds: int = 15
    max_rounds: int = 2000
    warmup_calls: int = 3  # per callable, before calibration
    min_sample_s: float = 0.002  # a sample runs enough calls to last at least this
    max_overrun: float = 3.0  # stop after min_rounds once a block has run this many times `seconds`
    shuffle: bool = True  # order within each round: shuffled (seeded) or the fixed rotation f0, f1, ...


@dataclass
class Timing:
    """Samples of one callable, in seconds per call, in the order they were taken."""

    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    def quantile_ms(self, q: float) -> float:
        return quantile(self.samples, q) * 1e3


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (``q`` in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def paired_ratios(variant: Timing, baseline: Timing) -> list[float]:
    """Per-round ratios variant / baseline (samples of the same round ran close in time)."""
    return [v / b for v, b in zip(variant.samples, baseline.samples)]


@dataclass
class Block:
    """The result of :func:`time_block`."""

    timings: list[Timing]
    rounds: int
    inner: int  # calls per sample
    seconds: float  # wall time of the timed rounds
    foreign_load: float  # CPUs kept busy by *other* processes meanwhile (see CpuMeter)


class CpuMeter:
    """How busy the machine was with other processes' work between start and stop.

    From ``/proc/stat`` (all CPUs) minus this process' own CPU time: 0.0 means that nobody
    else ran; 1.0 means one core's worth of foreign work on average.  On a 2-core machine
    shared with other jobs, a value far from 0 marks a block whose absolute times (not so
    much its interleaved ratios) are inflated.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        try:
            with open("/proc/stat", encoding="utf-8") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
            busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
            tick = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy, tick = 0, 100
        own = os.times()
        return busy / tick, own.user + own.system, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start[2]

    def foreign_load(self) -> float:
        busy0, own0, t0 = self._start
        busy1, own1, t1 = self._read()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9))


def time_block(fns: Sequence[Fn], budget: Budget, sync: Fn | None = None) -> Block:
    """Time ``fns`` interleaved, round after round (see the module docstring).

    ``sync`` is called after each sample's calls, inside the timed region (use it when a
    framework may return before the work is done); ``None`` for synchronous code.
    """
    for _ in range(budget.warmup_calls):
        for fn in fns:
            fn()
    if sync is not None:
        sync()
    estimates = []
    for fn in fns:  # one calibration call each, after the warm-up
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        estimates.append(time.perf_counter() - start)
    inner = max(1, math.ceil(budget.min_sample_s / max(min(estimates), 1e-7)))
    round_s = sum(estimates) * inner
    rounds = int(min(budget.max_rounds, max(budget.min_rounds, budget.seconds / max(round_s, 1e-9))))
    timings = [Timing() for _ in fns]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    meter = CpuMeter()
    deadline = time.perf_counter() + budget.max_overrun * budget.seconds
    order = list(range(len(fns)))
    rng = random.Random(12345)
    try:
        for done in range(rounds):
            if done >= budget.min_rounds and time.perf_counter() > deadline:
                break  # the machine slowed down (contention) after calibration
            if budget.shuffle:
                rng.shuffle(order)
            for index in order:
                fn, timing = fns[index], timings[index]
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                if sync is not None:
                    sync()
                timing.samples.append((time.perf_counter() - start) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Block(timings, len(timings[0].samples), inner, meter.elapsed(), meter.foreign_load())


@dataclass(frozen=True)
class Quiet:
    """Guard against other processes on a shared machine (see :func:`time_block_quiet`)."""

    threshold: float = 0.25  # foreign load (CPUs) above which a block counts as contended
    max_wait_s: float = 60.0  # how long to wait for a quiet machine before each block
    retries: int = 2  # re-timings of a contended block; the least contended one is kept


def wait_quiet(quiet: Quiet, window_s: float = 0.25) -> float:
    """Sleep until the foreign load over ``window_s`` is under the threshold (or time is up)."""
    if quiet.max_wait_s <= 0:
        return 0.0
    deadline = time.perf_counter() + quiet.max_wait_s
    while True:
        meter = CpuMeter()
        time.sleep(window_s)
        load = meter.foreign_load()
        if load < quiet.threshold or time.perf_counter() >= deadline:
            return load


def time_block_quiet(fns: Sequence[Fn], budget: Budget, quiet: Quiet | None, sync: Fn | None = None) -> Block:
    """:func:`time_block` after waiting for a quiet machine, re-timed while contended.

    The choice between attempts looks only at the foreign load, never at the timings, so
    it cannot favour one callable over another.
    """
    if quiet is None:
        return time_block(fns, budget, sync)
    best: Block | None = None
    for _ in range(quiet.retries + 1):
        wait_quiet(quiet)
        block = time_block(fns, budget, sync)
        if best is None or block.foreign_load < best.foreign_load:
            best = block
        if best.foreign_load < quiet.threshold:
            break
    assert best is not None
    return best


def detect_allocator() -> str:
    """Which malloc this process uses: tcmalloc or jemalloc if mapped, else glibc."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            text = maps.read()
    except OSError:
        return "unknown (no /proc/self/maps)"
    for lib, name in (("libtcmalloc", "tcmalloc"), ("libjemalloc", "jemalloc")):
        for line in text.splitlines():
            if lib in line:
                return f"{name} ({line.split()[-1]})"
    return "glibc malloc"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """CPU, core counts and allocator of the current process (no framework versions)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "allocator": detect_allocator(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }


def parse_shape(text: str) -> tuple[int, ...]:
    """``"32x256x28x28"`` -> ``(32, 256, 28, 28)``."""
    return tuple(int(part) for part in text.lower().split("x"))


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)
