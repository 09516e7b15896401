"""Surgery: insert_batch_norm (placements, calibration that preserves outputs) and
fold_batch_norm (exact folds after real training, reasons for what cannot fold), on
nn.Sequential models and on torch.fx-traced models, plus the tensor-level fold math."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import bnkit
from bnkit.models import vgg16
from bnkit.surgery import fold_batch_norm, fold_into_next, fold_into_previous, insert_batch_norm

from ._torch_models import ResNet

BN = bnkit.BatchNormalization


def _rel(expected: Tensor, actual: Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    return ((expected - actual).abs().max() / expected.abs().max()).item()


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[tuple[str, str, bool]]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modules = [(name, type(m).__name__, m.training) for name, m in model.named_modules()]
    return state, modules


def _assert_unchanged(model: nn.Module, snapshot: tuple[dict[str, Tensor], list[tuple[str, str, bool]]]) -> None:
    state, modules = _snapshot(model)
    assert modules == snapshot[1]
    assert state.keys() == snapshot[0].keys()
    for key, value in state.items():
        assert torch.equal(value, snapshot[0][key]), key


def _train(model: nn.Module, x: Tensor, steps: int = 4) -> nn.Module:
    """A few SGD steps in train mode so running statistics and gamma/beta are not the identity."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (model(x) - 1.0).square().mean().backward()
        opt.step()
    return model.eval()


def _children(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_children()]


def _graph_calls(model: fx.GraphModule) -> list[str]:
    """Module targets and function names of the graph, in execution order."""
    calls = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            calls.append(str(node.target))
        elif node.op in ("call_function", "call_method"):
            calls.append(getattr(node.target, "__name__", str(node.target)))
    return calls


class TinyResNet(nn.Module):
    """conv -> relu -> [conv -> relu -> conv] + skip -> relu -> pool -> linear, functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        y = torch.relu(self.conv1(x))
        x = (x + self.conv2(y)).relu()
        return self.head(x.mean(dim=(2, 3)))


class ResBN(nn.Module):
    """A traced model with one BN that folds back, one whose conv output also feeds a skip,
    and one after an activation that folds forward into a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.5)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), BN(axis=1, momentum=0.5)
        self.bn2, self.conv2 = BN(axis=1, momentum=0.5), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.conv0(x)))
        y = self.conv1(x)
        x = F.relu(self.bn1(y) + y)
        return self.conv2(self.bn2(x)).mean(dim=(2, 3))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def _images(n: int, seed: int = 0, size: int = 12, dtype: torch.dtype = torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=generator) * 2.0 + 0.5).to(dtype)


# ---- insert: placements ----------------------------------------------------------------
@pytest.mark.parametrize("placement", ["before_activation", "after_activation"])
def test_insert_on_vgg16_matches_the_builder_layout(placement: str) -> None:
    plain = vgg16(input_shape=(3, 32, 32), width=0.25)
    new, report = insert_batch_norm(plain, placement=placement, layer_types=nn.Conv2d)
    reference = vgg16(input_shape=(3, 32, 32), width=0.25, batch_norm=placement)
    assert _children(new) == _children(reference)
    assert new.state_dict().keys() == reference.state_dict().keys()
    assert isinstance(new, nn.Sequential) and len(report.insertions) == 13
    first = report.insertions[0]
    assert (first.name, first.layer, first.placement) == ("block1_conv1_bn", "block1_conv1", placement)
    assert first.after == ("block1_conv1" if placement == "before_activation" else "block1_conv1_relu")
    bn = new.block1_conv1_bn
    assert isinstance(bn, BN) and bn.axis == 1 and bn.num_features == 16
    assert torch.equal(bn.running_var, torch.ones(16)) and torch.equal(bn.weight, torch.ones(16))
    assert "block1_conv1_bn" in str(report) and placement in str(report)


def test_insert_reports_layers_without_activation_and_passes_bn_kwargs() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3), nn.Softmax(dim=1))
    new, report = insert_batch_norm(model, placement="after_activation", momentum=0.9, epsilon=1e-5,
                                    include_output=True)
    assert _children(new) == [("0", "Flatten"), ("1", "Linear"), ("2", "Tanh"), ("1_bn", "BatchNormalization"),
                              ("3", "Linear"), ("3_bn", "BatchNormalization"), ("4", "Softmax")]
    assert [i.placement for i in report.insertions] == ["after_activation", "after_layer"]
    assert report.insertions[1].note == "no activation follows"
    assert new[3].momentum == 0.9 and new[3].epsilon == 1e-5 and new[5].num_features == 3
    assert "after_layer" in str(report)


