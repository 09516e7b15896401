"""The computation of Keras' recurrent layers on torch tensors (see
:mod:`bnkit.keras._rnn_layers` for the modules holding the weights and the choice of kernel:
torch's fused kernels where Keras' math is theirs, packed sequences for right padding, the
cell equations step by step otherwise).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["CELL_ACTIVATIONS", "GATES", "RecurrentConfig", "recurrent", "split_inputs"]

#: Gates per cell type: the multiple of ``units`` in the kernels' last axis.
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _hard_sigmoid_tf(x: Tensor) -> Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)  # tf_keras 2: clip(0.2 x + 0.5, 0, 1)


def _hard_sigmoid_k3(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0  # Keras 3: relu6(x + 3) / 6


#: Activation names (Keras' ones; ``hard_sigmoid`` split by Keras version) -> functions.
CELL_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "linear": lambda x: x,
    "hard_sigmoid": _hard_sigmoid_tf, "hard_sigmoid_keras3": _hard_sigmoid_k3, "softsign": F.softsign,
    "elu": F.elu, "selu": F.selu, "softplus": F.softplus, "swish": F.silu, "silu": F.silu, "relu6": F.relu6,
    "gelu": F.gelu, "exponential": torch.exp,
}


@dataclass(frozen=True)
class RecurrentConfig:
    """What a Keras recurrent layer computes (everything but its weights)."""

    kind: str
    units: int
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    use_bias: bool = True
    reset_after: bool = True
    return_sequences: bool = False
    go_backwards: bool = False
    zero_output_for_mask: bool = False
    return_state: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0

    def fused(self) -> bool:
        """True when torch's fused kernel computes exactly this layer (without a mask)."""
        if self.kind == "SimpleRNN":
            return self.activation in ("tanh", "relu")
        return self.activation == "tanh" and self.recurrent_activation == "sigmoid" and \
            (self.kind == "LSTM" or self.reset_after)


def _gru_to_torch(t: Tensor) -> Tensor:
    """Keras GRU gate blocks ``z, r, h`` along the last axis -> torch's ``r, z, n``."""
    z, r, h = t.chunk(3, dim=-1)
    return torch.cat((r, z, h), dim=-1)


def _fused(cfg: RecurrentConfig, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor | None,
           batch_sizes: Tensor | None = None, initial: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
    """``(all outputs, final states)`` from torch's fused kernel: ``x`` ``(N, T, F)`` in
    processing order gives ``(N, T, units)``; packed data with ``batch_sizes`` gives packed
    outputs.  ``initial``: the states ``(N, units)`` to start from (zeros when None), in the
    row order of ``x`` (of the packed batch when packed)."""
    batch = x.shape[0] if batch_sizes is None else int(batch_sizes[0])
    if cfg.kind == "GRU":
        w_ih, w_hh = _gru_to_torch(kernel).t(), _gru_to_torch(recurrent_kernel).t()
        biases = [] if bias is None else [_gru_to_torch(bias[0]), _gru_to_torch(bias[1])]
    else:
        w_ih, w_hh = kernel.t(), recurrent_kernel.t()
        biases = [] if bias is None else [bias, torch.zeros_like(bias)]
    params, has_bias = [w_ih, w_hh, *biases], bias is not None
    if initial is None:
        h0 = x.new_zeros(1, batch, cfg.units)
        starts = [h0, h0] if cfg.kind == "LSTM" else [h0]
    else:
        starts = [state.unsqueeze(0).contiguous() for state in initial]
    hx: Tensor | tuple[Tensor, Tensor] = (starts[0], starts[1]) if cfg.kind == "LSTM" else starts[0]
    run = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru}.get(
        cfg.kind, torch._VF.rnn_tanh if cfg.activation == "tanh" else torch._VF.rnn_relu)
    with warnings.catch_warnings():
        if x.is_cuda:  # cuDNN copies weights that are not one flat buffer (ours are Keras-layout views)
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
        if batch_sizes is None:
            result = run(x, hx, params, has_bias, 1, 0.0, False, False, True)
        else:
            result = run(x, batch_sizes, hx, params, has_bias, 1, 0.0, False, False)
    return result[0], [state.squeeze(0) for state in result[1:]]


