"""The model as it is served: probabilities and an embedding, never the augmentation.

A saved model is a chain (input, [augment], preprocess, backbone, head; or the small CNN's
layers, then the head). Rebuilding that chain gives one model with two outputs: the
class probabilities and the embedding the head sees (global-average-pooled when it is a
feature map), which the unknown detector compares with the training images'. The
augmentation layers are left out: they do nothing at inference, and they break the
LiteRT converter (keras-team/keras#19108).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import keras
import numpy as np

AUGMENTATION_LAYER = "augment"  # the name models.augmentation() gives its Sequential
TRAINER = "trainer"  # the name models.build() gives the trainable part (features -> classes)


def with_embedding(model: keras.Model, input_dtype: str | None = None) -> keras.Model:
    """`model` rebuilt with outputs {"probabilities", "embedding"}, sharing its weights.

    `input_dtype` "uint8" makes the served model take raw 0-255 pixels as bytes (phones
    hand images over as bytes); None keeps the model's own input type.
    """
    shape = tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape, dtype=input_dtype or model.inputs[0].dtype, name="image")
    x = inputs
    layers = []
    for layer in model.layers[1:]:
        if layer.name == TRAINER:  # a bfloat16 run's model is lower -> trainer: reach inside
            layers += layer.layers[1:]
        elif layer.name != AUGMENTATION_LAYER:
            layers.append(layer)
    for layer in layers[:-1]:
        x = layer(x)
    pool = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else keras.layers.Identity
    embedding = pool(name="embedding")(x)
    probabilities = layers[-1](x)
    return keras.Model(inputs, {"probabilities": probabilities, "embedding": embedding},
                       name=f"{model.name}_served")


def batch_outputs(model: keras.Model, batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probabilities, embeddings) of a two-output model, one batch at a time, over a Keras
    PyDataset or a tf.data stream of batches (labels, if any, are ignored): a caller keeps what
    it needs of each batch, where `model.predict` would hold a whole split's embeddings (5 KB an
    image) and then copy them once more."""
    is_sequence = isinstance(batches, keras.utils.PyDataset)
    items = (batches[i] for i in range(len(batches))) if is_sequence else batches
    for item in items:
        x = item[0] if isinstance(item, tuple) else item
        out = model.predict_on_batch(x)
        probabilities = np.asarray(out["probabilities"], dtype="float32")
        if len(probabilities) != len(x):  # a model built in a strategy's scope answers once per replica
            raise ValueError(f"{len(probabilities)} outputs for a batch of {len(x)}: build the served "
                             "model outside a distribution strategy's scope")
        yield probabilities, np.asarray(out["embedding"], dtype="float32")


@dataclass
class Classifier:
    """A trained model ready to label pixels, whatever runs it (Keras, LiteRT, TF, ONNX)."""

    source: str                          # the .keras file or the export folder
    class_names: list[str]
    image_shape: tuple[int, int, int]
    fit: str                             # how pack made images square (crop, pad, stretch)
    data: str | None                     # the archive it was trained on
    calibration: object | None           # calibration.Calibration, or None (older run)
    outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] = field(repr=False)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) of a batch of raw 0-255 RGB images."""
        return self.outputs(pixels)


def keras_classifier(path: str, model: keras.Model, info: dict, calibration) -> Classifier:
    served = with_embedding(model)

    def outputs(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = served.predict_on_batch(pixels)
        return (np.asarray(out["probabilities"], dtype="float32"),
                np.asarray(out["embedding"], dtype="float32"))

    names = info.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    return Classifier(path, list(names), tuple(model.input_shape[1:]), info.get("fit", "crop"),
                      info.get("data"), calibration, outputs)
