"""Crawl image search engines into class folders of usable, distinct images.

The engines (:mod:`toolkit.engines`) turn a query into pages of image URLs; this module
gives a dataset what they lack:

- `--per-class N` counts *usable* images (see :mod:`toolkit.images`), and nothing that
  duplicates an image already kept in any class (see :mod:`toolkit.dedupe`), so the
  crawler over-fetches until it has N or every engine has stopped;
- for every engine and class it records pages, results and kept images, and why the engine
  stopped: `enough`, `ran dry`, `refused` (with the status), `unreachable` or `unreadable`;
  a blocked or broken engine is a warning, never silently "no results";
- downloads run on a bounded pool of threads, at most a few at a time per host, and each is
  bounded (size cap, time limit, redirects, retries with back-off);
- files are content-addressed and written atomically, next to a per-class manifest that
  records where each came from; a rerun tops up without downloading a known URL again and
  never overwrites a file;
- the engines' and HTTP libraries' own log lines go to `<root>/crawl.log`, not the terminal.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm

from ..core import dedupe, images
from ..core.errors import OptionError, ToolkitError, first_line
from ..core.files import atomic_path, is_abandoned, is_partial, write_text
from ..core.text import text_table, timestamp
from ..curate import decisions
from .engines import (
    DEFAULT_PER_HOST,
    DEFAULT_THREADS,
    ENGINES,
    LICENSES,
    SEARCH_ENGINES,
    Engine,
    PageRefused,
    PageUnreachable,
    Result,
    connection_problem,
    license_capable,
    search_engine,
)

#: HTTP statuses worth retrying; others are final.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
#: Failures that will not change on a later run: such URLs are never fetched again.
PERMANENT = {"bad_url", "redirects", "duplicate", *images.REASONS}

#: Why an engine stopped for a class.
ENOUGH, RAN_DRY, REFUSED, UNREACHABLE, UNREADABLE, SKIPPED, STOPPED = (
    "enough", "ran dry", "refused", "unreachable", "unreadable", "skipped", "stopped")
#: Stops that mean the engine could not serve the class (rather than had nothing more).
FAILURES = (REFUSED, UNREACHABLE, UNREADABLE)
#: Why a first page that parsed to nothing is UNREADABLE: a captcha, or a new page format.
NO_RESULTS = "no image results on the first page"

#: Where the engines' and HTTP libraries' own log lines go, under the crawl's root.
LOG_NAME = "crawl.log"
_LOGGERS = ("icrawler", "ddgs", "primp", "urllib3", __name__)

_BROWSER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0 Safari/537.36")


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
        parts = re.split(r"[\s,]+", line, maxsplit=1)
        if len(parts) == 1 or "://" in parts[0]:  # a URL alone (commas are common inside URLs)
            if len(queries) != 1:
                raise ToolkitError(f"--urls {path} line {number} has no label; with "
                                   f"{len(queries) or 'no'} queries, write `LABEL URL` per line")
            by_label[queries[0].label].append(line)
        else:
            by_label[check_label(parts[0])].append(parts[1].strip())
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
        self.reject_error: OSError | None = None  # the first failed write to rejected_log
        self._lock = threading.Lock()

    def reconcile(self, checks: images.Checks) -> list[dict]:
        """Make the manifest match the folder; return its entries (one per kept image).

        Drops entries whose file is gone, removes the partial files a killed write of
        this tool left, and records files that are in the folder but not in the manifest
        (added by hand, or kept just before a kill) as engine `local` when they are usable.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        entries, kept = self._scan(checks, remove_partials=True)
        if list(kept) != list(entries) or not self.manifest.exists():
            write_text(self.manifest, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                              for e in kept))
        return kept

    def entries(self, checks: images.Checks) -> list[dict]:
        """What :meth:`reconcile` would return, changing nothing (for another class)."""
        return self._scan(checks, remove_partials=False)[1] if self.dir.is_dir() else []

    def _scan(self, checks: images.Checks, remove_partials: bool) -> tuple[list[dict], list[dict]]:
        entries = {e["file"]: e for e in read_jsonl(self.manifest) if _valid_entry(e)}
        on_disk = {}
        for entry in os.scandir(self.dir):
            if is_partial(entry.name):
                if remove_partials and is_abandoned(entry.name):
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
            kept[name] = _entry(name, info, len(data), None, engine="local", query=None,
                                license=None)
        return list(entries.values()), list(kept.values())

    def refused_urls(self) -> set[str]:
        try:
            records = read_jsonl(self.rejected_log)
        except OSError as e:
            self.reject_error = e
            return set()
        return {e["url"] for e in records if isinstance(e.get("url"), str)}

    def commit(self, data: bytes, info: images.ImageInfo, result: Result, engine: str,
               query: str, license: str) -> dict:
        """Write one image atomically, then its manifest line; undo the file on failure."""
        name = f"{info.sha256[:16]}.{info.extension}"
        path = self.dir / name
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        entry = _entry(name, info, len(data), result, engine=engine, query=query, license=license)
        try:
            self._append(self.manifest, entry)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return entry

    def reject(self, url: str, reason: str, detail: str) -> None:
        """Remember a URL refused for good; a failed write is kept for a warning."""
        try:
            self._append(self.rejected_log, {"url": url, "reason": reason, "detail": detail,
                                             "time": timestamp()})
        except OSError as e:
            self.reject_error = self.reject_error or e

    def _append(self, path: Path, record: dict) -> None:
        """Append one line whole; sync it to disk outside the lock, so that the threads'
        syncs overlap (the file system commits them together)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with open(path, "ab") as f:
            with self._lock:
                f.write(line)
                f.flush()
            os.fsync(f.fileno())


def _entry(name: str, info: images.ImageInfo, size: int, result: Result | None, engine: str,
           query: str | None, license: str | None) -> dict:
    return {"file": name, "url": result and result.url, "engine": engine, "query": query,
            "license": license, "page": result and result.page, "title": result and result.title,
            "sha256": info.sha256, "phash": f"{info.phash:016x}", "width": info.width,
            "height": info.height, "bytes": size, "time": timestamp()}


def _valid_entry(e: dict) -> bool:
    try:
        return (isinstance(e["file"], str) and isinstance(e["sha256"], str)
                and int(e["phash"], 16) >= 0 and all(isinstance(e[side], int) and e[side] > 0
                                                     for side in ("width", "height")))
    except (KeyError, TypeError, ValueError):
        return False


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line cut short by a kill is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n"):  # not splitlines(): a title may hold U+2028 or \x85
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def usable_counts(entries: dict[str, list[dict]], checks: images.Checks, threshold: int
                  ) -> dict[str, int]:
    """How many usable images each class already has: the kept entries that pack would keep
    (big enough, not a bomb, no duplicate within or across classes). The one place a crawl
    decides how far a class is from full."""
    labels = list(entries)
    flat = _packable(entries, checks)
    candidates = [dedupe.Candidate(labels.index(label), e["sha256"], int(e["phash"], 16),
                                   e["width"] * e["height"], e["file"]) for label, e in flat]
    dropped = dedupe.find_duplicates(candidates, threshold)
    usable = collections.Counter(label for i, (label, _) in enumerate(flat) if i not in dropped)
    return {label: usable[label] for label in labels}


def _hash_index(entries: dict[str, list[dict]], checks: images.Checks, threshold: int
                ) -> dedupe.HashIndex:
    """Every image pack would see, so that a download duplicating one is refused."""
    index = dedupe.HashIndex(threshold)
    for label, e in _packable(entries, checks):
        index.add(e["sha256"], int(e["phash"], 16), label)
    return index


def _packable(entries: dict[str, list[dict]], checks: images.Checks) -> list[tuple[str, dict]]:
    return [(label, e) for label, kept in entries.items() for e in kept
            if min(e["width"], e["height"]) >= checks.min_side
            and e["width"] * e["height"] <= checks.max_pixels]


def top_hosts(entries: list[dict], n: int = 3) -> list[tuple[str, int]]:
    """The hosts most of a class's images come from (their page's host, else the image's)."""
    hosts = collections.Counter(urlsplit(e.get("page") or e.get("url") or "").hostname
                                for e in entries)
    hosts.pop(None, None)
    return hosts.most_common(n)


