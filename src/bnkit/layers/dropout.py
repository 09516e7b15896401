"""``Dropout`` with Keras' ``noise_shape`` and a per-layer seed."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .._repr import short
from .. import functional as F
from .._dropout_flatten import check_rate

__all__ = ["Dropout"]


class Dropout(nn.Module):
    """Keras ``Dropout(rate, noise_shape=None, seed=None)`` as a PyTorch module.

    Zeros each element (or each slice along the ``noise_shape`` axes of size 1) with
    probability ``rate`` and scales the others by ``1 / (1 - rate)``.  ``None`` entries of
    ``noise_shape`` take the input's size at call time.

    Seeding (a deliberate choice among Keras' several modes, as Keras 3 does): a seeded layer
    owns a ``torch.Generator``, so a new layer with the same seed reproduces the same
    sequence of masks whatever the global RNG does, and consecutive calls give different
    masks.  Without a seed the global RNG is used (``torch.manual_seed``).

    ``forward(x, training=None)``: ``None`` follows ``module.training``.  Inference and
    ``rate == 0`` are the identity; ``rate == 1`` gives zeros.
    """

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if noise_shape is not None:
            if not isinstance(noise_shape, (tuple, list)) or not all(
                n is None or (isinstance(n, int) and not isinstance(n, bool) and n > 0) for n in noise_shape
            ):
                raise ValueError(
                    "`noise_shape` must be a tuple of positive ints or None entries; "
                    f"received: noise_shape={short(noise_shape)}"
                )
            noise_shape = tuple(noise_shape)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64):
            raise ValueError(f"`seed` must be an int in [0, 2**64) (a torch.Generator seed) or None; "
                             f"received: seed={short(seed)}")
        self.rate = check_rate(rate)
        self.noise_shape = noise_shape
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def reset_generator(self) -> None:
        """Restart the mask sequence from the seed."""
        self._generators.clear()

    def forward(self, x: Tensor, training: bool | None = None) -> Tensor:
        training = self.training if training is None else bool(training)
        if not training or self.rate == 0.0:
            return x
        return F.dropout(x, self.rate, training=True, noise_shape=self.noise_shape,
                         generator=self._generator(x.device))

    def extra_repr(self) -> str:
        return f"rate={self.rate}, noise_shape={self.noise_shape}, seed={self.seed}"
