"""Who may talk to the review gallery: its own page, holding this launch's key, over a bounded
number of connections that each get a bounded time.

127.0.0.1 keeps the web out, but not the other users and processes of the machine, nor the
pages open in the user's browser, which can make it send requests to any local port. So:

- the address the gallery prints (and opens) carries a token good for one exchange: for an
  HttpOnly, SameSite=Strict cookie named for the port, which every other request must carry
  (compared in constant time). Not `Secure`: the browser would not send it back over http;
- the Host must be the gallery's own (no DNS rebinding), and so must an Origin; a browser's
  `Sec-Fetch-Site` must say that the request comes from the gallery's own page or from the
  address bar (a client that sends no fetch metadata, such as curl, needs the cookie only);
- every answer forbids framing and use by other origins;
- at most MAX_CONNECTIONS connections at once (beyond them: 503 at once), and each read or
  write of a connection waits REQUEST_TIMEOUT seconds at most.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "token"  # the query parameter of the printed address
MAX_CONNECTIONS = 64  # a browser opens 6 per host; the rest of the bound is for other tabs and tools
REQUEST_TIMEOUT = 10.0  # seconds: a request on loopback arrives in milliseconds
OWN_SITES = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests and the address bar

NO_KEY = "no key: open the address that `toolkit review --serve` printed"
USED_KEY = ("this address was opened already (it is good once), or is from an earlier launch: "
            "go on in the browser that opened it, or start `toolkit review --serve` again")


def page_policy(page: str) -> str:
    """The Content-Security-Policy of every answer: the page's own inline script and style (by
    their hashes), its own thumbnails and API, nothing else; and no framing by anyone."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in bodies) or "'none'"

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def security_headers(policy: str) -> list[tuple[str, str]]:
    return [("Content-Security-Policy", policy), ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"), ("Cross-Origin-Resource-Policy", "same-origin"),
            ("Cross-Origin-Opener-Policy", "same-origin"), ("Referrer-Policy", "no-referrer")]


class Key:
    """This launch's secret: the token of the printed address, exchanged once for a cookie."""

    def __init__(self, port: int):
        self.token = secrets.token_urlsafe(32)
        self.cookie_name = f"toolkit-gallery-{port}"  # cookies ignore ports: two galleries, two names
        self._session = secrets.token_urlsafe(32)  # the cookie's value: never in an address
        self._used = False
        self._lock = threading.Lock()

    def exchange(self, token: str) -> bool:
        """True for the first request that shows the token, and never again."""
        with self._lock:
            if self._used or not _same(token, self.token):
                return False
            self._used = True
            return True

    def cookie(self) -> str:
        return f"{self.cookie_name}={self._session}; Path=/; HttpOnly; SameSite=Strict"

    def held_by(self, cookie_headers: list[str]) -> bool:
        found = False
        for header in cookie_headers:
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == self.cookie_name:
                    found |= _same(value, self._session)
        return found


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode())


class GuardedServer(ThreadingHTTPServer):
    """A threading HTTP server with a key, a bound on connections and a timeout on each."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    request_queue_size = MAX_CONNECTIONS  # the listen backlog: a burst waits in the kernel

    def __init__(self, address: tuple[str, int], handler: type[GuardedHandler], policy: str):
        self.policy = policy
        self.request_timeout = REQUEST_TIMEOUT
        self.slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)
        self.key = Key(self.server_port)

    @property
    def address(self) -> str:
        """Where the gallery is, without its key."""
        return f"http://{self.server_address[0]}:{self.server_port}/"

    @property
    def url(self) -> str:
        """The address to open: with the key, good for one browser."""
        return f"{self.address}?{TOKEN}={self.key.token}"

    def own_hosts(self) -> tuple[str, ...]:
        port, names = self.server_port, (self.server_address[0], "localhost")
        hosts = tuple(f"{name}:{port}" for name in names)
        return hosts + names if port == 80 else hosts  # a browser leaves the default port out

    def own_origins(self) -> tuple[str, ...]:
        return tuple(f"http://{host}" for host in self.own_hosts())

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse_busy(self, request) -> None:
        """503 at once, without a thread: the accepting loop must never wait on a client."""
        body = (f"the gallery has {self.max_connections} connections open already: close some, "
                "then reload\n").encode()
        head = ["HTTP/1.0 503 Service Unavailable", "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}", "Retry-After: 1", "Connection: close",
                *(f"{name}: {value}" for name, value in security_headers(self.policy))]
        try:
            request.setblocking(False)
            try:
                request.recv(2**16)  # what arrived already: unread, it would turn close into a reset
            except BlockingIOError:
                pass
            request.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        except OSError:
            pass

    def handle_error(self, request, client_address) -> None:
        """A browser that went away (a closed tab, a thumbnail it no longer shows) or a client
        that stalled past the timeout is no error."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class GuardedHandler(BaseHTTPRequestHandler):
    """Answers only what :meth:`admit` lets through, always with the security headers."""

    server: GuardedServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # the socket's timeout, per read and write
        super().setup()

    def end_headers(self) -> None:
        for name, value in security_headers(self.server.policy):
            self.send_header(name, value)
        super().end_headers()

    def admit(self) -> bool:
        """Whether to answer the request; when not, the refusal has been sent (or the token
        exchanged for the cookie and the browser sent on to the page)."""
        if self.headers.get("Host", "") not in self.server.own_hosts():
            return self.refuse(HTTPStatus.FORBIDDEN, "forbidden host")  # DNS rebinding
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.server.own_origins():
            return self.refuse(HTTPStatus.FORBIDDEN, "foreign origin")
        if self.headers.get("Sec-Fetch-Site", "none") not in OWN_SITES:
            return self.refuse(HTTPStatus.FORBIDDEN, "a request from another site: open the gallery "
                                                     "by the address it printed")
        key = self.server.key
        held = key.held_by(self.headers.get_all("Cookie", []))
        token = parse_qs(urlsplit(self.path).query).get(TOKEN)
        if token is not None and self.command == "GET":
            exchanged = key.exchange(token[0])
            if not (exchanged or held):
                return self.refuse(HTTPStatus.FORBIDDEN, USED_KEY)
            self.send_response(HTTPStatus.SEE_OTHER)  # to the page: the token leaves the address bar
            if exchanged:
                self.send_header("Set-Cookie", key.cookie())
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return False
        if not held:
            return self.refuse(HTTPStatus.FORBIDDEN, NO_KEY)
        return True

    def refuse(self, status: HTTPStatus, message: str) -> bool:
        """Send a one-line refusal (JSON for the page's API calls); False, for :meth:`admit`."""
        if urlsplit(self.path).path.startswith("/api/"):
            self._send(status, json.dumps({"error": message}).encode(), "application/json")
        else:
            self._send(status, f"{message}\n".encode(), "text/plain; charset=utf-8")
        return False

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)
