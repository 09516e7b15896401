"""The Keras layer table: Keras class name -> :class:`~bnkit.keras._entry.LayerEntry`.

Everything per layer class is read from here: which classes load
(:data:`SUPPORTED_LAYERS`), how the planner builds each layer (``entry.plan``), how its
weights are paired, checked, initialised and written (``entry.weights``), and how plain
torch modules are exported (``entry.torch_types``, ``entry.export``).

How to add a Keras layer
------------------------
Add one :class:`~bnkit.keras._entry.LayerEntry` to the ``ENTRIES`` tuple of the family
module it belongs to (``_core``, ``_bn``, ``_pooling``, ``_activations``, ...); nothing
else changes.  The entry gives:

1. ``keras_class`` and ``aliases`` (other names Keras writes for the class);
2. ``plan(builder, layer, inputs) -> (Info, config)``: validate ``layer.config`` with the
   readers of :mod:`bnkit.keras._options` (errors through ``builder.error``), pick the torch
   layout with ``builder.take(x, perm)``, register modules with ``builder.run(name, factory,
   slots)`` (the layer's own module under ``layer.name``; for weights use
   :func:`bnkit.keras._build.weighted` and record ``builder.weight_shapes[layer.name]``),
   and return the output tensor's Keras shape and torch layout plus the config bnkit writes
   back (tf_keras style, read by tf_keras 2.x and Keras 3);
3. ``weights``: one :class:`~bnkit.keras._entry.WeightRule` per Keras weight, in Keras'
   order, naming the torch tensor (a dotted path reaches a submodule) and the view that
   turns it into Keras' layout; loading, saving, initialisation and ``load_weights`` use it;
4. optionally ``torch_types`` and ``export`` so ``save_model`` can describe plain torch
   ``nn.Sequential`` models with this layer, and ``load_weights`` can fill plain torch
   modules of those types.

A new family module is one more import in :data:`_FAMILIES` below.  Family modules import
only ``_entry``, ``_build``, ``_options``, ``_layers``, ``_config`` and ``errors`` (never this
module, the planner, the reader or the writer), so there are no import cycles.
"""
from __future__ import annotations

from types import ModuleType

from torch import nn

from . import _activations, _attention, _bn, _conv, _core, _ops, _ops_calls, _pooling, _rnn
from ._entry import LayerEntry

__all__ = ["ENTRIES", "SUPPORTED_LAYERS", "TABLE", "entry_for_module"]

#: The family modules, in the order their entries are tried when exporting torch modules.
_FAMILIES: tuple[ModuleType, ...] = (_core, _bn, _pooling, _activations, _conv, _ops, _ops_calls, _rnn,
                                     _attention)


def _build_table(entries: tuple[LayerEntry, ...]) -> dict[str, LayerEntry]:
    table: dict[str, LayerEntry] = {}
    for entry in entries:
        for name in (entry.keras_class, *entry.aliases):
            if name in table:
                raise RuntimeError(f"Keras layer class {name!r} has two entries ({table[name].keras_class}, "
                                   f"{entry.keras_class}); expected one per class")
            table[name] = entry
    return table


#: Every entry, once, in family order.
ENTRIES: tuple[LayerEntry, ...] = tuple(entry for family in _FAMILIES for entry in family.ENTRIES)
#: Keras class name (aliases included) -> its entry.
TABLE: dict[str, LayerEntry] = _build_table(ENTRIES)
#: The Keras layer classes bnkit rebuilds (canonical names; aliases are in :data:`TABLE`).
SUPPORTED_LAYERS: tuple[str, ...] = tuple(entry.keras_class for entry in ENTRIES)


def entry_for_module(module: nn.Module) -> LayerEntry | None:
    """The entry with Keras weights whose plain torch type ``module`` is (first match), or None."""
    for entry in ENTRIES:
        if entry.weights and entry.torch_types and isinstance(module, entry.torch_types):
            return entry
    return None
