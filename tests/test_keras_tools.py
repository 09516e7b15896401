"""Loaded Keras models under PyTorch's tooling: summary counts, torch.compile, torch.export,
torch.fx and fold_batch_norm.

tf_keras 2.21 builds the recipes of ``tests/keras_fixtures/tools_jobs.py`` in a subprocess
(a residual CNN with BN, Add, Concatenate and pooling; a MobileNetV2-like model with
depthwise and separable convs, ReLU6 and padding; an EfficientNet-style model with
Rescaling, Normalization, swish, a squeeze-excite block and tf.math operations; a text
classifier with Embedding, LSTM, GRU and BN; random BN statistics so every BN matters),
saves them as ``.h5`` and ``.keras`` with its inference outputs, and counts the weights of
every model (``count_params()``, trainable and non-trainable weights), the
committed fixture ``small_tf_keras.h5`` included.  This process never imports TensorFlow.

Every transformed model (compiled, exported and re-loaded, traced, folded) is compared with
the model as loaded, which is compared with Keras' own outputs; in training mode the
outputs, gradients and moving statistics after two steps are compared with eager mode.
The recurrent model is left out of plain ``torch.fx.symbolic_trace`` (its layers compute
with Python on shapes; surgery's own tracer keeps them whole, so its BNs still fold).
"""
from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bnkit
import bnkit.keras as bk
from bnkit.keras._folded import fold_keras_model
from bnkit.summary import summary

from .oracle_client import oracle_env

pytestmark = pytest.mark.oracle

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "keras_fixtures"
JOBS = FIXTURES / "tools_jobs.py"
RTOL = 1e-5

#: name -> (file, reference npz): built by the oracle (``None``) or committed.
MODELS: dict[str, tuple[str, Path | None]] = {
    **{f"{recipe}.{fmt}": (f"{recipe}.{fmt}", None) for recipe in ("residual", "mobilenet_like", "se_ops", "text_lstm")
       for fmt in ("h5", "keras")},
    "small_tf_keras.h5": ("small_tf_keras.h5", FIXTURES / "small_tf_keras_ref.npz"),
    "small_keras3.keras": ("small_keras3.keras", FIXTURES / "small_keras3_ref.npz"),
}
#: models whose Keras counts the oracle reports -> their key in ``counts.json``.
COUNTED = {"residual.h5": "residual", "residual.keras": "residual", "mobilenet_like.keras": "mobilenet_like",
           "se_ops.h5": "se_ops", "text_lstm.h5": "text_lstm", "small_tf_keras.h5": "small_tf_keras.h5"}
