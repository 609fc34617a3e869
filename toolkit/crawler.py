"""Crawl image search engines into class folders of usable, distinct images.

icrawler's own feeders, parsers and downloader threads do the work; this module gives
them what a dataset needs and icrawler lacks:

- `--per-class N` counts *usable* images (see :mod:`toolkit.images`), and nothing that
  duplicates an image already kept in any class (see :mod:`toolkit.dedupe`), so the
  crawler over-fetches until it has N or every engine has run dry;
- every download is bounded (size cap, time limit, redirects, retries with back-off);
- files are content-addressed and written atomically, next to a per-class manifest;
  a rerun tops up without downloading a known URL again and never overwrites a file;
- engines' base URLs come from `TOOLKIT_<ENGINE>_URL`, so tests run against loopback.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import email.utils
import json
import logging
import os
import queue
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode, urlsplit

import requests
import urllib3
from icrawler import Crawler, ImageDownloader
from icrawler.builtin.baidu import BaiduFeeder, BaiduParser
from icrawler.builtin.bing import BingFeeder, BingParser
from icrawler.builtin.google import GoogleFeeder, GoogleParser
from icrawler.builtin.urllist import PseudoParser
from icrawler.feeder import UrlListFeeder
from tqdm import tqdm

from . import decisions, dedupe, images
from .errors import ToolkitError
from .files import atomic_path, is_partial, write_text

#: Search engines in order of reliability; the default chain falls back along it.
SEARCH_ENGINES = ("bing", "baidu", "google")
ENGINES = (*SEARCH_ENGINES, "urls")
DEFAULT_BASE_URLS = {
    "bing": "https://www.bing.com",
    "baidu": "https://image.baidu.com",
    "google": "https://www.google.com",
}
#: Every engine returns at most this many results per query.
ENGINE_RESULT_LIMIT = 1000

#: HTTP statuses worth retrying; others are final.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
#: Failures that will not change on a later run: such URLs are never fetched again.
PERMANENT = {"bad_url", "redirects", "duplicate", *images.REASONS}


def is_permanent(reason: str) -> bool:
    """A refusal worth remembering: bad content or a 4xx; not a timeout, 429 or 5xx."""
    if reason.startswith("http_"):
        code = int(reason[5:])
        return 400 <= code < 500 and code not in RETRY_STATUSES
    return reason in PERMANENT

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                     *(f"LPT{i}" for i in range(10))}
_FORBIDDEN_CHARS = set('<>:"/\\|?*')

log = logging.getLogger(__name__)


def engine_base_url(engine: str) -> str:
    """Where an engine is reached: `TOOLKIT_<ENGINE>_URL` if set, else the real site."""
    return os.environ.get(f"TOOLKIT_{engine.upper()}_URL", DEFAULT_BASE_URLS[engine]).rstrip("/")


# --------------------------------------------------------------------------- queries

@dataclass(frozen=True)
class Query:
    """A class label (its folder name) and the words searched for it."""

    label: str
    keywords: str


def parse_query(text: str) -> Query:
    """`poodle` searches "poodle" into class poodle; `poodle="poodle dog"` names both."""
    label, sep, keywords = text.partition("=")
    label = label.strip()
    keywords = keywords.strip().strip("\"'").strip() if sep else label
    if not keywords:
        raise ToolkitError(f"query {text!r} has no search words; write LABEL=\"search words\"")
    return Query(check_label(label, keywords), keywords)


def check_label(label: str, keywords: str | None = None) -> str:
    """Return `label` (NFC) if it is a folder name safe on every OS, else raise."""
    label = unicodedata.normalize("NFC", label)
    problem = None
    if not label.strip():
        problem = "is empty"
    elif label in (".", "..") or "/" in label or "\\" in label:
        problem = "is a path, not a name"
    elif label.startswith("."):
        problem = "starts with '.', which hides the folder"
    elif any(ord(c) < 32 or c in _FORBIDDEN_CHARS for c in label):
        problem = 'holds a character that is not allowed in file names (<>:"/\\|?* or a control)'
    elif label[-1] in ". " or label[0] == " ":
        problem = "starts or ends with a space, or ends with a dot"
    elif label.split(".")[0].upper().strip() in _WINDOWS_RESERVED:
        problem = "is a reserved device name on Windows"
    elif len(label.encode("utf-8")) > 120:
        problem = "is too long for a folder name"
    if problem:
        example = keywords if keywords and keywords != label else "search words"
        raise ToolkitError(f"class label {label!r} {problem}; name the class with a plain "
                           f"word, e.g. myclass=\"{example}\"")
    return label


def check_labels(queries: Sequence[Query]) -> None:
    """Refuse an empty list and labels that would share a folder on some OS."""
    if not queries:
        raise ToolkitError("no query given; e.g. `toolkit crawl hedgehog hamster poodle`")
    seen: dict[str, str] = {}
    for q in queries:
        key = q.label.casefold()
        if key in seen:
            raise ToolkitError(f"class label {q.label!r} is given twice (as {seen[key]!r}); "
                               "each class needs its own label")
        seen[key] = q.label


def read_url_list(path: str | os.PathLike, queries: Sequence[Query]) -> dict[str, list[str]]:
    """Read a URL list: one URL per line, optionally after a label (`poodle https://...`).

    Unlabelled lines belong to the only query given. Returns {label: [url, ...]}.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ToolkitError(f"cannot read --urls {path}: {e.strerror}") from None
    by_label: dict[str, list[str]] = collections.defaultdict(list)
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        if len(parts) == 1:
            if len(queries) != 1:
                raise ToolkitError(f"--urls {path} line {number} has no label; with "
                                   f"{len(queries) or 'no'} queries, write `LABEL URL` per line")
            by_label[queries[0].label].append(parts[0])
        else:
            by_label[check_label(parts[0])].append(parts[-1])
    if not by_label:
        raise ToolkitError(f"--urls {path} lists no URLs")
    return dict(by_label)


