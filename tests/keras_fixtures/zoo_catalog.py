"""Every application of ``tf_keras.applications`` 2.21 and ``keras.applications`` 3.15.1."""
from __future__ import annotations

_COMMON = (
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge", "DenseNet121",
    "DenseNet169", "DenseNet201", "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7", "EfficientNetV2B0",
    "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2L", "EfficientNetV2M",
    "EfficientNetV2S", "InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2", "MobileNetV3Large",
    "MobileNetV3Small", "NASNetLarge", "NASNetMobile", "ResNet101", "ResNet101V2", "ResNet152",
    "ResNet152V2", "ResNet50", "ResNet50V2", "VGG16", "VGG19", "Xception",
)
_TF_KERAS_ONLY = tuple(f"RegNet{kind}{size}" for kind in "XY" for size in (
    "002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320")) + tuple(
    f"ResNetRS{depth}" for depth in (50, 101, 152, 200, 270, 350, 420))

#: Framework -> every application it ships (71 in tf_keras, 40 in Keras 3).
ALL_APPS = {"tf_keras": _COMMON + _TF_KERAS_ONLY, "keras3": _COMMON}
