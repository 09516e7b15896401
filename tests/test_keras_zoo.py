"""The Keras applications, loaded without TensorFlow: outputs, summaries, folding, round trips.

tf_keras 2.21 and Keras 3.15.1 build one model of every application family
(``weights=None``, small inputs, 10 logits) in subprocesses, randomise its BN scales and
set its BN statistics from random images, moved at random (so BN matters; see
``zoo_jobs.calibrate``), save it as ``.h5`` and ``.keras`` and try to reload both files
themselves.  This process never imports TensorFlow or Keras: bnkit loads every file Keras
saved (also those Keras cannot reload) and must give the original model's outputs and
Keras' parameter counts, fold its BNs with outputs preserved, and write the model back in
both formats for Keras to load with equal outputs (checked where Keras reloads its own file;
otherwise skipped with Keras' error as the reason).

Keras also computes each model in float64 (same weights): deep networks can amplify float32
rounding beyond 1e-5 (with purely random BN statistics Keras' own float32 output was ~1e-3
away from its float64 one for EfficientNetV2S and 44-126% for ResNetRS200/EfficientNetV2M),
so bnkit's float32 output must be within ``RTOL`` of Keras' or, where
Keras' own rounding is larger, no more than ``FLOAT32_FACTOR`` times as far from the float64
answer as Keras' float32 output is; and bnkit in float64 must give Keras' float64 output to
``RTOL64`` (or, in the deepest nets, to 1/1000 of Keras' own float32 error), which shows
the loaded model computes exactly Keras' function.

``BNKIT_ZOO=all`` runs every application of both frameworks (111 models, hours and tens of GB)
instead of one per family; ``BNKIT_ZOO=ResNet101,DenseNet169`` runs the named ones.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bnkit
import bnkit.keras as bk
from tests.oracle_client import oracle_env

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "zoo_jobs.py"
FLAVOURS = ("tf_keras", "keras3")
FORMATS = ("h5", "keras")
RTOL = 1e-5
RTOL64 = 1e-9
FLOAT64_SHARE = 1e-3  # deep nets amplify float64 rounding too: allow 1/1000 of Keras' own float32 error
FLOAT32_FACTOR = 3.0  # float32 rounding: different kernels sum in different orders
FOLD_RTOL = 1e-4

#: One application per family, at (close to) the smallest input it accepts.
FAMILIES = {
    "VGG16": 32, "ResNet50": 32, "ResNet50V2": 32, "InceptionV3": 75, "InceptionResNetV2": 75,
    "Xception": 71, "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
    "DenseNet121": 32, "NASNetMobile": 32, "EfficientNetB0": 32, "EfficientNetV2B0": 32,
    "ConvNeXtTiny": 32, "RegNetX002": 32, "RegNetY002": 32, "ResNetRS50": 32,
}
_KERAS3_ONLY_MISSING = ("RegNet", "ResNetRS")  # families Keras 3 does not ship
_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetLarge": 331}


def _apps(flavour: str) -> dict[str, int]:
    chosen = os.environ.get("BNKIT_ZOO", "")
    if chosen:
        from tests.keras_fixtures.zoo_catalog import ALL_APPS

        wanted = ALL_APPS[flavour] if chosen == "all" else chosen.split(",")
        return {name: _MIN_SIZE.get(name, 32) for name in wanted if name in ALL_APPS[flavour]}
    return {name: size for name, size in FAMILIES.items()
            if flavour == "tf_keras" or not name.startswith(_KERAS3_ONLY_MISSING)}


CASES = [(flavour, app) for flavour in FLAVOURS for app in _apps(flavour)]


def _run(flavour: str, job: dict[str, Any], work: Path) -> subprocess.Popen[str]:
    path = work / f"job_{flavour}_{job['stage']}.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    return subprocess.Popen([sys.executable, str(JOBS), flavour, str(path)], env=oracle_env(flavour),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(processes: dict[str, subprocess.Popen[str]], dirs: dict[str, Path], stage: str,
          timeout: int) -> dict[str, dict[str, Any]]:
    results, problems = {}, []
    for flavour, process in processes.items():
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            problems.append(f"Keras zoo ({flavour}, {stage}) timed out after {timeout} s")
            continue
        out = dirs[flavour] / f"zoo_{flavour}_{stage}.json"
        if process.returncode != 0 or not out.exists():
            problems.append(f"Keras zoo ({flavour}, {stage}) failed ({process.returncode}):\n{stderr[-4000:]}")
            continue
        results[flavour] = json.loads(out.read_text(encoding="utf-8"))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    return results


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Keras builds, saves and reloads every application (both frameworks at once)."""
    root = tmp_path_factory.mktemp("zoo")
    dirs = {flavour: root / flavour for flavour in FLAVOURS}
    processes = {}
    for flavour, work in dirs.items():
        work.mkdir()
        models = [{"app": app, "size": size} for app, size in _apps(flavour).items()]
        processes[flavour] = _run(flavour, {"workdir": str(work), "stage": "build", "models": models}, work)
    return {"dirs": dirs, "results": _wait(processes, dirs, "build", 3600)}


