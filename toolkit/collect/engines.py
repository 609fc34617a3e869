"""Image search engines: where each is reached, which pages it is asked for, how they are read.

Every engine turns a query into pages of :class:`Result` (an image URL, and the page it
was found on and its title where the engine says). How a page is fetched and what its
failures mean is the crawler's business; an engine raises :class:`PageRefused` or
:class:`PageUnreachable` for what went wrong on the wire, and any other exception means
it could not read what came back.

- Bing: icrawler's page addresses and license filter, read by our own parser (icrawler
  0.6.10's keeps only result URLs that end in `.jpg`).
- DuckDuckGo: the `ddgs` package's own engine (its own HTTP client, which looks like a
  browser), at a configurable address.
- Baidu and Google: icrawler's page addresses, filters and parsers.

Each engine's address comes from an environment variable (`TOOLKIT_BING_URL`,
`TOOLKIT_DDG_URL`, `TOOLKIT_BAIDU_URL`, `TOOLKIT_GOOGLE_URL`), so tests run on loopback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, quote_plus, urlencode, urlsplit

#: License filters a user can ask for; "any" asks for none.
LICENSES = ("any", "creative-commons", "public-domain", "commercial")

#: Every engine returns at most this many results per query.
RESULT_LIMIT = 1000

#: Parallel downloads (a laptop's connection is saturated well before), and at most this
#: many at a time from one host, so that no site is hammered.
DEFAULT_THREADS = 16
DEFAULT_PER_HOST = 4

#: Fetches one page's bytes; raises PageRefused or PageUnreachable.
Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class Result:
    """One image an engine found: its URL and, where the engine gives them, its page and title."""

    url: str
    page: str | None = None
    title: str | None = None


class PageRefused(Exception):
    """The engine answered with an error status (403, 429, 5xx...)."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class PageUnreachable(Exception):
    """The engine could not be reached (DNS, connection refused, timeout, a proxy)."""


class Engine:
    """An image search engine; subclasses say where it is and how its pages read."""

    name: str = ""
    env_var: str = ""
    default_url: str = ""
    #: our license choice -> the engine's own filter value; a choice missing here cannot be asked
    licenses: ClassVar[Mapping[str, str]] = {}

    def base_url(self) -> str:
        """Where the engine is reached: its environment variable if set, else the real site."""
        return os.environ.get(self.env_var, self.default_url).rstrip("/")

    def can_filter(self, license: str) -> bool:
        return license == "any" or license in self.licenses

    def search(self, keywords: str, license: str, fetch: Fetch, timeout: float
               ) -> Iterator[list[Result]]:
        """Yield one list of results per page, first page first. `fetch(url)` gets a page's
        bytes within the crawl's bounds and retries; an engine that brings its own HTTP
        client (ddgs) uses `timeout` instead."""
        raise NotImplementedError


class _IcrawlerEngine(Engine):
    """An engine whose pages are plain HTTP GETs read by a parser function."""

    def page_urls(self, keywords: str, license: str) -> Iterator[str]:
        raise NotImplementedError

    def parse(self, body: bytes) -> list[Result]:
        raise NotImplementedError

    def search(self, keywords, license, fetch, timeout):
        for url in self.page_urls(keywords, license):
            yield self.parse(fetch(url))


class Bing(_IcrawlerEngine):
    name, env_var, default_url = "bing", "TOOLKIT_BING_URL", "https://www.bing.com"
    licenses: ClassVar[Mapping[str, str]] = {  # icrawler's BingFeeder filter names
        "creative-commons": "creativecommons", "public-domain": "publicdomain",
        "commercial": "commercial"}

    def page_urls(self, keywords, license):
        from icrawler.builtin.bing import BingFeeder
        qft = ""
        if license != "any":  # icrawler's own filter string, e.g. +filterui:license-L1
            qft = "&qft=" + BingFeeder.get_filter(None).apply({"license": self.licenses[license]})
        for first in range(0, RESULT_LIMIT, 20):
            yield f"{self.base_url()}/images/async?q={quote_plus(keywords)}&first={first}{qft}"

    def parse(self, body):
        """Every result's `m` attribute is JSON: murl (the image), purl (its page), t (title)."""
        from bs4 import BeautifulSoup
        soup = BeautifulSoup(body.decode("utf-8", "ignore"), "lxml")
        results = []
        for div in soup.find_all("div", class_="imgpt"):
            anchor = div.find("a", class_="iusc") or div.a
            try:
                meta = json.loads(anchor["m"])
            except (TypeError, KeyError, ValueError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("murl"), str) and meta["murl"]:
                results.append(Result(meta["murl"], _text(meta.get("purl")), _text(meta.get("t"))))
        return results


