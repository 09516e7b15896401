"""The sequence family: Keras ``Embedding``, ``Masking``, ``SimpleRNN``, ``LSTM``, ``GRU`` and
``Bidirectional`` (config -> torch modules of :mod:`bnkit.keras._rnn_layers`, weights).

Weights stay in Keras' layout on the torch modules (``kernel``, ``recurrent_kernel``,
``bias``; Bidirectional: ``forward_*`` then ``backward_*``), so every weight rule is the
identity.  Keras stores a recurrent layer's weights under its cell (``lstm/lstm_cell/
kernel:0``, ``.keras``: ``layers/lstm/cell/vars/0``); :func:`v3_groups` says where.

Masks (``Embedding(mask_zero=True)``, ``Masking``) are tracked as Keras propagates them:
unchanged through the layers in :data:`MASK_PASSING`, applied by the recurrent layers
(which pass it on when they return sequences) and dropped by ``Flatten``.  A mask that
would reach any other layer is refused, since bnkit would silently compute it unmasked.

States: with ``return_state`` a layer gives several outputs (the output, then the final
states: ``h``, LSTM ``h, c``; Bidirectional the forward layer's, then the backward layer's,
unmerged), and a call may start from ``initial_state`` tensors, which come after the
sequence among the call's inputs (tf_keras records them so; Keras 3 as keyword tensors, see
:mod:`bnkit.keras._graph`).  The writer records them back in the dialect that was read.
Keras 3 gives a layer its input's mask only when the call has one tensor argument, so a
Keras 3 call with ``initial_state`` runs unmasked (its output still carries the mask);
tf_keras applies it.  bnkit does what the framework that wrote the config does.
"""
from __future__ import annotations

from dataclasses import replace
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import initializers
from ._build import Builder, Info, identity
from ._config import LayerSpec
from ._entry import LayerEntry, WeightRule, as_is, view_shape
from ._options import bool_option, choice, float_option, initializer, int_option, known, one_input, training_only
from ._rnn_masks import (MASK_PASSING, RECURRENT, call_input, check_mask_reach, describe, incoming_mask, masks, output,
                         pending_input)
from ._rnn_layers import (CELL_ACTIVATIONS, GATES, KerasAttention, KerasBidirectional, KerasEmbedding, KerasGRU,
                          KerasLSTM, KerasMasking, KerasSimpleRNN, RecurrentConfig, SequenceMask)
from .errors import UnsupportedLayerError

__all__ = ["ENTRIES", "MASK_PASSING", "v3_groups"]

Handler = Callable[[Builder, LayerSpec, list[Info]], tuple[Info | list[Info], dict[str, Any]]]
_MODULES = {"SimpleRNN": KerasSimpleRNN, "LSTM": KerasLSTM, "GRU": KerasGRU}
_CELLS = {"SimpleRNN": "simple_rnn_cell", "LSTM": "lstm_cell", "GRU": "gru_cell"}
_TRAINING_ONLY = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
                  "kernel_constraint", "recurrent_constraint", "bias_constraint", "embeddings_regularizer",
                  "embeddings_constraint")
