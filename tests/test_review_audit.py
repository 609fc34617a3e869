"""Audit of `toolkit review` and its gallery: what a real user's folders, files and browser do.

Most tests build SOURCE/review.json directly (what `toolkit review` writes), so that the
gallery and pack can be checked in a second, without TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import distinct_image
from toolkit.curate import decisions
from toolkit.curate.gallery import Gallery


def write_review(root: Path, classes: dict[str, list[str]], suspects: set[str] = frozenset(),
                 images: bool = True) -> Path:
    """SOURCE with `classes` (class -> file names) and the review.json review would write."""
    entries = []
    for i, (label, names) in enumerate(classes.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            if images:
                (root / label / name).write_bytes(distinct_image(1000 * i + j))
            file = f"{label}/{name}"
            entries.append({"file": file, "label": label, "suspect": file in suspects,
                            "reason": "off-topic" if file in suspects else "fine",
                            "score": 0.9 if file in suspects else 0.1, "suggested": None,
                            "probability": 0.5, "outlier": 0.0})
    (root / decisions.REVIEW_FILE).write_text(json.dumps(
        {"source": str(root), "class_names": list(classes), "images": entries}))
    return root


def start(source: Path) -> Gallery:
    server = Gallery(source)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop(server: Gallery) -> None:
    server.shutdown()
    server.server_close()


def fetch(url: str, data: bytes | None = None, headers: dict | None = None,
          method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


JSON = {"Content-Type": "application/json"}


@pytest.fixture
def small(tmp_path):
    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]},
                          suspects={"cat/a.jpg"})
    server = start(source)
    yield source, server
    stop(server)


# ---- the gallery's HTTP handling

def test_deeply_nested_json_is_one_clean_400(small):
    source, server = small
    body = b'{"decisions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    try:
        status, reply = fetch(server.url + "api/decisions", body, JSON)
    except (urllib.error.URLError, ConnectionError) as e:  # the handler died: no answer at all
        pytest.fail(f"no HTTP answer to a deeply nested body: {e!r}")
    assert status == 400 and b"error" in reply
    assert fetch(server.url + "api/state")[0] == 200  # and the server still answers


# ---- the gallery in a real browser

from browser import browser, console_errors  # noqa: E402,F401 (a fixture)


def open_gallery(driver, server: Gallery, n_cards: int):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException])
    driver.get(server.url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == n_cards)
    return wait


def decide_by_key_and_settle(driver, wait, source: Path, key: str, action: str,
                             in_flight: dict) -> str:
    """Press `key` (k or d) on the focused image; return once the server has recorded that
    decision and Chromium has every decision the page sent answered: then the server's
    decisions are all the page made, those of the keys pressed before included (the page
    handles keys in order)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    focused = driver.find_element(By.CSS_SELECTOR, "#grid .card.focus").get_attribute("data-file")
    ActionChains(driver).send_keys(key).perform()

    def settled(d) -> bool:
        for entry in d.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if (message.get("method") == "Network.requestWillBeSent"
                    and params["request"]["url"].endswith("/api/decisions")):
                in_flight[params["requestId"]] = True
            elif message.get("method") in ("Network.loadingFinished", "Network.loadingFailed"):
                in_flight.pop(params.get("requestId"), None)
        made = decisions.read(source).get(focused)
        return made is not None and made.action == action and not in_flight

    wait.until(settled)
    return focused


def test_arrow_keys_after_a_bulk_move_do_not_move_more_images(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                                             "dog": ["e.jpg", "f.jpg"], "fox": ["g.jpg", "h.jpg"]})
    server = start(source)
    try:
        wait = open_gallery(browser, server, 4)
        browser.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/a.jpg"] img').click()
        Select(browser.find_element(By.ID, "bulk-move")).select_by_value("dog")  # by mouse
        wait.until(lambda d: "move" in d.find_element(
            By.CSS_SELECTOR, '#grid .card[data-file="cat/a.jpg"]').get_attribute("class"))
        # then on with the keyboard, as the page's key help says: next image, next one, keep
        in_flight: dict = {}
        ActionChains(browser).send_keys(Keys.ARROW_RIGHT).send_keys(Keys.ARROW_DOWN).perform()
        kept = decide_by_key_and_settle(browser, wait, source, "k", "keep", in_flight)
        made = {f: (d.action, d.label) for f, d in decisions.read(source).items()}
        assert made == {"cat/a.jpg": ("move", "dog"), kept: ("keep", None)}, \
            "arrow keys moved images nobody chose"
        assert kept not in ("cat/a.jpg", "cat/c.jpg")
        # a card's own select, by mouse, then the arrow keys again
        menu = browser.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/c.jpg"] select')
        menu.click()
        Select(menu).select_by_value("fox")
        wait.until(lambda d: "move" in d.find_element(
            By.CSS_SELECTOR, '#grid .card[data-file="cat/c.jpg"]').get_attribute("class"))
        ActionChains(browser).send_keys(Keys.ARROW_DOWN).send_keys(Keys.ARROW_DOWN).perform()
        dropped = decide_by_key_and_settle(browser, wait, source, "d", "drop", in_flight)
    finally:
        stop(server)
    made = {f: (d.action, d.label) for f, d in decisions.read(source).items()}
    assert made == {"cat/a.jpg": ("move", "dog"), "cat/c.jpg": ("move", "fox"),
                    dropped: ("drop", None)} and dropped != "cat/c.jpg"