class Baidu(_IcrawlerEngine):
    name, env_var, default_url = "baidu", "TOOLKIT_BAIDU_URL", "https://image.baidu.com"

    def page_urls(self, keywords, license):
        for pn in range(0, RESULT_LIMIT, 30):
            yield (f"{self.base_url()}/search/acjson?tn=resultjson_com&ipn=rj"
                   f"&word={quote(keywords)}&pn={pn}&rn=30")

    def parse(self, body):
        from icrawler.builtin.baidu import BaiduParser
        parser = BaiduParser(1, None, None, name="icrawler.baidu")  # parse() uses no thread
        return [Result(task["file_url"]) for task in parser.parse(_Body(body)) or []]


class Google(_IcrawlerEngine):
    name, env_var, default_url = "google", "TOOLKIT_GOOGLE_URL", "https://www.google.com"
    licenses: ClassVar[Mapping[str, str]] = {  # icrawler's GoogleFeeder filter names
        "creative-commons": "noncommercial", "commercial": "commercial"}

    def page_urls(self, keywords, license):
        from icrawler.builtin.google import GoogleFeeder
        tbs = ""
        if license != "any":  # icrawler's own filter string, e.g. sur:fc
            tbs = GoogleFeeder.get_filter(None).apply({"license": self.licenses[license]}, sep=",")
        for start in range(0, RESULT_LIMIT, 100):
            params = urlencode({"q": keywords, "ijn": start // 100, "start": start, "tbs": tbs,
                                "tbm": "isch"})
            yield f"{self.base_url()}/search?{params}"

    def parse(self, body):
        from icrawler.builtin.google import GoogleParser
        parser = GoogleParser(1, None, None, name="icrawler.google")
        return [Result(task["file_url"]) for task in parser.parse(_Body(body)) or []]


class DuckDuckGo(Engine):
    """DuckDuckGo image search through `ddgs`: a vqd token from the search page, then JSON
    pages of 100 results from `i.js`. ddgs brings its own HTTP client (primp)."""

    name, env_var, default_url = "duckduckgo", "TOOLKIT_DDG_URL", "https://duckduckgo.com"
    licenses: ClassVar[Mapping[str, str]] = {  # ddgs' license_image values
        "creative-commons": "Any", "public-domain": "Public", "commercial": "ShareCommercially"}

    def search(self, keywords, license, fetch, timeout):
        client = _ddgs_engine(self.base_url(), timeout)
        options = {"license_image": self.licenses[license]} if license != "any" else {}
        for page in range(1, RESULT_LIMIT // 100 + 1):
            found = client.search(keywords, page=page, **options) or []
            yield [Result(r.image, _text(r.url), _text(r.title)) for r in found if r.image]


def _ddgs_engine(base_url: str, timeout: float):
    """ddgs' DuckduckgoImages at `base_url`, raising on a refused or failed request where
    ddgs itself would return "no results"."""
    from ddgs.engines.duckduckgo_images import DuckduckgoImages
    from ddgs.exceptions import DDGSException
    from ddgs.utils import _extract_vqd

    class Images(DuckduckgoImages):
        search_url = f"{base_url}/i.js"

        def _get_vqd(self, query: str) -> str:
            body = self.request("GET", base_url, params={"q": query})
            try:
                return _extract_vqd(body.encode(), query)
            except DDGSException:
                raise ValueError("no vqd token on the search page") from None

        def request(self, *args, **kwargs) -> str:
            try:
                response = self.http_client.request(*args, **kwargs)
            except DDGSException as e:
                host = urlsplit(args[1] if len(args) > 1 else base_url).hostname
                raise PageUnreachable(f"{host}: {connection_problem(e)}") from None
            if response.status_code != 200:
                raise PageRefused(response.status_code)
            return response.text

    return Images(timeout=max(1, round(timeout)))


class UrlList(Engine):
    """The user's own list of image URLs for a class, as one page of results."""

    name = "urls"

    def __init__(self, urls: list[str]):
        self.urls = urls

    def search(self, keywords, license, fetch, timeout):
        yield [Result(u) for u in self.urls]


class _Body:
    """What icrawler's parsers read from a response: its bytes."""

    def __init__(self, content: bytes):
        self.content = content


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def connection_problem(error: BaseException) -> str:
    """What a user can act on in a connection failure: a name that did not resolve, a refused
    connection, a timeout; else the error's type."""
    text = str(error)
    if any(s in text for s in ("Failed to resolve", "NameResolution", "Name or service",
                               "DNSError", "resolving DNS")):
        return "host name not resolved"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in type(error).__name__:
        return "timed out"
    return type(error).__name__


#: Every search engine, in the order most likely to work today (README explains why).
_ALL: dict[str, Engine] = {e.name: e for e in (Bing(), DuckDuckGo(), Baidu(), Google())}
SEARCH_ENGINES: tuple[str, ...] = tuple(_ALL)
#: Search engines plus `urls`, a list of image URLs given by the user.
ENGINES: tuple[str, ...] = (*SEARCH_ENGINES, UrlList.name)


def search_engine(name: str) -> Engine:
    return _ALL[name]


def license_capable(engines: Sequence[str], license: str) -> list[str]:
    """The engines of `engines` that can filter by `license`."""
    return [e for e in engines if e in _ALL and _ALL[e].can_filter(license)]