def _common(spec: LayerSpec, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = spec.config if cfg is None else cfg
    return {"name": cfg.get("name", spec.name), "trainable": cfg.get("trainable", True) is not False,
            "dtype": "float32"}


def _initializer(b: Builder, cfg: dict[str, Any], key: str) -> dict[str, Any] | None:
    raw = cfg.get(key)
    if isinstance(raw, dict) and raw.get("class_name") == "Orthogonal":
        gain = (raw.get("config") or {}).get("gain", 1.0)
        return {"module": "keras.initializers", "class_name": "Orthogonal",
                "config": {"gain": float(gain) if isinstance(gain, (int, float)) else 1.0, "seed": None},
                "registered_name": None}  # drawn by torch's orthogonal_, not bnkit.initializers
    return initializer(b, cfg, key)


def _factory(b: Builder, make: Callable[[str | None], nn.Module], inits: dict[str, dict[str, Any] | None],
             trainable: bool, forget_bias: bool | None = None) -> Callable[[], nn.Module]:
    """A module factory: empty tensors when loading, Keras-initialised ones otherwise.

    ``inits`` maps a parameter name to its Keras initializer (None: the module's default,
    Keras' own defaults); ``forget_bias`` (LSTMs only) is ``unit_forget_bias``: the
    forget-gate biases start at 1, else where the bias initializer puts them.
    """
    init = b.init

    def factory() -> nn.Module:
        if not init:
            module = make("meta")
            for name, parameter in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype)))
        else:
            module = make(None)
            with torch.no_grad():
                for name, raw in inits.items():
                    tensor = getattr(module, name, None)
                    if raw is None or tensor is None:
                        continue
                    if raw.get("class_name") == "Orthogonal":
                        nn.init.orthogonal_(tensor, gain=float((raw.get("config") or {}).get("gain", 1.0)))
                    else:
                        tensor.copy_(initializers.get(raw)(tuple(tensor.shape)))
                for name in ("bias", "forward_bias", "backward_bias"):
                    tensor = getattr(module, name, None)
                    if forget_bias is not None and tensor is not None:
                        units = tensor.shape[-1] // 4
                        if forget_bias:
                            tensor[units:2 * units] = 1.0
                        elif inits.get(name) is None:  # the module's default opened the gate
                            tensor[units:2 * units] = 0.0
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        return module

    return factory


