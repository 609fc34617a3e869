"""One bounded download of an image or a result page: size cap, time limits, redirects, retries."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..core import images
from .addresses import AddressPolicy, GuardedAdapter, refused_address
from .engines import connection_problem

#: HTTP statuses worth retrying; others are final.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
#: Failures that will not change on a later run: such URLs are never fetched again.
PERMANENT = {"bad_url", "redirects", "duplicate", *images.REASONS}

_BROWSER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0 Safari/537.36")


def is_permanent(reason: str) -> bool:
    """A refusal worth remembering: bad content or a 4xx; not a timeout, 429 or 5xx."""
    if reason.startswith("http_"):
        code = int(reason[5:])
        return 400 <= code < 500 and code not in RETRY_STATUSES
    return reason in PERMANENT


class DownloadFailed(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class FetchOptions:
    """Bounds on one download (an image or a result page)."""

    timeout: float = 10.0         # seconds to connect, and between two chunks
    total_timeout: float = 60.0   # seconds for a whole download (stops a slow drip)
    retries: int = 2              # extra tries after a timeout, 429 or 5xx
    backoff: float = 1.0          # first wait between tries, doubled each time
    max_wait: float = 30.0        # longest wait, whatever Retry-After says
    max_redirects: int = 5


def new_session(threads: int, policy: AddressPolicy = AddressPolicy()) -> requests.Session:
    """A session that keeps a connection per thread open, looks like a browser, and connects
    only where `policy` allows (checked on every connection, so on every redirect's hop)."""
    session = requests.Session()
    adapter = GuardedAdapter(policy, pool_connections=32, pool_maxsize=threads + 2)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = _BROWSER_AGENT
    return session


def download(url: str, session: requests.Session, max_bytes: int, options: FetchOptions,
             cancel: threading.Event | None = None) -> bytes:
    """GET `url` within bounds; retry timeouts, 429 and 5xx with back-off.

    Raises DownloadFailed with reason `bad_url`, `redirects`, `http_<code>`, `timeout`,
    `connection`, `private_address`, `too_large` or `cancelled`.
    """
    cancel = cancel or threading.Event()
    wait = options.backoff
    for attempt in range(options.retries + 1):
        retry_after = None
        try:
            return _get(url, session, max_bytes, options, cancel)
        except _Retryable as e:
            failure, retry_after = e.failure, e.retry_after
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.URLRequired) as e:
            raise DownloadFailed("bad_url", str(e)[:100]) from None
        except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
            failure = DownloadFailed("timeout")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError,
                OSError) as e:
            refused = refused_address(e)
            if refused is not None:
                raise DownloadFailed("private_address", refused.detail) from None
            failure = DownloadFailed("connection", connection_problem(e))
        except requests.RequestException as e:
            raise DownloadFailed("bad_url", type(e).__name__) from None
        if attempt == options.retries:
            break
        if cancel.wait(min(options.max_wait, retry_after if retry_after is not None else wait)):
            raise DownloadFailed("cancelled")
        wait *= 2
    raise failure


class _Retryable(Exception):
    """A 429 or 5xx: worth another try, after Retry-After if the server gave one."""

    def __init__(self, failure: DownloadFailed, retry_after: float | None):
        self.failure, self.retry_after = failure, retry_after


def _get(url: str, session: requests.Session, max_bytes: int, options: FetchOptions,
         cancel: threading.Event) -> bytes:
    """One try: follow redirects hop by hop, each under the same checks and one deadline.

    requests reads a redirect's whole body before following it (even with allow_redirects
    off, to find the next request), where no size cap applies: 40 KB of gzip in a 302 grew
    the heap by 81 MiB. So each hop goes through the adapter alone, and a redirect's body is
    never read: the connection is closed instead.
    """
    deadline = time.monotonic() + options.total_timeout
    for _ in range(options.max_redirects + 1):
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadFailed("bad_url", f"scheme {scheme or 'missing'}")
        prepared = session.prepare_request(requests.Request("GET", url))
        settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
        left = deadline - time.monotonic()
        if left <= 0:
            raise DownloadFailed("timeout", f"slower than {options.total_timeout:g} s")
        response = session.get_adapter(prepared.url).send(  # settings: stream, proxies, certs
            prepared, timeout=min(options.timeout, left), **settings)
        try:
            if response.is_redirect:
                url = urljoin(response.url, response.headers["Location"])
                continue
            if response.status_code == 200:
                return _read_body(response, max_bytes, options, cancel, deadline)
            failure = DownloadFailed(f"http_{response.status_code}")
            if response.status_code not in RETRY_STATUSES:
                raise failure
            raise _Retryable(failure, _retry_after(response.headers.get("Retry-After"),
                                                   options.max_wait))
        finally:
            response.close()  # unread: a redirect's body, or what follows an error status
    raise DownloadFailed("redirects", f"more than {options.max_redirects} redirects")


def _read_body(response: requests.Response, max_bytes: int, options: FetchOptions,
               cancel: threading.Event, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadFailed("too_large", f"Content-Length {declared} > {max_bytes}")
    chunks, total = [], 0
    while True:
        # read1 returns whatever has arrived, so a server that drips bytes cannot hold a
        # read open past the deadline (read(n) would wait for all n bytes)
        chunk = response.raw.read1(64 * 1024, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise DownloadFailed("too_large", f"more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise DownloadFailed("timeout", f"slower than {options.total_timeout:g} s")
        if cancel.is_set():
            raise DownloadFailed("cancelled")
        chunks.append(chunk)


def _retry_after(value: str | None, longest: float) -> float | None:
    """Seconds a `Retry-After` header asks for (seconds or an HTTP date), at most `longest`."""
    if not value:
        return None
    try:
        return urllib3.util.Retry(retry_after_max=longest).parse_retry_after(value)
    except urllib3.exceptions.InvalidHeader:
        return None
