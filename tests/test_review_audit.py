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
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import distinct_image
from gallery_client import JSON, browser_key, fetch, key, open_gallery, start, stop, write_review
from helpers import run_cli
from toolkit.core import decisions, images
from toolkit.curate import gallery as gallery_module


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
    cookie = key(server)
    body = b'{"decisions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    try:
        status, reply = fetch(server.address + "api/decisions", body, {**JSON, **cookie})
    except OSError as e:  # the handler died: no answer at all
        pytest.fail(f"no HTTP answer to a deeply nested body: {e!r}")
    assert status == 400 and b"error" in reply
    assert fetch(server.address + "api/state", headers=cookie)[0] == 200  # and the server still answers


# ---- the gallery in a real browser

from browser import browser, console_errors  # noqa: E402,F401 (a fixture)


def test_arrow_keys_after_a_bulk_move_do_not_move_more_images(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                                             "dog": ["e.jpg", "f.jpg"], "fox": ["g.jpg", "h.jpg"]})
    server = start(source)
    expected = {"cat/a.jpg": ("move", "dog")}

    def then_decide_the_focused_one(key: str, action: str) -> None:
        """A decision by key, after the arrow keys: once the server has it, whatever they sent
        before it has arrived too."""
        focused = browser.find_element(By.CSS_SELECTOR, "#grid .card.focus").get_attribute("data-file")
        expected[focused] = (action, None)
        ActionChains(browser).send_keys(key).perform()
        wait.until(lambda d: made(source) == expected, message=f"decided {made(source)}, not {expected}")

    try:
        wait = open_gallery(browser, server, 4)
        browser.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/a.jpg"] img').click()
        bulk = browser.find_element(By.ID, "bulk-move")
        bulk.click()
        Select(bulk).select_by_value("dog")  # by mouse
        wait.until(lambda d: "move" in d.find_element(
            By.CSS_SELECTOR, '#grid .card[data-file="cat/a.jpg"]').get_attribute("class"))
        # then on with the keyboard, as the page's key help says: next image, next one, keep
        ActionChains(browser).send_keys(Keys.ARROW_RIGHT).send_keys(Keys.ARROW_DOWN).perform()
        then_decide_the_focused_one("k", "keep")
        # a card's own select, by mouse, then the arrow keys again
        menu = browser.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/c.jpg"] select')
        menu.click()
        Select(menu).select_by_value("fox")
        expected["cat/c.jpg"] = ("move", "fox")
        wait.until(lambda d: made(source) == expected)
        ActionChains(browser).send_keys(Keys.ARROW_DOWN).send_keys(Keys.ARROW_DOWN).perform()
        then_decide_the_focused_one("d", "drop")
    finally:
        stop(server)
    assert expected["cat/c.jpg"] == ("move", "fox")  # no barrier undid the move


def made(source) -> dict[str, tuple]:
    return {f: (d.action, d.label) for f, d in decisions.read(source).items()}


