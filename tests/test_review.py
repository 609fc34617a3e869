"""toolkit review: verdicts, decisions, the gallery in a real browser, and pack honouring them."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from browser import browser, console_errors  # noqa: F401 (a fixture)
from conftest import FLOWERS, MOBILENET_WEIGHTS, distinct_image, make_class_folders
from gallery_client import fetch, key
from helpers import assert_one_error_line, run_cli, tree
from toolkit.collect.crawler import crawl
from toolkit.collect.fetch import FetchOptions
from toolkit.core import decisions
from toolkit.core.sources import find_usable
from toolkit.curate import gallery as gallery_module, reviewer, rules, verdicts
from toolkit.curate.gallery import Gallery
from toolkit.data.npz import load_archive
from toolkit.data.packer import pack
from toolkit.models import embedder

REPO = Path(__file__).resolve().parents[1]
#: ../shared, or where TOOLKIT_SHARED says it is (a worktree elsewhere)
SHARED = Path(os.environ.get("TOOLKIT_SHARED", FLOWERS.parents[1]))
QUICK = {"weights": "none", "size": 32}  # MobileNetV2, random weights, 32 px: a second or two
QUICK_FLAGS = ("--weights", "none", "--size", "32")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """3 classes x 8 distinct images; the embedding cache in tmp_path."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    return make_class_folders(tmp_path / "src", {"cat": range(8), "dog": range(100, 108),
                                                 "fox": range(200, 208)})


# ---- decisions.jsonl

def test_decisions_last_wins_and_a_damaged_last_line_is_read_up_to_it(tmp_path):
    decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "drop"),
                                decisions.Decision("cat/b.jpg", "move", "dog")])
    decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "keep")])
    with open(tmp_path / decisions.DECISIONS_FILE, "ab") as f:
        f.write(b'{"file": "cat/c.jpg", "action": "dr')  # killed mid-write
    made = decisions.read(tmp_path)
    assert {f: (d.action, d.label) for f, d in made.items()} == {
        "cat/a.jpg": ("keep", None), "cat/b.jpg": ("move", "dog")}
    # the next decision starts a line of its own, and the damaged one stays ignored
    decisions.append(tmp_path, [decisions.Decision("cat/c.jpg", "drop")])
    assert decisions.read(tmp_path)["cat/c.jpg"].action == "drop"
    assert len(decisions.read(tmp_path)) == 3
    with pytest.raises(decisions.ToolkitError, match="move needs"):
        decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "move")])
    # a line not ours (a class or a URL that is no text UTF-8 writes) is skipped as a damaged one
    lines = [{"label": 5}, {"label": "\ud800"}, {"label": ["dog"]}, {"label": "dog", "url": 7},
             {"label": "dog"}]
    made = decisions.parse("\n".join(json.dumps({"file": f"cat/{i}.jpg", "action": "move", **line})
                                      for i, line in enumerate(lines)).encode())
    assert {f: d.label for f, d in made.items()} == {"cat/4.jpg": "dog"}


# ---- review

