"""Keras' convolution family in bnkit.keras: Conv1D/Conv3D (causal), depthwise and separable
convs, transposed convs, 1-D/3-D pooling, global pooling, padding, cropping, upsampling.

The torch modules are checked against NumPy references written from TensorFlow's
definitions; the loader against live Keras (tf_keras 2.21 and Keras 3 in subprocesses, see
tests/keras_fixtures/conv_jobs.py): Keras builds models with random biases and BN statistics,
saves ``.h5`` and ``.keras``, and bnkit's outputs must equal Keras' (max |diff| / max |y| <=
1e-5); bnkit's saved files must give Keras' outputs back in Keras; BNs after depthwise and
separable convs must fold with outputs preserved.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnkit
import bnkit.keras as bk
from bnkit.keras._conv_plan import depthwise_kernel
from bnkit.keras._conv_layers import AvgPoolSame, Crop, GlobalPool, SamePad, UpsampleBilinear2d, UpsampleNearest
from bnkit.keras._layers import same_padding

RNG = np.random.default_rng(2024)


def _relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


# ---- NumPy references (TensorFlow's definitions) --------------------------------------------
def _np_pool_same(x: np.ndarray, k: tuple[int, ...], s: tuple[int, ...], mode: str) -> np.ndarray:
    """TF "same" pooling on (N, C, *spatial): windows start at i*s - before; only input cells count."""
    sizes = x.shape[2:]
    befores = [same_padding(n, kk, ss)[0] for n, kk, ss in zip(sizes, k, s)]
    out_sizes = [-(-n // ss) for n, ss in zip(sizes, s)]
    out = np.empty(x.shape[:2] + tuple(out_sizes), dtype=np.float64)
    for index in np.ndindex(*out_sizes):
        window = tuple(slice(max(i * ss - b, 0), min(i * ss - b + kk, n))
                       for i, ss, b, kk, n in zip(index, s, befores, k, sizes))
        cells = x[(Ellipsis, *window)].reshape(x.shape[0], x.shape[1], -1)
        out[(Ellipsis, *index)] = cells.mean(-1) if mode == "avg" else cells.max(-1)
    return out


def _np_bilinear(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """tf.image.resize bilinear, half-pixel centres, on NCHW: lower = max(floor(in), 0),
    upper = min(ceil(in), n - 1), lerp = in - floor(in), in = (out + 0.5) / factor - 0.5."""
    for axis, f in ((2, factor[0]), (3, factor[1])):
        n = x.shape[axis]
        source = (np.arange(n * f) + 0.5) * (n / (n * f)) - 0.5
        lower = np.maximum(np.floor(source), 0).astype(int)
        upper = np.minimum(np.ceil(source), n - 1).astype(int)
        lerp = (source - np.floor(source)).reshape([-1 if a == axis else 1 for a in range(4)])
        x = np.take(x, lower, axis=axis) * (1 - lerp) + np.take(x, upper, axis=axis) * lerp
    return x


def _np_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int, pads: tuple[int, int]) -> np.ndarray:
    """TF depthwise conv on NCHW with a Keras kernel (kh, kw, C, M): output channel c*M + m."""
    kh, kw, channels, mult = kernel.shape
    xp = np.pad(x, ((0, 0), (0, 0), pads, pads))
    out_h, out_w = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], channels * mult, out_h, out_w))
    for c in range(channels):
        for m in range(mult):
            for a in range(kh):
                for b in range(kw):
                    patch = xp[:, c, a:a + stride * out_h:stride, b:b + stride * out_w:stride]
                    out[:, c * mult + m] += patch * kernel[a, b, c, m]
    return out


# ---- torch modules against the references ---------------------------------------------------
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("shape, k, s", [((2, 3, 7), (3,), (2,)), ((1, 2, 5, 6, 4), (2, 3, 2), (1, 2, 3)),
                                         ((2, 2, 6), (4,), (1,))])
def test_same_pooling_matches_tensorflow_definition(mode: str, shape: tuple[int, ...], k: tuple[int, ...],
                                                    s: tuple[int, ...]) -> None:
    x = RNG.normal(size=shape)
    pool_max = {1: F.max_pool1d, 3: F.max_pool3d}[len(k)]
    if mode == "avg":
        ours = AvgPoolSame(k, s)(torch.from_numpy(x))
    else:
        ours = pool_max(SamePad(k, s, value=-math.inf)(torch.from_numpy(x)), k, s)
    assert _relative(ours.numpy(), _np_pool_same(x, k, s, mode)) < 1e-12


def test_bilinear_upsampling_matches_tf_image_resize_definition() -> None:
    x = RNG.normal(size=(2, 3, 4, 5))
    for factor in ((2, 3), (3, 1), (1, 4)):
        ours = UpsampleBilinear2d(factor)(torch.from_numpy(x)).numpy()
        assert _relative(ours, _np_bilinear(x, factor)) < 1e-12


def test_nearest_upsampling_crop_and_global_pool() -> None:
    x = RNG.normal(size=(2, 3, 4, 5, 6))
    ups = UpsampleNearest((1, 2, 3))(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ups, x.repeat(2, axis=3).repeat(3, axis=4))
    crop = Crop(((1, 0), (0, 2), (2, 1)))(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(crop, x[:, :, 1:, :3, 2:5])
    np.testing.assert_allclose(GlobalPool("avg", keepdims=True)(torch.from_numpy(x)).numpy(),
                               x.mean(axis=(2, 3, 4), keepdims=True))
    np.testing.assert_array_equal(GlobalPool("max")(torch.from_numpy(x[..., 0])).numpy(), x[..., 0].max(axis=(2, 3)))
    with pytest.raises(ValueError, match="mode='median'"):
        GlobalPool("median")


def test_depthwise_view_puts_keras_kernel_into_grouped_conv() -> None:
    """Keras (kh, kw, C, M) -> torch (C*M, 1, kh, kw) through the view; outputs equal TF's definition."""
    channels, mult = 3, 2
    kernel = RNG.normal(size=(3, 2, channels, mult)).astype(np.float32)
    conv = torch.nn.Conv2d(channels, channels * mult, (3, 2), stride=2, padding=1, groups=channels, bias=False)
    with torch.no_grad():
        view = depthwise_kernel(conv.weight, None)
        view.copy_(torch.from_numpy(kernel).reshape(view.shape))
    x = RNG.normal(size=(2, channels, 7, 6)).astype(np.float32)
    ours = conv(torch.from_numpy(x)).detach().numpy()
    assert _relative(ours, _np_depthwise(x, kernel, 2, (1, 1))) < 1e-6
    np.testing.assert_array_equal(depthwise_kernel(conv.weight.detach(), None).reshape(kernel.shape).numpy(), kernel)


