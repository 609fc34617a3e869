"""The `toolkit` command: parse options, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import os
import signal
import sys
import warnings

import click

from . import __version__
from .errors import ToolkitError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow


def user_errors(command):
    """Turn a ToolkitError into one line on stderr and exit 1; Ctrl-C into exit 130."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ToolkitError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted: nothing partial was left behind; run the same command "
                       "again to continue.", err=True)
            raise click.exceptions.Exit(130) from None
    return wrapper


def progress_enabled() -> bool:
    return sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="toolkit")
def cli() -> None:
    """From search queries to a trained, evaluated image classifier.

    \b
      toolkit crawl hedgehog hamster poodle     # 400 usable images per class into datasets/
      toolkit pack --out animal.npz             # clean, dedupe, resize, stratified split
      toolkit train --strategy finetune         # cnn | extract | finetune | augment
    """


# --------------------------------------------------------------------------- crawl

def _engines(ctx, param, values: tuple[str, ...]) -> list[str]:
    from .crawler import ENGINES, SEARCH_ENGINES
    engines = [e.strip().lower() for v in values for e in v.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise click.BadParameter(f"unknown engine {', '.join(unknown)}; choose from "
                                 f"{', '.join(ENGINES)}")
    return engines or list(SEARCH_ENGINES)


@cli.command()
@click.argument("queries", nargs=-1)
@click.option("--per-class", default=400, show_default=True, type=int,
              help="Usable, distinct images wanted per class (counting those already there).")
@click.option("--engine", "engines", multiple=True, callback=_engines, metavar="NAME",
              help="bing, baidu, google, or urls; repeat (or comma-separate) for a fallback "
                   "chain.  [default: bing,baidu,google]")
@click.option("--urls", type=click.Path(dir_okay=False), default=None,
              help="File of image URLs (`URL` or `LABEL URL` per line); implies --engine urls.")
@click.option("--root", default="datasets", show_default=True, type=click.Path(file_okay=False),
              help="Data root: one folder per class.")
@click.option("--min-side", default=100, show_default=True, type=click.IntRange(1),
              help="Smallest usable image side, in pixels.")
@click.option("--threshold", default=8, show_default=True, type=click.IntRange(0, 64),
              help="Perceptual-hash bits within which two images are the same picture.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Parallel downloads.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait on a server before giving up on it.")
@user_errors
def crawl(queries, per_class, engines, urls, root, min_side, threshold, threads, timeout):
    """Download images for each QUERY into ROOT/<label>/.

    A QUERY is a class label, searched as it is (`poodle`), or a label with its own
    search words (`poodle="poodle dog"`). Running the same crawl again tops each class up
    to --per-class without downloading anything twice. Set TOOLKIT_BING_URL (or _BAIDU_,
    _GOOGLE_) to reach an engine at another address.
    """
    from .crawler import FetchOptions, crawl as run_crawl
    from .images import Checks

    report = run_crawl(list(queries), root=root, per_class=per_class, engines=engines, urls=urls,
                       checks=Checks(min_side=min_side), threshold=threshold, threads=threads,
                       fetch=FetchOptions(timeout=timeout), progress=progress_enabled())
    click.echo(report.table())
    if report.stopped_by:
        raise ToolkitError(f"crawl stopped: {report.stopped_by}; free some space and run the "
                           "same command again to top up")
    short = [c for c in report.classes if not c.complete]
    for c in short:
        click.echo(c.why_short(), err=True)
    if short:
        raise ToolkitError(f"{len(short)} of {len(report.classes)} classes are short of "
                           f"{per_class}: run again later to top up, add --engine, or pack "
                           "with --allow-fewer")


# --------------------------------------------------------------------------- pack

@cli.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Archive to write (.npz).")
@click.option("--per-class", default=400, show_default=True, type=int,
              help="Images per class in the archive.")
@click.option("--test-size", default=0.2, show_default=True, type=float,
              help="Fraction of each class held out for testing.")
@click.option("--size", default=224, show_default=True, type=int, help="Side of the square images.")
@click.option("--fit", default="crop", show_default=True,
              type=click.Choice(["crop", "pad", "stretch"]),
              help="crop: fill the square, cut the centre; pad: fit inside, pad black; "
                   "stretch: ignore the aspect ratio.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed for picking and splitting.")
@click.option("--min-side", default=100, show_default=True, type=click.IntRange(1),
              help="Smallest usable image side, in pixels.")
@click.option("--threshold", default=8, show_default=True, type=click.IntRange(0, 64),
              help="Perceptual-hash bits within which two images are the same picture.")
@click.option("--allow-fewer", is_flag=True, help="Pack classes that have fewer than --per-class.")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
@click.option("--workers", default=None, type=click.IntRange(1), help="Decoding threads [default: all cores].")
@user_errors
def pack(source, out, per_class, test_size, size, fit, seed, min_side, threshold, allow_fewer,
         force, workers):
    """Clean SOURCE's class folders into a train/test archive.

    Every file is decoded and checked; broken, tiny, oversized, duplicate and
    cross-class (label-noise) images are left out, and the report - printed and saved as
    <out>.report.txt/.json - says what happened to each file.
    """
    from .archive import NotEnoughImages, pack as run_pack
    from .images import Checks

    try:
        report = run_pack(source, out, per_class=per_class, test_size=test_size, size=size,
                          fit=fit, seed=seed, checks=Checks(min_side=min_side),
                          threshold=threshold, allow_fewer=allow_fewer, force=force,
                          workers=workers, progress=progress_enabled())
    except NotEnoughImages as e:
        click.echo(e.report.table(), err=True)
        raise
    click.echo(report.table())
    click.echo(f"\nwrote {out}: {sum(report.train_counts)} train / {sum(report.test_counts)} "
               f"test images of {size}x{size} ({', '.join(report.class_names)})")
    if size < 32:
        click.echo(f"warning: --size {size} is below 32, the smallest input of the pretrained "
                   "backbones; only --strategy cnn can train on it", err=True)


def main() -> None:
    """Console entry point: quiet library warnings, make SIGTERM behave like Ctrl-C."""
    warnings.filterwarnings("ignore", module="PIL")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="toolkit")


if __name__ == "__main__":
    main()