def _right_padded(mask: Tensor) -> Tensor | None:
    """The sequence lengths when ``mask`` is right padding with no empty sequence, else None."""
    if torch.compiler.is_compiling():
        return None
    lengths = mask.sum(dim=1)
    steps = torch.arange(mask.shape[1], device=mask.device)
    if int(lengths.min()) == 0 or not torch.equal(mask, steps < lengths[:, None]):
        return None
    return lengths


def _packed(cfg: RecurrentConfig, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor | None,
            lengths: Tensor, initial: list[Tensor] | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(all outputs in Keras' processing order, last output, final states)`` of right-padded
    ``x`` (input order) from the fused kernel on packed sequences: what the step loop computes
    with the mask (a sequence's final states are those of its last real step)."""
    n, t = x.shape[:2]
    steps = torch.arange(t, device=x.device)
    valid = steps < lengths[:, None]
    if cfg.go_backwards:  # Keras meets the padding first (nothing changes), then the tokens last to first
        order = torch.where(valid, lengths[:, None] - 1 - steps, steps)
        x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    if initial is not None and packed.sorted_indices is not None:
        initial = [state.index_select(0, packed.sorted_indices) for state in initial]
    data, states = _fused(cfg, packed.data, kernel, recurrent_kernel, bias, packed.batch_sizes, initial)
    if packed.unsorted_indices is not None:
        states = [state.index_select(0, packed.unsorted_indices) for state in states]
    out, _ = pad_packed_sequence(packed._replace(data=data), batch_first=True, total_length=t)
    last = out.gather(1, (lengths - 1).view(n, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)
    if cfg.go_backwards:  # outputs end the processing order; the padding steps before them output zeros
        shift = (t - lengths)[:, None]
        moved = out.gather(1, (steps - shift).clamp(min=0).unsqueeze(-1).expand(-1, -1, out.shape[2]))
        out = torch.where((steps >= shift).unsqueeze(-1), moved, torch.zeros_like(moved))
    elif not cfg.zero_output_for_mask:  # masked steps repeat the last output
        out = torch.where(valid.unsqueeze(-1), out, last.unsqueeze(1))
    else:  # Keras' last output is the last step's, zeroed when that step is padding
        last = torch.where((lengths == t)[:, None], last, torch.zeros_like(last))
    return out, last, states


def _loop(cfg: RecurrentConfig, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor | None,
          mask: Tensor | None, initial: list[Tensor] | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(all outputs (N, T, units), last output, final states)`` from Keras' cell equations,
    step by step, starting from the states ``initial`` (zeros when None)."""
    act, rec = CELL_ACTIVATIONS[cfg.activation], CELL_ACTIVATIONS[cfg.recurrent_activation]
    units = cfg.units
    in_bias = rec_bias = None
    if bias is not None:
        in_bias, rec_bias = (bias[0], bias[1]) if bias.dim() == 2 else (bias, None)
    projected = torch.matmul(x, kernel)
    if in_bias is not None:
        projected = projected + in_bias
    h = x.new_zeros(x.shape[0], units) if initial is None else initial[0]
    c = initial[1] if initial is not None and cfg.kind == "LSTM" else h
    output = x.new_zeros(x.shape[0], units)
    outputs = []
    for t in range(x.shape[1]):
        xt = projected[:, t]
        if cfg.kind == "SimpleRNN":
            new_h = act(xt + h @ recurrent_kernel)
            new_c = c
        elif cfg.kind == "LSTM":
            i, f, g, o = (xt + h @ recurrent_kernel).chunk(4, dim=-1)
            new_c = rec(f) * c + rec(i) * act(g)
            new_h = rec(o) * act(new_c)
        else:
            x_z, x_r, x_h = xt.chunk(3, dim=-1)
            if cfg.reset_after:
                inner = h @ recurrent_kernel
                if rec_bias is not None:
                    inner = inner + rec_bias
                h_z, h_r, h_h = inner.chunk(3, dim=-1)
                z, r = rec(x_z + h_z), rec(x_r + h_r)
                candidate = act(x_h + r * h_h)
            else:
                h_z, h_r = (h @ recurrent_kernel[:, :2 * units]).chunk(2, dim=-1)
                z, r = rec(x_z + h_z), rec(x_r + h_r)
                candidate = act(x_h + (r * h) @ recurrent_kernel[:, 2 * units:])
            new_h = z * h + (1.0 - z) * candidate
            new_c = c
        if mask is None:
            h, c, output = new_h, new_c, new_h
        else:
            keep = mask[:, t].unsqueeze(-1)
            h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
            output = torch.where(keep, new_h, torch.zeros_like(new_h) if cfg.zero_output_for_mask else output)
        outputs.append(output)
    if not outputs:
        raise ValueError(f"A {cfg.kind} layer needs at least one timestep; received an input of shape "
                         f"{tuple(x.shape)}")
    return torch.stack(outputs, dim=1), output, [h, c] if cfg.kind == "LSTM" else [h]


def recurrent(cfg: RecurrentConfig, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor | None,
              mask: Tensor | None = None, training: bool = False,
              initial_state: list[Tensor] | None = None) -> Tensor | tuple[Tensor, ...]:
    """Keras' recurrent layer ``cfg`` on ``x`` ``(N, T, F)``: ``(N, T, units)`` or ``(N, units)``;
    with ``cfg.return_state`` a tuple of that and the final states (``h``, LSTM: ``h, c``),
    each ``(N, units)``.  ``initial_state``: the states to start from (Keras' zeros when None)."""
    if training and cfg.recurrent_dropout > 0:
        raise ValueError(
            f"{cfg.kind} with `recurrent_dropout`={cfg.recurrent_dropout} cannot train in bnkit (Keras drops the "
            "recurrent state per step with a fixed mask); expected recurrent_dropout=0 or eval() mode")
    if initial_state is not None:
        initial_state = _check_states(cfg, x, initial_state)
    if training and cfg.dropout > 0:  # Keras: one input mask per sequence, shared by all steps and gates
        x = x * F.dropout(x.new_ones(x.shape[0], 1, x.shape[2]), cfg.dropout, training=True)
    outputs, last, states = _run(cfg, x, kernel, recurrent_kernel, bias, mask, initial_state)
    result = outputs if cfg.return_sequences else last
    return (result, *states) if cfg.return_state else result


def _run(cfg: RecurrentConfig, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor | None,
         mask: Tensor | None, initial: list[Tensor] | None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(all outputs, last output, final states)``, by the fastest exact kernel."""
    if mask is not None:
        mask = mask.to(torch.bool)
        lengths = _right_padded(mask) if cfg.fused() else None
        if lengths is not None:
            return _packed(cfg, x, kernel, recurrent_kernel, bias, lengths, initial)
    if cfg.go_backwards:
        x = x.flip(1)
        mask = None if mask is None else mask.flip(1)
    if mask is None and cfg.fused():
        outputs, states = _fused(cfg, x, kernel, recurrent_kernel, bias, initial=initial)
        return outputs, outputs[:, -1], states
    return _loop(cfg, x, kernel, recurrent_kernel, bias, mask, initial)


def _check_states(cfg: RecurrentConfig, x: Tensor, states: list[Tensor]) -> list[Tensor]:
    """The initial states of one recurrent run, checked: one ``(N, units)`` tensor per state."""
    count = 2 if cfg.kind == "LSTM" else 1
    expected = (x.shape[0], cfg.units)
    if len(states) != count or any(tuple(state.shape) != expected for state in states):
        raise ValueError(f"{cfg.kind}: expected {count} initial state(s) of shape {expected}; received shapes "
                         f"{[tuple(state.shape) for state in states]}")
    return [state.to(x.dtype) for state in states]


def split_inputs(layer: str, inputs: Tensor | list[Tensor]) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """``x``, ``[x, mask]``, ``[x, *states]`` or ``[x, mask, *states]`` -> ``(x, mask, states)``,
    checked; the mask is a boolean (or integer) tensor, the states are floating."""
    items = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    x, rest = items[0], items[1:]
    mask = rest.pop(0) if rest and not rest[0].is_floating_point() else None
    if x.dim() != 3:
        raise ValueError(f"{layer} expects inputs of shape (batch, timesteps, features); received shape "
                         f"{tuple(x.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{layer}: the mask must have shape (batch, timesteps) = {tuple(x.shape[:2])}; received "
                         f"{tuple(mask.shape)}")
    return x, mask, rest
