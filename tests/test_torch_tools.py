"""bnkit's BN layers (both families) under PyTorch's model tooling.

Every check compares a transformed model (fx graph, fused layer, compiled / exported /
traced / scripted module, half-precision copy, pickled copy, converted model...) against
the *untransformed* model, after a few training steps so that parameters and running
statistics are far from their initial values.  The layer variants::

    torch                 bnkit.BatchNorm*d(C)
    torch-renorm          bnkit.BatchNorm*d(C, renorm=True, renorm_clipping=CLIP)
    torch-ghost           bnkit.BatchNorm*d(C, virtual_batch_size=2)
    torch-cumulative      bnkit.BatchNorm*d(C, momentum=None)
    torch-untracked       bnkit.BatchNorm*d(C, track_running_stats=False)
    torch-no-affine       bnkit.BatchNorm*d(C, affine=False)
    keras                 bnkit.BatchNormalization(axis=1, num_features=C)
    keras-renorm          bnkit.BatchNormalization(axis=1, num_features=C, renorm=True, renorm_clipping=CLIP)
    keras-ghost           bnkit.BatchNormalization(axis=1, num_features=C, virtual_batch_size=2)

inside ``ConvNet`` (Conv2d -> BN -> ReLU -> ...) and ``MLP`` (Linear -> BN -> ReLU -> Linear),
plus a nested model, a small ResNet and an EfficientNet-like model (``tests/_torch_models.py``).
"""
from __future__ import annotations

import copy
import io
import pickle
import re
import warnings
from typing import Callable

import pytest
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bnkit

from ._torch_models import MLP, ConvNet, EfficientNetLike, Nested, ResNet

# ---- variants ------------------------------------------------------------------------------

CLIP = {"rmax": 1.5, "rmin": 0.75, "dmax": 0.5}
_TORCH_CLASSES = {1: bnkit.BatchNorm1d, 2: bnkit.BatchNorm2d}
_TORCH_OPTIONS: dict[str, dict] = {
    "torch": {},
    "torch-renorm": {"renorm": True, "renorm_clipping": CLIP},
    "torch-ghost": {"virtual_batch_size": 2},
    "torch-cumulative": {"momentum": None},
    "torch-untracked": {"track_running_stats": False},
    "torch-no-affine": {"affine": False},
}
_KERAS_OPTIONS: dict[str, dict] = {
    "keras": {},
    "keras-renorm": {"renorm": True, "renorm_clipping": CLIP},
    "keras-ghost": {"virtual_batch_size": 2},
}
TORCH_VARIANTS = tuple(_TORCH_OPTIONS)
KERAS_VARIANTS = tuple(_KERAS_OPTIONS)
VARIANTS = TORCH_VARIANTS + KERAS_VARIANTS
#: torch-family variants that are nn.BatchNorm*d exactly (no bnkit option).
PLAIN_TORCH = ("torch", "torch-cumulative", "torch-untracked", "torch-no-affine")
#: variants whose layers keep running statistics (foldable / fusable in eval).
TRACKED = tuple(v for v in VARIANTS if v != "torch-untracked")


def norm_layer(variant: str, dim: int) -> Callable[[int], nn.Module]:
    """``norm_layer(C)`` for ``variant``; ``dim`` 1 (Linear outputs) or 2 (NCHW)."""
    if variant in _TORCH_OPTIONS:
        return lambda c: _TORCH_CLASSES[dim](c, **_TORCH_OPTIONS[variant])
    return lambda c: bnkit.BatchNormalization(axis=1, num_features=c, **_KERAS_OPTIONS[variant])


MODELS = {"convnet": (ConvNet, 2, (8, 3, 6, 6)), "mlp": (MLP, 1, (8, 7))}


def build(model: str, variant: str) -> nn.Module:
    cls, dim, _ = MODELS[model]
    return cls(norm_layer(variant, dim))


def batch(model: str, step: int = 0, size: int | None = None) -> torch.Tensor:
    """Deterministic, shifted and scaled input: batch statistics far from (0, 1)."""
    shape = list(MODELS[model][2])
    if size is not None:
        shape[0] = size
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(shape, generator=g) * (1.5 + 0.5 * step) + (0.7 - 0.3 * step)