def test_keys_restyle_a_class_of_1200_images_among_30_classes_in_place(browser, tmp_path):  # noqa: F811
    """Reviewing 1,200 images by keyboard takes thousands of keys: a key restyles the cards
    in place (building them all again took most of a second a key), and a decision builds
    its own card again, no other."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    classes = {f"class {i:02d}": [f"img{j:04d}.jpg" for j in range(1200 if i == 0 else 2)]
               for i in range(30)}
    source = write_review(tmp_path / "src", classes, images=False)  # the page, not the pictures
    server = start(source)
    try:
        wait = open_gallery(browser, server, 1200)
        browser.execute_script("for (const card of document.getElementById('grid').children) "
                               "card.built = 'at load';")
        ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_DOWN, "x").perform()
        focused = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card.focus.selected")
                             )[0].get_attribute("data-file")
        assert focused != "class 00/img0000.jpg"
        ActionChains(browser).send_keys("k").perform()
        wait.until(lambda d: made(source) == {focused: ("keep", None)})
        wait.until(lambda d: "keep" in d.find_element(
            By.CSS_SELECTOR, f'#grid .card[data-file="{focused}"]').get_attribute("class"))
        built_again = browser.execute_script(
            "return [...document.getElementById('grid').children]"
            ".filter((card) => card.built !== 'at load').map((card) => card.dataset.file)")
    finally:
        stop(server)
    assert built_again == [focused]


def test_every_key_of_the_help_decides_on_the_server_and_a_tab_shows_others_when_back(
        browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                                             "dog": ["e.jpg", "f.jpg"], "fox": ["g.jpg", "h.jpg"]})
    server = start(source)
    expected = {}

    def press(*keys, then: dict[str, tuple]) -> None:
        ActionChains(browser).send_keys(*keys).perform()
        expected.update(then)
        wait.until(lambda d: made(source) == expected, message=f"decided {made(source)}, not {expected}")

    def shown(d) -> set[str]:
        cards = d.find_elements(By.CSS_SELECTOR, "#grid .card")
        return {card.get_attribute("data-file").split("/")[0] for card in cards}

    try:
        wait = open_gallery(browser, server, 4)
        press("k", then={"cat/a.jpg": ("keep", None)})  # the focused image
        press(Keys.ARROW_RIGHT, "d", then={"cat/b.jpg": ("drop", None)})
        ActionChains(browser).send_keys(Keys.ARROW_RIGHT, " ", Keys.ARROW_RIGHT, " ").perform()
        wait.until(lambda d: d.find_element(By.ID, "nselected").text == "2")
        press("k", then={"cat/c.jpg": ("keep", None), "cat/d.jpg": ("keep", None)})  # the selection
        wait.until(lambda d: d.find_element(By.ID, "nselected").text == "0")
        ActionChains(browser).send_keys("a").perform()
        wait.until(lambda d: d.find_element(By.ID, "nselected").text == "4")
        press("d", then={f"cat/{n}.jpg": ("drop", None) for n in "abcd"})
        ActionChains(browser).send_keys("]").perform()
        wait.until(lambda d: shown(d) == {"dog"})
        press("d", then={"dog/e.jpg": ("drop", None)})
        ActionChains(browser).send_keys("[", "[").perform()  # back to cat, and round to fox
        wait.until(lambda d: shown(d) == {"fox"})

        other_tab = json.dumps({"decisions": [{"file": "fox/h.jpg", "action": "drop"}]}).encode()
        assert fetch(server.address + "api/decisions", other_tab,
                     {**JSON, **browser_key(browser, server)})[0] == 200
        decision = '#grid .card[data-file="fox/h.jpg"] .decision'
        assert browser.find_element(By.CSS_SELECTOR, decision).text == ""  # nothing asked the server
        this_tab = browser.current_window_handle
        browser.switch_to.new_window("tab")  # the user looks elsewhere, then comes back
        browser.switch_to.window(this_tab)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, decision).text == "dropped")
    finally:
        stop(server)


def test_images_selected_while_a_decision_is_on_its_way_stay_selected(browser, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    """A decision's answer takes out of the selection what it decided, not the images selected
    while it was on its way (a reviewer who presses d, then space on the next ones at once)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg", "c.jpg"], "dog": ["d.jpg"]})
    record, may_answer = gallery_module.Gallery.decide, threading.Event()

    def recorded_then_answered_later(self, requested):
        recorded = record(self, requested)
        may_answer.wait(20)
        return recorded

    monkeypatch.setattr(gallery_module.Gallery, "decide", recorded_then_answered_later)
    server = start(source)
    try:
        wait = open_gallery(browser, server, 3)
        ActionChains(browser).send_keys("d").perform()  # the focused image, cat/a.jpg
        wait.until(lambda d: made(source) == {"cat/a.jpg": ("drop", None)})  # recorded, not answered
        ActionChains(browser).send_keys(Keys.ARROW_RIGHT, " ").perform()
        wait.until(lambda d: d.find_element(By.ID, "nselected").text == "1")
        may_answer.set()
        wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, '#grid .card[data-file="cat/a.jpg"] .decision').text == "dropped")
        assert browser.find_element(By.ID, "nselected").text == "1"
        assert browser.find_elements(By.CSS_SELECTOR, "#grid .card.selected")[0].get_attribute(
            "data-file") == "cat/b.jpg"
    finally:
        may_answer.set()
        stop(server)


