"""Keras ``MultiHeadAttention``: its torch module, its plan (config and call -> module) and
its weights, for tf_keras 2 and Keras 3 files.

Keras projects the query, key and value with ``EinsumDense`` sub-layers (kernels
``(features, heads, key_dim)``, biases ``(heads, key_dim)``; the value's with ``value_dim``),
scales the projected query by ``1/sqrt(key_dim)``, takes its dot products with the keys over
the attention axes (``einsum``), a softmax over the key positions, dropout on those weights
in training, the weighted sum of the values and an output ``EinsumDense`` (kernel
``(heads, value_dim, *output_shape)``); Keras 3's ``use_gate=True`` first multiplies the
attention output by the sigmoid of a ``gate`` projection of the query (stored between the
key's and the value's).  The weights stay in Keras' layout here.

Where Keras keeps them: legacy ``.h5`` files name them ``mha/query/kernel:0`` ... (Keras 3:
without ``:0``), ``.keras`` files under the layer's group in ``_query_dense/vars`` ...
(tf_keras) or ``query_dense/vars`` ... (Keras 3); :func:`v3_groups` gives the groups the
writer makes.  The call (``mha(query, value, key=..., attention_mask=...,
use_causal_mask=...)``) is recorded with tensors among its keyword arguments and read by
:func:`bnkit.keras._call_args.op_call`; it is written back in the dialect it was read in.

Masks: an explicit ``attention_mask``, ``use_causal_mask`` and Keras 3's ``sliding_window``
(keys less than ``sliding_window`` steps away) are applied as each Keras does (tf_keras adds
``-1e9`` to masked scores; Keras 3 replaces them by ``-1e9`` and, on its unfused path taken
with dropout, zeroes fully masked rows after the softmax).  Sequence masks
(``Embedding(mask_zero=True)``, ``Masking``; see :mod:`bnkit.keras._rnn_masks`) carried by
the query, value and key are combined as both frameworks' ``_compute_attention_mask`` does:
``query_mask[:, :, None] & value_mask[:, None, :] & key_mask[:, None, :]``, and with the
causal mask, the sliding window and the explicit mask (then read as a boolean, nonzero
keeps).  A fully masked query row (padding) attends to every key alike, or gives zeros on
Keras 3's unfused path.  The output carries the query's mask.  Explicit Keras 3
``query_mask``/``value_mask``/``key_mask`` arguments are refused.
"""
from __future__ import annotations

import math
import string
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._build import Builder, Info, identity, weighted
from ._config import LayerSpec, TensorArg
from ._entry import LayerEntry, WeightRule, as_is, view_shape
from ._layers import KERAS3_POLICY, keras3_dialect
from ._options import TRAINING_ONLY, bool_option, float_option, initializer, int_option, is_int, training_only
from ._rnn_masks import tensor_mask
from .errors import UnsupportedLayerError

__all__ = ["ENTRIES", "EinsumProjection", "KerasMultiHeadAttention", "attention_equations", "v3_groups"]

#: The sub-layers of a MultiHeadAttention, in Keras' weight order (``gate``: Keras 3's
#: ``use_gate=True`` only).
PARTS = ("query", "key", "gate", "value", "attention_output")
#: Their ``.keras`` groups: tf_keras names the attributes, Keras 3 the public properties.
_V3_NAMES = {False: ("_query_dense", "_key_dense", "_gate_dense", "_value_dense", "_output_dense"),
             True: ("query_dense", "key_dense", "_gate_dense", "value_dense", "output_dense")}
#: Call arguments by position: tf_keras 2 and Keras 3 signatures.
_TF_CALL = ("query", "value", "key", "attention_mask", "return_attention_scores", "training", "use_causal_mask")
_K3_CALL = ("query", "value", "key", "query_mask", "value_mask", "key_mask", "attention_mask",
            "return_attention_scores", "training", "use_causal_mask")