def train_steps(model: nn.Module, name: str, steps: int = 3, lr: float = 0.1) -> nn.Module:
    """A few SGD steps in training mode: parameters and statistics move away from their init."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        opt.zero_grad()
        model(batch(name, step)).square().mean().backward()
        opt.step()
    return model


def trained(model: str, variant: str) -> nn.Module:
    return train_steps(build(model, variant), model)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (_BatchNorm, bnkit.BatchNormalization))]


def assert_same_state(a: nn.Module, b: nn.Module, exact: bool = True, **tol) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key, value in sa.items():
        assert value.dtype == sb[key].dtype, key
        if exact:
            assert torch.equal(value, sb[key]), key
        else:
            torch.testing.assert_close(value, sb[key], **tol, msg=lambda m, key=key: f"{key}: {m}")


def assert_state_differs(before: dict, module: nn.Module, names=("running_mean",)) -> None:
    """Some statistic named in ``names`` changed compared with the ``before`` state dict."""
    after = module.state_dict()
    changed = [k for k in after if k.rsplit(".", 1)[-1] in names and not torch.equal(before[k], after[k])]
    assert changed, f"no {names} changed"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster (and steadier on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


# ---- 1. torch.fx ---------------------------------------------------------------------------

def _check_graph_module(model: nn.Module, gm: fx.GraphModule, inputs: Callable[[int], torch.Tensor]) -> None:
    """``gm`` (built from a copy of ``model``) behaves like ``model``: train, eval, train again."""
    ref = copy.deepcopy(model)
    bn_names = {n for n, m in ref.named_modules() if m in bn_layers(ref)}
    called = {node.target for node in gm.graph.nodes if node.op == "call_module"}
    assert bn_names <= called, "every BN layer must be one call_module node (so it follows .train()/.eval())"
    ref.train(), gm.train()
    y_ref, y_gm = ref(inputs(0)), gm(inputs(0))
    assert torch.equal(y_ref, y_gm)
    assert_same_state(ref, gm)
    ref.eval(), gm.eval()
    before = copy.deepcopy(gm.state_dict())
    e_ref, e_gm = ref(inputs(1)), gm(inputs(1))
    assert torch.equal(e_ref, e_gm)
    assert_same_state(ref, gm)
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in before.items()), "eval must not update statistics"
    # eval really switched behaviour (batch vs moving statistics) unless no statistics are tracked
    t_gm = copy.deepcopy(gm).train()(inputs(1))
    untracked = all(getattr(m, "running_mean", 0) is None for m in bn_layers(gm))
    assert torch.equal(t_gm, e_gm) == untracked
    ref.train(), gm.train()
    assert torch.equal(ref(inputs(2)), gm(inputs(2)))
    assert_same_state(ref, gm)


@pytest.mark.parametrize("trace_mode", ["train", "eval"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_fx_symbolic_trace(model_name, variant, trace_mode):
    model = trained(model_name, variant)
    work = copy.deepcopy(model).train(trace_mode == "train")
    gm = fx.symbolic_trace(work)
    assert isinstance(gm, fx.GraphModule)
    model.train(trace_mode == "train")
    _check_graph_module(model, gm, lambda step: batch(model_name, step + 5))


@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_nested_model(variant):
    model = train_steps(Nested(norm_layer(variant, 2)), "convnet")
    gm = fx.symbolic_trace(copy.deepcopy(model))
    assert len([n for n in gm.graph.nodes if n.op == "call_module" and "norm" in str(n.target)]) == 2
    _check_graph_module(model, gm, lambda step: batch("convnet", step + 5))


class ConvLeafTracer(fx.Tracer):
    """Like torchvision's feature-extraction tracer, with its own leaf rule: only conv/linear
    layers are leaves, everything else (BN layers included) is traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear))


def feature_extractor(model: nn.Module, names: list[str]) -> fx.GraphModule:
    """``create_feature_extractor``-like: a GraphModule returning ``{name: output of module name}``."""
    graph = ConvLeafTracer().trace(model)
    nodes = {node.target: node for node in graph.nodes if node.op == "call_module"}
    missing = [name for name in names if name not in nodes]
    assert not missing, f"modules not recorded as call_module nodes: {missing}"
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = ({name: nodes[name] for name in names},)
    gm = fx.GraphModule(model, graph, type(model).__name__)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_custom_tracer_feature_extractor(variant):
    model = train_steps(Nested(norm_layer(variant, 2)), "convnet")
    names = [n for n, m in model.named_modules() if m in bn_layers(model)]
    assert len(names) == 3
    extractor = feature_extractor(copy.deepcopy(model), names)
    ref = copy.deepcopy(model)
    captured: dict[str, torch.Tensor] = {}
    for name in names:
        ref.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
    for step, mode in enumerate((True, False, True)):
        ref.train(mode), extractor.train(mode)
        x = batch("convnet", 7 + step)
        ref(x)
        features = extractor(x)
        assert sorted(features) == sorted(names)
        for name in names:
            assert torch.equal(features[name], captured[name]), (mode, name)
        assert_same_state(ref, extractor)


# ---- 2. fusion and folding -----------------------------------------------------------------

FUSABLE = tuple(v for v in TORCH_VARIANTS if v in TRACKED)


