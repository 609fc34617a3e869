"""What a crawl did, per class and per engine, and the words that say so: the summary table, the
warnings, why a class is short."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ..core.text import text_table

#: Why an engine stopped for a class.
ENOUGH, RAN_DRY, REFUSED, UNREACHABLE, UNREADABLE, SKIPPED, STOPPED = (
    "enough", "ran dry", "refused", "unreachable", "unreadable", "skipped", "stopped")
#: Stops that mean the engine could not serve the class (rather than had nothing more).
FAILURES = (REFUSED, UNREACHABLE, UNREADABLE)
#: Why a first page that parsed to nothing is UNREADABLE: a captcha, or a new page format.
NO_RESULTS = "no image results on the first page"


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
    """What a whole crawl did: each class, what stopped it early, and its warnings."""

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
