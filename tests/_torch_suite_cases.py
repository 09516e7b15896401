"""PyTorch's own test inputs for batch normalization, as pytest parameters.

Used by ``tests/test_torch_suite.py``.  Reads (never copies) the ``ModuleInfo`` entries of
``torch.nn.BatchNorm1d/2d/3d`` in ``torch.testing._internal.common_modules.module_db`` and the
``OpInfo`` of ``nn.functional.batch_norm`` in ``common_methods_invocations.op_db``.

Inputs are drawn with ``make_tensor`` (random), so a case is named by its position in the
generated list and regenerated under a fixed seed when the test runs; the global RNG state
is restored afterwards (:func:`seeded`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from typing import Any, Callable, Iterator

import pytest
import torch

with warnings.catch_warnings():
    # common_cuda/common_utils warn once on import when `hypothesis` is absent.
    warnings.filterwarnings("ignore", message="Fail to import hypothesis", category=ImportWarning)
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import (
        ErrorModuleInput,
        ModuleErrorEnum,
        ModuleInfo,
        ModuleInput,
        module_db,
    )

__all__ = [
    "ErrorModuleInput", "ModuleErrorEnum", "ModuleInput", "MODULE_INFOS", "OPINFO",
    "ModuleCase", "SampleCase", "module_cases", "error_cases", "sample_cases", "seeded", "DTYPE_NAMES",
    "outcome", "assert_same_tensor", "assert_same_error", "clone_leaf", "low_precision_tol",
    "randomize", "assert_same_state", "run_pair", "strided", "transposed",
]

TORCH_CLASSES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
MODULE_INFOS: dict[str, ModuleInfo] = {
    info.module_cls.__name__: info for info in module_db if info.module_cls in TORCH_CLASSES
}
assert sorted(MODULE_INFOS) == ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"], sorted(MODULE_INFOS)

# Only the default variant runs on CPU ("without_cudnn" lists no CPU dtypes).
_OPINFOS = [op for op in op_db if op.name == "nn.functional.batch_norm"
            and op.supported_dtypes("cpu")]
assert len(_OPINFOS) == 1, [op.variant_test_name for op in _OPINFOS]
OPINFO = _OPINFOS[0]

DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.float32: "float32", torch.float64: "float64"}
SEED = 20240611


@contextlib.contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Fixed CPU RNG inside, caller's RNG state restored on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _by_name(name: str) -> type:
    return MODULE_INFOS[name].module_cls


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    """One ModuleInput of one ModuleInfo, for one dtype and one mode."""

    name: str  # "BatchNorm2d"
    training: bool
    dtype: torch.dtype
    index: int  # position in module_inputs_func's list
    desc: str

    @property
    def info(self) -> ModuleInfo:
        return MODULE_INFOS[self.name]

    @property
    def torch_cls(self) -> type:
        return _by_name(self.name)

    def id(self, *extra: str) -> str:
        mode = "train" if self.training else "eval"
        parts = [self.name, mode, DTYPE_NAMES[self.dtype], *extra, str(self.index)]
        return "-".join(parts) + (f"-{self.desc}" if self.desc else "")

    def module_input(self, requires_grad: bool = True, seed: int = SEED) -> ModuleInput:
        with seeded(seed + self.index):
            inputs = list(self.info.module_inputs_func(
                self.info, device="cpu", dtype=self.dtype, requires_grad=requires_grad,
                training=self.training))
        return inputs[self.index]

    def error_inputs(self) -> list[ErrorModuleInput]:
        with seeded(SEED + self.index):
            return list(self.info.module_error_inputs_func(
                self.info, device="cpu", dtype=self.dtype, requires_grad=False,
                training=self.training))


def module_cases(
    dtypes: tuple[torch.dtype, ...] | None = None,
    modes: tuple[bool, ...] = (True, False),
    where: Callable[[ModuleInput], bool] = lambda mi: True,
    marks: Callable[[ModuleCase], tuple] = lambda case: (),
    extra_id: str | None = None,
) -> list[Any]:
    """pytest params of ModuleCase over the BN ModuleInfos.

    ``dtypes=None`` takes the dtypes each ModuleInfo lists for CPU.  Modes: the ModuleInfos set
    ``train_and_eval_differ=True``, so PyTorch's ``@modules`` runs both.
    """
    params = []
    with seeded():  # the probe draws random inputs; leave the session's RNG alone
        for name, info in MODULE_INFOS.items():
            params.extend(_module_params(name, info, dtypes, modes, where, marks, extra_id))
    return params


def _module_params(name, info, dtypes, modes, where, marks, extra_id) -> list[Any]:
    wanted = dtypes if dtypes is not None else tuple(
        sorted(info.supported_dtypes("cpu"), key=lambda d: DTYPE_NAMES[d]))
    train_modes = modes if info.train_and_eval_differ else modes[:1]
    params = []
    for training, dtype in itertools.product(train_modes, wanted):
        inputs = info.module_inputs_func(
            info, device="cpu", dtype=dtype, requires_grad=False, training=training)
        for index, mi in enumerate(inputs):
            if mi.forward_input is None or not where(mi):
                continue
            case = ModuleCase(name, training, dtype, index, mi.desc)
            ident = case.id(extra_id) if extra_id else case.id()
            params.append(pytest.param(case, id=ident, marks=marks(case)))
    return params


def error_cases(dtypes: tuple[torch.dtype, ...] | None = None,
                modes: tuple[bool, ...] = (True, False)) -> list[Any]:
    """pytest params of ModuleCase, one per ErrorModuleInput (``index`` = its position)."""
    params = []
    with seeded():
        for name, info in MODULE_INFOS.items():
            wanted = dtypes if dtypes is not None else tuple(
                sorted(info.supported_dtypes("cpu"), key=lambda d: DTYPE_NAMES[d]))
            train_modes = modes if info.train_and_eval_differ else modes[:1]
            for training, dtype in itertools.product(train_modes, wanted):
                errors = info.module_error_inputs_func(
                    info, device="cpu", dtype=dtype, requires_grad=False, training=training)
                for index, error in enumerate(errors):
                    ctor = error.module_error_input.constructor_input
                    desc = "".join(f"{k}={v}" for k, v in ctor.kwargs.items())
                    case = ModuleCase(name, training, dtype, index, f"error-{desc}")
                    params.append(pytest.param(case, id=case.id()))
    return params


@dataclasses.dataclass(frozen=True)
class SampleCase:
    """One SampleInput of the nn.functional.batch_norm OpInfo for one dtype."""

    dtype: torch.dtype
    index: int
    desc: str

    def id(self) -> str:
        return f"batch_norm-{DTYPE_NAMES[self.dtype]}-{self.index}-{self.desc}"

    def sample(self, requires_grad: bool = True, seed: int = SEED) -> Any:
        with seeded(seed + self.index):
            samples = list(OPINFO.sample_inputs_func(OPINFO, "cpu", self.dtype, requires_grad))
        return samples[self.index]


def _describe_sample(sample: Any) -> str:
    shape = "x".join(map(str, sample.input.shape)) or "scalar"
    kw = sample.kwargs
    mode = {True: "train", False: "eval"}.get(kw.get("training"), "default")
    nones = "".join("N" if a is None else "T" for a in sample.args)
    extra = "".join(f"_{k}{v}" for k, v in kw.items() if k != "training")
    return f"{shape}-{mode}-{nones}{extra}"


def sample_cases(dtypes: tuple[torch.dtype, ...] | None = None,
                 where: Callable[[Any], bool] = lambda sample: True) -> list[Any]:
    """pytest params of SampleCase; ``dtypes=None`` takes the OpInfo's CPU dtypes."""
    wanted = dtypes if dtypes is not None else tuple(
        sorted(OPINFO.supported_dtypes("cpu"), key=lambda d: DTYPE_NAMES[d]))
    params = []
    with seeded():
        for dtype in wanted:
            for index, sample in enumerate(OPINFO.sample_inputs_func(OPINFO, "cpu", dtype, False)):
                if not where(sample):
                    continue
                case = SampleCase(dtype, index, _describe_sample(sample))
                params.append(pytest.param(case, id=case.id()))
    return params


