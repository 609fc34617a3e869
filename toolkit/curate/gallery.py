"""The review gallery: a page on 127.0.0.1 where a person keeps, drops or moves images.

It shows SOURCE/review.json per class, suspects first, and records every decision at once
in SOURCE/decisions.jsonl (:mod:`toolkit.core.decisions`). The server binds 127.0.0.1 only,
answers only its own page holding this launch's key (:mod:`toolkit.curate.guard`), only for
the images review judged (never a path it is given), accepts decisions only as JSON, and
writes nothing but decisions.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..collect import manifest
from ..core import decisions, images
from ..core.errors import ToolkitError
from ..core.sources import class_folders, inside, list_files, printable
from . import guard
from .review_page import cropped_jpeg
from .verdicts import read_review

HOST = "127.0.0.1"
THUMBNAIL_SIDE = 256  # of the square JPEGs the gallery shows (review.html's are smaller)
THUMBNAILS_KEPT = 2000  # in memory, ~15 KB each: a class of a crawl and then some
MAX_BODY = 4 * 2**20
DISCARD_LIMIT = 64 * 2**20  # a larger body is not read at all: the connection just closes
PAGE = (Path(__file__).with_name("gallery.html")).read_text(encoding="utf-8")  # the page and its script
POLICY = guard.page_policy(PAGE)


class Gallery(guard.GuardedServer):
    """The server, with what it serves: the review and the decisions of one SOURCE."""

    def __init__(self, source: str | os.PathLike, port: int = 0,
                 checks: images.Checks = images.Checks()):
        self.source = Path(source)
        judged = read_review(source)
        self.class_names, self.entries = judged.class_names, judged.entries
        self.checks = checks
        self.thumbnails: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.thumbnail_lock = threading.Lock()
        self.odd_names: dict[str, Path] | None = None  # see path_of
        try:
            super().__init__((HOST, port), Handler, POLICY)
        except OSError as e:
            raise _cannot_listen(port, e) from None

    def state(self) -> dict:
        made = decisions.read(self.source)
        return {"source": str(self.source), "class_names": self.class_names,
                "images": list(self.entries.values()),
                "decisions": {f: _public(d) for f, d in made.items() if f in self.entries}}

    def thumbnail(self, file: str) -> bytes:
        """The gallery's JPEG of an image of the review, kept for the images shown last."""
        with self.thumbnail_lock:
            cached = self.thumbnails.get(file)
            if cached is not None:
                self.thumbnails.move_to_end(file)
        if cached is None:
            cached = cropped_jpeg(self.path_of(file), THUMBNAIL_SIDE, self.checks)
            with self.thumbnail_lock:
                self.thumbnails[file] = cached
                while len(self.thumbnails) > THUMBNAILS_KEPT:  # the least recently shown go
                    self.thumbnails.popitem(last=False)
        return cached

    def path_of(self, file: str) -> Path:
        """The file an image of the review is, never one outside its class folder: review.json
        is read from a folder someone may have shared, and names what it likes."""
        path = self._named(file)
        label, _, rest = file.partition("/")
        relative = Path(file)
        if (not rest or relative.is_absolute() or ".." in relative.parts
                or not inside(path, (self.source / label).resolve())):
            raise images.Unusable("unreadable", "not inside its class folder")
        return path

    def _named(self, file: str) -> Path:
        """The path of a name under SOURCE. Bytes of a name that are not UTF-8 are written \\xNN
        in it (:func:`sources.printable`): such a name is found again among the files pack
        would list."""
        path = self.source / file
        if "\\x" not in file or path.exists():
            return path
        with self.thumbnail_lock:
            if self.odd_names is None:
                try:
                    folders = class_folders(self.source)
                except ToolkitError:  # SOURCE changed since the review
                    folders = []
                self.odd_names = {printable(str(p.relative_to(self.source))): p
                                  for _, folder in folders for p in list_files(folder)}
            return self.odd_names.get(file, path)

    def decide(self, requested: list) -> dict:
        """Validate and record decisions; return them as recorded, by file."""
        wanted = []
        for item in requested:
            if not isinstance(item, dict) or item.get("file") not in self.entries:
                raise ValueError("decisions are about images of this review only")
            action, label = item.get("action"), item.get("label")
            if action not in decisions.ACTIONS:
                raise ValueError(f"action must be one of {', '.join(decisions.ACTIONS)}")
            if action == decisions.MOVE and label not in self.class_names:
                raise ValueError("a move needs one of the classes")
            if action == decisions.MOVE and label == self.entries[item["file"]]["label"]:
                action = decisions.KEEP  # moved to where it is
            wanted.append(decisions.Decision(item["file"], action,
                                             label if action == decisions.MOVE else None))
        return {d.file: _public(d) for d in record(self.source, wanted)}


