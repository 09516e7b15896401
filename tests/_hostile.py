"""Build hostile model files inside a test's temporary folder (never touching anything else).

Every attack aims at a *decoy secret* planted in the same folder: ``vault.bin`` (raw bytes)
and ``vault.h5`` (the same bytes as HDF5 datasets).  Each builder returns the attack file
and checks, with plain h5py, that the attack is real (h5py itself reads the secret through
it), so a test that sees bnkit refuse the file is testing something.

h5py writes a dataset's values into its external file, so external storage is created
against ``decoy.bin`` and the stored name is then patched, byte for byte, to ``vault.bin``.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"
#: The decoy secret: exactly the 768 bytes of the (64, 3) float32 Dense kernel of the fixtures.
SECRET = b"SECRET!!" * 96
MARKER = SECRET[:16]
KERNEL = "model_weights/out/out/kernel:0"
#: Five bytes that make HDF5 1.14.6 crash (SIGSEGV) reading small_tf_keras.h5's model_config
#: attribute (found by fuzzing the attribute's object-header region).
CRASH_PATCH = {956: 10, 957: 111, 967: 118, 974: 52, 1009: 44}


def plant_secret(folder: Path) -> tuple[Path, Path]:
    """``vault.bin`` and ``vault.h5`` (datasets ``k`` and ``out/out/kernel:0``, plus ``out`` attrs)."""
    raw, h5 = folder / "vault.bin", folder / "vault.h5"
    raw.write_bytes(SECRET)
    values = np.frombuffer(SECRET, dtype="<f4").reshape(64, 3)
    with h5py.File(h5, "w") as file:
        file["k"] = values
        group = file.create_group("out")
        group.attrs["weight_names"] = np.array([b"out/kernel:0", b"out/bias:0"])
        group["out/kernel:0"] = values
        group["out/bias:0"] = np.zeros(3, dtype="f4")
    return raw, h5


def _fixture_copy(folder: Path, name: str = "small_tf_keras.h5") -> Path:
    target = folder / f"attack-{name}"
    shutil.copyfile(FIXTURES / name, target)
    return target


def _replace_kernel(attack: Path, make: Any) -> None:
    with h5py.File(attack, "r+") as h5:
        group = h5[KERNEL.rsplit("/", 1)[0]]
        del group["kernel:0"]
        make(h5, group)


def _proof(attack: Path, path: str = KERNEL) -> None:
    with h5py.File(attack, "r") as h5:
        assert np.asarray(h5[path]).tobytes() == SECRET, "the attack file does not reach the secret"


def external_storage(folder: Path) -> Path:
    raw, _ = plant_secret(folder)
    decoy = folder / "decoy.bin"
    attack = _fixture_copy(folder)

    def make(h5: Any, group: Any) -> None:
        group.create_dataset("kernel:0", shape=(64, 3), dtype="<f4", external=[(str(decoy), 0, len(SECRET))])
        group["kernel:0"][...] = 0  # written into the decoy

    _replace_kernel(attack, make)
    data = attack.read_bytes()
    assert len(str(decoy)) == len(str(raw)) and data.count(str(decoy).encode()) == 1
    attack.write_bytes(data.replace(str(decoy).encode(), str(raw).encode()))
    _proof(attack)
    return attack


def external_link(folder: Path) -> Path:
    _, vault = plant_secret(folder)
    attack = _fixture_copy(folder)
    _replace_kernel(attack, lambda h5, group: group.__setitem__("kernel:0", h5py.ExternalLink(str(vault), "/k")))
    _proof(attack)
    return attack


def external_group_link(folder: Path) -> Path:
    _, vault = plant_secret(folder)
    attack = _fixture_copy(folder)
    with h5py.File(attack, "r+") as h5:
        del h5["model_weights/out"]
        h5["model_weights/out"] = h5py.ExternalLink(str(vault), "/out")
    _proof(attack)
    return attack


def virtual_dataset(folder: Path) -> Path:
    _, vault = plant_secret(folder)
    attack = _fixture_copy(folder)

    def make(h5: Any, group: Any) -> None:
        layout = h5py.VirtualLayout(shape=(64, 3), dtype="<f4")
        layout[...] = h5py.VirtualSource(str(vault), "k", shape=(64, 3))
        group.create_virtual_dataset("kernel:0", layout)

    _replace_kernel(attack, make)
    _proof(attack)
    return attack


def soft_link_through_external(folder: Path) -> Path:
    _, vault = plant_secret(folder)
    attack = _fixture_copy(folder)

    def make(h5: Any, group: Any) -> None:
        h5["elsewhere"] = h5py.ExternalLink(str(vault), "/")
        group["kernel:0"] = h5py.SoftLink("/elsewhere/k")

    _replace_kernel(attack, make)
    _proof(attack)
    return attack


def dangling_soft_link(folder: Path) -> Path:
    attack = _fixture_copy(folder)
    _replace_kernel(attack, lambda h5, group: group.__setitem__("kernel:0", h5py.SoftLink("/nowhere/k")))
    return attack


def soft_link_loop(folder: Path) -> Path:
    attack = _fixture_copy(folder)
    _replace_kernel(attack, lambda h5, group: group.__setitem__("kernel:0", h5py.SoftLink(f"/{KERNEL}")))
    return attack


def keras_archive_with_external_link(folder: Path) -> Path:
    """A .keras archive whose model.weights.h5 links its Dense kernel to the vault."""
    _, vault = plant_secret(folder)
    weights = folder / "model.weights.h5"
    with zipfile.ZipFile(FIXTURES / "small_keras3.keras") as archive:
        weights.write_bytes(archive.read("model.weights.h5"))
        members = {name: archive.read(name) for name in archive.namelist() if name != "model.weights.h5"}
    with h5py.File(weights, "r+") as h5:
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(vault), "/k")
    _proof(weights, "layers/dense/vars/0")
    attack = folder / "attack.keras"
    with zipfile.ZipFile(attack, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.write(weights, "model.weights.h5")
    weights.unlink()
    return attack


def zip_bomb(folder: Path, padding: int) -> Path:
    """small_keras3.keras with ``padding`` zero bytes after model.weights.h5's HDF5 data, deflated."""
    with zipfile.ZipFile(FIXTURES / "small_keras3.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["model.weights.h5"] += bytes(padding)
    attack = folder / "bomb.keras"
    with zipfile.ZipFile(attack, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return attack


def hdf5_gzip_bomb(folder: Path) -> Path:
    """A weights file whose Dense kernel declares 1 GiB of float32 in 256 gzip chunks of zeros (~1 MB)."""
    import zlib

    attack = _fixture_copy(folder, "small_tf_keras.w.h5")
    chunk = (64, 16384)
    packed = zlib.compress(bytes(64 * 16384 * 4), 9)
    with h5py.File(attack, "r+") as h5:
        group = h5["out/out"] if "out/out" in h5 else h5["out"]
        del group["kernel:0"]
        dataset = group.create_dataset("kernel:0", shape=(64, 16384 * 256), dtype="<f4", chunks=chunk,
                                       compression="gzip")
        for index in range(256):
            dataset.id.write_direct_chunk((0, index * chunk[1]), packed)
    return attack


def crashing_legacy_h5(folder: Path) -> Path:
    data = bytearray((FIXTURES / "small_tf_keras.h5").read_bytes())
    for position, value in CRASH_PATCH.items():
        data[position] = value
    target = folder / "crash.h5"
    target.write_bytes(bytes(data))
    return target


def self_sharing(depth: int = 64) -> list[Any]:
    shared: list[Any] = []
    for _ in range(depth):
        shared = [shared, shared]
    return shared


def checkpoint(folder: Path, architecture: Any, state: dict[str, Any] | None = None) -> Path:
    import torch

    target = folder / "attack.pt"
    torch.save({"format": "bnkit.checkpoint", "version": 1, "architecture": architecture,
                "state_dict": state or {}}, target)
    return target


def cifar_dir(folder: Path, label_names: Any) -> Path:
    """A CIFAR-10 python directory of tiny valid batches whose batches.meta holds ``label_names``."""
    import pickle

    root = folder / "cifar"
    root.mkdir()
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": label_names}))
    return root


def keras_config_with(units: int) -> dict[str, Any]:
    """The small fixture's config with its Dense layer declaring ``units`` outputs."""
    with h5py.File(FIXTURES / "small_tf_keras.h5", "r") as h5:
        config = json.loads(h5.attrs["model_config"])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["units"] = units
    return config