_NEGATIVE = -1e9  # Keras' "large negative number" for float32 scores
#: How masked scores are treated: tf_keras adds -1e9; ``where``: replaced by -1e9 (tf_keras'
#: ``softmax_robust_masking``, Keras 3's fused path); ``where_zero``: then fully masked rows
#: give zeros (Keras 3's unfused path, taken when dropout > 0).
MASK_MODES = ("add", "where", "where_zero")


def attention_equations(rank: int, axes: tuple[int, ...]) -> tuple[str, str]:
    """Keras' einsum equations for projected tensors of ``rank`` (``(B, *dims, heads, depth)``)
    attending over ``axes``: ``scores = einsum(dot, key, query)`` laid out as (batch dims with
    the heads, query positions, key positions), ``out = einsum(combine, weights, value)``."""
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch = [i for i in range(rank) if i not in axes and i != rank - 1]
    fresh = iter(letters[rank:])
    source = "".join(target[i] if i in batch or i == rank - 1 else next(fresh) for i in range(rank))
    product = "".join([target[i] for i in batch] + [target[i] for i in axes] + [source[i] for i in axes])
    return f"{source},{target}->{product}", f"{product},{source}->{target}"


class EinsumProjection(nn.Module):
    """One of MultiHeadAttention's ``EinsumDense`` sub-layers: the last ``bound`` axes of the
    input times ``kernel`` (Keras' layout ``(*bound sizes, *out sizes)``), plus ``bias``."""

    def __init__(self, kernel_shape: tuple[int, ...], bound: int, use_bias: bool,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.bound = bound
        kernel = torch.empty(kernel_shape, device=device)
        if kernel.device.type != "meta":
            fan_in = math.prod(kernel_shape[:bound])
            nn.init.uniform_(kernel, -math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in))
        self.kernel = nn.Parameter(kernel)
        self.bias = nn.Parameter(torch.zeros(kernel_shape[bound:], device=device)) if use_bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tensordot(x, self.kernel, dims=self.bound)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"kernel_shape={tuple(self.kernel.shape)}, bias={self.bias is not None}"