#: BNs fold_batch_norm folds in each model (the residual keeps one after a Concatenate, the
#: text model the one normalising the LSTM's features: axis 2 of (batch, steps, features)).
FOLDED = {"residual.h5": 4, "mobilenet_like.h5": 7, "se_ops.keras": 2, "text_lstm.keras": 1, "small_tf_keras.h5": 0}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle's files, outputs and counts (one tf_keras process for the module)."""
    work = tmp_path_factory.mktemp("keras-tools")
    proc = subprocess.run([sys.executable, str(JOBS), "build", str(work), str(FIXTURES / "small_tf_keras.h5")],
                          env=oracle_env("tf_keras"), capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not (work / "counts.json").exists():
        pytest.fail(f"tf_keras oracle failed ({proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    return work


def load(built: Path, name: str, data_format: str | None = None) -> tuple[bk.KerasModel, torch.Tensor, np.ndarray]:
    """A loaded model in eval mode, its Keras inputs and Keras' inference outputs."""
    file, ref = MODELS[name]
    path = FIXTURES / file if ref is not None else built / file
    with np.load(ref if ref is not None else built / f"{Path(file).stem}.npz") as data:
        x, y = data["x"], data["y"]
    return bk.load_model(path, data_format=data_format), torch.from_numpy(x), y


def relative(got: torch.Tensor, want: torch.Tensor | np.ndarray) -> float:
    want_t = torch.as_tensor(want)
    return float((got.detach() - want_t).abs().max() / want_t.abs().max())


def bn_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, (bnkit.BatchNormalization, torch.nn.modules.batchnorm._BatchNorm))
               for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_loaded_model_equals_keras(built: Path, name: str) -> None:
    model, x, y = load(built, name)
    assert not model.training
    assert relative(model(x), y) <= RTOL


@pytest.mark.parametrize("name", COUNTED)
def test_summary_counts_equal_keras_in_both_conventions(built: Path, name: str) -> None:
    counts = json.loads((built / "counts.json").read_text(encoding="utf-8"))[COUNTED[name]]
    model, x, _ = load(built, name)
    keras_style = summary(model, input_data=x[:1])
    assert (keras_style.total, keras_style.trainable, keras_style.non_trainable) == \
        (counts["total"], counts["trainable"], counts["non_trainable"])
    # PyTorch's convention counts parameters only: Keras' trainable weights, as the
    # models' only non-trainable Keras weights are BN moving statistics (buffers in torch).
    torch_style = summary(model, input_data=x[:1], style="torch")
    assert torch_style.total == sum(p.numel() for p in model.parameters()) == counts["trainable"]
    assert torch_style.non_trainable == 0 and counts["non_trainable"] > 0


@pytest.mark.parametrize("name", ["residual.h5", "mobilenet_like.h5", "se_ops.keras", "text_lstm.h5",
                                  "small_keras3.keras"])
def test_export_equals_eager_and_survives_save_load(built: Path, name: str) -> None:
    model, x, y = load(built, name)
    program = torch.export.export(model, (x,), dynamic_shapes=(({0: torch.export.Dim("batch")},),))
    assert relative(program.module()(x), y) <= RTOL
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    again = torch.export.load(buffer).module()
    other = torch.randn(5, *x.shape[1:]) if name != "text_lstm.h5" else x[:2].flip(1).repeat(3, 1)[:5]
    # ^ another batch size (the batch dimension was exported as dynamic), other values
    torch.testing.assert_close(again(other), model(other), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["residual.h5", "mobilenet_like.keras"])
def test_export_in_training_mode_updates_statistics_as_eager(built: Path, name: str) -> None:
    model, x, _ = load(built, name)
    eager, exported = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    module = torch.export.export(exported, (x,)).module()
    torch.testing.assert_close(module(x), eager(x))
    after = dict(module.named_buffers())
    for key, value in eager.named_buffers():
        torch.testing.assert_close(after[key], value)
    assert any(not torch.equal(value, dict(model.named_buffers())[key]) for key, value in eager.named_buffers())


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["residual.h5", "mobilenet_like.h5", "se_ops.h5"])
def test_fx_symbolic_trace(built: Path, name: str, training: bool) -> None:
    model, x, _ = load(built, name)
    eager, traced_from = copy.deepcopy(model).train(training), copy.deepcopy(model).train(training)
    traced = torch.fx.symbolic_trace(traced_from)
    assert any(node.op == "call_module" for node in traced.graph.nodes)
    torch.testing.assert_close(traced(x), eager(x), rtol=0, atol=0)
    # The graph module keeps the buffers its graph reads (BN statistics among them), plus
    # constants fx lifted (``_tensor_constant0``).
    traced_buffers = dict(traced.named_buffers())
    statistics = {f"{name}.{key}" for name, m in eager.named_modules() if isinstance(m, bnkit.BatchNormalization)
                  for key, _ in m.named_buffers()}
    assert statistics and statistics <= set(traced_buffers)
    for key, want in eager.named_buffers():
        if key in traced_buffers:
            torch.testing.assert_close(traced_buffers[key], want, msg=key)


@pytest.mark.parametrize("name", FOLDED)
def test_fold_then_export(built: Path, name: str) -> None:
    model, x, y = load(built, name)
    folded, report = bnkit.fold_batch_norm(model)
    assert len(report.folded) == FOLDED[name], report
    assert bn_count(folded) == bn_count(model) - len(report.folded)
    assert relative(folded(x), y) <= RTOL
    program = torch.export.export(folded, (x,))
    torch.testing.assert_close(program.module()(x), folded(x), rtol=0, atol=0)


def test_folded_keras_model_is_a_keras_model_that_exports_and_saves(built: Path, tmp_path: Path) -> None:
    model, x, y = load(built, "residual.keras")
    folded, report = fold_keras_model(model)
    names = [item.bn for item in report.folded]
    assert names == ["layers.stem_bn", "layers.res_bn", "layers.pre_bn", "layers.fc_bn"]
    assert [item.bn for item in report.not_folded] == ["layers.cat_bn"]
    assert isinstance(folded, bk.KerasModel) and bn_count(folded) == 1
    layers = {layer["name"]: layer for layer in folded.keras_config["config"]["layers"]}
    assert not {"stem/bn", "res_bn", "pre_bn", "fc_bn"} & set(layers) and "cat_bn" in layers
    assert layers["stem"]["config"]["use_bias"] is True
    assert model.keras_config["config"]["layers"][1]["config"]["use_bias"] is False  # the original is untouched
    assert relative(folded(x), y) <= RTOL
    torch.testing.assert_close(torch.export.export(folded, (x,)).module()(x), folded(x), rtol=0, atol=0)
    for suffix in ("keras", "h5"):
        bk.save_model(folded, tmp_path / f"folded.{suffix}")
        torch.testing.assert_close(bk.load_model(tmp_path / f"folded.{suffix}")(x), folded(x), rtol=0, atol=0)