@pytest.mark.parametrize("variant", FUSABLE)
def test_fuse_conv_bn_eval(variant):
    model = trained("convnet", variant).eval()
    x = batch("convnet", 9)
    for conv_i, bn_i, inp in ((0, 1, x), (3, 4, torch.relu(model.features[:2](x)))):
        conv, bn = model.features[conv_i], model.features[bn_i]
        fused = fuse_conv_bn_eval(conv, bn)
        assert isinstance(fused, nn.Conv2d)
        expected = bn(conv(inp))
        torch.testing.assert_close(fused(inp), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [v for v in FUSABLE if v != "torch-no-affine"])
def test_fuse_linear_bn_eval(variant):
    model = trained("mlp", variant).eval()
    x = batch("mlp", 9)
    fused = fuse_linear_bn_eval(model.fc1, model.bn)
    torch.testing.assert_close(fused(x), model.bn(model.fc1(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["conv-untracked", "linear-no-affine"])
def test_fuse_refusals_like_torch(case):
    """Where torch's fusion refuses nn.BatchNorm*d (no running statistics; fuse_linear_bn_eval
    without affine parameters), it refuses bnkit's layer the same way."""
    errors = []
    for family in (nn, bnkit):
        if case == "conv-untracked":
            layer, fuse = family.BatchNorm2d(4, track_running_stats=False), fuse_conv_bn_eval
            other = nn.Conv2d(3, 4, 1)
        else:
            layer, fuse = family.BatchNorm1d(4, affine=False), fuse_linear_bn_eval
            other = nn.Linear(3, 4)
        with pytest.raises(Exception) as info:
            fuse(other.eval(), layer.eval())
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("variant", TRACKED)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_fold_batch_norm(model_name, variant):
    model = trained(model_name, variant).eval()
    x = batch(model_name, 9)
    folded, report = bnkit.fold_batch_norm(model)
    assert len(report.folded) == len(bn_layers(model)), str(report)
    assert not report.not_folded
    assert not bn_layers(folded)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_reports_untracked_torch_family_layer():
    model = trained("convnet", "torch-untracked").eval()
    _, report = bnkit.fold_batch_norm(model)
    assert len(report.not_folded) == 2, str(report)
    assert all("track_running_stats" in item.reason for item in report.not_folded)


# ---- 3. torch.func ------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_replace_all_batch_norm_modules(variant):
    model = trained("convnet", variant)
    work = copy.deepcopy(model)
    before = copy.deepcopy(work.state_dict())
    torch.func.replace_all_batch_norm_modules_(work)
    layers = bn_layers(work)
    assert len(layers) == 2
    if variant in KERAS_VARIANTS:  # not a _BatchNorm: untouched, keeps its statistics
        assert_same_state(model, work)
        assert all(layer.running_mean is not None for layer in layers)
        return
    for layer in layers:
        assert layer.track_running_stats is False
        assert layer.running_mean is None and layer.running_var is None and layer.num_batches_tracked is None
    # Train-mode forward with batch statistics only, and no state to update.
    reference = copy.deepcopy(model).train()
    if variant == "torch-renorm":  # without moving statistics renorm has no reference: plain BN
        for layer in bn_layers(reference):
            layer.set_renorm_clipping(rmin=1.0, rmax=1.0, dmax=0.0)
    x = batch("convnet", 5)
    work.train()
    torch.testing.assert_close(work(x), reference(x), rtol=1e-5, atol=1e-6)
    after = work.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k in after)


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_vmap_after_replace_all_batch_norm_modules(variant):
    """functorch's recipe: without running statistics the model runs under vmap, each chunk its own batch."""
    model = trained("convnet", variant)
    work = copy.deepcopy(model)
    torch.func.replace_all_batch_norm_modules_(work)
    reference = copy.deepcopy(model).train()
    if variant == "torch-renorm":
        for layer in bn_layers(reference):
            layer.set_renorm_clipping(rmin=1.0, rmax=1.0, dmax=0.0)
    work.train()
    params, buffers = dict(work.named_parameters()), dict(work.named_buffers())
    chunks = batch("convnet", 5).view(2, 4, 3, 6, 6)

    def run(chunk):
        return torch.func.functional_call(work, (params, buffers), (chunk,))

    out = torch.func.vmap(run)(chunks)
    expected = torch.stack([reference(chunk) for chunk in chunks])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ---- 4. half and bfloat16 -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_low_precision(model_name, variant, dtype):
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.float16 else {"rtol": 6e-2, "atol": 6e-2}
    model = trained(model_name, variant)
    low = copy.deepcopy(model).half() if dtype == torch.float16 else copy.deepcopy(model).to(torch.bfloat16)

    def check_dtypes():
        for name, t in [*low.named_parameters(), *low.named_buffers()]:
            expected = torch.int64 if name.endswith("num_batches_tracked") else dtype
            assert t.dtype == expected, name

    check_dtypes()
    x = batch(model_name, 6)
    ref = copy.deepcopy(model)
    before = copy.deepcopy(low.state_dict())
    for mode in (True, False):
        ref.train(mode), low.train(mode)
        out = low(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref(x), **tol)
        check_dtypes()
    sr, sl = ref.state_dict(), low.state_dict()
    for key in sl:
        torch.testing.assert_close(sl[key].float() if sl[key].is_floating_point() else sl[key],
                                   sr[key], **tol, msg=lambda m, key=key: f"{key}: {m}")
    if variant != "torch-untracked":
        assert_state_differs(before, low)


# ---- 5. torch.jit.trace -------------------------------------------------------------------

def _jit_trace(model: nn.Module, x: torch.Tensor, **kwargs):
    """``torch.jit.trace`` and the TracerWarnings it emitted (torch's own deprecation notices dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x, **kwargs)
    others = [w for w in caught if not (issubclass(w.category, (DeprecationWarning, FutureWarning))
                                        and "is deprecated" in str(w.message))]
    tracer = [w for w in others if issubclass(w.category, torch.jit.TracerWarning)]
    assert len(tracer) == len(others), [str(w.message) for w in others]
    return traced, tracer


def _torch_twin(model_name: str, **options) -> nn.Module:
    """The model with torch's own nn.BatchNorm*d(C, **options)."""
    cls, dim, _ = MODELS[model_name]
    layer = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim]
    return cls(lambda c: layer(c, **options))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_jit_trace_eval(model_name, variant):
    model = trained(model_name, variant).eval()
    traced, tracer_warnings = _jit_trace(copy.deepcopy(model), batch(model_name, 4))
    if variant == "torch-untracked":
        # eval uses batch statistics, through torch's own F.batch_norm: same warnings as nn.BatchNorm*d
        twin = _torch_twin(model_name, track_running_stats=False).eval()
        _, expected = _jit_trace(twin, batch(model_name, 4))
        assert len(tracer_warnings) == len(expected)
    else:
        assert not tracer_warnings, [str(w.message) for w in tracer_warnings]
    state = copy.deepcopy(model.state_dict())
    for size in (6, 2):
        x = batch(model_name, 5, size=size)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-6, atol=1e-6)
    assert all(torch.equal(v, traced.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("model_name", list(MODELS))
def test_jit_trace_train_warnings_like_torch(model_name):
    x = batch(model_name, 4)
    _, ours = _jit_trace(trained(model_name, "torch").train(), x)
    _, torch_own = _jit_trace(train_steps(_torch_twin(model_name), model_name).train(), x)
    assert len(torch_own) >= 1  # the check is meaningful: torch warns here itself
    assert len(ours) == len(torch_own), ([str(w.message) for w in ours], [str(w.message) for w in torch_own])


# ---- 6. torch.compile, torch.export, torch.onnx --------------------------------------------

_FULLGRAPH_CUMULATIVE: list[bool] = []


def _torch_cumulative_compiles_fullgraph() -> bool:
    """Whether torch's own nn.BatchNorm2d(momentum=None) compiles with fullgraph=True."""
    if not _FULLGRAPH_CUMULATIVE:
        model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2, momentum=None))
        try:
            torch.compile(model, backend="eager", fullgraph=True)(batch("convnet"))
            _FULLGRAPH_CUMULATIVE.append(True)
        except Exception:  # torch's `1.0 / float(num_batches_tracked)` is a graph break
            _FULLGRAPH_CUMULATIVE.append(False)
        torch._dynamo.reset()
    return _FULLGRAPH_CUMULATIVE[0]


