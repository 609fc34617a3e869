"""An export folder as it is read back: which file each format keeps its model in, and how each
loads in its own runtime without trusting the folder it came from."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from ..core.errors import ToolkitError, first_line

#: format -> the model's file (or folder) in the export folder
FORMATS = {"litert": "model.tflite", "saved_model": "saved_model", "onnx": "model.onnx"}
RUNTIMES = {"litert": "ai-edge-litert", "saved_model": "tensorflow", "onnx": "onnxruntime"}
INFO_FILE = "export.json"


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def load_export(path: str | os.PathLike, *, trust_saved_model: bool = False):
    """An export folder as a :class:`serving.Classifier` (for predict and evaluate).

    An export folder may come from anyone (a tarball, a repository, a bucket), so only data is
    loaded from it unasked: the model file's name is fixed by its format (whatever export.json
    says), and it must lie inside the folder. A LiteRT or ONNX model is data that its runtime
    interprets (an ONNX model's external weights must lie inside the folder too); a SavedModel
    is a TensorFlow graph, which is code (TensorFlow's security guide): it loads only with
    `trust_saved_model`.
    """
    import json

    from ..models.serving import Classifier
    from ..training.calibration import Calibration

    folder = Path(path)
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        names = info["class_names"]  # labels.txt is for people and other tools
        fmt = info["format"]
        shape = tuple(info["input"]["shape"][1:])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToolkitError(f"{folder} is not a complete export ({e}); run `toolkit export` "
                           "again") from None
    if fmt not in FORMATS:
        raise ToolkitError(f"{folder} holds a {fmt} export, which this toolkit cannot run")
    if info.get("model", FORMATS[fmt]) != FORMATS[fmt]:
        raise ToolkitError(f"{folder / INFO_FILE} names the model {info.get('model')!r}, but a {fmt} "
                           f"export's model is always {FORMATS[fmt]!r}; run `toolkit export` again")
    target = inside(folder, FORMATS[fmt])
    if fmt == "saved_model" and not trust_saved_model:
        raise ToolkitError(f"{folder} is a SavedModel export: loading one runs the TensorFlow graph "
                           "it holds, which is code. If you trust whoever made it (your own exports "
                           "included), pass --trust-saved-model; otherwise use its LiteRT or ONNX "
                           "export, which load as data")
    if fmt == "onnx":
        _check_external_data(folder, target)
    require_runtime(RUNTIMES[fmt])
    runner = load_runner(target, fmt)
    return Classifier(str(folder), names, shape, info["input"].get("fit", "crop"),
                      info.get("data"), Calibration.load(folder), runner)


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, resolved (links followed), refused unless it stays inside `folder`."""
    root = folder.resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ToolkitError(f"{folder / name} leads outside {folder} (a link or a path with '..'); "
                           "an export must hold its own files: export it again")
    return target


def _check_external_data(folder: Path, model: Path) -> None:
    """Every tensor an ONNX model keeps in an external file names a file inside `folder`."""
    try:
        import onnx
    except ImportError:  # onnxruntime without onnx: it refuses paths outside the model's folder
        return
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:  # noqa: BLE001 (protobuf raises its own types for a damaged file)
        raise ToolkitError(f"{model} cannot be read as ONNX ({first_line(e, 200)}); run "
                           "`toolkit export` again") from None
    for tensor in _onnx_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            inside(folder, location)


def _onnx_tensors(graph):
    """Every tensor of an ONNX graph: initializers and the tensors in node attributes,
    subgraphs (loops, branches) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _onnx_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _onnx_tensors(subgraph)


def load_runner(target: Path, fmt: str):
    """A function from a uint8 batch to (probabilities, embeddings), in the deploy runtime."""
    try:
        if fmt == "litert":
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=str(target))
            signature = interpreter.get_signature_runner()

            def run(x):
                out = signature(image=np.ascontiguousarray(x, dtype="uint8"))
                return out["probabilities"], out["embedding"]
        elif fmt == "saved_model":
            import tensorflow as tf

            loaded = tf.saved_model.load(str(target))

            def run(x):
                out = loaded.serve(np.asarray(x, dtype="uint8"))
                return np.asarray(out["probabilities"]), np.asarray(out["embedding"])
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            order = [o.name for o in session.get_outputs()]

            def run(x):
                out = dict(zip(order, session.run(None, {"image": np.asarray(x, dtype="uint8")})))
                return out["probabilities"], out["embedding"]
    except ToolkitError:
        raise
    except Exception as e:  # noqa: BLE001 (each runtime raises its own types for a damaged file)
        raise ToolkitError(f"{target} cannot be loaded by {RUNTIMES[fmt]} "
                           f"({first_line(e, 200)}); run `toolkit export` again") from None

    def outputs(x):
        p, e = run(x)
        return np.asarray(p, dtype="float32"), np.asarray(e, dtype="float32")
    return outputs


def require_runtime(package: str) -> None:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise ToolkitError(f"this format runs with {package}, which is not installed; "
                           f"pip install {package}") from None


