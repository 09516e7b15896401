"""bnkit.summary: published parameter counts, rows, styles, any-module cases, errors, golden tables.

The counts are published facts (Keras' own summaries, DESIGN.md), written here as literals.
Golden tables live in ``tests/golden/``; re-record them with ``BNKIT_UPDATE_GOLDEN=1``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import bnkit
from bnkit.models import vgg16, vgg19
from bnkit.summary import Row, Summary, summary

GOLDEN = Path(__file__).resolve().parent / "golden"
VGG_INPUT = (3, 224, 224)


def tiny_cnn() -> nn.Sequential:
    """The Keras model of seed 001, layer for layer (momentum 0.15 as in the seed)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        bnkit.BatchNormalization(axis=1, momentum=0.15),
        bnkit.Flatten("channels_first"),
        nn.Linear(131072, 100), nn.ReLU(),
        nn.Linear(100, 10), nn.Softmax(dim=1),
    )


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/<name>``; record it when BNKIT_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    if os.environ.get("BNKIT_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8", newline="\n")
    assert path.exists(), f"missing golden file {path}; record it with BNKIT_UPDATE_GOLDEN=1"
    assert text + "\n" == path.read_text(encoding="utf-8")


def counts(s: Summary) -> tuple[int, int, int]:
    return s.total, s.trainable, s.non_trainable


# ---- published numbers ----------------------------------------------------------------
@pytest.mark.parametrize("build, batch_norm, style, expected", [
    (vgg16, None, "keras", (138_357_544, 138_357_544, 0)),
    (vgg16, None, "torch", (138_357_544, 138_357_544, 0)),
    (vgg16, "after_activation", "keras", (138_374_440, 138_365_992, 8_448)),
    (vgg16, "after_activation", "torch", (138_365_992, 138_365_992, 0)),
    (vgg19, None, "keras", (143_667_240, 143_667_240, 0)),
    (vgg19, "after_activation", "keras", (143_689_256, 143_678_248, 11_008)),
])
def test_published_vgg_counts(build: Any, batch_norm: str | None, style: str, expected: tuple[int, int, int]) -> None:
    assert counts(summary(build(batch_norm=batch_norm), VGG_INPUT, style=style)) == expected


@pytest.fixture(scope="module")
def tiny() -> nn.Sequential:
    return tiny_cnn()


def test_tiny_cnn_keras_counts_and_rows(tiny: nn.Sequential) -> None:
    s = summary(tiny, (1, 64, 64))
    assert counts(s) == (13_108_758, 13_108_694, 64)
    assert [(r.name, r.type, r.output_shape, r.params, r.trainable, r.depth) for r in s.rows] == [
        ("0", "Conv2d", (None, 32, 64, 64), 320, 320, 1),
        ("1", "ReLU", (None, 32, 64, 64), 0, 0, 1),
        ("2", "BatchNormalization", (None, 32, 64, 64), 128, 64, 1),
        ("3", "Flatten", (None, 131072), 0, 0, 1),
        ("4", "Linear", (None, 100), 13_107_300, 13_107_300, 1),
        ("5", "ReLU", (None, 100), 0, 0, 1),
        ("6", "Linear", (None, 10), 1_010, 1_010, 1),
        ("7", "Softmax", (None, 10), 0, 0, 1),
    ]
    assert s.style == "keras" and s.model_name == "sequential"


def test_tiny_cnn_torch_style_counts_parameters_only(tiny: nn.Sequential) -> None:
    s = summary(tiny, (1, 64, 64), style="torch")
    assert counts(s) == (13_108_694, 13_108_694, 0)
    assert s.rows[2].params == 64 and s.style == "torch"


def test_golden_vgg16_bn_keras_table() -> None:
    s = summary(vgg16(batch_norm="before_activation"), VGG_INPUT)
    assert counts(s) == (138_374_440, 138_365_992, 8_448)
    check_golden("vgg16_bn_keras.txt", str(s))