def test_a_closed_tab_or_a_cancelled_thumbnail_prints_no_traceback(small, capfd):
    """The browser cancels image loads whenever the grid changes or the tab closes."""
    source, server = small
    cookie = key(server)
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", server.server_port))
        s.sendall(f"GET /image?f=cat/a.jpg HTTP/1.1\r\nHost: 127.0.0.1:{server.server_port}"
                  f"\r\nCookie: {cookie['Cookie']}\r\n\r\n".encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, as a browser gives up on a request
    deadline = time.monotonic() + 10  # until the server has handled all ten
    while any("process_request_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fetch(server.address + "image?f=cat/a.jpg", headers=cookie)[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_the_gallery_shows_a_file_whose_name_is_not_utf8(tmp_path):
    """Names from a Windows zip (Latin-1 bytes): pack and review name them `caf\\xe9.jpg`."""
    from toolkit.core.sources import find_usable

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
        cookie = key(server)
        statuses = {name: fetch(server.address + "image?f=" + urllib.request.quote(name), headers=cookie)[0]
                    for name in names}
        asked = [{"file": moved, "action": "move", "label": "dog"}, {"file": dropped, "action": "drop"}]
        status, _ = fetch(server.address + "api/decisions", json.dumps({"decisions": asked}).encode(),
                          {**JSON, **cookie})
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
    from toolkit.core.sources import printable

    return [printable(os.path.relpath(os.path.join(d, f), source)) for d, _, files in os.walk(source)
            for f in files if f.endswith(".jpg")]


# ---- review's embeddings

@pytest.mark.slow
def test_an_image_changed_during_the_review_never_caches_its_pixels_under_the_old_content(tmp_path):
    from toolkit.core.errors import ToolkitError
    from toolkit.core.sources import find_usable
    from toolkit.models.embedder import embed

    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]})
    _, found = find_usable(source)
    files = [f for f in found if not f.status]
    (source / "cat" / "a.jpg").write_bytes(distinct_image(999))  # edited while review runs
    quick = {"backbone": "mobilenet_v2", "weights": "none", "size": 32, "cache_dir": tmp_path / "cache"}
    with pytest.raises(ToolkitError, match="changed during the review"):
        embed(files, **quick)
    (source / "cat" / "a.jpg").write_bytes(distinct_image(0))  # as it was when found
    cached = embed(files[:1], **quick)
    fresh = embed(files[:1], **{**quick, "cache_dir": tmp_path / "fresh"})
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
    """Valid decisions, only too many at once: refused by their size, not by their content."""
    source, server = small
    many = json.dumps({"decisions": [{"file": "cat/a.jpg", "action": "keep"}] * 150_000}).encode()
    assert gallery_module.MAX_BODY < len(many) < gallery_module.DISCARD_LIMIT
    try:
        status, reply = fetch(server.address + "api/decisions", many, {**JSON, **key(server)})
    except OSError as e:
        pytest.fail(f"no HTTP answer to a {len(many) >> 20} MiB body: {e!r}")
    assert status == 413, reply[:200]
    assert json.loads(reply) == {"error": f"more than {gallery_module.MAX_BODY} bytes: decide on "
                                          "fewer images at once"}
    assert not (source / decisions.DECISIONS_FILE).exists()


def test_a_decision_made_in_another_tab_shows_after_a_switch_of_class(browser, small):  # noqa: F811
    from selenium.webdriver.common.by import By

    source, server = small
    wait = open_gallery(browser, server, 2)
    other_tab = json.dumps({"decisions": [{"file": "cat/b.jpg", "action": "drop"}]}).encode()
    other_key = browser_key(browser, server)
    assert fetch(server.address + "api/decisions", other_tab, {**JSON, **other_key})[0] == 200
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-klass="dog"]').click()
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-klass="cat"]').click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#grid .card[data-file="cat/b.jpg"] '
                                                         '.decision').text == "dropped")