# ---- live Keras ------------------------------------------------------------------------------
FLAVOURS = ("tf_keras", "keras3")
RECIPES = ("mobile", "seq1d", "vol3d", "resize2d", "first", "first1d", "first3d", "transposed", "transposed1d",
           "transposed3d", "mobilenet", "mobilenet_v2")
CONV_JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "conv_jobs.py"
TOLERANCE = 1e-5


def _run(work: Path, tasks: dict[str, list[dict[str, Any]]], stage: str) -> dict[str, dict[str, str]]:
    from tests.keras_fixtures import oracle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oracle, "JOBS", CONV_JOBS)
        return oracle.run_jobs(work, tasks, stage)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """Keras builds every recipe (random biases and BN statistics) and saves .h5 and .keras."""
    work = tmp_path_factory.mktemp("keras_conv")
    tasks = {flavour: [{"kind": "build", "name": f"{flavour}_{recipe}", "recipe": recipe, "formats": ["h5", "keras"],
                        "train": False} for recipe in RECIPES] for flavour in FLAVOURS}
    return work, _run(work, tasks, "build")


def _loaded(built: Any, flavour: str, recipe: str, suffix: str) -> tuple[Any, dict[str, np.ndarray]]:
    from tests.keras_fixtures.oracle import require_ok

    work, results = built
    require_ok(results, flavour, f"{flavour}_{recipe}")
    return bk.load_model(work / f"{flavour}_{recipe}.{suffix}"), _npz(work / f"{flavour}_{recipe}_ref.npz")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_loaded_model_outputs_equal_keras(built: Any, flavour: str, recipe: str, suffix: str) -> None:
    model, ref = _loaded(built, flavour, recipe, suffix)
    assert not model.training
    with torch.no_grad():
        y = model(torch.from_numpy(ref["x"])).numpy()
    assert _relative(y, ref["y"]) <= TOLERANCE


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bn_after_depthwise_and_separable_convs_folds(built: Any, flavour: str) -> None:
    model, ref = _loaded(built, flavour, "mobile", "keras")
    bns = ("stem_bn", "dw1_bn", "dw3_bn", "sep1_bn", "sep3_bn")
    assert all(float((model.layers[name].running_var - 1).abs().max()) > 0.1 for name in bns)  # BN matters
    folded, report = bnkit.fold_batch_norm(model)
    into = {f.bn.split(".")[-1]: f.into for f in report.folded}
    assert into == {"stem_bn": "layers.stem", "dw1_bn": "layers.dw1", "dw3_bn": "layers.dw3",
                    "sep1_bn": "layers.sep1.pointwise", "sep3_bn": "layers.sep3.pointwise"}
    assert not report.not_folded
    assert not any(isinstance(m, bnkit.BatchNormalization) for m in folded.modules())
    with torch.no_grad():
        y = folded(torch.from_numpy(ref["x"])).numpy()
    assert _relative(y, ref["y"]) <= TOLERANCE


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("recipe, count", [("mobilenet", 27), ("mobilenet_v2", 52)])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_bn_of_keras_mobilenets_folds(built: Any, flavour: str, recipe: str, count: int) -> None:
    """keras.applications.MobileNet / MobileNetV2 (no top): each BN follows a conv or a depthwise conv."""
    model, ref = _loaded(built, flavour, recipe, "h5")
    folded, report = bnkit.fold_batch_norm(model)
    assert len(report.folded) == count and not report.not_folded
    depthwise = [f for f in report.folded if model.get_submodule(f.into).groups > 1]
    assert len(depthwise) == {"mobilenet": 13, "mobilenet_v2": 17}[recipe]
    with torch.no_grad():
        y = folded(torch.from_numpy(ref["x"])).numpy()
    assert _relative(y, ref["y"]) <= TOLERANCE


