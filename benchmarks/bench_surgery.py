"""Fold speed-up, calibration cost and summary cost, each against a baseline in the same run.

* fold: VGG16-BN (BN before every activation) unfolded vs folded, inference (eval, no_grad)
  at 224x224 batch 1 and 8 and at 32x32 batch 32, timed alternately; also the largest
  relative output difference (target: never slower, agreement within 1e-5 relative).
* calibration: ``insert_batch_norm(vgg16 at 32x32, calibration_data=10 batches of 32)`` vs
  running those 10 batches through the model (target < 3x).
* summary: ``bnkit.summary(vgg19-bn, (3, 224, 224))`` vs one plain forward pass (target < 2x).

    .venv/bin/python benchmarks/bench_surgery.py [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import bnkit
from bnkit import allocator
from bnkit.models import vgg16, vgg19


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed in turn (drift hits both equally)."""
    ta, tb = [], []
    a(), b()  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        tb.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def fold_case(size: int, batch: int, repeats: int) -> str:
    torch.manual_seed(0)
    model = vgg16(input_shape=(3, size, size), batch_norm="before_activation", classifier_activation=None)
    with torch.no_grad():  # non-trivial statistics, so the fold is not an identity
        for _ in range(2):
            model(torch.randn(4, 3, size, size) * 2 + 0.5)
    model.eval()
    folded, report = bnkit.fold_batch_norm(model)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        ref, out = model(x), folded(x)
        error = ((ref - out).abs().max() / ref.abs().max()).item()
        unfolded_t, folded_t = alternate(lambda: model(x), lambda: folded(x), repeats)
    return (f"fold  {size}x{size} batch {batch:>2}: unfolded {unfolded_t * 1e3:8.1f} ms  folded {folded_t * 1e3:8.1f} ms"
            f"  speed-up {unfolded_t / folded_t:.3f}x  rel. diff {error:.1e}  ({len(report.folded)} BN folded)")


def calibration_case(repeats: int, width: float) -> str:
    torch.manual_seed(0)
    model = vgg16(input_shape=(3, 32, 32), width=width, classifier_activation=None).eval()
    batches = [torch.randn(32, 3, 32, 32) for _ in range(10)]

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    forward_t, insert_t = alternate(forward, lambda: bnkit.insert_batch_norm(model, calibration_data=batches), repeats)
    return (f"calibration (vgg16 32x32 width {width}, 10 batches of 32): forward {forward_t:.3f} s  "
            f"insert+calibrate {insert_t:.3f} s  ratio {insert_t / forward_t:.2f}x (target < 3x)")


def summary_case(repeats: int) -> str:
    model = vgg19(batch_norm="before_activation").eval()
    x = torch.zeros(1, 3, 224, 224)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    forward_t, summary_t = alternate(forward, lambda: bnkit.summary(model, (3, 224, 224)), repeats)
    return (f"summary vgg19-bn 224x224: forward {forward_t * 1e3:.1f} ms  summary {summary_t * 1e3:.1f} ms  "
            f"ratio {summary_t / forward_t:.2f}x (target < 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description="bnkit surgery and summary benchmarks")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="32x32 cases only, 3 repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator {allocator.describe()}")
    cases = [(32, 32)] if args.quick else [(224, 1), (224, 8), (32, 32)]
    for size, batch in cases:
        print(fold_case(size, batch, repeats), flush=True)
    print(calibration_case(repeats, 0.25 if args.quick else 1.0), flush=True)
    if not args.quick:
        print(summary_case(repeats), flush=True)


if __name__ == "__main__":
    main()
