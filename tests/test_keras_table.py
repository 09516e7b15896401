"""The Keras layer table: one entry per layer class drives the reader and the writer.

* the planner's modules import each other without cycles, whatever is imported first;
* every entry with weights round-trips through ``save_model`` / ``load_model`` (both
  formats): same weights, same outputs, same Keras classes;
* weights of a KerasModel are paired by the Keras class each module was built for, not by
  its torch type (an ``nn.Conv2d`` standing for a Keras layer with other weight names and
  layouts reads and writes them).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch import Tensor, nn

import bnkit.keras as bk
from bnkit.keras import _core, _plan, _table
from bnkit.keras._graph import parse_model_config
from bnkit.keras._entry import LayerEntry, WeightRule, as_is, view_shape

KERAS_DIR = Path(bk.__file__).parent
MODULES = sorted(f"bnkit.keras.{p.stem}" for p in KERAS_DIR.glob("*.py") if p.stem != "__init__")
#: What a family module may not import: it would make the table import itself.
NOT_FOR_FAMILIES = {"_table", "_plan", "_load", "_save", "_weights", "_mapping", "_export", "cli", "__init__"}

_IMPORT_ORDERS = r"""
import importlib, json, random, sys, types
modules, keras_dir = json.loads(sys.argv[1]), sys.argv[2]
orders = [modules, modules[::-1]] + [random.Random(seed).sample(modules, len(modules)) for seed in range(4)]
for order in orders:
    for name in [n for n in sys.modules if n == "bnkit.keras" or n.startswith("bnkit.keras.")]:
        del sys.modules[name]
    import bnkit
    package = types.ModuleType("bnkit.keras")  # a bare package: the submodules alone decide the order
    package.__path__ = [keras_dir]
    sys.modules["bnkit.keras"] = package
    for name in order:
        importlib.import_module(name)
for name in [n for n in sys.modules if n == "bnkit.keras" or n.startswith("bnkit.keras.")]:
    del sys.modules[name]
