"""The models the toolkit builds, by name: the strategies, the heads and the pretrained backbones.

A table with no Keras in it. `toolkit.models` builds from it; training's options and the
command line's choices read it without starting TensorFlow, which importing
`toolkit.models` does (it registers the model's custom layer with Keras).
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("cnn", "extract", "finetune", "augment")
HEADS = ("flatten", "pool")


@dataclass(frozen=True)
class Backbone:
    """A keras.applications base and how to use it."""

    name: str
    factory: str               # the keras.applications constructor
    preprocess: str            # mode of the models.Preprocess layer
    finetune: tuple[str, ...]  # layer-name patterns unfrozen by finetune/augment
    min_size: int = 32


BACKBONES = {
    b.name: b for b in (
        Backbone("vgg16", "VGG16", "caffe", ("block5_conv3",)),
        Backbone("vgg19", "VGG19", "caffe", ("block5_conv4",)),
        Backbone("mobilenet_v2", "MobileNetV2", "tf", ("block_16_*", "Conv_1")),
        Backbone("resnet50", "ResNet50", "caffe", ("conv5_block3_*",)),
        Backbone("efficientnet_b0", "EfficientNetB0", "none", ("block7a_*", "top_conv")),
    )
}

#: The smallest image side a pretrained backbone takes; below it only the small CNN trains.
SMALLEST_INPUT = min(b.min_size for b in BACKBONES.values())
