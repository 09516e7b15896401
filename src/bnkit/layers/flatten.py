"""``Flatten`` with Keras' ``data_format``."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F
from .._dropout_flatten import check_data_format

__all__ = ["Flatten"]


class Flatten(nn.Module):
    """Keras ``Flatten(data_format="channels_last")``.

    ``data_format="channels_first"`` is for NCHW inputs: the features come out in Keras'
    channels-last order ``(h, w, c)``, so the kernel of a Keras Dense layer that follows a
    Keras Flatten can be loaded unchanged (a plain ``nn.Flatten`` gives ``(c, h, w)``).
    A rank-1 input ``(B,)`` becomes ``(B, 1)``.
    """

    def __init__(self, data_format: str = "channels_last") -> None:
        super().__init__()
        self.data_format = check_data_format(data_format)

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x, self.data_format)

    def extra_repr(self) -> str:
        return f"data_format={self.data_format!r}"