def _compile_case(variant: str, grads: bool = True):
    # (renorm once exposed a PyTorch bug: AOTAutograd mis-differentiates a graph that holds
    # torch._foreach_lerp next to the copy into the buffers r and d are computed from)
    return variant


def _check_compiled(model: nn.Module, backend: str, tol: dict, grads: bool = True, fullgraph: bool = True) -> None:
    eager, work = copy.deepcopy(model), copy.deepcopy(model)
    if any(getattr(m, "momentum", 0.1) is None for m in model.modules()):
        fullgraph = fullgraph and _torch_cumulative_compiles_fullgraph()  # bnkit's momentum=None runs torch's code
    compiled = torch.compile(work, backend=backend, fullgraph=fullgraph)
    with warnings.catch_warnings():
        if not fullgraph:  # dynamo reads .grad of non-leaf tensors when it resumes after a graph break
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf",
                                    category=UserWarning)
        for step in range(2):
            x = batch("convnet", 5 + step)
            eager.train(), compiled.train()
            y_eager, y_compiled = eager(x), compiled(x)
            torch.testing.assert_close(y_compiled, y_eager, **tol)
            if grads:
                y_eager.square().mean().backward()
                y_compiled.square().mean().backward()
                for (name, p), q in zip(eager.named_parameters(), work.parameters()):
                    torch.testing.assert_close(q.grad, p.grad, **tol, msg=lambda m, name=name: f"{name}: {m}")
            assert_same_state(eager, work, exact=False, **tol)
            eager.eval(), compiled.eval()
            torch.testing.assert_close(compiled(x), eager(x), **tol)
            assert_same_state(eager, work, exact=False, **tol)