# ---------------------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def outcome(fn: Callable[[], Any]) -> Outcome:
    """Run ``fn`` and keep its result or its exception (to compare torch with bnkit)."""
    try:
        return Outcome(value=fn())
    except Exception as exc:  # noqa: BLE001 - the exception is the result under test
        return Outcome(error=exc)


def assert_same_error(bnkit_out: Outcome, torch_out: Outcome, what: str) -> bool:
    """True when torch raised (then bnkit must raise the same type); False if torch did not."""
    if torch_out.error is None:
        if bnkit_out.error is not None:
            raise AssertionError(
                f"{what}: bnkit raised {type(bnkit_out.error).__name__}: {bnkit_out.error} "
                f"where torch succeeded") from bnkit_out.error
        return False
    assert bnkit_out.error is not None, (
        f"{what}: torch raised {type(torch_out.error).__name__}: {torch_out.error}; bnkit did not")
    assert type(bnkit_out.error) is type(torch_out.error), (
        f"{what}: bnkit raised {type(bnkit_out.error).__name__}: {bnkit_out.error}; torch raised "
        f"{type(torch_out.error).__name__}: {torch_out.error}")
    return True


def assert_same_tensor(actual: Any, expected: Any, what: str, *, rtol: float = 0.0,
                       atol: float = 0.0, strides: bool = False) -> None:
    """assert_close (dtype, device, shape, NaN positions too) with ``what`` in the message.

    rtol = atol = 0 by default: bnkit's torch-flavoured classes promise PyTorch's numbers.
    """
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: bnkit {actual!r}, torch {expected!r}"
        return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what} differs (bnkit vs torch): {m}")
    if strides and expected.numel() > 0:
        assert actual.stride() == expected.stride(), (
            f"{what}: strides {actual.stride()} (bnkit) vs {expected.stride()} (torch)")