def test_insert_in_nested_sequentials_goes_into_the_right_container() -> None:
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU()))
    new, report = insert_batch_norm(model, placement="after_activation")
    assert report.names == ["1.0_bn", "1.1_bn"]
    assert _children(new[0]) == [("0", "Conv2d")]
    assert _children(new[1]) == [("0", "ReLU"), ("0_bn", "BatchNormalization"), ("1", "Conv2d"), ("2", "ReLU"),
                                 ("1_bn", "BatchNormalization")]
    assert [i.layer for i in report.insertions] == ["0.0", "1.1"]


@pytest.mark.parametrize("placement, expected", [
    ("before_activation", ["stem", "stem_bn", "relu", "conv1", "conv1_bn", "relu", "conv2", "conv2_bn",
                           "add", "relu", "mean", "head", "head_bn"]),
    ("after_activation", ["stem", "relu", "stem_bn", "conv1", "relu", "conv1_bn", "conv2", "conv2_bn",
                          "add", "relu", "mean", "head", "head_bn"]),
])
def test_insert_on_traced_model_recognises_functional_activations(placement: str, expected: list[str]) -> None:
    new, report = insert_batch_norm(TinyResNet(), placement=placement, include_output=True)
    assert isinstance(new, fx.GraphModule) and type(new).__name__ == "TinyResNet"
    assert _graph_calls(new) == expected
    assert [i.placement for i in report.insertions] == [placement, placement, "after_layer", "after_layer"]
    assert new.get_submodule("stem_bn").num_features == 8 and new.get_submodule("head_bn").num_features == 5
    assert new(_images(2)).shape == (2, 5)


def test_insert_skips_layers_that_already_have_batch_norm() -> None:
    model = vgg16(input_shape=(3, 32, 32), width=0.125, batch_norm="after_activation", classifier_activation=None)
    new, report = insert_batch_norm(model)
    assert report.names == ["fc1_bn", "fc2_bn"]
    assert len(report.skipped) == 14 and "block1_conv1_bn" in report.skipped[0][1]
    assert report.skipped[-1][0] == "predictions" and "output layer" in report.skipped[-1][1]


def test_insert_keeps_the_callers_model_and_modes() -> None:
    model = vgg16(input_shape=(3, 32, 32), width=0.125).eval()
    before = _snapshot(model)
    new, _ = insert_batch_norm(model, calibration_data=[_images(4, size=32)])
    _assert_unchanged(model, before)
    assert not any(m.training for m in new.modules())
    fresh, _ = insert_batch_norm(model.train())
    assert all(m.training for m in fresh.modules())


# ---- insert: calibration ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("placement", ["before_activation", "after_activation"])
def test_calibration_preserves_vgg16_outputs(placement: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = vgg16(input_shape=(3, 32, 32), width=0.25, classifier_activation=None).to(dtype).eval()
    batches = [_images(n, seed=n, size=32, dtype=dtype) for n in (3, 5, 8)]
    new, report = insert_batch_norm(model, placement=placement, calibration_data=batches, include_output=True)
    assert report.calibration_batches == 3 and len(report.insertions) == 16
    test = _images(6, seed=99, size=32, dtype=dtype)
    with torch.no_grad():
        assert _rel(model(test), new.eval()(test)) <= 1e-5
    assert new.block1_conv1_bn.running_mean.dtype == dtype


def test_calibration_records_exact_pooled_moments() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 6))
    batches = [_images(n, seed=n) for n in (1, 3, 7)]  # unequal sizes: pooling is not averaging
    new, _ = insert_batch_norm(model, placement="after_activation", calibration_data=batches, epsilon=0.01)
    with torch.no_grad():
        seen = model[1](model[0](torch.cat(batches))).double()
    mean, var = seen.mean(dim=(0, 2, 3)), seen.var(dim=(0, 2, 3), unbiased=False)
    bn = new.get_submodule("0_bn")
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.weight.double(), (var + 0.01).sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.bias.double(), mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("placement", ["before_activation", "after_activation"])
def test_calibration_preserves_residual_net_outputs(placement: str) -> None:
    torch.manual_seed(1)
    model = TinyResNet().eval()
    batches = [(_images(4, seed=s),) for s in range(3)]  # tuples are positional arguments
    new, report = insert_batch_norm(model, placement=placement, calibration_data=batches, renorm=True,
                                    include_output=True)
    test = _images(5, seed=42)
    with torch.no_grad():
        assert _rel(model(test), new(test)) <= 1e-5
    assert report.calibration_batches == 3 and isinstance(new, fx.GraphModule)
    folded, fold_report = fold_batch_norm(new)  # fx round trip: BNs after an activation stay here
    if placement == "before_activation":
        assert len(fold_report.folded) == 4 and not fold_report.not_folded
    else:
        assert [n.bn for n in fold_report.not_folded] == ["stem_bn", "conv1_bn"]
        assert "goes to 2 consumers" in fold_report.not_folded[0].reason
        assert "next layer conv2 has padding 1" in fold_report.not_folded[1].reason
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5


