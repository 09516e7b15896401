"""bnkit.keras without TensorFlow: committed Keras files, crafted layouts, errors, round trips."""
from __future__ import annotations

import json
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import bnkit
import bnkit.keras as bk
from bnkit.keras._layers import same_padding
from bnkit.models import vgg16

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"


def _ref(flavour: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"small_{flavour}_ref.npz") as data:
        return {key: data[key] for key in data.files}


def _run(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).detach().numpy()


@pytest.mark.parametrize("name", ["small_tf_keras.h5", "small_tf_keras.keras", "small_keras3.h5", "small_keras3.keras"])
def test_committed_keras_files_give_keras_outputs(name: str) -> None:
    ref = _ref(name.split(".")[0].removeprefix("small_"))
    model = bk.load_model(FIXTURES / name)
    assert isinstance(model.layers["bn"], bnkit.BatchNormalization) and model.layers["bn"].fused
    assert bool(model.keras_notes) == ("keras3" in name)  # Keras 3's biased moving-variance rule differs
    np.testing.assert_allclose(_run(model, ref["x"]), ref["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, by", [("small_tf_keras.w.h5", "name"), ("small_keras3.weights.h5", "name"),
                                      ("small_tf_keras.keras", "Keras weight path")])
def test_weights_only_files(name: str, by: str) -> None:
    ref = _ref(name.split(".")[0].removeprefix("small_"))
    model = bk.build_from_config(bk.read_model_config(FIXTURES / "small_tf_keras.h5")).eval()
    report = bk.load_weights(model, FIXTURES / name)
    assert report.ok and report.matched_by == by and report.loaded == ["conv", "bn", "out"]
    np.testing.assert_allclose(_run(model, ref["x"]), ref["y"], rtol=1e-5, atol=1e-6)


def test_load_model_refuses_weights_only_files_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(bk.KerasFormatError, match="weights-only file.*load_weights"):
        bk.load_model(FIXTURES / "small_tf_keras.w.h5")
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        bk.load_model(tmp_path / "nothing.h5")


def _small_torch() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), bn=bnkit.BatchNormalization(axis=1, num_features=4),
        flat=nn.Flatten(), out=nn.Linear(4 * 2 * 2, 3)))


def _keras1_file(path: Path, rng: np.random.Generator, chunk: bool = True) -> dict[str, np.ndarray]:
    """A Keras-1-era weights file: byte-string attributes, `<layer>_W_1:0` names, chunked names."""
    values = {"conv_W": rng.normal(size=(3, 3, 3, 4)), "conv_b": rng.normal(size=4),
              "bn_gamma": rng.uniform(0.5, 1.5, 4), "bn_beta": rng.normal(size=4),
              "bn_running_mean": rng.normal(size=4), "bn_running_std": rng.uniform(0.5, 2, 4),
              "out_W": rng.normal(size=(16, 3)), "out_b": rng.normal(size=3)}
    with h5py.File(path, "w") as h5:
        names = [b"input_1", b"conv", b"bn", b"flat", b"out"]
        if chunk:
            h5.attrs["layer_names0"], h5.attrs["layer_names1"] = np.array(names[:2]), np.array(names[2:])
        else:
            h5.attrs["layer_names"] = np.array(names)
        for layer in names:
            group = h5.create_group(layer.decode())
            weights = [k for k in values if k.startswith(layer.decode() + "_")]
            stored = [f"{k}_1:0".encode() for k in weights]
            if chunk and layer == b"bn":
                group.attrs["weight_names0"], group.attrs["weight_names1"] = np.array(stored[:2]), np.array(stored[2:])
            else:
                group.attrs["weight_names"] = np.array(stored) if stored else np.array([], dtype="S1")
            for key, name in zip(weights, stored):
                group.create_dataset(name.decode(), data=values[key].astype("float32"))
    return values


