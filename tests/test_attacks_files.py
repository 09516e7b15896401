"""Hostile model files, checkpoints and datasets: a clear error, and no side effect.

Each attack runs in a child process (tests/_isolated.py) with a time cap and an
address-space cap, on files built in the test's temporary folder (tests/_hostile.py), and
must end in the documented error: not a signal, a hang, a memory blow-up or a success.
Attacks aimed at a decoy secret also check that its bytes reach no weight and no output
file, and that nothing is written outside the output.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import h5py
import pytest

from tests import _hostile as hostile
from tests._isolated import Outcome, run_batch, run_isolated


def _refused(outcome: Outcome, error: str, *parts: str) -> None:
    assert outcome.kind == "error", str(outcome)
    assert outcome.error == error, str(outcome)
    for part in parts:
        assert part in outcome.message, f"{part!r} not in: {outcome.message}"


def _files_holding(folder: Path, marker: bytes, *, besides: tuple[str, ...] = ()) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name not in besides and marker in p.read_bytes()]


# ---- 1. links and storage outside the file ------------------------------------------------
#: attack -> (entry point, what the message must name: kind, target, object)
LINK_ATTACKS = {
    "external_storage": ("load_model", "stored in external raw files", "vault.bin", "kernel:0"),
    "external_link": ("load_model", "an external link", "vault.h5", "kernel:0"),
    "external_group_link": ("load_model", "an external link", "vault.h5", "/model_weights/out"),
    "virtual_dataset": ("load_model", "a virtual dataset reaching other files", "vault.h5", "kernel:0"),
    "soft_link_through_external": ("load_model", "an external link", "vault.h5", "/elsewhere"),
    "dangling_soft_link": ("load_model", "a soft link", "dangling", "kernel:0"),
    "soft_link_loop": ("load_model", "a soft link", "loop", "kernel:0"),
    "keras_archive_with_external_link": ("load_model", "an external link", "vault.h5", "layers/dense/vars/0"),
    "external_storage ": ("load_weights", "stored in external raw files", "vault.bin", "kernel:0"),
}


def test_links_and_storage_outside_the_file_are_refused(tmp_path: Path) -> None:
    calls, paths = [], []
    for index, (attack, (entry, *_)) in enumerate(LINK_ATTACKS.items()):
        folder = tmp_path / f"attack{index}"
        folder.mkdir()
        paths.append(getattr(hostile, attack.strip())(folder))  # each builder proves h5py reaches the secret
        calls.append((entry, (str(paths[-1]), hostile.MARKER.hex())))
    outcomes = run_batch(tmp_path, calls, timeout=120)
    for (attack, (_, *parts)), path, outcome in zip(LINK_ATTACKS.items(), paths, outcomes):
        assert outcome.kind == "error", f"{attack}: {outcome}"
        _refused(outcome, "KerasFormatError", path.name, *parts)
    assert not list((tmp_path / "run-batch" / "tmp").iterdir())  # spilled archive members are gone


def test_convert_writes_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    path = hostile.external_link(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = set(tmp_path.rglob("*"))
    targets = ("converted.pt", "converted.keras", "converted.h5")
    outcomes = run_batch(tmp_path, [("cli", ("convert", str(path), str(out / t))) for t in targets], timeout=120)
    for outcome in outcomes:
        assert outcome.kind == "ok", str(outcome)
        assert outcome.value["status"] == 2 and "an external link" in outcome.value["stderr"], str(outcome)
        assert "Traceback" not in outcome.value["stderr"]
    assert not list(out.iterdir())
    created = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(tmp_path / "run-batch") for p in created), created
    assert not list((tmp_path / "run-batch" / "tmp").iterdir())
    leaked = _files_holding(tmp_path, hostile.MARKER, besides=("vault.bin", "vault.h5"))
    assert leaked == [], leaked  # the attack file itself only names the vault


# ---- 2. compression bombs --------------------------------------------------------------------
def test_zip_bomb_in_a_keras_archive_is_refused_before_decompressing(tmp_path: Path) -> None:
    (tmp_path / "bomb").mkdir()
    (tmp_path / "padded").mkdir()
    bomb = hostile.zip_bomb(tmp_path / "bomb", 128 << 20)
    assert bomb.stat().st_size < 1 << 20  # 128 MiB of zeros in under 1 MB
    padded = hostile.zip_bomb(tmp_path / "padded", 64 << 10)  # within the budget: still a model
    refused, loaded = run_batch(tmp_path, [("load_model", (str(bomb),)), ("load_model", (str(padded),))],
                                timeout=120, memory=3 << 30)
    _refused(refused, "KerasFormatError", "model.weights.h5", "its ZIP header declares", "compression bomb",
             "its config declares")
    assert loaded.kind == "ok", str(loaded)
    assert not list((tmp_path / "run-batch" / "tmp").iterdir())


def test_gzip_bomb_dataset_in_hdf5_is_refused(tmp_path: Path) -> None:
    path = hostile.hdf5_gzip_bomb(tmp_path)
    assert path.stat().st_size < 4 << 20
    outcome = run_isolated(tmp_path, "load_weights", str(path), timeout=90, memory=3 << 30)
    _refused(outcome, "KerasFormatError", "kernel:0", "compression bomb")


# ---- 3. files that crash libhdf5 ---------------------------------------------------------------
def test_a_file_that_crashes_libhdf5_is_a_format_error(tmp_path: Path, monkeypatch: Any) -> None:
    path = hostile.crashing_legacy_h5(tmp_path)
    outcome = run_isolated(tmp_path, "load_model", str(path), timeout=90)
    _refused(outcome, "KerasFormatError", path.name, "crashed the HDF5 library", "the file is corrupt")
    if h5py.version.hdf5_version == "1.14.6":  # the control: parsed in-process, it does kill the process
        monkeypatch.setenv("BNKIT_H5_IN_PROCESS", "1")
        control = run_isolated(tmp_path, "load_model", str(path), timeout=90)
        assert control.kind == "signal", str(control)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["small_tf_keras.h5", "small_keras3.h5", "small_keras3.keras"])
def test_fuzzed_files_never_crash_or_hang(name: str, tmp_path: Path) -> None:
    outcome = run_isolated(tmp_path, "fuzz", name, 7, 200, 5, timeout=240)
    assert outcome.kind == "ok", str(outcome)  # a signal, hang or other exception fails here
    assert sum(outcome.value.values()) == 200 and outcome.value["refused"] > 0


# ---- 4. declared sizes before allocation ----------------------------------------------------
def test_checkpoints_declaring_more_than_they_store_are_refused_before_allocating(tmp_path: Path) -> None:
    cases = {  # architecture -> what the message must say
        "huge vgg": ({"builder": "vgg16", "kwargs": {"width": 64.0}, "transforms": []},
                     ("values; expected at most", "8 GiB")),
        "vgg without tensors": ({"builder": "vgg16", "kwargs": {"width": 1.0}, "transforms": []},
                                ("declares 138,", "the file stores only 0", "nothing was built")),
        "keras 2**36 values": ({"builder": "keras", "config": hostile.keras_config_with(2**30)},
                               ("values; expected at most",)),
        "keras 2**28 values": ({"builder": "keras", "config": hostile.keras_config_with(2**22)},
                               ("the file stores only 0",)),
    }
    paths = []
    for index, (architecture, _) in enumerate(cases.values()):
        (tmp_path / str(index)).mkdir()
        paths.append(hostile.checkpoint(tmp_path / str(index), architecture))
        assert paths[-1].stat().st_size < 8192
    # 2 GiB of address space: building any of these models for real would not fit
    outcomes = run_batch(tmp_path, [("load_checkpoint", (str(p),)) for p in paths], timeout=120, memory=2 << 30)
    for (name, (_, parts)), path, outcome in zip(cases.items(), paths, outcomes):
        assert outcome.kind == "error", f"{name}: {outcome}"
        _refused(outcome, "ValueError", str(path), "declares", *parts)


# ---- 5. self-sharing values in error messages -----------------------------------------------
def test_self_sharing_values_in_messages_do_not_hang(tmp_path: Path) -> None:
    root = hostile.cifar_dir(tmp_path, hostile.self_sharing())
    architecture = {"builder": "vgg16", "kwargs": {"width": 0.05, "input_shape": [3, 32, 32], "classes": 2},
                    "transforms": [hostile.self_sharing()]}
    checkpoint = hostile.checkpoint(tmp_path, architecture)
    assert checkpoint.stat().st_size < 4096  # 2**64 leaves in a few hundred bytes
    start = time.monotonic()
    dataset, summary, config = run_batch(tmp_path, [("load_dataset", (str(root),)), ("cli", ("summary", str(checkpoint))),
                                                    ("self_sharing_keras_config", ())], timeout=90)
    assert time.monotonic() - start < 90
    _refused(dataset, "ValueError", "batches.meta", "label_names", "[[[")
    assert summary.kind == "ok", str(summary)
    assert summary.value["status"] == 2 and "transform 0" in summary.value["stderr"], str(summary)
    _refused(config, "KerasFormatError", "layer #0", "[[[")
    assert max(len(dataset.message), len(summary.value["stderr"]), len(config.message)) < 600


def test_short_bounds_every_shape_of_value() -> None:
    from bnkit._repr import short

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    nested: Any = hostile.self_sharing()
    shared_tuple: Any = ()
    for _ in range(64):
        shared_tuple = (shared_tuple, shared_tuple)
    for value in (nested, shared_tuple, {"k": nested}, "x" * 10**6, 10**5000, Hostile(), b"\0" * 10**6):
        start = time.monotonic()
        text = short(value)
        assert len(text) <= 120 and time.monotonic() - start < 0.5
    assert short("abc") == "'abc'" and short(3) == "3" and short([1, 2]) == "[1, 2]"
    assert short(Hostile()) == "<Hostile object>"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# ---- the snapshot reader reads what h5py reads ----------------------------------------------
def test_snapshot_reads_every_layout_as_h5py_does(tmp_path: Path) -> None:
    """Values read through the worker's snapshot (bnkit's own preadv and chunk decoding) equal h5py's."""
    import numpy as np

    from bnkit.keras._h5 import dataset_problem, open_h5

    rng = np.random.default_rng(0)
    path = tmp_path / "layouts.h5"
    with h5py.File(path, "w") as h5:
        h5["contiguous"] = rng.standard_normal((37, 5)).astype("<f4")
        h5["big_endian"] = rng.standard_normal((6, 4)).astype(">f8")
        h5.create_dataset("gzip_shuffle_fletcher", data=rng.standard_normal((45, 7, 3)).astype("<f4"),
                          chunks=(8, 4, 3), compression="gzip", shuffle=True, fletcher32=True)
        h5.create_dataset("compact", data=rng.standard_normal((3, 2)).astype("<f2"),
                          dcpl=_compact_plist())
        h5["scalar"] = np.float32(1.5)
        reference = {name: np.asarray(h5[name]) for name in h5}
    stored = open_h5(path, path)
    try:
        for name, expected in reference.items():
            dataset = stored[name]
            assert dataset_problem(dataset, path.stat().st_size) is None, name
            whole = np.empty(expected.shape, dtype=np.float32)
            dataset.read_rows(whole)
            np.testing.assert_array_equal(whole, expected.astype(np.float32), err_msg=name)
            if expected.ndim:
                stop = min(4, len(expected))
                rows = np.empty((4,) + expected.shape[1:], dtype=np.float64)
                dataset.read_rows(rows[:stop - 1], 1, stop)
                np.testing.assert_array_equal(rows[:stop - 1], expected[1:stop].astype(np.float64), err_msg=name)
    finally:
        stored.close()


def _compact_plist() -> object:
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    return plist


def test_unknown_filters_and_missing_chunks_are_refused(tmp_path: Path) -> None:
    import numpy as np

    from bnkit.keras._h5 import dataset_problem, open_h5

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("scaleoffset", data=np.ones((64, 64), dtype="<f4"), chunks=(16, 16), scaleoffset=2)
        h5.create_dataset("sparse", shape=(64, 64), dtype="<f4", chunks=(16, 16), compression="gzip")
        h5["sparse"][:16, :16] = 1.0  # one chunk of sixteen written
    stored = open_h5(path, path)
    try:
        assert "filter" in (dataset_problem(stored["scaleoffset"], path.stat().st_size) or "")
        assert "16 chunks are needed but 1" in (dataset_problem(stored["sparse"], path.stat().st_size) or "")
    finally:
        stored.close()
