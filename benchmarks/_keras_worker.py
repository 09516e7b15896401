"""Time Keras' own BatchNormalization in a process of its own (run by bench_batchnorm.py).

    python _keras_worker.py {tf_keras|keras3} OUT.json --shapes 32x256x28x28,256x4096 ...

* ``tf_keras``: tf_keras 2.21 on TensorFlow (``TF_USE_LEGACY_KERAS=1``); torch is never
  imported.  4-D inputs are fed in NHWC with ``axis=-1``, TensorFlow's native CPU layout
  (the shapes on the command line are NCHW and are transposed).  Training is forward +
  ``tf.GradientTape.gradient`` with an upstream gradient, both eagerly and inside a
  ``tf.function``.
* ``keras3``: Keras 3 with ``KERAS_BACKEND=torch``, ``axis=1`` on NCHW torch tensors,
  forward + ``y.backward(dy)``.  bnkit runs in the same process, interleaved with Keras, so
  the ratio is a same-run ratio.  Keras 3 has no ``virtual_batch_size`` (ghost: n/a).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import Block, Budget, Quiet, Timing, machine_info, parse_shape, shape_name, time_block_quiet

CLIPPING: dict[str, float] = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}
Row = dict[str, Any]


def _row(framework: str, shape: tuple[int, ...], layout: str, variant: str, mode: str,
         timing: Timing, block: Block) -> Row:
    return {
        "framework": framework, "shape": shape_name(shape), "layout": layout, "variant": variant,
        "mode": mode, "median_ms": timing.median_ms, "p25_ms": timing.quantile_ms(0.25),
        "p75_ms": timing.quantile_ms(0.75), "rounds": block.rounds, "inner": block.inner, "foreign_load": block.foreign_load,
    }


def run_tf_keras(shapes: list[tuple[int, ...]], variants: list[str], threads: int, budget: Budget,
                 quiet: Quiet) -> tuple[list[Row], dict[str, str]]:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    assert "torch" not in sys.modules, "torch must not be imported next to TensorFlow"

    def make(variant: str) -> Any:
        extra: dict[str, Any] = {}
        if variant == "renorm":
            extra = {"renorm": True, "renorm_clipping": CLIPPING}
        elif variant == "ghost":
            extra = {"virtual_batch_size": 8}
        return tf_keras.layers.BatchNormalization(axis=-1, **extra)

    rows: list[Row] = []
    for shape in shapes:
        tf_shape = (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape
        layout = "nhwc" if len(shape) == 4 else "2d"
        x = tf.random.stateless_normal(tf_shape, seed=(1, 2)) * 2.0 + 0.5
        dy = tf.random.stateless_normal(tf_shape, seed=(3, 4))
        layers = {v: make(v) for v in variants}
        for layer in layers.values():
            layer(x, training=False)  # build

        for mode in ("train", "infer"):
            for style in ("eager", "tf.function"):
                fns = [_tf_step(tf, layers[v], x, dy, mode, style == "tf.function") for v in variants]
                print(f"[tf_keras] {shape_name(shape)} {mode} {style}", file=sys.stderr, flush=True)
                block = time_block_quiet(fns, budget, quiet)
                for variant, timing in zip(variants, block.timings):
                    rows.append(_row(f"tf_keras ({style})", shape, layout, variant, mode, timing, block))
    return rows, {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__}


def _tf_step(tf: Any, layer: Any, x: Any, dy: Any, mode: str, graph: bool) -> Callable[[], object]:
    """One training step (forward + tape gradient w.r.t. input and weights) or one inference call."""
    if mode == "train":
        def train(a: Any, g: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = layer(a, training=True)
            return tape.gradient(y, [a, *layer.trainable_variables], output_gradients=g)

        step = tf.function(train) if graph else train
        return lambda: step(x, dy)

    def infer(a: Any) -> Any:
        return layer(a, training=False)

    call = tf.function(infer) if graph else infer
    return lambda: call(x)


def run_keras3(shapes: list[tuple[int, ...]], variants: list[str], threads: int, budget: Budget,
               quiet: Quiet) -> tuple[list[Row], dict[str, str]]:
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, str(HERE.parent / "src"))
    import _cases
    import keras
    import torch

    torch.set_num_threads(threads)
    assert keras.backend.backend() == "torch"
    assert "tensorflow" not in sys.modules, "Keras 3 (torch backend) must not pull in TensorFlow"

    def make(variant: str) -> Any:
        extra: dict[str, Any] = {"renorm": True, "renorm_clipping": CLIPPING} if variant == "renorm" else {}
        return keras.layers.BatchNormalization(axis=1, **extra)

    rows: list[Row] = []
    keras_variants = [v for v in variants if v != "ghost"]  # Keras 3: no virtual_batch_size
    for shape in shapes:
        layout = "nchw" if len(shape) == 4 else "2d"
        for mode in ("train", "infer"):
            x, dy = _cases.make_input(shape, layout)
            if mode == "train":
                x.requires_grad_(True)
            fns: list[Callable[[], object]] = []
            names: list[tuple[str, str]] = []
            for variant in keras_variants:
                ours = _cases.make_bnkit_layer(variant, shape[1])
                theirs = make(variant)
                with torch.no_grad():
                    theirs(x, training=False)  # build
                weights = [w.value for w in theirs.trainable_weights]
                fns.append(_keras3_step(ours, x, dy, mode, list(ours.parameters())))
                fns.append(_keras3_step(theirs, x, dy, mode, weights))
                names += [("bnkit", variant), ("keras3 (torch)", variant)]
            print(f"[keras3] {shape_name(shape)} {mode}", file=sys.stderr, flush=True)
            block = time_block_quiet(fns, budget, quiet)
            for (framework, variant), timing in zip(names, block.timings):
                rows.append(_row(framework, shape, layout, variant, mode, timing, block))
    return rows, {"keras": keras.__version__, "torch": torch.__version__}


def _keras3_step(layer: Any, x: Any, dy: Any, mode: str, params: list[Any]) -> Callable[[], object]:
    import torch

    if mode == "infer":
        def infer() -> object:
            with torch.no_grad():
                return layer(x, training=False)
        return infer

    def train() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        layer(x, training=True).backward(dy)

    return train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backend", choices=("tf_keras", "keras3"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--variants", default="plain,renorm,ghost")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--min-rounds", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quiet-threshold", type=float, default=0.25)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--retries", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    budget = Budget(seconds=args.seconds, min_rounds=args.min_rounds, warmup_calls=args.warmup)
    quiet = Quiet(threshold=args.quiet_threshold, max_wait_s=args.quiet_wait, retries=args.retries)
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    runner = run_tf_keras if args.backend == "tf_keras" else run_keras3
    rows, versions = runner(shapes, variants, args.threads, budget, quiet)
    info = {**machine_info(), **versions, "threads": args.threads}
    args.out.write_text(json.dumps({"backend": args.backend, "info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
