"""One bounded download of an image or a result page: size cap, time limits, redirects, retries."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests
import urllib3

from ..core import images
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


def new_session(threads: int, options: FetchOptions) -> requests.Session:
    """A session that keeps a connection per thread open, and looks like a browser."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=threads + 2)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = options.max_redirects
    session.headers["User-Agent"] = _BROWSER_AGENT
    return session


def download(url: str, session: requests.Session, max_bytes: int, options: FetchOptions,
             cancel: threading.Event | None = None) -> bytes:
    """GET `url` within bounds; retry timeouts, 429 and 5xx with back-off.

    Raises DownloadFailed with reason `bad_url`, `redirects`, `http_<code>`, `timeout`,
    `connection`, `too_large` or `cancelled`.
    """
    cancel = cancel or threading.Event()
    wait = options.backoff
    for attempt in range(options.retries + 1):
        retry_after = None
        try:
            with session.get(url, timeout=options.timeout, stream=True,
                             allow_redirects=True) as response:
                if response.status_code == 200:
                    return _read_body(response, max_bytes, options, cancel)
                failure = DownloadFailed(f"http_{response.status_code}")
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                retry_after = _retry_after(response.headers.get("Retry-After"), options.max_wait)
        except requests.TooManyRedirects:
            raise DownloadFailed("redirects", "redirect loop") from None
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.URLRequired) as e:
            raise DownloadFailed("bad_url", str(e)[:100]) from None
        except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
            failure = DownloadFailed("timeout")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError,
                OSError) as e:
            failure = DownloadFailed("connection", connection_problem(e))
        except requests.RequestException as e:
            raise DownloadFailed("bad_url", type(e).__name__) from None
        if attempt == options.retries:
            break
        if cancel.wait(min(options.max_wait, retry_after if retry_after is not None else wait)):
            raise DownloadFailed("cancelled")
        wait *= 2
    raise failure


def _read_body(response: requests.Response, max_bytes: int, options: FetchOptions,
               cancel: threading.Event) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadFailed("too_large", f"Content-Length {declared} > {max_bytes}")
    deadline = time.monotonic() + options.total_timeout
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
