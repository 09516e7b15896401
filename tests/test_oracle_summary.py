"""bnkit.summary's parameter counts against tf_keras 2.21's own ``model.summary()``.

TensorFlow must not be imported in the pytest process, so one module-scoped fixture writes
:data:`ORACLE_SCRIPT` to ``tmp_path`` and runs it once in a subprocess (environment from
``oracle_client.oracle_env("tf_keras")``). The script builds the seed-001 tiny CNN, Keras
applications' ``VGG16(weights=None)`` and a functional VGG16 with a BatchNormalization after
every conv, and returns, per model, each layer's ``count_params()``, the trainable and
non-trainable weight totals and the totals printed by ``model.summary(print_fn=...)``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from bnkit.models import vgg16
from bnkit.summary import summary

from .oracle_client import oracle_env
from .test_summary import tiny_cnn  # the torch twin of the seed-001 Keras model

pytestmark = pytest.mark.oracle

ORACLE_SCRIPT = r'''
import json
import sys

import tf_keras as keras
from tf_keras import layers


def tiny_cnn():
    """Seed 001, verbatim apart from the names."""
    inputs = keras.Input(shape=(64, 64, 1))
    x = layers.Conv2D(filters=32, kernel_size=(3, 3), padding="SAME", activation="relu")(inputs)
    x = layers.BatchNormalization(momentum=0.15, axis=-1)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def vgg16_bn():
    """Keras' VGG16 layer for layer, with a BatchNormalization after every conv."""
    inputs = keras.Input(shape=(224, 224, 3))
    x = inputs
    blocks = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    for b, block in enumerate(blocks, start=1):
        for i, filters in enumerate(block, start=1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{b}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{b}_conv{i}_bn")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4096, activation="relu", name="fc1")(x)
    x = layers.Dense(4096, activation="relu", name="fc2")(x)
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def describe(model):
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return {
        "layers": [[layer.__class__.__name__, int(layer.count_params())] for layer in model.layers],
        "trainable": int(sum(w.shape.num_elements() for w in model.trainable_weights)),
        "non_trainable": int(sum(w.shape.num_elements() for w in model.non_trainable_weights)),
        "bn_trainable": [
            int(sum(w.shape.num_elements() for w in layer.trainable_weights))
            for layer in model.layers if isinstance(layer, layers.BatchNormalization)
        ],
        "text": "\n".join(lines),
        "shapes": [[layer.name, layer.output_shape] for layer in model.layers],
    }


models = {
    "tiny_cnn": tiny_cnn(),
    "vgg16": keras.applications.VGG16(weights=None),
    "vgg16_bn": vgg16_bn(),
}
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump({name: describe(model) for name, model in models.items()}, out)
'''


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("summary-oracle")
    script, out = tmp / "summary_oracle.py", tmp / "out.json"
    script.write_text(ORACLE_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=oracle_env("tf_keras"), capture_output=True, text=True, timeout=600, check=False,
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"tf_keras oracle failed with exit code {proc.returncode}:\n{proc.stderr[-8000:]}", pytrace=False)
    return json.loads(out.read_text(encoding="utf-8"))


def printed_totals(text: str) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) as printed by tf_keras (``Total params: 13108758 (50.01 MB)``)."""
    found = {}
    for label in ("Total", "Trainable", "Non-trainable"):
        match = re.search(rf"^\s*{label} params: ([\d,]+)", text, flags=re.MULTILINE)
        assert match is not None, f"no {label!r} line in the tf_keras summary:\n{text}"
        found[label] = int(match.group(1).replace(",", ""))
    return found["Total"], found["Trainable"], found["Non-trainable"]


def keras_totals(result: dict[str, Any]) -> tuple[int, int, int]:
    totals = (result["trainable"] + result["non_trainable"], result["trainable"], result["non_trainable"])
    assert printed_totals(result["text"]) == totals
    return totals


def test_tiny_cnn_matches_tf_keras_layer_by_layer(oracle: dict[str, Any]) -> None:
    keras = oracle["tiny_cnn"]
    keras_counts = [count for _, count in keras["layers"] if count]
    assert keras_counts == [320, 128, 13_107_300, 1_010]  # the published numbers
    ours = summary(tiny_cnn(), (1, 64, 64))
    assert [row.params for row in ours.rows if row.params] == keras_counts
    assert (ours.total, ours.trainable, ours.non_trainable) == keras_totals(keras) == (13_108_758, 13_108_694, 64)


def test_tiny_cnn_torch_style_bn_row_is_keras_trainable_part(oracle: dict[str, Any]) -> None:
    bn_row = summary(tiny_cnn(), (1, 64, 64), style="torch").rows[2]
    assert bn_row.type == "BatchNormalization"
    assert [bn_row.params] == oracle["tiny_cnn"]["bn_trainable"] == [64]


@pytest.mark.parametrize("name, batch_norm", [
    ("vgg16", None), ("vgg16_bn", "after_activation"), ("vgg16_bn", "before_activation"),
])
def test_vgg16_totals_match_tf_keras(oracle: dict[str, Any], name: str, batch_norm: str | None) -> None:
    ours = summary(vgg16(batch_norm=batch_norm), (3, 224, 224))
    assert (ours.total, ours.trainable, ours.non_trainable) == keras_totals(oracle[name])


@pytest.mark.parametrize("name, batch_norm", [("vgg16", None), ("vgg16_bn", "after_activation")])
def test_channels_last_shapes_match_tf_keras_line_by_line(oracle: dict[str, Any], name: str,
                                                         batch_norm: str | None) -> None:
    keras = {layer: shape for layer, shape in oracle[name]["shapes"]}
    ours = summary(vgg16(batch_norm=batch_norm), (3, 224, 224), channels_last=True)
    compared = [(row.name, list(row.output_shape)) for row in ours.rows if row.name in keras]
    assert len(compared) == len(keras) - 1  # every Keras layer but the InputLayer
    assert compared == [(layer, shape) for layer, shape in oracle[name]["shapes"] if layer in dict(compared)]
