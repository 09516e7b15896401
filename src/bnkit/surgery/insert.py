"""``insert_batch_norm``: a copy of a model with BatchNormalization after its layers.

With calibration data the new layers start as exact inverses of their own normalisation:
``running_mean = beta = mean`` and ``running_var = var``, ``gamma = sqrt(var + epsilon)``,
where mean and (biased) variance are the per-channel moments of what the layer will see,
pooled exactly over every calibration batch.  At inference each new layer then computes
``(x - mean) / sqrt(var + eps) * sqrt(var + eps) + mean = x`` (up to rounding), so the new
model's inference output equals the old one's, while training starts from batch statistics
of the right scale.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter

from .._repr import short
from ..layers import BatchNormalization
from ._graph import (
    ACTIVATION_FUNCTIONS,
    BATCH_NORM_TYPES,
    PASS_THROUGH_TYPES,
    ModelView,
    Site,
    is_activation,
    open_view,
    output_route,
)

__all__ = ["DEFAULT_ACTIVATION_TYPES", "DEFAULT_LAYER_TYPES", "PLACEMENTS", "InsertReport", "Insertion",
           "insert_batch_norm"]

PLACEMENTS = ("before_activation", "after_activation")
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DEFAULT_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(ACTIVATION_FUNCTIONS)
_SET_HERE = ("axis", "num_features", "device", "dtype")


@dataclass(frozen=True)
class Insertion:
    """One new BatchNormalization: where it went and why there."""

    name: str  # qualified name of the new module
    layer: str  # the conv/linear layer whose output it normalises
    after: str  # what it directly follows: the layer, or the layer's activation
    placement: str  # "before_activation", "after_activation", or "after_layer" (no activation)
    num_features: int
    note: str = ""


@dataclass(frozen=True)
class InsertReport:
    """What :func:`insert_batch_norm` did; ``str(report)`` is a readable table."""

    placement: str
    insertions: tuple[Insertion, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (layer, reason)
    calibration_batches: int = 0

    @property
    def names(self) -> list[str]:
        """Qualified names of the new BatchNormalization modules, in model order."""
        return [item.name for item in self.insertions]

    def __str__(self) -> str:
        how = f"calibrated on {self.calibration_batches} batches" if self.calibration_batches else "freshly initialised"
        count = len(self.skipped)
        skipped = f" ({count} layer{'' if count == 1 else 's'} skipped, listed below)" if count else ""
        lines = [f"insert_batch_norm: {len(self.insertions)} BatchNormalization layers{skipped}, "
                 f"placement={self.placement}, {how}"]
        width = max((len(item.name) for item in self.insertions), default=0)
        for item in self.insertions:
            note = f" ({item.note})" if item.note else ""
            lines.append(f"  {item.name:<{width}}  after {item.after}: {item.placement}, "
                         f"{item.num_features} features{note}")
        lines += [f"  skipped {layer}: {reason}" for layer, reason in self.skipped]
        return "\n".join(lines)


def insert_batch_norm(
    model: nn.Module,
    placement: str = "before_activation",
    layer_types: type[nn.Module] | tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    calibration_data: Iterable[Any] | None = None,
    activation_types: type[nn.Module] | tuple[type[nn.Module], ...] = DEFAULT_ACTIVATION_TYPES,
    *,
    include_output: bool = False,
    **bn_kwargs: Any,
) -> tuple[nn.Module, InsertReport]:
    """Return a copy of ``model`` with a :class:`~bnkit.BatchNormalization` after each layer.

    Every call of a ``layer_types`` module gets a ``BatchNormalization(axis=1,
    num_features=<out channels/features>, **bn_kwargs)`` named ``<layer>_bn`` (Keras'
    convention): between the layer and its activation (``"before_activation"``) or after the
    activation (``"after_activation"``).  An activation is a module of ``activation_types``
    or, in traced models, its functional form (``F.relu(x)``, ``torch.relu(x)``,
    ``x.relu()``...) that is the layer's only consumer.  Without one the layer's output goes
    straight into the new BN (``placement="after_layer"`` in the report).  Layers already
    followed by a batch norm are skipped and listed.  So is the output layer (the logits, or
    any layer whose output is the model's output, directly or only through flatten, reshape,
    dropout, identity, softmax/log-softmax or sigmoid): a batch norm there would normalise
    the predictions themselves, which nobody wants by default (``include_output=True`` adds
    it).  Channels are dimension 1: NC... conv outputs and ``(N, features)`` linear outputs.

    ``nn.Sequential`` models (nested ones too) keep their type and names; any other model is
    traced with torch.fx and returned as a ``GraphModule`` of the same class name, whose
    submodules keep their qualified names (modules its forward never calls are dropped).

    Args:
        model: the model; never modified.
        placement: ``"before_activation"`` or ``"after_activation"``.
        layer_types: module types that get a batch norm.
        calibration_data: optional iterable of input batches: tensors, tuples/lists of
            tensors (positional arguments) or mappings (keyword arguments); for a labelled
            loader pass ``(x for x, _ in loader)``.  The copy runs in eval mode, without
            gradients, one pass per batch; each new layer is initialised from the pooled
            per-channel moments so that inference outputs are unchanged.
        activation_types: module types that count as activations.
        include_output: also normalise the output layer (skipped and listed by default).
        **bn_kwargs: Keras arguments for every new layer (``momentum``, ``epsilon``...).

    Returns:
        ``(new_model, report)``.  New layers take the device, dtype and train/eval mode of
        the layer they follow.  When every layer is skipped the model is an unchanged copy
        and the report says why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received: {type(model).__name__}")
    if placement not in PLACEMENTS:
        raise ValueError(f"`placement` must be one of {PLACEMENTS}; received: placement={short(placement)}")
    layer_types = _check_types("layer_types", layer_types)
    activation_types = _check_types("activation_types", activation_types)
    if not isinstance(include_output, bool):
        raise TypeError(f"`include_output` must be True or False; received: include_output={short(include_output)}")
    _check_bn_kwargs(bn_kwargs, calibration_data)

    work = copy.deepcopy(model)
    view = open_view(work, layer_types + activation_types + BATCH_NORM_TYPES + PASS_THROUGH_TYPES, layer_types)
    points, skipped = _plan(view, placement, layer_types, activation_types, include_output)
    if not points and not skipped:
        raise ValueError(
            f"No layer to add batch normalization to: expected modules of `layer_types` "
            f"{[t.__name__ for t in layer_types]} in {type(model).__name__}; received a model without any"
        )
    batches = 0
    if calibration_data is None:
        names = [view.insert_after(p.anchor, _new_bn(p, bn_kwargs), p.layer.name + "_bn") for p in points]
        result = view.finish()
    else:
        probes = [_MomentProbe(p.features, p.anchor.name) for p in points]
        names = [view.insert_after(p.anchor, probe, p.layer.name + "_bn") for p, probe in zip(points, probes)]
        result = view.finish()
        batches = _calibrate(result, calibration_data)
        for name, point, probe in zip(names, points, probes):
            result.set_submodule(name, _calibrated_bn(point, bn_kwargs, *probe.moments()))
    insertions = tuple(
        Insertion(name, p.layer.name, p.anchor.name, p.placement, p.features, p.note) for name, p in zip(names, points)
    )
    return result, InsertReport(placement, insertions, tuple(skipped), batches)


