"""Who the review gallery answers: its own page holding this launch's key, on its own address;
never a frame of another site; and half-open connections neither block it nor grow its threads.

Every test here sends what the gallery's own page sends (the key, its Host), so that each
fails when its one guard is removed."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from browser import browser, console_errors  # noqa: F401 (a fixture)
from gallery_client import JSON, fetch, key, open_gallery, request, start, stop, write_review
from toolkit.core import decisions
from toolkit.core.errors import ToolkitError
from toolkit.curate import guard

DROP_A = json.dumps({"decisions": [{"file": "cat/a.jpg", "action": "drop"}]}).encode()


@pytest.fixture
def small(tmp_path):
    source = write_review(tmp_path / "src", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]})
    server = start(source)
    yield source, server
    stop(server)


def made(source) -> dict[str, tuple]:
    return {f: (d.action, d.label) for f, d in decisions.read(source).items()}


def test_the_printed_address_buys_once_a_cookie_that_every_request_needs(small):
    source, server = small
    assert server.url.startswith(server.address + f"?{guard.TOKEN}=")
    for path in ("", "api/state", "image?f=cat/a.jpg"):  # no key
        status, body = fetch(server.address + path)
        assert status == 403 and b"\xff\xd8" not in body
        assert (json.loads(body)["error"] if path.startswith("api") else body.decode().strip()) == (
            "no key: open the address that `toolkit review --serve` printed")
    assert fetch(server.address + "api/decisions", DROP_A, JSON)[0] == 403
    forged = {"Cookie": f"{server.key.cookie_name}=guessed"}
    assert fetch(server.address + "api/state", headers=forged)[0] == 403
    assert fetch(server.address + f"?{guard.TOKEN}=guessed")[0] == 403  # and the real one still works

    status, headers, body = request(server.url)
    assert (status, headers["Location"]) == (303, "/")  # on to the page: the token leaves the address bar
    name, _, rest = headers["Set-Cookie"].partition("=")
    value, *attributes = rest.split("; ")
    assert name == f"toolkit-gallery-{server.server_port}"  # two galleries, two cookies
    assert sorted(attributes) == ["HttpOnly", "Path=/", "SameSite=Strict"]  # not Secure: http
    assert value not in server.url
    cookie = {"Cookie": f"{name}={value}"}
    assert fetch(server.address, headers=cookie)[0] == 200
    assert set(json.loads(fetch(server.address + "api/state", headers=cookie)[1])) >= {"images"}
    assert fetch(server.address + "image?f=cat/a.jpg", headers=cookie)[1][:2] == b"\xff\xd8"
    assert fetch(server.address + "api/decisions", DROP_A, {**JSON, **cookie})[0] == 200

    status, body = fetch(server.url)  # the address again, in another browser: used
    assert status == 403 and body.decode().strip() == guard.USED_KEY
    status, headers, _ = request(server.url, headers=cookie)  # in the browser that holds the cookie
    assert status == 303 and "Set-Cookie" not in headers
    assert made(source) == {"cat/a.jpg": ("drop", None)}


def test_a_foreign_host_is_refused_even_with_the_key(small):
    """DNS rebinding: a page of evil.test whose name now points at 127.0.0.1."""
    source, server = small
    cookie, port = key(server), server.server_port
    for host in (f"evil.test:{port}", "evil.test", "127.0.0.1", f"127.0.0.2:{port}", ""):
        assert fetch(server.address + "api/state", headers={**cookie, "Host": host}) == (
            403, b'{"error": "forbidden host"}'), host
        assert fetch(server.address + "api/decisions", DROP_A,
                     {**JSON, **cookie, "Host": host})[0] == 403, host
    assert not (source / decisions.DECISIONS_FILE).exists()
    origin = {**JSON, **cookie, "Origin": "http://evil.test"}
    assert fetch(server.address + "api/decisions", DROP_A, origin)[0] == 403
    local = {**JSON, **cookie, "Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert fetch(server.address + "api/decisions", DROP_A, local)[0] == 200  # opened as localhost


def test_the_gallery_on_port_80_answers_the_host_and_origin_a_browser_sends(tmp_path):
    """A browser leaves the default port out of Host and Origin: `--port 80` answered 403."""
    source = write_review(tmp_path / "src", {"cat": ["a.jpg"], "dog": ["b.jpg"]})
    try:
        server = start(source, 80)
        address = server.address
    except ToolkitError:  # not root, or port 80 taken: a server that believes it is on port 80
        server = start(source)
        address, server.server_port = server.address, 80
    try:
        host = {"Host": "127.0.0.1"}
        status, headers, _ = request(f"{address}?{guard.TOKEN}={server.key.token}", headers=host)
        assert status == 303, status
        page = {**host, "Cookie": headers["Set-Cookie"].split(";")[0]}
        assert fetch(address + "api/state", headers=page)[0] == 200
        assert fetch(address + "api/decisions", DROP_A,
                     {**JSON, **page, "Origin": "http://127.0.0.1"})[0] == 200
        assert fetch(address + "api/state", headers={**page, "Host": "evil.test"})[0] == 403
    finally:
        stop(server)
    assert made(source) == {"cat/a.jpg": ("drop", None)}


def test_every_answer_forbids_framing_and_use_by_other_origins(small):
    source, server = small
    exchange = request(server.url)
    cookie = {"Cookie": exchange[1]["Set-Cookie"].split(";")[0]}
    answers = {"exchange": exchange, "page": request(server.address, headers=cookie),
               "state": request(server.address + "api/state", headers=cookie),
               "image": request(server.address + "image?f=cat/a.jpg", headers=cookie),
               "no key": request(server.address), "not found": request(server.address + "x", headers=cookie),
               "method": request(server.address, headers=cookie, method="PUT"),
               "decision": request(server.address + "api/decisions", DROP_A, {**JSON, **cookie})}
    assert [a[0] for a in answers.values()] == [303, 200, 200, 200, 403, 404, 501, 200]
    for what, (_, headers, _) in answers.items():
        policy = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy, what
        assert headers["X-Frame-Options"] == "DENY", what
        assert headers["Cross-Origin-Resource-Policy"] == "same-origin", what
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin", what
        assert headers["X-Content-Type-Options"] == "nosniff", what


def test_requests_from_another_site_are_refused_by_their_fetch_metadata(small):
    """Another site, or another local server (same-site: ports do not count), even with the
    cookie a browser would attach; the address bar and the page's own requests pass."""
    source, server = small
    cookie = key(server)
    for site in ("cross-site", "same-site"):
        other = {**cookie, "Sec-Fetch-Site": site}
        for path in ("", "api/state", "image?f=cat/a.jpg"):
            assert fetch(server.address + path, headers=other)[0] == 403, (site, path)
        assert fetch(server.address + "api/decisions", DROP_A, {**JSON, **other})[0] == 403, site
        assert fetch(server.url, headers={"Sec-Fetch-Site": site})[0] == 403, site
    assert not (source / decisions.DECISIONS_FILE).exists()
    assert fetch(server.address, headers={**cookie, "Sec-Fetch-Site": "none"})[0] == 200
    assert fetch(server.address + "api/decisions", DROP_A,
                 {**JSON, **cookie, "Sec-Fetch-Site": "same-origin"})[0] == 200


