"""What keeps a Keras load small: NumPy views of tensor memory, snapshots freed once read.

* ``_copy._numpy_view`` (the route of every CPU weight) must be the tensor's own memory with
  its shape and strides: compared with ``Tensor.numpy()`` and written through;
* the probe's cache gives every caller a snapshot of its own (so a load can free it), and a
  closed snapshot frees its groups by reference counting alone (they point back at the file);
* ``load_model`` leaves no snapshot structure behind and still gives Keras' outputs.
"""
from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import bnkit.keras as bk
from bnkit.keras import _copy, _probe
from bnkit.keras._h5 import open_h5
from bnkit.keras._snapshot import StoredFile, StoredGroup

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"


def _views() -> dict[str, torch.Tensor]:
    base = torch.arange(7 * 5 * 3 * 3, dtype=torch.float32)
    conv = base.view(7, 5, 3, 3)
    wide = torch.arange(60, dtype=torch.float64).view(6, 10)
    return {
        "contiguous": conv,
        "dense kernel": conv.view(35, 9).T,
        "conv kernel": conv.permute(2, 3, 1, 0),
        "depthwise kernel": base[:144].view(16, 1, 3, 3).view(8, 2, 3, 3).permute(2, 3, 0, 1),
        "slice with an offset": wide[2:5, 3:],
        "step": wide[:, ::3],
        "scalar": base[4],
        "parameter": nn.Parameter(torch.ones(3, 4)),
    }


@pytest.mark.parametrize("name", list(_views()))
def test_numpy_view_is_the_tensor_memory_with_its_strides(name: str) -> None:
    tensor = _views()[name]
    with torch.no_grad():
        view = _copy._numpy_view(tensor)
        assert view is not None
        reference = tensor.detach().numpy()
        assert view.shape == reference.shape and view.strides == reference.strides and view.dtype == reference.dtype
        np.testing.assert_array_equal(view, reference)
        values = np.random.default_rng(3).standard_normal(view.shape).astype(view.dtype)
        view[...] = values
        np.testing.assert_array_equal(tensor.detach().numpy(), values)


def test_numpy_view_refuses_overlapping_elements_and_subclasses() -> None:
    class Marked(torch.Tensor):
        pass

    assert _copy._numpy_view(torch.ones(4).expand(3, 4)) is None
    assert _copy._numpy_view(torch.ones(3, 4).as_subclass(Marked)) is None


def _small_h5(path: Path) -> dict[str, np.ndarray]:
    values = {"g/kernel": np.arange(12, dtype="<f4").reshape(3, 4), "g/bias": np.arange(4, dtype="<f4")}
    with h5py.File(path, "w") as h5:
        h5.attrs["note"] = "x" * 1000
        for name, array in values.items():
            h5[name] = array
    return values


def test_the_probe_cache_gives_each_caller_a_snapshot_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "small.h5"
    _small_h5(path)
    first = _probe.probe(path, path)
    second = _probe.probe(path, path)
    assert first == second and first is not second
    cached = [value for key, value in _probe._REPLIES.items() if key[1] == path.stat().st_ino]
    assert len(cached) == 1 and isinstance(cached[0], bytes)
    assert len(cached[0]) < len(json.dumps(first)) // 2  # compressed


@contextmanager
def _no_cycle_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_a_closed_snapshot_frees_its_groups_without_the_cycle_collector(tmp_path: Path) -> None:
    path = tmp_path / "small.h5"
    values = _small_h5(path)
    with _no_cycle_collector():
        h5 = open_h5(path, path)
        group = h5["g"]
        kernel = h5["g/kernel"]
        assert isinstance(group, StoredGroup) and len(h5.attrs["note"]) == 1000
        gone = weakref.ref(group)
        del group
        assert gone() is not None  # the file holds it until closed
        h5.close()
        assert gone() is None
        with pytest.raises(KeyError):
            h5["g"]
        read = np.empty((3, 4), dtype=np.float32)
        kernel.read_rows(read)  # a dataset taken before still reads
    np.testing.assert_array_equal(read, values["g/kernel"])


@pytest.mark.parametrize("name", ["small_tf_keras.h5", "small_keras3.h5", "small_keras3.keras"])
def test_load_model_leaves_no_snapshot_structure(name: str) -> None:
    flavour = name.split(".")[0].removeprefix("small_")
    with np.load(FIXTURES / f"small_{flavour}_ref.npz") as data:
        x, y = data["x"], data["y"]
    with _no_cycle_collector():
        model = bk.load_model(FIXTURES / name)
        # type(), not isinstance(): the latter reads __class__, deprecated on some of torch's objects
        groups = [obj for obj in gc.get_objects() if type(obj) is StoredGroup
                  or (type(obj) is StoredFile and (obj.keys() or obj.attrs))]
    assert groups == []
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), y, rtol=1e-5, atol=1e-6)
