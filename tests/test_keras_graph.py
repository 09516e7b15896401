"""Graph-level Keras features against the live oracle (tf_keras 2.21 and Keras 3.15.1 build
and save the models in subprocesses; bnkit loads them here, without TensorFlow):

* a file with layers bnkit cannot rebuild lists every blocking class at once;
* layer names holding '/' (tf_keras applications) or '.';
* nested Sequential/functional models and shared layers;
* the channels-first interface (``data_format="channels_first"``).

Outputs are compared as max abs difference / max abs output <= 1e-5.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bnkit
import bnkit.keras as bk
from tests.keras_fixtures import oracle
from tests.keras_fixtures.oracle import require_ok

pytestmark = pytest.mark.oracle

FLAVOURS = ("tf_keras", "keras3")
FORMATS = ("h5", "keras")
RECIPES = ("blocked", "odd_names", "nested_models", "shared_layers", "plain_cnn", "channels_first")
TOLERANCE = 1e-5
GRAPH_JOBS = Path(oracle.__file__).resolve().parent / "graph_jobs.py"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("keras_graph")
    tasks = {flavour: [{"kind": "graph", "name": f"{flavour}_{recipe}", "recipe": recipe, "formats": list(FORMATS),
                        "predict": recipe != "blocked"} for recipe in RECIPES] for flavour in FLAVOURS}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oracle, "JOBS", GRAPH_JOBS)
        return work, oracle.run_jobs(work, tasks, "graph")


def _file(built: Any, flavour: str, recipe: str, suffix: str) -> Path:
    work, results = built
    require_ok(results, flavour, f"{flavour}_{recipe}")
    return work / f"{flavour}_{recipe}.{suffix}"


def _reference(built: Any, flavour: str, recipe: str) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    with np.load(built[0] / f"{flavour}_{recipe}_ref.npz") as data:
        xs = [torch.from_numpy(data[f"x{i}"]) for i in range(sum(k.startswith("x") for k in data.files) - 1)]
        ys = [data[f"y{i}"] for i in range(sum(k.startswith("y") for k in data.files) - 1)]
    return xs, ys


def _assert_close(received: Any, expected: list[np.ndarray]) -> None:
    outputs = received if isinstance(received, tuple) else (received,)
    assert len(outputs) == len(expected)
    for output, want in zip(outputs, expected):
        got = output.detach().numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


# ---- a. every blocking layer at once -----------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unsupported_file_lists_every_blocking_class(built: Any, flavour: str, suffix: str) -> None:
    with pytest.raises(bk.UnsupportedLayerError) as caught:
        bk.load_model(_file(built, flavour, "blocked", suffix))
    message = str(caught.value)
    assert "Lambda x2 ('double', 'plus_one'): its Python code is stored in the file" in message
    expected = {"ActivityRegularization": "x4 ('penalty_a', 'penalty_b', 'penalty_c', ...)",
                "UnitNormalization": "x1 ('unit')"}
    for cls, detail in expected.items():
        if cls not in bk.SUPPORTED_LAYERS:
            assert f"{cls} {detail}: no bnkit equivalent" in message
    blocking = 1 + sum(cls not in bk.SUPPORTED_LAYERS for cls in expected)
    assert f"of {blocking} kind(s)" in message
    for supported in ("Conv2D", "Dense", "Flatten"):
        assert not re.search(rf"^\s+{supported} x", message, re.MULTILINE)


def test_custom_objects_code_and_dtype_policies_are_listed_together() -> None:
    def layer(name: str, cls: str, **extra: Any) -> dict[str, Any]:
        return {"class_name": cls, "name": name, "config": {"name": name, "units": 2, **extra.pop("config", {})},
                "inbound_nodes": [[["x", 0, 0, {}]]], **extra}

    config = {"class_name": "Functional", "config": {
        "name": "m", "input_layers": [["x", 0, 0]], "output_layers": [["d", 0, 0]],
        "layers": [{"class_name": "InputLayer", "name": "x", "config": {"batch_input_shape": [None, 3], "name": "x"},
                    "inbound_nodes": []},
                   layer("mine", "MyDense", module="my_package.layers"), layer("reg", "Dense", registered_name="Pkg>D"),
                   layer("half", "Dense", config={"dtype": "mixed_float16"}), layer("code", "Lambda"),
                   layer("d", "Dense")]}}
    with pytest.raises(bk.UnsupportedLayerError) as caught:
        bk.build_from_config(config)
    message = str(caught.value)
    assert "4 layer(s) of 4 kind(s)" in message
    assert "MyDense x1 ('mine'): a custom object from module 'my_package.layers'" in message
    assert "Dense x1 ('reg'): a custom registered object 'Pkg>D'" in message
    assert "Dense x1 ('half'): dtype policy 'mixed_float16'" in message
    assert "Lambda x1 ('code'): its Python code" in message


# ---- b. names with '/' and '.' -------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_layer_names_with_slashes_and_dots(built: Any, flavour: str, suffix: str, tmp_path: Path) -> None:
    model = bk.load_model(_file(built, flavour, "odd_names", suffix))
    xs, ys = _reference(built, flavour, "odd_names")
    _assert_close(model(*xs), ys)
    sep = "/" if flavour == "tf_keras" else "."
    names = [layer["name"] for layer in model.keras_config["config"]["layers"]]
    assert f"conv1{sep}conv" in names and "conv1_conv" in names and "head.fc" in names
    assert all("." not in key for key in model.layers)
    # the clash: 'conv1_conv' keeps its name as key; the renamed layer gets another key
    assert model.keras_layer("conv1_conv") is model.layers["conv1_conv"]
    assert model.keras_layer(f"conv1{sep}conv") is not model.layers["conv1_conv"]
    assert model.keras_name(next(k for k, v in model.keras_names.items() if v == "head.fc")) == "head.fc"
    assert set(model.keras_classes) >= {f"conv1{sep}conv", f"conv1{sep}bn", "conv1", "conv1_conv", "head.fc"}
    for out in ("keras", "h5"):  # bnkit writes the names back and reads its own files
        bk.save_model(model, tmp_path / f"back.{out}")
        again = bk.load_model(tmp_path / f"back.{out}")
        assert [layer["name"] for layer in again.keras_config["config"]["layers"]] == names
        _assert_close(again(*xs), ys)
    rows = {row.name: row for row in bnkit.summary(model, input_data=xs[0]).rows}  # Keras' layer names
    assert rows[f"conv1{sep}conv"].params == 3 * 3 * 3 * 4 + 4 and rows["head.fc"].params == 4 * 3 + 3
    assert rows["conv1_conv"].params == 4 * 4 + 4  # the layer really named conv1_conv
    fresh = bk.build_from_config(model.keras_config)  # load_weights pairs the Keras names too
    assert bk.load_weights(fresh, _file(built, flavour, "odd_names", suffix)).ok
    _assert_close(fresh.eval()(*xs), ys)


# ---- c. nested models and shared layers ------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("recipe", ["nested_models", "shared_layers"])
def test_nested_models_and_shared_layers(built: Any, recipe: str, flavour: str, suffix: str) -> None:
    model = bk.load_model(_file(built, flavour, recipe, suffix))
    xs, ys = _reference(built, flavour, recipe)
    _assert_close(model(*xs), ys)
    layers = model.keras_config["config"]["layers"]
    assert not {"Sequential", "Functional", "Model"} & {layer["class_name"] for layer in layers}  # flattened
    if recipe == "shared_layers":
        calls = {layer["name"]: len(layer["inbound_nodes"]) for layer in layers}
        assert calls["shared_conv"] == 3 and calls["shared_fc"] == 2 and calls["tower_conv"] == 2
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 2  # one module per shared layer
    else:  # the stem's `conv` and the outer `conv` are two layers
        assert model.keras_origins["conv"][:2] == (("body", "middle", "stem"), "conv")
        outer = next(name for name, origin in model.keras_origins.items() if origin[0] == () and origin[1] == "conv")
        assert outer != "conv" and model.keras_layer(outer).out_channels == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_nested_weights_files_into_the_flat_model(built: Any, flavour: str, tmp_path: Path) -> None:
    """load_weights reads the nested layouts (.h5 groups per outer layer, .keras paths) too."""
    model = bk.load_model(_file(built, flavour, "nested_models", "keras"))
    xs, ys = _reference(built, flavour, "nested_models")
    for suffix in FORMATS:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.fill_(0.5)
        report = bk.load_weights(model, _file(built, flavour, "nested_models", suffix))
        assert report.ok and len(report.loaded) == 7  # conv, bn, block_conv, block_bn, squeeze, outer conv, fc
        _assert_close(model(*xs), ys)


# ---- Keras reads what bnkit writes back --------------------------------------------------------------
RESAVED = [(flavour, recipe, suffix) for flavour in FLAVOURS
           for recipe in ("odd_names", "nested_models", "shared_layers", "plain_cnn") for suffix in FORMATS]


@pytest.fixture(scope="module")
def resaved(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each oracle file and saves it in both formats; Keras loads those and predicts."""
    work, _ = built
    tasks: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in FLAVOURS}
    for flavour, recipe, suffix in RESAVED:  # plain_cnn: written from its NCHW-interface model
        layout = "channels_first" if recipe == "plain_cnn" else None
        model = bk.load_model(_file(built, flavour, recipe, suffix), data_format=layout)
        for out in FORMATS:
            name = f"back_{flavour}_{recipe}_{suffix}_{out}"
            bk.save_model(model, work / f"{name}.{out}")
            readers = ("tf_keras",) if (flavour, recipe) == ("tf_keras", "odd_names") else FLAVOURS  # '/' names
            for reader in readers:
                task = {"kind": "predict_many", "name": f"{name}_{reader}", "file": str(work / f"{name}.{out}"),
                        "x": str(work / f"{flavour}_{recipe}_ref.npz")}
                tasks[reader].append(task)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oracle, "JOBS", GRAPH_JOBS)
        return work, oracle.run_jobs(work, tasks, "resaved")


