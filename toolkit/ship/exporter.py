"""Export a run's model for phones and servers, checked with the runtime that will run it.

`RUN/export/` gets the model (LiteRT `model.tflite`, a TensorFlow `saved_model/`, or
`model.onnx`), `labels.txt` (one class per line, in label order), the calibration files,
and `export.json`, which says what goes in and out and how well the export agrees with
the Keras model on the run's test set. The exported model takes raw 0-255 RGB pixels as
uint8 (the backbone's preprocessing is inside; the augmentation layers are not) and gives
`probabilities` and `embedding` (what the unknown detector compares).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..core.errors import OptionError, ToolkitError, first_line
from ..core.files import UMASK, write_json, write_text
from ..core.text import timestamp
from ..data.streams import pixel_batches
from .export_folder import FORMATS, INFO_FILE, RUNTIMES, load_runner, require_runtime

QUANTIZATIONS = ("none", "float16", "int8")
#: largest test-accuracy drift from the Keras model that an export may show
TOLERANCE = {"none": 0.01, "float16": 0.01, "int8": 0.03}
REPRESENTATIVE_IMAGES = 200  # training images that calibrate int8 (seeded sample)
EXPORT_FOLDER = "export"
BATCH = 32


@dataclass
class Exported:
    folder: Path
    info: dict

    def summary(self) -> str:
        p = self.info["parity"]
        return (f"{self.info['format']} ({self.info['quantization']}) in {self.folder}: "
                f"{self.info['size_bytes'] / 2**20:.1f} MiB; test accuracy {p['exported_accuracy']:.4f} "
                f"({p['runtime']}) against Keras {p['keras_accuracy']:.4f}, largest probability "
                f"difference {p['max_probability_difference']:.4f}")


def export(run: str | os.PathLike, format: str = "litert", quantize: str = "none", *,
           data: str | os.PathLike | None = None, seed: int = 42,
           progress: bool = False) -> Exported:
    """Export RUN's model into RUN/export/ and check it on the test set with its runtime.

    Nothing is written unless the export passes the check; an earlier export is replaced
    only then.
    """
    from .. import models
    from ..data.streams import load_data
    from ..models.serving import with_embedding
    from ..training import precision
    from ..training.calibration import Calibration

    if format not in FORMATS:
        raise OptionError("format", format, f"choose from {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise OptionError("quantize", quantize, f"choose from {', '.join(QUANTIZATIONS)}")
    if quantize != "none" and format != "litert":
        raise OptionError("quantize", quantize, f"is for the litert format; {format} exports "
                          "float32 (use none)")
    folder = Path(run)
    if not folder.is_dir():
        raise ToolkitError(f"{run} is not a run folder; give the folder `toolkit train` wrote")
    if not (folder / "model.keras").exists():
        raise ToolkitError(f"{run} holds no model.keras; is the run finished?")
    model, info = models.load_model(folder / "model.keras")
    calibration = Calibration.load(folder)
    archive_path = data or info.get("data")
    if not archive_path or not Path(archive_path).exists():
        need = ("int8 is calibrated on its training images" if quantize == "int8" else
                "the export is checked on its test set")
        raise ToolkitError(f"the run's archive {archive_path or '(unknown)'} is missing and "
                           f"{need}; pass --data ARCHIVE (the archive the run trained on)")
    archive = load_data(archive_path)  # an .npz, or a dataset folder read by ordered passes
    names = info.get("class_names") or archive.class_names
    if list(names) != archive.class_names or tuple(model.input_shape[1:]) != archive.image_shape:
        raise ToolkitError(f"{archive_path} is not the archive {run} trained on (classes or "
                           "image size differ); pass --data with the right one")
    runtime_name = RUNTIMES[format]
    require_runtime(runtime_name)

    def test_probabilities(keras_model) -> np.ndarray:
        return np.concatenate([np.asarray(keras_model.predict_on_batch(x)["probabilities"])
                               for x in _uint8_batches(archive.X_test)])

    # phones' and ONNX's runtimes compute no bfloat16 or float16: a mixed-precision run is
    # exported in float32, and the export is held against that float32 Keras model
    float32_model = precision.in_float32(model)
    served = with_embedding(float32_model, input_dtype="uint8")
    keras_probabilities = test_probabilities(served)
    trained_precision = None
    if float32_model is not model:  # how far float32 is from the mixed-precision model trained
        as_trained = test_probabilities(with_embedding(model, input_dtype="uint8"))
        trained_precision = {
            "trained": "mixed", "exported": "float32",
            "same_label": round(float(np.mean(as_trained.argmax(1) == keras_probabilities.argmax(1))), 4),
            "max_probability_difference": round(float(np.abs(as_trained - keras_probabilities).max()), 5)}
    with _exclusive(folder):
        return _export_checked(folder, run, served, keras_probabilities, trained_precision, model,
                               calibration, archive, archive_path, info, format, quantize, seed,
                               runtime_name, progress)


def _export_checked(folder: Path, run, served, keras_probabilities: np.ndarray,
                    trained_precision: dict | None, model, calibration, archive, archive_path,
                    info: dict, fmt: str, quantize: str, seed: int, runtime_name: str,
                    progress: bool) -> Exported:
    """Convert, check on the test set in the deploy runtime, then put the export in place."""
    _recover(folder)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        work.chmod(0o777 & ~UMASK)  # mkdtemp makes it private; an export is meant to be shared
        target = work / FORMATS[fmt]
        _convert(served, target, fmt, quantize, archive.X_train, seed)
        runner = load_runner(target, fmt)
        exported = np.concatenate([
            runner(np.asarray(x))[0]
            for x in tqdm(_uint8_batches(archive.X_test), desc=f"checking {fmt}",
                          unit="batch", disable=not progress)])
        parity = _parity(keras_probabilities, exported, archive.y_test, quantize,
                         f"{runtime_name} {importlib.metadata.version(runtime_name)}")
        if parity["drift"] > parity["tolerance"]:
            raise ToolkitError(
                f"the {fmt} export ({quantize}) has test accuracy {parity['exported_accuracy']:.4f} "
                f"but the Keras model {parity['keras_accuracy']:.4f}: a drift of {parity['drift']:.4f} "
                f"is beyond {parity['tolerance']}; nothing was exported ("
                + ("try --quantize float16)" if quantize == "int8" else "try another --format)"))
        write_text(work / "labels.txt", "".join(f"{n}\n" for n in archive.class_names))
        if calibration is not None:
            calibration.save(work)
        details = {
            "format": fmt,
            "quantization": quantize,
            "model": FORMATS[fmt],
            "labels": "labels.txt",
            "input": {"name": "image", "shape": [None, *archive.image_shape], "dtype": "uint8",
                      "range": "raw 0-255 RGB", "fit": info.get("fit", "crop"),
                      "preprocessing_included": True,
                      "preprocessing": _preprocessing(model), "augmentation_included": False},
            "outputs": {"probabilities": [None, len(archive.class_names)],
                        "embedding": [None, int(served.output["embedding"].shape[-1])]},
            "class_names": archive.class_names,
            "calibration": None if calibration is None else calibration.settings(),
            "int8_representative": ({"images": min(REPRESENTATIVE_IMAGES, len(archive.y_train)),
                                     "from": "X_train", "seed": seed} if quantize == "int8" else None),
            "parity": parity,
            "trained_precision": trained_precision,
            "size_bytes": _size(target),
            "run": str(folder.resolve()),
            "data": str(Path(archive_path).resolve()),
            "strategy": info.get("strategy"),
            "backbone": info.get("backbone"),
            "toolkit": __version__,
            "tensorflow": importlib.metadata.version("tensorflow"),
            "keras": importlib.metadata.version("keras"),
            "created": timestamp(),
        }
        write_json(work / INFO_FILE, details)
        _replace(work, folder / EXPORT_FOLDER)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Exported(folder / EXPORT_FOLDER, details)


def _convert(served, target: Path, fmt: str, quantize: str, train_images, seed: int) -> None:
    """Keras' own model.export, with the converter settings of the quantization."""
    import tensorflow as tf

    options: dict = {}
    if quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_types": [tf.float16]}}
    elif quantize == "int8":
        rows = np.sort(np.random.default_rng(seed).permutation(len(train_images))
                       [:REPRESENTATIVE_IMAGES])

        def representative():
            for image in pixel_batches(train_images, 1, rows):
                yield [image]
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": representative}
    keras_format = {"saved_model": "tf_saved_model"}.get(fmt, fmt)
    try:
        with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object
            warnings.simplefilter("ignore", FutureWarning)
            served.export(str(target), format=keras_format, verbose=False, **options)
    except Exception as e:  # noqa: BLE001 (the converters raise many types)
        raise ToolkitError(f"Keras could not export the model as {fmt} ({first_line(e, 200)})") from None


