"""Issue 17, the open web: a crawled page or redirect cannot reach into the user's network, and a
redirect's body cannot exhaust memory or hold a thread."""

from __future__ import annotations

import gzip
import os
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import distinct_image
from fake_engine import Item
from toolkit.collect.addresses import ALLOW_PRIVATE_ENV, AddressPolicy, is_global
from toolkit.collect.crawler import crawl
from toolkit.collect.fetch import DownloadFailed, FetchOptions, download, new_session

IMAGE = distinct_image(1)
BOMB = gzip.compress(b"\0" * 80 * 2**20)  # 80 MiB of zeros in about 80 KB


class Server:
    """A loopback server: /image is an image; /bomb is a 302 to /image whose body is gzip of 80
    MiB; /drip is a 302 to /image whose body never ends; /to/<port> redirects to another port."""

    def __init__(self):
        outer = self
        self.hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                if self.path == "/image":
                    self._send(200, IMAGE, {"Content-Type": "image/jpeg"})
                elif self.path == "/bomb":
                    self._send(302, BOMB, {"Location": "/image", "Content-Encoding": "gzip"})
                elif self.path == "/drip":
                    self.send_response(302)
                    self.send_header("Location", "/image")
                    self.send_header("Content-Length", "100000000")
                    self.end_headers()
                    try:
                        for _ in range(600):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                elif self.path.startswith("/to/"):
                    port = self.path.split("/")[2]
                    self._send(302, b"", {"Location": f"http://127.0.0.1:{port}/image"})
                else:
                    self._send(404, b"", {})

            def _send(self, status, body, headers):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_a_redirect_body_is_never_read_so_gzip_in_a_302_costs_no_memory(server):
    session = new_session(2, AddressPolicy(allow_private=True))
    download(server.url + "/image", session, 2**20, FetchOptions())  # imports, first allocations
    tracemalloc.start()
    try:
        data = download(server.url + "/bomb", session, 2**20, FetchOptions())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == IMAGE
    assert peak < 4 * 2**20, f"following the redirect held {peak / 2**20:.0f} MiB"


def test_a_slow_redirect_body_does_not_hold_the_download(server):
    session = new_session(2, AddressPolicy(allow_private=True))
    start = time.monotonic()
    assert download(server.url + "/drip", session, 2**20, FetchOptions(timeout=5)) == IMAGE
    assert time.monotonic() - start < 5


def test_every_hop_counts_against_one_deadline_and_the_redirect_limit(server):
    session = new_session(2, AddressPolicy(allow_private=True))
    options = FetchOptions(max_redirects=0, retries=0)
    with pytest.raises(DownloadFailed) as failed:
        download(server.url + "/bomb", session, 2**20, options)
    assert failed.value.reason == "redirects"


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("169.254.169.254", False), ("192.168.0.1", False),
    ("172.16.5.4", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
    ("8.8.8.8", True), ("2606:4700:4700::1111", True)])
def test_only_global_addresses_count_as_the_open_web(address, expected):
    assert is_global(address) is expected


def test_a_private_address_is_refused_at_connect_time_and_never_asked(server):
    session = new_session(2, AddressPolicy())
    for url in (server.url + "/image", server.url.replace("127.0.0.1", "localhost") + "/image"):
        with pytest.raises(DownloadFailed) as failed:
            download(url, session, 2**20, FetchOptions(retries=0))
        assert failed.value.reason == "private_address"
        assert "--allow-private-addresses" in failed.value.detail
    assert server.hits == []


def test_a_trusted_address_cannot_redirect_into_another_private_one(server):
    other = Server()
    try:
        trusted = AddressPolicy(trusted=frozenset({("127.0.0.1", server.httpd.server_port)}))
        session = new_session(2, trusted)
        assert download(server.url + "/image", session, 2**20, FetchOptions()) == IMAGE
        with pytest.raises(DownloadFailed) as failed:
            download(server.url + f"/to/{other.httpd.server_port}", session, 2**20,
                     FetchOptions(retries=0))
        assert failed.value.reason == "private_address"
        assert other.hits == []
    finally:
        other.close()


def test_a_crawl_reads_the_users_engine_but_refuses_the_private_images_it_lists(engine, tmp_path,
                                                                               monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)
    engine.add_images("cat", range(3))
    report = crawl(["cat"], root=tmp_path, per_class=3, engines=["bing"])
    result = report.classes[0]
    assert result.new == 0 and result.failed["private_address"] == 3
    assert sum(engine.hits.values()) == 0  # no image GET reached the loopback server
    assert engine.page_hits["bing"] >= 1   # its result page did: the user set that address
    # the user's opt-in, as a flag, lets the same crawl fetch them
    report = crawl(["cat"], root=tmp_path, per_class=3, engines=["bing"], allow_private_addresses=True)
    assert report.classes[0].new == 3


def test_the_environment_opt_in_lets_a_url_list_of_the_users_intranet_be_fetched(engine, tmp_path):
    engine.items["x.jpg"] = Item(body=IMAGE)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"cat {engine.url}/img/x.jpg\n")  # the engine fixture opted in
    report = crawl([], root=tmp_path / "d", per_class=1, urls=urls)
    assert report.classes[0].new == 1


def test_two_crawls_of_one_class_at_once_the_second_stops_naming_the_first(engine, tmp_path):
    """Two crawls of `cat` at once both counted 80 of 80 and recorded 70 images twice; now the
    second stops with one line, while a crawl of another class runs beside the first."""
    from helpers import assert_one_error_line, run_cli

    engine.add_images("cat", range(4))
    engine.add_images("dog", range(10, 14))
    engine.slow_seconds = 0.5
    first = threading.Thread(target=crawl, args=(["cat"],),
                             kwargs={"root": tmp_path, "per_class": 4, "engines": ["bing"]})
    first.start()
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / ".cat.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        result = run_cli("crawl", "cat", "--root", tmp_path, "--per-class", "4", "--engine", "bing")
        assert_one_error_line(result, f"class cat in {tmp_path} is in use by another toolkit process "
                                      f"(pid {os.getpid()})")
        other = crawl(["dog"], root=tmp_path, per_class=4, engines=["bing"])
        assert other.classes[0].new == 4
    finally:
        first.join(timeout=60)
    manifest = (tmp_path / "cat.manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 4 == len(list((tmp_path / "cat").iterdir()))
    assert not (tmp_path / ".cat.lock").exists()


def test_a_crawl_never_logs_through_a_link(engine, tmp_path):
    from helpers import assert_one_error_line, run_cli

    outside = tmp_path / "bashrc"
    outside.write_text("# profile\n")
    root = tmp_path / "d"
    root.mkdir()
    (root / "crawl.log").symlink_to(outside)
    engine.add_images("cat", range(2))
    result = run_cli("crawl", "cat", "--root", root, "--per-class", "2", "--engine", "bing")
    assert_one_error_line(result, "crawl.log is a symbolic link")
    assert outside.read_text() == "# profile\n"
