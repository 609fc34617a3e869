"""Every script in scripts/ runs, on tiny inputs: the benchmarks behind the README's numbers
must not rot between the times someone measures with them.

Each runs as a user runs it (`python scripts/NAME.py ...`, in its own process, from a scratch
folder), must exit 0 and print the machine line (cores, CPU model and its speed flags) that
every number in the README is quoted with. Sizes are the smallest that still take each code
path; the numbers themselves mean nothing here. The runs start with the session, beside the
tests before this module (start_with_the_session, called from conftest.py).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from browser import CHROMIUM_NAMES, DRIVER_NAMES, _first_on_path, _missing
from conftest import distinct_image, make_class_folders
from helpers import write_archive

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
from _bench import machine  # noqa: E402


def run_script(name: str, *args, cwd: Path, timeout: int = 240) -> str:
    """`python scripts/NAME ARGS...` from `cwd`; its output, once it exited 0."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TOOLKIT_CACHE_DIR": str(cwd / f"cache-{name}"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def assert_benchmark_output(output: str, *headers: str) -> None:
    assert machine() in output, "the machine line is missing"
    for header in headers:
        assert header in output, f"{header!r} is missing from:\n{output[-3000:]}"


#: the runs each test checks
RUNS_OF = {"test_bench_pack": ["bench_pack"], "test_bench_crawl": ["bench_crawl"],
           "test_bench_unknown_then_export_then_the_report_screenshot": ["unknown_export_screenshot"],
           "test_bench_review": ["bench_review", "bench_review_intruders"],
           "test_accuracy_table": ["accuracy_table", "accuracy_table_probe"],
           "test_bench_growth": ["bench_growth"], "test_bench_precision": ["bench_precision"],
           "test_bench_train": ["bench_train"], "test_bench_stream": ["bench_stream"],
           "test_bench_shards": ["bench_shards"], "test_bench_shards_accuracy": ["bench_shards_accuracy"],
           "test_bench_train_growth": ["bench_train_growth"], "test_bench_versions": ["bench_versions"]}
#: run last (conftest.py): they wait for their runs
WAITING_TESTS = tuple(RUNS_OF)

#: what start_with_the_session started: the scratch folder and {run: its future}
STARTED: dict = {}


def inputs(scratch: Path) -> tuple[Path, Path, Path]:
    """(archive, flowers, offtopic): 30 images of the toy shapes at 32 px (24 train, 6 test);
    class folders named as ../shared/data/flowers' (8 distinct images each); 3 photos of no
    class."""
    archive = write_archive(scratch / "tiny.npz", n_per_class=10)
    flowers = make_class_folders(scratch / "flowers", {"rose": range(8), "sunflower": range(100, 108),
                                                      "tulip": range(200, 208)})
    offtopic = scratch / "offtopic"
    offtopic.mkdir()
    for seed in range(900, 903):
        (offtopic / f"object{seed}.jpg").write_bytes(distinct_image(seed))
    return archive, flowers, offtopic


def jobs(scratch: Path) -> dict:
    """{run: a function that runs it and returns its output}."""
    archive, flowers, offtopic = inputs(scratch)
    review = ["--flowers", flowers, "--offtopic", offtopic, "--weights", "none", "--size", 32]
    unknown = scratch / "unknown"

    def unknown_export_screenshot() -> dict[str, str]:
        """bench_unknown trains the run that bench_export exports and the screenshot shows."""
        done = {"bench_unknown": run_script(
            "bench_unknown.py", "--archive", archive, "--run", unknown, "--weights", "none",
            "--offtopic", offtopic, "--epochs", 1, cwd=scratch)}
        done["bench_export"] = run_script("bench_export.py", "--run", unknown, "--cases", "onnx:none",
                                          cwd=scratch)
        if _first_on_path(CHROMIUM_NAMES) and _first_on_path(DRIVER_NAMES):
            done["screenshot"] = run_script("screenshot_report.py", unknown, scratch / "report.png",
                                            cwd=scratch)
        return done

    return {
        "bench_pack": lambda: run_script("bench_pack.py", flowers, "--size", 32, "--per-class", 4,
                                         "--repeat", 1, cwd=scratch),
        "bench_crawl": lambda: run_script("bench_crawl.py", "--classes", 1, "--per-class", 4,
                                          "--latency", 0.01, "--threads", 2, cwd=scratch),
        "unknown_export_screenshot": unknown_export_screenshot,
        # --evidence-sizes at review's own --size: the other crop size's embeddings come from the cache
        "bench_review": lambda: run_script("bench_review.py", *review, "--mislabeled", 1, "--variants",
                                           "--evidence", "--evidence-sizes", 32, cwd=scratch),
        "bench_review_intruders": lambda: run_script(
            "bench_review.py", *review, "--intruders", "--intruder-counts", 2, "--reference-size", 3,
            cwd=scratch),
        "accuracy_table": lambda: run_script(
            "accuracy_table.py", "--archive", archive, "--strategies", "cnn", "--weights", "none",
            "--out", scratch / "compare", "--extra", "--epochs", 1, "--batch-size", 16, cwd=scratch),
        "accuracy_table_probe": lambda: run_script("accuracy_table.py", "--archive", archive,
                                                   "--weights", "none", "--probe", cwd=scratch),
        "bench_growth": lambda: run_script("bench_growth.py", "--base", 4, "--scales", 1, "--size", 32,
                                           "--epochs", 1, cwd=scratch),
        "bench_precision": lambda: run_script("bench_precision.py", archive, "--strategy", "cnn",
                                              "--epochs", 1, "--precisions", "float32",
                                              "--per-class", 8, cwd=scratch),
        "bench_stream": lambda: run_script("bench_stream.py", "--smoke", "--strategies", "extract",
                                           "--folder", scratch / "stream", cwd=scratch),
        # beam1 only: test_shards.py packs with two worker processes
        "bench_shards": lambda: run_script("bench_shards.py", "--smoke", "--sides", "npz,beam1",
                                           "--cache", scratch / "photos", cwd=scratch),
        "bench_shards_accuracy": lambda: run_script("bench_shards_accuracy.py", "--smoke", cwd=scratch),
        "bench_train_growth": lambda: run_script("bench_train_growth.py", "--smoke", "--strategies", "cnn",
                                                 "--cache", scratch / "photos-growth", cwd=scratch),
        "bench_versions": lambda: run_script("bench_versions.py", "--smoke", "--before", "HEAD",
                                             "--source", flowers, cwd=scratch),
        "bench_train": lambda: run_script("bench_train.py", archive, "--strategies", "extract",
                                          "--weights", "none", "--epochs", 1, "--recipe-epochs", 1,
                                          cwd=scratch),
    }


def start_with_the_session(items: list, tmp_path_factory, pool: ThreadPoolExecutor) -> None:
    """Submit to `pool` the smoke runs that `items` (this module's selected tests) check.
    conftest.py calls it as the session starts: the runs (minutes of subprocesses, most of
    it TensorFlow starting) are then done, or nearly, when their tests come. Each test waits
    for its own."""
    scratch = tmp_path_factory.mktemp("scripts")
    todo = jobs(scratch)
    wanted = [run for test in dict.fromkeys(item.originalname for item in items)
              for run in RUNS_OF.get(test, [])]
    STARTED.update(scratch=scratch, futures={name: pool.submit(todo[name]) for name in wanted})


@pytest.fixture(scope="module")
def runs() -> dict:
    """{run: its future}, started with the session by conftest.py."""
    assert STARTED, "conftest.py's started_with_the_session starts the runs"
    return STARTED["futures"]


@pytest.fixture(scope="module")
def scratch(runs) -> Path:
    return STARTED["scratch"]


def test_bench_pack(runs):
    assert_benchmark_output(runs["bench_pack"].result(), "plain Pillow loop", "toolkit pack")


def test_bench_crawl(runs):
    assert_benchmark_output(runs["bench_crawl"].result(), "| threads | latency (ms) |", "crawling / bound")


@pytest.mark.slow
def test_bench_unknown_then_export_then_the_report_screenshot(runs, scratch):
    done = runs["unknown_export_screenshot"].result()
    assert_benchmark_output(done["bench_unknown"], "off-topic photos answered unknown", "of 3 |")
    assert_benchmark_output(done["bench_export"], "| format | quantize |", "| onnx | none |")
    if "screenshot" not in done:
        _missing("no system chromium/chromedriver for scripts/screenshot_report.py")
    assert (scratch / "report.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_bench_review(runs):
    assert_benchmark_output(runs["bench_review"].result(), "| noise | images |", "| current rules |",
                            "| 32 px centre crop |")
    assert_benchmark_output(runs["bench_review_intruders"].result(), "| sunflowers filed as roses |",
                            "| 2 | 3 sunflowers |")


@pytest.mark.slow
def test_accuracy_table(runs):
    assert_benchmark_output(runs["accuracy_table"].result(), "| strategy | test accuracy |", "| cnn |")
    assert_benchmark_output(runs["accuracy_table_probe"].result(), "| C | training images | test accuracy |")


@pytest.mark.slow
def test_bench_growth(runs):
    assert_benchmark_output(runs["bench_growth"].result(), "| scale | images |", "| 1x | 12 |")


@pytest.mark.slow
def test_bench_precision(runs):
    assert_benchmark_output(runs["bench_precision"].result(), "bfloat16 flags:", "| float32 (float32) |")


@pytest.mark.slow
def test_bench_train(runs):
    assert_benchmark_output(runs["bench_train"].result(), "| strategy | recipe s/epoch |", "| extract |")


@pytest.mark.slow
def test_bench_stream(runs):
    assert_benchmark_output(runs["bench_stream"].result(), "| strategy | data | train images/s |",
                            "| extract | npz |", "| extract | shards |")


@pytest.mark.slow
def test_bench_shards(runs):
    assert_benchmark_output(runs["bench_shards"].result(), "| scale | images | pack |", "| 1x | 60 | npz |",
                            "| 1x | 60 | beam1 |")


@pytest.mark.slow
def test_bench_shards_accuracy(runs):
    assert_benchmark_output(runs["bench_shards_accuracy"].result(), "| seed | pixels | test accuracy |",
                            "trained and tested on JPEG minus raw")


@pytest.mark.slow
def test_bench_train_growth(runs):
    assert_benchmark_output(runs["bench_train_growth"].result(), "| scale | images | strategy | data |",
                            "| 1x | 60 | cnn | shards |")


@pytest.mark.slow
def test_bench_versions(runs):
    assert_benchmark_output(runs["bench_versions"].result(), "| job | before (HEAD) s | after s |",
                            "| pack |", "| crawl |")


def test_scripts_use_only_the_public_api():
    """A benchmark measures what a user calls: no private name of the toolkit (`_x`)."""
    private = []
    for path in sorted(SCRIPTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        from_toolkit = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "toolkit":
                from_toolkit |= {a.asname or a.name for a in node.names}
                private += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                            if a.name.startswith("_")]
            elif isinstance(node, ast.Import):
                from_toolkit |= {a.asname or a.name.split(".")[0] for a in node.names
                                 if a.name.split(".")[0] == "toolkit"}
        private += [f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in from_toolkit and node.attr.startswith("_")
                    and not node.attr.startswith("__")]
    assert not private, private
