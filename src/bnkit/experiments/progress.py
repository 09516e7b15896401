"""Progress reporting for the runner: a live bar, quiet, or JSON lines for scripts."""
from __future__ import annotations

import json
import sys
from typing import Any, TextIO
from .._repr import short

__all__ = ["Progress", "BarProgress", "QuietProgress", "JsonProgress", "make_progress"]


class Progress:
    """Receives the runner's events; the base class ignores them (quiet mode)."""

    def start_epoch(self, variant: str, seed: int, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, loss: float, accuracy: float) -> None: ...

    def end_epoch(self, entry: dict[str, Any] | None) -> None: ...

    def message(self, text: str) -> None: ...


class QuietProgress(Progress):
    """Nothing while training; messages (divergence, interruption) still reach stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def message(self, text: str) -> None:
        print(text, file=self.stream)


class BarProgress(QuietProgress):
    """One tqdm bar per epoch with loss, accuracy and ETA; a line per finished epoch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._bar: Any = None

    def start_epoch(self, variant: str, seed: int, epoch: int, epochs: int, steps: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=steps, desc=f"{variant:>17} seed {seed} epoch {epoch:>2}/{epochs}",
                         file=self.stream, leave=False, dynamic_ncols=True, mininterval=0.5,
                         disable=None)  # no bar when the stream is not a terminal

    def step(self, loss: float, accuracy: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", refresh=False)
            self._bar.update(1)

    def end_epoch(self, entry: dict[str, Any] | None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if entry is not None:
            print(f"{entry['variant']:>17} seed {entry['seed']} epoch {entry['epoch']:>2}: "
                  f"loss {entry['train_loss']:.4f}  train acc {entry['train_accuracy']:.3f}  "
                  f"val acc {entry['val_accuracy']:.3f}  ({entry['epoch_time']:.1f}s)", file=self.stream)


class JsonProgress(QuietProgress):
    """One JSON object per finished epoch (and per message) on stdout, nothing else."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stdout)

    def end_epoch(self, entry: dict[str, Any] | None) -> None:
        if entry is not None:
            print(json.dumps({"event": "epoch", **entry}), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(json.dumps({"event": "message", "text": text}), file=self.stream, flush=True)


def make_progress(mode: str) -> Progress:
    modes = {"bar": BarProgress, "quiet": QuietProgress, "json": JsonProgress}
    if mode not in modes:
        raise ValueError(f"`progress` must be one of {sorted(modes)}; received: {short(mode)}")
    return modes[mode]()
