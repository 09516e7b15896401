"""Keras side of tests/test_keras_conv.py: the convolution-family recipes, run through
``keras_jobs.py``'s tasks (build/save/predict)::

    python conv_jobs.py {tf_keras|keras3} JOB.json
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras_jobs  # noqa: E402  (imports TensorFlow for the flavour in sys.argv[1])
from keras_jobs import L, keras  # noqa: E402


def mobile() -> Any:
    """MobileNet-like: depthwise and separable convs with BNs after them, odd/even 'same' pads."""
    inp = keras.Input((13, 12, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x)
    x = L.BatchNormalization(name="dw1_bn")(x)
    x = L.ReLU(6.0, name="dw1_relu")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu", name="dw2")(x)
    x = L.DepthwiseConv2D((2, 3), dilation_rate=(2, 1), padding="same", name="dw3")(x)
    x = L.BatchNormalization(name="dw3_bn")(x)
    x = L.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep1")(x)
    x = L.BatchNormalization(name="sep1_bn")(x)
    x = L.Activation("relu", name="sep1_relu")(x)
    x = L.SeparableConv2D(6, (2, 3), strides=(1, 2), use_bias=False, activation="tanh", name="sep2")(x)
    x = L.SeparableConv2D(6, 2, dilation_rate=2, padding="same", use_bias=False, name="sep3")(x)
    x = L.BatchNormalization(name="sep3_bn")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x), name="mobile")


def seq1d() -> Any:
    """Conv1D (causal, strided same, groups), SeparableConv1D and every 1-D spatial layer."""
    inp = keras.Input((21, 4), name="series")
    x = L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="causal")(inp)
    x = L.BatchNormalization(name="causal_bn")(x)
    x = L.Conv1D(8, 4, strides=2, padding="same", activation="relu", name="strided")(x)
    x = L.SeparableConv1D(8, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = L.BatchNormalization(name="sep_bn")(x)
    x = L.Conv1D(8, 3, groups=2, padding="same", name="grouped")(x)
    x = L.DepthwiseConv1D(2, strides=2, padding="same", name="dw")(L.UpSampling1D(2, name="up2")(x))
    a = L.MaxPooling1D(3, strides=2, padding="same", name="maxpool")(x)
    b = L.AveragePooling1D(3, strides=2, padding="same", name="avgpool")(x)
    c = L.AveragePooling1D(2, padding="valid", name="avgpool_valid")(L.ZeroPadding1D((1, 0), name="zp_c")(x))
    x = L.Add(name="add")([a, b, c])
    x = L.ZeroPadding1D((1, 2), name="zp")(x)
    x = L.Cropping1D((2, 1), name="crop")(x)
    x = L.UpSampling1D(3, name="up")(x)
    x = L.Conv1D(5, 3, strides=2, use_bias=False, name="valid")(x)
    x = L.MaxPooling1D(2, name="maxpool_valid")(x)
    g1 = L.GlobalAveragePooling1D(name="gap")(x)
    g2 = L.Flatten(name="flat")(L.GlobalMaxPooling1D(keepdims=True, name="gmp")(x))
    return keras.Model(inp, L.Dense(3, name="fc")(L.Concatenate(name="cat")([g1, g2])), name="seq1d")


def vol3d() -> Any:
    """Conv3D and every 3-D spatial layer."""
    inp = keras.Input((5, 7, 6, 2), name="volume")
    x = L.Conv3D(4, 3, strides=(1, 2, 2), padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="c1_bn")(x)
    a = L.MaxPooling3D(2, strides=1, padding="same", name="maxpool")(x)
    b = L.AveragePooling3D((2, 3, 2), strides=1, padding="same", name="avgpool")(x)
    x = L.Add(name="add")([a, b])
    x = L.ZeroPadding3D(((1, 0), (0, 1), (1, 1)), name="zp")(x)
    x = L.Cropping3D(((0, 1), (1, 0), (0, 2)), name="crop")(x)
    x = L.UpSampling3D((1, 2, 2), name="up")(x)
    x = L.Conv3D(3, 2, dilation_rate=(1, 2, 1), activation="relu", name="c2")(x)
    x = L.AveragePooling3D(2, name="avgpool_valid")(x)
    g1 = L.GlobalAveragePooling3D(name="gap")(x)
    g2 = L.GlobalMaxPooling3D(name="gmp")(x)
    return keras.Model(inp, L.Concatenate(name="cat")([g1, g2]), name="vol3d")


def resize2d() -> Any:
    """Cropping2D and UpSampling2D, nearest and bilinear."""
    inp = keras.Input((7, 6, 3), name="image")
    x = L.Cropping2D(((1, 2), (0, 1)), name="crop")(inp)
    x = L.UpSampling2D((2, 3), name="up_nearest")(x)
    x = L.Conv2D(4, 3, name="conv")(x)
    x = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(x)
    x = L.Cropping2D(2, name="crop_sym")(x)
    return keras.Model(inp, L.UpSampling2D((3, 2), interpolation="bilinear", name="up_bilinear2")(x), name="resize2d")


def first() -> Any:
    """channels_first versions of the new layers."""
    cf = "channels_first"
    inp = keras.Input((3, 9, 10), name="image")
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, data_format=cf, name="dw")(inp)
    x = L.BatchNormalization(axis=1, name="dw_bn")(x)
    x = L.SeparableConv2D(7, 3, strides=2, padding="same", data_format=cf, name="sep")(x)
    x = L.Cropping2D(((1, 0), (0, 1)), data_format=cf, name="crop")(x)
    x = L.UpSampling2D(2, data_format=cf, interpolation="bilinear", name="up")(x)
    x = L.UpSampling2D((1, 2), data_format=cf, name="up_nearest")(x)
    return keras.Model(inp, L.GlobalMaxPooling2D(data_format=cf, name="gmp")(x), name="first")


def first1d() -> Any:
    cf = "channels_first"
    inp = keras.Input((4, 11), name="series")
    x = L.Conv1D(6, 3, padding="same", data_format=cf, name="c")(inp)
    x = L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", data_format=cf, name="dw")(x)
    x = L.SeparableConv1D(5, 3, strides=2, padding="same", data_format=cf, name="sep")(x)
    x = L.MaxPooling1D(2, padding="same", data_format=cf, name="pool")(x)
    x = L.AveragePooling1D(2, padding="same", data_format=cf, name="avg")(x)
    return keras.Model(inp, L.GlobalAveragePooling1D(data_format=cf, keepdims=True, name="gap")(x), name="first1d")


def first3d() -> Any:
    cf = "channels_first"
    inp = keras.Input((2, 4, 5, 6), name="volume")
    x = L.Conv3D(3, 2, padding="same", data_format=cf, name="c")(inp)
    x = L.ZeroPadding3D(1, data_format=cf, name="zp")(x)
    x = L.Cropping3D(((1, 0), (0, 1), (1, 1)), data_format=cf, name="crop")(x)
    x = L.UpSampling3D(2, data_format=cf, name="up")(x)
    x = L.MaxPooling3D(2, padding="same", data_format=cf, name="pool")(x)
    return keras.Model(inp, L.GlobalAveragePooling3D(data_format=cf, keepdims=True, name="gap")(x), name="first3d")


def transposed() -> Any:
    """Conv2DTranspose: every way TensorFlow's cut of the full output can fall."""
    inp = keras.Input((5, 6, 3), name="image")
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="t_same_odd")(inp)
    x = L.BatchNormalization(name="t_bn")(x)
    x = L.Conv2DTranspose(3, (4, 5), strides=(2, 3), padding="same", activation="relu", name="t_same_even")(x)
    x = L.Conv2DTranspose(3, (2, 3), strides=(3, 1), padding="valid", name="t_valid")(x)
    x = L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1, use_bias=False, name="t_outpad")(x)
    x = L.Conv2DTranspose(2, (3, 2), strides=(2, 3), padding="valid", output_padding=(1, 2), name="t_valid_pad")(x)
    return keras.Model(inp, L.Conv2DTranspose(2, 3, dilation_rate=2, padding="same", name="t_dilated")(x),
                       name="transposed")