def test_insert_then_fold_round_trips_vgg16() -> None:
    model = vgg16(input_shape=(3, 32, 32), width=0.125, classifier_activation=None).eval()
    new, _ = insert_batch_norm(model, calibration_data=[_images(8, size=32)])
    folded, report = fold_batch_norm(new)
    assert len(report.folded) == 15 and not report.not_folded
    assert _children(folded) == _children(model)
    test = _images(4, seed=3, size=32)
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5


# ---- fold ------------------------------------------------------------------------------
FOLD_CASES: list[tuple[str, Callable[[], nn.Module], list[tuple[str, str, str]], list[tuple[str, str]]]] = [
    ("conv_bn_relu", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BN(axis=1, momentum=0.5), nn.ReLU(),
                                           nn.Conv2d(8, 4, 3)),
     [("1", "0", "previous")], []),
    ("conv_relu_bn_conv_pad0", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BN(axis=1, momentum=0.5),
                                                     nn.Conv2d(8, 4, 3)),
     [("2", "3", "next")], []),
    ("conv_relu_bn_conv_pad1", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BN(axis=1, momentum=0.5),
                                                     nn.Conv2d(8, 4, 3, padding=1)),
     [], [("2", "next layer 3 has padding 1")]),
    ("reflect_padding", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BN(axis=1, momentum=0.5),
                                              nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect")),
     [("2", "3", "next")], []),
    ("grouped_next", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BN(axis=1, momentum=0.5),
                                           nn.Conv2d(8, 4, 3, groups=2)),
     [], [("2", "groups=2")]),
    ("linear_bn", lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 6), BN(axis=1, momentum=0.5), nn.ReLU(),
                                        nn.Linear(6, 3)),
     [("2", "1", "previous")], []),
    ("torch_bn2d", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, momentum=0.5), nn.ReLU(),
                                         nn.BatchNorm2d(8, momentum=0.5), nn.Conv2d(8, 4, 1)),
     [("1", "0", "previous"), ("3", "4", "next")], []),
    ("renorm", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), BN(axis=1, momentum=0.5, renorm=True,
                                                            renorm_clipping={"rmax": 2.0, "dmax": 1.0}), nn.ReLU()),
     [("1", "0", "previous")], []),
    ("ghost", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BN(axis=1, momentum=0.5, virtual_batch_size=4),
                                    nn.Conv2d(8, 4, 1)),
     [("2", "3", "next")], []),
    ("no_affine_no_bias", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), BN(axis=1, momentum=0.5, scale=False,
                                                                                    center=False), nn.ReLU()),
     [("1", "0", "previous")], []),
    ("bn_bn_conv", lambda: nn.Sequential(nn.ReLU(), BN(axis=1, momentum=0.5), BN(axis=1, momentum=0.5),
                                         nn.Conv2d(3, 4, 1)),
     [("2", "3", "next"), ("1", "3", "next")], []),
    ("untracked_and_channels_last", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False),
                                                          nn.Conv2d(8, 8, 1), BN(axis=-1, momentum=0.5, num_features=10)),
     [], [("1", "track_running_stats=False"), ("3", "axis=-1")]),
]


