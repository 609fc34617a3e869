"""`toolkit crawl`: the command line of stage 1, over :func:`toolkit.collect.crawler.crawl`."""

from __future__ import annotations

import click

from ..collect.engines import DEFAULT_PER_HOST, DEFAULT_THREADS, ENGINES, LICENSES, SEARCH_ENGINES
from ..core.errors import ToolkitError
from .common import progress_enabled, user_errors
from .options import LibraryDefault, min_side_option, threshold_option

CRAWL = "toolkit.collect.crawler:crawl"  # whose keyword defaults are the flags' defaults


def _engines(ctx, param, values: tuple[str, ...]) -> list[str]:
    engines = [e.strip().lower() for v in values for e in v.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise click.BadParameter(f"unknown engine {', '.join(unknown)}; choose from "
                                 f"{', '.join(ENGINES)}")
    return engines or list(SEARCH_ENGINES)


@click.command()
@click.argument("queries", nargs=-1)
@click.option("--per-class", default=LibraryDefault(CRAWL, "per_class"), show_default=True, type=int,
              help="Usable, distinct images wanted per class (counting those already there).")
@click.option("--engine", "engines", multiple=True, callback=_engines, metavar="NAME",
              help=f"{', '.join(ENGINES)}; repeat (or comma-separate) for a fallback chain.  "
                   f"[default: {','.join(SEARCH_ENGINES)}]")
@click.option("--urls", type=click.Path(dir_okay=False), default=None,
              help="File of image URLs (`URL` or `LABEL URL` per line); implies --engine urls.")
@click.option("--license", "license_", default=LibraryDefault(CRAWL, "license"), show_default=True,
              type=click.Choice(LICENSES),
              help="Only images under this license, from the engines that can filter by it "
                   "(the others are skipped).")
@click.option("--root", default=LibraryDefault(CRAWL, "root"), show_default=True,
              type=click.Path(file_okay=False), help="Data root: one folder per class.")
@min_side_option(CRAWL)
@threshold_option(CRAWL)
@click.option("--threads", default=DEFAULT_THREADS, show_default=True,
              type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--per-host", default=DEFAULT_PER_HOST, show_default=True,
              type=click.IntRange(1, 64), help="Parallel downloads from any one host.")
@click.option("--timeout", default=LibraryDefault(CRAWL, "fetch", "timeout"), show_default=True,
              type=click.FloatRange(0.1), help="Seconds to wait on a server before giving up on it.")
@click.option("--allow-private-addresses", is_flag=True,
              help="Also fetch loopback, link-local and private-range addresses (your own intranet); "
                   "by default only the open web's are (also TOOLKIT_ALLOW_PRIVATE_ADDRESSES=1).")
@user_errors
def crawl(queries, per_class, engines, urls, license_, root, min_side, threshold, threads,
          per_host, timeout, allow_private_addresses):
    """Download images for each QUERY into ROOT/<label>/.

    A QUERY is a class label, searched as it is (`poodle`), or a label with its own
    search words (`poodle="poodle dog"`). Running the same crawl again tops each class up
    to --per-class without downloading anything twice. Prints a summary per class and per
    engine, with a warning for each engine that refused, could not be reached or could not
    be read; exits 1 only if a class is short because no engine could serve it. The
    engines' own log lines go to ROOT/crawl.log. Set TOOLKIT_BING_URL (or _DDG_, _BAIDU_,
    _GOOGLE_) to reach an engine at another address.
    """
    from ..collect import crawler
    from ..core.images import Checks

    report = crawler.crawl(list(queries), root=root, per_class=per_class, engines=engines, urls=urls,
                           license=license_, checks=Checks(min_side=min_side), threshold=threshold,
                           threads=threads, per_host=per_host,
                           fetch=crawler.FetchOptions(timeout=timeout),
                           allow_private_addresses=allow_private_addresses, progress=progress_enabled())
    click.echo(report.table())
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.stopped_by:
        raise ToolkitError(f"crawl stopped: {report.stopped_by}; free some space and run the "
                           "same command again to top up")
    for c in report.classes:
        if not c.complete:
            click.echo(c.why_short(), err=True)
    if report.blocked:
        raise ToolkitError(f"{len(report.blocked)} of {len(report.classes)} classes are short "
                           f"of {per_class} because no engine could serve them "
                           f"({', '.join(c.label for c in report.blocked)}): see the warnings "
                           "above")
    if not report.complete:
        click.echo("The engines ran out of results: run again later to top up, add --engine, "
                   "or pack with --allow-fewer.", err=True)
