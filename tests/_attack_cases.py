"""What a child process of :mod:`tests._isolated` runs: public entry points on hostile input.

Each function returns JSON-able data about what it loaded (the parent asserts it never
gets that far for an attack) or raises; the child reports the exception's class and text.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"


def _state_bytes(model: Any) -> bytes:
    return b"".join(t.detach().contiguous().numpy().tobytes() for t in model.state_dict().values())


def load_model(path: str, secret_hex: str = "") -> dict[str, Any]:
    import bnkit.keras as bk

    model = bk.load_model(path)
    return {"secret_in_weights": bool(secret_hex) and bytes.fromhex(secret_hex) in _state_bytes(model)}


def load_weights(path: str, secret_hex: str = "") -> dict[str, Any]:
    import bnkit.keras as bk

    model = bk.build_from_config(bk.read_model_config(FIXTURES / "small_tf_keras.h5"))
    bk.load_weights(model, path)
    return {"secret_in_weights": bool(secret_hex) and bytes.fromhex(secret_hex) in _state_bytes(model)}


def cli(*argv: str) -> dict[str, Any]:
    """``bnkit ARGV`` in this process; its exit status and what it printed."""
    from bnkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def load_checkpoint(path: str) -> dict[str, Any]:
    from bnkit.checkpoint import load_checkpoint as load

    model, _ = load(path)
    return {"values": sum(t.numel() for t in model.state_dict().values())}


def load_dataset(path: str) -> dict[str, Any]:
    from bnkit.data import load_dataset as load

    data = load(path)
    return {"train": len(data.x_train)}


def self_sharing_keras_config() -> dict[str, Any]:
    """build_from_config on a config whose layer list is a self-sharing nested list (2**64 leaves)."""
    import bnkit.keras as bk

    shared: list[Any] = []
    for _ in range(64):
        shared = [shared, shared]
    bk.build_from_config({"class_name": "Sequential", "config": {"name": "m", "layers": shared}})
    return {}


def fuzz(name: str, seed: int, count: int, flips: int) -> dict[str, Any]:
    """``count`` mutations of a fixture (``flips`` random bytes each; half of them near the
    ``model_config`` attribute), each loaded with load_model; counts of outcomes.

    Any exception outside KerasFormatError propagates (and fails the parent's test); a
    crash or hang kills this process (and fails it too).
    """
    import bnkit.keras as bk

    data = (FIXTURES / name).read_bytes()
    anchor = max(data.find(b"model_config"), 0)
    rng = random.Random(seed)
    target = Path(os.getcwd()) / f"mutant{Path(name).suffix}"
    outcomes = {"ok": 0, "refused": 0, "crash_reported": 0}
    for _ in range(count):
        mutated = bytearray(data)
        near = rng.random() < 0.5
        for _ in range(flips):
            position = rng.randrange(max(anchor - 48, 0), anchor + 64) if near else rng.randrange(len(data))
            mutated[position] = rng.randrange(256)
        target.write_bytes(bytes(mutated))
        try:
            bk.load_model(target)
            outcomes["ok"] += 1
        except bk.KerasFormatError as error:
            outcomes["crash_reported" if "crashed the HDF5 library" in str(error) else "refused"] += 1
    return outcomes


def batch(calls: list[list[Any]]) -> list[dict[str, Any]]:
    """Several ``[case, args]`` in this one process (they share its caps); one result each."""
    results: list[dict[str, Any]] = []
    for case, args in calls:
        try:
            results.append({"ok": globals()[case](*args)})
        except Exception as error:  # noqa: BLE001 - reported to the parent, which judges it
            results.append({"error": type(error).__name__, "message": str(error)})
    return results