def _entry(zoo: dict[str, Any], flavour: str, app: str) -> dict[str, Any]:
    entry = zoo["results"][flavour].get(app, {"error": "not built"})
    if "error" in entry:
        pytest.fail(f"Keras could not build {app} ({flavour}):\n{entry['error']}", pytrace=False)
    return entry


def _file(zoo: dict[str, Any], flavour: str, app: str, fmt: str, keras_reloads: bool = False) -> Path:
    """The file Keras saved; with ``keras_reloads``, only if Keras itself reloads it exactly
    (else Keras cannot be expected to reload bnkit's copy either: the test is skipped).  bnkit
    must load every file Keras saved, including those Keras cannot reload."""
    status = _entry(zoo, flavour, app)["files"][fmt]
    if status.startswith("Keras cannot save") or (keras_reloads and status != "ok"):
        pytest.skip(f"{flavour} itself cannot use its own {app}.{fmt}: {status}")
    return zoo["dirs"][flavour] / f"{app}.{fmt}"


def _reference(zoo: dict[str, Any], flavour: str, app: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, Keras' float32 outputs and Keras' float64 outputs (same weights)."""
    ref = np.load(zoo["dirs"][flavour] / f"{app}_ref.npz")
    return ref["x"], ref["y"], ref["y64"]


def _check_float64(out64: np.ndarray, y: np.ndarray, y64: np.ndarray, what: str) -> None:
    """bnkit's float64 ``out64`` equals Keras' float64 ``y64`` to ``RTOL64``, or to
    ``FLOAT64_SHARE`` of Keras' own float32 error where that is larger (the deepest nets, where
    even float64 rounding grows through hundreds of layers).  A wrong constant or formula
    shows at the float32 level or above, so it cannot hide under this bound."""
    error, keras_error = _relative(out64, y64), _relative(y, y64)
    assert error <= max(RTOL64, FLOAT64_SHARE * keras_error), (
        f"{what}: {error:.2e} from Keras' float64 output; Keras' own float32 output is {keras_error:.2e} from it")


def _check_float32(out: np.ndarray, y: np.ndarray, y64: np.ndarray, floor: float, what: str) -> None:
    """bnkit's float32 ``out`` equals Keras' ``y`` to ``floor`` or, where Keras' own float32
    rounding is larger than that, is no more than ``FLOAT32_FACTOR`` times as far from the exact
    (float64) answer ``y64`` as Keras' float32 output is."""
    direct, keras_error = _relative(out, y), _relative(y, y64)
    own_error = _relative(out, y64)
    assert direct <= floor or own_error <= FLOAT32_FACTOR * keras_error, (
        f"{what}: {direct:.2e} from Keras' float32 output (target {floor:.0e}); {own_error:.2e} from the "
        f"float64 answer, Keras' own float32 output {keras_error:.2e} from it")


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _predict64(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's output in float64 (on a float64 copy; the model itself is unchanged)."""
    twin = copy.deepcopy(model).double()
    out = _predict(twin, x.astype(np.float64))
    assert out.dtype == np.float64
    return out


_LOADED: dict[tuple[str, str, str], Any] = {}


def _load(zoo: dict[str, Any], flavour: str, app: str, fmt: str) -> bk.KerasModel:
    key = (flavour, app, fmt)
    if key not in _LOADED:
        _LOADED.clear()  # keep one model alive at a time
        _LOADED[key] = bk.load_model(_file(zoo, flavour, app, fmt))
    return _LOADED[key]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("flavour", "app"), CASES)
