"""One class x one engine: read the engine's result pages and download what they list on a pool of
threads, until the class is full or the engine stops."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from ..core import dedupe, images
from ..core.errors import first_line
from .addresses import AddressPolicy, user_set_addresses
from .crawl_report import (
    ENOUGH,
    NO_RESULTS,
    RAN_DRY,
    REFUSED,
    STOPPED,
    UNREACHABLE,
    UNREADABLE,
    ClassResult,
    EngineRun,
)
from .engines import DEFAULT_PER_HOST, DEFAULT_THREADS, Engine, PageRefused, PageUnreachable, Result, UrlList
from .fetch import DownloadFailed, FetchOptions, download, is_permanent, new_session
from .folder import ClassFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How hard a crawl pulls: `threads` downloads at once, at most `per_host` of them from one
    host, each within `fetch`'s bounds."""

    threads: int = DEFAULT_THREADS
    per_host: int = DEFAULT_PER_HOST
    fetch: FetchOptions = FetchOptions()
    allow_private: bool = False  # fetch private addresses too (addresses.py): the user's intranet


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


@dataclass(frozen=True)
class Downloads:
    """What the downloads of every class in one crawl share: the rules, the connections, and
    what is already held."""

    checks: images.Checks       # what a kept image must be; its max_bytes caps every download
    license: str                # asked of the engines, recorded in the manifest
    limits: Limits
    index: dedupe.HashIndex     # every image kept in any class: a duplicate of one is refused
    known_urls: set[str]        # never fetched (again): kept, refused for good, dropped in review
    session: requests.Session       # images, and every redirect: only where the policy allows
    page_session: requests.Session  # result pages: also the engine addresses the user set
    hosts: HostSlots

    @classmethod
    def start(cls, checks: images.Checks, license: str, limits: Limits, index: dedupe.HashIndex,
              known_urls: set[str], engines: Sequence[Engine] = ()) -> Downloads:
        images_policy = AddressPolicy(allow_private=limits.allow_private)
        pages_policy = AddressPolicy(limits.allow_private, user_set_addresses(engines))
        return cls(checks, license, limits, index, known_urls,
                   new_session(limits.threads, images_policy), new_session(2, pages_policy),
                   HostSlots(limits.per_host))

    def image(self, url: str, cancel: threading.Event) -> bytes:
        """An image's bytes within the bounds, holding one of its host's slots meanwhile."""
        with self.hosts.slot(url, cancel):
            return download(url, self.session, self.checks.max_bytes, self.limits.fetch, cancel)

    def page(self, url: str, cancel: threading.Event) -> bytes:
        """A result page's bytes within the bounds (a result page takes no host slot)."""
        return download(url, self.page_session, self.checks.max_bytes, self.limits.fetch, cancel)


class ClassJob:
    """Downloads for one class: decides each URL, under one lock shared by its threads."""

    def __init__(self, folder: ClassFolder, result: ClassResult, downloads: Downloads, bar: tqdm):
        self.folder, self.result, self.downloads, self.bar = folder, result, downloads, bar
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
        shared = self.downloads
        with self.lock:
            if url in shared.known_urls:
                self.result.known += 1
                return
            shared.known_urls.add(url)
        try:
            data = shared.image(url, self.cancel)
            info, _ = images.decode(data, shared.checks)
        except DownloadFailed as e:
            if e.reason != "cancelled":
                self._fail(url, e.reason, e.detail)
            return
        except images.Unusable as e:
            return self._fail(url, e.reason, e.detail)
        with self.lock:
            if self.cancel.is_set():
                return
            owner = shared.index.match(info.sha256, info.phash)
            if owner is not None:
                self.result.duplicates += 1
                self.folder.reject(url, "duplicate", f"of an image in {owner}")
                return
            shared.index.add(info.sha256, info.phash, self.folder.label)
            self.result.kept += 1  # reserved; undone below if the write fails
            if self.full:
                self.cancel.set()  # in-flight downloads stop; this one is kept
        run = self.run
        try:
            self.folder.commit(data, info, found, run.engine, self.result.keywords, shared.license)
        except OSError as e:
            with self.lock:
                shared.index.remove(info.sha256, info.phash)
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


def run_engine(engine: Engine, job: ClassJob) -> EngineRun:
    """Read `engine`'s pages for the job's class and download what they list on the crawl's
    threads, until the class is full or the engine stops; say why it stopped."""
    run = job.run = EngineRun(engine.name)
    threads, timeout = job.downloads.limits.threads, job.downloads.limits.fetch.timeout
    # unbounded: pages are read ahead of the downloads (a page read takes one round trip,
    # like an image), and only while what is queued cannot fill the class
    tasks: queue.Queue[Result] = queue.Queue()
    feeding = threading.Event()
    workers = [threading.Thread(target=_work, args=(job, tasks, feeding), daemon=True,
                                name=f"crawl-{engine.name}-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    seen: set[str] = set()
    pages = engine.search(job.result.keywords, job.downloads.license,
                          lambda url: _fetch_page(url, job), timeout)
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
                if run.pages == 1 and not isinstance(engine, UrlList):
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
        _join(workers, job, patience=timeout + 2)
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
        return job.downloads.page(url, job.cancel)
    except DownloadFailed as e:
        if e.reason.startswith("http_"):
            raise PageRefused(int(e.reason[5:])) from None
        if e.reason == "cancelled":
            raise _Cancelled from None
        if e.reason == "too_large":
            raise ValueError(f"result page {e.detail}") from None
        host = urlsplit(url).hostname or url
        raise PageUnreachable(f"{host}: {e.detail or e.reason}") from None


