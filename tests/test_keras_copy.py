"""Weights copied from HDF5 into torch tensors by blocks (bnkit.keras._copy), against NumPy layouts.

Each dataset is written by h5py, read through bnkit's snapshot, and copied into a tensor
through the Keras view its layer uses (a Dense kernel transposed, a conv kernel HWIO ->
OIHW, a depthwise kernel, a same-layout vector); the result must equal the NumPy
transposition of the written values.  Block sizes are made tiny so that every route runs
in several blocks: input rows within one kernel position, whole positions, leading rows,
dtype conversion by blocks.  The buffers must stay within their bound.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bnkit.keras import _copy
from bnkit.keras._h5 import open_h5

RNG = np.random.default_rng(7)
VALUES = {
    "dense": RNG.standard_normal((37, 23)).astype("<f4"),
    "conv": RNG.standard_normal((3, 3, 5, 7)).astype("<f4"),
    "conv1d": RNG.standard_normal((4, 6, 3)).astype("<f4"),
    "conv3d": RNG.standard_normal((2, 3, 2, 4, 5)).astype("<f4"),
    "depthwise": RNG.standard_normal((3, 3, 8, 2)).astype("<f4"),
    "vector64": RNG.standard_normal(301).astype("<f8"),
    "big_endian": RNG.standard_normal((11, 5)).astype(">f4"),
    "scalar": np.array(5, dtype="<i8"),
    "empty_kernel": np.zeros((3, 3, 0, 4), dtype="<f4"),
}


def _targets() -> dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """name -> (tensor, its Keras view, expected tensor values)."""
    v = VALUES
    dense = torch.empty(23, 37)
    conv = torch.empty(7, 5, 3, 3)
    conv1d = torch.empty(3, 6, 4)
    conv3d = torch.empty(5, 4, 2, 3, 2)
    depthwise = torch.empty(16, 1, 3, 3)  # Keras (H, W, C, M) -> torch (C * M, 1, H, W)
    vector = torch.empty(301)
    big = torch.empty(11, 5, dtype=torch.float64)
    scalar = torch.empty(())
    empty = torch.empty(4, 0, 3, 3)
    return {
        "dense": (dense, dense.T, v["dense"].T),
        "conv": (conv, conv.permute(2, 3, 1, 0), v["conv"].transpose(3, 2, 0, 1)),
        "conv1d": (conv1d, conv1d.permute(2, 1, 0), v["conv1d"].transpose(2, 1, 0)),
        "conv3d": (conv3d, conv3d.permute(2, 3, 4, 1, 0), v["conv3d"].transpose(4, 3, 0, 1, 2)),
        "depthwise": (depthwise, depthwise.view(8, 2, 3, 3).permute(2, 3, 0, 1),
                      v["depthwise"].transpose(2, 3, 0, 1).reshape(16, 1, 3, 3)),
        "vector64": (vector, vector, v["vector64"].astype(np.float32)),
        "big_endian": (big, big, v["big_endian"].astype(np.float64)),
        "scalar": (scalar, scalar, np.float32(5)),
        "empty_kernel": (empty, empty.permute(2, 3, 1, 0), np.zeros((4, 0, 3, 3), dtype=np.float32)),
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("copy") / "weights.h5"
    with h5py.File(path, "w") as h5:
        for name, values in VALUES.items():
            h5[name] = values
            if values.size > 1:
                h5.create_dataset(f"{name}_gzip", data=values, chunks=tuple(max(1, d // 2) for d in values.shape),
                                  compression="gzip", shuffle=True)
    snapshot = open_h5(path, path)
    yield snapshot
    snapshot.close()


@pytest.mark.parametrize("block", [4, 100, 200, 1 << 20])
@pytest.mark.parametrize("chunked", [False, True])
def test_every_route_in_blocks_gives_the_numpy_layout(  # type: ignore[no-untyped-def]
        stored, monkeypatch: pytest.MonkeyPatch, block: int, chunked: bool) -> None:
    monkeypatch.setattr(_copy, "MIN_BLOCK_BYTES", block)
    monkeypatch.setattr(_copy, "BLOCK_BYTES", block)
    targets = _targets()
    names = [n for n in targets if not (chunked and VALUES[n].size <= 1)]
    jobs = [(stored[f"{n}_gzip" if chunked else n], targets[n][1], n) for n in names]
    with torch.no_grad():
        _copy.copy_all(jobs)
    for name in names:
        np.testing.assert_array_equal(targets[name][0].numpy(), targets[name][2], err_msg=f"{name}, block {block}")


def test_a_transposed_kernel_is_read_through_small_buffers(tmp_path: Path) -> None:
    """A 4 MiB Dense kernel among 4 MiB of weights: the NumPy read buffer holds one block
    (1/BLOCK_FRACTION of the weights, here the 64 KiB minimum); little else is allocated."""
    path = tmp_path / "big.h5"
    kernel = RNG.standard_normal((1024, 1024)).astype("<f4")
    with h5py.File(path, "w") as h5:
        h5["kernel"] = kernel
    snapshot = open_h5(path, path)
    weight = torch.empty(1024, 1024)
    try:
        tracemalloc.start()
        with torch.no_grad():
            _copy.copy_all([(snapshot["kernel"], weight.T, "kernel")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        snapshot.close()
    np.testing.assert_array_equal(weight.numpy(), kernel.T)
    block = max(kernel.nbytes // _copy.BLOCK_FRACTION, _copy.MIN_BLOCK_BYTES)
    assert peak <= block + 64 * 1024, f"{peak:,} bytes traced; blocks of {block:,}"


def test_a_dataset_of_the_wrong_size_is_refused(stored) -> None:  # type: ignore[no-untyped-def]
    from bnkit.keras.errors import KerasFormatError

    with pytest.raises(KerasFormatError, match=r"dense: expected 24 values; the file holds 851"):
        _copy.copy_all([(stored["dense"], torch.empty(4, 6), "dense")])


def test_tensors_outside_cpu_memory_are_filled_by_copies(stored) -> None:  # type: ignore[no-untyped-def]
    """A contiguous tensor on another device cannot take reads into its memory: it gets a
    torch copy instead (a meta tensor stands in for a GPU one: the copy is accepted, no
    value is kept)."""
    vector = torch.empty(301, device="meta")
    kernel = torch.empty(23, 37, device="meta")
    empty = torch.empty(4, 0, 3, 3, device="meta")
    _copy.copy_all([(stored["vector64"], vector, "vector64"), (stored["dense"], kernel.T, "dense"),
                    (stored["empty_kernel"], empty.permute(2, 3, 1, 0), "empty_kernel")])
    assert vector.device.type == "meta" and kernel.device.type == "meta"