@dataclass(frozen=True)
class _Point:
    layer: Site
    anchor: Site  # the BN goes right after this site
    placement: str
    features: int
    note: str


def _plan(
    view: ModelView, placement: str, layer_types: tuple[type[nn.Module], ...],
    activation_types: tuple[type[nn.Module], ...], include_output: bool = False,
) -> tuple[list[_Point], list[tuple[str, str]]]:
    points: list[_Point] = []
    skipped: list[tuple[str, str]] = []
    for site in list(view.sites):
        if site.module is None or not isinstance(site.module, layer_types):
            continue
        route = None if include_output else output_route(view, site)
        if route is not None:
            via = f" through {', '.join(route)}" if route else ""
            skipped.append((site.name, f"output layer: its output is the model's output{via} "
                                       "(include_output=True normalises it too)"))
            continue
        users = view.users(site)
        act = users[0] if len(users) == 1 and is_activation(users[0], activation_types) else None
        if act is not None and view.producer(act) is not site:
            act = None
        follower = _only(view.users(act)) if act is not None else _only(users)
        if follower is not None and isinstance(follower.module, BATCH_NORM_TYPES):
            skipped.append((site.name, f"already followed by batch norm {follower.name}"))
            continue
        features = _features(site)
        if act is None:
            note = "no activation follows" if len(users) == 1 else f"its output goes to {len(users)} consumers"
            points.append(_Point(site, site, "after_layer", features, note))
        elif placement == "before_activation":
            points.append(_Point(site, site, placement, features, f"then {act.name}"))
        else:
            points.append(_Point(site, act, placement, features, ""))
    return points, skipped


def _only(sites: list[Site | None]) -> Site | None:
    return sites[0] if len(sites) == 1 else None


def _features(site: Site) -> int:
    for attribute in ("out_channels", "out_features"):
        value = getattr(site.module, attribute, None)
        if isinstance(value, int):
            return value
    raise TypeError(
        f"Cannot size a batch norm for layer {site.label()}: expected a module with an integer "
        f"`out_channels` or `out_features` (as conv and linear layers have); received: {site.kind}"
    )