def test_outputs_and_counts_equal_keras(zoo: dict[str, Any], flavour: str, app: str, fmt: str) -> None:
    try:
        model = _load(zoo, flavour, app, fmt)
    except bk.UnsupportedLayerError as error:
        status = _entry(zoo, flavour, app)["files"][fmt]
        if status == "ok":
            raise
        # Keras 3 writes operations on constants (x + 3) into .h5 configs it cannot read back.
        pytest.skip(f"{flavour} cannot reload its own {app}.{fmt} ({status}); bnkit refuses it too: {error}")
    x, y, y64 = _reference(zoo, flavour, app)
    _check_float64(_predict64(model, x), y, y64, "float64 output")
    _check_float32(_predict(model, x), y, y64, RTOL, "float32 output")
    counts = _entry(zoo, flavour, app)["counts"]
    table = bnkit.summary(model, input_data=torch.from_numpy(x[:1]))
    assert (table.total, table.non_trainable) == (counts["total"], counts["non_trainable"])
    assert not {"tensorflow", "keras", "tf_keras"} & set(sys.modules)


@pytest.mark.parametrize(("flavour", "app"), CASES)
def test_fold_keeps_outputs(zoo: dict[str, Any], flavour: str, app: str) -> None:
    model = _load(zoo, flavour, app, "keras")
    x, y, y64 = _reference(zoo, flavour, app)
    folded, report = bnkit.fold_batch_norm(model)
    bns = sum(isinstance(m, (bnkit.BatchNormalization, torch.nn.modules.batchnorm._BatchNorm))
              for m in model.modules())
    left = sum(isinstance(m, (bnkit.BatchNormalization, torch.nn.modules.batchnorm._BatchNorm))
               for m in folded.modules())
    if bns:
        assert left < bns, report
        assert isinstance(folded, bk.KerasModel), "the folds should be expressible in the Keras config"
    _check_float32(_predict(folded, x), y, y64, FOLD_RTOL, "folded float32 output")
    folded64, _ = bnkit.fold_batch_norm(copy.deepcopy(model).double())
    _check_float64(_predict(folded64, x.astype(np.float64)), y, y64, "folded float64 output")


@pytest.fixture(scope="module")
def round_trip(zoo: dict[str, Any]) -> dict[str, Any]:
    """bnkit writes every loaded model back in both formats; Keras loads and predicts."""
    processes, written = {}, {}
    for flavour in FLAVOURS:
        work = zoo["dirs"][flavour]
        models = []
        for app in _apps(flavour):
            files = []
            for fmt in FORMATS:
                try:  # from the .keras file (Keras 3 cannot write every .h5 config it reads back)
                    model = _load(zoo, flavour, app, "keras")
                except BaseException:  # noqa: BLE001 - the load test reports it
                    continue
                target = work / f"{app}.bnkit.{fmt}"
                bk.save_model(model, target)
                files.append(str(target))
            if files:
                models.append({"app": app, "files": files})
        written[flavour] = {m["app"]: m["files"] for m in models}
        processes[flavour] = _run(flavour, {"workdir": str(work), "stage": "reload", "models": models}, work)
    return {"written": written, "results": _wait(processes, zoo["dirs"], "reload", 3600)}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("flavour", "app"), CASES)
def test_keras_reloads_what_bnkit_writes(zoo: dict[str, Any], round_trip: dict[str, Any], flavour: str,
                                         app: str, fmt: str) -> None:
    _file(zoo, flavour, app, fmt, keras_reloads=True)
    target = str(zoo["dirs"][flavour] / f"{app}.bnkit.{fmt}")
    if target not in round_trip["written"][flavour].get(app, []):
        pytest.fail(f"bnkit could not load or write {app} ({flavour})", pytrace=False)
    status = round_trip["results"][flavour][app][target]
    assert status == "ok", f"{flavour} cannot load bnkit's {Path(target).name}: {status}"
    _, y, y64 = _reference(zoo, flavour, app)
    _check_float32(np.load(target + ".out.npy"), y, y64, RTOL, "Keras' output on bnkit's file")