# --------------------------------------------------------------------------- class folders

class ClassFolder:
    """A class's images under `root/<label>/` and its manifest `root/<label>.manifest.jsonl`.

    Images are named by content (`<sha256[:16]>.<ext>`), written atomically, and recorded
    in the manifest right after; :meth:`reconcile` repairs what a kill between the two left.
    URLs refused for good are logged in `root/<label>.rejected.jsonl` and never fetched again.
    """

    def __init__(self, root: Path, label: str):
        self.label = label
        self.dir = root / label
        self.manifest = root / f"{label}.manifest.jsonl"
        self.rejected_log = root / f"{label}.rejected.jsonl"
        self._lock = threading.Lock()

    def reconcile(self, checks: images.Checks) -> list[dict]:
        """Make the manifest match the folder; return its entries (one per kept image).

        Drops entries whose file is gone, removes partial files, and records files that
        are in the folder but not in the manifest (added by hand, or kept just before a
        kill) as engine `local` when they are usable.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        entries = {e["file"]: e for e in _read_jsonl(self.manifest) if _valid_entry(e)}
        on_disk = {}
        for entry in os.scandir(self.dir):
            if is_partial(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif entry.is_file() and not entry.name.startswith("."):
                on_disk[entry.name] = entry.stat().st_size
        kept = {name: e for name, e in entries.items()
                if name in on_disk and e.get("bytes") in (None, on_disk[name])}
        for name in sorted(set(on_disk) - set(kept)):
            try:
                data = images.read_file(self.dir / name, checks)
                info, _ = images.decode(data, checks)
            except images.Unusable:
                continue
            kept[name] = _entry(name, info, len(data), url=None, engine="local", query=None)
        if list(kept.values()) != list(entries.values()) or not self.manifest.exists():
            write_text(self.manifest, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                              for e in kept.values()))
        return list(kept.values())

    def refused_urls(self) -> set[str]:
        return {e["url"] for e in _read_jsonl(self.rejected_log) if isinstance(e.get("url"), str)}

    def commit(self, data: bytes, info: images.ImageInfo, url: str, engine: str,
               query: str) -> dict:
        """Write one image atomically, then its manifest line; undo the file on failure."""
        name = f"{info.sha256[:16]}.{info.extension}"
        path = self.dir / name
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        entry = _entry(name, info, len(data), url=url, engine=engine, query=query)
        try:
            self._append(self.manifest, entry)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return entry

    def reject(self, url: str, reason: str, detail: str) -> None:
        with contextlib.suppress(OSError):
            self._append(self.rejected_log, {"url": url, "reason": reason, "detail": detail,
                                             "time": _now()})

    def _append(self, path: Path, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock, open(path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _entry(name: str, info: images.ImageInfo, size: int, url: str | None, engine: str,
           query: str | None) -> dict:
    return {"file": name, "url": url, "engine": engine, "query": query, "sha256": info.sha256,
            "phash": f"{info.phash:016x}", "width": info.width, "height": info.height,
            "bytes": size, "time": _now()}


def _valid_entry(e: dict) -> bool:
    try:
        return (isinstance(e["file"], str) and isinstance(e["sha256"], str)
                and int(e["phash"], 16) >= 0 and int(e["width"]) > 0 and int(e["height"]) > 0)
    except (KeyError, TypeError, ValueError):
        return False


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line cut short by a kill is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- results

@dataclass
class ClassResult:
    """What a crawl did for one class."""

    label: str
    keywords: str
    wanted: int
    kept: int = 0          # usable images on disk now
    new: int = 0           # of which downloaded by this run
    duplicates: int = 0
    known: int = 0         # URLs skipped because an earlier run already had them
    failed: collections.Counter = field(default_factory=collections.Counter)
    engines: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.kept >= self.wanted

    def why_short(self) -> str:
        if self.complete:
            return ""
        tried = ", ".join(self.engines) or "no engine"
        reasons = ", ".join(f"{n} {r}" for r, n in self.failed.most_common(4))
        return (f"{self.label}: {self.kept}/{self.wanted} - {tried} ran out of results"
                + (f" ({self.duplicates} duplicates; failed: {reasons})" if reasons or
                   self.duplicates else ""))


@dataclass
class CrawlReport:
    root: str
    classes: list[ClassResult]
    interrupted: bool = False
    stopped_by: str = ""   # an error that stopped the crawl early (disk full)

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.classes) and not self.stopped_by

    def table(self) -> str:
        head = ["class", "wanted", "kept", "new", "failed", "duplicates", "engines"]
        rows = [[c.label, str(c.wanted), str(c.kept), str(c.new), str(sum(c.failed.values())),
                 str(c.duplicates), ",".join(c.engines) or "-"] for c in self.classes]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        lines = [fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)]
        failures = collections.Counter()
        for c in self.classes:
            failures.update(c.failed)
        if failures:
            lines.append("failed: " + ", ".join(f"{r} {n}" for r, n in failures.most_common()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- downloading

class DownloadFailed(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class FetchOptions:
    """Bounds on one download."""

    timeout: float = 10.0         # seconds to connect, and between two chunks
    total_timeout: float = 60.0   # seconds for a whole download (stops a slow drip)
    retries: int = 2              # extra tries after a timeout, 429 or 5xx
    backoff: float = 1.0          # first wait between tries, doubled each time
    max_wait: float = 30.0        # longest wait, whatever Retry-After says
    max_redirects: int = 5


class ClassJob:
    """Downloads for one class: decides each URL, under one lock shared by its threads."""

    def __init__(self, folder: ClassFolder, result: ClassResult, index: dedupe.HashIndex,
                 known_urls: set[str], checks: images.Checks, fetch: FetchOptions,
                 cancel: threading.Event, bar: tqdm):
        self.folder, self.result, self.index = folder, result, index
        self.known_urls, self.checks, self.fetch_options = known_urls, checks, fetch
        self.cancel, self.bar = cancel, bar
        self.lock = threading.Lock()
        self.stop_error: OSError | None = None
        self.engine = ""
        self.on_full: Callable[[], None] = lambda: None

    @property
    def full(self) -> bool:
        return self.result.kept >= self.result.wanted

    def handle(self, url: str, session: requests.Session) -> None:
        """Fetch, check, dedupe and keep (or refuse) one image URL."""
        if self.cancel.is_set() or self.full:
            return
        if urlsplit(url).scheme not in ("http", "https"):
            return self._fail(url, "bad_url", f"scheme {urlsplit(url).scheme or 'missing'}")
        with self.lock:
            if url in self.known_urls:
                self.result.known += 1
                return
            self.known_urls.add(url)
        try:
            data = download(url, session, self.checks.max_bytes, self.fetch_options, self.cancel)
            info, _ = images.decode(data, self.checks)
        except DownloadFailed as e:
            if e.reason != "cancelled":
                self._fail(url, e.reason, e.detail)
            return
        except images.Unusable as e:
            return self._fail(url, e.reason, e.detail)
        with self.lock:
            if self.cancel.is_set() or self.full:
                return
            owner = self.index.match(info.sha256, info.phash)
            if owner is not None:
                self.result.duplicates += 1
                self.folder.reject(url, "duplicate", f"of an image in {owner}")
                return
            self.index.add(info.sha256, info.phash, self.folder.label)
            self.result.kept += 1  # reserved; undone below if the write fails
        try:
            self.folder.commit(data, info, url, self.engine, self.result.keywords)
        except OSError as e:
            with self.lock:
                self.index.remove(info.sha256, info.phash)
                self.result.kept -= 1
                self.stop_error = e
            self.cancel.set()
            return
        with self.lock:
            self.result.new += 1
            self.bar.update(1)
            if self.full:
                self.on_full()

    def _fail(self, url: str, reason: str, detail: str) -> None:
        with self.lock:
            self.result.failed[reason] += 1
            self.bar.set_postfix(failed=sum(self.result.failed.values()),
                                 dup=self.result.duplicates, refresh=False)
        if is_permanent(reason):
            self.folder.reject(url, reason, detail)


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
                retry_after = _retry_after(response.headers.get("Retry-After"))
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
            failure = DownloadFailed("connection", type(e).__name__)
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


# --------------------------------------------------------------------------- icrawler glue

class _Downloader(ImageDownloader):
    """icrawler's downloader thread pool, handing each URL to a :class:`ClassJob`.

    Unlike icrawler's own loop it waits for the parser to finish (rather than giving up
    after 5 idle seconds) and stops as soon as the job is full or cancelled.
    """

    def __init__(self, thread_num, signal, session, storage, job: ClassJob):
        super().__init__(thread_num, signal, session, storage)
        self.job = job

    def worker_exec(self, max_num, queue_timeout=0.2, **kwargs):
        while not (self.signal.get("reach_max_num") or self.job.cancel.is_set()):
            try:
                task = self.in_queue.get(timeout=queue_timeout)
            except queue.Empty:
                if self.signal.get("parser_exited"):
                    break
                continue
            try:
                self.job.handle(task["file_url"], self.session)
            except Exception:  # a bug must not kill the thread silently mid-crawl
                log.exception("unexpected error on %s", task.get("file_url"))
            finally:
                self.in_queue.task_done()


def _feeder(engine: str):
    """A feeder class for `engine` that pages through results at the configured base URL."""
    base_cls, step, page = {
        "bing": (BingFeeder, 20, "{base}/images/async?q={q}&first={i}"),
        "baidu": (BaiduFeeder, 30, "{base}/search/acjson?tn=resultjson_com&ipn=rj&word={q}&pn={i}&rn=30"),
        "google": (GoogleFeeder, 100, "{base}/search?{params}"),
    }[engine]

    class Feeder(base_cls):
        def feed(self, keyword, offset=0, max_num=ENGINE_RESULT_LIMIT, **_):
            base = engine_base_url(engine)
            for i in range(offset, offset + max_num, step):
                params = urlencode(dict(q=keyword, ijn=i // 100, start=i, tbm="isch"))
                url = page.format(base=base, q=quote_plus(keyword) if engine == "bing"
                                  else quote(keyword), i=i, params=params)
                if not _put(self, url):
                    return

    return Feeder


class _UrlFeeder(UrlListFeeder):
    def feed(self, url_list, **_):
        for url in url_list:
            if not _put(self, url):
                return


def _put(pool, url: str) -> bool:
    """Queue a page URL unless the crawl has stopped (icrawler's put would block forever)."""
    while not pool.signal.get("reach_max_num"):
        with contextlib.suppress(queue.Full):
            pool.out_queue.put(url, timeout=0.2)
            return True
    return False


def _parser(engine: str):
    """icrawler's parser for `engine`, made to survive bad pages (Google's returns None)."""
    base_cls = {"bing": BingParser, "baidu": BaiduParser, "google": GoogleParser,
                "urls": PseudoParser}[engine]

    class Parser(base_cls):
        def parse(self, response, **kwargs):
            if response.status_code != 200:
                return []
            try:
                return list(super().parse(response, **kwargs) or [])
            except Exception:
                return []

    return Parser


class _Crawler(Crawler):
    """icrawler's Crawler without its global logging set-up, with bounded redirects, and
    polling its threads every 50 ms rather than every second."""

    def set_logger(self, log_level=logging.INFO):
        self.logger = logging.getLogger("icrawler")

    def crawl(self, feeder_kwargs=None, parser_kwargs=None, downloader_kwargs=None):
        self.signal.reset()
        self.feeder.start(**(feeder_kwargs or {}))
        self.parser.start(**(parser_kwargs or {}))
        self.downloader.start(**(downloader_kwargs or {}))
        while self.downloader.is_alive():
            if not self.feeder.is_alive():
                self.signal.set(feeder_exited=True)
            if not self.parser.is_alive():
                self.signal.set(parser_exited=True)
            time.sleep(0.05)
        self.signal.set(reach_max_num=True)  # lets a feeder or parser still running exit

    @classmethod
    def for_engine(cls, engine: str, job: ClassJob, threads: int) -> _Crawler:
        crawler = cls(feeder_cls=_UrlFeeder if engine == "urls" else _feeder(engine),
                      parser_cls=_parser(engine), downloader_cls=_Downloader,
                      downloader_threads=threads, storage={"root_dir": str(job.folder.dir)},
                      extra_downloader_args={"job": job})
        crawler.session.max_redirects = job.fetch_options.max_redirects  # shared by all threads
        return crawler


def _run_engine(engine: str, job: ClassJob, threads: int, urls: list[str] | None) -> None:
    crawler = _Crawler.for_engine(engine, job, threads)
    job.engine = engine
    job.on_full = lambda: crawler.signal.set(reach_max_num=True)
    feeder_kwargs = (dict(url_list=urls) if engine == "urls" else
                     dict(keyword=job.result.keywords, offset=0, max_num=ENGINE_RESULT_LIMIT))
    try:
        crawler.crawl(feeder_kwargs=feeder_kwargs, parser_kwargs=dict(queue_timeout=0.2),
                      downloader_kwargs=dict(max_num=job.result.wanted))
    except BaseException:
        job.cancel.set()
        crawler.signal.set(reach_max_num=True)
        raise
    finally:
        for worker in crawler.downloader.workers:  # let in-flight commits finish
            worker.join(timeout=job.fetch_options.timeout + 2)


# --------------------------------------------------------------------------- crawl

def crawl(queries: Sequence[str | Query], *, root: str | os.PathLike = "datasets",
          per_class: int = 400, engines: Sequence[str] = SEARCH_ENGINES,
          urls: str | os.PathLike | None = None, checks: images.Checks = images.Checks(),
          threshold: int = dedupe.DEFAULT_THRESHOLD, threads: int = 8,
          fetch: FetchOptions = FetchOptions(), progress: bool = False) -> CrawlReport:
    """Top up every class folder under `root` to `per_class` usable, distinct images.

    `engines` are tried in order for each class until it is full. With `urls` (a file of
    image URLs, `LABEL URL` per line) the engine is `urls` and queries may be omitted.
    Ctrl-C stops cleanly: kept files and manifests stay consistent, and the
    KeyboardInterrupt propagates after the report's numbers are final.
    """
    parsed = [q if isinstance(q, Query) else parse_query(q) for q in queries]
    engines = list(engines)
    url_lists: dict[str, list[str]] = {}
    if urls is not None or "urls" in engines:
        if urls is None:
            raise ToolkitError("--engine urls needs --urls FILE (one image URL per line)")
        engines = ["urls"]
        url_lists = read_url_list(urls, parsed)
        labels = {q.label for q in parsed}
        parsed += [Query(label, "") for label in url_lists if label not in labels]
    check_labels(parsed)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ToolkitError(f"unknown engine {', '.join(unknown) or '(none)'}; choose from "
                           f"{', '.join(ENGINES)}")
    if per_class < 1:
        raise ToolkitError(f"--per-class {per_class}: must be at least 1")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolkitError(f"cannot create {root}: {e.strerror}") from None

    folders = _all_folders(root, [q.label for q in parsed])
    entries = {label: folder.reconcile(checks) for label, folder in folders.items()}
    index, usable = _index_kept(entries, checks, threshold)
    for label in usable:  # review: what was dropped (or moved away) does not count
        usable[label] -= len(decisions.left_out(root, label) & {e["file"] for e in entries[label]})
    known_urls = {e["url"] for kept in entries.values() for e in kept if e.get("url")}
    known_urls |= decisions.dropped_urls(root)  # review: a dropped image is never fetched again
    for folder in folders.values():
        known_urls |= folder.refused_urls()
    cancel = threading.Event()
    report = CrawlReport(str(root), [])
    try:
        for q in parsed:
            result = ClassResult(q.label, q.keywords, per_class, kept=usable[q.label])
            report.classes.append(result)
            folder = folders[q.label]
            with tqdm(total=per_class, initial=min(result.kept, per_class), desc=q.label,
                      unit="img", disable=not progress, leave=True) as bar:
                job = ClassJob(folder, result, index, known_urls, checks, fetch, cancel, bar)
                for engine in engines:
                    if job.full or job.stop_error:
                        break
                    if engine == "urls" and not url_lists.get(q.label):
                        continue
                    result.engines.append(engine)
                    _run_engine(engine, job, threads, url_lists.get(q.label))
            if job.stop_error:
                report.stopped_by = (f"cannot write to {folder.dir}: "
                                     f"{job.stop_error.strerror or job.stop_error}")
                break
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    return report


def _all_folders(root: Path, labels: Sequence[str]) -> dict[str, ClassFolder]:
    """This crawl's classes and every other class folder already under `root`: pack will
    see them all, so a download that duplicates any of them is not usable."""
    existing = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    return {label: ClassFolder(root, label) for label in [*labels, *sorted(existing)]}


def _index_kept(entries: dict[str, list[dict]], checks: images.Checks, threshold: int
                ) -> tuple[dedupe.HashIndex, dict[str, int]]:
    """Index every kept image; count per class those that pack would keep."""
    index = dedupe.HashIndex(threshold)
    labels = list(entries)
    flat = [(label, e) for label in labels for e in entries[label]
            if min(e["width"], e["height"]) >= checks.min_side
            and e["width"] * e["height"] <= checks.max_pixels]
    candidates = [dedupe.Candidate(labels.index(label), e["sha256"], int(e["phash"], 16),
                                   e["width"] * e["height"], e["file"]) for label, e in flat]
    dropped = dedupe.find_duplicates(candidates, threshold)
    usable = collections.Counter()
    for i, (label, e) in enumerate(flat):
        index.add(e["sha256"], int(e["phash"], 16), label)
        if i not in dropped:
            usable[label] += 1
    return index, {label: usable[label] for label in labels}
