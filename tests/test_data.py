"""bnkit.data: every loader on data the tests make, the digits split, normalisation, limit, errors."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bnkit.data import Dataset, load_dataset, stratified_split, stratified_subset
from bnkit.data._cifar import read_cifar10

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the CIFAR-10 files: str as BINSTRING, numpy.core names."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        head = pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(data))
        self.write(head + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _dump(path: Path, obj: Any, writer: str = "py3") -> None:
    with path.open("wb") as fh:
        (_Py2Pickler if writer == "py2" else pickle.Pickler)(fh, protocol=2).dump(obj)


def _cifar_batch(rng: np.random.Generator, n: int, label: str) -> dict[bytes, Any]:
    return {b"batch_label": label, b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def make_cifar(root: Path, writer: str = "py3", n: int = 20) -> Path:
    """A CIFAR-10 python-version directory in the original format, ``n`` images per batch."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    for i in range(1, 6):
        _dump(root / f"data_batch_{i}", _cifar_batch(rng, n, f"training batch {i} of 5"), writer)
    _dump(root / "test_batch", _cifar_batch(rng, n, "testing batch 1 of 1"), writer)
    meta = {b"num_cases_per_batch": n, b"label_names": [s.encode() for s in CIFAR_NAMES], b"num_vis": 3072}
    _dump(root / "batches.meta", meta, writer)
    return root


def make_folder(root: Path) -> Path:
    """root/{cat,dog}/ with solid red cats and blue dogs of mixed sizes, modes and formats."""
    formats = [("png", "RGB"), ("png", "L"), ("jpg", "RGB"), ("bmp", "RGB"), ("gif", "RGB"), ("png", "RGBA")]
    for name, colour in (("cat", (250, 10, 10)), ("dog", (10, 10, 250))):
        (root / name).mkdir(parents=True)
        for i, (suffix, mode) in enumerate(formats):
            Image.new("RGB", (12 + i, 10 + 2 * i), colour).convert(mode).save(root / name / f"{i:02d}.{suffix}")
    (root / ".hidden").mkdir()
    return root


def normalised(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """What load_dataset must return for raw NCHW arrays: (x - train mean) / train std per channel."""
    mean = train.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    std = train.astype(np.float64).std(axis=(0, 2, 3), keepdims=True)
    return [(a - mean) / std for a in (train, *others)]


def save_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def test_digits_shapes_classes_and_record() -> None:
    data = load_dataset("digits")
    assert isinstance(data, Dataset) and data.name == "digits"
    assert data.x_train.shape == (1438, 1, 32, 32) and data.x_val.shape == (359, 1, 32, 32)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.classes == tuple("0123456789") and data.num_classes == 10 and data.input_shape == (1, 32, 32)
    assert repr(data) == "Dataset(name='digits', train=1438, val=359, input_shape=(1, 32, 32), num_classes=10)"


def test_digits_split_is_deterministic_stratified_and_seeded() -> None:
    a, b, c = load_dataset("digits"), load_dataset("digits"), load_dataset("digits", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    counts = torch.bincount(a.y_val, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # every class, in proportion (~20% of ~180)
    assert len(load_dataset("digits", val_fraction=0.5).y_val) == 899  # round half up


def test_digits_options_size_channels_and_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset("digits")
    import sklearn.datasets

    def no_second_read() -> None:
        raise AssertionError("the digits were read from disk again")

    monkeypatch.setattr(sklearn.datasets, "load_digits", no_second_read)  # later calls use the cache
    assert load_dataset("digits", image_size=None).input_shape == (1, 8, 8)
    rgb = load_dataset("digits", channels=3, image_size=40)
    assert rgb.input_shape == (3, 40, 40)
    assert torch.equal(rgb.x_train[:, 0], rgb.x_train[:, 2]) and torch.equal(rgb.x_val[:, 1], rgb.x_val[:, 0])


def test_digits_resize_is_bilinear_from_the_sklearn_images() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, val = stratified_split(bunch.target, 0.2, 0)
    raw = torch.nn.functional.interpolate(torch.tensor(bunch.images[:, None], dtype=torch.float32), size=(32, 32),
                                          mode="bilinear", align_corners=False).numpy()
    expected = normalised(raw[train], raw[val])
    data = load_dataset("digits")
    np.testing.assert_allclose(data.x_train.numpy(), expected[0], atol=1e-4)
    np.testing.assert_allclose(data.x_val.numpy(), expected[1], atol=1e-4)
    assert np.array_equal(data.y_val.numpy(), bunch.target[val])


def test_normalisation_uses_training_statistics_per_channel(tmp_path: Path) -> None:
    data = load_dataset(str(make_cifar(tmp_path / "c")))
    mean, std = data.x_train.mean(dim=(0, 2, 3)), data.x_train.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5) and torch.allclose(std, torch.ones(3), atol=1e-5)
    assert not torch.allclose(data.x_val.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_stratified_split_and_subset_properties() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 3, 1])
    train, val = stratified_split(labels, 0.25, 7)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert len(val) == 9 and np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    assert set(labels[val]) == {0, 1, 2} and set(labels[train]) == {0, 1, 2, 3}
    assert np.array_equal(stratified_split(labels, 0.25, 7)[1], val)
    subset = stratified_subset(labels, 17, 0)
    assert len(subset) == 17 and np.bincount(labels[subset]).tolist()[:2] == [5, 10]
    assert np.array_equal(stratified_subset(labels, 100, 0), np.arange(len(labels)))
    with pytest.raises(ValueError, match="at least one class with two or more examples"):
        stratified_split(np.arange(3), 0.5, 0)


def test_limit_is_a_deterministic_stratified_subset_of_training() -> None:
    full, a, b = load_dataset("digits"), load_dataset("digits", limit=50), load_dataset("digits", limit=50)
    assert len(a.y_train) == 50 and torch.bincount(a.y_train).tolist() == [5] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, full.y_val)
    assert len(load_dataset("digits", limit=10**6).y_train) == 1438
    assert torch.allclose(a.x_train.mean(), torch.zeros(()), atol=1e-5)  # stats of the subset actually used