class KerasMultiHeadAttention(nn.Module):
    """Keras ``MultiHeadAttention``: ``forward([query, value, key?, attention_mask?])``.

    ``axes`` are the attention axes of the inputs (Keras' ``attention_axes``, default all
    but the batch and features); ``causal`` is ``use_causal_mask``, ``window`` Keras 3's
    ``sliding_window`` (or None); ``seq_masks`` which of query, value and key come with a
    boolean ``(N, steps)`` sequence mask (inputs after the explicit mask); ``mask_mode`` one of
    :data:`MASK_MODES`, ``keras3`` how an explicit mask is read (Keras 3: nonzero keeps;
    tf_keras: its value, as a boolean only when combined with the causal mask).
    """

    def __init__(self, features: tuple[int, int, int], heads: int, key_dim: int, value_dim: int,
                 output_shape: tuple[int, ...], axes: tuple[int, ...], use_bias: bool = True, dropout: float = 0.0,
                 has_key: bool = False, has_mask: bool = False, causal: bool = False, mask_mode: str = "add",
                 keras3: bool = False, window: int | None = None, use_gate: bool = False,
                 seq_masks: tuple[bool, bool, bool] = (False, False, False),
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if mask_mode not in MASK_MODES:
            raise ValueError(f"`mask_mode` must be one of {MASK_MODES}; received: {mask_mode!r}")
        fq, fk, fv = features
        self.query = EinsumProjection((fq, heads, key_dim), 1, use_bias, device)
        self.key = EinsumProjection((fk, heads, key_dim), 1, use_bias, device)
        self.gate = EinsumProjection((fq, heads, value_dim), 1, use_bias, device) if use_gate else None
        self.value = EinsumProjection((fv, heads, value_dim), 1, use_bias, device)
        self.attention_output = EinsumProjection((heads, value_dim, *output_shape), 2, use_bias, device)
        self.heads, self.key_dim, self.axes = heads, key_dim, tuple(axes)
        self.has_key, self.has_mask, self.causal, self.mask_mode, self.keras3 = has_key, has_mask, causal, \
            mask_mode, keras3
        self.rate, self.window = dropout, window
        self.seq_masks = tuple(bool(flag) for flag in seq_masks)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        query, value = inputs[0], inputs[1]
        key = inputs[2] if self.has_key else value
        first = 2 + self.has_key
        mask = inputs[first] if self.has_mask else None
        sequence = iter(inputs[first + self.has_mask:])
        q_mask, v_mask, k_mask = (next(sequence) if flag else None for flag in self.seq_masks)
        q = self.query(query) * (1.0 / math.sqrt(float(self.key_dim)))
        k, v = self.key(key), self.value(value)
        if mask is None and not any(self.seq_masks) and self.window is None and self.axes == (1,) \
                and query.dim() == 3 and not (self.training and self.rate > 0):
            # one attention axis, no explicit mask: torch's fused kernel (tested against the einsum path)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=self.causal, scale=1.0).transpose(1, 2)
        else:
            auto = None
            for part in (None if q_mask is None else q_mask[:, :, None] != 0,
                         None if v_mask is None else v_mask[:, None, :] != 0,
                         None if k_mask is None else k_mask[:, None, :] != 0):
                auto = part if auto is None else (auto if part is None else auto & part)
            auto = None if auto is None else auto.unsqueeze(1)  # over the heads
            out = self.attend(q, k, v, self._mask(mask, q.shape[1], k.shape[1], q.device, auto))
        if self.gate is not None:  # Keras 3's gated attention: sigmoid(query projection) per head and channel
            out = out * torch.sigmoid(self.gate(query))
        return self.attention_output(out)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Keras' attention on projected, scaled tensors; ``mask`` broadcasts to the scores."""
        dot, combine = attention_equations(q.dim(), self.axes)
        scores = torch.einsum(dot, k, q)
        if mask is not None:
            if self.mask_mode == "add" and mask.dtype != torch.bool:
                scores = scores + (1.0 - mask.to(scores.dtype)) * _NEGATIVE
            elif self.mask_mode == "add":
                scores = scores + (~mask).to(scores.dtype) * _NEGATIVE
            else:
                scores = torch.where(mask, scores, torch.full((), _NEGATIVE, dtype=scores.dtype, device=scores.device))
        n = len(self.axes)
        weights = torch.softmax(scores.flatten(-n), dim=-1).view(scores.shape)
        if mask is not None and self.mask_mode == "where_zero":
            weights = torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
        if self.training and self.rate > 0:  # Keras' Dropout: kept weights scaled by 1/(1 - rate)
            weights = F.dropout(weights, self.rate, training=True)
        return torch.einsum(combine, weights, v)

    def _mask(self, given: Tensor | None, t: int, s: int, device: torch.device,
              auto: Tensor | None = None) -> Tensor | None:
        """The mask over ``(B, heads, T, S)`` scores, as the Keras that wrote the model builds it
        (``auto``: the sequence masks' ``(B, 1, T, S)`` part)."""
        causal = torch.ones(t, s, dtype=torch.bool, device=device).tril() if self.causal else None
        if self.window is not None:
            steps = torch.arange(t, device=device)[:, None] - torch.arange(s, device=device)[None, :]
            band = steps.abs() < self.window
            causal = band if causal is None else causal & band
        if auto is not None:
            causal = auto if causal is None else auto & causal
        if given is None:
            return causal
        if given.dim() == 3:
            given = given.unsqueeze(1)
        if self.keras3 or causal is not None:
            keep = given != 0
            return keep if causal is None else keep & causal
        if self.mask_mode != "add":  # tf_keras' robust masking keeps values > 0.5
            return given > 0.5 if given.dtype != torch.bool else given
        return given

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, key_dim={self.key_dim}, axes={self.axes}, dropout={self.rate}, "
                f"causal={self.causal}, window={self.window}, mask={self.has_mask}, mask_mode={self.mask_mode!r}, "
                f"seq_masks={self.seq_masks}")


