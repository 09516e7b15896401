"""``synchronized=True`` over two gloo processes equals BN over the concatenated batch.

One pair of processes (tests/_dist_workers.py) runs every case; each test below checks one
case against the unsynchronized layer on the whole batch: outputs, input gradients, parameter
gradients summed over the processes, every moving statistic, and the communication (one
all-reduce of 2C+1 numbers forward, 3C+1 with a mask, one of 2C backward, none in inference or
in a group of one process).
"""
from __future__ import annotations

import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnkit

from . import _dist_workers as W

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shares(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("synchronized")
    mp.spawn(W.worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"{rank}.pt", weights_only=False) for rank in range(2)]


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-6, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}


def _reference(name: str, part: slice | None = None) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The unsynchronized layer, trained on the whole batch (or on ``part`` of it)."""
    case = W.CASES[name]
    torch.manual_seed(0)
    layer = case.local().train()
    steps = [W.run(layer, case, W.data(name, step), part) for step in range(W.STEPS)]
    return steps, W.state(layer)


@pytest.mark.parametrize("name", [n for n, c in W.CASES.items() if c.group != "single"])
def test_matches_one_process_on_the_concatenated_batch(shares: list[dict[str, Any]], name: str) -> None:
    case = W.CASES[name]
    tol = _tolerance(case.dtype)
    steps, state = _reference(name)
    parts = [s[name] for s in shares]
    channels = state["running_mean"].numel()
    for step, expected in enumerate(steps):
        got = [p["steps"][step] for p in parts]
        assert got[0]["y"].shape[0] == case.shares[0] and got[1]["y"].shape[0] == case.shares[1]
        for key in ("y", "dx"):
            torch.testing.assert_close(torch.cat([g[key] for g in got]), expected[key], **tol, msg=f"{key} {step}")
        # Each process holds the gradient of its own part of the loss; DDP sums them.
        for key in ("dw", "db"):
            torch.testing.assert_close(got[0][key] + got[1][key], expected[key], **tol, msg=f"{key} {step}")
        if not case.compiled:
            forward = [(3 * channels + 1) if case.mask else (2 * channels + 1), case.group]
            assert [list(c) for g in got for c in g["forward_calls"]] == [forward, forward]
            assert [list(c) for g in got for c in g["backward_calls"]] == [[2 * channels, case.group]] * 2
        if case.extra.get("memory_format") == "channels_last":
            assert all(g["memory_format_kept"] for g in got)
    for part in parts:
        assert part["state"].keys() == state.keys()
        for key, value in state.items():
            torch.testing.assert_close(part["state"][key], value, **tol, msg=key)
        assert part["eval_calls"] == []


def test_empty_share_gets_zero_parameter_gradients(shares: list[dict[str, Any]]) -> None:
    for name in ("keras_empty_share", "torch_empty_share_renorm"):
        for step in shares[0][name]["steps"]:
            assert step["y"].numel() == 0 and step["dx"].numel() == 0
            assert torch.equal(step["dw"], torch.zeros(3)) and torch.equal(step["db"], torch.zeros(3))


def test_group_of_one_process_is_local_batch_norm(shares: list[dict[str, Any]]) -> None:
    name = "torch_single_groups"
    for rank, part in enumerate(shares):
        steps, state = _reference(name, W.share(W.CASES[name], rank))
        for got, expected in zip(part[name]["steps"], steps):
            assert got["forward_calls"] == [] and got["backward_calls"] == []
            for key in ("y", "dx", "dw", "db"):
                torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
        for key, value in state.items():
            torch.testing.assert_close(part[name]["state"][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: bnkit.SyncBatchNorm(3),
    lambda: bnkit.BatchNorm2d(3, synchronized=True, renorm=True, renorm_clipping=W.CLIP),
    lambda: bnkit.BatchNormalization(axis=1, synchronized=True, num_features=3),
], ids=["sync", "torch_renorm", "keras"])
def test_single_process_compiles_and_does_not_communicate(monkeypatch: pytest.MonkeyPatch, make: Any) -> None:
    """Without an initialised process group: plain BN, no collective, fullgraph-compilable."""
    assert not dist.is_initialized()
    calls: list[Any] = []
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: calls.append(a))
    torch.manual_seed(0)
    eager, compiled = make().train(), make().train()
    step = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    for seed in range(2):
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2 + 1
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y1, y2 = eager(x1), step(x2)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.running_var, eager.running_var)
    assert calls == []


def test_ghost_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="virtual_batch_size"):
        bnkit.BatchNormalization(synchronized=True, virtual_batch_size=2)
    with pytest.raises(ValueError, match="per process"):
        bnkit.functional.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True,
                                    synchronized=True, virtual_batch_size=2)