@pytest.mark.slow  # a second round of Keras processes (~40 s)
@pytest.mark.parametrize("flavour, recipe, suffix", RESAVED)
def test_keras_loads_the_flat_graphs_bnkit_writes(built: Any, resaved: Any, flavour: str, recipe: str,
                                                  suffix: str) -> None:
    work, results = resaved
    _, ys = _reference(built, flavour, recipe)
    readers = ("tf_keras",) if (flavour, recipe) == ("tf_keras", "odd_names") else FLAVOURS
    for out in FORMATS:
        for reader in readers:
            name = f"back_{flavour}_{recipe}_{suffix}_{out}_{reader}"
            require_ok(results, reader, name)
            with np.load(work / f"{name}_pred.npz") as data:
                received = tuple(torch.from_numpy(data[f"y{i}"]) for i in range(len(data.files)))
            _assert_close(received, ys)


# ---- d. channel layout ---------------------------------------------------------------------------------
def _permutes(model: bk.KerasModel) -> int:
    return sum(step.op == "permute" for step in model.steps)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_channels_first_interface_runs_without_permutes(built: Any, flavour: str, suffix: str) -> None:
    path = _file(built, flavour, "plain_cnn", suffix)
    (x,), (fmap, logits) = _reference(built, flavour, "plain_cnn")
    default = bk.load_model(path)
    assert default.data_format == "channels_last" and _permutes(default) == 2  # the input and the image output
    _assert_close(default(x), [fmap, logits])
    model = bk.load_model(path, data_format="channels_first")
    assert model.data_format == "channels_first" and model.keras_data_format == "channels_last"
    assert _permutes(model) == 0
    assert model.input_shapes == [(None, 3, 12, 10)] and model.keras_input_shapes == [(None, 12, 10, 3)]
    _assert_close(model(x.permute(0, 3, 1, 2)), [fmap.transpose(0, 3, 1, 2), logits])
    with pytest.raises(ValueError, match="rank 4 in the channels_first layout"):
        model(x[0])
    fresh = bk.build_from_config(model.keras_config, data_format="channels_first")
    fresh.load_state_dict(default.state_dict())
    assert _permutes(fresh) == 0
    _assert_close(fresh.eval()(x.permute(0, 3, 1, 2)), [fmap.transpose(0, 3, 1, 2), logits])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_channels_last_interface_of_a_channels_first_model(built: Any, flavour: str) -> None:
    path = _file(built, flavour, "channels_first", "h5")
    (x,), ys = _reference(built, flavour, "channels_first")
    default = bk.load_model(path)
    assert default.keras_data_format == default.data_format == "channels_first" and _permutes(default) == 0
    _assert_close(default(x), ys)
    model = bk.load_model(path, data_format="channels_last")
    assert model.input_shapes == [(None, 12, 12, 3)]
    _assert_close(model(x.permute(0, 2, 3, 1)), ys)


