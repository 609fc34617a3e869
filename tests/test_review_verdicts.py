"""toolkit review's verdicts: what it judges and why, with a reference folder, its page and its errors."""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import FLOWERS, MOBILENET_WEIGHTS, SHARED, distinct_image, make_class_folders
from helpers import REVIEW_QUICK, REVIEW_QUICK_FLAGS, assert_one_error_line, run_cli, tree
from toolkit.core.sources import find_usable
from toolkit.curate import reviewer, rules, verdicts
from toolkit.data.packer import pack
from toolkit.models import embedder


@pytest.mark.slow
def test_review_judges_what_pack_would_pack_and_a_second_review_computes_nothing(folder, monkeypatch):
    (folder / "cat" / "junk.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "dog" / "copy.jpg").write_bytes(distinct_image(100))  # a duplicate
    result = reviewer.review(folder, **REVIEW_QUICK)
    entries = json.loads((folder / "review.json").read_text())["images"]
    report = pack(folder, folder.parent / "a.npz", per_class=100, size=32, allow_fewer=True)
    usable = {f.name for f in report.files if f.status in ("packed", "surplus")}
    assert {e["file"] for e in entries} == usable and len(entries) == 24
    assert {"file", "label", "suspect", "reason", "score", "suggested"} <= set(entries[0])
    assert {e["reason"] for e in entries} <= {"fine", "mislabeled", "off-topic", "ambiguous"}
    page = (folder / "review.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 24 and "http" not in page.replace(
        "http-equiv", "")
    assert "total" in result.table() and len(result.verdicts) == 24

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although every embedding is cached")

    monkeypatch.setattr(embedder, "pooled_backbone", no_backbone)
    again = reviewer.review(folder, **REVIEW_QUICK)
    assert [v.reason for v in again.verdicts] == [v.reason for v in result.verdicts]


@pytest.mark.slow
@pytest.mark.skipif(not (FLOWERS.is_dir() and MOBILENET_WEIGHTS.exists()),
                    reason="needs ../shared (real flower photos, object photos, MobileNetV2 weights)")
def test_review_finds_real_off_topic_and_moved_photos_among_real_flowers(tmp_path, monkeypatch):
    """Real photos and the real weights, at review's default size: the object photos are
    flagged, the moved sunflowers are called mislabeled with their class suggested, and
    few of the rest are flagged."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "crawl"
    truth = {}
    for c in ("rose", "sunflower", "tulip"):
        (source / c).mkdir(parents=True)
        for path in sorted((FLOWERS / c).glob("*.jpg"))[:40]:
            into = "rose" if c == "sunflower" and len(truth) % 20 == 0 else c  # 2 moved
            shutil.copyfile(path, source / into / path.name)
            truth[f"{into}/{path.name}"] = "moved" if into != c else "clean"
    for i, path in enumerate(sorted((SHARED / "data" / "offtopic").glob("*.jpg"))[:6]):
        into = ("rose", "sunflower", "tulip")[i % 3]
        shutil.copyfile(path, source / into / path.name)
        truth[f"{into}/{path.name}"] = "off-topic"
    result = reviewer.review(source, weights=str(MOBILENET_WEIGHTS))
    verdicts = {v.file: v for v in result.verdicts}
    moved = [v for f, v in verdicts.items() if truth[f] == "moved"]
    assert len(moved) == 2 and all(v.reason == "mislabeled" and v.suggested == "sunflower"
                                   for v in moved), moved
    assert all(verdicts[f].suspect for f, kind in truth.items() if kind == "off-topic")
    clean = [v for f, v in verdicts.items() if truth[f] == "clean"]
    assert sum(v.suspect for v in clean) <= 0.1 * len(clean)


@pytest.mark.slow
@pytest.mark.skipif(not (FLOWERS.is_dir() and MOBILENET_WEIGHTS.exists()),
                    reason="needs ../shared (real flower photos, MobileNetV2 weights)")
def test_a_reference_folder_names_a_group_of_intruders_off_topic(tmp_path, monkeypatch):
    """Sunflowers filed as roses in a rose/tulip crawl look like roses to a review that
    knows only roses and tulips; a reference folder of other sunflowers names them."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    source, reference = tmp_path / "crawl", tmp_path / "reference"
    for c in ("rose", "tulip"):
        (source / c).mkdir(parents=True)
        for path in sorted((FLOWERS / c).glob("*.jpg"))[:40]:
            shutil.copyfile(path, source / c / path.name)
    sunflowers = sorted((FLOWERS / "sunflower").glob("*.jpg"))
    intruders = {f"rose/{p.name}" for p in sunflowers[:4]}
    for path in sunflowers[:4]:
        shutil.copyfile(path, source / "rose" / path.name)
    (reference / "sunflower").mkdir(parents=True)
    for path in sunflowers[100:140]:
        shutil.copyfile(path, reference / "sunflower" / path.name)
    result = run_cli("review", source, "--reference", reference, "--weights", MOBILENET_WEIGHTS)
    assert result.exit_code == 0, result.output
    written = json.loads((source / verdicts.REVIEW_FILE).read_text())
    assert written["reference_classes"] == ["sunflower"] and written["class_names"] == ["rose", "tulip"]
    judged = {e["file"]: e for e in written["images"]}
    _, found = find_usable(source)
    assert set(judged) == {f.name for f in found if not f.status}  # SOURCE's images only
    assert all(judged[f]["reason"] == "off-topic" and judged[f]["suggested"] == "sunflower"
               for f in intruders), [judged[f] for f in intruders]
    assert "looks like sunflower, a reference class" in (source / reviewer.REVIEW_HTML).read_text()
    assert not list(reference.rglob("*.json"))  # nothing written into the reference


@pytest.mark.slow
def test_review_with_a_reference_judges_only_source_and_records_what_it_judged(folder, tmp_path):
    reference = make_class_folders(tmp_path / "reference", {"wolf": range(300, 305)})
    before = tree(reference)
    result = reviewer.review(folder, reference=reference, **REVIEW_QUICK)
    written = json.loads((folder / verdicts.REVIEW_FILE).read_text())
    assert written["reference"] == str(reference) and written["reference_classes"] == ["wolf"]
    assert {e["file"] for e in written["images"]} == {
        f"{c}/img{i:04d}.jpg" for c, start in (("cat", 0), ("dog", 100), ("fox", 200))
        for i in range(start, start + 8)}
    assert all(e["sha256"] == hashlib.sha256((folder / e["file"]).read_bytes()).hexdigest()
               for e in written["images"])
    assert {v.label for v in result.verdicts} == {"cat", "dog", "fox"}
    assert "wolf" not in result.table() and tree(reference) == before


def test_a_reference_inside_source_is_one_line(folder):
    before = tree(folder)
    result = run_cli("review", folder, "--reference", folder / "cat", *REVIEW_QUICK_FLAGS)
    assert_one_error_line(result, "must be separate folders")
    assert tree(folder) == before


@pytest.mark.slow
def test_review_of_a_class_with_two_images_prints_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    source = make_class_folders(tmp_path / "src", {"cat": range(2), "dog": range(100, 108),
                                                   "fox": range(200, 208)})
    # in a process of its own, as a user runs it: pytest would catch the warnings
    result = subprocess.run([sys.executable, "-m", "toolkit.cli", "review", str(source),
                             *REVIEW_QUICK_FLAGS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    assert len(json.loads((source / verdicts.REVIEW_FILE).read_text())["images"]) == 18


def test_a_reference_class_named_as_a_class_is_one_line(folder, tmp_path):
    reference = make_class_folders(tmp_path / "reference", {"dog": range(300, 303)})
    before = tree(folder)
    result = run_cli("review", folder, "--reference", reference, *REVIEW_QUICK_FLAGS)
    assert_one_error_line(result, "dog is a class of both")
    assert tree(folder) == before


def test_an_image_torn_between_two_classes_is_not_called_mislabeled():
    own, other = np.array([0.05, 0.38, 0.38, 0.7]), np.array([0.9, 0.62, 0.2, 0.1])
    assert rules.reasons(own, other, np.zeros(4)).tolist() == [
        "mislabeled", "fine", "fine", "fine"]
    assert reviewer.reasons(own, other, np.full(4, 3.0)).tolist() == ["off-topic"] * 4


def test_an_image_its_class_hardly_claims_and_no_other_clearly_does_is_ambiguous():
    """README: `ambiguous`: its own class has less than 0.25 (and no other class leads it
    enough to call it mislabeled); a suspect, with the likelier class suggested."""
    own, other = np.array([0.24, 0.25, 0.1, 0.1]), np.array([0.5, 0.5, 0.55, 0.65])
    assert rules.reasons(own, other, np.zeros(4)).tolist() == [
        "ambiguous", "fine", "ambiguous", "mislabeled"]
    # from embeddings: dog and fox photos look alike; one of them was filed as a cat
    rng = np.random.default_rng(1)
    cat, dog = rng.normal(size=32) * 3, rng.normal(size=32) * 3
    x = np.array([centre + rng.normal(size=32) for centre in [cat] * 12 + [dog] * 24 + [dog]])
    labels = np.repeat([0, 1, 2, 0], [12, 12, 12, 1])
    files = [f"{'cdf'[label]}/{i}.jpg" for i, label in enumerate(labels)]
    verdict = reviewer.judge(x, labels, ["cat", "dog", "fox"], files)[-1]
    assert (verdict.file, verdict.reason, verdict.suspect) == ("c/36.jpg", "ambiguous", True)
    assert verdict.suggested in ("dog", "fox") and verdict.score > 1 - rules.AMBIGUOUS_EVIDENCE


def test_review_of_one_class_is_one_line(tmp_path):
    source = make_class_folders(tmp_path / "src", {"cat": range(6)})
    before = tree(source)
    assert_one_error_line(run_cli("review", source, "--weights", "none"), "one class folder")
    assert tree(source) == before


@pytest.mark.slow
def test_review_html_shows_every_suspect_and_caps_the_fine_images(folder, monkeypatch):
    monkeypatch.setattr(reviewer, "HTML_FINE_PER_CLASS", 2)
    result = reviewer.review(folder, **REVIEW_QUICK)
    page = (folder / reviewer.REVIEW_HTML).read_text()
    suspects = {v.file for v in result.suspects()}
    assert page.count("data:image/jpeg;base64,") == len(suspects) + 3 * 2
    assert all(html.escape(f) in page for f in suspects)
    for name in ("cat", "dog", "fox"):
        hidden = 8 - 2 - sum(v.label == name for v in result.suspects())
        assert f"{name} <small>8 images" in page
        assert (f"and {hidden} more fine images" in page) == (hidden > 0)


@pytest.mark.slow
def test_review_offline_with_imagenet_says_how_to_pass_weights(folder, monkeypatch, tmp_path):
    # KERAS_HOME is conftest's empty folder: Keras reads it once, when it is imported
    monkeypatch.setattr(keras.src.applications.mobilenet_v2, "BASE_WEIGHT_PATH",
                        "http://127.0.0.1:9/")  # nothing listens: as offline
    before = tree(folder)
    result = run_cli("review", folder, "--weights", "imagenet", "--size", "96")
    assert_one_error_line(result, "--weights imagenet: cannot get the ImageNet weights")
    assert "give that file instead" in result.output and tree(folder) == before
