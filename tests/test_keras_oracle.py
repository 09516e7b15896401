"""Live oracle for bnkit.keras: Keras writes files, bnkit reads them; bnkit writes, Keras reads.

Two rounds of Keras subprocesses (tf_keras 2.21 and Keras 3.15.1 side by side, see
tests/keras_fixtures/keras_jobs.py); TensorFlow is never imported here.  Round 1 builds
randomly initialised models (the seed-001 tiny CNN, a residual graph with Add/Concatenate
and every padding/pooling variant, BN variants incl. renorm and ghost batches, a
channels_first model, a nested model, VGG16 notop), saves them in every format and trains
some for three SGD steps.  Round 2 loads what bnkit saved, and an applications-layout
VGG16 weights file, in both Keras versions.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import bnkit
import bnkit.keras as bk
from bnkit.keras._mapping import RULES, keras_class
from bnkit.models import vgg16, vgg19
from tests.keras_fixtures.oracle import require_ok, run_jobs

pytestmark = pytest.mark.oracle

FLAVOURS = ("tf_keras", "keras3")
RECIPES = {"tiny": "tiny_cnn", "res": "residual", "bnv": "bn_variants", "cf": "channels_first"}
TRAINED = ("tiny", "bnv", "cf")
ATOL = RTOL = 1e-5
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _round1(flavour: str) -> list[dict[str, Any]]:
    weights = "w.h5" if flavour == "tf_keras" else "weights.h5"
    tasks = [{"kind": "build", "name": f"{flavour}_{short}", "recipe": recipe, "formats": ["h5", "keras", weights],
              "train": flavour == "tf_keras" and short in TRAINED} for short, recipe in RECIPES.items()]
    tasks.append({"kind": "build", "name": f"{flavour}_nested", "recipe": "nested",
                  "formats": ["h5", "weights.h5"] + (["w.h5"] if flavour == "tf_keras" else []), "train": False})
    tasks.append({"kind": "build", "name": f"{flavour}_vgg", "recipe": "vgg16_notop",
                  "formats": ["h5" if flavour == "tf_keras" else "keras"], "train": False})
    return tasks


@pytest.fixture(scope="module")
def round1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("keras_oracle")
    return work, run_jobs(work, {flavour: _round1(flavour) for flavour in FLAVOURS}, "round1")


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _applications_vgg16_notop(path: Path, rng: np.random.Generator) -> None:
    """The Keras-1-era layout of vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, random weights."""
    names = ["input_1"]
    with h5py.File(path, "w") as h5:
        h5.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        channels = 3
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            for i, filters in enumerate(block, start=1):
                name = f"block{b}_conv{i}"
                group = h5.create_group(name)
                group.attrs["weight_names"] = np.array([f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()])
                std = np.sqrt(2.0 / (9 * channels))
                group.create_dataset(f"{name}_W_1:0", data=rng.normal(0, std, (3, 3, channels, filters)).astype("f4"))
                group.create_dataset(f"{name}_b_1:0", data=rng.normal(0, 0.1, (filters,)).astype("f4"))
                names.append(name)
                channels = filters
            h5.create_group(f"block{b}_pool").attrs["weight_names"] = np.array([], dtype="S1")
            names.append(f"block{b}_pool")
        h5.attrs["layer_names"] = np.array([n.encode() for n in names])


def _bnkit_vggs() -> dict[str, nn.Module]:
    torch.manual_seed(7)
    models = {}
    for build in (vgg16, vgg19):
        for placement in (None, "after_activation"):
            model = build(input_shape=(3, 32, 32), width=0.25, classes=10, batch_norm=placement)
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
            models[f"bnkit_{build.__name__}_{placement or 'plain'}"] = model.eval()
    return models


@pytest.fixture(scope="module")
def round2(round1: tuple[Path, dict[str, dict[str, str]]]) -> tuple[Path, dict[str, dict[str, str]],
                                                                    dict[str, np.ndarray]]:
    """bnkit saves (loaded Keras models, bnkit VGGs); Keras loads them back."""
    work, _ = round1
    expected: dict[str, np.ndarray] = {}
    tasks: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in FLAVOURS}
    for flavour in FLAVOURS:
        for short in RECIPES:
            model = bk.load_model(work / f"{flavour}_{short}.h5")
            for suffix in ("keras", "h5"):
                name = f"saved_{flavour}_{short}_{suffix}"
                bk.save_model(model, work / f"{name}.{suffix}")
                expected[name] = _npz(work / f"{flavour}_{short}_ref.npz")["y"]
                ghost_bn = (flavour, short) == ("tf_keras", "bnv")  # Keras 3 has no virtual_batch_size
                for reader in ("tf_keras",) if ghost_bn else FLAVOURS:
                    tasks[reader].append({"kind": "predict", "name": f"{name}_{reader}",
                                          "file": str(work / f"{name}.{suffix}"),
                                          "x": str(work / f"{flavour}_{short}_ref.npz")})
    x = np.random.default_rng(5).normal(0, 1, (2, 32, 32, 3)).astype("float32")
    np.savez(work / "vgg_x.npz", x=x)
    for name, model in _bnkit_vggs().items():
        expected[name] = model(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
        for suffix in ("keras", "h5"):
            bk.save_model(model, work / f"{name}.{suffix}", input_shape=(3, 32, 32))
            for reader in FLAVOURS:
                tasks[reader].append({"kind": "predict", "name": f"{name}_{suffix}_{reader}",
                                      "file": str(work / f"{name}.{suffix}"), "x": str(work / "vgg_x.npz")})
    _applications_vgg16_notop(work / "vgg16_notop.h5", np.random.default_rng(3))
    for reader in FLAVOURS:
        tasks[reader].append({"kind": "vgg16_app", "name": f"app_{reader}", "weights": str(work / "vgg16_notop.h5"),
                              "include_top": False, "input_shape": [32, 32, 3], "x": str(work / "vgg_x.npz")})
    return work, run_jobs(work, tasks, "round2"), expected


# ---- Keras files -> bnkit -----------------------------------------------------------------
LOAD_CASES = [(flavour, short, suffix) for flavour in FLAVOURS for short in RECIPES for suffix in ("h5", "keras")]


@pytest.mark.parametrize("flavour, short, suffix", LOAD_CASES + [("tf_keras", "vgg", "h5"), ("keras3", "vgg", "keras")])
def test_load_model_outputs_equal_keras(round1: Any, flavour: str, short: str, suffix: str) -> None:
    work, results = round1
    require_ok(results, flavour, f"{flavour}_{short}")
    path = work / f"{flavour}_{short}.{suffix}"
    ref = _npz(work / f"{flavour}_{short}_ref.npz")
    model = bk.load_model(path)
    assert not model.training
    y = model(torch.from_numpy(ref["x"])).detach().numpy()
    np.testing.assert_allclose(y, ref["y"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("flavour, weights", [("tf_keras", "w.h5"), ("keras3", "weights.h5")])
@pytest.mark.parametrize("short", list(RECIPES))
def test_weights_only_files_into_a_rebuilt_model(round1: Any, flavour: str, weights: str, short: str) -> None:
    work, results = round1
    require_ok(results, flavour, f"{flavour}_{short}")
    path = work / f"{flavour}_{short}.{weights}"
    model = bk.build_from_config(bk.read_model_config(work / f"{flavour}_{short}.h5")).eval()
    report = bk.load_weights(model, path)
    assert report.ok and report.matched_by == "name"
    ref = _npz(work / f"{flavour}_{short}_ref.npz")
    np.testing.assert_allclose(model(torch.from_numpy(ref["x"])).detach().numpy(), ref["y"], rtol=RTOL, atol=ATOL)


def test_tf_keras_archives_without_layer_names_match_by_keras_order(round1: Any) -> None:
    work, _ = round1
    model = bk.build_from_config(bk.read_model_config(work / "tf_keras_res.h5")).eval()
    report = bk.load_weights(model, work / "tf_keras_res.keras")
    assert report.ok and report.matched_by == "Keras weight path"  # layers/<class>[_k] of the model's config
    torch_model = nn.Sequential(OrderedDict((name, model.layers[name]) for name in model.layers))
    report = bk.load_weights(torch_model, work / "tf_keras_res.keras")  # a plain torch model: by module order
    assert report.ok and report.matched_by == "Keras layer order"


def _keras_view(module: nn.Module, keras_name: str) -> np.ndarray:
    rule = next(r for r in RULES[keras_class(module)] if r.keras == keras_name)  # type: ignore[index]
    return rule.view(getattr(module, rule.torch).detach(), None).numpy()


@pytest.mark.parametrize("short", TRAINED)
def test_training_steps_match_tf_keras(round1: Any, short: str) -> None:
    """Three SGD steps in training mode: every weight and BN statistic, then the outputs."""
    work, results = round1
    require_ok(results, "tf_keras", f"tf_keras_{short}")
    model = bk.load_model(work / f"tf_keras_{short}.h5").train()
    trained = _npz(work / f"tf_keras_{short}_train.npz")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(trained["xs"].shape[0]):
        optimizer.zero_grad()
        loss = ((model(torch.from_numpy(trained["xs"][step])) - torch.from_numpy(trained["ts"][step])) ** 2).mean()
        loss.backward()
        optimizer.step()
    compared = 0
    for key, value in trained.items():
        if key.startswith("w/"):
            _, layer, weight = key.split("/")
            ours = _keras_view(model.layers[layer], weight).reshape(value.shape)
            np.testing.assert_allclose(ours, value, rtol=1e-4, atol=2e-5, err_msg=key)
            compared += 1
    assert compared >= 4
    y = model.eval()(torch.from_numpy(trained["x"])).detach().numpy()
    np.testing.assert_allclose(y, trained["y"], rtol=1e-4, atol=2e-5)


def _tiny_cnn_torch() -> nn.Sequential:
    """The tiny CNN as a plain torch model: NCHW input and a plain nn.Flatten (needs the fc permutation)."""
    return nn.Sequential(OrderedDict(
        conv2d=nn.Conv2d(1, 32, 3, padding=1), relu=nn.ReLU(),
        batch_normalization=bnkit.BatchNormalization(axis=1, momentum=0.15, num_features=32),
        flatten=nn.Flatten(), dense=nn.Linear(64 * 64 * 32, 100), relu2=nn.ReLU(),
        dense_1=nn.Linear(100, 10), softmax=nn.Softmax(dim=1)))


@pytest.mark.parametrize("source", ["tf_keras_tiny.w.h5", "keras3_tiny.weights.h5", "keras3_tiny.keras"])
def test_plain_nn_flatten_gets_the_fc_permutation(round1: Any, source: str) -> None:
    work, _ = round1
    model = _tiny_cnn_torch().eval()
    assert bk.load_weights(model, work / source).ok
    ref = _npz(work / f"{source.split('.')[0]}_ref.npz")
    y = model(torch.from_numpy(ref["x"]).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(y, ref["y"], rtol=RTOL, atol=ATOL)


def _nested_torch() -> nn.Sequential:
    inner = nn.Sequential(OrderedDict(c1=nn.Conv2d(3, 4, 3), bn1=bnkit.BatchNormalization(axis=1, num_features=4),
                                      c2=nn.Conv2d(4, 2, 3)))
    return nn.Sequential(OrderedDict(inner=inner, fl=bnkit.Flatten("channels_first"), d=nn.Linear(32, 3)))


@pytest.mark.parametrize("source", ["tf_keras_nested.w.h5", "tf_keras_nested.h5", "keras3_nested.h5",
                                    "keras3_nested.weights.h5"])
def test_nested_model_weights_split_per_inner_layer(round1: Any, source: str) -> None:
    work, _ = round1
    model = _nested_torch()
    assert bk.load_weights(model, work / source).ok
    ref = _npz(work / f"{source.split('.')[0]}_ref.npz")
    modules = dict(model.named_modules())
    for key, value in ref.items():
        if key.startswith("w/"):
            _, layer, weight = key.split("/")
            module = next(m for path, m in modules.items() if path.rsplit(".", 1)[-1] == layer)
            np.testing.assert_array_equal(_keras_view(module, weight).reshape(value.shape), value, err_msg=key)
    np.testing.assert_allclose(model.eval()(torch.from_numpy(ref["x"]).permute(0, 3, 1, 2)).detach().numpy(),
                               ref["y"], rtol=RTOL, atol=ATOL)


def test_nested_v3_file_without_names_is_refused_with_every_position(round1: Any) -> None:
    work, _ = round1
    with pytest.raises(bk.WeightMismatchError) as caught:
        bk.load_weights(_nested_torch(), work / "tf_keras_nested.weights.h5")
    assert "layers/sequential/layers/conv2d" in str(caught.value) and caught.value.report.missing


def test_ghost_bn_files_that_tf_keras_cannot_reload_are_read(round1: Any) -> None:
    """tf_keras stores a built ghost-BN axis shifted by one ([4] on rank 4) and then refuses it."""
    work, _ = round1
    config = bk.read_model_config(work / "tf_keras_bnv.h5")
    ghost = next(layer for layer in config["config"]["layers"] if layer["name"] == "bn_ghost")
    assert ghost["config"]["axis"] == [4]
    model = bk.load_model(work / "tf_keras_bnv.h5")
    assert model.layers["bn_ghost"].virtual_batch_size == 4
    written = {layer["name"]: layer["config"] for layer in model.keras_config["config"]["layers"]}
    assert written["bn_ghost"]["axis"] == 3


# ---- bnkit -> Keras -----------------------------------------------------------------------
def _round2_cases() -> list[tuple[str, str]]:
    cases = []
    for flavour in FLAVOURS:
        for short in RECIPES:
            for suffix in ("keras", "h5"):
                for reader in FLAVOURS:
                    if (flavour, short, reader) != ("tf_keras", "bnv", "keras3"):
                        cases.append((f"saved_{flavour}_{short}_{suffix}", reader))
    for build in ("vgg16", "vgg19"):
        for placement in ("plain", "after_activation"):
            for suffix in ("keras", "h5"):
                cases += [(f"bnkit_{build}_{placement}_{suffix}", reader) for reader in FLAVOURS]
    return cases


@pytest.mark.parametrize("name, reader", _round2_cases())
def test_files_saved_by_bnkit_load_and_run_in_keras(round2: Any, name: str, reader: str) -> None:
    work, results, expected = round2
    require_ok(results, reader, f"{name}_{reader}")
    key = name if name.startswith("saved_") else name.rsplit("_", 1)[0]
    y = _npz(work / f"{name}_{reader}_pred.npz")["y"]
    np.testing.assert_allclose(y, expected[key], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reader", FLAVOURS)
def test_applications_vgg16_weights_file_matches_keras(round2: Any, reader: str) -> None:
    work, results, _ = round2
    require_ok(results, reader, f"app_{reader}")
    model = vgg16(include_top=False, input_shape=(3, 32, 32)).eval()
    report = bk.load_weights(model, work / "vgg16_notop.h5")
    assert report.ok and len(report.loaded) == 13
    x = _npz(work / "vgg_x.npz")["x"]
    ours = model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(ours, _npz(work / f"app_{reader}_pred.npz")["y"], rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("name", ["bnkit_vgg16_after_activation", "bnkit_vgg19_plain"])
def test_bnkit_reads_its_own_files_back(round2: Any, name: str) -> None:
    work, _, expected = round2
    x = _npz(work / "vgg_x.npz")["x"]
    for suffix in ("keras", "h5"):
        y = bk.load_model(work / f"{name}.{suffix}")(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(y, expected[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("flavour, short, suffix", LOAD_CASES)
def test_files_saved_by_bnkit_record_the_source_keras_version(round2: Any, flavour: str, short: str,
                                                              suffix: str) -> None:
    """A model read from a Keras 3 file is written back as Keras 3 (the version Keras
    recorded), one from tf_keras as 2.x; both Keras reload those files (test above)."""
    from tests.test_keras_save_version import recorded_versions

    work, _, _ = round2
    keras_wrote = recorded_versions(work / f"{flavour}_{short}.h5")[0]
    assert keras_wrote.startswith("3." if flavour == "keras3" else "2.")
    assert set(recorded_versions(work / f"saved_{flavour}_{short}_{suffix}.{suffix}")) == {keras_wrote}