# ---- plan -----------------------------------------------------------------------------
def _refuse(b: Builder, problem: str, expected: str, received: object) -> UnsupportedLayerError:
    return UnsupportedLayerError(str(b.error(problem, expected, received)))


def _bind(b: Builder, spec: LayerSpec, keras3: bool) -> dict[str, Any]:
    """The call's arguments by name (positional ones by the signature of the Keras that wrote it)."""
    call = spec.call
    if call is None:
        raise b.error("MultiHeadAttention needs its call arguments (query, value); a Sequential model cannot give "
                      "them", "a functional model calling mha(query, value[, key])", [x for x in spec.inbound])
    names = _K3_CALL if keras3 else _TF_CALL
    if len(call.args) > len(names):
        raise b.error("too many positional call arguments", f"at most {len(names)}", len(call.args))
    bound = dict(zip(names, call.args))
    for key, value in call.kwargs.items():
        if key not in names or key in bound:
            raise _refuse(b, f"unsupported call argument `{key}`", f"arguments among {list(names)}", value)
        bound[key] = value
    if bound.get("return_attention_scores"):
        raise _refuse(b, "`return_attention_scores=True` gives two outputs (the scores too), which bnkit does not "
                      "rebuild", "return_attention_scores=False", True)
    for key in ("query_mask", "value_mask", "key_mask"):
        if bound.get(key) is not None:
            raise _refuse(b, f"a mask passed explicitly as `{key}`, which bnkit does not rebuild", f"{key}=None "
                          "(the masks of Embedding(mask_zero=True) or Masking on the inputs are applied without it)",
                          "a mask tensor")
    for key in ("query", "value"):
        if not isinstance(bound.get(key), TensorArg):
            raise b.error(f"`{key}` must be a tensor", "a layer output", bound.get(key))
    for key in ("key", "attention_mask"):
        if bound.get(key) is not None and not isinstance(bound[key], TensorArg):
            raise b.error(f"`{key}` must be a tensor or None", "a layer output", bound[key])
    causal = bound.get("use_causal_mask", False)
    if not isinstance(causal, bool) or not isinstance(bound.get("training", False), (bool, type(None))):
        raise b.error("invalid `use_causal_mask` or `training`", "True or False", [causal, bound.get("training")])
    return bound


def _output_shape(b: Builder, cfg: dict[str, Any], features: int) -> tuple[int, ...]:
    raw = cfg.get("output_shape")
    if not raw:  # Keras: None (or an empty value) projects back to the query's features
        return (features,)
    values = [raw] if is_int(raw) else raw
    if not isinstance(values, (list, tuple)) or not all(is_int(v) and 0 < v < 2**31 for v in values):
        raise b.error("invalid `output_shape`", "None, a positive int or a list of them", raw)
    return tuple(int(v) for v in values)


def _axes(b: Builder, cfg: dict[str, Any], rank: int) -> tuple[int, ...]:
    raw = cfg.get("attention_axes")
    if raw is None:
        return tuple(range(1, rank - 1))
    values = [raw] if is_int(raw) else raw
    if not isinstance(values, (list, tuple)) or not values \
            or not all(is_int(v) and 1 <= v <= rank - 2 for v in values) \
            or len(set(values)) != len(values):
        raise _refuse(b, "unsupported `attention_axes`", f"None or distinct axes in [1, {rank - 2}] of the rank-{rank} "
                      "inputs (neither the batch nor the features; negative axes are not read)", raw)
    return tuple(int(v) for v in values)


def _feature(b: Builder, x: Info, what: str) -> int:
    if x.shape[-1] is None:
        raise b.error(f"unknown {what} features", "a fixed last dimension", x.shape)
    return int(x.shape[-1])


