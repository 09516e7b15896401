"""Model builders: VGG16/VGG19 as in Keras applications, with optional batch norm."""
from .vgg import CONFIGS, PLACEMENTS, vgg, vgg16, vgg19

__all__ = ["CONFIGS", "PLACEMENTS", "vgg", "vgg16", "vgg19"]