@pytest.mark.parametrize("chunk", [True, False])
def test_keras1_layout_with_bytes_and_chunked_attributes(tmp_path: Path, chunk: bool) -> None:
    values = _keras1_file(tmp_path / "w.h5", np.random.default_rng(0), chunk)
    model = _small_torch()
    assert bk.load_weights(model, tmp_path / "w.h5").ok
    conv = values["conv_W"].astype("f4").transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(model.conv.weight.detach().numpy(), conv)
    np.testing.assert_array_equal(model.bn.running_var.numpy(), values["bn_running_std"].astype("f4"))
    # out follows a plain nn.Flatten of 4 channels x 2x2: rows (h, w, c) -> columns (c, h, w)
    expected = values["out_W"].astype("f4").reshape(4, 4, 3).transpose(2, 1, 0).reshape(3, 16)
    np.testing.assert_array_equal(model.out.weight.detach().numpy(), expected)


def test_mismatches_are_listed_in_one_error_and_nothing_is_copied(tmp_path: Path) -> None:
    _keras1_file(tmp_path / "w.h5", np.random.default_rng(1))
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 5, 3), bn=nn.BatchNorm2d(5, affine=False),
                                      head=nn.Linear(16, 3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(bk.WeightMismatchError) as caught:
        bk.load_weights(model, tmp_path / "w.h5")
    message = str(caught.value)
    for part in ("conv/kernel", "(3, 3, 3, 4)", "bn: the file has weights", "head (Dense)", "out ("):
        assert part in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = bk.load_weights(model, tmp_path / "w.h5", strict=False)
    assert report.loaded == [] and len(report.mismatched) == 3 and report.missing and report.unexpected
    assert "mismatched" in str(report)


def test_strict_false_loads_what_matches(tmp_path: Path) -> None:
    values = _keras1_file(tmp_path / "w.h5", np.random.default_rng(2))
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), extra=nn.Linear(2, 2)))
    report = bk.load_weights(model, tmp_path / "w.h5", strict=False)
    assert report.loaded == ["conv"] and not report.ok
    assert any("extra" in m for m in report.missing) and any(u.startswith("bn") for u in report.unexpected)
    np.testing.assert_array_equal(model.conv.bias.detach().numpy(), values["conv_b"].astype("f4"))


def test_integer_weights_and_absurd_shapes_are_format_errors(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "int.h5", "w") as h5:
        h5.attrs["layer_names"] = np.array([b"out"])
        h5.create_group("out").attrs["weight_names"] = np.array([b"out/kernel:0", b"out/bias:0"])
        h5["out"].create_dataset("out/kernel:0", data=np.ones((2, 2), dtype="int32"))
        h5["out"].create_dataset("out/bias:0", data=np.ones(2, dtype="float32"))
    with pytest.raises(bk.KerasFormatError, match="float16/32/64.*int32"):
        bk.load_weights(nn.Sequential(OrderedDict(out=nn.Linear(2, 2))), tmp_path / "int.h5")
    with h5py.File(tmp_path / "huge.h5", "w") as h5:
        h5.attrs["layer_names"] = np.array([b"out"])
        h5.create_group("out").attrs["weight_names"] = np.array([b"out/kernel:0"])
        h5["out"].create_dataset("out/kernel:0", shape=(2**20, 2**14), dtype="float32")  # never written
    with pytest.raises(bk.KerasFormatError, match="truncated file or absurd shape"):
        bk.load_weights(nn.Sequential(OrderedDict(out=nn.Linear(2**20, 2**14, device="meta"))), tmp_path / "huge.h5")


