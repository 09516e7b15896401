"""``load_weights``: Keras weight files into torch modules, by layer name, checked first.

Loading happens in two phases.  *Plan*: index the file, pair every stored layer with a
torch module (by name; for ``.keras``/``.weights.h5`` files without names, by Keras' layer
order), pair their weights through the layer entries' weight rules (:mod:`bnkit.keras._table`:
by the Keras class a :class:`KerasModel` built each module for, by torch type otherwise), and check counts,
shapes, dtypes and storage.  *Copy*: only when the plan is clean (or ``strict=False``),
copy each dataset under ``torch.no_grad`` straight into a Keras-layout view of its tensor.
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..layers.batch_norm import BatchNormalization
from ..layers.flatten import Flatten
from ._archive import is_keras_archive, open_archive_weights
from ._copy import copy_all
from ._h5 import open_h5
from ._entry import WeightRule, present_rules, resolve_tensor
from ._mapping import keras_class, rules_for, short_name, snake_case
from ._model import KerasModel
from ._snapshot import StoredFile
from ._stored import StoredLayer, index_weights
from .errors import KerasFormatError, WeightMismatchError

__all__ = ["LoadReport", "Target", "collect_targets", "copy_planned", "load_weights", "open_weights", "plan_load"]


@dataclass
class LoadReport:
    """What :func:`load_weights` did: layers loaded, and every difference it found."""

    source: str
    layout: str = ""
    matched_by: str = "name"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model weight was found and every stored weight was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        """Every difference, one line each."""
        return ([f"missing from the file: {m}" for m in self.missing]
                + [f"not in the model: {u}" for u in self.unexpected]
                + [f"mismatched: {m}" for m in self.mismatched])

    def __str__(self) -> str:
        head = (f"{len(self.loaded)} layers loaded from {self.source} "
                f"({self.layout} layout, matched by {self.matched_by})")
        return "\n".join([head] + [f"  {line}" for line in self.problems()])


@dataclass
class Target:
    """A torch module that takes Keras weights, under its Keras layer name."""

    name: str
    path: str
    module: nn.Module
    keras_class: str
    channels: int | None = None
    keras_shapes: dict[str, tuple[int, ...]] | None = None
    origin: tuple[tuple[str, ...], str, str] | None = None  # (nested models, Keras name, .keras path)


@dataclass
class _Copy:
    label: str
    dataset: Any
    tensor: Tensor
    rule: WeightRule
    channels: int | None


def collect_targets(model: nn.Module) -> tuple[list[Target], list[str]]:
    """The modules taking Keras weights, in module order, and the parametrised ones that cannot."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = getattr(model, "keras_weight_shapes", {}) or {}
    channels = {} if isinstance(model, KerasModel) else _flatten_channels(model)  # KerasModel flattens Keras-style
    keras = model if isinstance(model, KerasModel) else None
    targets: list[Target] = []
    unmapped: list[str] = []
    inside: list[str] = []  # paths of targets: their submodules belong to them
    for path, module in model.named_modules():
        if any(path.startswith(prefix + ".") for prefix in inside):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if keras is not None and path.startswith("layers.") and path.count(".") == 1:
            leaf = keras.keras_name(leaf)
        top = keras if path.startswith("layers.") and path.count(".") == 1 else None
        cls = _built_class(top, leaf, module) or keras_class(module)
        if cls is not None:
            origin = keras.keras_origins.get(leaf) if keras is not None else None
            targets.append(Target(leaf, path, module, cls, channels.get(path), shapes.get(leaf), origin))
            inside.append(path)
        elif any(True for _ in module.parameters(recurse=False)):
            unmapped.append(f"{path} ({type(module).__name__}: no Keras equivalent)")
    return targets, unmapped


def _built_class(model: KerasModel | None, name: str, module: nn.Module) -> str | None:
    """The Keras class a KerasModel built layer ``name`` for, while its module still holds
    that class's weights (surgery may have replaced it, e.g. a folded BN by an Identity)."""
    cls = model.keras_classes.get(name) if model is not None else None
    if cls is None:
        return None
    # A module with no weights at all still counts (Keras numbers every layer of a class in .keras
    # files, e.g. a Normalization whose statistics are config constants), and expects none.
    weightless = not any(True for _ in module.parameters()) and not module.state_dict()
    return cls if present_rules(module, rules_for(cls)) or weightless else None


def _flatten_channels(model: nn.Module) -> dict[str, int]:
    """Linear layers fed by a torch-order flatten of C > 1 positions: need the fc permutation.

    A plain ``nn.Flatten`` (or bnkit ``Flatten("channels_last")``) of an NCHW tensor gives
    features in (c, h, w) order, Keras in (h, w, c); bnkit ``Flatten("channels_first")``
    already gives Keras' order.  Module order is taken as execution order.
    """
    found: dict[str, int] = {}
    channels: int | None = None
    torch_order = False
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            channels, torch_order = module.out_channels, False
        elif isinstance(module, (nn.Flatten, Flatten)):
            torch_order = not (isinstance(module, Flatten) and module.data_format == "channels_first")
        elif isinstance(module, nn.Linear):
            if torch_order and channels and module.in_features % channels == 0 and module.in_features > channels:
                found[path] = channels
            channels, torch_order = None, False
    return found


