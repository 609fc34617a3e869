"""The review gallery: its server's checks of paths and requests, and a review decided in a real browser."""

from __future__ import annotations

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

import numpy as np
import pytest
from PIL import Image

from browser import browser, console_errors  # noqa: F401 (a fixture)
from conftest import MOBILENET_WEIGHTS, SHARED, make_class_folders
from gallery_client import fetch, key
from helpers import REVIEW_QUICK, REVIEW_QUICK_FLAGS, assert_one_error_line, run_cli, tree
from toolkit.core import decisions
from toolkit.curate import gallery as gallery_module, reviewer
from toolkit.curate.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]


# ---- the gallery's server

def test_review_serve_on_a_port_in_use_fails_before_the_review(folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = tree(folder)
        result = run_cli("review", folder, "--serve", "--port", port, "--no-browser", *REVIEW_QUICK_FLAGS)
        assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}")
        assert tree(folder) == before  # no review was run


@pytest.mark.slow
def test_the_gallery_keeps_a_bounded_number_of_thumbnails(folder, monkeypatch):
    reviewer.review(folder, **REVIEW_QUICK)
    monkeypatch.setattr(gallery_module, "THUMBNAILS_KEPT", 2)
    server = Gallery(folder)
    try:
        for file in ("cat/img0000.jpg", "cat/img0001.jpg", "cat/img0000.jpg", "dog/img0100.jpg"):
            assert server.thumbnail(file)[:2] == b"\xff\xd8"
        assert list(server.thumbnails) == ["cat/img0000.jpg", "dog/img0100.jpg"]
    finally:
        server.server_close()


@pytest.fixture
def gallery(folder):
    reviewer.review(folder, **REVIEW_QUICK)
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
