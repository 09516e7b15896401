"""PyTorch's own BatchNorm test inputs against bnkit's torch-flavoured classes.

Part 1 runs every ``ModuleInput`` / ``ErrorModuleInput`` of the ``torch.nn.BatchNorm1d/2d/3d``
``ModuleInfo`` entries (``torch.testing._internal.common_modules.module_db``) through the torch
module and the bnkit module built from the same constructor arguments and the same state, in
the spirit of PyTorch's ``test/test_modules.py`` (forward, gradients, non-contiguous inputs,
memory formats, gradcheck/gradgradcheck, pickling, factory kwargs, errors), plus float16 and
bfloat16.  Part 2 runs the ``nn.functional.batch_norm`` ``OpInfo`` samples through
``torch.nn.functional.batch_norm`` and ``bnkit.functional.torch_batch_norm``.

With default arguments the classes run nn.BatchNorm's own code, so Part 1 also runs every
input through bnkit's core (``test_module_through_bnkit_core``, the shortcut turned off).

Comparisons are exact (rtol = atol = 0, same strides) for float32/float64: the classes promise
PyTorch's numbers, and with the same inputs the same native kernel gives the same bits.  Only
float16/bfloat16 use tolerances (torch.testing's defaults for those dtypes, ~1 ulp).
"""
from __future__ import annotations

import copy
import inspect
import io
import pickle
import types

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import bnkit

from ._torch_suite_cases import (
    MODULE_INFOS,
    ModuleCase,
    ModuleErrorEnum,
    SampleCase,
    assert_same_error,
    assert_same_state,
    assert_same_tensor,
    clone_leaf,
    error_cases,
    low_precision_tol,
    module_cases,
    outcome,
    randomize,
    run_pair,
    sample_cases,
    seeded,
    strided,
    transposed,
)

# --- the code under test: resolved here only, at test time ---------------------------
NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
CLASSES = {name: (lambda name=name: getattr(bnkit, name)) for name in NAMES}
TORCH_CLASSES = {name: getattr(torch.nn, name) for name in NAMES}


def bnkit_class(name: str) -> type:
    return CLASSES[name]()


def bnkit_batch_norm():
    return bnkit.functional.torch_batch_norm


FLOATS = (torch.float32, torch.float64)
LOW = (torch.float16, torch.bfloat16)
# torch's first forward-mode AD call (make_dual) loads its jvp decompositions with
# torch.jit.script, which warns once per process; only the tests that use forward AD ignore it.
FORWARD_AD_WARNING = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


# --- helpers -----------------------------------------------------------------------------

def make_pair(case: ModuleCase, args, kwargs, dtype: torch.dtype | None = None):
    """(torch module, bnkit module) from the same arguments, converted to ``dtype``, same state."""
    dtype = dtype or case.dtype
    t = TORCH_CLASSES[case.name](*args, **kwargs).to(dtype)
    b = bnkit_class(case.name)(*args, **kwargs).to(dtype)
    assert_same_state(b, t, "freshly constructed")
    with seeded():
        randomize(t)
    b.load_state_dict(t.state_dict(), strict=True)
    t.train(case.training)
    b.train(case.training)
    return t, b


def _forward_input(mi):
    (x,) = mi.forward_input.args
    assert not mi.forward_input.kwargs
    return x


# =====================================================================================
# Part 1: ModuleInfo entries of torch.nn.BatchNorm1d/2d/3d
# =====================================================================================

@pytest.mark.parametrize("name", NAMES)
def test_class_contract(name: str) -> None:
    """Subclass of _BatchNorm; torch's parameters, in torch's order and kinds, with its defaults."""
    cls, tcls = bnkit_class(name), TORCH_CLASSES[name]
    assert issubclass(cls, _BatchNorm) and cls is not tcls
    pb = inspect.signature(cls.__init__).parameters
    pt = inspect.signature(tcls.__init__).parameters
    kw_only = inspect.Parameter.KEYWORD_ONLY
    head_b = [(p.name, p.kind, p.default) for p in pb.values() if p.kind != kw_only]
    head_t = [(p.name, p.kind, p.default) for p in pt.values() if p.kind != kw_only]
    assert head_b == head_t
    for p in pt.values():  # torch's keyword-only ones (``bias``) must be there too
        if p.kind == kw_only:
            assert p.name in pb and pb[p.name].kind == kw_only and pb[p.name].default == p.default


