"""``fold_batch_norm``: merge inference-mode batch norms into neighbouring conv/linear layers.

At inference a batch norm is a per-channel affine map ``y = scale * x + shift`` with
``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``.  It folds exactly

* into the **previous** layer (conv/linear -> BN, with or without an activation after the
  BN): scale the layer's output channels, ``W' = W * scale[o]``, ``b' = b * scale + shift``;
* into the **next** layer (BN -> conv/linear, e.g. BN after an activation): scale its input
  channels, ``W' = W * scale[i]``, ``b' = b + sum_i,k W * shift[i]``.  This is exact only if
  the next layer's padding does not mix in values the BN never saw: no zero padding
  (padding 0, or a ``reflect``/``replicate``/``circular`` padding mode, which copies BN
  outputs and so commutes with a per-channel affine map) and ``groups=1``.

The tensor-level functions compute in float64 and cast back to the layer's dtypes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .._repr import short
from ..layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormalization
from ._graph import BATCH_NORM_TYPES, ModelView, Site, open_view

__all__ = ["FoldReport", "Folded", "NotFolded", "fold_batch_norm", "fold_into_next", "fold_into_previous"]

_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_LAYERS_FOR_NDIM: dict[int, tuple[type[nn.Module], ...]] = {2: (nn.Linear,), 3: (nn.Conv1d,), 4: (nn.Conv2d,), 5: (nn.Conv3d,)}
_LAYERS_FOR_TORCH_BN: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    nn.BatchNorm1d: (nn.Conv1d, nn.Linear), nn.BatchNorm2d: (nn.Conv2d,), nn.BatchNorm3d: (nn.Conv3d,),
    BatchNorm1d: (nn.Conv1d, nn.Linear), BatchNorm2d: (nn.Conv2d,), BatchNorm3d: (nn.Conv3d,),
}
FoldFunction = Callable[..., "tuple[Tensor, Tensor]"]


def fold_into_previous(
    weight: Tensor, bias: Tensor | None, bn_mean: Tensor, bn_var: Tensor,
    gamma: Tensor | None, beta: Tensor | None, eps: float,
) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``layer`` followed by an inference batch norm, as one layer.

    ``weight`` has output channels first (conv ``(O, I, *k)``, linear ``(O, I)``); the BN
    statistics are ``(O,)``.  Missing ``bias``/``gamma``/``beta`` count as 0/1/0.  The
    result has ``weight``'s dtype (the bias ``bias``'s, else ``weight``'s).
    """
    scale, shift = _scale_shift(weight.shape[0], "output channels", bn_mean, bn_var, gamma, beta, eps)
    new_weight = weight.double() * scale.reshape(-1, *[1] * (weight.dim() - 1)).to(weight.device)
    new_bias = shift.to(weight.device) if bias is None else bias.double() * scale.to(bias.device) + shift.to(bias.device)
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype if bias is None else bias.dtype)


def fold_into_next(
    weight: Tensor, bias: Tensor | None, bn_mean: Tensor, bn_var: Tensor,
    gamma: Tensor | None, beta: Tensor | None, eps: float,
) -> tuple[Tensor, Tensor]:
    """Weight and bias of an inference batch norm followed by ``layer``, as one layer.

    ``weight`` is ``(O, I, *k)`` or ``(O, I)`` with ``groups=1``; the BN statistics are
    ``(I,)``.  Exact only when the layer pads with nothing but BN outputs (see the module
    docstring).  Missing ``bias``/``gamma``/``beta`` count as 0/1/0; dtypes are kept.
    """
    if weight.dim() < 2:
        raise ValueError(f"`weight` must be (out, in, ...) of a conv or linear layer; received shape {tuple(weight.shape)}")
    scale, shift = _scale_shift(weight.shape[1], "input channels", bn_mean, bn_var, gamma, beta, eps)
    view = (1, -1, *[1] * (weight.dim() - 2))
    w64 = weight.double()
    new_weight = w64 * scale.reshape(view).to(weight.device)
    offset = (w64 * shift.reshape(view).to(weight.device)).sum(dim=tuple(range(1, weight.dim())))
    new_bias = offset if bias is None else bias.double() + offset.to(bias.device)
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype if bias is None else bias.dtype)