def multi_head_attention(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    cfg = spec.config
    keras3 = keras3_dialect(cfg)
    bound = _bind(b, spec, keras3)
    query, value = xs[bound["query"].index], xs[bound["value"].index]
    key = xs[bound["key"].index] if bound.get("key") is not None else None
    mask = xs[bound["attention_mask"].index] if bound.get("attention_mask") is not None else None
    causal = bool(bound.get("use_causal_mask", False))
    rank = len(query.shape)
    if rank < 3 or any(len(x.shape) != rank for x in (value, key or value)):
        raise b.error("query, value and key must have one rank of at least 3", "(batch, ..., features) tensors",
                      [x.shape for x in (query, value, key) if x is not None])
    if value.shape[1:-1] != (key or value).shape[1:-1]:
        raise b.error("value and key differ in a dimension other than the last", "equal shapes but features",
                      [value.shape, (key or value).shape])
    heads, key_dim = int_option(b, cfg, "num_heads"), int_option(b, cfg, "key_dim")
    value_dim = key_dim if cfg.get("value_dim") is None else int_option(b, cfg, "value_dim")
    rate = float_option(b, cfg, "dropout", 0.0, 0.0, 1.0)
    use_bias = bool_option(b, cfg, "use_bias", True)
    robust = bool_option(b, cfg, "softmax_robust_masking", False)
    use_gate = bool_option(b, cfg, "use_gate", False)
    window = cfg.get("sliding_window")
    if window is not None and not (is_int(window) and 0 < window < 2**31):
        raise b.error("invalid `sliding_window`", "None or a positive int", window)
    features = (_feature(b, query, "query"), _feature(b, key or value, "key"), _feature(b, value, "value"))
    out_shape = _output_shape(b, cfg, features[0])
    axes = _axes(b, cfg, rank)
    calls = spec.calls[b.call] if spec.calls else ()
    found = [tensor_mask(b, calls[bound[name].index]) if bound.get(name) is not None and calls else None
             for name in ("query", "value", "key")]
    seq = tuple(m is not None for m in found)
    if (mask is not None or causal or window is not None or any(seq)) and axes != (1,):
        raise _refuse(b, "`attention_mask`, `use_causal_mask`, `sliding_window` and sequence masks are supported "
                      "only with one attention axis",
                      "(batch, steps, features) inputs with attention_axes None or [1]", axes)
    if mask is not None:
        t, s = query.shape[1], value.shape[1]
        if len(mask.shape) != 3 or any(m not in (None, 1) and n is not None and m != n
                                       for m, n in zip(mask.shape[1:], (t, s))):
            raise b.error("invalid `attention_mask` shape", f"(batch, {t}, {s})", mask.shape)
    mode = ("where_zero" if rate > 0 else "where") if keras3 else ("where" if robust else "add")
    training_only(b, cfg, TRAINING_ONLY)
    kernel_init, bias_init = initializer(b, cfg, "kernel_initializer"), initializer(b, cfg, "bias_initializer")
    shapes = {"query": ((features[0], heads, key_dim), (heads, key_dim)),
              "key": ((features[1], heads, key_dim), (heads, key_dim)),
              "gate": ((features[0], heads, value_dim), (heads, value_dim)),
              "value": ((features[2], heads, value_dim), (heads, value_dim)),
              "attention_output": ((heads, value_dim, *out_shape), out_shape)}
    weight_shapes: dict[str, tuple[int, ...]] = {}
    inits: dict[str, Any] = {}
    for part in (p for p in PARTS if p != "gate" or use_gate):
        weight_shapes[f"{part}/kernel"], inits[f"{part}/kernel"] = shapes[part][0], kernel_init
        if use_bias:
            weight_shapes[f"{part}/bias"], inits[f"{part}/bias"] = shapes[part][1], bias_init
    b.weight_shapes[spec.name] = weight_shapes
    trainable = cfg.get("trainable", True) is not False
    has_key, has_mask = key is not None, mask is not None

    def make(device: str | None) -> nn.Module:
        return KerasMultiHeadAttention(features, heads, key_dim, value_dim, out_shape, axes, use_bias, rate, has_key,
                                       has_mask, causal, mode, keras3, window, use_gate, seq, device=device)

    inputs = [query, value] + ([key] if key is not None else []) + ([mask] if mask is not None else [])
    slots = [b.take(x, identity(len(x.shape))) for x in inputs] + [m[0] for m in found if m is not None]
    slot = b.run(spec.name, weighted(b, make, _RULES, inits, trainable), slots, many=True)
    config: dict[str, Any] = {
        "name": spec.name, "trainable": trainable, "dtype": dict(KERAS3_POLICY) if keras3 else "float32",
        "num_heads": heads, "key_dim": key_dim, "value_dim": value_dim, "dropout": rate, "use_bias": use_bias,
        "output_shape": cfg.get("output_shape") or None, "attention_axes": list(axes)}
    for name, value_ in (("kernel_initializer", kernel_init), ("bias_initializer", bias_init)):
        if value_ is not None:
            config[name] = value_
    if keras3:
        seed = cfg.get("seed") if is_int(cfg.get("seed")) else None
        config.update(use_gate=use_gate, sliding_window=window, seed=seed)
    else:
        k = key or value
        config.update(query_shape=list(query.shape), key_shape=list(k.shape), value_shape=list(value.shape),
                      softmax_robust_masking=robust)
    b.written[spec.name] = {"inbound_nodes": [_node(spec, bound, xs, keras3)]}
    return Info((*query.shape[:-1], *out_shape), identity(rank + len(out_shape) - 1), slot), config


def _node(spec: LayerSpec, bound: dict[str, Any], xs: list[Info], keras3: bool) -> Any:
    """The call node bnkit writes, in the dialect it was read in."""
    def ref(arg: TensorArg) -> list[Any]:
        return list(spec.calls[0][arg.index]) if spec.calls else [spec.inbound[arg.index], 0, 0]

    def keras3_tensor(arg: TensorArg) -> dict[str, Any]:
        return {"class_name": "__keras_tensor__", "config": {"shape": list(xs[arg.index].shape), "dtype": "float32",
                                                             "keras_history": ref(arg)}}

    kwargs: dict[str, Any] = {}
    for name in ("key", "attention_mask"):
        if bound.get(name) is not None:
            kwargs[name] = keras3_tensor(bound[name]) if keras3 else ref(bound[name])
    if bound.get("use_causal_mask"):
        kwargs["use_causal_mask"] = True
    if keras3:
        return {"args": [keras3_tensor(bound["query"]), keras3_tensor(bound["value"])], "kwargs": kwargs}
    return [[*ref(bound["query"]), {"value": ref(bound["value"]), **kwargs}]]


# ---- weights and storage ---------------------------------------------------------------
_RULES = tuple(WeightRule(f"{part}/{weight}", f"{part}.{weight}", as_is, view_shape(as_is))
               for part in PARTS for weight in ("kernel", "bias"))


def v3_groups(class_name: str, weights: int, config: dict[str, Any]) -> list[tuple[str, int]] | None:
    """Where a ``.keras`` file keeps a MultiHeadAttention's weights (see
    :func:`bnkit.keras._rnn.v3_groups`): under its four projections, named as the Keras
    that wrote ``config`` names them, plus the empty softmax and dropout groups; else None."""
    if class_name != "MultiHeadAttention":
        return None
    gated = config.get("use_gate") is True
    per = weights // (len(PARTS) - (not gated))
    names = [name for part, name in zip(PARTS, _V3_NAMES[keras3_dialect(config)]) if part != "gate" or gated]
    return [("", 0), *((name, per) for name in names), ("_softmax", 0), ("_dropout_layer", 0)]


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("MultiHeadAttention", multi_head_attention, _RULES,
               example=((None, 4, 6), {"num_heads": 2, "key_dim": 3})),
)
