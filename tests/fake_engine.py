"""A loopback HTTP server that answers like Bing, DuckDuckGo, Baidu and Google image search.

It serves result pages in each engine's real format (so icrawler's parsers and ddgs read
them) and the images they point to, some of them bad on purpose. An engine can be made to
fail as real ones do (`modes`): refuse every page, answer a captcha, send markup its parser
cannot read, or make the parser raise. Tests point the crawler at it with
TOOLKIT_<ENGINE>_URL (TOOLKIT_DDG_URL for DuckDuckGo).
"""

from __future__ import annotations

import collections
import html
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


def distinct_image(seed: int, size: tuple[int, int] = (160, 120), fmt: str = "JPEG",
                   mode: str = "RGB") -> bytes:
    """An image whose perceptual hash differs from every other seed's: a random 6x6 colour grid."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize(size, Image.Resampling.NEAREST)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def near_copy(data: bytes) -> bytes:
    """The same picture resized and recompressed: a near-duplicate."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((image.width * 9 // 10, image.height * 9 // 10))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def baidu_encode(url: str) -> str:
    """Inverse of icrawler's BaiduParser._decode_url, as Baidu's objURL is encoded."""
    plain_to_code = {"a": "w", "b": "k", "c": "v", "d": "1", "e": "j", "f": "u", "g": "2",
                     "h": "i", "i": "t", "j": "3", "k": "h", "l": "s", "m": "4", "n": "g",
                     "o": "5", "p": "r", "q": "q", "r": "6", "s": "f", "t": "p", "u": "7",
                     "v": "e", "w": "o", "1": "8", "2": "d", "3": "n", "4": "9", "5": "c",
                     "6": "m", "7": "0", "8": "b", "9": "l", "0": "a"}
    specials = {":": "_z2C$q", ".": "_z&e3B", "/": "AzdH3F"}
    return "".join(specials.get(c) or plain_to_code.get(c, c) for c in url)


@dataclass
class Item:
    """What the server answers for one image path."""

    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    #: "", "slow" (drips a byte every 50 ms), "stall" (half the body, then 5 s of nothing),
    #: "redirect_loop", "redirect_file", "huge", "endless", "fail_once"
    behaviour: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent with the answer (Retry-After)
    redirects: int = 0  # answered after this many redirects (to itself, ?hop=1, 2, ...)
    page: str | None = None   # the page the image is "found on", as engines report it
    title: str | None = None
    calls: int = 0
    times: list[float] = field(default_factory=list)  # when each request arrived (monotonic)