def test_missing_weights_are_format_errors(tmp_path: Path) -> None:
    shutil.copyfile(FIXTURES / "small_tf_keras.h5", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r+") as h5:
        del h5["model_weights/bn/bn/moving_variance:0"]
    with pytest.raises(bk.KerasFormatError, match="moving_variance.*missing weights"):
        bk.load_model(tmp_path / "a.h5")
    shutil.copyfile(FIXTURES / "small_tf_keras.h5", tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "r+") as h5:
        del h5["model_weights/out"]
        h5["model_weights"].attrs["layer_names"] = np.array(["conv", "bn", "pool", "flat"], dtype=object)
    with pytest.raises(bk.KerasFormatError, match="missing weights"):
        bk.load_model(tmp_path / "b.h5")


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil", "a/../../evil"])
def test_unsafe_archive_members_are_refused(tmp_path: Path, member: str) -> None:
    target = tmp_path / "bad.keras"
    with zipfile.ZipFile(FIXTURES / "small_keras3.keras") as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr(member, b"x")
    with pytest.raises(bk.KerasFormatError, match="unsafe archive member"):
        bk.load_model(target)


def test_archive_without_weights_or_config(tmp_path: Path) -> None:
    for missing in ("model.weights.h5", "config.json"):
        target = tmp_path / f"no-{missing}.keras"
        with zipfile.ZipFile(FIXTURES / "small_keras3.keras") as source, zipfile.ZipFile(target, "w") as out:
            for info in source.infolist():
                if info.filename != missing:
                    out.writestr(info, source.read(info))
        with pytest.raises(bk.KerasFormatError, match=missing.replace(".", r"\.")):
            bk.load_model(target)


def test_archive_members_flagged_as_encrypted_are_refused(tmp_path: Path) -> None:
    data = bytearray((FIXTURES / "small_keras3.keras").read_bytes())
    with zipfile.ZipFile(FIXTURES / "small_keras3.keras") as archive:
        info = archive.getinfo("config.json")
    central = next(i for i in range(len(data) - 46) if data[i:i + 4] == b"PK\x01\x02"
                   and data[i + 46:i + 46 + len("config.json")] == b"config.json")
    for flags_at in (info.header_offset + 6, central + 8):  # local and central general-purpose flags
        data[flags_at] |= 1
    (tmp_path / "encrypted.keras").write_bytes(bytes(data))
    with pytest.raises(bk.KerasFormatError, match="config.json"):
        bk.load_model(tmp_path / "encrypted.keras")


def _trained(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape) * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_bnkit_vgg_round_trip_without_keras(tmp_path: Path, suffix: str) -> None:
    model = _trained(vgg16(input_shape=(3, 32, 32), width=0.125, classes=5, batch_norm="before_activation"),
                     (3, 32, 32))
    summary = bk.save_model(model, tmp_path / f"vgg.{suffix}", input_shape=(3, 32, 32))
    assert summary.layers == 1 + 13 * 3 + 5 + 4 and "vgg" in str(summary)  # relu and softmax fold into fc layers
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(bk.load_model(tmp_path / f"vgg.{suffix}")(x.permute(0, 2, 3, 1)), model(x),
                               rtol=1e-5, atol=1e-6)
    fresh = vgg16(input_shape=(3, 32, 32), width=0.125, classes=5, batch_norm="before_activation")
    assert bk.load_weights(fresh, tmp_path / f"vgg.{suffix}").ok
    torch.testing.assert_close(fresh.eval()(x), model(x))


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("bn_kwargs", [{}, {"renorm": True, "renorm_clipping": {"rmax": 2.0}},
                                       {"virtual_batch_size": 4, "momentum": 0.5}, {"center": False},
                                       {"axis": [2, 3]}])
def test_batch_norm_options_round_trip(tmp_path: Path, suffix: str, bn_kwargs: dict) -> None:
    def build() -> nn.Sequential:
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 4, 3), bn=bnkit.BatchNormalization(**{"axis": 1, **bn_kwargs}), relu=nn.ReLU(),
            pool=nn.MaxPool2d(2), flatten=bnkit.Flatten("channels_first"), dense=nn.Linear(16, 3),
            dense_bn=bnkit.BatchNormalization(axis=1)))

    model = _trained(build(), (3, 6, 6))
    bk.save_model(model, tmp_path / f"bn.{suffix}", input_shape=(3, 6, 6))
    fresh = build()
    fresh(torch.randn(8, 3, 6, 6))  # built in torch layout: BN weight shapes differ from Keras' (1, ..., C)
    assert bk.load_weights(fresh, tmp_path / f"bn.{suffix}").ok
    loaded = bk.load_model(tmp_path / f"bn.{suffix}")
    x = torch.randn(8, 3, 6, 6)
    torch.testing.assert_close(loaded(x.permute(0, 2, 3, 1)), model(x), rtol=1e-5, atol=1e-6)
    bn = loaded.layers["bn"]
    expected = (bool(bn_kwargs.get("renorm")), bn_kwargs.get("virtual_batch_size"), bn_kwargs.get("center", True))
    assert (bn.renorm, bn.virtual_batch_size, bn.center) == expected
    torch.testing.assert_close(fresh.eval()(x), model(x))
    loaded.train(), model.train()
    torch.testing.assert_close(loaded(x.permute(0, 2, 3, 1)), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, model.bn.running_var)


