"""The review gallery: a page on 127.0.0.1 where a person keeps, drops or moves images.

It shows SOURCE/review.json per class, suspects first, and records every decision at once
in SOURCE/decisions.jsonl (:mod:`toolkit.decisions`). The server binds 127.0.0.1 only,
answers only for the images review judged (never a path it is given), accepts decisions
only as JSON from its own page's origin, and writes nothing but decisions.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import decisions, images
from .decisions import REVIEW_FILE
from .errors import ToolkitError
from .reviewer import thumbnail

HOST = "127.0.0.1"
THUMBNAIL = 256
MAX_BODY = 4 * 2**20


class Gallery(ThreadingHTTPServer):
    """The server, with what it serves: the review and the decisions of one SOURCE."""

    daemon_threads = True

    def __init__(self, source: str | os.PathLike, port: int = 0,
                 checks: images.Checks = images.Checks()):
        self.source = Path(source)
        path = self.source / REVIEW_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            self.class_names = [str(c) for c in state["class_names"]]
            self.entries = {e["file"]: e for e in state["images"]}
        except FileNotFoundError:
            raise ToolkitError(f"{path} is missing: run `toolkit review {source}` first") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ToolkitError(f"{path} is damaged ({type(e).__name__}); run `toolkit review "
                               f"{source}` again") from None
        self.checks = checks
        self.thumbnails: dict[str, bytes] = {}
        self.thumbnail_lock = threading.Lock()
        try:
            super().__init__((HOST, port), Handler)
        except OSError as e:
            raise ToolkitError(f"cannot listen on {HOST}:{port} ({e.strerror}); pass another "
                               "--port, or none for a free one") from None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}/"

    def state(self) -> dict:
        made = decisions.read(self.source)
        return {"source": str(self.source), "class_names": self.class_names,
                "images": list(self.entries.values()),
                "decisions": {f: _public(d) for f, d in made.items() if f in self.entries}}

    def thumbnail(self, file: str) -> bytes:
        with self.thumbnail_lock:
            cached = self.thumbnails.get(file)
        if cached is None:
            cached = thumbnail(self.source / file, THUMBNAIL, self.checks)
            with self.thumbnail_lock:
                self.thumbnails[file] = cached
        return cached

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
        return {d.file: _public(d) for d in decisions.append(self.source, wanted)}


def _public(d: decisions.Decision) -> dict:
    return {"action": d.action, "label": d.label}


class Handler(BaseHTTPRequestHandler):
    server: Gallery
    server_version = "toolkit-gallery"

    def log_message(self, format, *args):  # quiet: the terminal shows the address only
        pass

    def do_GET(self):
        if not self._host_ok():
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain")
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
        if not self._host_ok():
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain")
        if urlsplit(self.path).path != "/api/decisions":
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != self.server.url.rstrip("/"):
            return self._send(HTTPStatus.FORBIDDEN, b"foreign origin\n", "text/plain")
        if self.headers.get_content_type() != "application/json":
            return self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"send JSON\n", "text/plain")
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ValueError("bad length")
            body = json.loads(self.rfile.read(length))
            recorded = self.server.decide(body["decisions"])
        except (ValueError, KeyError, TypeError) as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        self._json(HTTPStatus.OK, {"decisions": recorded})

    def _host_ok(self) -> bool:
        """Only our own address: a page elsewhere cannot reach us by DNS rebinding."""
        port = self.server.server_port
        return self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)


def serve(source: str | os.PathLike, *, port: int = 0, open_browser: bool = True,
          checks: images.Checks = images.Checks(), echo: Callable[[str], None] = print) -> None:
    """Serve the gallery of SOURCE until Ctrl-C (or SIGTERM turned into it)."""
    server = Gallery(source, port, checks)
    echo(f"gallery: {server.url}  (Ctrl-C to stop)")
    if open_browser and _can_open_browser():
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    echo(f"gallery stopped; decisions are in {Path(source) / decisions.DECISIONS_FILE}")


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


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>toolkit review</title><link rel="icon" href="data:,">
<style>
*{box-sizing:border-box} body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f4}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ccc;padding:8px 16px}
header h1{font-size:16px;margin:0 12px 0 0;display:inline}
.tabs button,.filters button{margin:2px;padding:4px 10px;border:1px solid #999;background:#fff;border-radius:4px;cursor:pointer}
.tabs button.on,.filters button.on{background:#234;color:#fff}
.bar{margin-top:6px} .bar>*{margin-right:10px} .keys{color:#555;font-size:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px;padding:12px 16px}
.card{background:#fff;border:3px solid #ddd;border-radius:6px;padding:6px;position:relative}
.card.suspect{border-color:#e0a030} .card.focus{outline:3px solid #2a6fdb;outline-offset:2px}
.card.selected{background:#dbe8ff} .card img{width:100%;aspect-ratio:1;object-fit:cover;display:block;cursor:pointer}
.card.drop img{opacity:.35} .card.drop{border-color:#c33} .card.move{border-color:#37a} .card.keep{border-color:#3a3}
.verdict{font-weight:600} .verdict.fine{color:#2a2;font-weight:400} .note{font-size:12px;color:#444;min-height:1.2em}
.decision{font-size:12px;font-weight:600;min-height:1.2em} .file{font-size:11px;color:#777;overflow-wrap:anywhere}
.actions{display:flex;gap:4px;margin-top:4px} .actions button,.actions select{flex:1;padding:3px}
#status{color:#a00}
</style></head><body>
<header><h1>toolkit review</h1><span id="source"></span>
<div class="tabs" id="tabs"></div>
<div class="bar"><span class="filters" id="filters"></span>
<span><b id="nselected">0</b> selected</span>
<button id="bulk-keep">Keep selected</button><button id="bulk-drop">Drop selected</button>
<select id="bulk-move"><option value="">Move selected to...</option></select>
<span id="status"></span></div>
<div class="keys">Keys: arrows move, <b>x</b>/space select, <b>a</b> select all shown, <b>Esc</b> clear,
<b>k</b> keep, <b>d</b> drop, <b>1</b>-<b>9</b> move to class n, <b>[</b> <b>]</b> previous/next class.
A key acts on the selection, or on the focused image when nothing is selected.</div>
</header>
<main id="grid"></main>
<script>
"use strict";
const FILTERS = ["all", "suspects", "decided"];
let state = null, klass = null, filter = "all", focus = 0, selected = new Set();
const $ = (id) => document.getElementById(id);

function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("class") && state.class_names.includes(h.get("class"))) klass = h.get("class");
  if (FILTERS.includes(h.get("filter"))) filter = h.get("filter");
}
function toHash() { history.replaceState(null, "", "#class=" + encodeURIComponent(klass) + "&filter=" + filter); }

async function load() {
  const r = await fetch("/api/state", {cache: "no-store"});
  state = await r.json();
  klass = state.class_names[0];
  fromHash();
  $("source").textContent = state.source;
  for (const c of state.class_names) {
    const o = document.createElement("option"); o.value = c; o.textContent = "Move selected to " + c; $("bulk-move").append(o);
  }
  render();
}

function shown() {
  let list = state.images.filter((e) => e.label === klass);
  if (filter === "suspects") list = list.filter((e) => e.suspect);
  if (filter === "decided") list = list.filter((e) => state.decisions[e.file]);
  return list.sort((a, b) => (b.suspect - a.suspect) || (b.score - a.score) || a.file.localeCompare(b.file));
}

function decisionText(d) {
  if (!d) return "";
  return d.action === "move" ? "moved to " + d.label : d.action === "drop" ? "dropped" : "kept";
}

function render() {
  const tabs = $("tabs"); tabs.replaceChildren();
  state.class_names.forEach((c, i) => {
    const mine = state.images.filter((e) => e.label === c);
    const b = document.createElement("button");
    b.textContent = (i + 1) + " " + c + " (" + mine.filter((e) => e.suspect).length + " suspects / " + mine.length + ")";
    b.className = c === klass ? "on" : ""; b.dataset.klass = c;
    b.onclick = () => { klass = c; focus = 0; selected.clear(); render(); };
    tabs.append(b);
  });
  const filters = $("filters"); filters.replaceChildren();
  for (const f of FILTERS) {
    const b = document.createElement("button"); b.textContent = f; b.className = f === filter ? "on" : "";
    b.dataset.filter = f; b.onclick = () => { filter = f; focus = 0; selected.clear(); render(); };
    filters.append(b);
  }
  const grid = $("grid"); grid.replaceChildren();
  const list = shown();
  focus = Math.min(focus, Math.max(list.length - 1, 0));
  list.forEach((e, i) => grid.append(card(e, i)));
  $("nselected").textContent = selected.size;
  toHash();
}

function card(e, i) {
  const d = state.decisions[e.file];
  const el = document.createElement("div");
  el.className = "card" + (e.suspect ? " suspect" : "") + (d ? " " + d.action : "") +
    (i === focus ? " focus" : "") + (selected.has(e.file) ? " selected" : "");
  el.dataset.file = e.file; el.dataset.index = i;
  const img = document.createElement("img"); img.loading = "lazy"; img.alt = e.file;
  img.src = "/image?f=" + encodeURIComponent(e.file);
  img.onclick = (ev) => { focus = i; toggle(e.file); };
  const v = document.createElement("div"); v.className = "verdict " + e.reason;
  v.textContent = e.reason + " " + e.score.toFixed(2);
  const note = document.createElement("div"); note.className = "note";
  note.textContent = e.suggested ? "looks like " + e.suggested : "";
  const dec = document.createElement("div"); dec.className = "decision"; dec.textContent = decisionText(d);
  const file = document.createElement("div"); file.className = "file"; file.textContent = e.file;
  const actions = document.createElement("div"); actions.className = "actions";
  const keep = document.createElement("button"); keep.textContent = "Keep"; keep.className = "keep";
  keep.onclick = () => decide([e.file], "keep");
  const drop = document.createElement("button"); drop.textContent = "Drop"; drop.className = "drop";
  drop.onclick = () => decide([e.file], "drop");
  const move = document.createElement("select"); move.className = "move";
  move.append(new Option("Move to...", ""));
  for (const c of state.class_names) if (c !== e.label) move.append(new Option(c, c));
  move.onchange = () => { if (move.value) decide([e.file], "move", move.value); };
  actions.append(keep, drop, move);
  el.append(img, v, note, dec, file, actions);
  return el;
}

function toggle(file) {
  selected.has(file) ? selected.delete(file) : selected.add(file);
  render();
}

function targets() {
  if (selected.size) return [...selected];
  const list = shown();
  return list.length ? [list[focus].file] : [];
}

async function decide(files, action, label) {
  if (!files.length) return;
  const body = {decisions: files.map((f) => ({file: f, action: action, label: label || null}))};
  try {
    const r = await fetch("/api/decisions", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify(body)});
    const reply = await r.json();
    if (!r.ok) throw new Error(reply.error || r.statusText);
    Object.assign(state.decisions, reply.decisions);
    $("status").textContent = "";
    selected.clear();
    render();
  } catch (err) {
    $("status").textContent = "not saved: " + err.message;
  }
}

function columns() {
  const cards = $("grid").children;
  if (cards.length < 2) return 1;
  const top = cards[0].offsetTop; let n = 0;
  while (n < cards.length && cards[n].offsetTop === top) n++;
  return n;
}

document.addEventListener("keydown", (ev) => {
  if (!state || ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.tagName === "SELECT") return;
  const list = shown(), n = list.length;
  const go = (i) => { focus = Math.max(0, Math.min(n - 1, i)); render();
                      const el = $("grid").children[focus]; if (el) el.scrollIntoView({block: "nearest"}); };
  const k = ev.key;
  if (k === "ArrowRight") go(focus + 1);
  else if (k === "ArrowLeft") go(focus - 1);
  else if (k === "ArrowDown") go(focus + columns());
  else if (k === "ArrowUp") go(focus - columns());
  else if (k === "x" || k === " ") { if (n) toggle(list[focus].file); }
  else if (k === "a") { list.forEach((e) => selected.add(e.file)); render(); }
  else if (k === "Escape") { selected.clear(); render(); }
  else if (k === "k") decide(targets(), "keep");
  else if (k === "d") decide(targets(), "drop");
  else if (/^[1-9]$/.test(k) && +k <= state.class_names.length) decide(targets(), "move", state.class_names[+k - 1]);
  else if (k === "[" || k === "]") {
    const i = state.class_names.indexOf(klass) + (k === "]" ? 1 : -1);
    klass = state.class_names[(i + state.class_names.length) % state.class_names.length];
    focus = 0; selected.clear(); render();
  } else return;
  ev.preventDefault();
});
$("bulk-keep").onclick = () => decide(targets(), "keep");
$("bulk-drop").onclick = () => decide(targets(), "drop");
$("bulk-move").onchange = (ev) => { if (ev.target.value) decide(targets(), "move", ev.target.value); ev.target.value = ""; };
load();
</script></body></html>
"""
