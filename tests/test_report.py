"""report.html and MODEL_CARD.md of a real tiny run, and the page in a real Chromium."""

import json
import re

import pytest

from browser import browser, console_errors, requested_urls  # noqa: F401 (the fixture)
from conftest import make_class_folders
from toolkit.core.errors import ToolkitError
from toolkit.core.images import Checks
from toolkit.data.packer import pack
from toolkit.reports.metrics import EVALUATION_FIELDS, RunMetrics, read_metrics, write_metrics
from toolkit.reports.report_html import write_comparison_page
from toolkit.training.trainer import train

CLASSES = ("hedgehog", "hamster", "poodle")


@pytest.fixture(scope="module")
def crawled_run(tmp_path_factory):
    """Images with the crawl's manifests beside them, packed at 32 px, a CNN trained 2 epochs."""
    root = tmp_path_factory.mktemp("report")
    source = make_class_folders(root / "datasets", {c: range(i * 40, i * 40 + 16)
                                                    for i, c in enumerate(CLASSES)})
    for c in CLASSES:
        lines = [json.dumps({"file": p.name, "url": f"https://img{n % 2}.example.org/{p.name}",
                             "engine": "bing", "query": f"{c} photo", "sha256": "0" * 64,
                             "time": f"2026-11-0{1 + n % 3}T10:00:00+00:00"})
                 for n, p in enumerate(sorted((source / c).iterdir()))]
        (source / f"{c}.manifest.jsonl").write_text("\n".join(lines) + "\n")
    data = root / "animal.npz"
    pack(source, data, per_class=16, size=32, checks=Checks(min_side=32))
    run = train(data, "cnn", out=root / "run", epochs=2, weights="none", batch_size=16,
                verbose=0, cache_dir=str(root / "cache"))
    return run


def test_report_and_model_card_say_what_the_run_did(crawled_run):
    page = (crawled_run.folder / "report.html").read_text()
    m = crawled_run.metrics
    assert f"{m['accuracy']:.3f}" in page and f"{m['macro_f1']:.3f}" in page
    assert page.index("accuracy") < page.index("Learning curves") < page.index("Confusion matrix")
    for text in ("Top losses", "Per class", "Settings", "Pack settings", "Crawl", "bing 16",
                 "img0.example.org", "hedgehog photo", "2026-11-01 to 2026-11-03"):
        assert text in page, text
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing to fetch
    assert page.count("data:image/jpeg;base64,") >= m["test_images"]  # every test image, inlined
    card = (crawled_run.folder / "MODEL_CARD.md").read_text()
    for text in ("## What it does", "`hedgehog`", "## Data", "crawled with bing",
                 f"{m['test_images']} test images", "Temperature", "## Known confusions", "## Not for"):
        assert text in card, text


@pytest.mark.slow
def test_report_page_in_a_real_browser(crawled_run, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    page = crawled_run.folder / "report.html"
    browser.get(page.as_uri())
    assert console_errors(browser) == []
    assert set(requested_urls(browser)) <= {page.as_uri()}
    matrix = crawled_run.metrics["confusion_matrix"]
    i, j = next((i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if v)
    panel = browser.find_element(By.ID, f"cell-{i}-{j}")
    assert not panel.is_displayed()
    browser.find_element(By.CSS_SELECTOR, f"[data-cell='{i}-{j}']").click()
    assert panel.is_displayed()
    shown = [img for img in panel.find_elements(By.TAG_NAME, "img") if img.is_displayed()]
    assert len(shown) == matrix[i][j]
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in shown)
    assert console_errors(browser) == [] and set(requested_urls(browser)) <= {page.as_uri()}
    shot = tmp_path / "run-report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_compare_writes_a_page_too(crawled_run, tmp_path):
    m = crawled_run.metrics
    rows = [{"strategy": "cnn", "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
             "epochs": m["epochs_run"], "seconds": 1.0, "run": str(crawled_run.folder)}]
    page = write_comparison_page(tmp_path, rows).read_text()
    assert "cnn" in page and f"{m['accuracy']:.3f}" in page and "report.html" in page


def test_metrics_json_is_written_and_read_through_its_one_schema(crawled_run, tmp_path):
    metrics = read_metrics(crawled_run.folder)
    assert set(metrics) == RunMetrics.__required_keys__  # every field the readers name, no other
    with pytest.raises(ValueError, match="would lack calibration"):  # a writer that drops one
        write_metrics(tmp_path, {k: v for k, v in metrics.items() if k != "calibration"})
    assert not (tmp_path / "metrics.json").exists()
    write_metrics(tmp_path, {k: metrics[k] for k in EVALUATION_FIELDS})  # `toolkit evaluate --out`
    with pytest.raises(ToolkitError, match="not a training run's metrics .*strategy"):
        read_metrics(tmp_path)