@pytest.mark.parametrize("case", module_cases(FLOATS))
def test_module_matches_torch(case: ModuleCase) -> None:
    """PyTorch's test_forward inputs: outputs, gradients, statistics, state_dict, repr."""
    mi = case.module_input()
    t, b = make_pair(case, mi.constructor_input.args, mi.constructor_input.kwargs)
    repr(b), str(b)  # noqa: B018 - must not raise (test_repr); the text may differ
    run_pair(t, b, _forward_input(mi))
    # a second call: statistics/num_batches_tracked keep evolving the same way
    run_pair(t, b, _forward_input(case.module_input(seed=7)), what="second call: ")


def _through_core(cls: type) -> type:
    """The class with its default-argument shortcut to nn.BatchNorm's code turned off, so
    that every input runs bnkit's own core (``functional.batch_norm`` in torch's conventions)."""
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self._plain = False
    return type(f"{cls.__name__}ThroughCore", (cls,), {"__init__": __init__})


@pytest.mark.parametrize("case", module_cases(FLOATS, extra_id="core"))
def test_module_through_bnkit_core(case: ModuleCase) -> None:
    """PyTorch's inputs through bnkit's core: outputs and gradients exact (the same native
    kernels); statistics equal up to the rounding of the moving-average expression."""
    mi = case.module_input()
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    t = TORCH_CLASSES[case.name](*args, **kwargs).to(case.dtype)
    b = _through_core(bnkit_class(case.name))(*args, **kwargs).to(case.dtype)
    with seeded():
        randomize(t)
    b.load_state_dict(t.state_dict(), strict=True)
    t.train(case.training), b.train(case.training)
    for seed, what in ((None, ""), (7, "second call: ")):
        x = _forward_input(case.module_input(seed=seed) if seed else mi)
        xt, xb = clone_leaf(x), clone_leaf(x)
        yt, yb = t(xt), b(xb)
        assert_same_tensor(yb, yt, f"{what}output")
        for name, value in t.state_dict().items():
            tol = {} if not value.is_floating_point() else _STATS_TOL[case.dtype]
            assert_same_tensor(b.state_dict()[name], value, f"{what}{name}", **tol)
        if yt.requires_grad:
            with seeded(1):
                g = torch.randn(yt.shape, dtype=yt.dtype)
            yt.backward(g), yb.backward(g.clone())
            assert_same_tensor(xb.grad, xt.grad, f"{what}grad of input")
            for (name, pt), pb in zip(t.named_parameters(), b.parameters()):
                assert_same_tensor(pb.grad, pt.grad, f"{what}grad of {name}")


@pytest.mark.parametrize("case", module_cases(FLOATS))
def test_module_non_contiguous(case: ModuleCase) -> None:
    mi = case.module_input()
    x = _forward_input(mi)
    for x_layout, g_layout in [(strided, None), (strided, strided), (None, strided),
                               (transposed, None), (transposed, transposed)]:
        t, b = make_pair(case, mi.constructor_input.args, mi.constructor_input.kwargs)
        xin = x_layout(x).requires_grad_(x.requires_grad) if x_layout else x
        run_pair(t, b, xin, g_layout=g_layout,
                 what=f"input {getattr(x_layout, '__name__', 'contiguous')}, "
                      f"grad {getattr(g_layout, '__name__', 'contiguous')}: ")


_MEMORY_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.mark.parametrize("case", module_cases(
    FLOATS, where=lambda mi: mi.forward_input.args[0].dim() in _MEMORY_FORMATS))
def test_module_memory_format(case: ModuleCase) -> None:
    """channels_last / channels_last_3d inputs and upstream gradients (test_memory_format)."""
    mi = case.module_input()
    x = _forward_input(mi)
    fmt = _MEMORY_FORMATS[x.dim()]
    to_fmt = lambda y: y.contiguous(memory_format=fmt)  # noqa: E731
    for g_layout in (None, to_fmt):
        t, b = make_pair(case, mi.constructor_input.args, mi.constructor_input.kwargs)
        xin = to_fmt(x.detach()).requires_grad_(x.requires_grad)
        run_pair(t, b, xin, g_layout=g_layout, what=f"{fmt}, grad {'same' if g_layout else 'contiguous'}: ")


