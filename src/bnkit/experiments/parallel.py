"""``bnkit train`` on several processes: PyTorch's own machinery (torchrun, torch.distributed, DDP).

Nothing here starts processes: ``torchrun`` (``python -m torch.distributed.run``) does, and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each
one.  :func:`from_environment` reads them, :func:`start` initialises the default process group
(gloo for CPU training, NCCL for CUDA) and :func:`stop` tears it down again.

How a global batch is shared: the runner draws every epoch's global batches exactly as a
single process does (one seeded permutation, ``--batch-size`` consecutive indices per batch),
and process ``r`` of ``N`` takes the ``r``-th of ``N`` equal consecutive slices of each one
(:func:`shard`).  The union over the processes of step ``k``'s inputs is therefore step
``k``'s batch of a one-process run, and a contiguous slice keeps ghost batches
(``virtual_batch_size`` consecutive examples) identical too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

__all__ = ["Processes", "from_environment", "launched_by_torchrun", "shard", "start", "stop", "check_config"]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among ``world_size`` processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (or inside a caller's initialised process group)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process shares every batch."""
        return self.world_size > 1

    def device(self, kind: str) -> torch.device:
        """The device of this process for ``kind`` (``"cpu"`` or ``"cuda"``: GPU ``LOCAL_RANK``)."""
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("`device` is 'cuda' but torch.cuda.is_available() is False; use device 'cpu'")
            if self.local_rank >= torch.cuda.device_count():
                raise ValueError(f"`device` is 'cuda' but this node has {torch.cuda.device_count()} GPU(s) for "
                                 f"local rank {self.local_rank}; start at most that many processes per node")
            return torch.device("cuda", self.local_rank if self.launched else torch.cuda.current_device())
        return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """True when the environment has torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def from_environment() -> Processes:
    """This process' place: an already initialised process group, else torchrun's variables, else alone."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Processes(dist.get_rank(), dist.get_world_size(), local, launched=True)
    if not launched_by_torchrun():
        return Processes()
    try:
        rank, world, local = (int(os.environ[name]) for name in _TORCHRUN_VARIABLES)
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun); received: "
                         + ", ".join(f"{n}={os.environ[n]!r}" for n in _TORCHRUN_VARIABLES)) from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise ValueError(f"Inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Processes(rank, world, local, launched=True)


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors, NCCL for CUDA ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def start(processes: Processes, device: torch.device) -> bool:
    """Initialise the default process group when torchrun started us; True when we did (and must stop it)."""
    if not processes.launched or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ImportError("this PyTorch build has no torch.distributed; a distributed run needs it")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend_for(device), init_method="env://", rank=processes.rank,
                            world_size=processes.world_size, **kwargs)
    return True


def stop(started: bool, wait: bool = True) -> None:
    """Wait for every process (when ``wait``), then destroy the process group ``start`` created."""
    if started and dist.is_initialized():
        try:
            if wait:
                dist.barrier()  # no process tears its connections down while another still uses them
        finally:
            dist.destroy_process_group()


def shard(index: torch.Tensor, processes: Processes) -> torch.Tensor:
    """This process' consecutive ``1/world_size`` of a global batch's indices (all of them alone)."""
    if not processes.distributed:
        return index
    size = len(index) // processes.world_size
    return index[processes.rank * size:(processes.rank + 1) * size]


def val_range(n: int, processes: Processes) -> tuple[int, int]:
    """This process' consecutive part of ``n`` validation examples (sizes differ by at most one)."""
    return n * processes.rank // processes.world_size, n * (processes.rank + 1) // processes.world_size


def broadcast_object(value: Any, processes: Processes) -> Any:
    """Rank 0's ``value`` on every process."""
    if not processes.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across(values: Sequence[float], processes: Processes, device: torch.device) -> list[float]:
    """Element-wise sums over every process, in float64 (counts stay exact)."""
    if not processes.distributed:
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def broadcast_buffers(module: torch.nn.Module, processes: Processes) -> None:
    """Give every process rank 0's buffers (moving statistics), as DDP does before each forward."""
    if processes.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def check_config(config: Any, world_size: int, train_size: int | None = None) -> None:
    """The errors a run on ``world_size`` processes would hit, before any process group exists."""
    if world_size <= 1:
        return
    if config.batch_size % world_size:
        raise ValueError(f"`batch_size` ({config.batch_size}) is the global batch and must be divisible by the "
                         f"number of processes ({world_size}); received: batch_size={config.batch_size}")
    local = config.batch_size // world_size
    for variant in config.variants:
        if variant.batch_norm == "ghost" and local % variant.virtual_batch_size:
            raise ValueError(f"variant {variant.name!r}: `virtual_batch_size` ({variant.virtual_batch_size}) must "
                             f"divide each process' share of the batch ({config.batch_size} / {world_size} = "
                             f"{local}); received: virtual_batch_size={variant.virtual_batch_size}")
    if train_size is not None and train_size < config.batch_size:
        raise ValueError(f"`batch_size` ({config.batch_size}) exceeds the {train_size} training examples; on "
                         f"{world_size} processes every step needs a full global batch")
