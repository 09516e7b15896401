"""The Keras <-> torch weight table, derived from the layer table (:mod:`bnkit.keras._table`).

Each layer entry lists its Keras weights (:class:`~bnkit.keras._entry.WeightRule`: Keras
name, torch tensor, layout change).  For example:

========================  ==========  =========  ======================================
Keras layer / weight      torch type  attribute  layout change (Keras -> torch)
========================  ==========  =========  ======================================
Conv2D ``kernel``         Conv2d      weight     HWIO -> OIHW, ``transpose(3, 2, 0, 1)``
Conv2D ``bias``           Conv2d      bias       none
Dense ``kernel``          Linear      weight     ``(in, out) -> (out, in)``, ``.T``; after a
                                                 torch-order flatten of C channels:
                                                 ``K.reshape(HW, C, U).transpose(2, 1, 0)``
Dense ``bias``            Linear      bias       none
BatchNormalization        bnkit BN or weight,    flat ``(C,)``; Keras stores ``(1, ..., C)``
``gamma`` ... (7 names)   BatchNormNd bias, ...  with ``virtual_batch_size`` or several axes
========================  ==========  =========  ======================================

Each rule maps a torch tensor to a *view* in Keras' layout, so one function serves loading
(copy into the view) and saving (read it).  A :class:`~bnkit.keras.KerasModel` pairs its
modules by the Keras class each was built for; plain torch models by torch type.
"""
from __future__ import annotations

import re

from torch import nn

from ._config import snake_case
from ._entry import WeightRule
from ._table import ENTRIES, TABLE, entry_for_module

__all__ = ["KERAS_ALIASES", "RULES", "WeightRule", "keras_class", "rules_for", "short_name", "snake_case"]

#: Keras class -> its weights in Keras' order (trainable first, then non-trainable).
RULES: dict[str, tuple[WeightRule, ...]] = {entry.keras_class: entry.weights for entry in ENTRIES if entry.weights}

#: Weight names of older files -> today's Keras names (Keras 1: ``W``, ``b``, ``running_*``).
KERAS_ALIASES = {"W": "kernel", "b": "bias", "running_mean": "moving_mean", "running_std": "moving_variance"}


def rules_for(keras_class: str) -> tuple[WeightRule, ...]:
    """The weight rules of a Keras class (none for unknown or weightless classes)."""
    entry = TABLE.get(keras_class)
    return entry.weights if entry is not None else ()


def keras_class(module: nn.Module) -> str | None:
    """The Keras class a plain torch module stands for, or None when it has no Keras weights."""
    entry = entry_for_module(module)
    return entry.keras_class if entry is not None else None


def short_name(stored: str, layer: str | None) -> str:
    """The Keras weight name in a stored name: ``c1/kernel:0`` -> ``kernel``,
    ``block1_conv1_W_1:0`` -> ``kernel``, ``outer/bn/gamma`` -> ``gamma``."""
    base = re.sub(r":\d+$", "", stored.split("/")[-1])
    if layer and base.startswith(layer + "_") and base != layer:
        base = base[len(layer) + 1:]
    base = re.sub(r"_\d+$", "", base)
    return KERAS_ALIASES.get(base, base)
