"""The convolution family beyond Conv2D, as Keras layer table entries: Conv1D/Conv3D,
DepthwiseConv1D/2D, SeparableConv1D/2D, Conv1D/2D/3DTranspose, and the 1-D/3-D (and
2-D cropping/upsampling) spatial layers without weights.

Planning lives in :mod:`._conv_plan` (convs), :mod:`._conv_transpose` and
:mod:`._conv_spatial`; the torch modules in :mod:`._conv_layers`.  Weight layouts:

========================  ===========================  =========================================
Keras weight              torch tensor                 layout (torch -> Keras view)
========================  ===========================  =========================================
ConvND ``kernel``         ConvNd ``weight``            ``(O, I, *k) -> (*k, I, O)``
ConvNDTranspose           ConvTransposeNd ``weight``   ``(I, O, *k) -> (*k, O, I)`` (same view)
``kernel``
Depthwise                 grouped ConvNd ``weight``    ``(C*M, 1, *k) -> (*k, C*M)``: Keras'
``depthwise_kernel``      (``groups=C``)               ``(*k, C, M)`` in the same element order
Separable                 ``depthwise.weight``,        as above; the 1x1 pointwise conv holds
``depthwise_kernel``,     ``pointwise.weight``,        the bias
``pointwise_kernel``,     ``pointwise.bias``
``bias``
========================  ===========================  =========================================

The depthwise view has Keras' element order but not its shape (a view of the torch tensor
cannot split C*M without knowing M); the exact Keras shape comes from the plan
(``builder.weight_shapes``), which the reader, the writer and initialisation use.
"""
from __future__ import annotations

from torch import nn

from ._conv_plan import DEPTHWISE_WEIGHTS, KERNEL_WEIGHTS, SEPARABLE_WEIGHTS, conv, depthwise, separable
from ._conv_spatial import cropping, global_pool, pool, upsampling, zero_padding
from ._conv_transpose import conv_transpose
from ._entry import LayerEntry
from ._pooling import masked_global_average_1d

__all__ = ["ENTRIES"]

_SERIES, _IMAGE, _VOLUME = (None, 9, 3), (None, 7, 6, 3), (None, 4, 5, 6, 2)

ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("Conv1D", conv(1), KERNEL_WEIGHTS, ("Convolution1D",), (nn.Conv1d,),
               example=(_SERIES, {"filters": 4, "kernel_size": 3, "padding": "causal", "dilation_rate": 2})),
    LayerEntry("Conv3D", conv(3), KERNEL_WEIGHTS, ("Convolution3D",), (nn.Conv3d,),
               example=(_VOLUME, {"filters": 3, "kernel_size": [2, 3, 2], "strides": [1, 2, 1], "padding": "same"})),
    LayerEntry("DepthwiseConv1D", depthwise(1), DEPTHWISE_WEIGHTS,
               example=(_SERIES, {"kernel_size": 3, "depth_multiplier": 2, "padding": "same"})),
    LayerEntry("DepthwiseConv2D", depthwise(2), DEPTHWISE_WEIGHTS,
               example=(_IMAGE, {"kernel_size": 3, "strides": 2, "depth_multiplier": 2, "padding": "same"})),
    LayerEntry("SeparableConv1D", separable(1), SEPARABLE_WEIGHTS, ("SeparableConvolution1D",),
               example=(_SERIES, {"filters": 4, "kernel_size": 3, "depth_multiplier": 2, "padding": "same"})),
    LayerEntry("SeparableConv2D", separable(2), SEPARABLE_WEIGHTS, ("SeparableConvolution2D",),
               example=(_IMAGE, {"filters": 4, "kernel_size": 3, "strides": 2, "depth_multiplier": 2,
                                 "padding": "same"})),
    LayerEntry("Conv1DTranspose", conv_transpose(1), KERNEL_WEIGHTS, ("Convolution1DTranspose",),
               example=(_SERIES, {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"})),
    LayerEntry("Conv2DTranspose", conv_transpose(2), KERNEL_WEIGHTS, ("Convolution2DTranspose",),
               example=(_IMAGE, {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "valid",
                                 "output_padding": 1})),
    LayerEntry("Conv3DTranspose", conv_transpose(3), KERNEL_WEIGHTS, ("Convolution3DTranspose",),
               example=(_VOLUME, {"filters": 2, "kernel_size": 2, "strides": [1, 2, 2], "padding": "same"})),
    LayerEntry("MaxPooling1D", pool("max", 1), aliases=("MaxPool1D",)),
    LayerEntry("MaxPooling3D", pool("max", 3), aliases=("MaxPool3D",)),
    LayerEntry("AveragePooling1D", pool("avg", 1), aliases=("AvgPool1D",)),
    LayerEntry("AveragePooling3D", pool("avg", 3), aliases=("AvgPool3D",)),
    LayerEntry("GlobalAveragePooling1D", masked_global_average_1d(global_pool("avg", 1)), aliases=("GlobalAvgPool1D",)),
    LayerEntry("GlobalAveragePooling3D", global_pool("avg", 3), aliases=("GlobalAvgPool3D",)),
    LayerEntry("GlobalMaxPooling1D", global_pool("max", 1), aliases=("GlobalMaxPool1D",)),
    LayerEntry("GlobalMaxPooling3D", global_pool("max", 3), aliases=("GlobalMaxPool3D",)),
    LayerEntry("ZeroPadding1D", zero_padding(1)),
    LayerEntry("ZeroPadding3D", zero_padding(3)),
    LayerEntry("Cropping1D", cropping(1)),
    LayerEntry("Cropping2D", cropping(2)),
    LayerEntry("Cropping3D", cropping(3)),
    LayerEntry("UpSampling1D", upsampling(1)),
    LayerEntry("UpSampling2D", upsampling(2)),
    LayerEntry("UpSampling3D", upsampling(3)),
)