def _scale_shift(
    channels: int, what: str, mean: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float,
) -> tuple[Tensor, Tensor]:
    """The BN's inference map ``scale * x + shift`` in float64."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"`eps` must be a non-negative number; received: eps={short(eps)}")
    for name, tensor in (("bn_mean", mean), ("bn_var", var), ("gamma", gamma), ("beta", beta)):
        if tensor is not None and tuple(tensor.shape) != (channels,):
            raise ValueError(f"`{name}` must have shape ({channels},), one value per {what} of `weight`; "
                             f"received shape {tuple(tensor.shape)}")
    bad_mean = int((~torch.isfinite(mean)).sum())
    bad_var = int((~(torch.isfinite(var) & (var.double() + eps > 0))).sum())
    if bad_mean or bad_var:
        raise ValueError("`bn_mean` and `bn_var` must be finite with bn_var + eps > 0 (else the folded weights are "
                         f"NaN or infinite); received: {bad_mean} bad mean(s) and {bad_var} bad variance(s) with "
                         f"eps={eps!r}")
    scale = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        scale = scale * gamma.double().to(scale.device)
    shift = -mean.double().to(scale.device) * scale
    if beta is not None:
        shift = shift + beta.double().to(scale.device)
    return scale, shift


@dataclass(frozen=True)
class Folded:
    """A batch norm merged into a layer (``direction``: ``"previous"`` or ``"next"``)."""

    bn: str
    into: str
    direction: str


@dataclass(frozen=True)
class NotFolded:
    """A batch norm left in place, and why."""

    bn: str
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold_batch_norm` did; ``str(report)`` is a readable list."""

    folded: tuple[Folded, ...]
    not_folded: tuple[NotFolded, ...]

    def __str__(self) -> str:
        total = len(self.folded) + len(self.not_folded)
        lines = [f"fold_batch_norm: folded {len(self.folded)} of {total} batch norms"]
        lines += [f"  {f.bn} -> {f.into} ({f.direction} layer)" for f in self.folded]
        if self.not_folded:
            lines.append("not folded:")
            lines += [f"  {n.bn}: {n.reason}" for n in self.not_folded]
        return "\n".join(lines)


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """Return an inference copy of ``model`` with every foldable batch norm merged and removed.

    Handles :class:`~bnkit.BatchNormalization` with ``axis=1`` and ``torch.nn.BatchNorm1d/2d/3d``
    or bnkit's ``BatchNorm1d/2d/3d`` with running statistics (renorm and ghost BN included:
    they equal plain BN at inference).  A BN folds into the previous conv/linear layer when
    it is that layer's only consumer, else into the next one when exact (see the module docstring).
    Folded BNs are deleted (from their ``nn.Sequential``, or from the fx graph); the rest
    stay and are listed with the reason.  A ``BatchNorm1d`` after a linear layer is assumed
    to see ``(N, features)`` inputs.

    ``nn.Sequential`` models keep their type and names; a model from
    :func:`bnkit.keras.load_model` comes back as a ``KerasModel`` without the folded BNs in
    its Keras config (so :func:`bnkit.keras.save_model` writes it), unless a fold cannot be
    written in that config (then, like other models, as a ``GraphModule``); other models are
    traced with torch.fx and returned as a ``GraphModule`` (or as a plain copy when nothing folds).

    Raises:
        ValueError: ``model`` is in training mode (call ``model.eval()`` first), or a batch
            norm holds statistics or parameters that are NaN or infinite, or a negative
            ``running_var``: folding them would write NaN/inf into the weights.
        TypeError: ``model`` is not a module, or neither a Sequential nor fx-traceable.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received: {type(model).__name__}")
    if model.training:
        raise ValueError("`model` must be in inference mode to fold batch norm (running statistics "
                         "replace batch statistics only then): call model.eval() first; received a "
                         f"{type(model).__name__} with training=True")
    if _is_keras_model(model):
        from ..keras._folded import fold_keras_model
        from ..keras.errors import KerasFormatError

        try:
            return fold_keras_model(model)
        except KerasFormatError:
            pass  # a fold its Keras config cannot express: fold the traced graph instead
    return fold_graph(model)


def _is_keras_model(model: nn.Module) -> bool:
    return type(model).__name__ == "KerasModel" and type(model).__module__.startswith("bnkit.keras")


def fold_graph(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """:func:`fold_batch_norm` on the module graph itself (``model``: a module in eval mode)."""
    _refuse_broken_statistics(model)
    work = copy.deepcopy(model)
    view = open_view(work, BATCH_NORM_TYPES + _LAYERS, BATCH_NORM_TYPES + _LAYERS)
    folded: list[Folded] = []
    reasons: dict[Site, str] = {}
    pending = [site for site in view.sites if isinstance(site.module, BATCH_NORM_TYPES)]
    progress = True
    while progress:  # a fold can make a neighbouring BN foldable (BN -> BN -> conv)
        progress = False
        for site in list(pending):
            outcome = _try_fold(view, site)
            if isinstance(outcome, Folded):
                folded.append(outcome)
                view.remove(site)
                pending.remove(site)
                reasons.pop(site, None)
                progress = True
            else:
                reasons[site] = outcome
    result = view.finish() if folded else work
    not_folded = tuple(NotFolded(site.name, reasons[site]) for site in pending)
    return result, FoldReport(tuple(folded), not_folded)


def _refuse_broken_statistics(model: nn.Module) -> None:
    """A ValueError naming the first batch norm whose inference map is not finite."""
    for name, bn in model.named_modules():
        if not isinstance(bn, BATCH_NORM_TYPES):
            continue
        for what in ("running_mean", "running_var", "weight", "bias"):
            tensor = getattr(bn, what, None)
            if not isinstance(tensor, Tensor) or isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                continue
            values = tensor.detach()
            bad = ~torch.isfinite(values) if values.is_floating_point() else torch.zeros_like(values, dtype=torch.bool)
            if what == "running_var":
                bad |= values < 0
            if bool(bad.any()):
                first = int(bad.flatten().nonzero()[0])
                raise ValueError(
                    f"Cannot fold batch norm {name or type(bn).__name__!r}: its `{what}` must be finite"
                    f"{' and non-negative' if what == 'running_var' else ''}; received "
                    f"{int(bad.sum())} bad value(s), e.g. {what}[{first}]={float(values.flatten()[first])!r} "
                    "(the model was trained into NaN, or the checkpoint is corrupt)"
                )


@dataclass(frozen=True)
class _Affine:
    mean: Tensor
    var: Tensor
    gamma: Tensor | None
    beta: Tensor | None
    eps: float
    layers: tuple[type[nn.Module], ...]  # layer types it can sit next to

    @property
    def features(self) -> int:
        return self.mean.numel()


def _inference_affine(bn: nn.Module) -> _Affine | str:
    """The BN's inference statistics, or why it has none to fold."""
    if bn.training and getattr(bn, "trainable", True):
        return "it is in training mode"
    if any(isinstance(t, nn.parameter.UninitializedTensorMixin) for t in (*bn.parameters(), *bn.buffers())):
        return "it is not built yet (run it once first)"
    if isinstance(bn, BatchNormalization):
        built, axis = bn.built, bn.spec.axis
        if (built.axes if built is not None else axis if isinstance(axis, tuple) else (axis,)) != (1,):
            return f"it normalises axis={bn.axis}; only axis=1 (channels first) folds into a layer"
        layers = _LAYERS_FOR_NDIM.get(built.ndim, ()) if built is not None else _LAYERS
        return _Affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.spec.epsilon, layers)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return "it does not track running statistics (track_running_stats=False)"
    layers = _LAYERS_FOR_TORCH_BN.get(type(bn), _LAYERS)  # bnkit's family: renorm/ghost BN use running stats here
    return _Affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, layers)


