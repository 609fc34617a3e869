"""Issue 17: an export folder someone else shared loads only its own model file, and runs no
code unless trusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.core.errors import ToolkitError


def export_folder(tmp_path, fmt: str, model: str) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "export.json").write_text(json.dumps({
        "format": fmt, "model": model, "class_names": ["a", "b"],
        "input": {"shape": [None, 32, 32, 3], "fit": "crop"}}))
    return folder


@pytest.mark.parametrize("model", ["../../elsewhere/model.tflite", "/tmp/model.tflite", "other.tflite"])
def test_an_export_loads_its_model_only_from_the_name_its_format_fixes(tmp_path, model):
    from toolkit.ship.export_folder import load_export

    with pytest.raises(ToolkitError, match="model is always 'model.tflite'"):
        load_export(export_folder(tmp_path, "litert", model))


def test_an_export_model_that_is_a_link_out_of_its_folder_is_refused(tmp_path):
    from toolkit.ship.export_folder import load_export

    outside = tmp_path / "someone-elses.tflite"
    outside.write_bytes(b"TFL3")
    folder = export_folder(tmp_path, "litert", "model.tflite")
    (folder / "model.tflite").symlink_to(outside)
    with pytest.raises(ToolkitError, match="leads outside"):
        load_export(folder)


def test_a_saved_model_export_loads_only_when_trusted(tmp_path):
    from toolkit.ship.export_folder import load_export
    from toolkit.ship.inference import predict

    folder = export_folder(tmp_path, "saved_model", "saved_model")
    (folder / "saved_model").mkdir()
    for load in (lambda: load_export(folder), lambda: predict(folder, [tmp_path / "x.png"])):
        with pytest.raises(ToolkitError, match=r"which is code.*your own exports included.*"
                                               r"--trust-saved-model"):
            load()
    # trusted, it goes on to TensorFlow, which finds no graph in the empty folder
    with pytest.raises(ToolkitError, match="cannot be loaded by tensorflow"):
        load_export(folder, trust_saved_model=True)


def test_onnx_external_data_must_lie_inside_the_export_folder(tmp_path):
    onnx = pytest.importorskip("onnx")  # tf2onnx, a dependency, brings it
    from onnx import TensorProto, helper

    from toolkit.ship.export_folder import load_export

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype="float32").tobytes())
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[weights])
    folder = export_folder(tmp_path, "onnx", "model.onnx")
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=False)
    with pytest.raises(ToolkitError, match=r"secret\.bin leads outside"):
        load_export(folder)


def test_the_command_line_asks_for_trust_before_loading_a_saved_model(tmp_path):
    from helpers import assert_one_error_line, run_cli

    folder = export_folder(tmp_path, "saved_model", "saved_model")
    (folder / "saved_model").mkdir()
    (tmp_path / "x.png").write_bytes(b"")
    for command in (["predict", folder, tmp_path / "x.png"], ["evaluate", folder]):
        assert_one_error_line(run_cli(*command), "pass --trust-saved-model")
        assert_one_error_line(run_cli(*command, "--trust-saved-model"), "cannot be loaded by tensorflow")
