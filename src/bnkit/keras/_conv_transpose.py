"""Keras ``Conv1DTranspose`` / ``Conv2DTranspose`` / ``Conv3DTranspose`` as torch ``ConvTransposeNd``.

Per spatial axis (input ``n``, kernel ``k``, stride ``s``, dilation ``d``, ``K = (k-1)d + 1``),
Keras asks TensorFlow for an output of length

* ``"valid"``: ``(n-1)s + K + p`` with ``p`` = ``output_padding`` or ``max(s - K, 0)``;
* ``"same"``: ``n*s`` without ``output_padding``, else ``(n-1)s + K % 2 + p``,

and TensorFlow returns the *full* transposed convolution (length ``(n-1)s + K``) shifted by
the ``before`` padding its forward ``"same"`` conv of that output would use
(``max((ceil(out/s) - 1)s + K - out, 0) // 2``; 0 for ``"valid"``), cut or extended (bias only)
to ``out``.  PyTorch's ``padding=P`` cuts ``P`` from both ends and ``output_padding`` extends the
end, so with ``P = before`` the rest is ``out - full + 2P``: an ``output_padding`` when it is
in ``[0, max(s, d))``, a crop of the last cells when negative.  Keras' kernel is
``(*k, filters, in)``; torch's weight ``(in, filters, *k)`` is the same conv_kernel view.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._build import Builder, Info
from ._config import LayerSpec
from ._conv_plan import KERNEL_WEIGHTS, _common_options, int_tuple, join, layout, plan_factory
from ._conv_layers import Crop
from ._layers import same_padding
from ._options import common, initializer, int_option, one_input

__all__ = ["conv_transpose", "transpose_geometry"]

_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def transpose_geometry(n: int, k: int, s: int, d: int, padding: str,
                       output_padding: int | None) -> tuple[int, int, int]:
    """``(out, torch padding, torch output_padding or -crop)`` for one axis of input size ``n``."""
    span = (k - 1) * d + 1
    if padding == "valid":
        out = (n - 1) * s + span + (max(span, s) - span if output_padding is None else output_padding)
        before = 0
    else:
        out = n * s if output_padding is None else (n - 1) * s + span % 2 + output_padding
        before = same_padding(out, k, s, d)[0]
    full = (n - 1) * s + span
    return out, before, out - full + 2 * before


def conv_transpose(rank: int) -> Callable[[Builder, LayerSpec, list[Info]], tuple[Info, dict[str, Any]]]:
    """The handler of Conv{1,2,3}DTranspose."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        o = _common_options(b, spec, x, rank, causal=False)
        filters, cin = int_option(b, cfg, "filters"), o["cin"]
        if int_option(b, cfg, "groups", 1) != 1:
            raise b.error("grouped transposed convolutions are not supported", "groups=1", cfg.get("groups"))
        extra = None if cfg.get("output_padding") is None else int_tuple(b, cfg, "output_padding", rank, 0, low=0)
        if extra is not None and any(p >= max(s, d) for p, s, d in zip(extra, o["stride"], o["dilation"])):
            raise b.error("`output_padding` must be smaller than the stride", f"values below {list(o['stride'])}",
                          list(extra))
        out, pads, torch_extra, crops = [], [], [], []
        for axis, n in enumerate(o["sizes"]):
            k, s, d = o["kernel"][axis], o["stride"][axis], o["dilation"][axis]
            p = None if extra is None else extra[axis]
            # P and the torch output padding do not depend on n (see the module docstring).
            size, before, rest = transpose_geometry(n if n is not None else 8, k, s, d, o["padding"], p)
            out.append(size if n is not None else None)
            pads.append(before)
            torch_extra.append(max(rest, 0))
            crops.append((0, max(-rest, 0)))
            if rest >= max(s, d):
                raise b.error("a transposed geometry torch cannot express", "a smaller output_padding", p)
        perm = layout(rank + 2, o["df"])

        def make(device: str) -> nn.Module:
            return _TRANSPOSE[rank](cin, filters, o["kernel"], stride=o["stride"], padding=tuple(pads),
                                    output_padding=tuple(torch_extra), dilation=o["dilation"], bias=o["use_bias"],
                                    device=device)

        shapes = {"kernel": (*o["kernel"], filters, cin), **({"bias": (filters,)} if o["use_bias"] else {})}
        init_keys = {"kernel": "kernel_initializer", "bias": "bias_initializer"}
        inits = {keras: initializer(b, cfg, key) for keras, key in init_keys.items()}
        b.weight_shapes[spec.name] = shapes
        factory = plan_factory(b, make, KERNEL_WEIGHTS, shapes, inits, common(spec)["trainable"])
        slot = b.run(spec.name, factory, [b.take(x, perm)])
        if any(after for _, after in crops):
            slot = b.run(b.aux_name("crop"), lambda: Crop(crops), [slot])
        slot = b.activate(o["activation"], slot, perm)
        config = {**common(spec), "filters": filters, "kernel_size": list(o["kernel"]),
                  "strides": list(o["stride"]), "padding": o["padding"],
                  "output_padding": None if extra is None else list(extra), "data_format": o["df"],
                  "dilation_rate": list(o["dilation"]), "activation": o["activation"], "use_bias": o["use_bias"],
                  **{init_keys[k]: v for k, v in inits.items() if v is not None}}
        return Info(join(x.shape[0], filters, out, o["df"]), perm, slot), config

    return handler