def _try_fold(view: ModelView, site: Site) -> Folded | str:
    bn = site.module
    affine = _inference_affine(bn) if bn is not None else "it is not a module call"
    if isinstance(affine, str):
        return affine
    if view.calls(bn) > 1:
        return f"it is called {view.calls(bn)} times"
    if not view.single_input(site):
        return "it is called with arguments besides its input"
    previous = view.producer(site)
    why_not_previous = _previous_problem(view, site, previous, affine)
    if why_not_previous is None and previous is not None:
        _fold(previous.module, affine, fold_into_previous)
        return Folded(site.name, previous.name, "previous")
    users = view.users(site)
    following = users[0] if len(users) == 1 else None
    why_not_next = _next_problem(view, site, following, len(users), affine)
    if why_not_next is None and following is not None:
        _fold(following.module, affine, fold_into_next)
        return Folded(site.name, following.name, "next")
    return f"{why_not_previous}; {why_not_next}"


def _previous_problem(view: ModelView, bn: Site, layer: Site | None, affine: _Affine) -> str | None:
    if layer is None:
        return "no conv/linear layer precedes it"
    mismatch = _mismatch(layer, affine, "previous")
    if mismatch is not None:
        return mismatch
    others = [user for user in view.users(layer) if user is not bn]
    if others:
        names = ", ".join(user.name if user is not None else "the model output" for user in others)
        return f"output of {layer.name} is also used by {names}"
    return _shared(view, layer)