def test_folded_depthwise_and_separable_convs_save_as_keras(built: Path, tmp_path: Path) -> None:
    model, x, y = load(built, "mobilenet_like.h5")
    folded, report = fold_keras_model(model)
    into = {item.bn: item.into for item in report.folded}
    assert into["layers.dw1_bn"] == "layers.dw1" and into["layers.sep_bn"] == "layers.sep.pointwise", report
    assert bn_count(folded) == 0 and relative(folded(x), y) <= RTOL
    layers = {layer["name"]: layer for layer in folded.keras_config["config"]["layers"]}
    assert layers["dw1"]["config"]["use_bias"] is True and layers["sep"]["config"]["use_bias"] is True
    for suffix in ("keras", "h5"):
        bk.save_model(folded, tmp_path / f"folded.{suffix}")
        torch.testing.assert_close(bk.load_model(tmp_path / f"folded.{suffix}")(x), folded(x), rtol=0, atol=0)


def test_fold_keras_model_refuses_what_keras_cannot_say(built: Path) -> None:
    with pytest.raises(TypeError, match="KerasModel; received"):
        fold_keras_model(torch.nn.Sequential())  # type: ignore[arg-type]
    model, _, _ = load(built, "residual.h5")
    with pytest.raises(ValueError, match="must be in inference mode"):
        fold_keras_model(copy.deepcopy(model).train())
    stem = next(layer for layer in model.keras_config["config"]["layers"] if layer["name"] == "stem")
    del stem["config"]["use_bias"]  # a config that cannot take the folded shift
    with pytest.raises(bk.KerasFormatError, match="batch norm fold at 'layers.stem_bn': Conv2D 'stem' has no "
                                                  "`use_bias` to take the folded shift"):
        fold_keras_model(model)
    assert "use_bias" not in stem["config"] and any(layer["name"] == "stem/bn"
                                                    for layer in model.keras_config["config"]["layers"])


def _compile_matches(model: torch.nn.Module, x: torch.Tensor, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual.h5", "mobilenet_like.keras", "se_ops.h5", "text_lstm.keras",
                                  "small_keras3.keras"])
def test_compile_aot_eager_fullgraph_eval(built: Path, name: str) -> None:
    model, x, y = load(built, name)
    _compile_matches(model, x, "aot_eager")
    folded, _ = bnkit.fold_batch_norm(model)
    _compile_matches(folded, x, "aot_eager")
    assert relative(folded(x), y) <= RTOL


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_compile_inductor_eval(built: Path) -> None:
    model, x, _ = load(built, "small_tf_keras.h5")
    _compile_matches(model, x, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual.h5", "mobilenet_like.h5"])
def test_compile_in_training_mode_matches_eager_steps(built: Path, name: str) -> None:
    model, x, _ = load(built, name)
    eager, compiled_from = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_from, backend="aot_eager", fullgraph=True)
    for step in range(2):
        batch = x + step
        want, got = eager(batch), compiled(batch)
        torch.testing.assert_close(got, want)
        (want * torch.arange(want.shape[-1])).sum().backward()
        (got * torch.arange(got.shape[-1])).sum().backward()
    for (key, value), (_, expected) in zip(compiled_from.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(value.grad, expected.grad, msg=key)
    for (key, value), (_, expected) in zip(compiled_from.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(value, expected, msg=key)


@pytest.mark.slow
def test_channels_first_folded_model_exports_and_compiles(built: Path) -> None:
    """The NCHW interface with BNs folded (the layout for fast inference) under export and compile."""
    model, x, y = load(built, "mobilenet_like.h5", data_format="channels_first")
    nchw = x.permute(0, 3, 1, 2).contiguous()
    folded, report = fold_keras_model(model)
    assert len(report.folded) == 7 and folded.data_format == "channels_first"
    assert relative(folded(nchw), y) <= RTOL
    program = torch.export.export(folded, (nchw,))
    torch.testing.assert_close(program.module()(nchw), folded(nchw), rtol=0, atol=0)
    _compile_matches(folded, nchw, "aot_eager")


def test_no_tensorflow_in_this_process() -> None:
    assert not {"tensorflow", "keras", "tf_keras"} & set(sys.modules)