# ---- handlers ------------------------------------------------------------------------
def embedding(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    input_dim, output_dim = int_option(b, cfg, "input_dim"), int_option(b, cfg, "output_dim")
    mask_zero = bool_option(b, cfg, "mask_zero", False)
    for key in ("sparse", "lora_rank"):
        if cfg.get(key) not in (None, False):
            raise UnsupportedLayerError(str(b.error(f"unsupported `{key}`", "null or false", cfg[key])))
    if cfg.get("quantization_config") is not None or cfg.get("dtype") not in (None, "float32") and \
            not (isinstance(cfg.get("dtype"), dict) and (cfg["dtype"].get("config") or {}).get("name") == "float32"):
        raise UnsupportedLayerError(str(b.error("unsupported dtype or quantization", "float32",
                                                cfg.get("quantization_config") or cfg.get("dtype"))))
    training_only(b, cfg, _TRAINING_ONLY)
    inits = {"weight": _initializer(b, cfg, "embeddings_initializer")}
    factory = _factory(b, lambda device: KerasEmbedding(input_dim, output_dim, device=device), inits,
                       _common(spec)["trainable"])
    b.weight_shapes[spec.name] = {"embeddings": (input_dim, output_dim)}
    ids = b.take(x, identity(len(x.shape)))
    slot = b.run(spec.name, factory, [ids])
    if mask_zero:  # each call masks its own ids (a shared Embedding is called on several inputs)
        masks(b)[output(b, spec)] = (b.run(b.aux_name("mask"), SequenceMask, [ids]), (call_input(b, spec), 0.0, False))
        check_mask_reach(b, output(b, spec))
    config = {**_common(spec), "input_dim": input_dim, "output_dim": output_dim, "mask_zero": mask_zero}
    if inits["weight"] is not None:
        config["embeddings_initializer"] = inits["weight"]
    return Info(x.shape + (output_dim,), identity(len(x.shape) + 1), slot), config


def masking(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs, 3), spec.config
    value = float_option(b, cfg, "mask_value", 0.0, -float("inf"), float("inf"))
    slot = b.take(x, identity(3))
    mask = b.run(b.aux_name("mask"), lambda: SequenceMask(value, reduce_last=True), [slot])
    out = b.run(spec.name, KerasMasking, [slot, mask], many=True)
    masks(b)[output(b, spec)] = (mask, (call_input(b, spec), value, True))
    check_mask_reach(b, output(b, spec))
    return Info(x.shape, identity(3), out), {**_common(spec), "mask_value": value}


def _activation(b: Builder, cfg: dict[str, Any], key: str, default: str, keras3: bool) -> str:
    value = cfg.get(key, default)
    if isinstance(value, dict) and isinstance(value.get("config"), str):
        value = value["config"]
    value = "linear" if value is None else value
    if not isinstance(value, str) or value not in CELL_ACTIVATIONS or value == "hard_sigmoid_keras3":
        names = [n for n in CELL_ACTIVATIONS if n != "hard_sigmoid_keras3"]
        raise UnsupportedLayerError(str(b.error(f"unsupported `{key}`", f"one of {names}", value)))
    if value == "hard_sigmoid" and keras3:
        return "hard_sigmoid_keras3"
    return value


def _recurrent_config(b: Builder, kind: str, cfg: dict[str, Any], keras3: bool,
                      in_bidirectional: bool = False) -> tuple[RecurrentConfig, dict[str, Any]]:
    """The computation of one recurrent layer config, and the config bnkit writes back."""
    for key, what in (("stateful", "stateful RNNs keep states across batches"),
                      ("time_major", "time-major inputs")):
        if bool_option(b, cfg, key, False):
            raise UnsupportedLayerError(str(b.error(f"`{key}=True` is not supported ({what})", f"{key}=False",
                                                    True)))
    units = int_option(b, cfg, "units")
    keras3 = keras3 or isinstance(cfg.get("dtype"), dict) or "seed" in cfg
    rc = RecurrentConfig(
        kind, units, _activation(b, cfg, "activation", "tanh", keras3),
        _activation(b, cfg, "recurrent_activation", "sigmoid", keras3) if kind != "SimpleRNN" else "sigmoid",
        bool_option(b, cfg, "use_bias", True),
        bool_option(b, cfg, "reset_after", True) if kind == "GRU" else True,
        bool_option(b, cfg, "return_sequences", False), bool_option(b, cfg, "go_backwards", False),
        bool_option(b, cfg, "zero_output_for_mask", False), bool_option(b, cfg, "return_state", False),
        float_option(b, cfg, "dropout", 0.0, 0.0, 1.0), float_option(b, cfg, "recurrent_dropout", 0.0, 0.0, 1.0))
    bool_option(b, cfg, "unroll", False)  # checked; unrolling changes nothing in the math
    training_only(b, cfg, _TRAINING_ONLY)
    canonical = {**_common(LayerSpec(cfg.get("name", kind.lower()), kind, cfg, ()), cfg), "units": units,
                 "activation": rc.activation.replace("_keras3", ""), "use_bias": rc.use_bias,
                 "return_sequences": rc.return_sequences, "return_state": rc.return_state,
                 "go_backwards": rc.go_backwards, "stateful": False, "unroll": bool(cfg.get("unroll", False)),
                 "dropout": rc.dropout, "recurrent_dropout": rc.recurrent_dropout}
    if kind != "SimpleRNN":
        canonical["recurrent_activation"] = rc.recurrent_activation.replace("_keras3", "")
    if kind == "GRU":
        canonical["reset_after"] = rc.reset_after
    if kind == "LSTM":
        canonical["unit_forget_bias"] = bool_option(b, cfg, "unit_forget_bias", True)
    if "hard_sigmoid_keras3" in (rc.activation, rc.recurrent_activation):
        canonical["seed"] = None  # a Keras 3 key: tf_keras refuses the file instead of misreading it
        b.note("written with Keras 3's `seed` key: its hard_sigmoid is Keras 3's, which tf_keras cannot express")
    if rc.zero_output_for_mask and not in_bidirectional:
        canonical["zero_output_for_mask"] = True
    for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
        value = _initializer(b, cfg, key)
        if value is not None:
            canonical[key] = value
    return rc, canonical


def _inits(canonical: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any] | None]:
    return {f"{prefix}kernel": canonical.get("kernel_initializer"),
            f"{prefix}recurrent_kernel": canonical.get("recurrent_initializer"),
            f"{prefix}bias": canonical.get("bias_initializer")}