def _gradcheck_module(case: ModuleCase, check) -> None:
    """test_modules.py's _test_gradients_helper on the bnkit module: total, then per parameter."""
    mi = case.module_input()
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    _, b = make_pair(case, args, kwargs)
    x = _forward_input(mi)
    params = tuple(b.parameters())

    def fn(x, *_params):  # the params are b's own tensors, perturbed in place by the check
        return b(x)

    assert check(fn, (x, *params), check_batched_grad=True, fast_mode=True)
    for p in params:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
        assert check(fn, (x, *params), check_batched_grad=True, fast_mode=True)
        p.requires_grad_(False)


@pytest.mark.parametrize("case", module_cases((torch.float64,)))
def test_module_gradcheck(case: ModuleCase) -> None:
    _gradcheck_module(case, torch.autograd.gradcheck)


@pytest.mark.slow
@pytest.mark.parametrize("case", module_cases((torch.float64,)))
def test_module_gradgradcheck(case: ModuleCase) -> None:
    _gradcheck_module(case, torch.autograd.gradgradcheck)


@pytest.mark.parametrize("case", module_cases((torch.float32,)))
def test_module_pickle(case: ModuleCase) -> None:
    """pickle, deepcopy and torch.save of the module; state_dict through weights_only load."""
    mi = case.module_input()
    _, b = make_pair(case, mi.constructor_input.args, mi.constructor_input.kwargs)
    buf = io.BytesIO()
    torch.save(b, buf)
    copies = {
        "pickle": pickle.loads(pickle.dumps(b)),
        "deepcopy": copy.deepcopy(b),
        "torch.save": torch.load(io.BytesIO(buf.getvalue()), weights_only=False),
    }
    sd_buf = io.BytesIO()
    torch.save(b.state_dict(), sd_buf)
    sd = torch.load(io.BytesIO(sd_buf.getvalue()), weights_only=True)
    assert list(sd) == list(b.state_dict())
    for key, value in b.state_dict().items():
        assert_same_tensor(sd[key], value, f"weights_only state_dict {key}")
    public = {k: v for k, v in vars(b).items() if not k.startswith("_")}
    x = _forward_input(mi)
    for how, c in copies.items():
        assert type(c) is type(b), how
        assert {k: v for k, v in vars(c).items() if not k.startswith("_")} == public, how
        ref = bnkit_class(case.name)(*mi.constructor_input.args, **mi.constructor_input.kwargs)
        ref.load_state_dict(sd, strict=True)
        ref.train(case.training)
        run_pair(ref, c, x, what=f"{how} copy (first) vs original (second): ")


@pytest.mark.parametrize("factory_dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("case", module_cases((torch.float32,), modes=(True,)))
def test_module_factory_kwargs(case: ModuleCase, factory_dtype: torch.dtype) -> None:
    """test_factory_kwargs / test_device_ctx_init / test_forward's .float()/.double()."""
    mi = case.module_input(requires_grad=False)
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    cls, tcls = bnkit_class(case.name), TORCH_CLASSES[case.name]

    def meta(m):
        return [(n, tuple(v.shape), v.stride(), v.dtype, v.device, v.requires_grad,
                 type(v) is torch.nn.Parameter)
                for n, v in [*m.named_parameters(), *m.named_buffers()]]

    for factory in ({"device": "cpu", "dtype": factory_dtype},
                    {"device": torch.device("cpu"), "dtype": factory_dtype},
                    {"device": "meta", "dtype": factory_dtype}):
        b, t = cls(*args, **kwargs, **factory), tcls(*args, **kwargs, **factory)
        assert meta(b) == meta(t), factory
        for n, v in [*b.named_parameters(), *b.named_buffers()]:
            assert v.device == torch.device(factory["device"]), (factory, n)
            assert v.dtype == (factory_dtype if v.is_floating_point() else torch.long), (factory, n)
    with torch.device("meta"):
        b, t = cls(*args, **kwargs), tcls(*args, **kwargs)
    assert meta(b) == meta(t)
    assert all(v.is_meta for v in b.state_dict().values())
    # materialize a meta module: to_empty + reset_parameters gives torch's fresh state
    b.to_empty(device="cpu").reset_parameters()
    assert_same_state(b, tcls(*args, **kwargs), "meta -> to_empty -> reset_parameters")
    # test_forward: .double()/.float() after a forward pass convert every float tensor
    b = cls(*args, **kwargs)
    x = _forward_input(mi)
    b(x)
    for method, dtype in (("double", torch.float64), ("float", torch.float32)):
        getattr(b, method)()
        b(x.to(dtype))
        for n, v in [*b.named_parameters(), *b.named_buffers()]:
            assert v.dtype == (dtype if v.is_floating_point() else torch.long), (method, n)


@pytest.mark.parametrize("params", ["low_params", "float32_params"])
@pytest.mark.parametrize("case", module_cases(LOW))
def test_module_low_precision(case: ModuleCase, params: str) -> None:
    """module.half()/.bfloat16() (or float32 module, low-precision input) vs torch's."""
    mi = case.module_input()
    module_dtype = case.dtype if params == "low_params" else torch.float32
    t, b = make_pair(case, mi.constructor_input.args, mi.constructor_input.kwargs, module_dtype)
    run_pair(t, b, _forward_input(mi), tol=low_precision_tol(case.dtype))


@pytest.mark.parametrize("case", error_cases())
def test_module_error_inputs(case: ModuleCase) -> None:
    """An ErrorModuleInput as test_errors runs it (module left in its default train mode),
    then differentially in ``case``'s mode: torch raises => bnkit raises the same type."""
    error = case.error_inputs()[case.index]
    mi = error.module_error_input
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error.error_type, match=error.error_regex):
            bnkit_class(case.name)(*args, **kwargs)
        return
    assert error.error_on == ModuleErrorEnum.FORWARD_ERROR
    if _refused_up_front(bnkit_class(case.name), args, kwargs, error.error_type):
        return
    for cls in (case.torch_cls, bnkit_class(case.name)):  # torch too: guards the harness
        built = outcome(lambda: cls(*args, **kwargs))
        assert built.error is None, (
            f"{cls.__module__}.{cls.__name__}(*{args}, **{kwargs}) raised {built.error!r} at "
            f"construction; torch raises {error.error_type.__name__} at forward")
        with pytest.raises(error.error_type, match=error.error_regex):
            built.value(*mi.forward_input.args, **mi.forward_input.kwargs)
    t, b = make_pair(case, args, kwargs)
    run_pair(t, b, mi.forward_input.args[0], what=f"{kwargs}: ")