# --------------------------------------------------------------------------- results

@dataclass
class EngineRun:
    """What one engine did for one class, and why it stopped."""

    engine: str
    pages: int = 0         # result pages read
    results: int = 0       # image URLs those pages listed (new to this run)
    kept: int = 0          # images kept from them
    stop: str = ""         # ENOUGH, RAN_DRY, REFUSED, UNREACHABLE, UNREADABLE, SKIPPED, STOPPED
    detail: str = ""       # e.g. "HTTP 403", "no image results on the first page"

    @property
    def failed(self) -> bool:
        return self.stop in FAILURES

    def describe(self) -> str:
        return f"{self.stop} ({self.detail})" if self.detail else self.stop

    def advice(self, label: str) -> str:
        """One warning line: which engine, what happened, what to do."""
        page = self.pages if self.stop == UNREADABLE else self.pages + 1
        what = f"{self.engine} {self.describe()} on page {page} for {label!r}"
        if self.stop == REFUSED:
            return (f"{what}: it is blocking or rate-limiting this address; wait an hour and run "
                    "again, or use another --engine")
        if self.stop == UNREACHABLE:
            return (f"{what}: check the network connection, proxy or firewall, or use "
                    "--engine urls --urls FILE")
        empty = " (or nothing matches the query)" if self.detail == NO_RESULTS else ""
        return (f"{what}: its page format has likely changed{empty}; upgrade the engines "
                "(pip install -U icrawler ddgs) or use another --engine")


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
    engines: list[EngineRun] = field(default_factory=list)
    top_hosts: list[tuple[str, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.kept >= self.wanted

    @property
    def blocked(self) -> bool:
        """Short because every engine tried was refused, unreachable or unreadable."""
        tried = [r for r in self.engines if r.stop != SKIPPED]
        return not self.complete and bool(tried) and all(r.failed for r in tried)

    def why_short(self) -> str:
        if self.complete:
            return ""
        engines = ", ".join(f"{r.engine} {r.describe()}" for r in self.engines) or "no engine"
        reasons = ", ".join(f"{n} {r}" for r, n in self.failed.most_common(4))
        return (f"{self.label}: {self.kept}/{self.wanted} - {engines}"
                + (f" ({self.duplicates} duplicates; failed: {reasons})" if reasons or
                   self.duplicates else ""))


@dataclass
class CrawlReport:
    root: str
    classes: list[ClassResult]
    stopped_by: str = ""   # an error that stopped the crawl early (disk full)
    warnings: list[str] = field(default_factory=list)  # one line each

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.classes) and not self.stopped_by

    @property
    def blocked(self) -> list[ClassResult]:
        return [c for c in self.classes if c.blocked]

    def table(self) -> str:
        """The summary: per class, per engine and class, and the top source hosts."""
        lines = text_table(["class", "wanted", "kept", "new", "failed", "duplicates"],
                           [[c.label, c.wanted, c.kept, c.new, sum(c.failed.values()),
                             c.duplicates] for c in self.classes]).splitlines()
        runs = [[r.engine, c.label, r.pages, r.results, r.kept, r.describe()]
                for c in self.classes for r in c.engines]
        if runs:
            lines += ["", *text_table(["engine", "class", "pages", "results", "kept", "stopped"],
                                      runs, left=(0, 1, 5)).splitlines()]
        failures = collections.Counter()
        for c in self.classes:
            failures.update(c.failed)
        if failures:
            lines.append("failed: " + ", ".join(f"{r} {n}" for r, n in failures.most_common()))
        sources = [f"{c.label}: " + ", ".join(f"{h} {n}" for h, n in c.top_hosts)
                   for c in self.classes if c.top_hosts]
        if sources:
            lines.append("top sources: " + "; ".join(sources))
        return "\n".join(lines)


# --------------------------------------------------------------------------- downloading

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


class HostSlots:
    """At most `per_host` downloads at a time from one host, so no site is hammered."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, url: str, cancel: threading.Event) -> Iterator[None]:
        host = (urlsplit(url).hostname or "").lower()
        with self._lock:
            semaphore = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        while not semaphore.acquire(timeout=0.1):
            if cancel.is_set():
                raise DownloadFailed("cancelled")
        try:
            yield
        finally:
            semaphore.release()


class ClassJob:
    """Downloads for one class: decides each URL, under one lock shared by its threads."""

    def __init__(self, folder: ClassFolder, result: ClassResult, index: dedupe.HashIndex,
                 known_urls: set[str], checks: images.Checks, fetch: FetchOptions,
                 license: str, session: requests.Session, hosts: HostSlots, bar: tqdm):
        self.folder, self.result, self.index = folder, result, index
        self.known_urls, self.checks, self.fetch_options = known_urls, checks, fetch
        self.license, self.session, self.hosts, self.bar = license, session, hosts, bar
        self.cancel = threading.Event()  # set when the class is full, on an error, on Ctrl-C
        self.lock = threading.Lock()
        self.stop_error: OSError | None = None
        self.run = EngineRun("")

    @property
    def full(self) -> bool:
        return self.result.kept >= self.result.wanted

    def handle(self, found: Result) -> None:
        """Fetch, check, dedupe and keep (or refuse) one image URL."""
        url = found.url
        if self.cancel.is_set():
            return
        if urlsplit(url).scheme not in ("http", "https"):
            return self._fail(url, "bad_url", f"scheme {urlsplit(url).scheme or 'missing'}")
        with self.lock:
            if url in self.known_urls:
                self.result.known += 1
                return
            self.known_urls.add(url)
        try:
            with self.hosts.slot(url, self.cancel):
                data = download(url, self.session, self.checks.max_bytes, self.fetch_options,
                                self.cancel)
            info, _ = images.decode(data, self.checks)
        except DownloadFailed as e:
            if e.reason != "cancelled":
                self._fail(url, e.reason, e.detail)
            return
        except images.Unusable as e:
            return self._fail(url, e.reason, e.detail)
        with self.lock:
            if self.cancel.is_set():
                return
            owner = self.index.match(info.sha256, info.phash)
            if owner is not None:
                self.result.duplicates += 1
                self.folder.reject(url, "duplicate", f"of an image in {owner}")
                return
            self.index.add(info.sha256, info.phash, self.folder.label)
            self.result.kept += 1  # reserved; undone below if the write fails
            if self.full:
                self.cancel.set()  # in-flight downloads stop; this one is kept
        run = self.run
        try:
            self.folder.commit(data, info, found, run.engine, self.result.keywords, self.license)
        except OSError as e:
            with self.lock:
                self.index.remove(info.sha256, info.phash)
                self.result.kept -= 1
                self.stop_error = e
            self.cancel.set()
            return
        with self.lock:
            self.result.new += 1
            run.kept += 1
            self.bar.update(1)

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


# --------------------------------------------------------------------------- running an engine

class _UrlList(Engine):
    """The user's own list of image URLs for a class, as one page of results."""

    name = "urls"

    def __init__(self, urls: list[str]):
        self.urls = urls

    def search(self, keywords, license, fetch, timeout):
        yield [Result(u) for u in self.urls]


def _run_engine(engine: Engine, job: ClassJob, threads: int) -> EngineRun:
    """Read `engine`'s pages for the job's class and download what they list on `threads`
    threads, until the class is full or the engine stops; say why it stopped."""
    run = job.run = EngineRun(engine.name)
    # unbounded: pages are read ahead of the downloads (a page read takes one round trip,
    # like an image), and only while what is queued cannot fill the class
    tasks: queue.Queue[Result] = queue.Queue()
    feeding = threading.Event()
    workers = [threading.Thread(target=_work, args=(job, tasks, feeding), daemon=True,
                                name=f"crawl-{engine.name}-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    seen: set[str] = set()
    pages = engine.search(job.result.keywords, job.license, lambda url: _fetch_page(url, job),
                          job.fetch_options.timeout)
    try:
        while not job.cancel.is_set():
            if tasks.unfinished_tasks + job.result.kept >= job.result.wanted:
                time.sleep(0.02)  # what is queued may fill the class: no page asked for in vain
                continue
            found = _next_page(pages, run)
            if found is None:
                break
            new = [r for r in found if r.url not in seen]
            log.info("%s: page %d of %r: %d results, %d new", engine.name, run.pages,
                     job.result.keywords, len(found), len(new))
            if not new:
                if run.pages == 1 and not isinstance(engine, _UrlList):
                    run.stop, run.detail = UNREADABLE, NO_RESULTS
                else:
                    run.stop = RAN_DRY
                break
            seen.update(r.url for r in new)
            run.results += len(new)
            for r in new:
                tasks.put(r)
        feeding.set()
        _join(workers, job)
    except BaseException:  # Ctrl-C: in-flight downloads stop, kept files are committed
        job.cancel.set()
        feeding.set()
        _join(workers, job, patience=job.fetch_options.timeout + 2)
        raise
    finally:
        pages.close()
    if job.full:
        run.stop, run.detail = ENOUGH, ""
    elif job.stop_error:
        run.stop, run.detail = STOPPED, "cannot write"
    log.info("%s for %r: %d pages, %d results, %d kept; %s", engine.name, job.result.keywords,
             run.pages, run.results, run.kept, run.describe())
    return run


def _next_page(pages: Iterator[list[Result]], run: EngineRun) -> list[Result] | None:
    """The next page's results; or None, once `run` says why the engine stopped."""
    try:
        found = next(pages)
    except StopIteration:
        run.stop = RAN_DRY
    except PageRefused as e:
        run.stop, run.detail = REFUSED, str(e)
    except PageUnreachable as e:
        run.stop, run.detail = UNREACHABLE, str(e)
    except _Cancelled:
        pass
    except Exception as e:  # a page came back that the engine's parser could not read
        run.pages += 1
        run.stop, run.detail = UNREADABLE, f"{type(e).__name__}: {first_line(e)}"
        log.info("%s: page %d unreadable", run.engine, run.pages, exc_info=True)
    else:
        run.pages += 1
        return found
    return None


def _work(job: ClassJob, tasks: queue.Queue, feeding: threading.Event) -> None:
    while not job.cancel.is_set():
        try:
            found = tasks.get(timeout=0.1)
        except queue.Empty:
            if feeding.is_set():
                return
            continue
        try:
            job.handle(found)
        except Exception:  # a bug must not kill the thread silently mid-crawl
            log.exception("unexpected error on %s", found.url)
        finally:
            tasks.task_done()


def _join(workers: list[threading.Thread], job: ClassJob, patience: float | None = None) -> None:
    """Wait for the download threads (at most `patience` seconds); Ctrl-C stays possible."""
    deadline = None if patience is None else time.monotonic() + patience
    for worker in workers:
        while worker.is_alive() and (deadline is None or time.monotonic() < deadline):
            worker.join(timeout=0.1)


class _Cancelled(Exception):
    pass


def _fetch_page(url: str, job: ClassJob) -> bytes:
    """A result page, with the same bounds and retries as an image; failures as the engines
    name them."""
    try:
        return download(url, job.session, job.checks.max_bytes, job.fetch_options, job.cancel)
    except DownloadFailed as e:
        if e.reason.startswith("http_"):
            raise PageRefused(int(e.reason[5:])) from None
        if e.reason == "cancelled":
            raise _Cancelled from None
        if e.reason == "too_large":
            raise ValueError(f"result page {e.detail}") from None
        host = urlsplit(url).hostname or url
        raise PageUnreachable(f"{host}: {e.detail or e.reason}") from None


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send the engines' and HTTP libraries' log lines to `path`, not the terminal."""
    handler: logging.Handler
    try:
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    except OSError:
        handler = logging.NullHandler()
    handler.handleError = lambda record: None  # a full disk must not print tracebacks
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()


def _session(threads: int, fetch: FetchOptions) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=threads + 2)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = fetch.max_redirects
    session.headers["User-Agent"] = _BROWSER_AGENT
    return session


# --------------------------------------------------------------------------- crawl

def crawl(queries: Sequence[str | Query], *, root: str | os.PathLike = "datasets",
          per_class: int = 400, engines: Sequence[str] = SEARCH_ENGINES,
          urls: str | os.PathLike | None = None, license: str = "any",
          checks: images.Checks = images.Checks(), threshold: int = dedupe.DEFAULT_THRESHOLD,
          threads: int = DEFAULT_THREADS, per_host: int = DEFAULT_PER_HOST,
          fetch: FetchOptions = FetchOptions(), progress: bool = False) -> CrawlReport:
    """Top up every class folder under `root` to `per_class` usable, distinct images.

    `engines` are tried in order for each class until it is full. With `urls` (a file of
    image URLs, `LABEL URL` per line) the engine is `urls` and queries may be omitted.
    `license` (one of LICENSES) asks the engines that can filter by license to do so and
    skips the others. Downloads run on `threads` threads, at most `per_host` at a time from
    one host. Ctrl-C stops cleanly: kept files and manifests stay consistent, and the
    KeyboardInterrupt propagates.
    """
    parsed = [q if isinstance(q, Query) else parse_query(q) for q in queries]
    engines = list(engines)
    url_lists: dict[str, list[str]] = {}
    if license not in LICENSES:
        raise ToolkitError(f"unknown license {license!r}; choose from {', '.join(LICENSES)}")
    if urls is not None or "urls" in engines:
        if urls is None:
            raise ToolkitError("--engine urls needs --urls FILE (one image URL per line)")
        if license != "any":
            raise ToolkitError("--license filters search engines, not a URL list; drop --license "
                               "or --urls")
        engines = ["urls"]
        url_lists = read_url_list(urls, parsed)
        labels = {q.label for q in parsed}
        parsed += [Query(label, "") for label in url_lists if label not in labels]
    check_labels(parsed)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ToolkitError(f"unknown engine {', '.join(unknown) or '(none)'}; choose from "
                           f"{', '.join(ENGINES)}")
    if license != "any" and not license_capable(engines, license):
        raise ToolkitError(f"none of {', '.join(engines)} can filter by license {license}; use "
                           f"--engine {','.join(license_capable(SEARCH_ENGINES, license))}")
    if per_class < 1:
        raise OptionError("per_class", per_class, "must be at least 1")
    for name, value in (("threads", threads), ("per_host", per_host)):
        if value < 1:
            raise OptionError(name, value, "must be at least 1")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolkitError(f"cannot create {root}: {e.strerror}") from None
    with _log_to(root / LOG_NAME):
        return _crawl(parsed, root, per_class, engines, url_lists, license, checks, threshold,
                      threads, per_host, fetch, progress)


def _crawl(parsed: list[Query], root: Path, per_class: int, engines: list[str],
           url_lists: dict[str, list[str]], license: str, checks: images.Checks,
           threshold: int, threads: int, per_host: int, fetch: FetchOptions,
           progress: bool) -> CrawlReport:
    folders = {q.label: ClassFolder(root, q.label) for q in parsed}
    entries = {label: folder.reconcile(checks) for label, folder in folders.items()}
    for label in _other_classes(root, folders):  # pack sees them too: no duplicate of theirs
        entries[label] = ClassFolder(root, label).entries(checks)
    usable = usable_counts(entries, checks, threshold)
    made = decisions.read(root)
    for label in usable:  # review: what was dropped (or moved away) does not count
        usable[label] -= len(decisions.left_out(root, label, made)
                             & {e["file"] for e in entries[label]})
    known_urls = {e["url"] for kept in entries.values() for e in kept if e.get("url")}
    known_urls |= decisions.dropped_urls(root, made)  # review: never fetch a dropped image again
    for folder in folders.values():
        known_urls |= folder.refused_urls()
    chain = _Chain(license, threads)
    report = CrawlReport(str(root), [], warnings=chain.warnings)
    index, session = _hash_index(entries, checks, threshold), _session(threads, fetch)
    hosts = HostSlots(per_host)
    for q in parsed:
        result = ClassResult(q.label, q.keywords, per_class, kept=usable[q.label])
        report.classes.append(result)
        folder = folders[q.label]
        with tqdm(total=per_class, initial=min(result.kept, per_class), desc=q.label,
                  unit="img", disable=not progress, leave=True) as bar:
            job = ClassJob(folder, result, index, known_urls, checks, fetch, license, session,
                           hosts, bar)
            if "urls" in engines:
                chain.fill(job, [_UrlList(url_lists[q.label])] if url_lists.get(q.label) else [])
            else:
                chain.fill(job, [search_engine(name) for name in engines])
        result.top_hosts = top_hosts(read_jsonl(folder.manifest))
        if folder.reject_error:
            report.warnings.append(
                f"cannot write {folder.rejected_log.name} ({folder.reject_error.strerror}): URLs "
                "refused for good will be fetched again by the next run")
        if job.stop_error:
            report.stopped_by = (f"cannot write to {folder.dir}: "
                                 f"{job.stop_error.strerror or job.stop_error}")
            break
    return report


class _Chain:
    """The fallback chain across a crawl's classes: an engine that cannot filter by the
    license is skipped, one refused or unreachable is not asked again, and each engine's
    first problem is one warning."""

    def __init__(self, license: str, threads: int):
        self.license, self.threads = license, threads
        self.unavailable: dict[str, EngineRun] = {}
        self.warnings: list[str] = []
        self._warned: set[str] = set()

    def fill(self, job: ClassJob, engines: list[Engine]) -> None:
        """Try `engines` in turn until the job's class is full; record each in its result."""
        for engine in engines:
            if job.full or job.stop_error:
                return
            if not engine.can_filter(self.license):
                run = EngineRun(engine.name, stop=SKIPPED,
                                detail=f"cannot filter by license {self.license}")
                self._warn(engine.name, f"{engine.name} cannot filter by license; skipped")
            elif engine.name in self.unavailable:
                first = self.unavailable[engine.name]
                run = EngineRun(engine.name, stop=first.stop, detail=first.detail)
            else:
                run = _run_engine(engine, job, self.threads)
                if run.failed:
                    self._warn(engine.name, run.advice(job.result.label))
                if run.stop in (REFUSED, UNREACHABLE):
                    self.unavailable[engine.name] = run
            job.result.engines.append(run)

    def _warn(self, engine: str, message: str) -> None:
        if engine not in self._warned:
            self._warned.add(engine)
            self.warnings.append(message)


def _other_classes(root: Path, folders: dict[str, ClassFolder]) -> list[str]:
    """Class folders under `root` that this crawl is not about: read, never changed."""
    return sorted(e.name for e in os.scandir(root)
                  if e.is_dir() and not e.name.startswith(".") and e.name not in folders)