@pytest.mark.parametrize("make, folds, left", [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES])
def test_fold_after_training_is_exact(make: Callable[[], nn.Module], folds: list[tuple[str, str, str]],
                                      left: list[tuple[str, str]]) -> None:
    torch.manual_seed(0)
    model = _train(make(), _images(8))
    before = _snapshot(model)
    folded, report = fold_batch_norm(model)
    _assert_unchanged(model, before)
    assert [(f.bn, f.into, f.direction) for f in report.folded] == folds
    assert [n.bn for n in report.not_folded] == [name for name, _ in left]
    for item, (_, fragment) in zip(report.not_folded, left):
        assert fragment in item.reason
    remaining = [name for name, m in folded.named_children() if isinstance(m, (BN, nn.BatchNorm2d))]
    assert remaining == [name for name, _ in left]
    test = _images(6, seed=5)
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5
    assert str(report).startswith(f"fold_batch_norm: folded {len(folds)} of {len(folds) + len(left)}")


def test_fold_traced_model_checks_other_users() -> None:
    torch.manual_seed(0)
    model = _train(ResBN(), _images(8))
    folded, report = fold_batch_norm(model)
    assert [(f.bn, f.into, f.direction) for f in report.folded] == [("bn0", "conv0", "previous"),
                                                                   ("bn2", "conv2", "next")]
    assert [n.bn for n in report.not_folded] == ["bn1"]
    assert "output of conv1 is also used by add" in report.not_folded[0].reason
    assert isinstance(folded, fx.GraphModule) and "bn1" in dict(folded.named_children())
    assert not hasattr(folded, "bn0") and "bn1" in str(report)
    test = _images(5, seed=7)
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5


def test_fold_vgg16_bn_after_training() -> None:
    torch.manual_seed(0)
    model = vgg16(input_shape=(3, 32, 32), width=0.125, batch_norm="before_activation", classifier_activation=None,
                  bn_kwargs={"momentum": 0.5})
    model = _train(model, _images(8, size=32), steps=2)
    folded, report = fold_batch_norm(model)
    assert len(report.folded) == 13 and not any(isinstance(m, BN) for m in folded.modules())
    test = _images(4, seed=1, size=32)
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5