@contextlib.contextmanager
def open_weights(path: str | os.PathLike[str],
                 names: Collection[str] = ()) -> Iterator[tuple[str, list[StoredLayer]]]:
    """Yield ``(layout, stored layers)`` of a ``.h5``, ``.weights.h5`` or ``.keras`` file
    (``names``: the layer names expected, see :func:`~bnkit.keras._stored.index_weights`).

    Once indexed, the snapshot keeps only its datasets: its groups and attributes (a
    ``.h5`` file's model config among them) are freed before any weight is allocated.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No Keras file at {source}")
    if is_keras_archive(source):
        with open_archive_weights(source) as (archive_h5, size):
            yield _indexed(archive_h5, f"{source}", size, names)
        return
    h5 = open_h5(source, source)
    try:
        yield _indexed(h5, f"{source}", source.stat().st_size, names)
    finally:
        with contextlib.suppress(Exception):
            h5.close()


def _indexed(h5: StoredFile, label: str, size: int, names: Collection[str]) -> tuple[str, list[StoredLayer]]:
    found = index_weights(h5, label, size, names)
    h5.forget_structure()
    return found


def plan_load(targets: list[Target], stored: list[StoredLayer], layout: str, report: LoadReport) -> list[_Copy]:
    """Pair stored weights with tensors; record every problem in ``report``."""
    by_leaf: dict[str, list[Target]] = {}
    for target in targets:
        by_leaf.setdefault(target.name, []).append(target)
    named = all(layer.name is not None and layer.name in by_leaf for layer in stored)
    by_path = {target.origin[2]: target for target in targets if target.origin and target.origin[2]}
    unique = named and len({layer.name for layer in stored}) == len(stored) and \
        all(len(by_leaf[layer.name or ""]) == 1 for layer in stored)
    if layout == "v3" and not unique and by_path and all(layer.path in by_path for layer in stored):
        report.matched_by = "Keras weight path"
        pairs = [(layer, by_path[layer.path]) for layer in stored]
    elif layout == "v3" and not named:
        report.matched_by = "Keras layer order"
        pairs = _pair_by_order(targets, stored, report)
    else:
        pairs = _pair_by_name(targets, stored, by_leaf, report)
    order = {id(target): index for index, target in enumerate(targets)}
    pairs.sort(key=lambda pair: order[id(pair[1])])
    used = {id(target) for _, target in pairs}
    report.missing.extend(f"{t.path} ({t.keras_class})" for t in targets if id(t) not in used
                          and present_rules(t.module, rules_for(t.keras_class)))
    copies: list[_Copy] = []
    for layer, target in pairs:
        layer_copies = _pair_weights(layer, target, report)
        if layer_copies is not None:
            copies.extend(layer_copies)
            report.loaded.append(target.name)
    return copies


def _pair_by_name(targets: list[Target], stored: list[StoredLayer], by_leaf: dict[str, list[Target]],
                  report: LoadReport) -> list[tuple[StoredLayer, Target]]:
    """Pair by layer name; a layer of a nested model is found by (outermost model, Keras name)."""
    by_origin: dict[tuple[str, str], list[Target]] = {}
    for target in targets:
        if target.origin is not None:
            scope, keras_name, _ = target.origin
            by_origin.setdefault((scope[0] if scope else keras_name, keras_name), []).append(target)
    pairs = []
    for layer in stored:
        found = by_origin.get((layer.group or "", layer.name or ""), []) if layer.group else []
        found = found or by_leaf.get(layer.name or "", [])
        if len(found) == 1:
            pairs.append((layer, found[0]))
        elif found:
            report.mismatched.append(f"{layer.name}: ambiguous, modules {[t.path for t in found]}")
        else:
            report.unexpected.append(f"{layer.name or layer.path} ({len(layer.datasets)} weights at {layer.path})")
    return pairs


def _pair_by_order(targets: list[Target], stored: list[StoredLayer],
                   report: LoadReport) -> list[tuple[StoredLayer, Target]]:
    counts: Counter[str] = Counter()
    keyed: dict[str, Target] = {}
    for target in targets:
        snake = snake_case(target.keras_class)
        keyed[snake if counts[snake] == 0 else f"{snake}_{counts[snake]}"] = target
        counts[snake] += 1
    pairs = []
    for layer in stored:
        found = keyed.get(layer.class_key or "")
        if layer.class_key is None or "/" in layer.class_key or found is None:
            report.unexpected.append(f"{layer.path} ({len(layer.datasets)} weights; no model layer at this position)")
        else:
            pairs.append((layer, found))
    return pairs


def _pair_weights(layer: StoredLayer, target: Target, report: LoadReport) -> list[_Copy] | None:
    rules = present_rules(target.module, rules_for(target.keras_class))
    known = {rule.keras for rule in rules_for(target.keras_class)}
    shorts = [short_name(name, layer.name) for name in layer.names]
    expected = [rule.keras for rule in rules]
    if not layer.positional and set(shorts) <= known and len(set(shorts)) == len(shorts):
        if sorted(shorts) != sorted(expected):
            report.mismatched.append(f"{target.name}: the file has weights {shorts}; the model expects {expected}")
            return None
        ordered = [rules[expected.index(short)] for short in shorts]
    elif len(layer.names) != len(rules):
        report.mismatched.append(
            f"{target.name}: the file has {len(layer.names)} weights {layer.names}; the model expects "
            f"{len(rules)} {expected}")
        return None
    else:
        ordered = rules
    copies = []
    problems = []
    for name, dataset, rule in zip(layer.names, layer.datasets, ordered):
        tensor = resolve_tensor(target.module, rule.torch)
        if tensor is None or isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
            report.mismatched.append(f"{target.name}: {type(target.module).__name__} is not built yet; "
                                     "call the model once (or pass num_features) before loading")
            return None
        shape = tuple(int(d) for d in dataset.shape)
        exact = (target.keras_shapes or {}).get(rule.keras)
        if exact is None and rule.exact_shape:
            exact = rule.keras_shape(tensor)
        if exact is not None:
            fits, want = shape == exact, str(exact)
        else:  # BN: Keras' (1, ..., C) shapes follow its layout; compare the per-channel sizes
            sizes = _bn_sizes(target.module) or [tensor.numel()]
            fits, want = [d for d in shape if d != 1] == [d for d in sizes if d != 1], f"sizes {sizes}"
        if not fits:
            problems.append(f"{target.name}/{rule.keras}: the file has shape {shape}; the model expects {want}")
        copies.append(_Copy(f"{layer.path}/{name}", dataset, tensor, rule, target.channels))
    if problems:
        report.mismatched.extend(problems)
        return None
    return copies


def _bn_sizes(module: nn.Module) -> list[int] | None:
    """The BN-axis sizes of a built bnkit layer, in order (None when unknown)."""
    if isinstance(module, BatchNormalization) and module.keras_weight_shape is not None:
        return [int(d) for d in module.keras_weight_shape]
    return None


def copy_planned(copies: list[_Copy], source: str) -> None:
    """Copy every planned dataset into its tensor (under ``torch.no_grad``)."""
    with torch.no_grad():  # the views too: no autograd records (nor its code paged in) for them
        jobs = [(copy.dataset, copy.rule.view(copy.tensor, copy.channels), f"{source}:{copy.label}")
                for copy in copies]
        try:
            copy_all(jobs)
        except KerasFormatError as error:
            raise KerasFormatError(
                f"{error}; weights read before this one were already copied, so the model is now partially "
                "overwritten: reload it before use"
            ) from error


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> LoadReport:
    """Load Keras weights into ``model``, matching Keras layer names to module names.

    Reads legacy HDF5 (``save_weights("w.h5")``, full ``model.save("m.h5")`` files,
    Keras-1-era files such as ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``), the v3
    layout (``.weights.h5``) and ``.keras`` archives.  A module matches a Keras layer when
    the last component of its qualified name equals the layer name (``block1_conv1``,
    ``features.block1_conv1``).  v3 files without stored names (tf_keras) are matched by
    Keras' per-class order instead (``conv2d``, ``conv2d_1``... in module order).
    Conv kernels are transposed HWIO -> OIHW, Dense kernels transposed, and a Linear that
    follows a torch-order flatten (plain ``nn.Flatten`` of NCHW) gets the flatten permutation.

    Args:
        model: the torch model; it is changed in place.
        path: the Keras file.
        strict: if True (default), any missing, unexpected or mismatched weight raises
            :class:`WeightMismatchError` listing all of them, and nothing is copied.  If
            False, what matches is loaded and the rest is reported.

    Returns:
        A :class:`LoadReport`.

    Raises:
        KerasFormatError: the file is damaged or not a Keras weights file.
        WeightMismatchError: ``strict`` and the file does not fit the model.
    """
    targets, unmapped = collect_targets(model)
    report = LoadReport(str(path))
    report.missing.extend(unmapped)
    with open_weights(path, {target.name for target in targets}) as (layout, stored):
        report.layout = layout
        copies = plan_load(targets, stored, layout, report)
        if strict and not report.ok:
            raise WeightMismatchError(
                f"The weights in {path} do not fit the model: expected every model layer and every stored "
                "weight to match by name, count and shape; received these differences:\n  "
                + "\n  ".join(report.problems()), report)
        copy_planned(copies, str(path))
    return report