import bnkit.keras
print(len(orders))
"""


@pytest.mark.slow
def test_submodules_import_in_any_order_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORT_ORDERS, json.dumps(MODULES), str(KERAS_DIR)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "6"


def _keras_imports(path: Path) -> set[str]:
    """The ``bnkit.keras`` modules ``path`` imports at module level (lazy imports excluded)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_module_level_imports_form_no_cycle_and_families_stay_below_the_table() -> None:
    graph = {p.stem: _keras_imports(p) & {q.stem for q in KERAS_DIR.glob("*.py")} for p in KERAS_DIR.glob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    for family in _table._FAMILIES:
        stem = family.__name__.rsplit(".", 1)[-1]
        assert not graph[stem] & NOT_FOR_FAMILIES, f"{stem} imports {graph[stem] & NOT_FOR_FAMILIES}"


def test_the_table_is_the_single_source_of_layer_facts() -> None:
    entries = _table.ENTRIES
    assert bk.SUPPORTED_LAYERS == tuple(entry.keras_class for entry in entries)
    assert len(set(bk.SUPPORTED_LAYERS)) == len(bk.SUPPORTED_LAYERS)
    for entry in entries:
        for name in (entry.keras_class, *entry.aliases):
            assert _table.TABLE[name] is entry
        assert bk.WEIGHT_RULES.get(entry.keras_class, ()) == entry.weights
        if entry.weights:
            assert entry.example is not None, f"{entry.keras_class}: a layer with weights needs an `example`"
    assert _table.TABLE["MaxPool2D"].keras_class == "MaxPooling2D"


def _example_config(entry: LayerEntry) -> dict[str, Any]:
    assert entry.example is not None
    shape, config = entry.example
    inputs = 2 if entry.keras_class == "Attention" else 1  # [query, value]: self-attention
    node = [["input", 0, 0, {}]] * inputs
    if entry.keras_class == "MultiHeadAttention":  # mha(x, value=x): the value is a keyword tensor
        node = [["input", 0, 0, {"value": ["input", 0, 0]}]]
    layer = {"class_name": entry.keras_class, "name": "layer", "config": {"name": "layer", **config},
             "inbound_nodes": [node]}
    source = {"class_name": "InputLayer", "name": "input", "inbound_nodes": [],
              "config": {"batch_input_shape": list(shape), "name": "input"}}
    return {"class_name": "Functional", "config": {"name": "example", "layers": [source, layer],
                                                   "input_layers": [["input", 0, 0]],
                                                   "output_layers": [["layer", 0, 0]]}}


def _randomised(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator) + 0.5  # positive: valid variances
                tensor.copy_(values if "var" in name or "stddev" in name else values * 2 - 2)
    return model.eval()


WEIGHTED = [entry.keras_class for entry in _table.ENTRIES if entry.weights]


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("keras_class", WEIGHTED)
def test_every_entry_with_weights_round_trips(tmp_path: Path, keras_class: str, suffix: str) -> None:
    entry = _table.TABLE[keras_class]
    model = _randomised(bk.build_from_config(_example_config(entry)))
    assert model.keras_classes == {"layer": keras_class}
    bk.save_model(model, tmp_path / f"m.{suffix}")
    loaded = bk.load_model(tmp_path / f"m.{suffix}")
    assert loaded.keras_classes == model.keras_classes
    assert loaded.keras_config == model.keras_config
    expected, received = model.state_dict(), loaded.state_dict()
    assert expected.keys() == received.keys()
    for key in expected:
        torch.testing.assert_close(received[key], expected[key], rtol=0, atol=0)
    shape = entry.example[0][1:]  # type: ignore[index]
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    if keras_class == "Embedding":
        x = x.abs()  # token ids: non-negative, below input_dim
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# ---- pairing by Keras class ----------------------------------------------------------------
def _transposed_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    return tensor.permute(2, 3, 0, 1)  # (O, I, H, W) seen as (H, W, O, I): unlike Conv2D's (H, W, I, O)


_ODD = (WeightRule("odd_kernel", "weight", _transposed_kernel, view_shape(_transposed_kernel)),
        WeightRule("odd_bias", "bias", as_is, view_shape(as_is)))


def _odd_conv(b: Any, spec: Any, xs: Any) -> Any:
    """Conv2D's plan with other weights: the table, not the torch type, must decide."""
    info, config = _core.conv2d(b, spec, xs)
    b.weight_shapes[spec.name] = {"odd_kernel": (*config["kernel_size"], config["filters"], xs[0].shape[-1]),
                                  "odd_bias": (config["filters"],)}
    return info, config


def test_weights_are_paired_by_keras_class_not_torch_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = LayerEntry("OddConv", _odd_conv, _ODD)
    monkeypatch.setitem(_table.TABLE, "OddConv", odd)
    config = _example_config(replace(odd, example=((None, 5, 5, 2), {"filters": 3, "kernel_size": 3})))
    config["config"]["layers"].append({"class_name": "Conv2D", "name": "plain", "config": {
        "name": "plain", "filters": 2, "kernel_size": 1}, "inbound_nodes": [[["layer", 0, 0, {}]]]})
    config["config"]["output_layers"] = [["plain", 0, 0]]
    model = _randomised(bk.build_from_config(config))
    assert model.keras_classes == {"layer": "OddConv", "plain": "Conv2D"}
    assert isinstance(model.layers["layer"], nn.Conv2d)
    for suffix in ("keras", "h5"):
        bk.save_model(model, tmp_path / f"odd.{suffix}")
        opened = h5py.File(tmp_path / "odd.h5") if suffix == "h5" else _archive_weights(tmp_path / "odd.keras")
        with opened as h5:
            if suffix == "h5":
                stored = np.asarray(h5["model_weights/layer/layer/odd_kernel:0"])
                assert set(h5["model_weights/plain/plain"]) == {"kernel:0", "bias:0"}  # plain Conv2D names
            else:
                stored = np.asarray(h5["layers/odd_conv/vars/0"])
        weight = model.layers["layer"].weight.detach().numpy()
        np.testing.assert_array_equal(stored, weight.transpose(2, 3, 0, 1))
        loaded = bk.load_model(tmp_path / f"odd.{suffix}")
        torch.testing.assert_close(loaded.layers["layer"].weight, model.layers["layer"].weight, rtol=0, atol=0)
        x = torch.randn(2, 5, 5, 2)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    monkeypatch.undo()
    with pytest.raises(bk.UnsupportedLayerError, match=r"OddConv x1 \('layer'\): no bnkit equivalent"):
        _plan.check_supported(parse_model_config(config), "config")


class _archive_weights:
    """The ``model.weights.h5`` of a ``.keras`` archive, opened from a temporary copy."""

    def __init__(self, path: Path) -> None:
        import zipfile

        self.target = path.with_suffix(".weights.h5")
        with zipfile.ZipFile(path) as archive:
            self.target.write_bytes(archive.read("model.weights.h5"))

    def __enter__(self) -> Any:
        self.h5 = h5py.File(self.target)
        return self.h5

    def __exit__(self, *exc: object) -> None:
        self.h5.close()