def _shapes(rc: RecurrentConfig, features: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
    width = GATES[rc.kind] * rc.units
    shapes = {f"{prefix}kernel": (features, width), f"{prefix}recurrent_kernel": (rc.units, width)}
    if rc.use_bias:
        shapes[f"{prefix}bias"] = (2, width) if rc.kind == "GRU" and rc.reset_after else (width,)
    return shapes


def _sequence_input(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, int, list[int]]:
    """The sequence input of a recurrent call (``xs``: it, then any initial states): its Info,
    its features and the module's input slots (the sequence, then the mask it applies)."""
    x = one_input(b, xs[:1], 3)
    features = known(b, x.shape[2], "input features (last axis)")
    slots = [b.take(x, identity(3))]
    mask = incoming_mask(b, spec)
    recorded = spec.mask_of(b.call)
    if recorded is not None and (mask is None or mask[1] != recorded):
        raise UnsupportedLayerError(str(b.error(
            f"Keras 3 calls this layer with the mask `{describe(recorded)}`, which bnkit does not rebuild here",
            "the mask of an Embedding(mask_zero=True) or Masking layer on that input, reaching this layer through "
            f"{', '.join(sorted(MASK_PASSING))} or sequence-returning recurrent layers", recorded)))
    if b.spec.keras3 and len(xs) > 1 and recorded is not None:
        raise UnsupportedLayerError(str(b.error(
            "Keras 3 calls this layer with `initial_state` and an explicit `mask`, which bnkit cannot write back "
            "(Keras 3 fills in no mask for such a call)", "initial_state without mask=, or mask= without "
            "initial_state", recorded)))
    if mask is not None:
        masks(b)[pending_input(b, spec)] = mask
        if b.spec.keras3 and len(xs) > 1 and recorded is None:
            # Keras 3 fills in a call's mask only when the call has one tensor argument: with
            # initial_state the layer runs unmasked, and its output still carries the mask
            b.note("Keras 3 runs this call (with initial_state) without the mask its input carries; so does bnkit")
            return x, features, slots
    return x, features, slots + ([mask[0]] if mask is not None else [])


def _output(b: Builder, spec: LayerSpec, x: Info, slot: int, width: int, sequences: bool) -> Info:
    mask = masks(b).pop(pending_input(b, spec), None)
    if sequences and mask is not None:
        masks(b)[output(b, spec)] = mask
        check_mask_reach(b, output(b, spec))
    shape = (x.shape[0], x.shape[1], width) if sequences else (x.shape[0], width)
    return Info(shape, identity(len(shape)), slot)


def _state_count(rc: RecurrentConfig) -> int:
    return 2 if rc.kind == "LSTM" else 1


def _initial_states(b: Builder, spec: LayerSpec, states: list[Info], configs: list[RecurrentConfig]) -> list[int]:
    """The slots of a call's initial states (``initial_state=``: after the input; a
    Bidirectional's forward states, then its backward ones), checked against the layers."""
    if not states:
        return []
    units = [rc.units for rc in configs for _ in range(_state_count(rc))]
    if len(states) != len(units) or any(len(state.shape) != 2 or state.shape[1] not in (None, width)
                                        for state, width in zip(states, units)):
        raise b.error("wrong `initial_state`", f"{len(units)} state tensor(s) of shapes "
                      f"{[(None, width) for width in units]}", [state.shape for state in states])
    b.call_kwargs[(spec.name, b.call)] = {"initial_state": len(states)}
    return [b.take(state, identity(2)) for state in states]


def _with_states(b: Builder, out: Info, slot: int, configs: list[RecurrentConfig],
                 extra: list[Info] = ()) -> Info | list[Info]:  # type: ignore[assignment]
    """The layer's outputs: ``out`` alone, or (``return_state``; ``extra``: a Bidirectional's
    unmerged backward output) the outputs the module returns as a tuple, each in its slot."""
    if not configs[0].return_state and not extra:
        return out
    infos = [out, *extra] + [Info((out.shape[0], rc.units), identity(2), 0)
                             for rc in (configs if configs[0].return_state else []) for _ in range(_state_count(rc))]
    return [info._replace(slot=b.item(slot, index)) for index, info in enumerate(infos)]


def _recurrent(kind: str) -> Handler:
    def plan(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info | list[Info], dict[str, Any]]:
        x, features, slots = _sequence_input(b, spec, xs)
        rc, canonical = _recurrent_config(b, kind, spec.config, False)
        canonical["name"] = spec.name
        slots += _initial_states(b, spec, xs[1:], [rc])
        make = _MODULES[kind]
        factory = _factory(b, lambda device: make(features, rc, device=device), _inits(canonical),
                           canonical["trainable"], canonical.get("unit_forget_bias") if kind == "LSTM" else None)
        b.weight_shapes[spec.name] = _shapes(rc, features)
        slot = b.run(spec.name, factory, slots, many=len(slots) > 1)
        return _with_states(b, _output(b, spec, x, slot, rc.units, rc.return_sequences), slot, [rc]), canonical
    return plan


def bidirectional(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info | list[Info], dict[str, Any]]:
    x, features, slots = _sequence_input(b, spec, xs)
    cfg = spec.config
    merge = None if "merge_mode" in cfg and cfg["merge_mode"] is None else \
        choice(b, cfg, "merge_mode", ("concat", "sum", "mul", "ave"), "concat")
    layers = []
    for key in ("layer", "backward_layer"):
        raw = cfg.get(key)
        if raw is None and key == "backward_layer":
            continue
        if not (isinstance(raw, dict) and raw.get("class_name") in RECURRENT and isinstance(raw.get("config"), dict)):
            raise UnsupportedLayerError(str(b.error(f"unsupported `{key}`", f"a {', '.join(RECURRENT)} config",
                                                    raw)))
        layers.append((raw["class_name"], raw["config"]))
    keras3 = isinstance(cfg.get("dtype"), dict)
    forward, forward_canonical = _recurrent_config(b, *layers[0], keras3, in_bidirectional=True)
    if len(layers) > 1:
        if layers[1][0] != layers[0][0]:
            raise UnsupportedLayerError(str(b.error("forward and backward layers of different classes",
                                                    layers[0][0], layers[1][0])))
        backward, backward_canonical = _recurrent_config(b, *layers[1], keras3, in_bidirectional=True)
        if backward.go_backwards == forward.go_backwards or backward.return_sequences != forward.return_sequences \
                or backward.return_state != forward.return_state:
            raise b.error("`backward_layer` must run the other way with the same return_sequences and return_state",
                          f"go_backwards={not forward.go_backwards}, return_sequences={forward.return_sequences}, "
                          f"return_state={forward.return_state}",
                          [backward.go_backwards, backward.return_sequences, backward.return_state])
    else:
        backward, backward_canonical = replace(forward, go_backwards=not forward.go_backwards), None
    inits = {**_inits(forward_canonical, "forward_"), **_inits(backward_canonical or forward_canonical, "backward_")}
    lstm_forget = forward_canonical.get("unit_forget_bias") if forward.kind == "LSTM" else None
    factory = _factory(b, lambda device: KerasBidirectional(features, forward, backward, merge, device=device),
                       inits, _common(spec)["trainable"], lstm_forget)
    b.weight_shapes[spec.name] = {**_shapes(forward, features, "forward_"), **_shapes(backward, features, "backward_")}
    slots += _initial_states(b, spec, xs[1:], [forward, backward])
    if merge is None and forward.return_sequences and _mask_slots(b, spec):
        raise UnsupportedLayerError(str(b.error(
            "`merge_mode=None` with a sequence mask: both unmerged outputs would carry it", "a merge_mode or no mask",
            None)))
    slot = b.run(spec.name, factory, slots, many=len(slots) > 1)
    width = forward.units + backward.units if merge == "concat" else forward.units
    if merge not in ("concat", None) and forward.units != backward.units:
        raise b.error("forward and backward units differ", f"{forward.units}", backward.units)
    config = {**_common(spec), "merge_mode": merge,
              "layer": {"module": "keras.layers", "class_name": forward.kind, "config": forward_canonical,
                        "registered_name": None}}
    if backward_canonical is not None:
        config["backward_layer"] = {"module": "keras.layers", "class_name": backward.kind,
                                    "config": backward_canonical, "registered_name": None}
    out = _output(b, spec, x, slot, width, forward.return_sequences)
    if merge is None:  # two outputs: the forward one, then the backward one (in input order)
        backward_out = out._replace(shape=out.shape[:-1] + (backward.units,))
        return _with_states(b, out, slot, [forward, backward], [backward_out]), config
    return _with_states(b, out, slot, [forward, backward]), config


def _mask_slots(b: Builder, spec: LayerSpec) -> set[int]:
    mask = masks(b).get(pending_input(b, spec))
    return {mask[0]} if mask is not None else set()


def attention(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    cfg = spec.config
    if len(xs) not in (2, 3) or any(len(x.shape) != 3 for x in xs):
        raise b.error("wrong inputs", "[query, value] or [query, value, key] of rank 3", [x.shape for x in xs])
    for key in ("causal", "use_causal_mask"):
        if cfg.get(key):
            raise UnsupportedLayerError(str(b.error(f"`{key}=True` is not supported", f"{key}=False", True)))
    use_scale = bool_option(b, cfg, "use_scale", False)
    score_mode = choice(b, cfg, "score_mode", ("dot", "concat"), "dot")
    rate = float_option(b, cfg, "dropout", 0.0, 0.0, 1.0)
    query, value = xs[0], xs[1]
    depth = known(b, query.shape[2], "query features")
    if any(known(b, x.shape[2], "features") != depth for x in (xs[2:] if len(xs) > 2 else [value])):
        raise b.error("query and key features differ", f"{depth} features", [x.shape for x in xs])
    factory = _factory(b, lambda device: KerasAttention(use_scale, score_mode, rate, device=device),
                       {}, _common(spec)["trainable"])
    b.weight_shapes[spec.name] = {**({"scale": ()} if use_scale else {}),
                                  **({"concat_score_weight": ()} if score_mode == "concat" else {})}
    slot = b.run(spec.name, factory, [b.take(x, identity(3)) for x in xs], many=True)
    config = {**_common(spec), "use_scale": use_scale, "dropout": rate}
    if score_mode != "dot":  # Keras 3's legacy .h5 reader turns the string "dot" into a function
        config["score_mode"] = score_mode
    return Info((query.shape[0], query.shape[1], value.shape[2]), identity(3), slot), config


# ---- weights and storage ---------------------------------------------------------------
def _rules(prefix: str = "") -> tuple[WeightRule, ...]:
    return tuple(WeightRule(f"{prefix}{name}", f"{prefix}{name}", as_is, view_shape(as_is))
                 for name in ("kernel", "recurrent_kernel", "bias"))


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("Embedding", embedding, (WeightRule("embeddings", "weight", as_is, view_shape(as_is)),),
               example=((None, 5), {"input_dim": 7, "output_dim": 3})),
    LayerEntry("Masking", masking),
    LayerEntry("Attention", attention, (WeightRule("scale", "scale", as_is, view_shape(as_is)),
                                        WeightRule("concat_score_weight", "concat_score_weight", as_is,
                                                   view_shape(as_is))),
               example=((None, 4, 3), {"use_scale": True, "score_mode": "concat"})),
    *(LayerEntry(kind, _recurrent(kind), _rules(), example=((None, 5, 3), {"units": 4, "return_sequences": True}))
      for kind in RECURRENT),
    LayerEntry("Bidirectional", bidirectional, _rules("forward_") + _rules("backward_"),
               example=((None, 5, 3), {"layer": {"class_name": "GRU", "config": {"name": "gru", "units": 2}}})),
)


def v3_groups(class_name: str, weights: int) -> list[tuple[str, int]] | None:
    """Where a ``.keras`` file keeps the weights of a layer of this class: ``(group below the
    layer's own group, how many of the layer's weights in order)``; None for the flat
    ``vars`` of most layers.  Keras writes recurrent weights under their cell, and a
    Bidirectional's under its forward and backward layers (plus an empty template layer)."""
    if class_name in RECURRENT:
        return [("", 0), ("cell", weights)]
    if class_name == "Bidirectional":
        half = weights // 2
        return [("", 0), ("forward_layer", 0), ("forward_layer/cell", half), ("backward_layer", 0),
                ("backward_layer/cell", half), ("layer", 0), ("layer/cell", 0)]
    return None