def _next_problem(view: ModelView, bn: Site, layer: Site | None, n_users: int, affine: _Affine) -> str | None:
    if n_users != 1:
        return f"its output goes to {n_users} consumers"
    if layer is None:
        return "the model output (or a non-module operation) follows it"
    mismatch = _mismatch(layer, affine, "next")
    if mismatch is not None:
        return mismatch
    module = layer.module
    if not view.single_input(layer) or view.producer(layer) is not bn:
        return f"next layer {layer.name} is called with other arguments"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1:
            return f"next layer {layer.name} has groups={module.groups} (only groups=1 folds)"
        padding = _zero_padding(module)
        if padding is not None:
            return f"next layer {layer.name} has padding {padding} (zero padding makes folding inexact)"
    return _shared(view, layer)


def _mismatch(layer: Site, affine: _Affine, side: str) -> str | None:
    """Why ``layer`` (the ``"previous"`` or ``"next"`` one) cannot take the BN: its type or size."""
    module = layer.module
    if not isinstance(module, affine.layers):
        return f"{side} {layer.label()} is not a conv/linear layer it can fold into"
    conv = isinstance(module, nn.modules.conv._ConvNd)
    if side == "previous":
        size, which = (module.out_channels if conv else module.out_features), "output"
    else:
        size, which = (module.in_channels if conv else module.in_features), "input"
    if size != affine.features:
        return f"{side} layer {layer.name} has {size} {which} channels, the batch norm {affine.features}"
    return None


def _shared(view: ModelView, layer: Site) -> str | None:
    calls = view.calls(layer.module) if layer.module is not None else 1
    return f"layer {layer.name} is called {calls} times" if calls > 1 else None


def _zero_padding(conv: nn.modules.conv._ConvNd) -> object | None:
    """The conv's zero padding when it has any, else None."""
    if conv.padding_mode != "zeros" or conv.padding == "valid":
        return None
    if conv.padding == "same":
        pads = tuple(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return "'same'" if any(pads) else None
    pads = tuple(conv.padding)
    if not any(pads):
        return None
    return pads[0] if len(set(pads)) == 1 else pads


def _fold(layer: nn.Module | None, affine: _Affine, fold: FoldFunction) -> None:
    if not isinstance(layer, _LAYERS):
        raise TypeError(f"Internal error: expected a conv/linear layer to fold into; received: {type(layer).__name__}")
    with torch.no_grad():
        weight, bias = fold(layer.weight, layer.bias, affine.mean, affine.var, affine.gamma, affine.beta, affine.eps)
        layer.weight.copy_(weight)
        if layer.bias is None:
            layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(bias)
