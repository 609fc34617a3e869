"""Benchmark `toolkit crawl`: is a crawl bound by the network's latency, or by the toolkit?

A loopback server answers like Bing (result pages, then the images they list), adding a
fixed latency to every request, as a distant server would. The images are spread over
several hosts (127.0.0.1, 127.0.0.2, ...), as search results are, so that the per-host
limit does not bind. A crawl of C classes x N images cannot take less than
requests x latency / threads; the ratio of the measured time (less the toolkit's start-up)
to that bound says how much the toolkit itself adds (decoding, hashing, deduplicating,
writing, fsync); a last run without latency shows what the toolkit alone takes.

    python scripts/bench_crawl.py [--classes 3] [--per-class 400] [--latency 0.1] [--threads 4 16]
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from _bench import machine, table, toolkit_command

HOSTS = 8  # 127.0.0.1 ... 127.0.0.8: loopback answers on all of 127/8 (Linux)
PAGE = 20  # results per Bing page




def image(seed: int) -> bytes:
    """A 200x150 JPEG of a random 6x6 colour grid: every seed a distinct picture."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grid).resize((200, 150), Image.Resampling.NEAREST).save(buffer, "JPEG")
    return buffer.getvalue()


class SlowEngine:
    """Bing-format result pages and their images, each answer `latency` seconds late."""

    def __init__(self, classes: list[str], per_class: int, latency: float):
        self.latency = latency
        listed = per_class + per_class // 20  # a few spare: two random grids may look alike
        self.images = {f"{label}{i}.jpg": image(k * 100_000 + i)
                       for k, label in enumerate(classes) for i in range(listed)}
        self.results = {label: [f"{label}{i}.jpg" for i in range(listed)] for label in classes}
        self.requests = 0
        self.lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def log_message(self, *args):
                pass

            def do_GET(self):
                engine.answer(self)

        self.servers = []
        for host in range(1, HOSTS + 1):
            server = ThreadingHTTPServer((f"127.0.0.{host}", 0), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self.servers.append(server)
        self.url = f"http://127.0.0.1:{self.servers[0].server_address[1]}"

    def image_url(self, name: str) -> str:
        server = self.servers[hash(name) % HOSTS]
        host, port = server.server_address
        return f"http://{host}:{port}/img/{name}"

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests += 1
        time.sleep(self.latency)
        parts = urlsplit(request.path)
        if parts.path.startswith("/img/"):
            body, ctype = self.images.get(parts.path[5:], b""), "image/jpeg"
        else:
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            first = int(query.get("first", 0))
            names = self.results.get(query.get("q", ""), [])[first:first + PAGE]
            divs = "".join(
                '<div class="imgpt"><a class="iusc" m="{}" href="#"></a></div>'.format(
                    html.escape(json.dumps({"murl": self.image_url(n)}))) for n in names)
            body, ctype = f"<html><body>{divs}</body></html>".encode(), "text/html"
        request.send_response(200 if body else 404)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to each request")
    parser.add_argument("--threads", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-minute average)")
    labels = [f"class{k}" for k in range(args.classes)]
    engine = SlowEngine(labels, args.per_class, args.latency)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import toolkit.cli, toolkit.collect.crawler"], check=True)
    startup = time.perf_counter() - start
    rows = []
    try:
        # the last run has no latency: what the toolkit itself costs, at the most threads
        for threads, latency in [*((t, args.latency) for t in args.threads),
                                 (max(args.threads), 0.0)]:
            engine.latency = latency
            with tempfile.TemporaryDirectory() as root:
                engine.requests = 0
                command = toolkit_command("crawl", *labels, "--root", root, "--per-class",
                                          str(args.per_class), "--engine", "bing", "--threads",
                                          str(threads))
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                # the images lie on loopback addresses, which a crawl fetches only when told to
                env = {**os.environ, "TOOLKIT_BING_URL": engine.url, "TOOLKIT_ALLOW_PRIVATE_ADDRESSES": "1"}
                process = subprocess.run(command, env=env,
                                         capture_output=True, text=True, check=False)
                seconds = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                if process.returncode != 0:
                    sys.exit(f"crawl failed:\n{process.stdout}\n{process.stderr}")
                kept = sum(1 for _ in Path(root).glob("*/*.jpg"))
                crawling = seconds - startup
                bound = engine.requests * latency / threads
                rows.append([threads, f"{latency * 1000:.0f}", kept, engine.requests,
                             f"{crawling:.1f}", f"{bound:.1f}",
                             f"{crawling / bound:.2f}" if bound else "-",
                             f"{kept / crawling:.0f}", f"{cpu:.1f}"])
    finally:
        engine.close()
    print(f"load after: {os.getloadavg()[0]:.2f} (1-minute average)")
    print(f"\n{args.classes} classes x {args.per_class} images, images on {HOSTS} hosts "
          "(per-host limit: the default); crawl CPU = the crawl process's user + system time\n")
    print(f"start-up (importing the toolkit, subtracted): {startup:.1f} s\n")
    print(table(["threads", "latency (ms)", "images kept", "requests", "crawling (s)",
                 "latency bound (s)", "crawling / bound", "images/s", "crawl CPU (s)"], rows))


if __name__ == "__main__":
    main()
