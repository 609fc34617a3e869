"""toolkit train / evaluate / predict / compare as a user runs them: output, flags, one-line errors."""

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import NAMES, assert_one_error_line, run_cli, tree
from toolkit.cli import training as training_commands
from toolkit.training.config import TrainConfig
from toolkit.training.trainer import train

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


def test_compare_refuses_a_strategy_named_twice(shapes, tmp_path):
    result = run_cli("compare", "--data", shapes, "--strategies", "cnn,cnn", "--out", tmp_path / "c")
    assert_one_error_line(result, "name each strategy once")
    assert tree(tmp_path) == {}


def test_cli_train_evaluate_predict(shapes, tmp_path):
    result = run_cli("train", "--strategy", "extract", "--data", shapes, "--weights", "none",
                    "--epochs", 2, "--batch-size", 32, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and "run folder" in result.output
    result = run_cli("evaluate", tmp_path / "run")
    assert result.exit_code == 0 and "confusion matrix" in result.output
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    x = np.load(shapes)["X_test"]
    for i in range(3):
        Image.fromarray(x[i]).resize((64, 64)).save(pictures / f"p{i}.png")
    (pictures / "broken.jpg").write_bytes(b"not an image")
    result = run_cli("predict", tmp_path / "run", pictures, "--format", "csv", "--no-unknown")
    assert result.exit_code == 0, result.output
    rows = result.output.strip().splitlines()
    assert rows[0] == "image,label,probability,closest,error" and len(rows) == 5
    assert sum(1 for r in rows[1:] if r.split(",")[1] in NAMES) == 3
    assert "not an image" in result.output
    result = run_cli("predict", tmp_path / "run" / "model.keras", pictures / "p0.png", "--format", "json",
                     "--no-unknown")
    assert json.loads(result.output)[0]["label"] in NAMES


def test_cli_compare(shapes, tmp_path):
    result = run_cli("compare", "--data", shapes, "--strategies", "extract,finetune", "--weights",
                    "none", "--epochs", 2, "--batch-size", 32, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert "extract" in result.output and "finetune" in result.output and "accuracy" in result.output
    assert (tmp_path / "cmp" / "comparison.png").exists()
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "extract" in page and "finetune" in page and "extract/report.html" in page
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["strategy"] for r in rows] == ["extract", "finetune"]
    config = json.loads((tmp_path / "cmp" / "finetune" / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["weights"]) == (2, 32, "none")


def test_every_training_option_is_a_train_keyword_and_a_flag_with_the_same_default():
    """TrainConfig is the one table of training options: `train` takes each by name with
    its default, and `toolkit train` and `toolkit compare` have a flag for each."""
    options = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    keywords = inspect.signature(train).parameters
    assert {name: keywords[name].default for name in options if name in keywords} == options
    for command in (training_commands.train, training_commands.compare):
        flags = {p.name: p.default for p in command.params}
        assert set(options) - {"strategy"} <= set(flags), command.name  # train: --strategy is asked
        assert {name: flags[name] for name in options if name not in ("strategy", "trainable")} == {
            name: default for name, default in options.items() if name not in ("strategy", "trainable")}


def test_help_starts_no_stage_and_train_help_no_tensorflow():
    code = ("import sys\nfrom toolkit.cli import cli\ntry:\n    cli(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({'requests', 'PIL', 'numpy', 'keras', 'tensorflow'} & set(sys.modules)))")
    for args in ([], ["train"], ["compare"]):
        done = subprocess.run([sys.executable, "-c", code, *args, "--help"], capture_output=True,
                              text=True, check=True)
        assert done.stdout.splitlines()[-1] == "[]", (args, done.stdout[-300:])


def test_cli_train_needs_a_strategy_and_a_good_archive(tmp_path):
    result = run_cli("train", "--data", tmp_path / "none.npz", "--strategy", "cnn")
    assert result.exit_code == 1
    assert_one_error_line(result, "does not exist")
    result = run_cli("train", "--data", tmp_path / "none.npz")
    assert_one_error_line(result, "choose a --strategy: cnn, extract, finetune, augment")