def test_torch_native_modules_round_trip(tmp_path: Path) -> None:
    model = _trained(nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6, momentum=0.2), nn.ReLU(),
        nn.ZeroPad2d((1, 0, 2, 1)), nn.AvgPool2d(2), nn.Conv2d(6, 4, 3, padding="same"), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Softmax(dim=1),
    ), (3, 15, 15))
    summary = bk.save_model(model, tmp_path / "native.keras", input_shape=(3, 15, 15))
    assert any("biased batch variance" in note for note in summary.notes)
    loaded = bk.load_model(tmp_path / "native.keras")
    assert loaded.layers["1"].momentum == pytest.approx(0.8)
    x = torch.randn(4, 3, 15, 15)
    torch.testing.assert_close(loaded(x.permute(0, 2, 3, 1)), model(x), rtol=1e-5, atol=1e-6)


def test_save_refusals(tmp_path: Path) -> None:
    with pytest.raises(bk.UnsupportedLayerError, match=r"'1' \(LSTM\)"):
        bk.save_model(nn.Sequential(nn.Flatten(), nn.LSTM(4, 4)), tmp_path / "x.keras", input_shape=(4,))
    with pytest.raises(bk.UnsupportedLayerError, match="axes whose order changes"):
        bk.save_model(nn.Sequential(bnkit.BatchNormalization(axis=[1, 2], num_features=6)), tmp_path / "x.keras",
                      input_shape=(2, 3, 4))
    with pytest.raises(bk.UnsupportedLayerError, match="forward cannot be read as data"):
        bk.save_model(nn.Linear(2, 2), tmp_path / "x.keras", input_shape=(2,))
    with pytest.raises(ValueError, match="`input_shape` is required"):
        bk.save_model(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x.keras")
    bk.save_model(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x.keras", input_shape=(2,))
    with pytest.raises(FileExistsError, match="overwrite"):
        bk.save_model(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x.keras", input_shape=(2,), overwrite=False)


def test_long_name_lists_are_chunked_and_read_back(tmp_path: Path) -> None:
    layers = OrderedDict((f"dropout_with_a_rather_long_name_number_{i:05d}", nn.Dropout(0.0)) for i in range(1800))
    layers["head"] = nn.Linear(3, 2)
    model = nn.Sequential(layers)
    bk.save_model(model, tmp_path / "long.h5", input_shape=(3,))
    with h5py.File(tmp_path / "long.h5") as h5:
        assert "layer_names" not in h5["model_weights"].attrs and "layer_names1" in h5["model_weights"].attrs
    fresh = nn.Sequential(OrderedDict(head=nn.Linear(3, 2)))
    assert bk.load_weights(fresh, tmp_path / "long.h5").ok
    torch.testing.assert_close(fresh.head.weight, model.head.weight)


def test_build_from_config_uses_keras_initializers() -> None:
    config = bk.read_model_config(FIXTURES / "small_keras3.keras")
    model = bk.build_from_config(json.dumps(config))
    assert model.training and torch.count_nonzero(model.layers["conv"].bias) == 0
    kernel = model.layers["out"].weight
    limit = (6 / sum(kernel.shape)) ** 0.5  # GlorotUniform
    assert 0.5 * limit < kernel.abs().max() <= limit
    assert model.keras_config["config"]["layers"][2]["config"]["axis"] == 3


def test_forward_checks_the_keras_layout() -> None:
    model = bk.load_model(FIXTURES / "small_tf_keras.h5")
    with pytest.raises(ValueError, match="rank 4 in Keras' layout"):
        model(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="expects 1 input"):
        model(torch.zeros(2, 8, 8, 3), torch.zeros(2, 8, 8, 3))


@pytest.mark.parametrize("size, kernel, stride, dilation, expected", [
    (16, 3, 2, 1, (0, 1)), (15, 3, 2, 1, (1, 1)), (8, 2, 1, 1, (0, 1)), (8, 3, 1, 2, (2, 2)), (5, 1, 3, 1, (0, 0)),
])
def test_tensorflow_same_padding(size: int, kernel: int, stride: int, dilation: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride, dilation) == expected


def _functional_config(trainable: bool = True) -> dict:
    def layer(cls: str, name: str, config: dict, inbound: list[str]) -> dict:
        return {"class_name": cls, "name": name, "config": {"name": name, **config},
                "inbound_nodes": [[[ref, 0, 0, {}] for ref in inbound]] if inbound else []}

    layers = [
        layer("InputLayer", "a", {"batch_input_shape": [None, 5, 5, 2]}, []),
        layer("InputLayer", "b", {"batch_input_shape": [None, 5, 5, 3]}, []),
        layer("Concatenate", "cat", {"axis": -1}, ["a", "b"]),
        layer("BatchNormalization", "bn", {"axis": [3], "momentum": 0.5}, ["cat"]),
        layer("GlobalMaxPooling2D", "pool", {"keepdims": True}, ["bn"]),
        layer("Flatten", "flat", {}, ["pool"]),
        layer("Dense", "head", {"units": 4, "activation": "softmax"}, ["flat"]),
    ]
    return {"class_name": "Functional", "config": {"name": "two_in_two_out", "trainable": trainable, "layers": layers,
                                                   "input_layers": [["a", 0, 0], ["b", 0, 0]],
                                                   "output_layers": [["head", 0, 0], ["bn", 0, 0]]}}


def test_several_inputs_and_outputs_round_trip(tmp_path: Path) -> None:
    model = bk.build_from_config(_functional_config()).eval()
    a, b = torch.randn(3, 5, 5, 2), torch.randn(3, 5, 5, 3)
    assert model.keras_input_shapes == [(None, 5, 5, 2), (None, 5, 5, 3)]
    head, features = model(a, b)
    assert head.shape == (3, 4) and features.shape == (3, 5, 5, 5)
    concatenated = torch.cat([a, b], -1).permute(0, 3, 1, 2)  # the BN runs channels-first
    torch.testing.assert_close(features, model.layers["bn"](concatenated).permute(0, 2, 3, 1))
    bk.save_model(model, tmp_path / "two.keras")
    again = bk.load_model(tmp_path / "two.keras")
    for mine, theirs in zip(again(a, b), (head, features)):
        torch.testing.assert_close(mine, theirs)


def test_a_frozen_model_freezes_its_batch_norm() -> None:
    model = bk.build_from_config(_functional_config(trainable=False)).train()
    assert not model.layers["bn"].trainable and not model.layers["head"].weight.requires_grad
    before = model.layers["bn"].running_mean.clone()
    model(torch.randn(3, 5, 5, 2), torch.randn(3, 5, 5, 3))
    torch.testing.assert_close(model.layers["bn"].running_mean, before)


def _torch_family_model(bn: type[nn.Module], bn1d: type[nn.Module], **options: object) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3), bn=bn(4, momentum=0.2, eps=1e-3, **options), relu=nn.ReLU(),  # type: ignore[call-arg]
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), dense=nn.Linear(4, 3), dense_bn=bn1d(3)))


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_bnkit_torch_family_saves_like_nn_batchnorm_and_round_trips(tmp_path: Path, suffix: str) -> None:
    ours = _trained(_torch_family_model(bnkit.BatchNorm2d, bnkit.BatchNorm1d), (3, 6, 6))
    native = _trained(_torch_family_model(nn.BatchNorm2d, nn.BatchNorm1d), (3, 6, 6))
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(ours(x), native(x))
    saved = bk.save_model(ours, tmp_path / f"ours.{suffix}", input_shape=(3, 6, 6))
    assert saved.notes == bk.save_model(native, tmp_path / f"native.{suffix}", input_shape=(3, 6, 6)).notes
    assert any("dense_bn: Keras feeds the biased batch variance" in note for note in saved.notes)
    assert bk.read_model_config(tmp_path / f"ours.{suffix}") == bk.read_model_config(tmp_path / f"native.{suffix}")
    loaded = bk.load_model(tmp_path / f"ours.{suffix}")
    assert (loaded.layers["bn"].momentum, loaded.layers["bn"].epsilon) == (pytest.approx(0.8), 1e-3)
    torch.testing.assert_close(loaded(x.permute(0, 2, 3, 1)), ours(x), rtol=1e-5, atol=1e-6)
    fresh = _torch_family_model(bnkit.BatchNorm2d, bnkit.BatchNorm1d).eval()
    assert bk.load_weights(fresh, tmp_path / f"ours.{suffix}").ok
    torch.testing.assert_close(fresh(x), ours(x))