def test_data_format_is_checked() -> None:
    config = bk.read_model_config(Path(oracle.__file__).resolve().parent / "small_tf_keras.h5")
    with pytest.raises(ValueError, match="`data_format` must be None, 'channels_last' or 'channels_first'.*NHWC"):
        bk.build_from_config(config, data_format="NHWC")
    with pytest.raises(ValueError, match="`data_format`.*received: data_format=3"):
        bk.load_model("missing.h5", data_format=3)  # type: ignore[arg-type]


def test_convert_writes_a_channels_first_checkpoint(built: Any, tmp_path: Path) -> None:
    import argparse

    from bnkit.keras.cli import add_convert_parser, load_checkpoint_model

    parser = argparse.ArgumentParser(prog="bnkit")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    source = _file(built, "tf_keras", "plain_cnn", "keras")
    args = parser.parse_args(["convert", str(source), str(tmp_path / "cnn.pt"), "--data-format", "channels_first"])
    assert args.run(args) == 0
    model, architecture = load_checkpoint_model(tmp_path / "cnn.pt")
    assert architecture["data_format"] == "channels_first" and _permutes(model) == 0
    (x,), (fmap, logits) = _reference(built, "tf_keras", "plain_cnn")
    _assert_close(model.eval()(x.permute(0, 3, 1, 2)), [fmap.transpose(0, 3, 1, 2), logits])
    args = parser.parse_args(["convert", str(tmp_path / "cnn.pt"), str(tmp_path / "x.keras"), "--data-format",
                              "channels_first"])
    with pytest.raises(ValueError, match="--data-format sets the interface"):
        args.run(args)
