"""Hostile and broken inputs: datasets, silent wrong results, the command line.

Every attack works on files it builds in its temp folder.  Command-line cases run
``bnkit.cli.main`` in this process (the exit status and stderr ``python -m bnkit`` would
give) and a few run ``python -m bnkit`` in a subprocess (resource limits, the traceback
switch).  Each asserts a non-zero exit, exactly one stderr line without a traceback, and
that the line names the file or argument; the silent-wrong cases assert that they now raise,
and the accepted neighbours are checked against a reference.
"""
from __future__ import annotations

import copy
import errno
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import bnkit
from bnkit import checkpoint, cli
from bnkit import functional as F
from bnkit._files import remove_stale_staging
from bnkit.data import load_dataset
from bnkit.experiments import ExperimentConfig, Variant
from bnkit.surgery import fold_batch_norm, insert_batch_norm

SMALL = ["--width", "0.0625", "--input-shape", "3,32,32", "--classes", "10"]


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *names: str) -> str:
    """Run the CLI; assert a non-zero exit and one stderr line naming ``names``; return the line."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"exit status 0 for {argv}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one stderr line for {argv}; got:\n{err}"
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "plain.pt"
    assert cli.main(["build", "vgg16", str(path), *SMALL]) == 0
    return path


@pytest.fixture(scope="module")
def bn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "bn.pt"
    assert cli.main(["build", "vgg16", str(path), *SMALL, "--batch-norm", "before_activation"]) == 0
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- datasets ----------------------------------------------------------------------------
def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_huge_label_is_refused_before_building_class_names(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 32, 32), dtype=np.float32)
    y = np.arange(20) % 2
    y[3] = 2**40
    with pytest.raises(ValueError, match=r"lab\.npz.*'y'.*below 100,000.*1,099,511,627,776"):
        load_dataset(str(_npz(tmp_path / "lab.npz", x=x, y=y)))
    y[3] = 5000  # under the cap, but 5001 classes for 20 examples
    with pytest.raises(ValueError, match=r"sparse\.npz.*5,001 classes"):
        load_dataset(str(_npz(tmp_path / "sparse.npz", x=x, y=y)))
    y = np.full(20, 2**64 - 1, dtype=np.uint64)  # would wrap to -1 as int64
    with pytest.raises(ValueError, match=r"wrap\.npz.*below 100,000"):
        load_dataset(str(_npz(tmp_path / "wrap.npz", x=x, y=y)))
    with pytest.raises(ValueError, match=r"float\.npz.*integer labels"):
        load_dataset(str(_npz(tmp_path / "float.npz", x=x, y=np.arange(20) % 2 + 0.5)))
    with pytest.raises(ValueError, match=r"neg\.npz.*non-negative"):
        load_dataset(str(_npz(tmp_path / "neg.npz", x=x, y=np.arange(20) % 2 - 1)))
    # the accepted neighbour: 12 labels for 20 examples (classes absent from the data are allowed)
    y = np.arange(20) % 2
    y[0] = 11
    assert load_dataset(str(_npz(tmp_path / "ok.npz", x=x, y=y))).num_classes == 12


def test_float64_values_beyond_float32_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 32, 32))
    y = np.arange(20) % 2
    x[0, 0, 0] = 1e300
    with pytest.raises(ValueError, match=r"big\.npz.*'x'.*float32.*1e\+300"):
        load_dataset(str(_npz(tmp_path / "big.npz", x=x, y=y)))
    x[0, 0, 0] = -3.5e38  # just beyond float32's range
    with pytest.raises(ValueError, match=r"edge\.npz.*float32"):
        load_dataset(str(_npz(tmp_path / "edge.npz", x=x, y=y)))
    x[0, 0, 0] = 3e38  # within float32: accepted, and normalised to finite values
    data = load_dataset(str(_npz(tmp_path / "fits.npz", x=x, y=y)))
    assert bool(torch.isfinite(data.x_train).all())


def _forged_npz(path: Path, shape: tuple[int, ...]) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.arange(4))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
        archive.writestr("y.npy", labels.getvalue())
    return path


def test_npz_header_declaring_terabytes_is_refused_before_allocation(tmp_path: Path) -> None:
    path = _forged_npz(tmp_path / "forged.npz", (1_649_267_441_664, 1))  # 6 TiB of float32
    with pytest.raises(ValueError, match=r"forged\.npz.*'x'.*6,597,069,766,656 bytes.*holds"):
        load_dataset(str(path))


def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A gray PNG of zeros, compressed row by row (164 kB for 13000 x 13000); ``rows``: store only that many."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height if rows is None else rows):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def _image_folder(root: Path) -> Path:
    image = pytest.importorskip("PIL.Image")
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for j in range(2):
            image.new("RGB", (40, 40), (40 * k, 30 * j, 7)).save(root / name / f"{j}.png")
    return root


def test_pixel_bomb_png_is_refused_from_its_header(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    _png(root / "b" / "bomb.png", 13000, 13000)  # 169 M pixels: 6.3 GB RSS before; Pillow itself only warns
    with pytest.raises(ValueError, match=r"bomb\.png.*at most 33,554,432 pixels.*13000 x 13000"):
        load_dataset(str(root))
    (root / "b" / "bomb.png").unlink()
    _png(root / "b" / "bigger.png", 15000, 15000, rows=1)  # Pillow raises DecompressionBombError at open
    with pytest.raises(ValueError, match=r"bigger\.png.*at most 33,554,432 pixels.*225000000"):
        load_dataset(str(root))


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    root = _image_folder(tmp_path / "images")
    big = image.new("RGB", (7000, 5000), (200, 100, 50))  # 35 M pixels, over the limit: drafted to 1/2 or less
    big.save(root / "b" / "big.jpg", quality=90)
    data = load_dataset(str(root), image_size=32, val_fraction=0.4)
    assert data.num_classes == 2 and len(data.x_train) + len(data.x_val) == 5


# ---- silent wrong results: the layers and bnkit.functional ----------------------------------
@pytest.mark.parametrize("make", [
    lambda: bnkit.BatchNormalization(renorm=True, renorm_clipping={"rmax": math.nan}),
    lambda: bnkit.BatchNorm2d(3, renorm=True, renorm_clipping={"rmax": math.nan}),
])
def test_nan_renorm_clipping_is_refused(make) -> None:
    with pytest.raises(ValueError, match=r"renorm_clipping\['rmax'\].*NaN"):
        make()


@pytest.mark.parametrize("make", [lambda: bnkit.BatchNormalization(renorm=True),
                                  lambda: bnkit.BatchNorm2d(3, renorm=True)], ids=["keras", "torch"])
def test_set_renorm_clipping_nan_is_refused(make) -> None:
    layer = make()
    with pytest.raises(ValueError, match=r"renorm_clipping\['dmax'\].*NaN"):
        layer.set_renorm_clipping(dmax=math.nan)
    assert layer.renorm_clipping == {}


def test_epsilon_that_vanishes_in_float32_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`epsilon` must be at least 1\.17549e-38.*received: epsilon=1e-300"):
        bnkit.BatchNormalization(axis=1, epsilon=1e-300)
    with pytest.raises(ValueError, match=r"`eps` must be at least 1\.17549e-38.*eps=1e-300"):
        bnkit.BatchNorm2d(3, eps=1e-300)
    with pytest.raises(ValueError, match=r"`epsilon` must be at least"):
        F.batch_norm(torch.ones(4, 3), torch.zeros(3), torch.ones(3), training=True, epsilon=1e-300)
    # float64 layers keep float64's range, and compute what nn.BatchNorm2d computes with it
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    reference = torch.nn.BatchNorm2d(3, eps=1e-300).double()(x)
    keras = bnkit.BatchNormalization(axis=1, epsilon=1e-300, dtype=torch.float64)
    assert torch.allclose(keras(x, training=True), reference)
    assert torch.allclose(bnkit.BatchNorm2d(3, eps=1e-300, dtype=torch.float64)(x), reference)
    bnkit.BatchNorm2d(3, eps=0.0)  # torch's rule: 0 is allowed at construction (inference only)


def test_functional_batch_norm_validates_momentum_and_epsilon() -> None:
    x, mean, var = torch.randn(8, 3), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"`momentum` must be a number between 0 and 1; received: momentum=5"):
        F.batch_norm(x, mean, var, training=True, momentum=5)
    with pytest.raises(ValueError, match=r"`epsilon` must be a positive finite number; received: epsilon=-1"):
        F.batch_norm(x, mean, var, training=True, epsilon=-1)
    # the accepted neighbour still matches torch's own kernel
    ours = F.torch_batch_norm(x, mean.clone(), var.clone(), training=True, momentum=1.0)
    assert torch.allclose(ours, torch.nn.functional.batch_norm(x, mean.clone(), var.clone(), training=True, momentum=1.0))


@pytest.mark.parametrize("call", [
    lambda x: bnkit.BatchNormalization(axis=1)(x, training=True),
    lambda x: bnkit.BatchNorm2d(3, renorm=True)(x),
    lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True),
], ids=["keras", "torch-renorm", "functional"])
def test_complex_input_is_refused(call) -> None:
    with pytest.raises(TypeError, match=r"complex64.*imaginary part"):
        call(torch.randn(4, 3, 2, 2, dtype=torch.complex64))


def test_complex_input_to_plain_torch_family_raises_as_nn() -> None:
    x = torch.randn(4, 3, 2, 2, dtype=torch.complex64)
    with pytest.raises(NotImplementedError):
        torch.nn.BatchNorm2d(3)(x)
    with pytest.raises(NotImplementedError):
        bnkit.BatchNorm2d(3)(x)


@pytest.mark.parametrize("make", [
    lambda: bnkit.BatchNormalization(axis=1), lambda: bnkit.BatchNorm2d(3), lambda: bnkit.BatchNorm2d(3, renorm=True),
    lambda: bnkit.BatchNorm2d(3, virtual_batch_size=2),
], ids=["keras", "torch", "torch-renorm", "torch-ghost"])
@pytest.mark.parametrize("training", [True, False])
def test_float64_input_to_float32_layer_says_what_to_call(make, training: bool) -> None:
    layer = make().train(training)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        torch.nn.BatchNorm2d(3).train(training)(x)  # torch refuses it too
    with pytest.raises(TypeError, match=r"float64 input.*layer\.double\(\)"):
        layer(x)
    expected = copy.deepcopy(layer)(x.float())  # the same layer in float32
    assert torch.allclose(layer.double()(x).float(), expected, atol=1e-5)  # what the message says works


def test_dropout_seed_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*64\).*1180591620717411303424"):
        bnkit.Dropout(0.5, seed=2**70)
    x = torch.ones(1000)
    first = bnkit.Dropout(0.5, seed=2**64 - 1)(x)
    assert torch.equal(first, bnkit.Dropout(0.5, seed=2**64 - 1)(x))  # the largest seed works and reproduces


def test_adjustment_returning_numbers() -> None:
    x = torch.randn(6, 3, 2, 2)
    layer = bnkit.BatchNormalization(axis=1, adjustment=lambda shape: (2, 1), center=False, scale=False)
    xd = x.double().numpy()
    mean, var = xd.mean(axis=(0, 2, 3), keepdims=True), xd.var(axis=(0, 2, 3), keepdims=True)
    expected = (xd - mean) / np.sqrt(var + 1e-3) * 2 + 1
    np.testing.assert_allclose(layer(x, training=True).detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)
    broken = bnkit.BatchNormalization(axis=1, adjustment=lambda shape: ("a", "b"))
    with pytest.raises(TypeError, match=r"`adjustment` must return a pair.*received: \('a', 'b'\)"):
        broken(x, training=True)


def test_calibration_with_nan_data_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(4, 3, 8, 8)
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"Calibration of the batch norm after 0: expected finite"):
        insert_batch_norm(model, calibration_data=[x])


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_fold_refuses_broken_running_var(bad: float) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    model[1].running_var[2] = bad
    with pytest.raises(ValueError, match=rf"batch norm '1'.*running_var.*running_var\[2\]={bad!r}"):
        fold_batch_norm(model)


# ---- the command line ------------------------------------------------------------------------
def test_cli_output_folder_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    fails(capsys, ["build", "vgg16", str(tmp_path / "afile" / "x.pt"), *SMALL], "afile", "not a folder")
    fails(capsys, ["build", "vgg16", str(tmp_path / "nowhere" / "x.pt"), *SMALL], "nowhere", "does not exist")


def test_cli_output_is_a_directory(tmp_path: Path, plain_ckpt: Path, capsys) -> None:
    (tmp_path / "adir.pt").mkdir()
    fails(capsys, ["fold", str(plain_ckpt), str(tmp_path / "adir.pt"), "--force"], "adir.pt", "is a directory")
    assert not any(p.name.startswith(".bnkit-") for p in tmp_path.iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_cli_read_only_output_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fails(capsys, ["build", "vgg16", str(folder / "x.pt"), *SMALL], "ro", "not writable")
    finally:
        folder.chmod(0o755)


BAD_ARGUMENTS = [
    (["build", "vgg16", "x.pt", "--width", "inf"], ["--width", "'inf'"]),
    (["build", "vgg16", "x.pt", "--classes", "-5"], ["--classes", "-5"]),
    (["summary", "vgg16", "--input-shape", "3,100000,100000"], ["--input-shape", "3,100000,100000"]),
    (["summary", "vgg16", "--input-shape", "3,8000,8000"], ["--input-shape 3,8000,8000", "parameters"]),
    (["add-bn", "in.pt", "out.pt", "--batch-size", "0"], ["--batch-size", "0"]),
    (["add-bn", "in.pt", "out.pt", "--momentum", "nan"], ["--momentum", "nan"]),
    (["train", "--threads", "1000000000"], ["--threads", "1000000000"]),
    (["train", "--seeds", "a,b"], ["--seeds", "'a,b'"]),
    (["train", "--name", "../../x"], ["`name`", "'../../x'"]),
    (["train", "--name", ".hidden"], ["`name`", "'.hidden'"]),
]


@pytest.mark.parametrize("argv, names", BAD_ARGUMENTS, ids=[" ".join(argv) for argv, _ in BAD_ARGUMENTS])
def test_cli_bad_arguments(tmp_path: Path, capsys, monkeypatch, argv: list[str], names: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    fails(capsys, argv, *names)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_cli_malformed_checkpoints(tmp_path: Path, plain_ckpt: Path, capsys) -> None:
    payload = torch.load(plain_ckpt, weights_only=True)
    architecture = payload["architecture"]
    cases = {
        "noarch.pt": {k: v for k, v in payload.items() if k != "architecture"},
        "listarch.pt": {**payload, "architecture": [1, 2]},
        "noplace.pt": {**payload, "architecture": {**architecture, "transforms": [{"op": "insert_batch_norm"}]}},
        "mismatch.pt": {**payload, "architecture": {**architecture, "kwargs": {**architecture["kwargs"], "classes": 7}}},
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        for argv in (["fold", str(tmp_path / name), str(tmp_path / "o.pt")], ["summary", str(tmp_path / name)],
                     ["convert", str(tmp_path / name), str(tmp_path / "o.keras")]):
            fails(capsys, argv, name)
    (tmp_path / "cut.pt").write_bytes(plain_ckpt.read_bytes()[:5000])
    fails(capsys, ["fold", str(tmp_path / "cut.pt"), str(tmp_path / "o.pt")], "cut.pt")
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.keras").exists()


def test_cli_calibration_files(tmp_path: Path, plain_ckpt: Path, capsys) -> None:
    out = str(tmp_path / "o.pt")
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 32, 32)))
    fails(capsys, ["add-bn", str(plain_ckpt), out, "--calibration", str(tmp_path / "c.npy")], "c.npy", ".npz")
    x = np.random.default_rng(0).random((4, 3, 32, 32))
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    fails(capsys, ["add-bn", str(plain_ckpt), out, "--calibration", str(tmp_path / "nan.npz")], "nan.npz", "finite")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 16, 16)))
    fails(capsys, ["add-bn", str(plain_ckpt), out, "--calibration", str(tmp_path / "wrong.npz")],
          "wrong.npz", "(N, 3, 32, 32)", "(4, 3, 16, 16)")
    _forged_npz(tmp_path / "forged.npz", (1_649_267_441_664, 3, 32, 32))
    fails(capsys, ["add-bn", str(plain_ckpt), out, "--calibration", str(tmp_path / "forged.npz")], "forged.npz")
    fails(capsys, ["add-bn", str(plain_ckpt), out, "--epsilon", "1e-300"], "epsilon", "1e-300")
    assert not (tmp_path / "o.pt").exists()


def test_cli_fold_refuses_nan_statistics(tmp_path: Path, bn_ckpt: Path, capsys) -> None:
    payload = torch.load(bn_ckpt, weights_only=True)
    payload["state_dict"]["block2_conv1_bn.running_var"][0] = -1.0
    torch.save(payload, tmp_path / "negvar.pt")
    fails(capsys, ["fold", str(tmp_path / "negvar.pt"), str(tmp_path / "o.pt")], "block2_conv1_bn", "running_var")
    assert not (tmp_path / "o.pt").exists()


def test_cli_memory_error_and_interrupt_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    def raise_(error: BaseException):
        def build(*args, **kwargs):
            raise error
        return build

    monkeypatch.setattr(checkpoint, "build", raise_(MemoryError()))
    fails(capsys, ["build", "vgg16", str(tmp_path / "m.pt"), *SMALL], "out of memory")
    monkeypatch.setattr(checkpoint, "build", raise_(KeyboardInterrupt()))
    assert cli.main(["build", "vgg16", str(tmp_path / "k.pt"), *SMALL]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["bnkit build: interrupted"]
    monkeypatch.undo()
    monkeypatch.setattr(torch, "save", raise_(OSError(errno.ENOSPC, "No space left on device")))
    fails(capsys, ["build", "vgg16", str(tmp_path / "full.pt"), *SMALL], "full.pt", "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no staging folder


def test_cli_debug_flag_lets_the_exception_through(tmp_path: Path) -> None:
    (tmp_path / "adir.pt").mkdir()
    with pytest.raises(IsADirectoryError):
        cli.main(["--debug", "build", "vgg16", str(tmp_path / "adir.pt"), *SMALL])
    with pytest.raises(IsADirectoryError):
        cli.main(["build", "vgg16", str(tmp_path / "adir.pt"), *SMALL, "--debug"])


def test_train_refuses_ghost_batches_before_training(tmp_path: Path, capsys) -> None:
    fails(capsys, ["train", "--variants", "none,ghost", "--batch-size", "12", "--output-dir", str(tmp_path / "runs"),
                   "--json"], "ghost", "virtual_batch_size", "batch_size=12")
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder
    with pytest.raises(ValueError, match="ghost"):
        ExperimentConfig(variants=(Variant("ghost", virtual_batch_size=5),), batch_size=64)
    config = ExperimentConfig(variants=(Variant("ghost", virtual_batch_size=8),), batch_size=64)
    with pytest.raises(ValueError, match="must divide the 36 training examples"):
        config.check_training_set(36)
    config.check_training_set(40)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "", "a\\b", "x" * 101])
def test_run_and_variant_names_stay_inside_the_output_folder(name: str) -> None:
    with pytest.raises(ValueError, match="`name`"):
        ExperimentConfig(name=name)
    with pytest.raises(ValueError, match="`name`"):
        Variant("none", name=name or "/")


def test_config_file_name_and_threads(tmp_path: Path, capsys) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"name": "../../escape"}))
    fails(capsys, ["train", "--config", str(tmp_path / "c.json"), "--json"], "`name`", "../../escape")
    with pytest.raises(ValueError, match="`threads` must be at most 1024"):
        ExperimentConfig(threads=10**9)
    assert not (tmp_path.parent / "escape").exists()


def _run_folder(root: Path) -> Path:
    config = ExperimentConfig(name="r", dataset="digits", limit=32, width=0.0625, epochs=1, batch_size=16,
                              variants=(Variant("none"),), output_dir=str(root))
    run = root / "r-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "world_size": 1}))
    return run


def test_resume_broken_config_json(tmp_path: Path, capsys) -> None:
    run = _run_folder(tmp_path)
    (run / "config.json").write_text('{"name": ')
    fails(capsys, ["train", "--resume", str(run), "--json"], str(run / "config.json"), "JSON")


@pytest.mark.slow
def test_resume_truncated_checkpoint_and_stale_staging(tmp_path: Path, capsys) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    run = _run_folder(tmp_path)
    (run / "checkpoints" / "none-seed0.pt").write_bytes(b"PK\x03\x04" + bytes(100))
    dead, alive = _dead_pid(), os.getpid()
    stale = [run / f".bnkit-{dead}-ab", run / "checkpoints" / f".bnkit-{dead}-cd"]
    live = run / f".bnkit-{alive}-ef"
    for folder in (*stale, live):
        folder.mkdir()
        (folder / "none-seed0.pt").touch()  # the 0-byte file an interrupted torch.save leaves
    fails(capsys, ["train", "--resume", str(run), "--json"], "none-seed0.pt", "delete it")
    assert not any(p.exists() for p in stale) and live.exists()


def test_cli_write_removes_stale_staging_beside_the_output(tmp_path: Path, capsys) -> None:
    stale, live = tmp_path / f".bnkit-{_dead_pid()}-k", tmp_path / f".bnkit-{os.getpid()}-l"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "net.pt").touch()
    assert cli.main(["build", "vgg16", str(tmp_path / "net.pt"), *SMALL]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "net.pt"])
    checkpoint.load_checkpoint(tmp_path / "net.pt")


def test_remove_stale_staging_keeps_live_writers(tmp_path: Path) -> None:
    dead = tmp_path / f".bnkit-{_dead_pid()}-x"
    live = tmp_path / f".bnkit-{os.getpid()}-y"
    other = tmp_path / "keep"
    for folder in (dead, live, other):
        folder.mkdir()
    assert remove_stale_staging(tmp_path) == [dead]
    assert live.exists() and other.exists()


# ---- python -m bnkit in a subprocess ---------------------------------------------------------
def _bnkit(args: list[str], cwd: Path, *, env: dict[str, str] | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnkit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, preexec_fn=preexec)


def _file_size_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_subprocess_write_failure_and_debug_switch(tmp_path: Path) -> None:
    done = _bnkit(["build", "vgg16", "big.pt", *SMALL], tmp_path, preexec=_file_size_limit)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
    assert "could not write big.pt" in lines[0] and "disk is full" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial output, no staging folder
    (tmp_path / "adir.pt").mkdir()
    done = _bnkit(["build", "vgg16", "adir.pt", *SMALL], tmp_path, env={"BNKIT_DEBUG": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "IsADirectoryError" in done.stderr