SAVED = tuple(recipe for recipe in RECIPES if not recipe.startswith("mobilenet"))  # their layers are in "mobile"


@pytest.fixture(scope="module")
def saved(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit saves every loaded recipe as .keras and .h5; Keras loads them and predicts."""
    work, _ = built
    tasks: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in FLAVOURS}
    for flavour in FLAVOURS:
        for recipe in SAVED:
            model, _ = _loaded(built, flavour, recipe, "h5")
            for suffix in ("keras", "h5"):
                name = f"saved_{flavour}_{recipe}_{suffix}"
                bk.save_model(model, work / f"{name}.{suffix}")
                readers = FLAVOURS if suffix == "keras" else (flavour,)
                tasks.update({reader: tasks[reader] + [{"kind": "predict", "name": f"{name}_{reader}",
                                                        "file": str(work / f"{name}.{suffix}"),
                                                        "x": str(work / f"{flavour}_{recipe}_ref.npz")}]
                              for reader in readers})
    return work, _run(work, tasks, "saved")


ROUND_TRIPS = [(flavour, recipe, suffix, reader) for flavour in FLAVOURS for recipe in SAVED
               for suffix in ("keras", "h5") for reader in (FLAVOURS if suffix == "keras" else (flavour,))]


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("flavour, recipe, suffix, reader", ROUND_TRIPS)
def test_saved_files_give_keras_outputs_in_keras(saved: Any, flavour: str, recipe: str, suffix: str,
                                                 reader: str) -> None:
    from tests.keras_fixtures.oracle import require_ok

    work, results = saved
    name = f"saved_{flavour}_{recipe}_{suffix}_{reader}"
    require_ok(results, reader, name)
    y = _npz(work / f"{name}_pred.npz")["y"]
    assert _relative(y, _npz(work / f"{flavour}_{recipe}_ref.npz")["y"]) <= TOLERANCE


# ---- configs: validation and initialisation ---------------------------------------------------
def _one_layer(class_name: str, config: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "x", "config": {"batch_input_shape": [None, *input_shape], "name": "x"},
         "inbound_nodes": []},
        {"class_name": class_name, "name": "l", "config": {"name": "l", **config},
         "inbound_nodes": [[["x", 0, 0, {}]]]},
    ], "input_layers": [["x", 0, 0]], "output_layers": [["l", 0, 0]]}}


@pytest.mark.parametrize("class_name, config, shape, error, shown", [
    ("UpSampling2D", {"size": 2, "interpolation": "bicubic"}, (4, 4, 2), bk.UnsupportedLayerError, "bicubic"),
    ("UpSampling1D", {"size": 0}, (4, 2), bk.KerasFormatError, "size"),
    ("Conv1D", {"filters": 2, "kernel_size": 3, "padding": "causal", "data_format": "channels_first"}, (2, 8),
     bk.KerasFormatError, "channels_first"),
    ("Conv1D", {"filters": 2, "kernel_size": 3, "padding": "full"}, (8, 2), bk.UnsupportedLayerError, "full"),
    ("Conv3D", {"filters": 2, "kernel_size": 3}, (8, 8, 2), bk.KerasFormatError, "rank 5"),
    ("DepthwiseConv2D", {"kernel_size": "3x3"}, (8, 8, 2), bk.KerasFormatError, "3x3"),
    ("DepthwiseConv2D", {"kernel_size": 9}, (8, 8, 2), bk.KerasFormatError, "larger than the input"),
    ("SeparableConv2D", {"filters": 2, "kernel_size": 3, "depth_multiplier": -1}, (8, 8, 2), bk.KerasFormatError,
     "-1"),
    ("Cropping2D", {"cropping": [[2, 2], [0, 0]]}, (4, 4, 2), bk.KerasFormatError, "whole input"),
    ("Cropping3D", {"cropping": [[1, 1], [1]]}, (4, 4, 4, 2), bk.KerasFormatError, "[[1, 1], [1]]"),
    ("ZeroPadding1D", {"padding": [1, 2, 3]}, (4, 2), bk.KerasFormatError, "[1, 2, 3]"),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 2}, (4, 4, 2),
     bk.KerasFormatError, "output_padding"),
    ("MaxPooling3D", {"pool_size": [2, 2]}, (4, 4, 4, 2), bk.KerasFormatError, "[2, 2]"),
])
def test_invalid_configs_are_refused_clearly(class_name: str, config: dict[str, Any], shape: tuple[int, ...],
                                             error: type[Exception], shown: str) -> None:
    with pytest.raises(error) as caught:
        bk.build_from_config(_one_layer(class_name, config, shape))
    assert shown in str(caught.value) and "'l'" in str(caught.value)


def test_depthwise_initialiser_sees_keras_kernel_shape() -> None:
    """fan_out of a (3, 3, 4, 2) depthwise kernel is 3*3*2 = 18: VarianceScaling(fan_out, uniform)
    draws from +-sqrt(3/18); torch's (8, 1, 3, 3) shape would give fan_out 9 and +-sqrt(3/9)."""
    init = {"class_name": "VarianceScaling", "config": {"scale": 1.0, "mode": "fan_out", "distribution": "uniform",
                                                         "seed": 3}}
    model = bk.build_from_config(_one_layer("DepthwiseConv2D", {"kernel_size": 3, "depth_multiplier": 2,
                                                                "depthwise_initializer": init}, (6, 6, 4)))
    weight = model.layers["l"].weight.detach().abs()
    assert weight.shape == (8, 1, 3, 3)
    assert math.sqrt(3 / 18) * 0.8 < float(weight.max()) <= math.sqrt(3 / 18)


@pytest.mark.parametrize("class_name, config", [
    ("Conv1D", {"filters": 3, "kernel_size": 4, "padding": "causal", "dilation_rate": 2}),
    ("Conv1D", {"filters": 3, "kernel_size": 4, "strides": 2, "padding": "same"}),
    ("SeparableConv1D", {"filters": 3, "kernel_size": 3, "strides": 3, "padding": "same", "depth_multiplier": 2}),
    ("DepthwiseConv1D", {"kernel_size": 2, "strides": 2, "padding": "same"}),
    ("MaxPooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}),
    ("AveragePooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}),
    ("Conv1DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"}),
])
def test_unknown_lengths_compute_what_known_lengths_do(class_name: str, config: dict[str, Any]) -> None:
    """Pads of a length unknown when planning are computed when run; equal to the planned ones."""
    known = bk.build_from_config(_one_layer(class_name, config, (9, 2))).eval()
    unknown = bk.build_from_config(_one_layer(class_name, config, (None, 2))).eval()
    unknown.load_state_dict(known.state_dict())
    x = torch.randn(2, 9, 2)
    with torch.no_grad():
        torch.testing.assert_close(unknown(x), known(x), rtol=0, atol=0)


def test_output_shapes_of_3d_layers() -> None:
    transposed = bk.build_from_config(_one_layer("Conv3DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2,
                                                                     "padding": "same"}, (3, 4, 5, 1)))
    assert transposed(torch.randn(1, 3, 4, 5, 1)).shape == (1, 6, 8, 10, 2)
    ups = bk.build_from_config(_one_layer("UpSampling3D", {"size": [1, 2, 3]}, (2, 3, 4, 5)))
    assert ups(torch.randn(1, 2, 3, 4, 5)).shape == (1, 2, 6, 12, 5)


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_plain_torch_conv1d_and_conv3d_take_keras_weights_by_name(built: Any, flavour: str) -> None:
    from collections import OrderedDict

    work, _ = built
    for recipe, name, module in (("seq1d", "causal", torch.nn.Conv1d(4, 6, 3, dilation=2)),
                                 ("vol3d", "c1", torch.nn.Conv3d(2, 4, 3, stride=(1, 2, 2)))):
        model = torch.nn.Sequential(OrderedDict([(name, module)]))
        report = bk.load_weights(model, work / f"{flavour}_{recipe}.h5", strict=False)
        assert report.loaded == [name]
        ref = _npz(work / f"{flavour}_{recipe}_ref.npz")
        np.testing.assert_array_equal(module.weight.detach().permute(*range(2, module.weight.dim()), 1, 0).numpy(),
                                      ref[f"w/{name}/kernel"])
        np.testing.assert_array_equal(module.bias.detach().numpy(), ref[f"w/{name}/bias"])