def _new_bn(point: _Point, bn_kwargs: dict[str, Any]) -> BatchNormalization:
    module = point.layer.module
    weight = getattr(module, "weight", None)
    factory: dict[str, Any] = {}
    if isinstance(weight, Tensor) and not isinstance(weight, UninitializedParameter) and weight.is_floating_point():
        factory = {"device": weight.device, "dtype": weight.dtype}
    bn = BatchNormalization(axis=1, num_features=point.features, **factory, **bn_kwargs)
    return bn.train(module.training if module is not None else True)


def _calibrated_bn(point: _Point, bn_kwargs: dict[str, Any], mean: Tensor, var: Tensor) -> BatchNormalization:
    """A new layer whose inference output is its input: it undoes its own normalisation."""
    bn = _new_bn(point, bn_kwargs)
    stddev = torch.sqrt(var + bn.epsilon)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(stddev)  # type: ignore[union-attr]  # scale=True is checked up front
        bn.bias.copy_(mean)  # type: ignore[union-attr]  # center=True is checked up front
        if bn.renorm:  # renorm's stddev statistics include epsilon (_bn_state.update_statistics)
            bn.running_stddev.copy_(stddev)
            bn.renorm_mean.copy_(mean)
            bn.renorm_stddev.copy_(stddev)
    return bn


class _MomentProbe(nn.Module):
    """Identity that accumulates the exact pooled per-channel (dim 1) mean and biased variance.

    Each batch contributes its count, mean and sum of squared deviations (one call of the
    native batch-norm statistics kernel, which is several times faster than ``var_mean``
    over N, H, W); batches are merged in float64 with Chan et al.'s pairwise rule, which is exact
    for pooled moments (no averaging of per-batch variances).
    """

    def __init__(self, features: int, where: str) -> None:
        super().__init__()
        self.features, self.where = features, where
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.features:
            raise ValueError(
                f"Calibration: the batch norm after {self.where} normalises dimension 1; expected "
                f"a tensor of shape (N, {self.features}, ...); received shape {tuple(x.shape)}"
            )
        n = x.numel() // self.features
        if n == 0:
            return x
        data = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean, var = torch.batch_norm_update_stats(data.detach(), None, None, 0.0)  # native, biased
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
            self.count = total
        return x

    def moments(self) -> tuple[Tensor, Tensor]:
        if self.mean is None or self.m2 is None:
            raise ValueError(
                f"Calibration never reached the batch norm after {self.where}: expected every "
                "batch to run through it; received batches that skip it or are empty"
            )
        var = self.m2 / self.count
        if not bool(torch.isfinite(self.mean).all() & torch.isfinite(var).all()):
            raise ValueError(
                f"Calibration of the batch norm after {self.where}: expected finite activations; received "
                f"NaN or infinite values in {int((~torch.isfinite(self.mean)).sum())} of {self.features} "
                "channels (the calibration data holds NaN/inf, or the model overflows on it)"
            )
        return self.mean, var


def _calibrate(model: nn.Module, data: Iterable[Any]) -> int:
    """Run ``model`` in eval mode over ``data`` (one pass per batch); returns the batch count."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for batch in data:
                if isinstance(batch, Tensor):
                    model(batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                elif isinstance(batch, Mapping):
                    model(**batch)
                else:
                    raise TypeError(
                        "Each `calibration_data` item must be a tensor, a tuple/list of tensors or a "
                        f"mapping of keyword arguments; received: {type(batch).__name__} (item {count})"
                    )
                count += 1
    finally:
        for module, training in modes:
            module.training = training
    if count == 0:
        raise ValueError("`calibration_data` must yield at least one batch; received an empty iterable")
    return count


def _check_types(name: str, types: Any) -> tuple[type[nn.Module], ...]:
    result = (types,) if isinstance(types, type) else types
    if not (isinstance(result, tuple) and result
            and all(isinstance(t, type) and issubclass(t, nn.Module) for t in result)):
        raise TypeError(f"`{name}` must be an nn.Module subclass or a non-empty tuple of them; "
                        f"received: {name}={short(types)}")
    return result


def _check_bn_kwargs(bn_kwargs: dict[str, Any], calibration_data: Any) -> None:
    for key in _SET_HERE:
        if key in bn_kwargs:
            raise TypeError(f"`{key}` is set by insert_batch_norm (axis=1, sizes, device and dtype come "
                            f"from each layer); received: {key}={short(bn_kwargs[key])}")
    BatchNormalization(axis=1, num_features=1, **bn_kwargs)  # the layer validates its own arguments
    if calibration_data is None:
        return
    if isinstance(calibration_data, Tensor) or not isinstance(calibration_data, Iterable):
        raise TypeError("`calibration_data` must be an iterable of batches (e.g. [x] or a list of "
                        f"tensors); received: {type(calibration_data).__name__}")
    for key in ("scale", "center"):
        if bn_kwargs.get(key, True) is not True:
            raise ValueError(f"Calibration preserves outputs only with `{key}=True` (it sets gamma and beta); "
                             f"received: {key}={short(bn_kwargs[key])}")