@pytest.mark.parametrize("options", [
    {"renorm": True, "renorm_momentum": 0.05, "renorm_clipping": {"rmax": 3, "dmax": 0.5}},
    {"virtual_batch_size": 4, "gamma_regularizer": "l2", "beta_constraint": "non_neg"},
    {"synchronized": True, "bias": False},
])
def test_bnkit_torch_family_extras_are_written_from_their_spec(tmp_path: Path, options: dict) -> None:
    model = _trained(_torch_family_model(bnkit.BatchNorm2d, nn.BatchNorm1d, **options), (3, 6, 6))
    saved = bk.save_model(model, tmp_path / "extras.keras", input_shape=(3, 6, 6))
    assert any(note.startswith("bn: Keras feeds the biased batch variance") for note in saved.notes)
    config = next(layer["config"] for layer in bk.read_model_config(tmp_path / "extras.keras")["config"]["layers"]
                  if layer["name"] == "bn")
    assert (config["axis"], config["momentum"], config["epsilon"]) == (3, 0.8, 1e-3)
    assert (config["center"], config["scale"]) == ("bias" not in options, True)
    if "renorm" in options:
        assert config["renorm_clipping"] == {"rmax": 3, "dmax": 0.5}  # exactly as given
        assert (config["renorm"], config["renorm_momentum"]) == (True, 0.95)
    assert config.get("virtual_batch_size") == options.get("virtual_batch_size")
    assert config.get("synchronized", False) == options.get("synchronized", False)
    assert ("gamma_regularizer" in config, "beta_constraint" in config) == ("gamma_regularizer" in options,) * 2
    assert "beta_regularizer" not in config and "gamma_constraint" not in config  # unset ones are not written
    loaded = bk.load_model(tmp_path / "extras.keras")
    bn = loaded.layers["bn"]
    assert (bn.renorm, bn.virtual_batch_size, bn.synchronized) == (
        options.get("renorm", False), options.get("virtual_batch_size"), options.get("synchronized", False))
    carried = (bn.regularizers["gamma"] is not None, bn.constraints["beta"] is not None)
    assert carried == ("beta_constraint" in options,) * 2
    x = torch.randn(8, 3, 6, 6)
    torch.testing.assert_close(loaded(x.permute(0, 2, 3, 1)), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{"momentum": None}, {"track_running_stats": False}])
def test_bnkit_torch_family_refusals_match_nn_batchnorm(tmp_path: Path, options: dict) -> None:
    for cls in (nn.BatchNorm2d, bnkit.BatchNorm2d):
        with pytest.raises(bk.UnsupportedLayerError, match="momentum=None or track_running_stats=False"):
            bk.save_model(nn.Sequential(nn.Conv2d(3, 4, 1), cls(4, **options)), tmp_path / "x.keras",
                          input_shape=(3, 4, 4))