@pytest.mark.parametrize("writer", ["py3", "py2"])
def test_cifar10_directory_in_the_original_format(tmp_path: Path, writer: str) -> None:
    root = make_cifar(tmp_path / "cifar-10-batches-py", writer)
    if writer == "py2":
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in (root / "data_batch_1").read_bytes()
    x_train, y_train, x_test, y_test, classes = read_cifar10(root)
    batch = pickle.loads((root / "data_batch_2").read_bytes(), encoding="bytes")
    assert x_train.shape == (100, 3, 32, 32) and x_train.dtype == np.uint8 and classes == tuple(CIFAR_NAMES)
    assert np.array_equal(x_train[20, 1, 0, :], batch[b"data"][0, 1024:1056])  # green plane, first row
    assert y_train[20:40].tolist() == batch[b"labels"]
    data = load_dataset(str(root), val_fraction=0.5)
    assert data.name == "cifar10" and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.y_train) == 100 and len(data.y_val) == 20 and torch.equal(data.y_val, torch.tensor(y_test))
    train, val = normalised(x_train.astype(np.float32), x_test.astype(np.float32))
    np.testing.assert_allclose(data.x_train.numpy(), train, atol=1e-4)
    np.testing.assert_allclose(data.x_val.numpy(), val, atol=1e-4)
    small = load_dataset(str(root), image_size=40, channels=1, limit=30)
    assert small.input_shape == (1, 40, 40) and len(small.y_train) == 30


