"""What the ``bnkit`` command line checks before it works, and how it reports a failure.

Arguments are validated by their argparse types (so ``--batch-size 0`` is a usage error,
not a crash in torch); output paths, sizes and input files are checked before anything is
built or written; and whatever still goes wrong becomes one line on stderr naming the file
or argument (:func:`describe`), the traceback only with ``--debug`` or ``BNKIT_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from ._repr import short

__all__ = [
    "DEBUG_VARIABLE", "MAX_THREADS", "OneLineParser", "check_output", "check_vgg_size", "debug_requested", "describe",
    "load_calibration", "one_line", "positive_int", "read_checkpoint", "real", "shape", "seeds", "width",
]

DEBUG_VARIABLE = "BNKIT_DEBUG"
#: More threads than this are refused (OpenMP aborts on absurd counts; as ``bnkit.experiments.config``).
MAX_THREADS = 1024
#: The largest model the CLI builds: 2**30 parameters are 4 GiB of float32.
MAX_PARAMETERS = 2**30
#: The largest activation of one image a summary computes: 2**29 values are 2 GiB of float32.
MAX_ACTIVATION = 2**29
#: Images larger than this on a side are refused by ``--input-shape`` (VGG needs at least 32).
MAX_SIDE = 8192


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: what is wrong and where to read more."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# ---- argparse types ----------------------------------------------------------------------
def positive_int(maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int >= 1 (and <= ``maximum``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer; received: {short(text)}") from None
        if value < 1 or (maximum is not None and value > maximum):
            bound = f" at most {maximum:,}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"expected a positive integer{bound}; received: {value}")
        return value
    parse.__name__ = "positive integer"
    return parse


def real(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the interval from ``low`` to ``high``."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}; received: {short(text)}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}; received: {short(text)}")
        return value
    parse.__name__ = "number"
    return parse


width = real(0.0, 16.0, low_open=True)


def shape(text: str) -> tuple[int, ...]:
    """An argparse type: ``C,H,W`` of positive sizes, each side at most :data:`MAX_SIDE`."""
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 3,224,224; received: {short(text)}") from None
    if not dims or any(s <= 0 for s in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 3,224,224; received: {short(text)}")
    if any(s > MAX_SIDE for s in dims):
        raise argparse.ArgumentTypeError(f"expected sizes of at most {MAX_SIDE} such as 3,224,224; received: {short(text)}")
    return dims


def seeds(text: str) -> list[int]:
    """An argparse type: a comma list of distinct non-negative ints."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of non-negative ints such as 0,1,2; "
                                         f"received: {short(text)}") from None
    if any(v < 0 or v >= 2**32 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct seeds in [0, 2**32) such as 0,1,2; received: {short(text)}")
    return values


# ---- checks before work ------------------------------------------------------------------
def check_output(path: str, force: bool, argument: str = "OUTPUT") -> None:
    """Refuse an output that exists (without ``force``), is a folder, or lies in no writable folder."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{argument} {path} is a directory: expected a file path")
    if target.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(f"{argument} {path}: its folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{argument} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{argument} {path}: the folder {folder} is not writable")
    from ._files import remove_stale_staging

    remove_stale_staging(folder)  # what a killed earlier write left beside the output


def check_vgg_size(arch: str, kwargs: dict[str, Any], *, forward: bool) -> None:
    """Refuse a VGG whose parameters (or, when ``forward``, one image's activations) are too large to build."""
    from .models import CONFIGS

    channels, height, wide = kwargs["input_shape"]
    scale = kwargs.get("width", 1.0)
    params, previous, largest = 0, channels, channels * height * wide
    side_h, side_w = height, wide
    for block in CONFIGS[arch]:
        for filters in block:
            out = max(1, round(filters * scale))
            params += (previous * 9 + 1) * out
            largest = max(largest, out * side_h * side_w)
            previous = out
        side_h, side_w = side_h // 2, side_w // 2
    if kwargs.get("include_top", True):
        units = max(1, round(4096 * scale))
        features = previous * side_h * side_w
        params += (features + 1) * units + (units + 1) * units + (units + 1) * kwargs.get("classes", 1000)
    what = f"--input-shape {','.join(map(str, kwargs['input_shape']))} and --width {scale:g}"
    if params > MAX_PARAMETERS:
        raise ValueError(f"{what} make a {arch} of {params:,} parameters; expected at most {MAX_PARAMETERS:,} "
                         "(4 GiB of float32): use a smaller --input-shape or --width, or --no-top")
    if forward and largest > MAX_ACTIVATION:
        raise ValueError(f"{what} make a {arch} with {largest:,} values in one layer's output for one image; "
                         f"expected at most {MAX_ACTIVATION:,} (2 GiB of float32): use a smaller --input-shape")


def load_calibration(path: str, input_shape: Sequence[int] | None) -> Any:
    """The float32 tensor ``x`` of a calibration ``.npz``, checked (finite, the model's input shape)."""
    import numpy as np
    import torch

    from .data._members import open_npz, read_member

    label = f"--calibration {path}"
    expected = "an .npz archive with an array 'x'"
    with open_npz(path, label, expected, f"{expected} (np.savez(path, x=x))", missing=True) as arrays:
        if "x" not in arrays.files:
            raise ValueError(f"{label}: expected an array named 'x'; found {sorted(arrays.files)[:10]}")
        x = read_member(Path(path), arrays, "x", label, "'x' to be a plain numeric array")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"--calibration {path}: expected 'x' to hold real numbers; found dtype {x.dtype}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"--calibration {path}: expected 'x' of shape (N, {', '.join(map(str, input_shape))}), the "
                         f"model's input; found shape {x.shape}")
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"--calibration {path}: expected at least one example in 'x'; found shape {x.shape}")
    tensor = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"--calibration {path}: expected finite values in 'x' (as float32); found NaN or infinity")
    return tensor


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """:func:`bnkit.checkpoint.load_checkpoint`, with any malformed content reported against the file."""
    from . import checkpoint

    try:
        return checkpoint.load_checkpoint(path)
    except (ValueError, FileNotFoundError, MemoryError):
        raise
    except (KeyError, AttributeError, TypeError, IndexError, RuntimeError) as error:
        raise ValueError(f"{path}: not a valid bnkit checkpoint: expected {{'architecture': {{'builder', 'kwargs', "
                         f"'transforms'}}, 'state_dict'}} matching each other; found a problem "
                         f"({type(error).__name__}: {one_line(str(error), 300)})") from None