def _refused_up_front(cls, args, kwargs, error_type) -> bool:
    """bnkit validates its arguments at construction (torch: at the first forward).

    An argument torch refuses at forward may be refused earlier, with the same exception
    type and a message naming the argument; True when that happened.
    """
    built = outcome(lambda: cls(*args, **kwargs))
    if built.error is None:
        return False
    assert isinstance(built.error, error_type), f"construction raised {built.error!r}; torch raises {error_type}"
    assert any(f"`{name}`" in str(built.error) for name in kwargs), f"message names no argument: {built.error}"
    return True


# Bad inputs beyond the ModuleInfo's list (rank, channels, batch of one, dtype, eval eps < 0).
_EXTRA_ERRORS = [
    ("BatchNorm1d", (3,), {}, (2, 3, 4, 5)),
    ("BatchNorm2d", (3,), {}, (2, 3, 4)),
    ("BatchNorm3d", (3,), {}, (2, 3, 4, 4)),
    ("BatchNorm2d", (3,), {}, (2, 4, 5, 5)),
    ("BatchNorm1d", (10,), {}, (1, 10)),
    ("BatchNorm2d", (3,), {}, (1, 3, 1, 1)),
    ("BatchNorm1d", (10,), {"eps": -1.0}, (4, 10)),
    ("BatchNorm1d", (10,), {"eps": 0.0}, (4, 10)),
    ("BatchNorm2d", (3,), {}, "long"),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,args,kwargs,shape", _EXTRA_ERRORS,
                         ids=[f"{n}-{''.join(f'{a}={v}-' for a, v in k.items())}"
                              f"{s if isinstance(s, str) else 'x'.join(map(str, s))}"
                              for n, _, k, s in _EXTRA_ERRORS])
def test_module_bad_inputs(name, args, kwargs, shape, training) -> None:
    case = ModuleCase(name, training, torch.float32, 0, "")
    with seeded():
        x = (torch.randint(0, 5, (2, 3, 4, 4)) if shape == "long"
             else torch.randn(shape, requires_grad=True))
    if _refused_up_front(bnkit_class(name), args, kwargs, ValueError):
        with pytest.raises(ValueError):  # where torch refuses it
            TORCH_CLASSES[name](*args, **kwargs).train(training)(x)
        return
    t, b = make_pair(case, args, kwargs)
    run_pair(t, b, x)


