"""``bnkit.summary`` of a loaded Keras model lists what Keras lists, row by row.

tf_keras 2.21 and Keras 3.15.1 build six models in a subprocess
(``tests/keras_fixtures/summary_rows_jobs.py``: Embedding -> LSTM -> Conv1D -> Dense; a
channels-last CNN with BN; a residual block with Add; a functional model with a nested
Sequential; a Bidirectional LSTM text model; models nested two deep, one of them and a conv
shared by two inputs), save them as ``.keras`` and record, for
every layer of ``model.layers``, its name, class, output shape and ``count_params()``.
bnkit loads each file and its Keras-convention summary must give exactly those rows: the
torch layouts (a Conv1D computing on ``(N, C, L)``), the helper modules (paddings,
activations split from a Dense, sequence masks) and the flattened nested model are
invisible.  The PyTorch convention still lists the torch modules.  This process never
imports TensorFlow.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bnkit
import bnkit.keras as bk

from .oracle_client import oracle_env

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "summary_rows_jobs.py"
RECIPES = ("text_conv", "cnn_bn", "residual", "nested", "bilstm", "deep_shared")
#: layers the recipes call more than once (Keras shows their one shape, as all calls agree)
SHARED = {"deep_shared": {"tower": 2, "conv": 2}}
FLAVOURS = ("tf_keras", "keras3")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder of files and Keras rows per flavour (one Keras process each)."""
    folders = {}
    for flavour in FLAVOURS:
        work = tmp_path_factory.mktemp(f"summary-rows-{flavour}")
        proc = subprocess.run([sys.executable, str(JOBS), flavour, str(work)], env=oracle_env(flavour),
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0 or not all((work / f"{name}.json").exists() for name in RECIPES):
            pytest.fail(f"{flavour} oracle failed ({proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
        folders[flavour] = work
    return folders


def _load(folder: Path, name: str) -> tuple[bk.KerasModel, list[torch.Tensor], dict[str, Any]]:
    with np.load(folder / f"{name}.npz") as data:
        x = [torch.from_numpy(data[f"x{i}"]) for i in range(len(data.files))]
    keras = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return bk.load_model(folder / f"{name}.keras"), x, keras


def _listed(shape: Any) -> Any:
    """A bnkit output shape as JSON lists (tuples -> lists), like the oracle's records."""
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [list(s) for s in shape]
    return list(shape) if isinstance(shape, tuple) else shape


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("name", RECIPES)
def test_rows_equal_keras_layers(built: dict[str, Path], flavour: str, name: str) -> None:
    model, x, keras = _load(built[flavour], name)
    table = bnkit.summary(model, input_data=x)
    want = keras["rows"]
    if flavour == "keras3":  # Keras 3 gives an InputLayer's shape as a tuple; bnkit prints tf_keras' [(None, 7)]
        want = [{**row, "output_shape": [row["output_shape"]]} if row["class"] == "InputLayer" else row
                for row in want]
    got = [{"name": row.name, "class": row.type, "output_shape": _listed(row.output_shape), "params": row.params}
           for row in table.rows]
    assert got == want
    assert table.model_name == keras["model"]
    assert table.total == sum(row["params"] for row in keras["rows"])
    assert {row.name: row.calls for row in table.rows} == {row["name"]: SHARED.get(name, {}).get(row["name"], 1)
                                                            for row in keras["rows"]}
    text = str(table)
    for row in keras["rows"]:
        assert f"{row['name']} ({row['class']})" in text
    if flavour == "tf_keras":  # tf_keras prints the same shapes (it wraps long names, so not those)
        for row in table.rows:
            assert f" {row.name} (" in keras["summary"] and f"{row.output_shape}  " in keras["summary"]


def test_torch_convention_keeps_torch_modules(built: dict[str, Path]) -> None:
    """style="torch" still lists the torch modules with their torch layouts: the Conv1D as an
    nn.Conv1d on (N, C, L), the Dense's helpers, no InputLayer."""
    model, x, _ = _load(built["tf_keras"], "text_conv")
    torch_style = bnkit.summary(model, input_data=x, style="torch", macs=True)
    rows = {row.name: row for row in torch_style.rows}
    conv = rows["layers.conv1d"]
    assert (conv.type, conv.output_shape, conv.params) == ("Conv1d", (None, 4, 6), 64)
    assert rows["layers.dense"].type == "Linear"
    keras_style = bnkit.summary(model, input_data=x, macs=True)  # the same multiply-adds, under Keras' rows
    assert keras_style.macs == torch_style.macs == 2 * (6 * 4 * 5 * 3 + 6 * 3 * 4)  # Conv1D(5 -> 4, k 3) + Dense(4 -> 3), 6 steps, batch 2
    assert {row.name: row.macs for row in keras_style.rows}["conv1d"] == conv.macs
    model, x, _ = _load(built["tf_keras"], "cnn_bn")
    rows = {row.name: row for row in bnkit.summary(model, input_data=x, style="torch").rows}
    assert rows["layers.batch_normalization"].params == 16  # gamma and beta only: PyTorch counts parameters
    assert rows["layers.conv2d"].output_shape == (None, 8, 10, 10)


def test_channels_first_interface_still_shows_keras_layout(built: dict[str, Path]) -> None:
    """A model loaded to take NCHW images still summarises in Keras' layout."""
    folder = built["tf_keras"]
    keras = json.loads((folder / "residual.json").read_text(encoding="utf-8"))
    with np.load(folder / "residual.npz") as data:
        x = torch.from_numpy(data["x0"]).permute(0, 3, 1, 2).contiguous()
    model = bk.load_model(folder / "residual.keras", data_format="channels_first")
    table = bnkit.summary(model, input_data=x)
    assert [_listed(row.output_shape) for row in table.rows] == [row["output_shape"] for row in keras["rows"]]