def test_golden_tiny_cnn_tables(tiny: nn.Sequential) -> None:
    check_golden("tiny_cnn_keras.txt", str(summary(tiny, (1, 64, 64))))
    check_golden("tiny_cnn_torch.txt", str(summary(tiny, (1, 64, 64), style="torch", layout="torch")))


def test_keras2_layout_matches_the_classic_table(tiny: nn.Sequential) -> None:
    lines = summary(tiny, (1, 64, 64)).lines()
    assert lines[:4] == ['Model: "sequential"', "_" * 65, "Layer (type)                 Output Shape              Param #   ",
                         "=" * 65]
    assert lines[4] == "0 (Conv2d)                   (None, 32, 64, 64)        320       "
    assert lines[5] == "_" * 65 and lines[-5] == "=" * 65
    assert lines[-4:] == ["Total params: 13,108,758", "Trainable params: 13,108,694", "Non-trainable params: 64", "_" * 65]
    assert all(len(line) == 65 for line in lines[1:-4])


def test_long_type_names_are_shown_whole_and_the_columns_widen() -> None:
    class AVeryLongModuleClassNameIndeed(nn.Linear):
        pass

    lines = summary(nn.Sequential(AVeryLongModuleClassNameIndeed(2, 3), bnkit.BatchNormalization(axis=1)), (2,)).lines()
    first = "0 (AVeryLongModuleClassNameIndeed)"
    assert lines[4] == first + " " + "(None, 3)".ljust(26) + "9".ljust(10)
    assert lines[6].startswith("1 (BatchNormalization) ")
    assert lines[2] == "Layer (type)".ljust(len(first) + 1) + "Output Shape".ljust(26) + "Param #".ljust(10)
    assert lines[1] == "_" * (len(first) + 1 + 26 + 10) and len({len(line) for line in lines[1:-4]}) == 1


# ---- counting rules -------------------------------------------------------------------
def test_torch_batchnorm2d_counts_four_c_in_keras_style() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    keras, torch_style = summary(model, (3, 10, 10)), summary(model, (3, 10, 10), style="torch")
    assert (keras.rows[1].params, keras.rows[1].trainable) == (32, 16)  # not num_batches_tracked
    assert (torch_style.rows[1].params, torch_style.rows[1].trainable) == (16, 16)
    assert counts(keras) == (256, 240, 16) and counts(torch_style) == (240, 240, 0)


def test_renorm_buffers_count_and_clipping_buffer_does_not() -> None:
    bn = bnkit.BatchNormalization(axis=1, num_features=4, renorm=True)
    s = summary(nn.Sequential(bn), (4,))
    assert (s.rows[0].params, s.rows[0].trainable) == (7 * 4, 2 * 4)


@pytest.mark.parametrize("style", ["keras", "torch"])
def test_bnkit_torch_family_counts_like_nn_batchnorm(style: str) -> None:
    def model(bn2d: Any, bn1d: Any) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(3, 8, 3), bn2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4), bn1d(4))

    ours = summary(model(bnkit.BatchNorm2d, bnkit.BatchNorm1d), (3, 10, 10), style=style)
    native = summary(model(nn.BatchNorm2d, nn.BatchNorm1d), (3, 10, 10), style=style)
    assert ours == native and str(ours) == str(native)
    assert counts(ours) == ((2324, 2300, 24) if style == "keras" else (2300, 2300, 0))  # 2 x (8 + 4) running stats


def test_bnkit_torch_family_renorm_buffers_count_like_the_keras_family() -> None:
    torch_family = summary(nn.Sequential(bnkit.BatchNorm1d(4, renorm=True)), (4,))
    keras_family = summary(nn.Sequential(bnkit.BatchNormalization(axis=1, num_features=4, renorm=True)), (4,))
    assert counts(torch_family) == counts(keras_family) == (7 * 4, 2 * 4, 5 * 4)


def test_frozen_parameters_are_non_trainable_and_non_persistent_buffers_not_counted() -> None:
    class Scaled(nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 2)
            self.register_buffer("cache", torch.zeros(100), persistent=False)
            self.register_buffer("steps", torch.zeros(5, dtype=torch.long))

    model = Scaled()
    model.bias.requires_grad_(False)
    for style in ("keras", "torch"):
        assert counts(summary(model, (3,), style=style)) == (8, 6, 2)


