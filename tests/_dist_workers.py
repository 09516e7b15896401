"""Cases and the process body for tests/test_synchronized.py (spawned, so importable).

Every case runs a synchronized layer on each process' share of a batch and a reference
(the same layer unsynchronized, built by the test process) on the whole batch.  One pair of
processes runs them all; each process saves what it saw to ``<out_dir>/<rank>.pt``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

import bnkit

CLIP = {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}
STEPS = 2  # the second step's renorm r and d use the statistics the first one stored
STATE = ("running_mean", "running_var", "running_stddev", "renorm_mean", "renorm_stddev")


@dataclass(frozen=True)
class Case:
    """``sync(group)`` builds the synchronized layer, ``local()`` its unsynchronized twin."""

    sync: Callable[[Any], torch.nn.Module]
    local: Callable[[], torch.nn.Module]
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    shares: tuple[int, int] = (4, 4)  # samples of rank 0 and rank 1
    mask: bool = False  # Keras mask of shape[:-1]
    group: str = "world"  # "world", "sub" (a new group of both ranks), "single" (a group of one per rank)
    compiled: bool = False  # torch.compile(fullgraph=True, backend="aot_eager")
    offset: float = 1.0  # added to the data (a large one tests the float64 combination)
    extra: dict = field(default_factory=dict)


def _keras(**kw: Any) -> Callable[..., torch.nn.Module]:
    return lambda group=None: bnkit.BatchNormalization(process_group=group, **kw)


def _torch(cls: type, *args: Any, **kw: Any) -> Callable[..., torch.nn.Module]:
    return lambda group=None: cls(*args, process_group=group, **kw) if kw.get("synchronized", True) else cls(*args, **kw)


def _adjustment(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Keras ``adjustment``: a fixed per-channel scale and shift between x-hat and gamma/beta."""
    return torch.tensor([1.5, 0.5, 2.0]).view(1, 3, 1, 1), torch.tensor([0.2, -0.1, 0.0]).view(1, 3, 1, 1)


F64 = torch.float64
K_PLAIN = dict(axis=1, momentum=0.5, num_features=3)
K_RENORM = dict(axis=1, momentum=0.5, num_features=3, renorm=True, renorm_clipping=CLIP, renorm_momentum=0.5)
T_RENORM = dict(renorm=True, renorm_clipping=CLIP, renorm_momentum=0.5, momentum=0.5)

# name -> Case.  Keras family: synchronized forces tf.keras' non-fused path (biased moving
# variance), so the reference is fused=False.  PyTorch family: unbiased with the global count.
CASES: dict[str, Case] = {
    "keras_axis1_f64": Case(_keras(synchronized=True, dtype=F64, **K_PLAIN),
                            _keras(fused=False, dtype=F64, **K_PLAIN), (8, 3, 4, 4), F64),
    "keras_nhwc_axis-1": Case(_keras(axis=-1, momentum=0.5, num_features=3, synchronized=True),
                              _keras(axis=-1, momentum=0.5, num_features=3, fused=False), (8, 4, 4, 3)),
    "keras_renorm_f64": Case(_keras(synchronized=True, dtype=F64, **K_RENORM),
                             _keras(dtype=F64, **K_RENORM), (8, 3, 4, 4), F64),
    "keras_mask_3d": Case(_keras(axis=-1, momentum=0.5, num_features=5, synchronized=True),
                          _keras(axis=-1, momentum=0.5, num_features=5), (8, 6, 5), mask=True),
    "keras_mask_3d_f64_uneven": Case(_keras(axis=-1, momentum=0.5, num_features=5, synchronized=True, dtype=F64),
                                     _keras(axis=-1, momentum=0.5, num_features=5, dtype=F64), (8, 6, 5), F64,
                                     shares=(3, 5), mask=True),
    "keras_adjustment_uneven": Case(_keras(synchronized=True, adjustment=_adjustment, **K_PLAIN),
                                    _keras(fused=False, adjustment=_adjustment, **K_PLAIN), (8, 3, 4, 4),
                                    shares=(5, 3)),
    "keras_empty_share": Case(_keras(synchronized=True, **K_PLAIN), _keras(fused=False, **K_PLAIN), (8, 3, 4, 4),
                              shares=(0, 8)),
    "keras_every_share_empty": Case(_keras(synchronized=True, **K_PLAIN), _keras(fused=False, **K_PLAIN),
                                    (0, 3, 4, 4), shares=(0, 0)),  # statistics unchanged
    "torch_sync": Case(_torch(bnkit.SyncBatchNorm, 3), _torch(bnkit.BatchNorm2d, 3, synchronized=False),
                       (8, 3, 4, 4)),
    "torch_sync_f64_offset": Case(_torch(bnkit.SyncBatchNorm, 3, dtype=F64),
                                  _torch(bnkit.BatchNorm2d, 3, dtype=F64, synchronized=False), (8, 3, 4, 4), F64,
                                  offset=1e4),
    "torch_sync_channels_last": Case(_torch(bnkit.SyncBatchNorm, 3), _torch(bnkit.BatchNorm2d, 3, synchronized=False),
                                     (8, 3, 4, 4), extra={"memory_format": "channels_last"}),
    "torch_renorm_f64": Case(_torch(bnkit.BatchNorm2d, 3, synchronized=True, dtype=F64, **T_RENORM),
                             _torch(bnkit.BatchNorm2d, 3, dtype=F64, synchronized=False, **T_RENORM),
                             (8, 3, 4, 4), F64),
    "torch_uneven_f64": Case(_torch(bnkit.SyncBatchNorm, 3, dtype=F64),
                             _torch(bnkit.BatchNorm2d, 3, dtype=F64, synchronized=False), (8, 3, 4, 4), F64,
                             shares=(3, 5)),
    "torch_1d_uneven": Case(_torch(bnkit.BatchNorm1d, 6, synchronized=True),
                            _torch(bnkit.BatchNorm1d, 6, synchronized=False), (8, 6), shares=(3, 5)),
    "torch_empty_share_renorm": Case(_torch(bnkit.BatchNorm2d, 3, synchronized=True, **T_RENORM),
                                     _torch(bnkit.BatchNorm2d, 3, synchronized=False, **T_RENORM), (8, 3, 4, 4),
                                     shares=(0, 8)),
    "torch_subgroup": Case(_torch(bnkit.SyncBatchNorm, 3), _torch(bnkit.BatchNorm2d, 3, synchronized=False),
                           (8, 3, 4, 4), group="sub"),
    "torch_single_groups": Case(_torch(bnkit.SyncBatchNorm, 3), _torch(bnkit.BatchNorm2d, 3, synchronized=False),
                                (8, 3, 4, 4), group="single"),
    "compiled_torch_renorm": Case(_torch(bnkit.BatchNorm2d, 3, synchronized=True, **T_RENORM),
                                  _torch(bnkit.BatchNorm2d, 3, synchronized=False, **T_RENORM), (8, 3, 4, 4),
                                  compiled=True),
    "compiled_keras_mask": Case(_keras(axis=-1, momentum=0.5, num_features=5, synchronized=True),
                                _keras(axis=-1, momentum=0.5, num_features=5), (8, 6, 5), mask=True,
                                shares=(3, 5), compiled=True),
}


