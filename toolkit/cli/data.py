"""`toolkit pack`: the command line of stage 3, over :func:`toolkit.data.packer.pack`."""

from __future__ import annotations

import click

from ..core.architectures import SMALLEST_INPUT
from .common import progress_enabled, user_errors
from .options import LibraryChoice, LibraryDefault, min_side_option, threshold_option

PACK = "toolkit.data.packer:pack"  # whose keyword defaults are the flags' defaults


@click.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Archive to write (.npz).")
@click.option("--per-class", default=LibraryDefault(PACK, "per_class"), show_default=True, type=int,
              help="Images per class in the archive.")
@click.option("--test-size", default=LibraryDefault(PACK, "test_size"), show_default=True, type=float,
              help="Fraction of each class held out for testing.")
@click.option("--size", default=LibraryDefault(PACK, "size"), show_default=True, type=int,
              help="Side of the square images.")
@click.option("--fit", default=LibraryDefault(PACK, "fit"), show_default=True,
              type=LibraryChoice("toolkit.core.images:FITS"),
              help="crop: fill the square, cut the centre; pad: fit inside, pad black; "
                   "stretch: ignore the aspect ratio.")
@click.option("--seed", default=LibraryDefault(PACK, "seed"), show_default=True, type=int,
              help="Seed for picking and splitting.")
@min_side_option(PACK)
@threshold_option(PACK)
@click.option("--allow-fewer", is_flag=True, help="Pack classes that have fewer than --per-class.")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
@click.option("--drop-suspects", is_flag=True,
              help="Also leave out the suspects of SOURCE/review.json that no review decision kept.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Decoding threads [default: all cores].")
@user_errors
def pack(source, out, per_class, test_size, size, fit, seed, min_side, threshold, allow_fewer,
         force, drop_suspects, workers):
    """Clean SOURCE's class folders into a train/test archive.

    Every file is decoded and checked; broken, tiny, oversized, duplicate and
    cross-class (label-noise) images are left out, and so are images dropped in
    `toolkit review` (moved ones are packed under their new class). The report - printed and saved as
    <out>.report.txt/.json - says what happened to each file.
    """
    from ..core.images import Checks
    from ..data import packer

    try:
        report = packer.pack(source, out, per_class=per_class, test_size=test_size, size=size,
                             fit=fit, seed=seed, checks=Checks(min_side=min_side),
                             threshold=threshold, allow_fewer=allow_fewer, force=force,
                             drop_suspects=drop_suspects, workers=workers,
                             progress=progress_enabled())
    except packer.NotEnoughImages as e:
        click.echo(e.report.table(), err=True)
        raise
    click.echo(report.table())
    click.echo(f"\nwrote {out}: {sum(report.train_counts)} train / {sum(report.test_counts)} "
               f"test images of {size}x{size} ({', '.join(report.class_names)})")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if size < SMALLEST_INPUT:
        click.echo(f"warning: --size {size} is below {SMALLEST_INPUT}, the smallest input of the "
                   "pretrained backbones; only --strategy cnn can train on it", err=True)
