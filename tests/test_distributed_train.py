"""``bnkit train`` under torchrun: N processes reproduce one process, and a killed run resumes exactly.

The slow tests launch real processes, as a user does: ``python -m torch.distributed.run
--standalone --nproc-per-node 2 -m bnkit train ...`` (gloo on CPU) and ``python -m bnkit train``.

Why a 2-process run can equal a 1-process one: every rank draws the same seeded permutation and
takes its own consecutive half of each global batch, so the union of the ranks' inputs at step k
is the one-process batch of step k; with ``--sync-bn`` every BN layer normalises with the mean
and variance of the global batch (and its backward sums over the ranks); each rank's loss is the
mean over its half, and DDP averages the gradients over the ranks: the average of two equal-sized
halves' means is the mean over the whole batch, so the update is the one-process update.  The
metrics are sums over the ranks (losses times batch sizes, correct counts).  What remains are
float rounding differences (summation orders, the combination of per-rank moments).

The configuration keeps those differences from being amplified, so that the comparison can be
tight and still catch real differences:
* no dropout (``--dropout 0``): each rank draws its own masks for its half, which cannot equal
  the one-process masks of the whole batch; there is then no randomness left in the step;
* BN ``epsilon = 0.1``: with PyTorch's default initialisation the deep conv outputs of this
  13-conv net at width 1/16 have tiny variances, and with Keras' epsilon 1e-3 the normalisation
  divides by almost zero, which amplifies a rounding difference of 1e-7 to 1e-3 within a dozen
  steps (measured: one process on 1 vs 2 threads differs by that much).  With 0.1 the two runs
  agree to about 1e-6 over the two compared epochs;
* Adam (lr 1e-3): it learns visibly in 8 steps (train loss 2.30 -> 2.20 here), which makes the
  loss sensitive to what is checked; a 2-process run *without* --sync-bn differs by 3e-4..2e-3
  (checked below), 25x above the tolerance and far above the rounding differences;
* BN momentum 0.9 instead of 0.99, so that the moving statistics used for validation move.
Later epochs are compared loosely: learning amplifies rounding differences (2e-4 by epoch 4).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bnkit
from bnkit import cli
from bnkit.experiments import ExperimentConfig, parallel

SRC = Path(bnkit.__file__).resolve().parents[1]
CONFIG = """\
[[variants]]
batch_norm = "before_activation"
momentum = 0.9
epsilon = 0.1
"""
FLAGS = ["--dataset", "digits", "--image-size", "32", "--limit", "256", "--width", "0.0625", "--batch-size", "64",
         "--optimizer", "adam", "--lr", "0.001", "--dropout", "0", "--seeds", "0,"]
EPOCHS = 4  # the runs compared with one process, the uninterrupted and the killed one
TIGHT_EPOCHS = 2  # 8 steps of 64: compared within TOLERANCE
TOLERANCE = 1e-4  # relative, on the train and validation losses
LOOSE = 1e-2  # relative, on the later epochs' losses


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "bnkit", "train", *args]


def _train(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, f"{command}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _run_dir(output: Path) -> Path:
    (run,) = list(output.iterdir())
    return run


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted 2-process run and the 1-process reference (both --sync-bn, EPOCHS epochs)."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "bn.toml").write_text(CONFIG)
    common = ["--config", str(root / "bn.toml"), *FLAGS, "--epochs", str(EPOCHS), "--sync-bn", "--quiet"]
    _train(_torchrun(2, *common, "--output-dir", str(root / "two")))
    _train([sys.executable, "-m", "bnkit", "train", *common, "--output-dir", str(root / "one")])
    return {"root": root, "two": _run_dir(root / "two"), "one": _run_dir(root / "one")}


@pytest.mark.slow
def test_two_processes_reproduce_one_process(runs: dict[str, Path]) -> None:
    two, one = _metrics(runs["two"]), _metrics(runs["one"])
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == list(range(1, EPOCHS + 1))
    for a, b in zip(two[:TIGHT_EPOCHS], one[:TIGHT_EPOCHS]):
        assert a["step"] == b["step"]  # the same number of global steps
        assert _rel(a["train_loss"], b["train_loss"]) < TOLERANCE, (a, b)
        assert _rel(a["val_loss"], b["val_loss"]) < TOLERANCE, (a, b)
        assert a["train_accuracy"] == b["train_accuracy"] and a["val_accuracy"] == b["val_accuracy"], (a, b)
    assert one[TIGHT_EPOCHS - 1]["train_loss"] < one[0]["train_loss"] - 0.05  # it learns: the check has teeth
    for a, b in zip(two[TIGHT_EPOCHS:], one[TIGHT_EPOCHS:]):
        assert _rel(a["train_loss"], b["train_loss"]) < LOOSE, (a, b)
    # rank 0 wrote the folder, recording how the run was launched
    stored = json.loads((runs["two"] / "config.json").read_text())
    assert stored["world_size"] == 2 and stored["sync_bn"] is True and stored["batch_size"] == 64
    assert json.loads((runs["one"] / "config.json").read_text())["world_size"] == 1
    for name in ("summary.txt", "metrics.csv", "results.txt", "results.json", "curves.png",
                 "checkpoints/before_activation-seed0.pt"):
        assert (runs["two"] / name).is_file(), name


@pytest.mark.slow
def test_without_sync_bn_the_statistics_differ(runs: dict[str, Path]) -> None:
    """The tolerance above is tight enough to see per-process BN statistics (32 instead of 64 images)."""
    root = runs["root"]
    _train(_torchrun(2, "--config", str(root / "bn.toml"), *FLAGS, "--epochs", str(TIGHT_EPOCHS), "--quiet",
                     "--output-dir", str(root / "unsynced")))
    unsynced, one = _metrics(_run_dir(root / "unsynced")), _metrics(runs["one"])
    assert max(_rel(a["train_loss"], b["train_loss"]) for a, b in zip(unsynced, one)) > 3 * TOLERANCE


@pytest.mark.slow
def test_killed_distributed_run_resumes_to_the_same_metrics(runs: dict[str, Path]) -> None:
    root = runs["root"]
    output = root / "killed"
    command = _torchrun(2, "--config", str(root / "bn.toml"), *FLAGS, "--epochs", str(EPOCHS), "--sync-bn",
                        "--json", "--output-dir", str(output))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()) as proc:
        try:
            assert proc.stdout is not None
            started = json.loads(proc.stdout.readline())  # rank 0 names the run folder first
            assert started["event"] == "run" and Path(started["run_dir"]).parent == output
            first = json.loads(proc.stdout.readline())  # rank 0's line for epoch 1, printed before its checkpoint
            assert first["event"] == "epoch" and first["epoch"] == 1
            deadline = time.monotonic() + 60
            while not list(output.glob("*/checkpoints/before_activation-seed0.pt")) and time.monotonic() < deadline:
                time.sleep(0.01)
            # SIGTERM to torchrun, as a scheduler ending a job does: its agent stops both workers.
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode != 0
    run = _run_dir(output)
    state = torch.load(run / "checkpoints" / "before_activation-seed0.pt", weights_only=True)
    assert 1 <= len(state["history"]) < EPOCHS, "the run finished before it could be killed"
    _train(_torchrun(2, "--resume", str(run), "--quiet"))
    resumed, full = _metrics(run), _metrics(runs["two"])
    keys = ("variant", "seed", "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


def test_batches_map_onto_the_one_process_batches() -> None:
    index = torch.arange(64)
    halves = [parallel.shard(index, parallel.Processes(rank, 2, rank, launched=True)) for rank in range(2)]
    assert torch.equal(torch.cat(halves), index) and all(len(h) == 32 for h in halves)
    assert parallel.shard(index, parallel.Processes()) is index
    parts = [parallel.val_range(359, parallel.Processes(r, 3, r, launched=True)) for r in range(3)]
    assert parts == [(0, 119), (119, 239), (239, 359)]


def test_sync_bn_and_the_recorded_world_size_in_the_configuration() -> None:
    config = ExperimentConfig.from_dict({"sync_bn": True, "world_size": 4})
    assert config.sync_bn and "world_size" not in config.to_dict()
    for data, fragment in [({"sync_bn": "yes"}, "`sync_bn`"), ({"world_size": 0}, "`world_size`"),
                           ({"device": "tpu"}, "`device`")]:
        with pytest.raises(ValueError, match=fragment):
            ExperimentConfig.from_dict(data)


@pytest.mark.parametrize("rank", [0, 1])
def test_global_batch_must_divide_by_the_processes(rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    code = cli.main(["train", "--batch-size", "32", "--sync-bn", "--output-dir", str(tmp_path), "--quiet"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    if rank == 0:  # one line, from rank 0 only; nothing was created
        assert errors == ["bnkit train: error: `batch_size` (32) is the global batch and must be divisible by the "
                          "number of processes (3); received: batch_size=32"]
    else:
        assert errors == []
    assert not list(tmp_path.iterdir())