def data(name: str, step: int) -> dict[str, torch.Tensor]:
    """The whole batch of a case's step: ``x``, ``dy`` and, for masked cases, ``mask``."""
    case = CASES[name]
    gen = torch.Generator().manual_seed(1000 * sorted(CASES).index(name) + step)
    x = (torch.randn(case.shape, generator=gen, dtype=torch.float64) * 2 + case.offset).to(case.dtype)
    out = {"x": x, "dy": torch.randn(case.shape, generator=gen, dtype=torch.float64).to(case.dtype)}
    if case.mask:
        out["mask"] = torch.rand(case.shape[:-1], generator=gen) > 0.3
    return out


def share(case: Case, rank: int) -> slice:
    start = sum(case.shares[:rank])
    return slice(start, start + case.shares[rank])


def run(layer: torch.nn.Module, case: Case, batch: dict[str, torch.Tensor], part: slice | None = None,
        forward: Callable[..., torch.Tensor] | None = None) -> dict[str, Any]:
    """One training step of ``layer`` on ``batch[part]``: output, gradients (not accumulated)."""
    part = part or slice(None)
    x = batch["x"][part].clone()
    if case.extra.get("memory_format") == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    kwargs = {"mask": batch["mask"][part]} if case.mask else {}
    layer.zero_grad(set_to_none=True)
    y = (layer if forward is None else forward)(x, **kwargs)
    forward_calls = list(CALLS)
    (y * batch["dy"][part]).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dw": layer.weight.grad, "db": layer.bias.grad,
            "forward_calls": forward_calls, "backward_calls": CALLS[len(forward_calls):],
            "memory_format_kept": x.grad.is_contiguous(memory_format=torch.channels_last)
            if case.extra.get("memory_format") == "channels_last" else None}


def state(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: getattr(layer, n).detach().clone() for n in STATE if getattr(layer, n, None) is not None}


CALLS: list[tuple[int, str]] = []  # (numbers reduced, group label) of every dist.all_reduce


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        sub = dist.new_group([0, 1])
        singles = [dist.new_group([r]) for r in range(world)]
        groups = {"world": None, "sub": sub, "single": singles[rank]}
        labels = {id(sub): "sub", id(singles[rank]): "single"}
        real = dist.all_reduce

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group", args[1] if len(args) > 1 else None)
            CALLS.append((tensor.numel(), "world" if group is None else labels.get(id(group), "other")))
            return real(tensor, *args, **kwargs)

        results: dict[str, Any] = {}
        for name, case in CASES.items():
            torch.manual_seed(0)
            layer = case.sync(groups[case.group]).train()
            forward = torch.compile(layer, backend="aot_eager", fullgraph=True) if case.compiled else None
            steps = []
            for step in range(STEPS):
                CALLS.clear()
                dist.all_reduce = real if case.compiled else counting  # (counted in eager mode)
                try:
                    steps.append(run(layer, case, data(name, step), share(case, rank), forward))
                finally:
                    dist.all_reduce = real
            CALLS.clear()
            dist.all_reduce = counting
            try:
                with torch.no_grad():  # inference: no communication
                    layer.eval()(data(name, 0)["x"][share(case, rank)])
            finally:
                dist.all_reduce = real
            results[name] = {"steps": steps, "state": state(layer), "eval_calls": list(CALLS)}
        torch.save(results, Path(out_dir) / f"{rank}.pt")
        dist.barrier()  # no process tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()
