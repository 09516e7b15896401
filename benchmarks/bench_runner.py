"""Overhead of bnkit's experiment runner against a minimal hand-written training loop.

Both train the same model (a narrow VGG16 with BN before the activation) on the same
digits data for one epoch, alternately, several times; the runner's epoch includes its data
shuffling, progress, metrics and atomic checkpoint writes.  Reports the median epoch time of
each (both include the validation pass) and their ratio (target: runner <= 1.1x the minimal loop), and which allocator was
loaded.  Run it twice to compare allocators:

    .venv/bin/python benchmarks/bench_runner.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 .venv/bin/python benchmarks/bench_runner.py
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bnkit import allocator
from bnkit.data import load_dataset
from bnkit.experiments import ExperimentConfig, Variant
from bnkit.experiments.progress import QuietProgress
from bnkit.experiments.runner import RunRecord, build_model, train_variant


def minimal_epoch(config: ExperimentConfig, variant: Variant, data, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(config, variant, data.input_shape, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.sgd_momentum)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(data.x_train))
    usable = len(order) - len(order) % config.batch_size
    for i in range(0, usable, config.batch_size):
        index = order[i:i + config.batch_size]
        loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():  # the runner validates after every epoch; so does any real loop
        for i in range(0, len(data.x_val), 512):
            model(data.x_val[i:i + 512]).argmax(1)
    return time.perf_counter() - start


def runner_epoch(config: ExperimentConfig, variant: Variant, data, seed: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        record = RunRecord(variant.name, seed)
        start = time.perf_counter()
        train_variant(config, variant, seed, data, Path(folder), QuietProgress(), record, on_epoch=lambda _: None)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    config = ExperimentConfig(epochs=1, width=0.125, batch_size=32, learning_rate=0.02)
    variant = Variant("before_activation")
    data = load_dataset("digits")
    runner_epoch(config, variant, data, 0)  # warm-up
    minimal, runner = [], []
    for k in range(args.repeats):
        minimal.append(minimal_epoch(config, variant, data, k))
        runner.append(runner_epoch(config, variant, data, k))
    m, r = statistics.median(minimal), statistics.median(runner)
    print(f"allocator: {allocator.describe()}; threads: {args.threads}; torch {torch.__version__}")
    print(f"minimal loop epoch: {m:.2f} s  runner epoch: {r:.2f} s  ratio: {r / m:.3f}x  (median of {args.repeats})")


if __name__ == "__main__":
    main()
