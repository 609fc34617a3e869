"""`toolkit review`: the command line of stage 2, over :func:`toolkit.curate.reviewer.review`
and the gallery that records a person's decisions."""

from __future__ import annotations

import os

import click

from ..core.architectures import SMALLEST_INPUT
from ..core.errors import ToolkitError
from .common import load_tensorflow, progress_enabled, user_errors
from .options import (
    LibraryDefault,
    backbone_option,
    cache_dir_option,
    min_side_option,
    threshold_option,
    weights_option,
)

REVIEW = "toolkit.curate.reviewer:review"  # whose keyword defaults are the flags' defaults


@click.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@backbone_option(LibraryDefault(REVIEW, "backbone"), "Frozen pretrained base that embeds the images.")
@weights_option(LibraryDefault(REVIEW, "weights"))
@click.option("--size", default=LibraryDefault(REVIEW, "size"), show_default=True,
              type=click.IntRange(SMALLEST_INPUT), help="Side of the square the backbone sees.")
@min_side_option(REVIEW, " (as for pack)")
@threshold_option(REVIEW, " (as for pack)")
@cache_dir_option("embeddings")
@click.option("--reference", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of class folders of what the classes are not (sonic/ beside "
                   "hedgehog/): images like them are off-topic. Never packed.")
@click.option("--serve", is_flag=True, help="Then open the gallery: keep, drop or move images.")
@click.option("--port", default=0, type=click.IntRange(0, 65535),
              help="Gallery port on 127.0.0.1.  [default: a free one]")
@click.option("--no-browser", is_flag=True, help="Serve without opening a browser.")
@user_errors
def review(source, backbone, weights, size, min_side, threshold, cache_dir, reference, serve,
           port, no_browser):
    """Find off-topic and mislabeled images in SOURCE before `pack`.

    Judges exactly the images pack would use and writes SOURCE/review.json and a
    self-contained SOURCE/review.html. With --serve, a local gallery records keep / drop /
    move decisions in SOURCE/decisions.jsonl, which `pack` honours.

    SOURCE may be a packed dataset (it holds dataset.json): its records are judged (both
    splits), and review.json and review.html are written into it; no gallery.
    """
    from ..core.images import Checks
    from ..core.sources import class_folders
    from ..curate import gallery, reviewer
    from ..data.shards import is_dataset

    if is_dataset(source):
        _review_dataset(source, backbone, weights, size, cache_dir, reference, serve)
        return
    class_folders(source)  # a missing or one-class SOURCE fails before TensorFlow starts
    if reference is not None:
        reviewer.check_reference(source, reference)
    if serve:
        gallery.check_port(port)  # a port in use fails before the review, not after it
    load_tensorflow()
    result = reviewer.review(source, reference=reference, backbone=backbone, weights=weights,
                             size=size, checks=Checks(min_side=min_side), threshold=threshold,
                             cache_dir=cache_dir, progress=progress_enabled())
    click.echo(result.table())
    click.echo(f"\nwrote {os.path.join(source, 'review.json')} and "
               f"{os.path.join(source, 'review.html')} in {result.seconds['total']:.0f} s")
    if serve:
        gallery.serve(source, port=port, open_browser=not no_browser, checks=Checks(min_side=min_side),
                      echo=click.echo)


def _review_dataset(folder: str, backbone: str, weights: str, size: int, cache_dir: str | None,
                    reference: str | None, serve: bool) -> None:
    """`toolkit review DIR/` of a packed dataset: its records judged, no gallery, no reference."""
    from ..data.review_shards import review_dataset

    fix = "review the SOURCE folder it was packed from"
    if serve:
        raise ToolkitError(f"--serve acts on the files of a SOURCE folder and {folder} is a packed "
                           f"dataset (it holds dataset.json): {fix} with --serve")
    if reference is not None:
        raise ToolkitError(f"--reference is judged beside a SOURCE folder's images and {folder} is a "
                           f"packed dataset (it holds dataset.json): {fix} with --reference")
    load_tensorflow()
    result = review_dataset(folder, backbone=backbone, weights=weights, size=size,
                            cache_dir=cache_dir, progress=progress_enabled())
    click.echo(result.table())
    click.echo(f"\nwrote {os.path.join(folder, 'review.json')} and "
               f"{os.path.join(folder, 'review.html')} in {result.seconds['total']:.0f} s")