def _parity(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray, quantize: str,
            runtime: str) -> dict:
    keras_accuracy = float(np.mean(reference.argmax(1) == labels))
    exported_accuracy = float(np.mean(exported.argmax(1) == labels))
    return {"test_images": len(labels), "runtime": runtime,
            "keras_accuracy": round(keras_accuracy, 4),
            "exported_accuracy": round(exported_accuracy, 4),
            "drift": round(abs(keras_accuracy - exported_accuracy), 4),
            "tolerance": TOLERANCE[quantize],
            "same_label": round(float(np.mean(reference.argmax(1) == exported.argmax(1))), 4),
            "max_probability_difference": round(float(np.abs(reference - exported).max()), 5)}


def _uint8_batches(images) -> Iterator[np.ndarray]:
    return pixel_batches(images, BATCH)


def _preprocessing(model) -> str:
    """The mode of the model's preprocessing layer, wherever it is nested."""
    import keras

    for layer in model.layers:
        if layer.name == "preprocess":
            return layer.mode
        if isinstance(layer, keras.Model) and (mode := _preprocessing(layer)) != "none":
            return mode
    return "none"


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One export of RUN at a time (a lock on the folder itself: nothing is written for it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolkitError(f"another export of {folder} is running; wait for it") from None
        yield
    finally:
        os.close(fd)


def _recover(folder: Path) -> None:
    """Undo what a killed export left in RUN: its scratch folders, and an earlier export
    moved aside but not yet replaced (put back)."""
    current = folder / EXPORT_FOLDER
    for scratch in sorted(folder.glob(".export-*")):
        moved = scratch / EXPORT_FOLDER
        if scratch.name.startswith(".export-old-") and moved.is_dir() and not current.exists():
            os.replace(moved, current)
        shutil.rmtree(scratch, ignore_errors=True)


def _replace(new: Path, old: Path) -> None:
    """Put `new` where `old` is; an earlier export disappears only once `new` is whole."""
    if old.exists():
        trash = Path(tempfile.mkdtemp(prefix=".export-old-", dir=old.parent))
        os.replace(old, trash / "export")
        os.replace(new, old)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, old)


def _size(target: Path) -> int:
    if target.is_file():
        return target.stat().st_size
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
