"""The review gallery for tests: a SOURCE with the review.json `toolkit review` writes (built
directly, without TensorFlow), a server on 127.0.0.1, and a client that talks to it as the
browser that opened the printed address does (its key exchanged for the cookie)."""

from __future__ import annotations

import http.client
import json
import threading
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from conftest import distinct_image
from toolkit.curate import verdicts
from toolkit.curate.gallery import Gallery

JSON = {"Content-Type": "application/json"}


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
    (root / verdicts.REVIEW_FILE).write_text(json.dumps(
        {"source": str(root), "class_names": list(classes), "images": entries}))
    return root


def start(source: Path, port: int = 0) -> Gallery:
    server = Gallery(source, port)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop(server: Gallery) -> None:
    server.shutdown()
    server.server_close()


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, Message, bytes]:
    """One request as it is (no redirect followed, no header added but Host): status, headers, body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method or ("GET" if data is None else "POST"),
                           parts.path + (f"?{parts.query}" if parts.query else ""), data, headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def fetch(url: str, data: bytes | None = None, headers: dict | None = None,
          method: str | None = None) -> tuple[int, bytes]:
    status, _, body = request(url, data, headers, method)
    return status, body


def key(server: Gallery) -> dict[str, str]:
    """The cookie that the printed address buys, as a header: what the page's requests carry."""
    status, headers, _ = request(server.url)
    assert status == 303, status
    return {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}


def browser_key(driver, server: Gallery) -> dict[str, str]:
    """The cookie a browser holds for the gallery (another tab of it)."""
    return {"Cookie": f"{server.key.cookie_name}={driver.get_cookie(server.key.cookie_name)['value']}"}


def open_gallery(driver, server: Gallery, n_cards: int):
    """Open the printed address (or, once used, the gallery) in the browser; a wait on it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException])
    driver.get(server.url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == n_cards)
    return wait
