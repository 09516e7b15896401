"""Torch modules for Keras' sequence layers: Embedding, SimpleRNN, LSTM, GRU, Bidirectional.

Parameters are kept in Keras' own layout and under Keras' names (``kernel`` ``(input,
gates*units)``, ``recurrent_kernel`` ``(units, gates*units)``, ``bias``; Keras' gate order
LSTM ``i, f, c, o``, GRU ``z, r, h``), so the Keras <-> torch weight table is the identity
and the writer reads them back unchanged.  The forward pass picks one of two kernels (in
:mod:`bnkit.keras._rnn_kernels`):

* **fused**: torch's own RNN kernels (``torch._VF.lstm``/``gru``/``rnn_tanh``/``rnn_relu``,
  what ``nn.LSTM`` etc. call) when Keras' math is theirs: LSTM/GRU with ``tanh`` and a
  ``sigmoid`` recurrent activation (GRU only with ``reset_after=True``, torch's form),
  SimpleRNN with ``tanh``/``relu``.  The LSTM gate order is torch's; GRU gates
  are reordered ``z, r, h -> r, z, n`` on the fly (a copy of the weights per call).
  Right-padded masks (every sequence a run of real steps, then padding) run fused on
  packed sequences.
* **loop**: one step per timestep, written from Keras' cell equations, for every other
  activation, GRU ``reset_after=False`` (no torch equivalent) and other masks.

Masks follow Keras' ``backend.rnn``: on a masked step the states keep their previous
values and the step's output is the previous output (or zeros with
``zero_output_for_mask``, which Bidirectional forces when returning sequences); the last
output is the one of the last unmasked step.  This holds for any mask, not only padding.
``go_backwards`` processes the sequence reversed and, like Keras, returns the sequence
outputs in processing (reversed) order.  A run may start from given states
(``initial_state``) and, with ``return_state``, return its final states after the output:
those of the last real step of each sequence (states are carried over masked steps).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._rnn_kernels import CELL_ACTIVATIONS, GATES, RecurrentConfig, recurrent, split_inputs

__all__ = ["CELL_ACTIVATIONS", "GATES", "KerasAttention", "KerasBidirectional", "KerasEmbedding", "KerasGRU",
           "KerasLSTM", "KerasMasking", "KerasRecurrent", "KerasSimpleRNN", "RecurrentConfig", "SequenceMask",
           "recurrent"]


class KerasRecurrent(nn.Module):
    """A Keras ``SimpleRNN``/``LSTM``/``GRU`` layer with its weights in Keras' layout.

    ``forward(x)`` or ``forward([x, mask])`` with ``x`` ``(N, T, features)`` and a boolean
    ``mask`` ``(N, T)`` (True: a real timestep).  Returns ``(N, T, units)`` with
    ``return_sequences``, else ``(N, units)``.
    """

    kind = ""

    def __init__(self, input_size: int, cfg: RecurrentConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        if cfg.kind != self.kind:
            raise ValueError(f"{type(self).__name__} computes {self.kind}; received a config for {cfg.kind!r}")
        self.input_size, self.cfg = input_size, cfg
        width = GATES[cfg.kind] * cfg.units
        self.kernel = nn.Parameter(torch.empty(input_size, width, device=device))
        self.recurrent_kernel = nn.Parameter(torch.empty(cfg.units, width, device=device))
        bias_shape = (2, width) if cfg.kind == "GRU" and cfg.reset_after else (width,)
        self.bias = nn.Parameter(torch.empty(bias_shape, device=device)) if cfg.use_bias else None
        if self.kernel.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras' defaults: Glorot-uniform kernel, orthogonal recurrent kernel, zero bias with
        the LSTM forget-gate biases at 1 (``unit_forget_bias``)."""
        with torch.no_grad():
            fan_in, fan_out = self.kernel.shape
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            self.kernel.uniform_(-bound, bound)
            nn.init.orthogonal_(self.recurrent_kernel)
            if self.bias is not None:
                self.bias.zero_()
                if self.kind == "LSTM":
                    self.bias[self.cfg.units:2 * self.cfg.units] = 1.0

    def forward(self, inputs: Tensor | list[Tensor]) -> Tensor | tuple[Tensor, ...]:
        x, mask, states = split_inputs(self.kind, inputs)
        return recurrent(self.cfg, x, self.kernel, self.recurrent_kernel, self.bias, mask, self.training,
                         states or None)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"{self.input_size}, units={c.units}, activation={c.activation!r}, recurrent_activation="
                f"{c.recurrent_activation!r}, return_sequences={c.return_sequences}, go_backwards={c.go_backwards}"
                + (f", reset_after={c.reset_after}" if c.kind == "GRU" else ""))


class KerasSimpleRNN(KerasRecurrent):
    kind = "SimpleRNN"


class KerasLSTM(KerasRecurrent):
    kind = "LSTM"


class KerasGRU(KerasRecurrent):
    kind = "GRU"


_RECURRENT = {cls.kind: cls for cls in (KerasSimpleRNN, KerasLSTM, KerasGRU)}
_MERGES = ("concat", "sum", "mul", "ave", None)