# =====================================================================================
# Part 2: OpInfo samples of nn.functional.batch_norm
# =====================================================================================

def test_functional_signature() -> None:
    """Exactly F.batch_norm's parameters: names, order, kinds, defaults (nothing extra)."""
    fn = bnkit_batch_norm()
    got = [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
    want = [(p.name, p.kind, p.default)
            for p in inspect.signature(F.batch_norm).parameters.values()]
    assert got[:len(want)] == want, "torch's parameters, in torch's order, kinds and defaults"
    extras = got[len(want):]  # bnkit's options: keyword-only, off by default
    assert all(kind == inspect.Parameter.KEYWORD_ONLY and default in (None, False) for _, kind, default in extras)


def _call_functional(fn, sample):
    """Run ``fn`` on fresh copies of the sample: (outcome, input copy, [stats, weight, bias])."""
    x = clone_leaf(sample.input)
    args = [clone_leaf(a) for a in sample.args]
    return outcome(lambda: fn(x, *args, **sample.kwargs)), x, args


# The function runs bnkit's core, whose moving average is Keras' ``old + (new - old) * m``
# where torch computes ``(1 - m) * old + m * new``: equal up to the rounding of one op.
_STATS_TOL = {torch.float32: {"rtol": 1.3e-6, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


def _closer_to_float64(sample, bnkit_out, torch_out, what) -> None:
    """float16/bfloat16 training: bnkit computes in float32 inside, torch's CPU kernel rounds
    elsewhere; both answers must be as close to the float64 result as torch's (+ 1 ulp)."""
    double = [None if a is None else a.detach().double() for a in sample.args]
    reference = F.batch_norm(sample.input.detach().double(), *double, **sample.kwargs)
    ulp = torch.finfo(torch_out.dtype).eps * reference.abs().clamp_min(1.0)
    ours = (bnkit_out.detach().double() - reference).abs()
    theirs = (torch_out.detach().double() - reference).abs()
    assert bool((ours <= theirs + ulp).all()), f"{what}output further from float64 than torch's: {ours.max()} vs {theirs.max()}"


def _compare_functional(sample, tol, what="") -> None:
    rt, xt, at = _call_functional(F.batch_norm, sample)
    rb, xb, ab = _call_functional(bnkit_batch_norm(), sample)
    if assert_same_error(rb, rt, f"{what}call"):
        return
    low = rt.value.dtype in (torch.float16, torch.bfloat16)
    if low and sample.kwargs.get("training") and rt.value.numel():
        _closer_to_float64(sample, rb.value, rt.value, what)
        return
    assert_same_tensor(rb.value, rt.value, f"{what}output", strides=True, **tol)
    for label, vb, vt in zip(("running_mean", "running_var"), ab[:2], at[:2]):
        stats_tol = tol if low or vt is None else _STATS_TOL.get(vt.dtype, tol)
        assert_same_tensor(vb, vt, f"{what}{label} after the call (updated in place)", **stats_tol)
    assert_same_tensor(xb, sample.input, f"{what}input after the call (must be untouched)")
    if not rt.value.requires_grad:
        return
    with seeded(2):
        g = torch.randn(rt.value.shape, dtype=rt.value.dtype)
    rt.value.backward(g)
    rb.value.backward(g.clone())
    for label, vb, vt in (("input", xb, xt), ("weight", ab[2], at[2]), ("bias", ab[3], at[3])):
        if vt is not None:
            assert_same_tensor(vb.grad, vt.grad, f"{what}grad of {label}", **tol)


@pytest.mark.parametrize("case", sample_cases())
def test_functional_matches_torch(case: SampleCase) -> None:
    """Output, in-place statistics and gradients for every sample, every OpInfo CPU dtype."""
    _compare_functional(case.sample(), low_precision_tol(case.dtype))


@pytest.mark.parametrize("case", sample_cases((torch.float32,), where=lambda s: s.input.numel() > 0))
def test_functional_non_contiguous(case: SampleCase) -> None:
    sample = case.sample()
    sample.input = strided(sample.input).requires_grad_(sample.input.requires_grad)
    _compare_functional(sample, {}, what="strided input: ")


def _functional_check(case: SampleCase, check) -> None:
    sample = case.sample()
    fn = bnkit_batch_norm()
    rm, rv, w, b = sample.args
    diff = [t for t in (sample.input, w, b) if t is not None and t.requires_grad]

    def f(*tensors):
        it = iter(tensors)
        x, w_, b_ = (next(it) if t is not None and t.requires_grad else t
                     for t in (sample.input, w, b))
        return fn(x, clone_leaf(rm), clone_leaf(rv), w_, b_, **sample.kwargs)

    if check is torch.autograd.gradcheck:  # test_ops: test_fn_grad + test_forward_mode_AD
        extra = {"check_forward_ad": True, "check_batched_forward_grad": True}
    else:  # test_fn_gradgrad + test_fn_fwgrad_bwgrad
        extra = {"check_fwd_over_rev": True, "check_rev_over_rev": True}
    assert check(f, tuple(diff), check_batched_grad=True, fast_mode=True, **extra)


@FORWARD_AD_WARNING
@pytest.mark.parametrize("case", sample_cases((torch.float64,)))
def test_functional_gradcheck(case: SampleCase) -> None:
    """test_ops' gradcheck (OpInfo: supports_forward_ad, supports_fwgrad_bwgrad)."""
    _functional_check(case, torch.autograd.gradcheck)


@pytest.mark.slow
@FORWARD_AD_WARNING
@pytest.mark.parametrize("case", sample_cases((torch.float64,)))
def test_functional_gradgradcheck(case: SampleCase) -> None:
    _functional_check(case, torch.autograd.gradgradcheck)


@FORWARD_AD_WARNING
@pytest.mark.parametrize("case", sample_cases((torch.float64,)))
def test_functional_forward_ad_matches_torch(case: SampleCase) -> None:
    """jvp of output w.r.t. input/weight/bias equals torch's (forward-mode AD)."""
    sample = case.sample(requires_grad=False)
    with seeded(3):
        tangents = [None if t is None else torch.randn_like(t)
                    for t in (sample.input, *sample.args[2:])]
    results = []
    for fn in (F.batch_norm, bnkit_batch_norm()):
        with fwAD.dual_level():
            x, w, b = (None if t is None else fwAD.make_dual(t.clone(), tan)
                       for t, tan in zip((sample.input, *sample.args[2:]), tangents))
            rm, rv = (clone_leaf(a) for a in sample.args[:2])
            res = outcome(lambda: fwAD.unpack_dual(fn(x, rm, rv, w, b, **sample.kwargs)))
            results.append(res)
    rt, rb = results
    if assert_same_error(rb, rt, "forward AD"):
        return
    assert_same_tensor(rb.value.primal, rt.value.primal, "forward-AD primal")
    assert_same_tensor(rb.value.tangent, rt.value.tangent, "forward-AD tangent")


# Bad calls (the OpInfo has no error_inputs): torch raises => bnkit raises the same type.
_FUNCTIONAL_ERRORS = {
    "eval-no-running-stats": ((4, 3), dict(running=False, training=False)),
    "train-eps0": ((4, 3), dict(training=True, eps=0.0)),
    "eval-eps-negative": ((4, 3), dict(training=False, eps=-1.0)),
    "train-one-value-per-channel": ((1, 3), dict(training=True)),
    "running-mean-wrong-size": ((4, 3), dict(stats_size=4, training=True)),
    "weight-wrong-size": ((4, 3), dict(weight_size=4, training=True)),
    "eval-integer-input": ((4, 3), dict(training=False, long=True)),
}


@pytest.mark.parametrize("key", list(_FUNCTIONAL_ERRORS))
def test_functional_bad_inputs(key: str) -> None:
    shape, spec = _FUNCTIONAL_ERRORS[key]
    spec = dict(spec)
    running, long = spec.pop("running", True), spec.pop("long", False)
    n_stats, n_weight = spec.pop("stats_size", shape[1]), spec.pop("weight_size", shape[1])
    with seeded():
        x = torch.randint(0, 5, shape) if long else torch.randn(shape, requires_grad=True)
        stats = (torch.zeros(n_stats), torch.ones(n_stats)) if running else (None, None)
        sample = types.SimpleNamespace(input=x, kwargs=spec, args=(
            *stats, torch.rand(n_weight, requires_grad=True), torch.randn(shape[1])))
    _compare_functional(sample, {})


def test_module_infos_are_the_batchnorm_entries() -> None:
    """Guards the harness: every ModuleInfo drawn from torch, with its error inputs."""
    assert {info.module_cls for info in MODULE_INFOS.values()} == set(TORCH_CLASSES.values())
    assert all(info.module_error_inputs_func is not None for info in MODULE_INFOS.values())
