"""Crawl image search engines into class folders of usable, distinct images: the orchestration.

The engines (:mod:`~toolkit.collect.engines`) turn a query into pages of image URLs; this
module chains them over the classes and gives a dataset what they lack:

- `--per-class N` counts *usable* images (see :mod:`toolkit.core.images`), and nothing that
  duplicates an image already kept in any class (see :mod:`toolkit.core.dedupe`), so the
  crawler over-fetches until it has N or every engine has stopped;
- for every engine and class it records pages, results and kept images, and why the engine
  stopped (:mod:`~toolkit.collect.crawl_report`); a blocked or broken engine is a warning,
  never silently "no results";
- downloads run on a bounded pool of threads, at most a few at a time per host
  (:mod:`~toolkit.collect.pool`), and each is bounded (:mod:`~toolkit.collect.fetch`);
- files are content-addressed and written atomically, next to a per-class manifest that
  records where each came from (:mod:`~toolkit.collect.folder`,
  :mod:`~toolkit.collect.manifest`); a rerun tops up without downloading a known URL again
  and never overwrites a file;
- the engines' and HTTP libraries' own log lines go to `<root>/crawl.log`, not the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..core import decisions, dedupe, images
from ..core.errors import OptionError, ToolkitError
from ..core.files import open_to_append
from ..core.locks import holding
from . import manifest
from .addresses import private_addresses_allowed
from .crawl_report import REFUSED, SKIPPED, UNREACHABLE, ClassResult, CrawlReport, EngineRun
from .engines import (
    DEFAULT_PER_HOST,
    DEFAULT_THREADS,
    ENGINES,
    LICENSES,
    SEARCH_ENGINES,
    Engine,
    UrlList,
    license_capable,
    search_engine,
)
from .fetch import FetchOptions
from .folder import ClassFolder
from .pool import ClassJob, Downloads, Limits, run_engine
from .queries import Query, check_labels, parse_query, read_url_list

#: Where the engines' and HTTP libraries' own log lines go, under the crawl's root.
LOG_NAME = "crawl.log"
_LOGGERS = ("icrawler", "ddgs", "primp", "urllib3", __package__)


@dataclass(frozen=True)
class Quota:
    """What fills a class: `per_class` images that pass `checks`, none within `threshold`
    bits of another image kept in any class."""

    per_class: int
    checks: images.Checks
    threshold: int


@dataclass(frozen=True)
class Sources:
    """Where a crawl's image URLs come from: search engines by name, in the order tried, or the
    user's URL lists (engine `urls`); and the license asked of the engines."""

    engines: tuple[str, ...]
    url_lists: Mapping[str, list[str]]
    license: str

    def engines_for(self, label: str) -> list[Engine]:
        if UrlList.name in self.engines:
            return [UrlList(self.url_lists[label])] if self.url_lists.get(label) else []
        return [search_engine(name) for name in self.engines]


def crawl(queries: Sequence[str | Query], *, root: str | os.PathLike = "datasets",
          per_class: int = 400, engines: Sequence[str] = SEARCH_ENGINES,
          urls: str | os.PathLike | None = None, license: str = "any",
          checks: images.Checks = images.Checks(), threshold: int = dedupe.DEFAULT_THRESHOLD,
          threads: int = DEFAULT_THREADS, per_host: int = DEFAULT_PER_HOST,
          fetch: FetchOptions = FetchOptions(), allow_private_addresses: bool = False,
          progress: bool = False) -> CrawlReport:
    """Top up every class folder under `root` to `per_class` usable, distinct images.

    `engines` are tried in order for each class until it is full. With `urls` (a file of
    image URLs, `LABEL URL` per line) the engine is `urls` and queries may be omitted.
    `license` (one of LICENSES) asks the engines that can filter by license to do so and
    skips the others. An image is usable if it passes `checks` (:class:`toolkit.core.images.Checks`)
    and distinct if its perceptual hash is more than `threshold` bits from every other kept
    image's. Downloads run on `threads` threads, at most `per_host` at a time from one host,
    each within `fetch` (:class:`toolkit.collect.fetch.FetchOptions`). Ctrl-C stops cleanly:
    kept files and manifests stay consistent, and the KeyboardInterrupt propagates.

    Only global addresses are fetched (:mod:`toolkit.collect.addresses`): a page or redirect
    that points into the user's own network is refused, unless `allow_private_addresses` (or
    TOOLKIT_ALLOW_PRIVATE_ADDRESSES=1) says the user's intranet may be crawled. A crawl holds
    a lock on each class it writes: a second crawl of the same class stops with one line.
    """
    parsed = [q if isinstance(q, Query) else parse_query(q) for q in queries]
    engines = list(engines)
    url_lists: dict[str, list[str]] = {}
    if license not in LICENSES:
        raise ToolkitError(f"unknown license {license!r}; choose from {', '.join(LICENSES)}")
    if urls is not None or UrlList.name in engines:
        if urls is None:
            raise ToolkitError("--engine urls needs --urls FILE (one image URL per line)")
        if license != "any":
            raise ToolkitError("--license filters search engines, not a URL list; drop --license "
                               "or --urls")
        engines = [UrlList.name]
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
        return _crawl(parsed, root, Quota(per_class, checks, threshold),
                      Sources(tuple(engines), url_lists, license),
                      Limits(threads, per_host, fetch, private_addresses_allowed(allow_private_addresses)),
                      progress)