def clone_leaf(t: Any) -> Any:
    """A fresh leaf with the same values, layout and requires_grad (or ``t`` if not a tensor)."""
    if not isinstance(t, torch.Tensor):
        return t
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    with torch.no_grad():
        out.copy_(t)
    return out.requires_grad_(t.requires_grad)


def low_precision_tol(dtype: torch.dtype) -> dict[str, float]:
    """torch.testing's default tolerances for the dtype (exact for float32/float64 is ours)."""
    return {torch.float16: {"rtol": 1e-3, "atol": 1e-5},
            torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5}}.get(dtype, {"rtol": 0.0, "atol": 0.0})


# ---------------------------------------------------------------------------------------
# Running a torch module and a bnkit module side by side
# ---------------------------------------------------------------------------------------

def randomize(m: torch.nn.Module) -> None:
    """Non-trivial weights and statistics (defaults 1/0 would hide swapped or unused ones)."""
    with torch.no_grad():
        if m.weight is not None:
            m.weight.uniform_(0.5, 1.5)
        if m.bias is not None:
            m.bias.uniform_(-0.5, 0.5)
        if m.running_mean is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(3)


def assert_same_state(b: torch.nn.Module, t: torch.nn.Module, what: str, **tol) -> None:
    sb, st = b.state_dict(), t.state_dict()
    assert list(sb) == list(st), f"{what}: state_dict keys {list(sb)} (bnkit) vs {list(st)} (torch)"
    for key in st:
        assert_same_tensor(sb[key], st[key], f"{what}: {key}", **tol)


def run_pair(t, b, x, g_layout=None, tol=None, what=""):
    """Forward + backward of both modules on copies of ``x``; compare everything torch exposes.

    ``g_layout`` maps the random upstream gradient (drawn contiguous) to the layout to test.
    """
    tol = tol or {}
    xt, xb = clone_leaf(x), clone_leaf(x)
    ot, ob = outcome(lambda: t(xt)), outcome(lambda: b(xb))
    if assert_same_error(ob, ot, f"{what}forward"):
        return
    yt, yb = ot.value, ob.value
    assert_same_tensor(yb, yt, f"{what}output", strides=True, **tol)
    assert_same_tensor(xb, x, f"{what}input after forward (must be untouched)")
    assert_same_state(b, t, f"{what}state after forward", **tol)
    assert yb.requires_grad == yt.requires_grad, f"{what}output.requires_grad"
    if not yt.requires_grad:
        return
    with seeded(1):
        g = torch.randn(yt.shape, dtype=yt.dtype)
    g = g_layout(g) if g_layout else g
    yt.backward(clone_leaf(g))
    yb.backward(clone_leaf(g))
    assert_same_tensor(xb.grad, xt.grad, f"{what}grad of input", strides=True, **tol)
    grads_t = {n: p.grad for n, p in t.named_parameters()}
    grads_b = {n: p.grad for n, p in b.named_parameters()}
    assert list(grads_b) == list(grads_t), f"{what}parameters {list(grads_b)} vs {list(grads_t)}"
    for name in grads_t:
        assert_same_tensor(grads_b[name], grads_t[name], f"{what}grad of {name}", **tol)


def strided(x):  # test_modules.py's recipe: same values, every other element of a wider copy
    return x.detach().repeat_interleave(2, dim=-1)[..., ::2]


def transposed(x):  # dense but permuted layout
    return x.detach().transpose(0, -1).contiguous().transpose(0, -1)