def test_frozen_bnkit_layer_is_all_non_trainable() -> None:
    bn = bnkit.BatchNormalization(axis=1, num_features=4, trainable=False)
    assert counts(summary(nn.Sequential(bn), (4,))) == (16, 0, 16)


# ---- any nn.Module --------------------------------------------------------------------
class Nested(nn.Module):
    """Dotted names, a container owning a parameter, a shared module and an unused one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Module()
        self.block.scale = nn.Parameter(torch.ones(1))
        self.block.inner = nn.Sequential(nn.Linear(4, 4))
        self.alias = self.block.inner  # the same modules under a second name
        self.head = nn.Linear(4, 2)
        self.spare = nn.Linear(7, 7)  # never called

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x).mean(dim=(2, 3))
        x = self.block.inner(x) * self.block.scale
        x = self.alias(x)  # second call of the same Linear
        return self.head(x)


def test_nested_shared_and_unused_modules() -> None:
    # `block` owns a parameter but never runs as a module (its forward is not called)
    s = summary(Nested(), (3, 8, 8))
    assert [(r.name, r.output_shape, r.params, r.depth, r.calls) for r in s.rows] == [
        ("stem.0", (None, 4, 8, 8), 112, 2, 1),
        ("stem.1", (None, 4, 8, 8), 0, 2, 1),
        ("block.inner.0", (None, 4), 20, 3, 2),
        ("head", (None, 2), 10, 1, 1),
        ("block", None, 1, 1, 0),
        ("spare", None, 56, 1, 0),
    ]
    assert s.rows[-1].unused and not s.rows[0].unused
    assert counts(s) == (112 + 20 + 10 + 1 + 56, 199, 0)
    assert "spare (Linear)               (unused)                  56" in str(s)


def test_container_with_own_state_comes_before_its_children() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.zeros(3))
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) * self.alpha

    s = summary(nn.Sequential(nn.ReLU(), Gate()), (3,))
    assert [(r.name, r.type, r.params) for r in s.rows] == [("0", "ReLU", 0), ("1", "Gate", 3), ("1.fc", "Linear", 12)]


def test_shared_module_with_different_shapes_is_multiple_and_tied_weights_count_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.enc, self.dec = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x).flatten(1) + self.conv(x[:, :, :1, :1]).flatten(1).sum()
            return self.dec(self.enc(y))

    s = summary(Tied(), (2, 1, 2))
    assert s.rows[0].output_shape == "multiple" and s.rows[0].calls == 2
    assert [r.params for r in s.rows] == [6, 16, 16] and s.total == 22
    assert "0 (Conv2d)" not in str(s) and "conv (Conv2d)                multiple" in str(s)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Embedding(10, 2)

    def forward(self, x: Tensor, ids: Tensor) -> dict[str, Any]:
        return {"sum": self.a(x) + self.b(ids).sum(1), "pair": (self.a(x), None)}


def test_several_inputs_by_shape_dtype_or_data() -> None:
    s = summary(TwoInputs(), [(3,), (5,)], dtypes=[torch.float32, torch.long], batch_size=2)
    assert [(r.name, r.output_shape, r.calls) for r in s.rows] == [("a", (None, 2), 2), ("b", (None, 5, 2), 1)]
    assert [r.macs for r in s.rows] == [2 * 2 * 3 * 2, 0]  # two calls, 2 rows of 3x2 each
    assert s.input_bytes == 2 * 3 * 4 + 2 * 5 * 8  # float32 and int64 inputs
    data = (torch.randn(2, 3), torch.zeros(2, 5, dtype=torch.long))
    assert summary(TwoInputs(), input_data=data).rows == s.rows
    kwargs = {"x": data[0], "ids": data[1]}
    assert summary(TwoInputs(), input_data=kwargs).rows == s.rows


def test_tuple_and_dict_outputs_give_a_list_of_shapes() -> None:
    class Split(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            return x[:, :1], {"rest": x[:, 1:], "none": None}  # type: ignore[dict-item]

    s = summary(nn.Sequential(nn.Linear(2, 3), Split()), (2,))
    assert s.rows[1].output_shape == [(None, 1), (None, 2)]
    assert "[(None, 1), (None, 2)]" in str(s)


def test_runs_once_in_eval_without_grad_and_restores_modes() -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    model = nn.Sequential(nn.Linear(2, 2), Probe(), nn.Dropout(0.5)).train()
    model[2].eval()
    rng = torch.random.get_rng_state()
    summary(model, (2,))
    assert seen == [(False, False)]
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert torch.equal(rng, torch.random.get_rng_state())  # inputs are zeros, no random draw
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_failing_forward_raises_runtime_error_and_cleans_up() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).train()
    with pytest.raises(RuntimeError, match=r"summary's forward pass.*\[\(1, 5\)\]") as info:
        summary(model, (5,))
    assert info.value.__cause__ is not None
    assert model.training and not model[0]._forward_hooks


def test_print_fn_receives_each_line_and_library_prints_nothing(tiny: nn.Sequential, capsys: Any) -> None:
    lines: list[str] = []
    s = summary(tiny, (1, 64, 64), print_fn=lines.append)
    assert lines == str(s).split("\n") == s.lines()
    summary(tiny, (1, 64, 64))
    assert capsys.readouterr().out == ""


def test_torch_layout_is_offered_for_either_style(tiny: nn.Sequential) -> None:
    s = summary(tiny, (1, 64, 64), layout="torch")
    text = str(s)
    assert "2 (BatchNormalization)" in text and "[-1, 32, 64, 64]" in text and "13,107,300" in text
    assert s.lines(layout="keras2")[0] == 'Model: "sequential"'
    assert isinstance(s.rows[0], Row)


# ---- errors ---------------------------------------------------------------------------
ERRORS = [
    (ValueError, "style", "'tf'", {"input_shape": (2,), "style": "tf"}),
    (ValueError, "layout", "'keras3'", {"input_shape": (2,), "layout": "keras3"}),
    (ValueError, "input_shape", "(2, -1)", {"input_shape": (2, -1)}),
    (ValueError, "input_shape", "'2'", {"input_shape": "2"}),
    (ValueError, "input_shape", "[(2,), 'x']", {"input_shape": [(2,), "x"]}),
    (ValueError, "input_shape", "[]", {"input_shape": []}),
    (ValueError, "input_shape", "input_shape=None", {}),
    (ValueError, "input_data", "a value", {"input_shape": (2,), "input_data": torch.zeros(1, 2)}),
    (ValueError, "batch_size", "0", {"input_shape": (2,), "batch_size": 0}),
    (ValueError, "batch_size", "3", {"input_data": torch.zeros(1, 2), "batch_size": 3}),
    (ValueError, "dtypes", "[torch.float32, torch.float32]", {"input_shape": (2,), "dtypes": [torch.float32] * 2}),
    (ValueError, "device", "'nope'", {"input_shape": (2,), "device": "nope"}),
    (TypeError, "input_data", "int 5", {"input_data": 5}),
    (TypeError, "print_fn", "'stdout'", {"input_shape": (2,), "print_fn": "stdout"}),
]


@pytest.mark.parametrize("error, argument, received, kwargs", ERRORS)
def test_invalid_arguments(error: type[Exception], argument: str, received: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(error) as info:
        summary(nn.Linear(2, 2), **kwargs)
    message = str(info.value)
    assert f"`{argument}`" in message and "received" in message and received in message


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; received: function"):
        summary(lambda x: x, (2,))  # type: ignore[arg-type]



# ---- multiply-adds, memory, channels-last shapes ----------------------------------------
VGG16_LAYERS = [(3, 64, 224), (64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56), (256, 256, 56),
                (256, 256, 56), (256, 512, 28), (512, 512, 28), (512, 512, 28), (512, 512, 14), (512, 512, 14),
                (512, 512, 14)]  # (in channels, out channels, output size) of the 13 3x3 convs, "same" padding
VGG16_DENSE = [(512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)]


def test_vgg16_multiply_adds_equal_the_formula_and_the_published_figure() -> None:
    conv = np.array([cout * size * size * cin * 9 for cin, cout, size in VGG16_LAYERS], dtype=np.int64)
    dense = np.array([i * o for i, o in VGG16_DENSE], dtype=np.int64)
    expected = int(conv.sum() + dense.sum())
    assert expected == 15_470_264_320
    s = summary(vgg16(), VGG_INPUT)
    assert s.macs == expected
    assert round(s.macs / 1e9, 2) == 15.47  # torchvision's published "GFLOPS" of vgg16 (multiply-adds)
    macs = [row.macs for row in s.rows if row.type in ("Conv2d", "Linear")]
    assert macs == [int(m) for m in conv] + [int(m) for m in dense]
    assert all(row.macs == 0 for row in s.rows if row.type not in ("Conv2d", "Linear"))
    # timm's published "Activations (M): 13.6" for vgg16: the elements output by its convs and linears
    elements = sum(row.output_bytes // 4 for row in s.rows if row.type in ("Conv2d", "Linear"))
    assert elements == sum(cout * size * size for _, cout, size in VGG16_LAYERS) + 4096 + 4096 + 1000
    assert round(elements / 1e6, 1) == 13.6
    # batch norm: 2 per element (inference BN is a multiply and an add per element)
    with_bn = summary(vgg16(batch_norm="before_activation"), VGG_INPUT)
    assert with_bn.macs - expected == 2 * sum(cout * size * size for _, cout, size in VGG16_LAYERS)


def test_small_resnet_multiply_adds_by_hand() -> None:
    from ._torch_models import ResNet

    s = summary(ResNet(widths=(8, 16), blocks=1, classes=5), (3, 16, 16), batch_size=2)
    hand = {
        "conv1": 16 * 16 * 8 * 3 * 9, "bn1": 2 * 8 * 16 * 16,  # stem: 3->8, 3x3, 16x16 out
        "layers.0.0.conv1": 16 * 16 * 8 * 8 * 9, "layers.0.0.bn1": 2 * 8 * 256,
        "layers.0.0.conv2": 16 * 16 * 8 * 8 * 9, "layers.0.0.bn2": 2 * 8 * 256,
        "layers.1.0.conv1": 8 * 8 * 16 * 8 * 9, "layers.1.0.bn1": 2 * 16 * 64,  # stride 2: 8x8 out
        "layers.1.0.conv2": 8 * 8 * 16 * 16 * 9, "layers.1.0.bn2": 2 * 16 * 64,
        "layers.1.0.downsample.0": 8 * 8 * 16 * 8, "layers.1.0.downsample.1": 2 * 16 * 64,  # 1x1 projection
        "fc": 16 * 5,
    }
    got = {row.name: row.macs for row in s.rows if row.macs}
    assert got == {name: 2 * macs for name, macs in hand.items()}  # batch of 2
    assert s.macs == 2 * sum(hand.values())


def test_grouped_transposed_lazy_and_sequence_layers_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2),  # 8 x 5x5 out, 4/2 inputs x 9 each
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise: 1 x 9 per output
        nn.ConvTranspose2d(8, 6, 2, stride=2),  # 8x5x5 inputs, each into 6 x 2x2 outputs
        nn.LazyConv2d(3, 1),  # 6 -> 3, 1x1 on 10x10
    )
    s = summary(model, (4, 5, 5))
    assert [row.macs for row in s.rows[:4]] == [8 * 25 * 2 * 9, 8 * 25 * 9, 8 * 25 * 6 * 4, 3 * 100 * 6]
    rows = summary(nn.Linear(7, 3), (5, 7)).rows  # a (1, 5, 7) sequence: 5 rows of 7x3
    assert rows[0].macs == 5 * 7 * 3


def test_memory_bytes_follow_dtype_and_style(tiny: nn.Sequential) -> None:
    s = summary(tiny, (1, 64, 64))
    assert s.param_bytes == 4 * 13_108_758 and s.input_bytes == 4 * 64 * 64
    assert summary(tiny, (1, 64, 64), style="torch").param_bytes == 4 * 13_108_694
    assert [row.output_bytes for row in s.rows] == [4 * n for n in (131072, 131072, 131072, 131072, 100, 100, 10, 10)]
    assert s.activation_bytes == sum(row.output_bytes for row in s.rows)
    assert s.estimated_bytes == s.input_bytes + s.activation_bytes + s.param_bytes
    assert s.rows[2].param_bytes == 4 * 128  # gamma, beta, moving mean, moving variance
    double = summary(tiny_cnn().double(), (1, 64, 64), batch_size=3)
    assert double.param_bytes == 8 * 13_108_758 and double.input_bytes == 8 * 3 * 64 * 64
    assert double.rows[0].output_bytes == 8 * 3 * 131072


def test_macs_and_memory_columns_and_totals(tiny: nn.Sequential) -> None:
    lines = summary(tiny, (1, 64, 64), macs=True, memory=True).lines()
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "MACs", "Param", "bytes",
                                "Output", "bytes"]
    assert lines[4].split() == ["0", "(Conv2d)", "(None,", "32,", "64,", "64)", "320", f"{64 * 64 * 32 * 9:,}",
                                f"{320 * 4:,}", f"{131072 * 4:,}"]
    macs = 64 * 64 * 32 * 9 + 2 * 131072 + 131072 * 100 + 100 * 10
    assert f"Total MACs (multiply-adds): {macs:,} = {macs / 1e6:.2f} M" in lines
    assert f"Params size: {4 * 13_108_758:,} bytes (50.01 MiB; parameters and moving statistics)" in lines
    assert any(line.startswith("Forward activations: ") for line in lines)
    torch_lines = summary(tiny, (1, 64, 64), macs=True, layout="torch").lines()
    assert "MACs" in torch_lines[1] and f"{64 * 64 * 32 * 9:,}" in torch_lines[3]
    plain = summary(tiny, (1, 64, 64)).lines()
    assert not any("MACs" in line or "bytes" in line for line in plain)


def test_channels_last_shapes_are_the_keras_ones_of_seed_001(tiny: nn.Sequential) -> None:
    # Keras' own summary of the seed's model (input (64, 64, 1), channels last):
    # conv2d (None, 64, 64, 32), batch_normalization (None, 64, 64, 32), flatten (None, 131072),
    # dense (None, 100), dense (None, 10)
    s = summary(tiny, (1, 64, 64), channels_last=True)
    shapes = [row.output_shape for row in s.rows]
    assert shapes == [(None, 64, 64, 32), (None, 64, 64, 32), (None, 64, 64, 32), (None, 131072), (None, 100),
                      (None, 100), (None, 10), (None, 10)]
    assert s.lines()[4].startswith("0 (Conv2d)                   (None, 64, 64, 32)")
    assert summary(tiny, (1, 64, 64)).rows[0].output_shape == (None, 32, 64, 64)


@pytest.mark.parametrize("argument", ["macs", "memory", "channels_last"])
def test_cost_flags_must_be_bools(tiny: nn.Sequential, argument: str) -> None:
    with pytest.raises(TypeError) as info:
        summary(tiny, (1, 64, 64), **{argument: "yes"})
    assert f"`{argument}`" in str(info.value) and "'yes'" in str(info.value)


def test_summary_command_columns_and_nhwc(capsys: pytest.CaptureFixture[str]) -> None:
    from bnkit import cli

    assert cli.main(["summary", "vgg16", "--batch-norm", "before_activation", "--macs", "--memory",
                     "--shapes", "nhwc"]) == 0
    out = capsys.readouterr().out
    assert "block1_conv1_bn (BatchNormalization)" in out and "(None, 224, 224, 64)" in out
    bn_macs = 2 * sum(cout * size * size for _, cout, size in VGG16_LAYERS)
    assert f"Total MACs (multiply-adds): {15_470_264_320 + bn_macs:,}" in out
    assert "Params size: " in out
