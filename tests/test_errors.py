"""Every constructor and call error: its type, and that the message names the argument and
the received value (ErrorModuleInput-style case table)."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import bnkit
from bnkit import functional as F

BN = bnkit.BatchNormalization

CONSTRUCTION_ERRORS: list[tuple[str, Callable[[], Any], type, list[str]]] = [
    ("axis_str", lambda: BN(axis="a"), TypeError, ["'axis'", "'a'"]),
    ("axis_float", lambda: BN(axis=1.0), TypeError, ["'axis'", "1.0"]),
    ("axis_empty", lambda: BN(axis=[]), TypeError, ["'axis'", "[]"]),
    ("momentum", lambda: BN(momentum=1.5), ValueError, ["`momentum`", "1.5"]),
    ("momentum_type", lambda: BN(momentum="0.9"), ValueError, ["`momentum`", "'0.9'"]),
    ("epsilon", lambda: BN(epsilon=0), ValueError, ["`epsilon`", "0"]),
    ("center", lambda: BN(center=1), TypeError, ["`center`", "1"]),
    ("fused_type", lambda: BN(fused="yes"), TypeError, ["`fused`", "'yes'"]),
    ("fused_renorm", lambda: BN(fused=True, renorm=True), ValueError, ["`fused=True`", "`renorm=True`"]),
    ("fused_axis", lambda: BN(fused=True, axis=2), ValueError, ["`fused=True`", "Got axis [2]"]),
    ("fused_multi_axis", lambda: BN(fused=True, axis=[1, 2]), ValueError, ["`fused=True`", "[1, 2]"]),
    ("fused_vbs", lambda: BN(fused=True, virtual_batch_size=2), ValueError, ["`virtual_batch_size`", "2"]),
    ("fused_adjustment", lambda: BN(fused=True, adjustment=lambda s: (1, 0)), ValueError, ["`adjustment`"]),
    ("fused_float64", lambda: BN(fused=True, dtype=torch.float64), ValueError, ["float64"]),
    ("fused_synchronized", lambda: BN(fused=True, synchronized=True), ValueError, ["`synchronized=True`"]),
    ("vbs_zero", lambda: BN(virtual_batch_size=0), ValueError, ["`virtual_batch_size`", "0"]),
    ("vbs_float", lambda: BN(virtual_batch_size=2.5), ValueError, ["`virtual_batch_size`", "2.5"]),
    ("vbs_adjustment", lambda: BN(virtual_batch_size=2, adjustment=lambda s: (1, 0)), ValueError,
     ["`virtual_batch_size`", "adjustment"]),
    ("adjustment_type", lambda: BN(adjustment=3), TypeError, ["`adjustment`", "3"]),
    ("clipping_key", lambda: BN(renorm=True, renorm_clipping={"rmaxx": 2}), ValueError,
     ["`renorm_clipping`", "rmaxx", "'rmax'"]),
    ("clipping_order", lambda: BN(renorm=True, renorm_clipping={"rmax": 1, "rmin": 2}), ValueError,
     ["rmax=1", "rmin=2"]),
    ("clipping_dmax", lambda: BN(renorm=True, renorm_clipping={"dmax": -1}), ValueError, ["dmax=-1"]),
    ("clipping_value", lambda: BN(renorm=True, renorm_clipping={"dmax": "5"}), TypeError, ["'dmax'", "'5'"]),
    ("clipping_type", lambda: BN(renorm=True, renorm_clipping=[1, 2]), TypeError, ["`renorm_clipping`", "[1, 2]"]),
    ("renorm_momentum", lambda: BN(renorm_momentum=-0.1), ValueError, ["`renorm_momentum`", "-0.1"]),
    ("num_features", lambda: BN(num_features=0), ValueError, ["`num_features`", "0"]),
    ("trainable", lambda: BN(trainable="no"), TypeError, ["`trainable`", "'no'"]),
    ("dropout_rate", lambda: bnkit.Dropout(1.5), ValueError, ["`rate`", "1.5"]),
    ("dropout_rate_type", lambda: bnkit.Dropout("0.5"), ValueError, ["`rate`", "'0.5'"]),
    ("dropout_noise_shape", lambda: bnkit.Dropout(0.5, noise_shape=(None, 0)), ValueError, ["`noise_shape`", "(None, 0)"]),
    ("dropout_noise_shape_str", lambda: bnkit.Dropout(0.5, noise_shape="ab"), ValueError, ["`noise_shape`", "'ab'"]),
    ("dropout_seed", lambda: bnkit.Dropout(0.5, seed=-1), ValueError, ["`seed`", "-1"]),
    ("flatten_format", lambda: bnkit.Flatten("NCHW"), ValueError, ["`data_format`", "'NCHW'"]),
]


@pytest.mark.parametrize("make, error, fragments", [c[1:] for c in CONSTRUCTION_ERRORS],
                         ids=[c[0] for c in CONSTRUCTION_ERRORS])
def test_construction_errors(make: Callable[[], Any], error: type, fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value)


CALL_ERRORS: list[tuple[str, Callable[[], Any], type, list[str]]] = [
    ("axis_out_of_range", lambda: BN(axis=5)(torch.randn(2, 3, 4, 5)), ValueError, ["`axis`", "axis=(5,)", "rank=4"]),
    ("axis_negative_out_of_range", lambda: BN(axis=-5)(torch.randn(2, 3, 4, 5)), ValueError, ["axis=(-1,)"]),
    ("duplicate_axis", lambda: BN(axis=[1, -3])(torch.randn(2, 3, 4, 5)), ValueError, ["Duplicate axis: (1, 1)"]),
    ("fused_rank2", lambda: BN(fused=True)(torch.randn(6, 5)), ValueError, ["`fused=True`", "(6, 5)"]),
    ("fused_axis0_rank4", lambda: BN(axis=-4)(torch.randn(2, 3, 4, 5)), ValueError, ["Unsupported axis", "axis=(0,)"]),
    ("vbs_axis0", lambda: BN(axis=0, virtual_batch_size=2)(torch.randn(4, 3)), ValueError, ["axis cannot include 0"]),
    ("vbs_not_dividing", lambda: BN(virtual_batch_size=4)(torch.randn(6, 3), training=True), ValueError,
     ["`virtual_batch_size`", "virtual_batch_size=4", "6"]),
    ("scalar_input", lambda: BN()(torch.tensor(1.0)), ValueError, ["rank"]),
    ("wrong_rank", lambda: _built(BN(), (4, 3))(torch.randn(4, 3, 2)), ValueError, ["expected ndim=2", "found ndim=3"]),
    ("wrong_channels", lambda: _built(BN(), (4, 3))(torch.randn(4, 5)), ValueError, ["to have value 3", "(4, 5)"]),
    ("eager_wrong_channels", lambda: BN(num_features=3)(torch.randn(4, 5)), ValueError, ["3", "(4, 5)"]),
    ("mask_shape", lambda: BN()(torch.randn(4, 6, 3), training=True, mask=torch.ones(4, 5)), ValueError,
     ["`mask`", "(4, 6)", "(4, 5)"]),
    ("noise_shape_rank", lambda: bnkit.Dropout(0.5, noise_shape=(None, 1))(torch.randn(2, 3, 4), training=True),
     ValueError, ["`noise_shape`", "(None, 1)", "(2, 3, 4)"]),
    ("noise_shape_size", lambda: bnkit.Dropout(0.5, noise_shape=(None, 2))(torch.randn(2, 3), training=True),
     ValueError, ["`noise_shape`", "(None, 2)", "(2, 3)"]),
    ("flatten_scalar", lambda: bnkit.Flatten()(torch.tensor(1.0)), ValueError, ["rank", "()"]),
    ("variance_rule", lambda: F.batch_norm(torch.randn(4, 3), None, None, variance_rule="sample"), ValueError,
     ["`variance_rule`", "'sample'"]),
]


def _built(layer: bnkit.BatchNormalization, shape: tuple[int, ...]) -> bnkit.BatchNormalization:
    layer(torch.randn(shape), training=False)
    return layer


@pytest.mark.parametrize("call, error, fragments", [c[1:] for c in CALL_ERRORS], ids=[c[0] for c in CALL_ERRORS])
def test_call_errors(call: Callable[[], Any], error: type, fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_ghost_batch_inference_accepts_any_batch_size() -> None:
    bn = BN(virtual_batch_size=4)
    bn(torch.randn(8, 3), training=True)
    assert bn(torch.randn(6, 3), training=False).shape == (6, 3)


def test_fused_path_ignores_mask_with_a_warning() -> None:
    bn = BN(axis=-1)
    with pytest.warns(UserWarning, match="ignores `mask`"):
        bn(torch.randn(2, 3, 3, 4), training=True, mask=torch.ones(2, 3, 3))
