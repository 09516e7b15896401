"""Fuzz the Keras readers with mutated real Keras files.

The files in tests/keras_fixtures were written by tf_keras 2.21 and Keras 3.15.1.  Every
mutation (truncation, flipped bits, edited JSON configs) must end in a loaded model or in
the documented KerasFormatError family; nothing else may escape, and nothing may hang.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch

import bnkit.keras as bk

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"
MODELS = ["small_tf_keras.h5", "small_tf_keras.keras", "small_keras3.h5", "small_keras3.keras"]
WEIGHTS = ["small_tf_keras.w.h5", "small_keras3.weights.h5"]


def _outcome(load: Callable[[], Any]) -> str:
    """'ok' or 'refused'; any exception outside the documented family fails the test."""
    try:
        load()
    except bk.KerasFormatError:
        return "refused"
    return "ok"


@pytest.mark.parametrize("name", MODELS + WEIGHTS)
def test_truncated_files_are_refused(name: str, tmp_path: Path) -> None:
    data = (FIXTURES / name).read_bytes()
    target = tmp_path / name
    for fraction in range(20):
        target.write_bytes(data[: len(data) * fraction // 20])
        if name in WEIGHTS:
            assert _outcome(lambda: bk.load_weights(_small_model(), target)) == "refused"
        else:
            assert _outcome(lambda: bk.load_model(target)) == "refused"


@pytest.mark.parametrize("name", MODELS + WEIGHTS)
def test_flipped_bits_load_or_are_refused(name: str, tmp_path: Path) -> None:
    rng = random.Random(name)
    data = (FIXTURES / name).read_bytes()
    target = tmp_path / name
    outcomes = set()
    for _ in range(120):
        mutated = bytearray(data)
        for _ in range(rng.choice([1, 3, 12])):
            position = rng.randrange(len(mutated))
            mutated[position] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(mutated))
        if name in WEIGHTS:
            outcomes.add(_outcome(lambda: bk.load_weights(_small_model(), target)))
        else:
            outcomes.add(_outcome(lambda: bk.load_model(target)))
    assert outcomes <= {"ok", "refused"}


def _small_model() -> torch.nn.Module:
    return bk.build_from_config(bk.read_model_config(FIXTURES / "small_tf_keras.h5"))


# ---- JSON config edits -----------------------------------------------------------------
def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["config"]["layers"]


def _layer(config: dict[str, Any], cls: str) -> dict[str, Any]:
    return next(layer for layer in _layers(config) if layer["class_name"] == cls)


def _set(cls: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        _layer(config, cls)["config"][key] = value
    return edit


def _rename(layer: dict[str, Any], name: str) -> None:
    layer["name"] = layer["config"]["name"] = name


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "lambda": lambda c: _layer(c, "Dense").update(class_name="Lambda", config={"name": "out", "function": "x"}),
    "custom": lambda c: _layer(c, "Dense").update(module="my_package.layers", registered_name="my_package>Dense"),
    "unknown_class": lambda c: _layer(c, "Dense").update(class_name="ConvLSTM2D"),
    "subclassed_model": lambda c: c.update(class_name="MyModel"),
    "no_layers": lambda c: c["config"].pop("layers"),
    "layers_not_list": lambda c: c["config"].update(layers={"a": 1}),
    "absurd_filters": _set("Conv2D", "filters", 10**12),
    "negative_filters": _set("Conv2D", "filters", -4),
    "string_filters": _set("Conv2D", "filters", "four"),
    "null_kernel": _set("Conv2D", "kernel_size", None),
    "zero_kernel": _set("Conv2D", "kernel_size", [0, 0]),
    "huge_kernel": _set("Conv2D", "kernel_size", [99, 99]),
    "causal_padding": _set("Conv2D", "padding", "causal"),
    "bad_activation": _set("Conv2D", "activation", "bogus"),
    "code_activation": _set("Dense", "activation", {"module": "builtins", "class_name": "function", "config": "eval"}),
    "bn_axis_out_of_range": _set("BatchNormalization", "axis", 7),
    "bn_axis_duplicate": _set("BatchNormalization", "axis", [3, -1]),
    "bn_axis_string": _set("BatchNormalization", "axis", "last"),
    "bn_momentum_string": _set("BatchNormalization", "momentum", "high"),
    "bn_epsilon_negative": _set("BatchNormalization", "epsilon", -1.0),
    "bn_renorm_bad_clipping": lambda c: _layer(c, "BatchNormalization")["config"].update(
        renorm=True, renorm_clipping={"rmax": 1, "bogus": 2}),
    "bn_ghost_zero": _set("BatchNormalization", "virtual_batch_size", 0),
    "half_precision": _set("Dense", "dtype", "float16"),
    "zero_units": _set("Dense", "units", 0),
    "absurd_units": _set("Dense", "units", 2**40),
    "bad_input_shape": lambda c: _layer(c, "InputLayer")["config"].update(
        batch_input_shape=[None, -8, 8, 3], batch_shape=[None, -8, 8, 3]),
    "input_shape_string": lambda c: _layer(c, "InputLayer")["config"].update(batch_input_shape="x", batch_shape="x"),
    "duplicate_names": lambda c: _rename(_layer(c, "Dense"), "conv"),
    "input_last": lambda c: c["config"].update(layers=_layers(c)[1:] + _layers(c)[:1]),
    "empty_layers": lambda c: c["config"].update(layers=[]),
    "pool_too_big": _set("MaxPooling2D", "pool_size", [64, 64]),
    "flatten_bad_format": _set("Flatten", "data_format", "NCHW"),
    "config_not_dict": lambda c: c.update(config=[1, 2, 3]),
}


def _write_config(source: Path, target: Path, config: Any) -> None:
    if source.suffix == ".keras":
        with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
            for info in old.infolist():
                data = json.dumps(config).encode() if info.filename == "config.json" else old.read(info)
                new.writestr(info, data)
    else:
        shutil.copyfile(source, target)
        with h5py.File(target, "r+") as h5:
            h5.attrs["model_config"] = json.dumps(config)


def _original(source: Path) -> dict[str, Any]:
    return bk.read_model_config(source)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_configs_are_refused_with_format_errors(name: str, edit: str, tmp_path: Path) -> None:
    config = copy.deepcopy(_original(FIXTURES / name))
    EDITS[edit](config)
    target = tmp_path / name
    _write_config(FIXTURES / name, target, config)
    with pytest.raises(bk.KerasFormatError):
        bk.load_model(target)


_POOL = [None, -1, 0, 1, 3, 10**15, 1e308, "x", "relu", [], {}, [1, 2], [None, 8], True, {"class_name": "X"}]


def _random_edit(node: Any, rng: random.Random) -> Any:
    """Replace one random node of a JSON tree by a random value."""
    if isinstance(node, dict) and node and rng.random() < 0.85:
        key = rng.choice(sorted(node))
        return {**node, key: _random_edit(node[key], rng)}
    if isinstance(node, list) and node and rng.random() < 0.85:
        index = rng.randrange(len(node))
        return node[:index] + [_random_edit(node[index], rng)] + node[index + 1:]
    return rng.choice(_POOL)


@pytest.mark.parametrize("name", MODELS)
def test_random_config_edits_load_or_are_refused(name: str, tmp_path: Path) -> None:
    rng = random.Random(f"json-{name}")
    original = _original(FIXTURES / name)
    target = tmp_path / name
    outcomes = set()
    for _ in range(60):
        _write_config(FIXTURES / name, target, _random_edit(original, rng))
        outcomes.add(_outcome(lambda: bk.load_model(target)))
    assert outcomes <= {"ok", "refused"} and "refused" in outcomes
