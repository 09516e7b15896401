"""CIFAR-10 "python version" batches, read with a restricted unpickler.

The official files are Python 2 ``cPickle`` dumps (protocol 2) of dicts with byte-string
keys: ``b"data"`` (uint8, ``(n, 3072)``: the red, green and blue 32x32 planes, row-major)
and ``b"labels"`` (a list of ints); ``batches.meta`` holds ``b"label_names"``.  Unpickling
them needs exactly three numpy globals (``_reconstruct``, ``ndarray``, ``dtype``), so the
unpickler resolves those and refuses every other global: a tampered file cannot run code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from .._repr import short


__all__ = ["CIFAR_FILES", "is_cifar_dir", "read_cifar10", "restricted_load"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*TRAIN_FILES, "test_batch", "batches.meta")
_PIXELS = 3 * 32 * 32


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allowed numpy reconstruction set."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only ``_codecs.encode`` use pickle makes: Python 3 ``bytes`` written with protocol < 3."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobalError(f"a call _codecs.encode({type(text).__name__}, {short(encoding)}) (only 'latin1' is used "
                                 "for bytes)")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """``(module, name) -> object`` for the only globals a CIFAR-10 pickle may reference."""
    # The reconstructor numpy itself pickles arrays with, whatever its module is called
    # (``numpy.core`` before numpy 2, ``numpy._core`` since).
    reconstruct = np.zeros(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy arrays need; never imports anything."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; raise :class:`RefusedGlobalError` for any other."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobalError(f"the global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (CIFAR-10 batches have none)."""
        raise pickle.UnpicklingError(f"refused persistent id {short(pid)}")


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` allowing only numpy array globals; ``ValueError`` names the file on failure."""
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobalError as exc:
        allowed = ", ".join(sorted({f"{m}.{n}" for m, n in _RestrictedUnpickler._allowed}))
        raise ValueError(f"{path}: unsafe pickle refused: expected a CIFAR-10 batch, which references only {allowed}; "
                         f"found {exc}. Nothing in the file was executed.") from None
    except Exception as exc:  # any malformed pickle: report it as a data error naming the file
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle: expected a protocol-2 dict; "
                         f"found {type(exc).__name__}: {exc}") from None


def _as_text(value: Any) -> str | None:
    """``value`` as text if it is ``bytes`` (UTF-8) or ``str``, else ``None``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _as_dict(obj: Any, path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The unpickled dict with text keys; ``ValueError`` if it is not a dict or lacks ``required``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict; found {type(obj).__name__}")
    keys = {_as_text(k): v for k, v in obj.items()}
    missing = [k for k in required if k not in keys]
    if missing:
        shown = sorted(short(k) for k in obj)[:10]
        raise ValueError(f"{path}: expected keys {[f'b{k!r}' for k in required]}; missing {missing}, found {shown}")
    return keys


def _read_meta(path: Path) -> tuple[str, ...]:
    """The class names of ``batches.meta``, validated."""
    meta = _as_dict(restricted_load(path), path, ("label_names",))
    names = meta["label_names"]
    texts = [_as_text(n) for n in names] if isinstance(names, (list, tuple)) else [None]
    if not texts or any(t is None for t in texts):
        raise ValueError(f"{path}: expected b'label_names' to be a non-empty list of strings; "
                         f"found {type(names).__name__} {short(names)}")
    return tuple(t for t in texts if t is not None)


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(uint8 images (n, 3, 32, 32), int64 labels (n,))``, validated."""
    batch = _as_dict(restricted_load(path), path, ("data", "labels"))
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = (f"dtype={data.dtype}, shape={data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise ValueError(f"{path}: expected b'data' to be a uint8 array of shape (n, {_PIXELS}); found {found}")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        y = labels.astype(np.int64)
    elif isinstance(labels, list) and all(type(v) is int and -2**63 <= v < 2**63 for v in labels):
        y = np.array(labels, dtype=np.int64)
    else:
        raise ValueError(f"{path}: expected b'labels' to be a list of ints (64-bit); found {type(labels).__name__} "
                         f"{short(labels)}")
    if len(y) != len(data):
        raise ValueError(f"{path}: expected one label per image ({len(data)}); found {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{path}: expected labels in [0, {num_classes}) (batches.meta has {num_classes} names); "
                         f"found min {y.min()}, max {y.max()}")
    return data.reshape(len(data), 3, 32, 32), y


def is_cifar_dir(path: Path) -> bool:
    """Whether ``path`` holds any of the CIFAR-10 python-version file names."""
    return any((path / name).is_file() for name in CIFAR_FILES)


def read_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(x_train, y_train, x_test, y_test, classes)`` from a CIFAR-10 python-version directory.

    Images are uint8 ``(n, 3, 32, 32)`` (RGB); train = ``data_batch_1..5``, test = ``test_batch``.
    """
    missing = [name for name in CIFAR_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: incomplete CIFAR-10 python directory: expected {', '.join(CIFAR_FILES)}; "
                                f"missing {', '.join(missing)}")
    classes = _read_meta(path / "batches.meta")
    train = [_read_batch(path / name, len(classes)) for name in TRAIN_FILES]
    x_test, y_test = _read_batch(path / "test_batch", len(classes))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes
