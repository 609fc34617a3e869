"""The four strategies of the original study, and the backbones they stand on.

Every model takes raw 0-255 RGB images: the backbone's own preprocessing is a layer
inside it, so a saved model needs nothing but pixels. A transfer model is built as

    image -> [augment] -> Preprocess -> backbone (nested Model) -> head

and comes with its split for caching (:class:`Split`): `lower`, the frozen part of the
backbone up to a single tensor, computed once per image; and `trainer`, the part above
that tensor plus the head, trained on the cached tensors. `trainer` shares its layers
with the full model, so training it trains the model that is saved.
"""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
import zipfile
from dataclasses import dataclass

import keras
from keras import layers, ops

from ..core.architectures import BACKBONES, HEADS, STRATEGIES, Backbone
from ..core.errors import OptionError, ToolkitError, first_line
from ..core.files import atomic_path

#: The study's augmentation: rotation 30 degrees, shifts 0.2, zoom 0.2, horizontal flip,
#: nearest fill (its ImageDataGenerator arguments, as Keras preprocessing layers).
AUGMENTATION = dict(rotation=30 / 360, shift=0.2, zoom=0.2, fill_mode="nearest")


@keras.saving.register_keras_serializable(package="toolkit")
class Preprocess(layers.Layer):
    """A backbone's `preprocess_input`, as a layer with no weights.

    unit: x/255 (the small CNN); tf: x/127.5 - 1 (MobileNetV2); caffe: RGB->BGR minus the
    ImageNet mean (VGG, ResNet); none: the backbone does it (EfficientNet).
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("unit", "tf", "caffe", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(self.MEAN_BGR, self.compute_dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def augmentation(seed: int) -> keras.Sequential:
    """The study's augmentation as preprocessing layers (active only while training)."""
    a = AUGMENTATION
    return keras.Sequential([
        layers.RandomRotation(a["rotation"], fill_mode=a["fill_mode"], seed=seed),
        layers.RandomTranslation(a["shift"], a["shift"], fill_mode=a["fill_mode"], seed=seed + 1),
        layers.RandomZoom(a["zoom"], a["zoom"], fill_mode=a["fill_mode"], seed=seed + 2),
        layers.RandomFlip("horizontal", seed=seed + 3),
    ], name="augment")


def head(n_classes: int, kind: str = "flatten") -> keras.Sequential:
    """The study's classifier head: Flatten, Dense 128/64/32 relu, softmax.

    `pool` averages each feature map first (GlobalAveragePooling2D) instead of flattening:
    ~50x fewer head weights on a 7x7 backbone output, so far less to overfit.
    """
    if kind not in HEADS:
        raise OptionError("head", kind, f"choose from {', '.join(HEADS)}")
    return keras.Sequential([
        layers.Flatten() if kind == "flatten" else layers.GlobalAveragePooling2D(),
        layers.Dense(128, activation="relu"),
        layers.Dense(64, activation="relu"),
        layers.Dense(32, activation="relu"),
        layers.Dense(n_classes, activation="softmax", dtype="float32"),
    ], name="head")


def cnn(input_shape: tuple[int, int, int], n_classes: int, head_kind: str = "flatten") -> keras.Model:
    """The study's CNN: Conv2D 128/256/128/64 (3x3, same, relu) each + MaxPool2D, then the head."""
    inputs = keras.Input(input_shape, name="image")
    x = Preprocess("unit", name="preprocess")(inputs)
    for filters in (128, 256, 128, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPool2D()(x)
    return keras.Model(inputs, head(n_classes, head_kind)(x), name="cnn")


def load_backbone(name: str, weights: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """A keras.applications base (include_top=False) with `weights` imagenet, none or a file."""
    spec = backbone_spec(name)
    if min(input_shape[:2]) < spec.min_size:
        raise ToolkitError(f"images are {input_shape[0]}x{input_shape[1]} but {name} needs at "
                           f"least {spec.min_size}x{spec.min_size}; pack with a larger --size")
    constructor = getattr(keras.applications, spec.factory)
    if weights == "none":
        source = None
    elif weights == "imagenet":
        source = "imagenet"
    else:
        if not os.path.isfile(weights):
            raise OptionError("weights", weights, "no such file; give imagenet, none or the path "
                              "of a .weights.h5 / .h5 file")
        source = weights
    try:
        with warnings.catch_warnings():  # the weights of a base hold at any input size
            warnings.filterwarnings("ignore", message=".*will be loaded as the default",
                                    category=UserWarning)
            return constructor(include_top=False, weights=source, input_shape=input_shape)
    except Exception as e:  # Keras raises many types for a failed download or a bad file
        if source == "imagenet":
            raise OptionError(
                "weights", "imagenet", f"cannot get the ImageNet weights of {name} "
                f"({first_line(e)}); offline, download them elsewhere (keras.applications."
                f"{spec.factory}(include_top=False) caches them in ~/.keras/models) and give "
                "that file instead") from None
        raise OptionError("weights", weights, f"does not fit {name} (include_top=False): "
                          f"{first_line(e)}") from None


def backbone_spec(name: str) -> Backbone:
    if name not in BACKBONES:
        raise OptionError("backbone", name, f"choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


@dataclass
class Split:
    """A model and its parts for training on cached frozen features."""

    model: keras.Model            # end to end, raw images in, probabilities out
    lower: keras.Model | None     # raw images -> cached tensor (frozen); None: nothing frozen
    trainer: keras.Model          # cached tensor -> probabilities (the trainable rest)
    cut: str                      # name of the layer whose output is cached ("" for none)


def build(strategy: str, input_shape: tuple[int, int, int], n_classes: int, *,
          backbone: str = "vgg16", weights: str = "imagenet",
          trainable: tuple[str, ...] | None = None, head_kind: str = "flatten",
          seed: int = 0) -> Split:
    """Build a strategy's model and its split for caching."""
    if strategy not in STRATEGIES:
        raise OptionError("strategy", strategy, f"choose from {', '.join(STRATEGIES)}")
    if strategy == "cnn":
        model = cnn(input_shape, n_classes, head_kind)
        return Split(model, None, model, "")
    spec = backbone_spec(backbone)
    base = load_backbone(backbone, weights, input_shape)
    patterns = () if strategy == "extract" else (trainable or spec.finetune)
    chosen = set_trainable(base, patterns)
    if patterns and not chosen:
        raise OptionError("trainable", list(patterns), f"matches no layer of {backbone}; its last "
                          f"layers are {', '.join(layer.name for layer in base.layers[-6:])}")

    inputs = keras.Input(input_shape, name="image")
    x = augmentation(seed)(inputs) if strategy == "augment" else inputs
    preprocess = Preprocess(spec.preprocess, name="preprocess")
    classifier = head(n_classes, head_kind)
    features = base(preprocess(x), training=False)  # BatchNorm always in inference mode
    model = keras.Model(inputs, classifier(features), name=f"{strategy}_{backbone}")

    cut_layer = cut_below(base, chosen)
    lower_input = keras.Input(input_shape, name="image")
    lower_base = keras.Model(base.input, cut_layer.output, name=f"{backbone}_frozen")
    lower = keras.Model(lower_input, lower_base(preprocess(lower_input), training=False),
                        name="lower")
    cached = keras.Input(tuple(cut_layer.output.shape[1:]), name="features")
    if cut_layer is base.layers[-1]:
        top = cached
    else:
        upper = keras.Model(cut_layer.output, base.output, name=f"{backbone}_top")
        top = upper(cached, training=False)
    trainer = keras.Model(cached, classifier(top), name="trainer")
    return Split(model, lower, trainer, cut_layer.name)


def set_trainable(base: keras.Model, patterns: tuple[str, ...]) -> list[str]:
    """Freeze `base` but the layers matching `patterns`; BatchNorm layers always stay frozen."""
    base.trainable = True
    chosen = []
    for layer in base.layers:
        wanted = any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)
        layer.trainable = wanted and not isinstance(layer, layers.BatchNormalization)
        if layer.trainable and layer.weights:
            chosen.append(layer.name)
    if not chosen:
        base.trainable = False
    return chosen


def cut_below(base: keras.Model, trainable: list[str]) -> layers.Layer:
    """The last layer whose output alone feeds every trainable layer (the cache point)."""
    if not trainable:
        return base.layers[-1]
    first = min(i for i, layer in enumerate(base.layers) if layer.name in trainable)
    for layer in reversed(base.layers[:first]):
        try:
            keras.Model(layer.output, base.output)
        except ValueError:  # other tensors (a skip connection) also reach the top
            continue
        return layer
    return base.layers[0]


INFO_MEMBER = "toolkit.json"


def save_model(model: keras.Model, path: str | os.PathLike, info: dict) -> None:
    """Save atomically as .keras, with `info` (class names, image size, ...) inside the file."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(INFO_MEMBER, json.dumps(info, ensure_ascii=False, indent=2))


def load_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Load a .keras model in Keras' safe mode (no code from the file runs) and its info."""
    path = str(path)
    if not os.path.isfile(path):
        raise ToolkitError(f"model {path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            info = json.loads(zf.read(INFO_MEMBER)) if INFO_MEMBER in names else {}
        if "config.json" not in names:
            raise ValueError("no config.json")
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
        raise ToolkitError(f"{path} is not a Keras model (.keras) file ({first_line(e)})") from None
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        message = first_line(e)
        if "unsafe" in message.lower() or "lambda" in message.lower() or "safe_mode" in message:
            raise ToolkitError(f"{path} holds code (a Lambda layer) that would run on loading; "
                               "refusing it (Keras safe mode)") from None
        raise ToolkitError(f"cannot load {path} as a Keras model: {message}") from None
    if not isinstance(info, dict):
        info = {}
    return model, info


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(ops.size(w)) for w in model.trainable_weights)
    total = model.count_params()
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