@dataclass
class FakeEngine:
    results: dict[str, list[str]] = field(default_factory=dict)  # keyword -> image names
    items: dict[str, Item] = field(default_factory=dict)
    hits: collections.Counter = field(default_factory=collections.Counter)
    page_hits: collections.Counter = field(default_factory=collections.Counter)
    #: engine -> how it fails: "down" (503), "forbidden" (403), "captcha" (a 200 page with no
    #: results), "garbled" (markup its parser cannot read), "raises" (its parser raises)
    modes: dict[str, str] = field(default_factory=dict)
    page_requests: list[tuple[str, dict]] = field(default_factory=list)  # (engine, query)
    slow_seconds: float = 0.0  # delay before answering any image (for interrupt tests)
    in_flight: int = 0         # image requests being answered now, and the most at once
    most_in_flight: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                engine.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- set-up helpers
    def add(self, keyword: str, name: str, item: Item) -> str:
        """Serve `item` at /img/<name> and list it in `keyword`'s results."""
        self.items[name] = item
        self.results.setdefault(keyword, []).append(name)
        return f"{self.url}/img/{name}"

    def add_images(self, keyword: str, seeds, prefix: str = "") -> list[str]:
        return [self.add(keyword, f"{prefix}{keyword_slug(keyword)}{s}.jpg",
                         Item(distinct_image(s))) for s in seeds]

    # ---- serving
    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path.startswith("/img/"):
            return self._image(request, parts.path[5:])
        engine = {"/images/async": "bing", "/search/acjson": "baidu", "/search": "google",
                  "/": "duckduckgo", "/i.js": "duckduckgo"}.get(parts.path)
        if engine is None:
            return self._send(request, 404, b"not found", "text/plain")
        with self.lock:
            self.page_hits[engine] += 1
            self.page_requests.append((engine, query))
        mode = self.modes.get(engine, "")
        if mode in ("down", "forbidden"):
            return self._send(request, 503 if mode == "down" else 403, b"go away", "text/plain")
        if mode == "captcha":
            body = b"<html><body><h1>Please verify you are a human</h1><form></form></body></html>"
            return self._send(request, 200, body, "text/html")
        keyword = query.get("q") or query.get("word") or ""
        if parts.path == "/":  # DuckDuckGo's search page, which carries the vqd token
            return self._send(request, 200, f'<html><script>vqd="4-{len(keyword)}"</script></html>'
                              .encode(), "text/html")
        offset = int(query.get("first") or query.get("pn") or query.get("start")
                     or query.get("s") or 0)
        step = {"bing": 20, "baidu": 30, "google": 100, "duckduckgo": 100}[engine]
        names = self.results.get(keyword, [])[offset:offset + step]
        found = [(f"{self.url}/img/{n}", self.items[n]) for n in names]
        body, ctype = getattr(self, f"_{engine}_page")(found, mode)
        self._send(request, 200, body, ctype)

    @staticmethod
    def _bing_page(found, mode):
        def meta(url, item):
            m = {"murl": url, "purl": item.page or f"http://pages.example/{url.rsplit('/', 1)[1]}",
                 "t": item.title or url.rsplit("/", 1)[1]}
            return html.escape(json.dumps(m, separators=(",", ":")))
        if mode == "garbled":  # a redesign: the results are there, but not where the parser looks
            divs = "".join(f'<li class="tile" data-src="{u}"></li>' for u, _ in found)
        else:
            divs = "".join(f'<div class="imgpt"><a class="iusc" m="{meta(u, item)}" href="#">'
                           '<img src="x"></a></div>' for u, item in found)
        return f"<html><body>{divs}</body></html>".encode(), "text/html; charset=utf-8"

    @staticmethod
    def _baidu_page(found, mode):
        if mode == "garbled":
            return b"<html>not json</html>", "text/html"
        data = [{"objURL": baidu_encode(u)} for u, _ in found] + [{}]
        key = "items" if mode == "raises" else "data"  # icrawler's parser reads ["data"]
        return json.dumps({key: data}).encode(), "application/json"

    @staticmethod
    def _google_page(found, mode):
        rows = ",".join(f'["{u}",300,200]' for u, _ in found)
        script = f"<script>AF_initDataCallback({{key: 'ds:1', data:[{rows}]}});</script>"
        return f"<html><head>{script}</head><body></body></html>".encode(), "text/html"

    @staticmethod
    def _duckduckgo_page(found, mode):
        if mode in ("garbled", "raises"):
            return b"<html>we changed our API</html>", "text/html"
        results = [{"title": item.title or u.rsplit("/", 1)[1], "image": u, "thumbnail": u,
                    "url": item.page or f"http://ddg-pages.example/{u.rsplit('/', 1)[1]}",
                    "height": 120, "width": 160, "source": "Bing"} for u, item in found]
        return json.dumps({"results": results}).encode(), "application/json"

    def _image(self, request, name: str) -> None:
        with self.lock:
            self.hits[name] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            item = self.items.get(name)
            if item is not None:
                item.calls += 1
                item.times.append(time.monotonic())
        try:
            if self.slow_seconds:
                time.sleep(self.slow_seconds)
        finally:
            # counted until the answer is sent, not until this thread is done with it: a
            # client that has its answer may start its next request before this thread runs on
            with self.lock:
                self.in_flight -= 1
        self._answer_image(request, name, item)

    def _answer_image(self, request, name: str, item: Item | None) -> None:
        if item is None:
            return self._send(request, 404, b"no such image", "text/plain")
        hop = int(parse_qs(urlsplit(request.path).query).get("hop", ["0"])[0])
        if hop < item.redirects:
            request.send_response(302)
            request.send_header("Location", f"/img/{name}?hop={hop + 1}")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if item.behaviour == "redirect_loop":
            request.send_response(302)
            request.send_header("Location", f"/img/{name}")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if item.behaviour == "redirect_file":
            request.send_response(302)
            request.send_header("Location", "file:///etc/passwd")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if item.behaviour == "fail_once" and item.calls == 1:
            request.send_response(429)
            request.send_header("Retry-After", "0")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if item.behaviour == "huge":  # claims 2 GB; sends a little, then hangs up
            request.send_response(200)
            request.send_header("Content-Type", item.content_type)
            request.send_header("Content-Length", str(2 * 2**30))
            request.end_headers()
            request.wfile.write(b"\xff" * 1024)
            return
        if item.behaviour == "endless":  # no Content-Length, streams until cut off
            request.send_response(200)
            request.send_header("Content-Type", item.content_type)
            request.end_headers()
            try:
                for _ in range(100_000):
                    request.wfile.write(b"\xff" * 65536)
            except OSError:
                pass
            return
        if item.behaviour == "stall":  # half the body, then nothing: a server gone quiet
            request.send_response(200)
            request.send_header("Content-Type", item.content_type)
            request.send_header("Content-Length", str(len(item.body)))
            request.end_headers()
            try:
                request.wfile.write(item.body[:len(item.body) // 2])
                request.wfile.flush()
            except OSError:
                pass
            time.sleep(5)
            return
        if item.behaviour == "slow":  # drips one byte at a time
            request.send_response(200)
            request.send_header("Content-Type", item.content_type)
            request.send_header("Content-Length", str(len(item.body)))
            request.end_headers()
            try:
                for i in range(len(item.body)):
                    request.wfile.write(item.body[i:i + 1])
                    request.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            return
        self._send(request, item.status, item.body, item.content_type, item.headers)

    @staticmethod
    def _send(request, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            request.send_response(status)
            for key, value in (headers or {}).items():
                request.send_header(key, value)
            request.send_header("Content-Type", ctype)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass


def keyword_slug(keyword: str) -> str:
    return "".join(c for c in keyword if c.isascii() and c.isalnum()) or "k"
