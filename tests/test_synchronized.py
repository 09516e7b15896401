"""``synchronized=True`` over two gloo processes equals BN over the concatenated batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnkit

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIP = {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}
# name -> (synchronized layer, the same layer unsynchronized for the concatenated batch)
LAYERS = {
    "keras": (lambda: bnkit.BatchNormalization(axis=1, synchronized=True, num_features=3),
              lambda: bnkit.BatchNormalization(axis=1, fused=False, num_features=3)),  # synchronized: biased rule
    "torch_sync": (lambda: bnkit.SyncBatchNorm(3), lambda: bnkit.BatchNorm2d(3)),
    "torch_renorm": (lambda: bnkit.BatchNorm2d(3, synchronized=True, renorm=True, renorm_clipping=CLIP),
                     lambda: bnkit.BatchNorm2d(3, renorm=True, renorm_clipping=CLIP)),
}


def _worker(rank: int, world: int, port: int, out_dir: str, layer: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x = (torch.randn(8, 3, 4, 4) * 2 + 1).requires_grad_(True)
        dy = torch.randn(8, 3, 4, 4)
        bn = LAYERS[layer][0]().train()
        half = slice(rank * 4, rank * 4 + 4)
        xs = x.detach()[half].clone().requires_grad_(True)
        y = bn(xs)
        (y * dy[half]).sum().backward()
        torch.save({"y": y.detach(), "dx": xs.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
                    "mean": bn.running_mean, "var": bn.running_var}, Path(out_dir) / f"{rank}.pt")
        dist.barrier()  # no process tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layer", list(LAYERS))
def test_two_processes_match_one_big_batch(tmp_path: Path, layer: str) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), layer), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 4, 4) * 2 + 1).requires_grad_(True)
    dy = torch.randn(8, 3, 4, 4)
    bn = LAYERS[layer][1]().train()
    y = bn(x)
    (y * dy).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach())
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), x.grad)
    # Each process holds the gradient of its own part of the loss; DDP would sum them.
    torch.testing.assert_close(parts[0]["dw"] + parts[1]["dw"], bn.weight.grad)
    torch.testing.assert_close(parts[0]["db"] + parts[1]["db"], bn.bias.grad)
    for p in parts:
        torch.testing.assert_close(p["mean"], bn.running_mean)
        torch.testing.assert_close(p["var"], bn.running_var)