@pytest.mark.parametrize("variant", [_compile_case(v) for v in VARIANTS])
def test_compile_aot_eager(variant):
    _check_compiled(trained("convnet", variant), "aot_eager", {"rtol": 1e-5, "atol": 1e-6})


@pytest.mark.parametrize("variant", ["torch", "keras-renorm", "torch-ghost"])
def test_compile_eager_mlp(variant):
    model = trained("mlp", variant)
    eager, compiled = copy.deepcopy(model), torch.compile(copy.deepcopy(model), backend="eager", fullgraph=True)
    for mode in (True, False):
        eager.train(mode), compiled.train(mode)
        x = batch("mlp", 5)
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-6, atol=1e-6)
        assert_same_state(eager, compiled._orig_mod, exact=False, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("variant", [_compile_case(v) for v in ("torch", "keras-ghost", "keras-renorm")])
def test_compile_inductor(variant):
    _check_compiled(trained("convnet", variant), "inductor", {"rtol": 1e-4, "atol": 1e-5})


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_torch_export(model_name, variant):
    model = trained(model_name, variant).eval()
    program = torch.export.export(model, (batch(model_name, 4),))
    exported = program.module()
    for step in (5, 6):
        x = batch(model_name, step)
        torch.testing.assert_close(exported(x), model(x), rtol=1e-6, atol=1e-6)


def _onnx_run(path, x: torch.Tensor):
    import onnx

    try:
        import onnxruntime  # noqa: F401  (not installed here; used where it is)
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        session = ReferenceEvaluator(onnx.load(str(path)))
        name = session.input_names[0]
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _onnx_case(variant, slow):
    return pytest.param(variant, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning")
@pytest.mark.parametrize("variant", [_onnx_case(v, v not in ("torch-renorm", "keras-ghost")) for v in VARIANTS])
def test_onnx_export(variant, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = trained("convnet", variant).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (batch("convnet", 4),), str(path), dynamo=True)
    assert path.is_file() and path.stat().st_size > 0
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = batch("convnet", 5)
    torch.testing.assert_close(_onnx_run(path, x), model(x).detach(), rtol=1e-4, atol=1e-5)


# ---- 7. deepcopy, pickle, state_dict round trips --------------------------------------------

@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_copy_round_trips(model_name, variant, how):
    model = trained(model_name, variant)
    if how == "deepcopy":
        clone = copy.deepcopy(model)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        torch.manual_seed(123)  # a fresh model with different weights
        clone = build(model_name, variant)
        assert not all(torch.equal(a, b) for a, b in zip(clone.parameters(), model.parameters()))
        missing = clone.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
    assert_same_state(model, clone)
    for mode in (True, False, True):
        model.train(mode), clone.train(mode)
        x = batch(model_name, 4 + int(mode))
        assert torch.equal(clone(x), model(x))
        assert_same_state(model, clone)
    for layer, copied in zip(bn_layers(model), bn_layers(clone)):  # (a Keras layer resolves `fused` when called)
        assert type(copied) is type(layer) and copied.extra_repr() == layer.extra_repr()


# ---- 8. torch.jit.script ------------------------------------------------------------------

def _jit_script(model: nn.Module):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        return torch.jit.script(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_jit_script_is_a_clear_error_naming_torch_export(variant):
    model = trained("convnet", variant)
    with pytest.raises(TypeError) as info:
        _jit_script(model)
    message = str(info.value)
    assert "torch.export" in message and "cannot compile" in message, message
    assert type(bn_layers(model)[0]).__name__ in message, message
    assert all(type(a) is type(b) for a, b in zip(bn_layers(model), bn_layers(trained("convnet", variant))))


@pytest.mark.parametrize("variant", sorted(PLAIN_TORCH))
def test_jit_script_after_to_torch_batchnorm(variant):
    model = trained("convnet", variant)
    scripted = _jit_script(bnkit.to_torch_batchnorm(copy.deepcopy(model)))
    for mode in (True, False, True):
        model.train(mode), scripted.train(mode)
        x = batch("convnet", 4 + int(mode))
        assert torch.equal(scripted(x), model(x))
        assert_same_state(model, scripted)


# ---- 9. state dicts across families --------------------------------------------------------

_NN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_BNKIT = {1: bnkit.BatchNorm1d, 2: bnkit.BatchNorm2d, 3: bnkit.BatchNorm3d}


def _bn_input(dim: int, step: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn((8, 4) + (3,) * (0 if dim == 1 else dim), generator=g) * 2 + 1


def _warmed(layer: nn.Module, dim: int) -> nn.Module:
    layer.train()
    with torch.no_grad():
        for step in range(3):
            layer(_bn_input(dim, step))
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer.eval()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_state_dict_torch_to_bnkit_and_back(dim):
    source = _warmed(_NN[dim](4, eps=1e-3, momentum=0.2), dim)
    ours = _BNKIT[dim](4, eps=1e-3, momentum=0.2)
    ours.load_state_dict(source.state_dict(), strict=True)
    assert_same_state(source, ours)
    back = _NN[dim](4, eps=1e-3, momentum=0.2)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert_same_state(ours, back)
    for mode, step in ((False, 7), (True, 8), (False, 9)):
        for m in (source, ours, back):
            m.train(mode)
        x = _bn_input(dim, step)
        a, b, c = source(x), ours(x), back(x)
        assert torch.equal(a, b) and torch.equal(b, c)
        assert_same_state(source, ours)
        assert_same_state(ours, back)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_state_dict_torch_to_keras_family(dim):
    source = _warmed(_NN[dim](4, eps=1e-3), dim)
    keras = bnkit.BatchNormalization(axis=1, num_features=4, epsilon=1e-3)
    result = keras.load_state_dict(source.state_dict(), strict=True)  # num_batches_tracked dropped
    assert not result.missing_keys and not result.unexpected_keys
    assert "num_batches_tracked" not in keras.state_dict()
    for key, value in keras.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    keras.eval()
    x = _bn_input(dim, 7)
    torch.testing.assert_close(keras(x), source(x), rtol=1e-6, atol=1e-6)


def _keras_state(layer: bnkit.BatchNormalization, keras_names: bool, shape=None) -> dict:
    state = layer.state_dict()
    if not keras_names:
        return state
    names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    return {names[k]: (v.reshape(shape) if shape else v) for k, v in state.items()}


@pytest.mark.parametrize("keys", ["torch-names", "keras-names", "keras-names-4d"])
def test_state_dict_keras_family_to_torch_family(keys):
    keras = _warmed(bnkit.BatchNormalization(axis=1, num_features=4, epsilon=1e-3), 2)
    state = _keras_state(keras, keys != "torch-names", (1, 4, 1, 1) if keys.endswith("4d") else None)
    assert ("gamma" in state) == (keys != "torch-names")
    ours = bnkit.BatchNorm2d(4, eps=1e-3)
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(ours.state_dict()[key], keras.state_dict()[key]), key
    ours.eval()
    x = _bn_input(2, 7)
    torch.testing.assert_close(ours(x), keras(x), rtol=1e-6, atol=1e-6)


def test_state_dict_whole_model_across_families():
    """A ConvNet trained with nn.BatchNorm2d loads strictly into the Keras-family ConvNet and back."""
    source = train_steps(ConvNet(nn.BatchNorm2d), "convnet").eval()
    keras = ConvNet(lambda c: bnkit.BatchNormalization(axis=1, num_features=c, epsilon=1e-5)).eval()
    keras.load_state_dict(source.state_dict(), strict=True)
    x = batch("convnet", 5)
    torch.testing.assert_close(keras(x), source(x), rtol=1e-6, atol=1e-6)
    ours = ConvNet(bnkit.BatchNorm2d).eval()
    ours.load_state_dict(keras.state_dict(), strict=True)
    torch.testing.assert_close(ours(x), source(x), rtol=1e-6, atol=1e-6)


def test_state_dict_renorm_across_families():
    torch_family = _warmed(bnkit.BatchNorm2d(4, renorm=True, renorm_clipping=CLIP), 2)
    keras = bnkit.BatchNormalization(axis=1, num_features=4, epsilon=1e-5, renorm=True, renorm_clipping=CLIP)
    keras.load_state_dict(torch_family.state_dict(), strict=True)
    keras.eval()
    x = _bn_input(2, 7)
    torch.testing.assert_close(keras(x), torch_family(x), rtol=1e-6, atol=1e-6)
    back = bnkit.BatchNorm2d(4, renorm=True, renorm_clipping=CLIP)
    back.load_state_dict(keras.state_dict(), strict=True)
    for key, value in keras.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# ---- 10. norm_layer=, converters, _BatchNorm recipes ----------------------------------------

ARCHITECTURES = {"resnet": ResNet, "efficientnet": EfficientNetLike}


def _image(step: int = 0, size: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(300 + step)
    return torch.randn(size, 3, 8, 8, generator=g) * 1.3 + 0.4


def _trained_arch(arch: str, norm=None, steps: int = 2) -> nn.Module:
    model = ARCHITECTURES[arch](norm_layer=norm or nn.BatchNorm2d)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        model(_image(step)).square().mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_norm_layer_bnkit_equals_torch_exactly(arch):
    reference = ARCHITECTURES[arch]()
    ours = ARCHITECTURES[arch](norm_layer=bnkit.BatchNorm2d)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert len(bn_layers(ours)) == len(bn_layers(reference)) > 4
    assert all(type(m) is bnkit.BatchNorm2d for m in bn_layers(ours))
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (reference, ours)]
    for step in range(3):
        outs = []
        for model, opt in zip((reference, ours), opts):
            model.train()
            opt.zero_grad()
            out = model(_image(step))
            out.square().mean().backward()
            outs.append(out)
        assert torch.equal(outs[0], outs[1])
        for (name, p), q in zip(reference.named_parameters(), ours.parameters()):
            assert torch.equal(p.grad, q.grad), name
        for opt in opts:
            opt.step()
        assert_same_state(reference, ours)
    reference.eval(), ours.eval()
    assert torch.equal(reference(_image(9)), ours(_image(9)))


def _all_modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_convert_batchnorm_plain(arch):
    model = _trained_arch(arch)
    twin = copy.deepcopy(model)
    bn_layers(model)[1].eval()  # a frozen BN inside a training model keeps its own mode
    bn_layers(twin)[1].eval()
    modes = _all_modes(model)
    params = list(model.parameters())
    buffers = list(model.buffers())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    converted = bnkit.convert_batchnorm(model)
    assert converted is model
    assert all(type(m) is bnkit.BatchNorm2d for m in bn_layers(model))
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert _all_modes(model) == modes
    assert all(p is q for p, q in zip(params, model.parameters())) and len(params) == len(list(model.parameters()))
    assert all(b is c for b, c in zip(buffers, model.buffers()))
    # eval outputs unchanged, exactly
    model.eval(), twin.eval()
    assert torch.equal(model(_image(8)), twin(_image(8)))
    # training continues with the old optimizer, exactly as the torch model would
    model.train(), twin.train()
    bn_layers(model)[1].eval(), bn_layers(twin)[1].eval()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    for o, m in ((opt, model), (twin_opt, twin)):
        o.zero_grad()
        m(_image(3)).square().mean().backward()
        o.step()
    assert_same_state(model, twin)
    # ... and back
    before = list(model.parameters())
    assert bnkit.to_torch_batchnorm(model) is model
    assert all(type(m) is nn.BatchNorm2d for m in bn_layers(model))
    assert all(p is q for p, q in zip(before, model.parameters()))
    model.eval(), twin.eval()
    assert torch.equal(model(_image(8)), twin(_image(8)))
    assert_same_state(model, twin)


@pytest.mark.parametrize("options", [{"renorm": True}, {"renorm": True, "renorm_clipping": CLIP},
                                     {"virtual_batch_size": 2}], ids=["renorm", "renorm-clip", "ghost"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_convert_batchnorm_with_options_keeps_eval_outputs(arch, options):
    model = _trained_arch(arch).eval()
    twin = copy.deepcopy(model)
    bnkit.convert_batchnorm(model, **options)
    for layer in bn_layers(model):
        assert type(layer) is bnkit.BatchNorm2d
        assert layer.renorm == bool(options.get("renorm")) and layer.virtual_batch_size == options.get("virtual_batch_size")
    assert not model.training
    torch.testing.assert_close(model(_image(8)), twin(_image(8)), rtol=1e-6, atol=1e-6)
    model.train()
    out = model(_image(4))  # and it trains
    assert torch.isfinite(out).all()


def _renorm_in_stage(model: nn.Module) -> list[str]:
    """Convert the BN layers of the second stage to renorm (the rest plain bnkit); returns their names."""
    stage = model.layers[1] if isinstance(model, ResNet) else model.blocks[1]
    prefix = "layers.1." if isinstance(model, ResNet) else "blocks.1."
    bnkit.convert_batchnorm(stage, renorm=True, renorm_clipping=CLIP)
    bnkit.convert_batchnorm(model)
    return [prefix + n for n, m in stage.named_modules() if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_to_torch_batchnorm_names_renorm_layers(arch):
    model = _trained_arch(arch).eval()
    renorm_names = _renorm_in_stage(model)
    plain_names = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and n not in renorm_names]
    assert renorm_names and plain_names
    types_before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError) as info:
        bnkit.to_torch_batchnorm(model)
    message = str(info.value)
    for name in renorm_names:
        assert re.search(rf"(?<![\w.]){re.escape(name)} \(", message), (name, message)
    for name in plain_names:
        assert not re.search(rf"(?<![\w.]){re.escape(name)} \(", message), (name, message)
    assert [type(m) for m in model.modules()] == types_before, "nothing is replaced on refusal"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_convert_sync_batchnorm_keeps_renorm(arch):
    model = _trained_arch(arch)
    renorm_names = _renorm_in_stage(model)
    ghost = bnkit.BatchNorm2d(bn_layers(model)[0].num_features, virtual_batch_size=2)
    ghost.load_state_dict(bn_layers(model)[0].state_dict())
    first_name = next(n for n, m in model.named_modules() if m is bn_layers(model)[0])
    parent, _, leaf = first_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, ghost)
    reference = copy.deepcopy(model)

    synced = bnkit.convert_sync_batchnorm(copy.deepcopy(model))
    layers = dict((n, m) for n, m in synced.named_modules() if isinstance(m, _BatchNorm))
    for name, layer in layers.items():
        if name == first_name:  # a ghost batch is part of one process' batch: stays per-process
            assert not layer.synchronized and layer.virtual_batch_size == 2
            continue
        assert isinstance(layer, bnkit.BatchNorm2d) and layer.synchronized, name
        assert layer.renorm == (name in renorm_names), name
        if layer.renorm:
            assert layer.renorm_clipping == CLIP
    # single process: synchronized statistics are the local ones
    for mode, step in ((True, 0), (True, 1), (False, 2)):
        synced.train(mode), reference.train(mode)
        torch.testing.assert_close(synced(_image(step)), reference(_image(step)), rtol=1e-5, atol=1e-5)
        assert_same_state(reference, synced, exact=False, rtol=1e-5, atol=1e-6)

    # torch's converter turns every _BatchNorm into its plain SyncBatchNorm: renorm is gone.
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    converted = [m for n, m in theirs.named_modules() if n in renorm_names]
    assert converted and all(type(m) is nn.SyncBatchNorm for m in converted)
    assert not any("running_stddev" in k or "renorm" in k for k in theirs.state_dict())


def test_convert_sync_batchnorm_keras_family():
    model = train_steps(ConvNet(norm_layer("keras-renorm", 2)), "convnet")
    reference = copy.deepcopy(model)
    synced = bnkit.convert_sync_batchnorm(copy.deepcopy(model))
    for layer in bn_layers(synced):
        assert isinstance(layer, bnkit.BatchNormalization) and layer.synchronized and layer.renorm
    for mode in (True, False):
        synced.train(mode), reference.train(mode)
        x = batch("convnet", 5)
        torch.testing.assert_close(synced(x), reference(x), rtol=1e-5, atol=1e-5)
        assert_same_state(reference, synced, exact=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["torch", "torch-renorm", "torch-ghost", "nn"])
def test_freeze_batchnorm_recipe(norm):
    """``for m in model.modules(): if isinstance(m, _BatchNorm): m.eval(); m.weight.requires_grad_(False)``."""
    created: list[nn.Module] = []
    factory = (lambda c: nn.BatchNorm2d(c)) if norm == "nn" else norm_layer(norm, 2)

    def counting(c: int) -> nn.Module:
        created.append(factory(c))
        return created[-1]

    model = ResNet(norm_layer=counting)
    model.train()
    model(_image(0))  # non-trivial statistics
    frozen = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
            frozen.append(m)
    assert len(frozen) == len(created) == 6 and all(any(m is c for c in created) for m in frozen)
    before = copy.deepcopy(model.state_dict())
    # frozen layers normalise with their running statistics: the whole model in eval computes the same
    out = model(_image(1))
    torch.testing.assert_close(out, copy.deepcopy(model).eval()(_image(1)), rtol=0, atol=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.zero_grad()
    out.square().mean().backward()
    opt.step()
    after = model.state_dict()
    for layer_name, layer in model.named_modules():
        if isinstance(layer, _BatchNorm):
            assert layer.weight.grad is None and layer.bias.grad is None
            keys = [k for k in after if k.startswith(layer_name + ".") and k.count(".") == layer_name.count(".") + 1]
            assert len(keys) >= 5
            for key in keys:
                assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_convert_batchnorm_sync_layers_round_trip():
    """nn.SyncBatchNorm becomes bnkit.SyncBatchNorm and back (single process: plain statistics)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_trained_arch("resnet")).eval()
    twin = copy.deepcopy(model)
    bnkit.convert_batchnorm(model)
    assert all(type(m) is bnkit.SyncBatchNorm and m.synchronized for m in bn_layers(model))
    assert torch.equal(model(_image(8)), twin(_image(8)))
    model.train(), twin.train()
    torch.testing.assert_close(model(_image(2)), twin(_image(2)), rtol=1e-5, atol=1e-5)
    assert_same_state(model, twin, exact=False, rtol=1e-5, atol=1e-6)
    bnkit.to_torch_batchnorm(model)
    assert all(type(m) is nn.SyncBatchNorm for m in bn_layers(model))
    model.eval(), twin.eval()  # (the synchronized training step rounded its statistics differently)
    torch.testing.assert_close(model(_image(8)), twin(_image(8)), rtol=1e-5, atol=1e-5)