def record(source: str | os.PathLike, made: list[decisions.Decision]) -> list[decisions.Decision]:
    """Record decisions in SOURCE/decisions.jsonl, each with the URL its crawl found the image at
    (from the class's manifest), so that a top-up never fetches a dropped image again, even
    once its file is gone."""
    urls: dict[str, dict[str, str]] = {}  # per class, the manifest's URL of each file

    def url_of(file: str) -> str | None:
        label, _, name = file.partition("/")
        if label not in urls:
            urls[label] = manifest.file_urls(source, label)
        return urls[label].get(name)

    return decisions.append(source, made, url_of)


def _public(d: decisions.Decision) -> dict:
    return {"action": d.action, "label": d.label}


class Handler(guard.GuardedHandler):
    server: Gallery
    server_version = "toolkit-gallery"

    def log_message(self, template, *args):  # quiet: the terminal shows the address only
        pass

    def do_GET(self):
        if not self.admit():
            return
        parts = urlsplit(self.path)
        if parts.path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        if parts.path == "/api/state":
            return self._json(HTTPStatus.OK, self.server.state())
        if parts.path == "/image":
            file = parse_qs(parts.query).get("f", [""])[0]
            if file not in self.server.entries:  # never a path from the request
                return self._send(HTTPStatus.FORBIDDEN, b"not an image of this review\n",
                                  "text/plain")
            try:
                data = self.server.thumbnail(file)
            except images.Unusable:
                return self._send(HTTPStatus.NOT_FOUND, b"image changed or gone\n", "text/plain")
            return self._send(HTTPStatus.OK, data, "image/jpeg", cache=True)
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self):
        if not self.admit():
            return
        if urlsplit(self.path).path != "/api/decisions":
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        if self.headers.get_content_type() != "application/json":
            return self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"send JSON\n", "text/plain")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > MAX_BODY:
            if length <= DISCARD_LIMIT:  # read it, so that the client gets to read the answer
                for start in range(0, length, 2**16):
                    self.rfile.read(min(2**16, length - start))
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"error": f"more than {MAX_BODY} bytes: decide on fewer images at once"})
        try:
            if length <= 0:
                raise ValueError("bad length")
            body = json.loads(self.rfile.read(length))
            recorded = self.server.decide(body["decisions"])
        except (ValueError, KeyError, TypeError) as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except RecursionError:  # JSON nested deeper than Python's stack: not a decision
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "JSON nested too deep"})
        self._json(HTTPStatus.OK, {"decisions": recorded})

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")


def serve(source: str | os.PathLike, *, port: int = 0, open_browser: bool = True,
          checks: images.Checks = images.Checks(), echo: Callable[[str], None] = print) -> None:
    """Serve the gallery of SOURCE until Ctrl-C (or SIGTERM turned into it)."""
    server = Gallery(source, port, checks)
    echo(f"gallery: {server.url}  (good for one browser; Ctrl-C to stop)")
    if open_browser and _can_open_browser():
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    echo(f"gallery stopped; decisions are in {Path(source) / decisions.DECISIONS_FILE}")


def check_port(port: int) -> None:
    """Raise the error `serve` would, now: before a long review, not after it."""
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            try:
                probe.bind((HOST, port))
            except OSError as e:
                raise _cannot_listen(port, e) from None


def _cannot_listen(port: int, e: OSError) -> ToolkitError:
    return ToolkitError(f"cannot listen on {HOST}:{port} ({e.strerror}); pass another --port, "
                        "or none for a free one")


def _can_open_browser() -> bool:
    """A graphical browser can exist: a display (or macOS, Windows) and a terminal user."""
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not graphical or not sys.stdout.isatty():
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True