class _System:
    """Pickles as a call to os.system, as a malicious file would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (self.command,)


@pytest.mark.parametrize("payload", ["reduce", "nested", "protocol0", "eval", "codecs"])
def test_forbidden_globals_are_refused_without_running(tmp_path: Path, payload: str) -> None:
    root = make_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    target = root / "data_batch_3"
    if payload == "reduce":
        _dump(target, _System(command))
    elif payload == "nested":
        batch = pickle.loads(target.read_bytes(), encoding="bytes")
        batch[b"labels"][5] = _System(command)
        _dump(target, batch)
    elif payload == "protocol0":
        target.write_bytes(b"cos\nsystem\n(S'" + command.encode() + b"'\ntR.")
    elif payload == "eval":
        target.write_bytes(b"c__builtin__\neval\n(S'__import__(\"os\").system(\"" + command.encode() + b"\")'\ntR.")
    else:
        target.write_bytes(b"c_codecs\nencode\n(Vx\nVrot13\ntR.")
    with pytest.raises(ValueError, match="data_batch_3") as info:
        load_dataset(str(root))
    assert ("refused" in str(info.value)) and not marker.exists()


@pytest.mark.parametrize("name, edit, fragment", [
    ("data_batch_1", lambda b: {**b, b"data": b[b"data"].astype(np.float32)}, "uint8 array of shape (n, 3072)"),
    ("data_batch_2", lambda b: {**b, b"data": b[b"data"][:, :3000]}, "found dtype=uint8, shape=(20, 3000)"),
    ("data_batch_4", lambda b: {**b, b"labels": b[b"labels"][:-1]}, "one label per image (20); found 19"),
    ("data_batch_5", lambda b: {**b, b"labels": [10] * 20}, "labels in [0, 10)"),
    ("test_batch", lambda b: {b"data": b[b"data"]}, "missing ['labels']"),
    ("test_batch", lambda b: {**b, b"labels": ["a"] * 20}, "b'labels' to be a list of ints"),
    ("test_batch", lambda b: [b[b"data"]], "expected a pickled dict; found list"),
    ("batches.meta", lambda b: {b"label_names": []}, "non-empty list of strings"),
    ("batches.meta", lambda b: {b"names": b[b"label_names"]}, "missing ['label_names']"),
])
def test_cifar10_structure_errors_name_the_file(tmp_path: Path, name: str, edit: Callable, fragment: str) -> None:
    root = make_cifar(tmp_path / "c")
    _dump(root / name, edit(pickle.loads((root / name).read_bytes(), encoding="bytes")))
    with pytest.raises(ValueError, match=name) as info:
        load_dataset(str(root))
    assert fragment in str(info.value)


def test_cifar10_missing_and_corrupt_files(tmp_path: Path) -> None:
    root = make_cifar(tmp_path / "c")
    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": 1}, protocol=2)[:-5])
    with pytest.raises(ValueError, match="data_batch_2: not a readable CIFAR-10 pickle"):
        load_dataset(str(root))
    (root / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch"):
        load_dataset(str(root))


def test_image_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    data = load_dataset(str(root), val_fraction=0.5)
    assert data.name == "pets" and data.classes == ("cat", "dog") and data.input_shape == (3, 32, 32)
    assert torch.bincount(data.y_val).tolist() == [3, 3] and torch.bincount(data.y_train).tolist() == [3, 3]
    cats, x = data.y_train == 0, data.x_train
    assert x[cats, 0].mean() > x[~cats, 0].mean() and x[cats, 2].mean() < x[~cats, 2].mean()  # red cats, blue dogs
    assert load_dataset(str(root), channels=1, image_size=16).input_shape == (1, 16, 16)
    assert torch.equal(load_dataset(str(root), val_fraction=0.5).x_val, data.x_val)


def test_image_folder_native_size(tmp_path: Path) -> None:
    root = tmp_path / "same"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (9, 7), (40 * i, 0, 0)).save(root / name / f"{i}.PNG")
    assert load_dataset(str(root), image_size=None).input_shape == (3, 7, 9)
    with pytest.raises(ValueError, match=r"all images must have one size; found sizes \[\(10, 12\), \(12, 13\)"):
        load_dataset(str(make_folder(tmp_path / "mixed")), image_size=None)


def test_image_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    (empty / "b" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"image folder without images: expected .*found class folders \['a', 'b'\]"):
        load_dataset(str(empty))
    partial = make_folder(tmp_path / "partial")
    (partial / "eel").mkdir()
    with pytest.raises(ValueError, match=r"found none in \['eel'\]"):
        load_dataset(str(partial))
    broken = make_folder(tmp_path / "broken")
    (broken / "cat" / "zz.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"zz\.png: expected a readable image"):
        load_dataset(str(broken))
    make_cifar(tmp_path / "parent" / "cifar-10-batches-py")
    with pytest.raises(ValueError, match=r"CIFAR-10 files are in .*cifar-10-batches-py: pass that directory"):
        load_dataset(str(tmp_path / "parent"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(ValueError, match=r"neither a CIFAR-10 python directory nor an image.*one folder per class"):
        load_dataset(str(flat))


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_layouts_agree(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (30, channels, 8, 10)).astype(np.uint8)
    y = np.arange(30) % 3
    train, val = stratified_split(y, 0.2, 0)
    expected = normalised(nchw[train].astype(np.float32), nchw[val].astype(np.float32))
    layouts = {"nchw": nchw, "nhwc": nchw.transpose(0, 2, 3, 1)}
    if channels == 1:
        layouts["nhw"] = nchw[:, 0]
    for name, x in layouts.items():
        data = load_dataset(str(save_npz(tmp_path / f"{name}.npz", x=x, y=y)), image_size=None)
        assert data.name == name and data.input_shape == (channels, 8, 10) and data.classes == ("0", "1", "2")
        np.testing.assert_allclose(data.x_train.numpy(), expected[0], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(data.x_val.numpy(), expected[1], atol=1e-4, err_msg=name)
    resized = load_dataset(str(tmp_path / "nhwc.npz"), image_size=32)
    assert resized.input_shape == (channels, 32, 32)


def test_npz_explicit_split_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train, x_val = rng.normal(size=(12, 3, 4, 4)), rng.normal(size=(5, 3, 4, 4))
    y_train, y_val = np.arange(12) % 4, np.array([0, 1, 2, 3, 3], dtype=np.uint8)
    path = save_npz(tmp_path / "split.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
                    classes=np.array(["w", "x", "y", "z"]))
    data = load_dataset(str(path), image_size=None, val_fraction=0.9)
    assert data.classes == ("w", "x", "y", "z") and len(data.y_train) == 12 and data.y_val.tolist() == y_val.tolist()
    expected = normalised(x_train, x_val)
    np.testing.assert_allclose(data.x_val.numpy(), expected[1], atol=1e-4)
    assert load_dataset(str(path), channels=1).input_shape == (1, 32, 32)


def _npz_errors() -> list[tuple[str, dict[str, Any], str]]:
    x, y = np.zeros((6, 8, 8), np.uint8), np.arange(6) % 2
    return [
        ("missing", {"images": x, "y": y}, "expected arrays 'x' and 'y', or 'x_train'"),
        ("lengths", {"x": x, "y": y[:5]}, "one label per image (6); found 5"),
        ("float_labels", {"x": x, "y": y.astype(np.float32)}, "1-D array of integer labels; found dtype float32"),
        ("label_rank", {"x": x, "y": y[:, None]}, "found dtype int64, shape (6, 1)"),
        ("negative", {"x": x, "y": y - 1}, "non-negative labels in 'y'; found minimum -1"),
        ("rank2", {"x": x[:, 0], "y": y}, "found rank 2, shape (6, 8)"),
        ("rank5", {"x": x[:, None, None], "y": y}, "found rank 5"),
        ("channel_axis", {"x": np.zeros((6, 5, 5, 5)), "y": y}, "cannot tell the channel axis of 'x'"),
        ("strings", {"x": np.full((6, 2, 2), "a"), "y": y}, "real numbers (integer or float); found dtype <U1"),
        ("nan", {"x": np.full((6, 2, 2), np.nan), "y": y}, "finite pixel values"),
        ("empty", {"x": x[:0], "y": y[:0]}, "at least one image"),
        ("classes", {"x": x, "y": y, "classes": np.array(["only"])}, "distinct names for labels 0..1; found 1"),
        ("split_channels", {"x_train": np.zeros((4, 3, 4, 4)), "y_train": np.arange(4),
                            "x_val": np.zeros((2, 1, 4, 4)), "y_val": np.arange(2)}, "same number of channels"),
        ("objects", {"x": np.array([None] * 6, dtype=object), "y": y}, "plain (non-object) numpy array"),
    ]


@pytest.mark.parametrize("name, arrays, fragment", _npz_errors(), ids=[case[0] for case in _npz_errors()])
def test_npz_errors(tmp_path: Path, name: str, arrays: dict[str, Any], fragment: str) -> None:
    path = save_npz(tmp_path / f"{name}.npz", **arrays)
    with pytest.raises(ValueError, match=f"{name}.npz") as info:
        load_dataset(str(path))
    assert fragment in str(info.value)


def test_npz_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ValueError, match="garbage.npz: expected a numpy .npz archive; found an unreadable file"):
        load_dataset(str(garbage))
    single = tmp_path / "single.npz"
    with single.open("wb") as fh:
        np.save(fh, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"found a single \.npy array of shape \(2, 2\)"):
        load_dataset(str(single))


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: expected 'digits', a CIFAR-10"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset("nope.npz")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar100': expected 'digits'"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="Invalid dataset `source`"):
        load_dataset("  ")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"expected an \.npz archive \(or a directory\); found a \.txt file"):
        load_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"neither a CIFAR-10 python directory nor an image folder.*\['notes.txt'\]"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("option, value", [
    ("image_size", 0), ("image_size", 32.0), ("val_fraction", 1.0), ("val_fraction", 0), ("val_fraction", True),
    ("seed", -1), ("seed", 1.5), ("limit", 0), ("limit", True), ("channels", 2), ("channels", "3"),
])
def test_invalid_options(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"Invalid `{option}`: expected .*; received: {option}="):
        load_dataset("digits", **{option: value})


def test_dataset_record_validates() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="`x_train`: expected a float32"):
        Dataset("d", x.double(), y, x, y, ("a",))
    with pytest.raises(ValueError, match="`y_val`: expected an int64 vector of 4 labels"):
        Dataset("d", x, y, x, y[:3], ("a",))
    with pytest.raises(ValueError, match=r"labels in \[0, 1\); received: min=0, max=1"):
        Dataset("d", x, y, x, y + torch.tensor([0, 0, 0, 1]), ("a",))
    with pytest.raises(ValueError, match="same \\(C, H, W\\)"):
        Dataset("d", x, y, torch.zeros(4, 1, 3, 3), y, ("a",))