@pytest.mark.slow
def test_review_judges_what_pack_would_pack_and_a_second_review_computes_nothing(folder, monkeypatch):
    (folder / "cat" / "junk.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "dog" / "copy.jpg").write_bytes(distinct_image(100))  # a duplicate
    result = reviewer.review(folder, **QUICK)
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
    again = reviewer.review(folder, **QUICK)
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
    result = reviewer.review(folder, reference=reference, **QUICK)
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
    result = run_cli("review", folder, "--reference", folder / "cat", *QUICK_FLAGS)
    assert_one_error_line(result, "must be separate folders")
    assert tree(folder) == before


@pytest.mark.slow
def test_review_of_a_class_with_two_images_prints_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    source = make_class_folders(tmp_path / "src", {"cat": range(2), "dog": range(100, 108),
                                                   "fox": range(200, 208)})
    # in a process of its own, as a user runs it: pytest would catch the warnings
    result = subprocess.run([sys.executable, "-m", "toolkit.cli", "review", str(source),
                             *QUICK_FLAGS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    assert len(json.loads((source / verdicts.REVIEW_FILE).read_text())["images"]) == 18


def test_a_reference_class_named_as_a_class_is_one_line(folder, tmp_path):
    reference = make_class_folders(tmp_path / "reference", {"dog": range(300, 303)})
    before = tree(folder)
    result = run_cli("review", folder, "--reference", reference, *QUICK_FLAGS)
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


def test_review_serve_on_a_port_in_use_fails_before_the_review(folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = tree(folder)
        result = run_cli("review", folder, "--serve", "--port", port, "--no-browser", *QUICK_FLAGS)
        assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}")
        assert tree(folder) == before  # no review was run


@pytest.mark.slow
def test_review_html_shows_every_suspect_and_caps_the_fine_images(folder, monkeypatch):
    monkeypatch.setattr(reviewer, "HTML_FINE_PER_CLASS", 2)
    result = reviewer.review(folder, **QUICK)
    page = (folder / reviewer.REVIEW_HTML).read_text()
    suspects = {v.file for v in result.suspects()}
    assert page.count("data:image/jpeg;base64,") == len(suspects) + 3 * 2
    assert all(html.escape(f) in page for f in suspects)
    for name in ("cat", "dog", "fox"):
        hidden = 8 - 2 - sum(v.label == name for v in result.suspects())
        assert f"{name} <small>8 images" in page
        assert (f"and {hidden} more fine images" in page) == (hidden > 0)


@pytest.mark.slow
def test_the_gallery_keeps_a_bounded_number_of_thumbnails(folder, monkeypatch):
    reviewer.review(folder, **QUICK)
    monkeypatch.setattr(gallery_module, "THUMBNAILS_KEPT", 2)
    server = Gallery(folder)
    try:
        for file in ("cat/img0000.jpg", "cat/img0001.jpg", "cat/img0000.jpg", "dog/img0100.jpg"):
            assert server.thumbnail(file)[:2] == b"\xff\xd8"
        assert list(server.thumbnails) == ["cat/img0000.jpg", "dog/img0100.jpg"]
    finally:
        server.server_close()


@pytest.mark.slow
def test_review_offline_with_imagenet_says_how_to_pass_weights(folder, monkeypatch, tmp_path):
    # KERAS_HOME is conftest's empty folder: Keras reads it once, when it is imported
    monkeypatch.setattr(keras.src.applications.mobilenet_v2, "BASE_WEIGHT_PATH",
                        "http://127.0.0.1:9/")  # nothing listens: as offline
    before = tree(folder)
    result = run_cli("review", folder, "--weights", "imagenet", "--size", "96")
    assert_one_error_line(result, "--weights imagenet: cannot get the ImageNet weights")
    assert "give that file instead" in result.output and tree(folder) == before


# ---- the gallery's server

@pytest.fixture
def gallery(folder):
    reviewer.review(folder, **QUICK)
    server = Gallery(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_gallery_refuses_paths_outside_source_and_writes_only_decisions(gallery, folder):
    (folder.parent / "secret.txt").write_text("root:x:0:0")
    before = tree(folder)
    cookie = key(gallery)  # the page's own requests: what is refused here is refused for its path
    status, body = fetch(gallery.address + "image?f=cat/img0001.jpg", headers=cookie)
    assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG thumbnail
    for path in ("image?f=../../etc/passwd", "image?f=..%2F..%2Fetc%2Fpasswd",
                 "image?f=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "image?f=/etc/passwd",
                 "image?f=cat/../../secret.txt", "image?f=..%252F..%252Fsecret.txt",
                 "image?f=cat%2F..%2F..%2Fsecret.txt", "../../etc/passwd", "..%2F..%2Fsecret.txt",
                 "image?f=review.json", "image?f=cat"):
        status, body = fetch(gallery.address + path, headers=cookie)
        assert status in (403, 404), path
        assert b"root:" not in body and b"toolkit" not in body, path
    post = {"Content-Type": "application/json", **cookie}
    bad = json.dumps({"decisions": [{"file": "../secret.txt", "action": "drop"}]}).encode()
    assert fetch(gallery.address + "api/decisions", bad, post)[0] == 400
    form = b"decisions=x"  # a form posted from another site is not JSON
    assert fetch(gallery.address + "api/decisions", form,
                 {"Content-Type": "application/x-www-form-urlencoded", **cookie})[0] == 415
    assert fetch(gallery.address + "api/decisions", bad, {**post, "Origin": "http://evil.test"})[0] == 403
    good = json.dumps({"decisions": [{"file": "cat/img0001.jpg", "action": "drop"}]}).encode()
    assert fetch(gallery.address + "api/decisions", good, post)[0] == 200
    port = gallery.server_port  # the page opened as localhost works too
    assert fetch(gallery.address + "api/decisions", good,
                 {**post, "Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})[0] == 200
    restarted = Gallery(folder)  # a restart of the server shows the decision
    try:
        assert restarted.state()["decisions"] == {"cat/img0001.jpg": {"action": "drop",
                                                                      "label": None}}
    finally:
        restarted.server_close()
    after = tree(folder)
    assert set(after) - set(before) == {decisions.DECISIONS_FILE}
    assert {k: v for k, v in after.items() if k != decisions.DECISIONS_FILE} == before


# ---- pack and crawl honour decisions

@pytest.mark.slow
def test_pack_honours_decisions_and_drop_suspects(folder, tmp_path):
    reviewer.review(folder, **QUICK)
    suspects = verdicts.suspects(folder)
    decisions.append(folder, [decisions.Decision("cat/img0001.jpg", "drop"),
                              decisions.Decision("dog/img0102.jpg", "move", "fox")])
    report = pack(folder, tmp_path / "a.npz", per_class=20, size=32, allow_fewer=True)
    archive = load_archive(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        rows = dict(zip([*npz["paths_train"], *npz["paths_test"]],
                        [*npz["y_train"], *npz["y_test"]]))
    assert "cat/img0001.jpg" not in rows
    assert archive.class_names[rows["dog/img0102.jpg"]] == "fox"
    assert "dropped_in_review" in report.table() and "moved_in_review" in report.table()
    totals = report.to_json()["counts"]
    assert sum(c.get("dropped_in_review", 0) for c in totals.values()) == 1
    assert totals["fox"].get("moved_in_review") == 1

    kept = sorted(suspects - {"cat/img0001.jpg", "dog/img0102.jpg"})[:1]
    decisions.append(folder, [decisions.Decision(f, "keep") for f in kept])
    pack(folder, tmp_path / "b.npz", per_class=20, size=32, allow_fewer=True, drop_suspects=True)
    with np.load(tmp_path / "b.npz") as npz:
        packed = {*npz["paths_train"], *npz["paths_test"]}
    undecided = suspects - {"cat/img0001.jpg", "dog/img0102.jpg", *kept}
    assert packed.isdisjoint(undecided) and set(kept) <= packed
    assert len(packed) == 24 - 1 - len(undecided)


@pytest.mark.slow
def test_pack_drop_suspects_packs_what_came_or_changed_after_the_review_with_a_warning(folder, tmp_path):
    reviewer.review(folder, **QUICK)
    entries = json.loads((folder / verdicts.REVIEW_FILE).read_text())["images"]
    assert all(e["sha256"] == hashlib.sha256((folder / e["file"]).read_bytes()).hexdigest()
               for e in entries)
    changed = (sorted(verdicts.suspects(folder)) or [entries[0]["file"]])[0]
    (folder / changed).write_bytes(distinct_image(999))  # a new picture under the old name
    (folder / "cat" / "new.jpg").write_bytes(distinct_image(998))  # a crawl top-up
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--per-class", "20",
                     "--size", "32", "--allow-fewer", "--drop-suspects")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 usable images came or changed after the review and are "
                        f"packed unjudged: run `toolkit review {folder}` again, then pack"]
    with np.load(tmp_path / "a.npz") as npz:
        packed = {*npz["paths_train"], *npz["paths_test"]}
    assert {changed, "cat/new.jpg"} <= packed  # not judged, so not left out as a suspect
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert report["warnings"] == [w.removeprefix("warning: ") for w in warnings]


def test_pack_warns_of_moves_to_a_class_that_is_gone(folder, tmp_path):
    decisions.append(folder, [decisions.Decision("cat/img0002.jpg", "move", "wolf")])
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--per-class", "20",
                     "--size", "32", "--allow-fewer")
    assert result.exit_code == 0, result.output
    assert ("warning: 1 image(s) moved in review to a class that is no longer a folder of "
            "SOURCE (wolf) are packed in their own class") in result.output
    archive = load_archive(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        rows = dict(zip([*npz["paths_train"], *npz["paths_test"]], [*npz["y_train"], *npz["y_test"]]))
    assert archive.class_names[rows["cat/img0002.jpg"]] == "cat"


def test_pack_drop_suspects_without_a_review_is_one_line(folder, tmp_path):
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--drop-suspects")
    assert_one_error_line(result, "toolkit review")
    assert not (tmp_path / "a.npz").exists()


def test_crawl_top_up_skips_dropped_images_and_their_urls(engine, tmp_path):
    fast = FetchOptions(timeout=2, total_timeout=3, retries=1, backoff=0.05)
    urls = engine.add_images("cat", range(6))
    crawl(["cat"], root=tmp_path, per_class=3, fetch=fast, threads=1)
    manifest = [json.loads(line) for line in (tmp_path / "cat.manifest.jsonl").read_text().splitlines()]
    dropped = manifest[0]
    gallery_module.record(tmp_path, [decisions.Decision(f"cat/{dropped['file']}", "drop")])
    assert decisions.dropped_urls(tmp_path) == {dropped["url"]}
    assert decisions.left_out(tmp_path, "cat") == {dropped["file"]}
    (tmp_path / "cat" / dropped["file"]).unlink()  # even gone from disk, its URL is remembered
    engine.hits.clear()
    report = crawl(["cat"], root=tmp_path, per_class=3, fetch=fast, threads=1)
    assert report.classes[0].kept == 3 and report.complete
    assert dropped["url"].rsplit("/", 1)[-1] not in engine.hits
    assert len(urls) == 6


# ---- the gallery in a real browser

@pytest.mark.slow
def test_gallery_in_a_browser_drop_by_mouse_move_by_keyboard_then_pack(browser, tmp_path):  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    source, options = gallery_folder(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TOOLKIT_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "review", str(source),
                               *options, "--serve", "--no-browser"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, seen, deadline = None, [], time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"gallery: (http://127\.0\.0\.1:\d+/\?token=[\w-]{43})  ", line)
            url = match and match.group(1)
        assert url, "".join(seen)

        wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
        browser.get(url)
        cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
        classes = sorted(p.name for p in source.iterdir() if p.is_dir())
        first, third = classes[0], classes[2]
        n_first = len(list((source / first).iterdir()))
        assert len(cards) == n_first and all(c.get_attribute("data-file").startswith(f"{first}/")
                                       for c in cards)
        dropped = cards[0].get_attribute("data-file")
        card_of(browser, dropped).find_element(By.CSS_SELECTOR, "button.drop").click()  # by mouse
        wait.until(lambda d: "drop" in card_of(d, dropped).get_attribute("class"))

        ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()  # by keyboard: focus the 2nd
        moved = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#grid .card.focus")
                           .get_attribute("data-file"))
        assert moved != dropped
        ActionChains(browser).send_keys("3").perform()  # move to class 3
        wait.until(lambda d: "move" in card_of(d, moved).get_attribute("class"))

        browser.refresh()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == n_first)
        browser.find_element(By.CSS_SELECTOR, f'#tabs button[data-klass="{third}"]').click()
        browser.find_element(By.CSS_SELECTOR, f'#tabs button[data-klass="{first}"]').click()
        assert card_of(browser, dropped).find_element(By.CSS_SELECTOR, ".decision").text == "dropped"
        assert card_of(browser, moved).find_element(By.CSS_SELECTOR, ".decision").text == f"moved to {third}"
        browser.find_element(By.CSS_SELECTOR, '#filters button[data-filter="decided"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 2)
        browser.find_element(By.CSS_SELECTOR, '#filters button[data-filter="all"]').click()
        browser.find_element(By.CSS_SELECTOR, f'#tabs button[data-klass="{third}"]').click()
        wait.until(lambda d: all(c.get_attribute("data-file").startswith(f"{third}/")
                                 for c in d.find_elements(By.CSS_SELECTOR, "#grid .card")))
        wait.until(lambda d: all(i.get_property("complete") and i.get_property("naturalWidth") > 0
                                 for i in d.find_elements(By.CSS_SELECTOR, "#grid img")))
        assert not console_errors(browser)
        save_screenshot(browser, tmp_path / "review-gallery.png")
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            out, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, out
    assert "gallery stopped" in out

    result = run_cli("pack", source, "--out", tmp_path / "a.npz", "--per-class", "13", "--size", "32",
                     "--allow-fewer")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "a.npz") as npz:
        rows = dict(zip([*npz["paths_train"], *npz["paths_test"]], [*npz["y_train"], *npz["y_test"]]))
    assert dropped not in rows and rows[moved] == 2  # the third class
    assert "dropped_in_review" in result.output and "moved_in_review" in result.output


def gallery_folder(root: Path) -> tuple[Path, list[str]]:
    """Real photos with two off-topic ones and the real weights where ../shared has them
    (the README's screenshot), else generated pictures and random weights."""
    photos = {c: sorted((SHARED / "data" / "flowers" / c).glob("*.jpg"))[:10]
              for c in ("rose", "sunflower", "tulip")}
    objects = sorted((SHARED / "data" / "offtopic").glob("*.jpg"))[:3]
    weights = SHARED / "weights" / MOBILENET_WEIGHTS.name
    if all(len(p) == 10 for p in photos.values()) and len(objects) == 3 and weights.exists():
        for c, paths in photos.items():
            (root / c).mkdir(parents=True)
            for path in paths + (objects if c == "tulip" else []):
                shutil.copyfile(path, root / c / path.name)
        return root, ["--weights", str(weights), "--size", "160"]
    make_class_folders(root, {"cat": range(6), "dog": range(100, 106), "fox": range(200, 206)},
                       size=(240, 180))
    return root, ["--weights", "none", "--size", "32"]


def card_of(driver, file: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'#grid .card[data-file="{file}"]')


def save_screenshot(driver, path: Path) -> None:
    """The gallery as a small PNG; with TOOLKIT_UPDATE_SCREENSHOT=1 also docs/review-gallery.png."""
    driver.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    image.quantize(128).save(path, optimize=True)
    if os.environ.get("TOOLKIT_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "review-gallery.png").write_bytes(path.read_bytes())