# ---- failures ----------------------------------------------------------------------------
def debug_requested(argv: Sequence[str] | None) -> bool:
    """``--debug`` on the command line, or ``BNKIT_DEBUG`` set to anything but ``""``/``0``."""
    import sys

    words = sys.argv[1:] if argv is None else list(argv)
    return "--debug" in words or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def describe(error: BaseException, output: str | None = None) -> str:
    """One line saying what failed, for the file or argument involved, without a traceback."""
    if isinstance(error, MemoryError):
        text = ("out of memory: the input declares or needs more data than this machine can hold"
                + (f" ({error})" if str(error) else ""))
    elif isinstance(error, OSError) and error.errno is not None:
        name = error.filename or output or "a file"
        reasons = {
            errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
            errno.EFBIG: "the file is too large for the file system (or a file-size limit)",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "the file system is read-only", errno.EISDIR: "it is a directory, expected a file",
            errno.ENOTDIR: "a part of the path is a file, expected a folder",
            errno.ENOENT: "no such file or folder",
        }
        reason = reasons.get(error.errno, error.strerror or type(error).__name__)
        text = f"{name}: {reason}"
    elif isinstance(error, RuntimeError) and any(marker in str(error) for marker in _WRITE_FAILURES):
        text = (f"could not write {output or 'the output'}: the disk is full or the file system refused the write "
                f"({_first_line(str(error))})")
    elif isinstance(error, (ValueError, TypeError, FileExistsError, FileNotFoundError, ImportError, OSError)):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return one_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (line breaks joined by spaces), cut to ``limit`` characters."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."
