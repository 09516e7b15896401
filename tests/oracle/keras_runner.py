"""Run Keras layers on recorded inputs and store every observable result.

This script is the *oracle* for bnkit's tests. It runs in its own process because
TensorFlow and torch must not share one interpreter::

    python keras_runner.py SPEC.json ARRAYS.npz OUT.npz

``SPEC.json`` holds ``{"cases": [case, ...]}``; ``ARRAYS.npz`` holds every array a
case refers to by key. All cases of one invocation must use the same Keras flavour
(``"tf_keras"``: tf_keras 2.21 with ``TF_USE_LEGACY_KERAS=1``; ``"keras3"``: Keras 3
with ``KERAS_BACKEND=tensorflow``); the environment is set here, before TensorFlow
is imported.

A case::

    {"name": str, "keras": "tf_keras" | "keras3",
     "layer": "BatchNormalization" | "Dropout" | "Flatten",
     "config": {...constructor kwargs...},
     "dtype": "float32" | "float16" | ...,        # dtype the inputs are cast to
     "steps": [{"x": key, "training": bool | null, "mask": key | null, "dy": key | null}],
     "initial_weights": {"gamma": key, ...} | null,   # assigned by weight NAME after build
     "adjustment": {"scale": key, "bias": key} | null,
     "renorm_clipping_schedule": [dict | null per step] | null,
     "optimizer_step": {"lr": float} | null}

Results (keys of OUT.npz), for step ``s`` of case ``c``:

- ``c/s/y``: the output; ``c/s/dx``, ``c/s/d<name>``: gradients of ``sum(y * dy)``
  with respect to the input and to each *trainable* weight (only when ``dy`` is set);
- ``c/s/w/<name>``: every layer weight by name after the step (after the optimizer
  step when ``optimizer_step`` is set); ``c/s/losses``: the sum of ``layer.losses``;
- ``c/shape/<name>``: the final weight shapes; ``c/weight_names`` and
  ``c/trainable_names``: weight names in ``layer.weights`` order;
- ``c/error``, ``c/error_type``, ``c/error_stage`` (``construct``, ``build`` or
  ``step<i>``) and ``c/traceback`` when Keras raised; the case stops there.

Invalid specs (unknown fields, missing arrays, mixed flavours) abort with exit code 2.
Nothing is printed except errors.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

FLAVOURS = ("tf_keras", "keras3")
LAYERS = ("BatchNormalization", "Dropout", "Flatten")
CASE_FIELDS = frozenset(
    {
        "name",
        "keras",
        "layer",
        "config",
        "dtype",
        "steps",
        "initial_weights",
        "adjustment",
        "renorm_clipping_schedule",
        "optimizer_step",
    }
)
STEP_FIELDS = frozenset({"x", "training", "mask", "dy"})

Results = dict[str, np.ndarray]


class SpecError(Exception):
    """The case specification itself is invalid (a bug in the caller, not in Keras)."""


def _configure_environment(flavour: str) -> None:
    """Set the variables TensorFlow / Keras read at import time."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if flavour == "tf_keras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    else:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        os.environ["KERAS_BACKEND"] = "tensorflow"


def validate_spec(cases: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> str:
    """Check the spec before anything runs; return the (single) flavour."""
    flavours = {case.get("keras") for case in cases}
    if len(flavours) != 1 or not flavours <= set(FLAVOURS):
        raise SpecError(f"all cases must use one flavour out of {FLAVOURS}; got {sorted(map(str, flavours))}")
    names: set[str] = set()
    for case in cases:
        name = case.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise SpecError(f"case name must be a non-empty string without '/': {name!r}")
        if name in names:
            raise SpecError(f"duplicate case name {name!r}")
        names.add(name)
        unknown = set(case) - CASE_FIELDS
        if unknown:
            raise SpecError(f"case {name!r}: unknown fields {sorted(unknown)}")
        if case.get("layer") not in LAYERS:
            raise SpecError(f"case {name!r}: layer must be one of {LAYERS}, got {case.get('layer')!r}")
        keys: list[str] = []
        for step in case.get("steps", []):
            if set(step) - STEP_FIELDS:
                raise SpecError(f"case {name!r}: unknown step fields {sorted(set(step) - STEP_FIELDS)}")
            keys += [step["x"]] + [step[k] for k in ("mask", "dy") if step.get(k) is not None]
        keys += list((case.get("initial_weights") or {}).values())
        keys += list((case.get("adjustment") or {}).values())
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise SpecError(f"case {name!r}: arrays missing from the npz: {missing}")
        schedule = case.get("renorm_clipping_schedule")
        if schedule is not None and len(schedule) != len(case.get("steps", [])):
            raise SpecError(f"case {name!r}: renorm_clipping_schedule needs one entry per step")
    return flavours.pop()


class Runner:
    """Executes cases with one imported Keras flavour."""

    def __init__(self, flavour: str) -> None:
        import tensorflow as tf

        self.tf = tf
        self.flavour = flavour
        if flavour == "tf_keras":
            import tf_keras as keras_module
        else:
            import keras as keras_module
        self.keras: Any = keras_module
        # Dropout draws its mask at random: a fixed seed makes every run of the oracle see
        # the same masks, so a test that checks their statistics cannot flake.
        keras_module.utils.set_random_seed(20261125)

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        if hasattr(value, "numpy"):
            return np.asarray(value.numpy())
        return np.asarray(value)

    def weight_name(self, variable: Any) -> str:
        """``bn/gamma:0`` (tf_keras) or ``gamma`` (Keras 3) -> ``gamma``."""
        return str(variable.name).split("/")[-1].split(":")[0]

    def make_adjustment(
        self, spec: Mapping[str, str], arrays: Mapping[str, np.ndarray], dtype: str
    ) -> Callable[[Any], tuple[Any, Any]]:
        tf = self.tf
        scale = arrays[spec["scale"]]
        bias = arrays[spec["bias"]]

        def adjustment(shape: Any) -> tuple[Any, Any]:
            del shape  # a deterministic adjustment: the same constants every call
            return tf.constant(scale, dtype=dtype), tf.constant(bias, dtype=dtype)

        return adjustment

    def build_layer(self, case: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        config = dict(case.get("config") or {})
        if "noise_shape" in config and config["noise_shape"] is not None:
            config["noise_shape"] = tuple(config["noise_shape"])
        if case.get("adjustment") is not None:
            # The adjustment works on the float32 normalised values (BN upcasts fp16).
            config["adjustment"] = self.make_adjustment(case["adjustment"], arrays, "float32")
        layer_cls = getattr(self.keras.layers, case["layer"])
        return layer_cls(**config)

    # -- one case ----------------------------------------------------------------
    def run_case(self, case: Mapping[str, Any], arrays: Mapping[str, np.ndarray], out: Results) -> None:
        name = case["name"]
        stage = "construct"
        try:
            layer = self.build_layer(case, arrays)
            steps = case.get("steps", [])
            dtype = case.get("dtype", "float32")
            stage = "build"
            if steps:
                layer.build(tuple(arrays[steps[0]["x"]].shape))
                self.assign_weights(layer, case.get("initial_weights") or {}, arrays)
            optimizer = None
            if case.get("optimizer_step") is not None:
                optimizer = self.keras.optimizers.SGD(learning_rate=float(case["optimizer_step"]["lr"]))
            schedule = case.get("renorm_clipping_schedule")
            for index, step in enumerate(steps):
                stage = f"step{index}"
                if schedule is not None and schedule[index] is not None:
                    layer.renorm_clipping = dict(schedule[index])
                self.run_step(layer, step, arrays, dtype, optimizer, f"{name}/{index}", out)
            self.record_layout(layer, name, out)
        except SpecError:
            raise
        except Exception as error:  # noqa: BLE001 - every Keras error is a result
            out[f"{name}/error"] = np.array(f"{type(error).__name__}: {error}")
            out[f"{name}/error_type"] = np.array(type(error).__name__)
            out[f"{name}/error_stage"] = np.array(stage)
            out[f"{name}/traceback"] = np.array(traceback.format_exc())

    def assign_weights(self, layer: Any, initial: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> None:
        by_name = {self.weight_name(w): w for w in layer.weights}
        for weight_name, key in initial.items():
            if weight_name not in by_name:
                raise SpecError(f"layer has no weight {weight_name!r}; it has {sorted(by_name)}")
            variable = by_name[weight_name]
            value = arrays[key].reshape(tuple(variable.shape)).astype(self.to_numpy(variable).dtype)
            variable.assign(value)

    def run_step(
        self,
        layer: Any,
        step: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        dtype: str,
        optimizer: Any,
        prefix: str,
        out: Results,
    ) -> None:
        tf = self.tf
        x = tf.constant(arrays[step["x"]].astype(dtype))
        call_params = inspect.signature(layer.call).parameters
        kwargs: dict[str, Any] = {}
        if "training" in call_params:
            kwargs["training"] = step.get("training")
        if step.get("mask") is not None:
            kwargs["mask"] = tf.constant(arrays[step["mask"]])
        trainable = list(layer.trainable_weights)
        dy_key = step.get("dy")
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, **kwargs)
            loss = None
            if dy_key is not None:
                dy = tf.constant(arrays[dy_key].astype(np.float32))
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
        out[f"{prefix}/y"] = self.to_numpy(y)
        if loss is not None:
            grads = tape.gradient(loss, [x] + trainable)
            out[f"{prefix}/dx"] = self.to_numpy(grads[0])
            for variable, grad in zip(trainable, grads[1:]):
                if grad is not None:
                    out[f"{prefix}/d{self.weight_name(variable)}"] = self.to_numpy(grad)
            if optimizer is not None and trainable:
                pairs = [(g, v) for g, v in zip(grads[1:], trainable) if g is not None]
                optimizer.apply_gradients(pairs)
        for variable in layer.weights:
            out[f"{prefix}/w/{self.weight_name(variable)}"] = self.to_numpy(variable)
        out[f"{prefix}/losses"] = np.array(sum(float(self.to_numpy(v)) for v in layer.losses), dtype=np.float64)

    def record_layout(self, layer: Any, name: str, out: Results) -> None:
        for variable in layer.weights:
            out[f"{name}/shape/{self.weight_name(variable)}"] = np.array(tuple(variable.shape), dtype=np.int64)
        out[f"{name}/weight_names"] = np.array([self.weight_name(v) for v in layer.weights], dtype=str)
        out[f"{name}/trainable_names"] = np.array([self.weight_name(v) for v in layer.trainable_weights], dtype=str)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: keras_runner.py SPEC.json ARRAYS.npz OUT.npz\n")
        return 2
    spec_path, arrays_path, out_path = argv
    with open(spec_path, encoding="utf-8") as handle:
        cases = json.load(handle)["cases"]
    with np.load(arrays_path, allow_pickle=False) as loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    try:
        flavour = validate_spec(cases, arrays)
        _configure_environment(flavour)
        runner = Runner(flavour)
        out: Results = {}
        for case in cases:
            runner.run_case(case, arrays, out)
    except SpecError as error:
        sys.stderr.write(f"keras_runner: invalid spec: {error}\n")
        return 2
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