def test_keys_answer_at_once_in_a_class_of_1200_images_among_30_classes(browser, tmp_path):  # noqa: F811
    classes = {f"class {i:02d}": [f"img{j:04d}.jpg" for j in range(1200 if i == 0 else 2)]
               for i in range(30)}
    source = write_review(tmp_path / "src", classes, images=False)  # the page, not the pictures
    server = start(source)
    try:
        open_gallery(browser, server, 1200)
        took = {key: browser.execute_script(
            "const t = performance.now();"
            "document.dispatchEvent(new KeyboardEvent('keydown', {key: arguments[0]}));"
            "document.body.offsetHeight;"  # and the layout it causes
            "return performance.now() - t;", key) for key in ("ArrowRight", "ArrowDown", "x")}
    finally:
        stop(server)
    # reviewing 1,200 images by keyboard takes thousands of keys: each must feel instant
    assert max(took.values()) < 250, f"ms per key: {took}"


def test_a_closed_tab_or_a_cancelled_thumbnail_prints_no_traceback(small, capfd):
    """The browser cancels image loads whenever the grid changes or the tab closes."""
    source, server = small
    handled = []  # the server's own count of the requests it has finished handling
    handle = server.process_request_thread

    def counted(request, client_address):
        try:
            handle(request, client_address)
        finally:
            handled.append(client_address)

    server.process_request_thread = counted
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", server.server_port))
        s.sendall(f"GET /image?f=cat/a.jpg HTTP/1.1\r\nHost: 127.0.0.1:{server.server_port}"
                  "\r\n\r\n".encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, as a browser gives up on a request
    # the server accepts in order: once the 11th is answered, the 10 are being handled
    assert fetch(server.url + "image?f=cat/a.jpg")[0] == 200
    deadline = time.monotonic() + 60
    while len(handled) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(handled) == 11, "the server never finished handling the cancelled requests"
    assert "Traceback" not in capfd.readouterr().err


def test_a_file_whose_name_is_not_utf8_is_shown_decided_and_packed(tmp_path):
    """Names from a Windows zip (Latin-1 bytes): review, the gallery, decisions.jsonl and the
    archive all name them as pack prints them (`caf\\xe9.jpg`), and each reaches its file."""
    from helpers import run_cli
    from toolkit.core import images
    from toolkit.data.archive import find_usable

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]})
    raw = {b"cat/caf\xe9.jpg": 7, b"cat/na\xefve.jpg": 8, b"dog/\xff\xfe.jpg": 9}
    for name, seed in raw.items():
        with open(os.path.join(os.fsencode(source), name), "wb") as f:
            f.write(distinct_image(seed))
    class_names, found = find_usable(source)
    names = sorted(f.name for f in found if not f.status)
    moved, dropped, kept = "cat/caf\\xe9.jpg", "cat/na\\xefve.jpg", "dog/\\xff\\xfe.jpg"
    assert {moved, dropped, kept} <= set(names)
    write_review(source, {label: [n.split("/", 1)[1] for n in names if n.startswith(label + "/")]
                          for label in class_names}, images=False)
    server = start(source)
    try:
        statuses = {name: fetch(server.url + "image?f=" + urllib.request.quote(name))[0]
                    for name in names}
        asked = [{"file": moved, "action": "move", "label": "dog"}, {"file": dropped, "action": "drop"}]
        status, _ = fetch(server.url + "api/decisions", json.dumps({"decisions": asked}).encode(), JSON)
    finally:
        stop(server)
    assert set(statuses.values()) == {200}, statuses
    assert status == 200
    assert {f: (d.action, d.label) for f, d in decisions.read(source).items()} == {
        moved: ("move", "dog"), dropped: ("drop", None)}

    result = run_cli("pack", source, "--out", tmp_path / "a.npz", "--per-class", 10, "--size", 32,
                     "--test-size", 0.3, "--allow-fewer")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "a.npz") as archive:
        classes = archive["class_names"].tolist()
        rows = {str(p): (classes[y], x) for part in ("train", "test")
                for p, y, x in zip(archive[f"paths_{part}"], archive[f"y_{part}"], archive[f"X_{part}"])}
    assert sorted(rows) == sorted({*names_on_disk(source)} - {dropped})
    assert rows[moved][0] == "dog" and rows[kept][0] == "dog" and rows["cat/a.jpg"][0] == "cat"
    for printed, seed in zip((moved, dropped, kept), raw.values()):
        if printed in rows:  # the pixels of the file behind the name
            assert np.array_equal(rows[printed][1], images.decode(distinct_image(seed), size=32)[1])