class KerasBidirectional(nn.Module):
    """Keras ``Bidirectional``: a forward and a backward copy of one recurrent layer, merged.

    The weights are ``forward_kernel``, ``forward_recurrent_kernel``, ``forward_bias`` and the
    same three ``backward_*`` (Keras stores the forward layer's first).  The backward run's
    sequence outputs are flipped back to input order before merging, as Keras does.
    """

    def __init__(self, input_size: int, forward_cfg: RecurrentConfig, backward_cfg: RecurrentConfig,
                 merge_mode: str | None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if merge_mode not in _MERGES:
            raise ValueError(f"`merge_mode` must be one of {_MERGES}; received {merge_mode!r}")
        self.input_size, self.merge_mode = input_size, merge_mode
        self.configs = {}
        for direction, cfg in (("forward", forward_cfg), ("backward", backward_cfg)):
            if cfg.return_sequences:
                cfg = replace(cfg, zero_output_for_mask=True)  # Keras forces it inside Bidirectional
            self.configs[direction] = cfg
            probe = _RECURRENT[cfg.kind](input_size, cfg, device=device)
            for name in ("kernel", "recurrent_kernel", "bias"):
                self.register_parameter(f"{direction}_{name}", getattr(probe, name))

    def forward(self, inputs: Tensor | list[Tensor]) -> Tensor | tuple[Tensor, ...]:
        """``x``, ``[x, mask]``, plus optional initial states (the forward layer's, then the
        backward layer's).  Returns the merged output (``merge_mode=None``: a tuple of the
        forward and backward outputs); with ``return_state`` a tuple of the output(s), the
        forward layer's final states and the backward layer's (not merged, as Keras)."""
        x, mask, states = split_inputs("Bidirectional", inputs)
        half = len(states) // 2
        starts = {"forward": states[:half] or None, "backward": states[half:] or None}
        runs = [recurrent(self.configs[d], x, getattr(self, f"{d}_kernel"), getattr(self, f"{d}_recurrent_kernel"),
                          getattr(self, f"{d}_bias"), mask, self.training, starts[d])
                for d in ("forward", "backward")]
        (fw, *fw_states), (bw, *bw_states) = ((run,) if isinstance(run, Tensor) else run for run in runs)
        if self.configs["backward"].return_sequences:
            bw = bw.flip(1)
        if self.merge_mode is None:  # Keras' two outputs, then the states
            return (fw, bw, *fw_states, *bw_states)
        if self.merge_mode == "concat":
            merged = torch.cat((fw, bw), dim=-1)
        elif self.merge_mode == "sum":
            merged = fw + bw
        elif self.merge_mode == "mul":
            merged = fw * bw
        else:
            merged = (fw + bw) / 2.0
        return (merged, *fw_states, *bw_states) if fw_states else merged

    def extra_repr(self) -> str:
        f = self.configs["forward"]
        return f"{f.kind}({self.input_size}, units={f.units}), merge_mode={self.merge_mode!r}"


class KerasEmbedding(nn.Embedding):
    """Keras ``Embedding``: ids of any dtype (floats are truncated to int, as Keras casts)
    -> vectors; ``embeddings`` is Keras' ``(input_dim, output_dim)`` table (torch's ``weight``).
    Ids outside ``[0, input_dim)`` raise a ValueError (TensorFlow raises on CPU too)."""

    def forward(self, x: Tensor) -> Tensor:
        ids = x if not x.is_floating_point() else x.trunc()
        ids = ids.long()
        if not torch.compiler.is_compiling() and ids.numel() and \
                (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"Embedding: ids must lie in [0, {self.num_embeddings}); received values from "
                             f"{int(ids.min())} to {int(ids.max())}")
        return F.embedding(ids, self.weight)


class KerasMasking(nn.Module):
    """Keras ``Masking``: ``forward([x, mask])`` zeroes the masked timesteps of ``x``."""

    def forward(self, inputs: list[Tensor]) -> Tensor:
        x, mask = inputs
        return x * mask.unsqueeze(-1).to(x.dtype)


class KerasAttention(nn.Module):
    """Keras ``Attention`` (Luong-style): ``forward([query, value])`` or ``[query, value, key]``.

    ``dot`` scores ``q k^T`` (times ``scale`` with ``use_scale``); ``concat`` scores
    ``concat_score_weight * sum(tanh(scale * (q + k)))``; softmax over the value steps, dropout
    on the weights in training, then the weighted sum of the values.
    """

    def __init__(self, use_scale: bool = False, score_mode: str = "dot", dropout: float = 0.0,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"`score_mode` must be 'dot' or 'concat'; received {score_mode!r}")
        self.score_mode, self.dropout = score_mode, dropout
        self.scale = nn.Parameter(torch.ones((), device=device)) if use_scale else None
        self.concat_score_weight = nn.Parameter(torch.ones((), device=device)) if score_mode == "concat" else None

    def forward(self, inputs: list[Tensor]) -> Tensor:
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        if self.score_mode == "dot":
            scores = torch.matmul(query, key.transpose(-2, -1))
            if self.scale is not None:
                scores = scores * self.scale
        else:
            summed = query.unsqueeze(-2) + key.unsqueeze(-3)
            if self.scale is not None:
                summed = self.scale * summed
            scores = self.concat_score_weight * torch.tanh(summed).sum(dim=-1)
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout, training=True)
        return torch.matmul(weights, value)

    def extra_repr(self) -> str:
        return f"use_scale={self.scale is not None}, score_mode={self.score_mode!r}, dropout={self.dropout}"


class SequenceMask(nn.Module):
    """Keras' sequence mask ``x != value`` (``Embedding(mask_zero=True)``: ids != 0), or for a
    ``Masking`` layer ``any(x != value, axis=-1)``, as a boolean ``(N, T)`` tensor."""

    def __init__(self, value: float = 0.0, reduce_last: bool = False) -> None:
        super().__init__()
        self.value, self.reduce_last = value, reduce_last

    def forward(self, x: Tensor) -> Tensor:
        mask = x != self.value
        return mask.any(dim=-1) if self.reduce_last else mask

    def extra_repr(self) -> str:
        return f"value={self.value}, reduce_last={self.reduce_last}"
