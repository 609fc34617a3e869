"""`toolkit pack`: the command line of stage 3, over :func:`toolkit.data.packer.pack` (one
`.npz`) and :func:`toolkit.data.shard_pack.pack_shards` (a folder of TFRecord shards)."""

from __future__ import annotations

import click

from ..core.architectures import SMALLEST_INPUT
from .common import progress_enabled, user_errors
from .options import LibraryChoice, LibraryDefault, min_side_option, threshold_option

PACK = "toolkit.data.packer:pack"  # whose keyword defaults are the flags' defaults


def _key_values(ctx, param, values: tuple[str, ...]) -> list[tuple[str, str]]:
    """--beam-option KEY=VALUE, repeated: (KEY, VALUE) pairs."""
    pairs = []
    for text in values:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{text!r}: write KEY=VALUE, e.g. region=europe-west1")
        pairs.append((key.strip().removeprefix("--"), value))
    return pairs


@click.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(),
              help="Archive to write (.npz), or with --format tfrecord a folder of shards.")
@click.option("--format", "format_", default="npz", show_default=True, type=click.Choice(["npz", "tfrecord"]),
              help="npz: one archive of pixels; tfrecord: a folder of TFRecord shards and "
                   "dataset.json, packed by an Apache Beam pipeline (the `scale` extra).")
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
              help="How much runs at once on this machine: decoding threads (npz) or Beam "
                   "worker processes (tfrecord).  [default: all cores]")
@click.option("--runner", default="DirectRunner", show_default=True,
              help="tfrecord: the Beam runner (DataflowRunner, FlinkRunner, SparkRunner, ...).")
@click.option("--encoding", default="jpeg", show_default=True, type=click.Choice(["jpeg", "png"]),
              help="tfrecord: the records' images as JPEG at quality 95, or as PNG (lossless, larger).")
@click.option("--beam-option", "beam_options", multiple=True, metavar="KEY=VALUE",
              callback=_key_values,
              help="tfrecord: a Beam pipeline option for the runner (project=..., region=...); repeat.")
@user_errors
def pack(source, out, format_, per_class, test_size, size, fit, seed, min_side, threshold, allow_fewer,
         force, drop_suspects, workers, runner, encoding, beam_options):
    """Clean SOURCE's class folders into a train/test archive.

    Every file is decoded and checked; broken, tiny, oversized, duplicate and
    cross-class (label-noise) images are left out, and so are images dropped in
    `toolkit review` (moved ones are packed under their new class). The report - printed and saved as
    <out>.report.txt/.json (DIR/report.txt/.json for shards) - says what happened to each file.
    """
    from ..core.errors import ToolkitError
    from ..core.images import Checks
    from ..data import packer

    if format_ == "npz" and (beam_options or runner != "DirectRunner" or encoding != "jpeg"):
        raise ToolkitError("--runner, --beam-option and --encoding are for --format tfrecord")
    settings = dict(per_class=per_class, test_size=test_size, size=size, fit=fit, seed=seed,
                    checks=Checks(min_side=min_side), threshold=threshold, allow_fewer=allow_fewer,
                    force=force, drop_suspects=drop_suspects, workers=workers)
    try:
        if format_ == "tfrecord":
            from ..data.shard_pack import pack_shards

            report = pack_shards(source, out, runner=runner, beam_options=beam_options,
                                 encoding=encoding, **settings)
        else:
            report = packer.pack(source, out, progress=progress_enabled(), **settings)
    except packer.NotEnoughImages as e:
        click.echo(e.report.table(), err=True)
        raise
    click.echo(report.table())
    shards = " as TFRecord shards" if format_ == "tfrecord" else ""
    click.echo(f"\nwrote {out}: {sum(report.train_counts)} train / {sum(report.test_counts)} "
               f"test images of {size}x{size}{shards} ({', '.join(report.class_names)})")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if size < SMALLEST_INPUT:
        click.echo(f"warning: --size {size} is below {SMALLEST_INPUT}, the smallest input of the "
                   "pretrained backbones; only --strategy cnn can train on it", err=True)