def names_on_disk(source: Path) -> list[str]:
    """Every image below source as pack names it (undecodable bytes as \\xNN)."""
    from toolkit.data.archive import printable

    return [printable(os.path.relpath(os.path.join(d, f), source)) for d, _, files in os.walk(source)
            for f in files if f.endswith(".jpg")]


# ---- review's embeddings

@pytest.mark.slow
def test_an_image_changed_during_the_review_never_caches_its_pixels_under_the_old_content(tmp_path):
    from toolkit.core.errors import ToolkitError
    from toolkit.curate import reviewer
    from toolkit.data.archive import find_usable

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]})
    _, found = find_usable(source)
    files = [f for f in found if not f.status]
    (source / "cat" / "a.jpg").write_bytes(distinct_image(999))  # edited while review runs
    quick = {"weights": "none", "size": 32, "cache_dir": tmp_path / "cache"}
    with pytest.raises(ToolkitError, match="changed during the review"):
        reviewer.embed(files, **quick)
    (source / "cat" / "a.jpg").write_bytes(distinct_image(0))  # as it was when found
    cached = reviewer.embed(files[:1], **quick)
    fresh = reviewer.embed(files[:1], **{**quick, "cache_dir": tmp_path / "fresh"})
    cosine = float(cached[0] @ fresh[0] / np.linalg.norm(cached[0]) / np.linalg.norm(fresh[0]))
    assert cosine > 0.9999, "the cache holds the edited image under the original's content"


# ---- pack after a review

def test_pack_drop_suspects_warns_when_images_came_after_the_review(tmp_path):
    """The no-human path must not pack, unjudged and unannounced, what a top-up added later."""
    from helpers import run_cli

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]},
                          suspects={"cat/a.jpg"})
    (source / "cat" / "new.jpg").write_bytes(distinct_image(77))  # `crawl` topped the class up
    result = run_cli("pack", source, "--out", tmp_path / "a.npz", "--per-class", "3", "--size", "32",
                     "--allow-fewer", "--drop-suspects")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any("review" in line for line in warnings), result.output


WEIRD = ["a b", "café ☕", "#1 & 50% \"q\" 'x' <b>", "a+b=c?d"]


def test_classes_and_files_named_with_spaces_unicode_and_url_characters(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    classes = {name: [f"{name} #{i} 100%.jpg" for i in range(2)] for name in WEIRD}
    source = write_review(tmp_path / "src", classes)
    third, first = WEIRD[2], WEIRD[0]
    server = start(source)
    try:
        wait = open_gallery(browser, server, 2)
        tab = [b for b in browser.find_elements(By.CSS_SELECTOR, "#tabs button")
               if b.get_attribute("data-klass") == third][0]
        tab.click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#grid .card")
                   .get_attribute("data-file").startswith(third + "/"))
        ActionChains(browser).send_keys("1").perform()  # move the focused image to the first class
        wait.until(lambda d: "move" in d.find_element(By.CSS_SELECTOR, "#grid .card.focus")
                   .get_attribute("class"))
        browser.refresh()  # the class is kept in the address
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card") and all(
            c.get_attribute("data-file").startswith(third + "/")
            for c in d.find_elements(By.CSS_SELECTOR, "#grid .card")))
        wait.until(lambda d: all(i.get_property("complete") and i.get_property("naturalWidth") > 0
                                 for i in d.find_elements(By.CSS_SELECTOR, "#grid img")))
        texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#tabs button")]
        errors = console_errors(browser)
    finally:
        stop(server)
    assert [t.split(" ", 1)[1].rsplit(" (", 1)[0] for t in texts] == WEIRD
    assert not errors
    made = decisions.read(source)
    assert [(d.action, d.label) for d in made.values()] == [("move", first)]
    assert list(made)[0].startswith(third + "/")


def test_a_body_over_the_limit_gets_an_answer_not_a_broken_connection(small):
    source, server = small
    try:
        status, reply = fetch(server.url + "api/decisions", b" " * (5 * 2**20), JSON)
    except (urllib.error.URLError, ConnectionError) as e:
        pytest.fail(f"no HTTP answer to a 5 MiB body: {e!r}")
    assert status in (400, 413) and b"error" in reply
    assert not (source / decisions.DECISIONS_FILE).exists()


def test_a_decision_made_in_another_tab_shows_after_a_switch_of_class(browser, small):  # noqa: F811
    from selenium.webdriver.common.by import By

    source, server = small
    wait = open_gallery(browser, server, 2)
    other_tab = json.dumps({"decisions": [{"file": "cat/b.jpg", "action": "drop"}]}).encode()
    assert fetch(server.url + "api/decisions", other_tab, JSON)[0] == 200
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-klass="dog"]').click()
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-klass="cat"]').click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/b.jpg"] '
                                                         '.decision').text == "dropped")
