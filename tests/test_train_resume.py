"""Resuming a training run that was interrupted or killed, and refusing one that cannot be resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import (
    assert_one_error_line,
    assert_resumed_as_whole,
    interrupted_after_first_epoch,
    run_cli,
    tree,
)
from toolkit.core.errors import ToolkitError
from toolkit.training.trainer import resume, train

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


@pytest.mark.slow
def test_online_augment_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    """Online augmentation draws on from where the interrupted run was, so a resumed run
    ends where an uninterrupted one would (the random layers' state is checkpointed)."""
    from toolkit.training.trainer import Interrupted

    options = dict(augment_mode="online", backbone="vgg16", epochs=2, patience=10,
                   batch_size=8, weights="none", verbose=0)
    whole = train(tiny, "augment", out=tmp_path / "whole", **options)
    assert whole.metrics["augment_mode"] == "online"
    assert not list((tmp_path / "cache").rglob("*.npy")), "online: nothing cached"
    with interrupted_after_first_epoch(monkeypatch), pytest.raises(Interrupted):
        train(tiny, "augment", out=tmp_path / "cut", **options)
    resumed = resume(tmp_path / "cut", verbose=0)
    assert_resumed_as_whole(resumed, whole, epochs=2)


def test_resume_of_a_damaged_state_is_one_line(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "state.json").write_text('{"epoch": 0, "fini')
    before = tree(tmp_path / "run")
    assert_one_error_line(run_cli("train", "--resume", tmp_path / "run"), "state.json is damaged")
    assert tree(tmp_path / "run") == before


# ---- resume after a kill

def test_killed_run_resumes_to_the_same_result(shapes, tmp_path):
    options = ["--data", shapes, "--strategy", "finetune", "--weights", "none", "--epochs", "4",
               "--patience", "10", "--batch-size", "16", "--cache-dir", tmp_path / "cache"]
    whole = run_cli("train", *options, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "train", *map(str, options),
                                "--out", str(tmp_path / "killed")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 3 and not (tmp_path / "killed" / "model.keras").exists()
    resumed = run_cli("train", "--resume", tmp_path / "killed")
    assert resumed.exit_code == 0, resumed.output
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert a["epochs_run"] == b["epochs_run"] == 4
    assert a["confusion_matrix"] == b["confusion_matrix"]
    ha = (tmp_path / "whole" / "history.csv").read_text().splitlines()
    hb = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    for la, lb in zip(ha[1:], hb[1:]):
        np.testing.assert_allclose([float(v) for v in la.split(",")], [float(v) for v in lb.split(",")],
                                   rtol=1e-4, atol=1e-5)


def test_resume_refuses_a_finished_run(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run")
    with pytest.raises(ToolkitError, match="already finished"):
        resume(tmp_path / "run")