class TorchFamily(nn.Module):
    """bnkit's PyTorch family in a traced model: plain, renorm and ghost BN, 2-D and 1-D."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3), bnkit.BatchNorm2d(8, momentum=0.5, renorm=True,
                                                                     renorm_clipping={"rmax": 2.0, "dmax": 1.0})
        self.bn1, self.conv1 = bnkit.BatchNorm2d(8, momentum=0.5, virtual_batch_size=4), nn.Conv2d(8, 4, 1)
        self.head, self.bn2 = nn.Linear(4, 3), bnkit.BatchNorm1d(3, momentum=0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.bn1(F.relu(self.bn0(self.conv0(x)))))
        return self.bn2(self.head(x.mean(dim=(2, 3))))


@pytest.mark.parametrize("traced", [False, True])
def test_fold_handles_the_bnkit_torch_family_like_nn_batchnorm(traced: bool) -> None:
    torch.manual_seed(0)
    if traced:
        model = _train(TorchFamily(), _images(8))
        expected = [("bn0", "conv0", "previous"), ("bn1", "conv1", "next"), ("bn2", "head", "previous")]
    else:
        model = _train(nn.Sequential(nn.Conv2d(3, 8, 3), bnkit.BatchNorm2d(8, momentum=0.5, renorm=True), nn.ReLU(),
                                     bnkit.BatchNorm2d(8, momentum=0.5, virtual_batch_size=4), nn.Conv2d(8, 4, 1),
                                     nn.Flatten(), nn.Linear(400, 3), bnkit.BatchNorm1d(3, momentum=0.5),
                                     bnkit.SyncBatchNorm(3, momentum=0.5, track_running_stats=False)), _images(8))
        expected = [("1", "0", "previous"), ("3", "4", "next"), ("7", "6", "previous")]
    folded, report = fold_batch_norm(model)
    assert [(f.bn, f.into, f.direction) for f in report.folded] == expected
    left = [(n.bn, "track_running_stats=False" in n.reason) for n in report.not_folded]
    assert left == ([] if traced else [("8", True)])
    assert sum(isinstance(m, bnkit.layers.TorchBatchNorm) for m in folded.modules()) == (0 if traced else 1)
    test = _images(6, seed=5)
    with torch.no_grad():
        assert _rel(model(test), folded(test)) <= 1e-5


def test_insert_skips_layers_followed_by_the_bnkit_torch_family() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnkit.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    new, report = insert_batch_norm(model)
    assert report.names == ["3_bn"] and report.skipped == (("0", "already followed by batch norm 1"),)


def test_fold_without_batch_norm_returns_a_copy() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    folded, report = fold_batch_norm(model)
    assert folded is not model and not report.folded and not report.not_folded
    assert _children(folded) == _children(model)


# ---- tensor-level fold math ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias, affine", [(True, True), (False, False), (False, True)])
def test_tensor_folds_match_composition(dtype: torch.dtype, with_bias: bool, affine: bool) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64) if with_bias else None
    x = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    for channels, fold in ((5, fold_into_previous), (4, fold_into_next)):
        mean, var = torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.1
        gamma = torch.randn(channels, generator=g) if affine else None
        beta = torch.randn(channels, generator=g) if affine else None
        new_w, new_b = fold(weight.to(dtype), None if bias is None else bias.to(dtype),
                            mean.to(dtype), var.to(dtype), None if gamma is None else gamma.to(dtype),
                            None if beta is None else beta.to(dtype), 1e-3)
        assert new_w.dtype == dtype and new_b.dtype == dtype and new_b.shape == (5,)

        def bn(t: Tensor) -> Tensor:
            return F.batch_norm(t, mean.double(), var.double(), None if gamma is None else gamma.double(),
                                None if beta is None else beta.double(), False, 0.0, 1e-3)

        w, b = weight.to(dtype).double(), None if bias is None else bias.to(dtype).double()
        expected = bn(F.conv2d(x, w, b)) if fold is fold_into_previous else F.conv2d(bn(x), w, b)
        tolerance = {torch.float16: 5e-3, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
        assert _rel(expected, F.conv2d(x, new_w.double(), new_b.double())) <= tolerance


def test_tensor_fold_errors_name_the_argument() -> None:
    w = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"`bn_var` must have shape \(3,\).*\(4,\)"):
        fold_into_previous(w, None, torch.zeros(3), torch.ones(4), None, None, 1e-3)
    with pytest.raises(ValueError, match=r"`gamma` must have shape \(2,\).*\(3,\)"):
        fold_into_next(w, None, torch.zeros(2), torch.ones(2), torch.ones(3), None, 1e-3)
    with pytest.raises(ValueError, match="`eps`.*-1"):
        fold_into_next(w, None, torch.zeros(2), torch.ones(2), None, None, -1)


# ---- errors ----------------------------------------------------------------------------
def _conv_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


ERRORS: list[tuple[str, Callable[[], Any], type, list[str]]] = [
    ("placement", lambda: insert_batch_norm(_conv_net(), placement="middle"), ValueError, ["`placement`", "'middle'"]),
    ("layer_types", lambda: insert_batch_norm(_conv_net(), layer_types="conv"), TypeError, ["`layer_types`", "'conv'"]),
    ("activation_types", lambda: insert_batch_norm(_conv_net(), activation_types=(nn.ReLU, 3)), TypeError,
     ["`activation_types`", "3"]),
    ("no_layers", lambda: insert_batch_norm(nn.Sequential(nn.ReLU())), ValueError, ["No layer", "Conv2d", "Sequential"]),
    ("axis_kwarg", lambda: insert_batch_norm(_conv_net(), axis=2), TypeError, ["`axis`", "axis=2"]),
    ("bn_kwarg", lambda: insert_batch_norm(_conv_net(), momentum=2.0), ValueError, ["`momentum`", "2.0"]),
    ("calibration_tensor", lambda: insert_batch_norm(_conv_net(), calibration_data=_images(2)), TypeError,
     ["`calibration_data`", "Tensor"]),
    ("calibration_empty", lambda: insert_batch_norm(_conv_net(), calibration_data=[]), ValueError,
     ["`calibration_data`", "empty"]),
    ("calibration_item", lambda: insert_batch_norm(_conv_net(), calibration_data=["x"]), TypeError,
     ["`calibration_data`", "str"]),
    ("calibration_scale", lambda: insert_batch_norm(_conv_net(), calibration_data=[_images(2)], scale=False),
     ValueError, ["`scale=True`", "scale=False"]),
    ("insert_model_type", lambda: insert_batch_norm("net"), TypeError, ["`model`", "str"]),
    ("insert_untraceable", lambda: insert_batch_norm(DataDependent()), TypeError,
     ["DataDependent", "torch.fx could not trace", "control flow"]),
    ("fold_training", lambda: fold_batch_norm(_conv_net()), ValueError, ["model.eval()", "training=True"]),
    ("fold_untraceable", lambda: fold_batch_norm(DataDependent().eval()), TypeError, ["DataDependent", "TraceError"]),
    ("fold_model_type", lambda: fold_batch_norm(None), TypeError, ["`model`", "NoneType"]),
]


@pytest.mark.parametrize("call, error, fragments", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_the_argument_and_the_received_value(call: Callable[[], Any], error: type,
                                                        fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


# ---- insert: the output layer is left alone unless asked -----------------------------------
class TorchvisionVGG11(nn.Module):
    """torchvision's vgg11 layout (features / avgpool / flatten / classifier), narrow."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        cfg, layers, inp = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"], [], 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(inp, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                inp = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(inp * 4, 64), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(64, 64),
                                        nn.ReLU(True), nn.Dropout(0.5), nn.Linear(64, classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class TimmStyleHead(nn.Module):
    """timm's ResNet head: global pool, flatten, functional dropout, fc; plain convs before it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(self.act1(self.conv1(x))))
        x = self.global_pool(x).flatten(1)
        x = F.dropout(x, p=0.2, training=self.training)
        return F.softmax(self.fc(x), dim=1)


def test_insert_leaves_torchvision_vgg11_logits_alone() -> None:
    model = TorchvisionVGG11().eval()
    new, report = insert_batch_norm(model)
    assert [i.layer for i in report.insertions] == [f"features.{k}" for k in (0, 3, 6, 8, 11, 13, 16, 18)] + [
        "classifier.0", "classifier.3"]
    assert report.skipped == (("classifier.6", "output layer: its output is the model's output "
                                               "(include_output=True normalises it too)"),)
    assert "skipped classifier.6: output layer" in str(report) and "(1 layer skipped" in str(report)
    assert not any(name.startswith("classifier.6_bn") for name, _ in new.named_modules())
    assert new(_images(2, size=32)).shape == (2, 7)
    asked, asked_report = insert_batch_norm(model, include_output=True)
    assert asked_report.names[-1] == "classifier.6_bn" and not asked_report.skipped
    assert asked.get_submodule("classifier.6_bn").num_features == 7


def test_insert_sees_the_output_layer_through_flatten_dropout_and_softmax() -> None:
    new, report = insert_batch_norm(TimmStyleHead(), placement="after_activation")
    assert report.names == ["conv1_bn", "conv2_bn"]
    assert report.skipped[0][0] == "fc" and "through softmax" in report.skipped[0][1]
    assert new(_images(2)).shape == (2, 5)
    sequential = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.1), nn.Linear(400, 3),
                               nn.Dropout(0.1), nn.LogSoftmax(dim=1))
    _, report = insert_batch_norm(sequential)
    assert report.names == ["0_bn"] and report.skipped[0][0] == "4" and "through 5, 6" in report.skipped[0][1]


def test_insert_on_a_timm_style_resnet_adds_nothing_after_fc() -> None:
    model = ResNet().eval()  # every conv already followed by BN: only fc was left, the logits
    new, report = insert_batch_norm(model)
    assert report.names == []
    assert report.skipped[-1][0] == "fc" and "output layer" in report.skipped[-1][1]
    assert all("already followed by batch norm" in reason for _, reason in report.skipped[:-1])
    test = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(new(test), model(test))


def test_a_layer_that_feeds_more_than_the_output_is_not_the_output_layer() -> None:
    class Features(nn.Module):  # a feature extractor ending in ReLU, and a layer whose output is also reused
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            y = self.a(x)
            return y, F.relu(self.b(y))

    _, report = insert_batch_norm(Features())
    assert report.names == ["b_bn"] and report.skipped[0][0] == "a"  # a's output is returned as it is
    _, report = insert_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()))
    assert report.names == ["0_bn", "2_bn"] and not report.skipped


def test_include_output_must_be_a_bool() -> None:
    with pytest.raises(TypeError) as info:
        insert_batch_norm(_conv_net(), include_output="yes")
    assert "`include_output`" in str(info.value) and "'yes'" in str(info.value)