def test_half_open_connections_neither_block_the_gallery_nor_grow_its_threads(small):
    """50 clients that send half a request, then more than the bound: the page is still
    answered at once, the threads stay within the bound, and each stalled client is closed."""
    source, server = small
    server.request_timeout = 1.0
    cookie, port = key(server), server.server_port

    def half_open() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())  # never ends
        return s

    held = []
    try:
        held += [half_open() for _ in range(50)]
        wait_for(lambda: handlers() == 50)
        started = time.monotonic()
        assert fetch(server.address + "api/state", headers=cookie)[0] == 200
        assert time.monotonic() - started < server.request_timeout  # not after the stalled ones
        wait_for(lambda: handlers() == 50)
        admitted = guard.MAX_CONNECTIONS - 50
        held += [half_open() for _ in range(admitted)]
        refused = [half_open() for _ in range(16)]
        for s in refused:  # beyond the bound: answered at once, without a thread
            assert s.recv(4096).startswith(b"HTTP/1.0 503 Service Unavailable"), "no 503"
        assert handlers() == guard.MAX_CONNECTIONS
        for s in held:  # and each stalled client is closed after the timeout
            s.settimeout(server.request_timeout + 10)
            assert s.recv(4096) == b""
        wait_for(lambda: handlers() == 0)
    finally:
        for s in held:
            s.close()
    assert fetch(server.address + "api/state", headers=cookie)[0] == 200


def handlers() -> int:
    """Threads of the gallery that serve a connection."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.02)


# ---- in a real browser

def test_two_galleries_in_one_browser_each_keep_their_own_key(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    sources = [write_review(tmp_path / name, {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg"]})
               for name in ("one", "two")]
    servers = [start(source) for source in sources]
    try:
        for server in servers:
            open_gallery(browser, server, 2)
        for server, source in zip(servers, sources):
            wait = open_gallery(browser, server, 2)
            assert browser.execute_script("return document.cookie") == ""  # HttpOnly
            ActionChains(browser).send_keys("k").perform()
            wait.until(lambda d: made(source) == {"cat/a.jpg": ("keep", None)})
        assert not console_errors(browser)  # the Content-Security-Policy fits the page
    finally:
        for server in servers:
            stop(server)


HOSTILE = """<!doctype html><title>prize</title>
<iframe id="frame" src="{gallery}" width="1200" height="600" onload="document.title = 'framed'"></iframe>
<img id="thumbnail" src="{gallery}image?f=cat/a.jpg">"""


def test_a_page_on_another_local_port_can_neither_frame_the_gallery_nor_read_it(browser, small):  # noqa: F811
    """The attack: a page the user opens frames the gallery and turns keys (`a` then `d`) into
    dropping a class. Another server on 127.0.0.1 is the same site: the cookie goes along."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    source, server = small
    page = HOSTILE.format(gallery=server.address).encode()

    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    hostile = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        open_gallery(browser, server, 2)  # the user's gallery: the browser holds its cookie
        browser.get(f"http://127.0.0.1:{hostile.server_port}/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.title == "framed" and d.execute_script(
            "return document.getElementById('thumbnail').complete"))
        assert browser.execute_script("return document.getElementById('thumbnail').naturalWidth") == 0
        browser.switch_to.frame("frame")
        assert not browser.find_elements(By.CSS_SELECTOR, "#grid .card")
        ActionChains(browser).send_keys("a", "d").perform()
        browser.switch_to.default_content()
        wait = open_gallery(browser, server, 2)  # then the user decides one image
        ActionChains(browser).send_keys("k").perform()
        wait.until(lambda d: decisions.read(source))
    finally:
        hostile.shutdown()
        hostile.server_close()
    assert made(source) == {"cat/a.jpg": ("keep", None)}