def transposed1d() -> Any:
    inp = keras.Input((7, 3), name="series")
    x = L.Conv1DTranspose(4, 3, strides=2, padding="same", name="t1")(inp)
    x = L.Conv1DTranspose(2, 4, strides=3, padding="valid", output_padding=2, name="t2")(x)
    return keras.Model(inp, x, name="transposed1d")


def transposed3d() -> Any:
    inp = keras.Input((3, 4, 5, 2), name="volume")
    x = L.Conv3DTranspose(3, 3, strides=(1, 2, 2), padding="same", name="t1")(inp)
    x = L.Conv3DTranspose(2, 2, strides=2, padding="valid", output_padding=(1, 0, 1), name="t2")(x)
    return keras.Model(inp, x, name="transposed3d")


def mobilenet() -> Any:
    """keras.applications.MobileNet, no top (its top needs Reshape), average pooling."""
    return keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, include_top=False, weights=None,
                                        pooling="avg")


def mobilenet_v2() -> Any:
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                          pooling="avg")


RECIPES = {f.__name__: f for f in (mobile, seq1d, vol3d, resize2d, first, first1d, first3d, transposed,
                                         transposed1d, transposed3d, mobilenet, mobilenet_v2)}
keras_jobs.RECIPES.update(RECIPES)

if __name__ == "__main__":
    raise SystemExit(keras_jobs.main())