def _crawl(parsed: list[Query], root: Path, quota: Quota, sources: Sources, limits: Limits,
           progress: bool) -> CrawlReport:
    with contextlib.ExitStack() as locks:
        for q in parsed:  # two crawls of one class at once would both count and record
            locks.enter_context(holding(root / q.label, f"class {q.label} in {root}"))
        return _crawl_held(parsed, root, quota, sources, limits, progress)


def _crawl_held(parsed: list[Query], root: Path, quota: Quota, sources: Sources, limits: Limits,
                progress: bool) -> CrawlReport:
    folders = {q.label: ClassFolder(root, q.label) for q in parsed}
    engines = [e for q in parsed for e in sources.engines_for(q.label)]
    usable, downloads = _take_stock(root, folders, quota, sources.license, limits, engines)
    chain = _Chain(sources.license)
    report = CrawlReport(str(root), [], warnings=chain.warnings)
    for q in parsed:
        result = ClassResult(q.label, q.keywords, quota.per_class, kept=usable[q.label])
        report.classes.append(result)
        folder = folders[q.label]
        with tqdm(total=quota.per_class, initial=min(result.kept, quota.per_class), desc=q.label,
                  unit="img", disable=not progress, leave=True) as bar:
            job = ClassJob(folder, result, downloads, bar)
            chain.fill(job, sources.engines_for(q.label))
        result.top_hosts = manifest.top_hosts(manifest.read_jsonl(folder.manifest))
        if folder.reject_error:
            report.warnings.append(
                f"cannot write {folder.rejected_log.name} ({folder.reject_error.strerror}): URLs "
                "refused for good will be fetched again by the next run")
        if job.stop_error:
            report.stopped_by = (f"cannot write to {folder.dir}: "
                                 f"{job.stop_error.strerror or job.stop_error}")
            break
    return report


def _take_stock(root: Path, folders: dict[str, ClassFolder], quota: Quota, license: str,
                limits: Limits, engines: Sequence[Engine]) -> tuple[dict[str, int], Downloads]:
    """What the crawl starts from: each class's usable images (less what review left out),
    and every image and URL that a download must not repeat."""
    checks, threshold = quota.checks, quota.threshold
    entries = {label: folder.reconcile(checks) for label, folder in folders.items()}
    for label in _other_classes(root, folders):  # pack sees them too: no duplicate of theirs
        entries[label] = ClassFolder(root, label).entries(checks)
    usable = manifest.usable_counts(entries, checks, threshold)
    made = decisions.read(root)
    for label in usable:  # review: what was dropped (or moved away) does not count
        usable[label] -= len(decisions.left_out(root, label, made)
                             & {e["file"] for e in entries[label]})
    known_urls = {e["url"] for kept in entries.values() for e in kept if e.get("url")}
    known_urls |= decisions.dropped_urls(root, made)  # review: never fetch a dropped image again
    for folder in folders.values():
        known_urls |= folder.refused_urls()
    index = manifest.hash_index(entries, checks, threshold)
    return usable, Downloads.start(checks, license, limits, index, known_urls, engines)


class _Chain:
    """The fallback chain across a crawl's classes: an engine that cannot filter by the
    license is skipped, one refused or unreachable is not asked again, and each engine's
    first problem is one warning."""

    def __init__(self, license: str):
        self.license = license
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
                run = run_engine(engine, job)
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


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send the engines', the HTTP libraries' and this package's log lines to `path`, not the
    terminal."""
    handler: logging.Handler
    stream = None
    try:  # never through a link: log lines carry URLs and titles that web pages chose
        stream = os.fdopen(open_to_append(path), "a", encoding="utf-8")
        handler = logging.StreamHandler(stream)
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
        if stream is not None:
            stream.close()
