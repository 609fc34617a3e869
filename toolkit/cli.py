"""The `toolkit` command: parse options, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import warnings

import click

from . import __version__
from .collect import crawler
from .collect.engines import DEFAULT_PER_HOST, DEFAULT_THREADS, ENGINES, LICENSES, SEARCH_ENGINES
from .core.errors import OptionError, ToolkitError
from .core.images import FITS
from .core.text import text_table
from .curate import reviewer
from .data import packer
from .ship import exporter
from .training.config import (
    AUGMENT_MODES,
    BACKBONES,
    DISTRIBUTIONS,
    HEADS,
    PRECISIONS,
    STRATEGIES,
    TrainConfig,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow


def user_errors(command):
    """Turn a ToolkitError into one line on stderr and exit 1; Ctrl-C into exit 130."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OptionError as e:  # the library names the parameter; here, its flag
            raise click.ClickException(e.for_command_line()) from None
        except ToolkitError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted: nothing partial was left behind; run the same command "
                       "again to continue.", err=True)
            raise click.exceptions.Exit(130) from None
    return wrapper


def load_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes on a CPU machine) muted;
    errors after start-up still reach stderr."""
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def progress_enabled() -> bool:
    return sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="toolkit")
def cli() -> None:
    """From search queries to a trained, evaluated image classifier.

    \b
      toolkit crawl hedgehog hamster poodle     # 400 usable images per class into datasets/
      toolkit review --serve                    # flag off-topic and mislabeled images, decide
      toolkit pack --out animal.npz             # clean, dedupe, resize, stratified split
      toolkit train --strategy finetune         # cnn | extract | finetune | augment
    """


# --------------------------------------------------------------------------- crawl

def _engines(ctx, param, values: tuple[str, ...]) -> list[str]:
    engines = [e.strip().lower() for v in values for e in v.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise click.BadParameter(f"unknown engine {', '.join(unknown)}; choose from "
                                 f"{', '.join(ENGINES)}")
    return engines or list(SEARCH_ENGINES)


def _defaults(function) -> dict:
    """A library function's keyword defaults: the flags' defaults, written once, there."""
    return {p.name: p.default for p in inspect.signature(function).parameters.values()}


CRAWL = _defaults(crawler.crawl)


@cli.command()
@click.argument("queries", nargs=-1)
@click.option("--per-class", default=CRAWL["per_class"], show_default=True, type=int,
              help="Usable, distinct images wanted per class (counting those already there).")
@click.option("--engine", "engines", multiple=True, callback=_engines, metavar="NAME",
              help=f"{', '.join(ENGINES)}; repeat (or comma-separate) for a fallback chain.  "
                   f"[default: {','.join(SEARCH_ENGINES)}]")
@click.option("--urls", type=click.Path(dir_okay=False), default=None,
              help="File of image URLs (`URL` or `LABEL URL` per line); implies --engine urls.")
@click.option("--license", "license_", default=CRAWL["license"], show_default=True,
              type=click.Choice(LICENSES),
              help="Only images under this license, from the engines that can filter by it "
                   "(the others are skipped).")
@click.option("--root", default=CRAWL["root"], show_default=True, type=click.Path(file_okay=False),
              help="Data root: one folder per class.")
@click.option("--min-side", default=CRAWL["checks"].min_side, show_default=True, type=click.IntRange(1),
              help="Smallest usable image side, in pixels.")
@click.option("--threshold", default=CRAWL["threshold"], show_default=True, type=click.IntRange(0, 64),
              help="Perceptual-hash bits within which two images are the same picture.")
@click.option("--threads", default=DEFAULT_THREADS, show_default=True,
              type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--per-host", default=DEFAULT_PER_HOST, show_default=True,
              type=click.IntRange(1, 64), help="Parallel downloads from any one host.")
@click.option("--timeout", default=CRAWL["fetch"].timeout, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait on a server before giving up on it.")
@user_errors
def crawl(queries, per_class, engines, urls, license_, root, min_side, threshold, threads,
          per_host, timeout):
    """Download images for each QUERY into ROOT/<label>/.

    A QUERY is a class label, searched as it is (`poodle`), or a label with its own
    search words (`poodle="poodle dog"`). Running the same crawl again tops each class up
    to --per-class without downloading anything twice. Prints a summary per class and per
    engine, with a warning for each engine that refused, could not be reached or could not
    be read; exits 1 only if a class is short because no engine could serve it. The
    engines' own log lines go to ROOT/crawl.log. Set TOOLKIT_BING_URL (or _DDG_, _BAIDU_,
    _GOOGLE_) to reach an engine at another address.
    """
    from .collect.crawler import crawl as run_crawl
    from .collect.fetch import FetchOptions
    from .core.images import Checks

    report = run_crawl(list(queries), root=root, per_class=per_class, engines=engines, urls=urls,
                       license=license_, checks=Checks(min_side=min_side), threshold=threshold,
                       threads=threads, per_host=per_host, fetch=FetchOptions(timeout=timeout),
                       progress=progress_enabled())
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


# --------------------------------------------------------------------------- pack

def _key_values(ctx, param, values: tuple[str, ...]) -> list[tuple[str, str]]:
    """--beam-option KEY=VALUE, repeated: (KEY, VALUE) pairs."""
    pairs = []
    for text in values:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{text!r}: write KEY=VALUE, e.g. region=europe-west1")
        pairs.append((key.strip().removeprefix("--"), value))
    return pairs


PACK = _defaults(packer.pack)


@cli.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(),
              help="Archive to write (.npz), or with --format tfrecord a folder of shards.")
@click.option("--format", "format_", default="npz", show_default=True, type=click.Choice(["npz", "tfrecord"]),
              help="npz: one archive of pixels; tfrecord: a folder of TFRecord shards and "
                   "dataset.json, packed by an Apache Beam pipeline (the `scale` extra).")
@click.option("--per-class", default=PACK["per_class"], show_default=True, type=int,
              help="Images per class in the archive.")
@click.option("--test-size", default=PACK["test_size"], show_default=True, type=float,
              help="Fraction of each class held out for testing.")
@click.option("--size", default=PACK["size"], show_default=True, type=int,
              help="Side of the square images.")
@click.option("--fit", default=PACK["fit"], show_default=True,
              type=click.Choice(FITS),
              help="crop: fill the square, cut the centre; pad: fit inside, pad black; "
                   "stretch: ignore the aspect ratio.")
@click.option("--seed", default=PACK["seed"], show_default=True, type=int,
              help="Seed for picking and splitting.")
@click.option("--min-side", default=PACK["checks"].min_side, show_default=True, type=click.IntRange(1),
              help="Smallest usable image side, in pixels.")
@click.option("--threshold", default=PACK["threshold"], show_default=True, type=click.IntRange(0, 64),
              help="Perceptual-hash bits within which two images are the same picture.")
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
    from .core.images import Checks
    from .data.packer import NotEnoughImages, pack as run_pack

    settings = dict(per_class=per_class, test_size=test_size, size=size, fit=fit, seed=seed,
                    checks=Checks(min_side=min_side), threshold=threshold, allow_fewer=allow_fewer,
                    force=force, drop_suspects=drop_suspects, workers=workers)
    if format_ == "npz" and (beam_options or runner != "DirectRunner" or encoding != "jpeg"):
        raise ToolkitError("--runner, --beam-option and --encoding are for --format tfrecord")
    try:
        if format_ == "tfrecord":
            from .data.shard_pack import pack_shards

            report = pack_shards(source, out, runner=runner, beam_options=beam_options, encoding=encoding,
                                 **settings)
        else:
            report = run_pack(source, out, progress=progress_enabled(), **settings)
    except NotEnoughImages as e:
        click.echo(e.report.table(), err=True)
        raise
    click.echo(report.table())
    shards = " as TFRecord shards" if format_ == "tfrecord" else ""
    click.echo(f"\nwrote {out}: {sum(report.train_counts)} train / {sum(report.test_counts)} "
               f"test images of {size}x{size}{shards} ({', '.join(report.class_names)})")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if size < 32:
        click.echo(f"warning: --size {size} is below 32, the smallest input of the pretrained "
                   "backbones; only --strategy cnn can train on it", err=True)


# --------------------------------------------------------------------------- review

REVIEW = _defaults(reviewer.review)


@cli.command()
@click.argument("source", default="datasets", type=click.Path(file_okay=False))
@click.option("--backbone", default=REVIEW["backbone"], show_default=True, type=click.Choice(list(BACKBONES)),
              help="Frozen pretrained base that embeds the images.")
@click.option("--weights", default=REVIEW["weights"], show_default=True,
              help="imagenet (Keras' download and cache), none (random), or a weights file.")
@click.option("--size", default=REVIEW["size"], show_default=True, type=click.IntRange(32),
              help="Side of the square the backbone sees.")
@click.option("--min-side", default=REVIEW["checks"].min_side, show_default=True, type=click.IntRange(1),
              help="Smallest usable image side, in pixels (as for pack).")
@click.option("--threshold", default=REVIEW["threshold"], show_default=True, type=click.IntRange(0, 64),
              help="Perceptual-hash bits within which two images are the same picture (as for pack).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Where embeddings are cached.  [default: $TOOLKIT_CACHE_DIR or ~/.cache/toolkit]")
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
    """
    from .core.images import Checks
    from .core.sources import class_folders

    class_folders(source)  # a missing or one-class SOURCE fails before TensorFlow starts
    if reference is not None:
        from .curate.reviewer import check_reference

        check_reference(source, reference)
    if serve:
        from .curate.gallery import check_port

        check_port(port)  # a port in use fails before the review, not after it
    load_tensorflow()
    from .curate.reviewer import review as run_review

    result = run_review(source, reference=reference, backbone=backbone, weights=weights, size=size,
                        checks=Checks(min_side=min_side), threshold=threshold,
                        cache_dir=cache_dir, progress=progress_enabled())
    click.echo(result.table())
    click.echo(f"\nwrote {os.path.join(source, 'review.json')} and "
               f"{os.path.join(source, 'review.html')} in {result.seconds['total']:.0f} s")
    if serve:
        from .curate.gallery import serve as run_gallery

        run_gallery(source, port=port, open_browser=not no_browser, checks=Checks(min_side=min_side),
                    echo=click.echo)


# --------------------------------------------------------------------------- train

DEFAULT = TrainConfig  # the library's defaults are the flags' defaults


def training_options(command):
    """Options shared by `train` and `compare`."""
    options = [
        click.option("--data", default="animal.npz", show_default=True,
                     type=click.Path(dir_okay=False), help="Archive made by `toolkit pack`."),
        click.option("--backbone", default=DEFAULT.backbone, show_default=True,
                     type=click.Choice(list(BACKBONES)),
                     help="Pretrained base of extract/finetune/augment."),
        click.option("--weights", default=DEFAULT.weights, show_default=True,
                     help="imagenet (Keras' download and cache), none (random), or a weights file."),
        click.option("--epochs", default=DEFAULT.epochs, show_default=True, type=int,
                     help="Most epochs; early stopping on validation loss may end sooner."),
        click.option("--batch-size", default=DEFAULT.batch_size, show_default=True, type=int,
                     help="Images per batch (per replica with --distribute)."),
        click.option("--learning-rate", default=None, type=float,
                     help="Adam's step size.  [default: 1e-3 for cnn/extract, 1e-4 for finetune/augment]"),
        click.option("--seed", default=DEFAULT.seed, show_default=True, type=int,
                     help="Same seed, same result."),
        click.option("--validation-split", default=DEFAULT.validation_split, show_default=True,
                     type=float,
                     help="Stratified fraction of the training set held out for validation."),
        click.option("--patience", default=DEFAULT.patience, show_default=True, type=int,
                     help="Epochs without a better validation loss before stopping."),
        click.option("--trainable", multiple=True, metavar="LAYER",
                     help="Backbone layers to fine-tune (names or patterns like 'block5_*'); "
                          "repeat.  [default: block5_conv3 for vgg16, the last block for others]"),
        click.option("--head", default=DEFAULT.head, show_default=True, type=click.Choice(HEADS),
                     help="flatten: the study's head; pool: global average pooling first (fewer weights)."),
        click.option("--views", default=DEFAULT.views, show_default=True, type=int,
                     help="augment on CPU: cached views per training image "
                          "(the original + views-1 augmented)."),
        click.option("--augment-mode", default=DEFAULT.augment_mode, show_default=True,
                     type=click.Choice(AUGMENT_MODES),
                     help="augment: online (on every batch; the default on a GPU) or cached views."),
        click.option("--precision", default=DEFAULT.precision, show_default=True,
                     type=click.Choice(PRECISIONS),
                     help="mixed: float16 on a GPU, bfloat16 on a CPU; auto: mixed where it is "
                          "faster (a GPU, a CPU with bfloat16 units), float32 otherwise."),
        click.option("--deterministic/--nondeterministic", default=DEFAULT.deterministic,
                     help="Deterministic TensorFlow ops.  [default: on for CPU, off for GPU]"),
        click.option("--distribute", default=DEFAULT.distribute, show_default=True,
                     type=click.Choice(DISTRIBUTIONS),
                     help="mirrored: all local GPUs; multiworker: machines named in TF_CONFIG."),
        click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                     help="Where frozen features are cached.  "
                          "[default: $TOOLKIT_CACHE_DIR or ~/.cache/toolkit]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _train_options(kwargs: dict) -> dict:
    kwargs["trainable"] = list(kwargs["trainable"]) or None
    return kwargs


def _fit_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2


@cli.command()
@click.option("--strategy", default=None, type=click.Choice(STRATEGIES),
              help="cnn: the small CNN; extract: frozen backbone + head; finetune: + the last "
                   "conv layer trained; augment: finetune with augmentation.")
@training_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder.  [default: runs/<strategy>-<backbone>-<time>]")
@click.option("--resume", default=None, type=click.Path(file_okay=False), metavar="RUN",
              help="Continue the interrupted run in this folder, with the options it started with.")
@user_errors
def train(strategy, data, out, resume, **options):
    """Train and evaluate a model; everything lands in a run folder.

    The folder gets the model (model.keras, raw 0-255 RGB in), config.json, history.csv,
    curves.png, the classification report, the confusion matrix and metrics.json.
    Interrupted? `toolkit train --resume RUN` continues from the last finished epoch.
    """
    load_tensorflow()
    from .training.trainer import resume as run_resume, train as run_train

    if resume:
        _report_run(lambda: run_resume(resume, verbose=_fit_verbosity(), progress=progress_enabled()))
        return
    if strategy is None:
        raise ToolkitError(f"choose a --strategy: {', '.join(STRATEGIES)}")
    _report_run(lambda: run_train(data, strategy, out=out, verbose=_fit_verbosity(),
                                  progress=progress_enabled(), **_train_options(options)))


def _report_run(start) -> None:
    try:
        run = start()
    except KeyboardInterrupt as e:
        click.echo("\nInterrupted: the last finished epoch is checkpointed; continue with "
                   f"`toolkit train --resume {getattr(e, 'folder', 'RUN')}`.", err=True)
        raise click.exceptions.Exit(130) from None
    click.echo(run.report)
    m = run.metrics
    click.echo(f"precision {m['precision']['policy']} ({m['precision']['reason']})")
    click.echo(f"accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} after "
               f"{m['epochs_run']} epochs (best {m['best_epoch']}) in {m['seconds']['total']:.0f} s")
    click.echo(f"run folder: {run.folder} (open report.html)" if run.folder else
               "run folder: written by the chief worker (this is another worker)")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="Archive to evaluate on.  [default: the one the model trained on]")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Also write the report files into this folder.")
@user_errors
def evaluate(run_or_model, data, out):
    """Print the test-set report of a run folder, a .keras model or an export folder."""
    load_tensorflow()
    from .ship.inference import evaluate as run_evaluate

    result = run_evaluate(run_or_model, data, out=out)
    click.echo(result.report)


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json"]), help="Output format.")
@click.option("--unknown/--no-unknown", default=True, show_default=True,
              help="Answer `unknown` for an image unlike every class (its scores are still "
                   "given); --no-unknown always names a class.")
@user_errors
def predict(model, images, fmt, unknown):
    """Label images (files or folders) with a trained model.

    MODEL is a run folder, a .keras file or an export folder (`toolkit export`, run in its
    own runtime). Each image is decoded and resized as `pack` does; one that is not a
    usable image gets a warning instead of a label. Probabilities are calibrated.
    """
    import csv
    import json

    load_tensorflow()
    from .ship.inference import predict as run_predict

    results = run_predict(model, list(images), unknown=unknown)
    good = [r for r in results if not r.error]
    if fmt == "json":
        click.echo(json.dumps([r.__dict__ for r in results], indent=2, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(click.get_text_stream("stdout"))
        writer.writerow(["image", "label", "probability", "closest", "error"])
        for r in results:
            writer.writerow([r.path, r.label or "", "" if r.probability is None else
                             f"{r.probability:.4f}", r.closest or "", r.error])
    else:
        click.echo(text_table(["image", "label", "probability", "closest"],
                              [[r.path, r.label, f"{r.probability:.3f}", r.closest] for r in good],
                              left=(0, 1, 3)))
    for r in results:
        if r.error and fmt == "table":
            click.echo(f"warning: {r.path}: {r.error}", err=True)
    if not good:
        raise ToolkitError("none of the inputs is a usable image")


EXPORT = _defaults(exporter.export)


@cli.command("export")
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", default=EXPORT["format"], show_default=True,
              type=click.Choice(list(exporter.FORMATS)),
              help="litert: phones (.tflite); saved_model: TensorFlow Serving; onnx: onnxruntime.")
@click.option("--quantize", default=EXPORT["quantize"], show_default=True,
              type=click.Choice(exporter.QUANTIZATIONS),
              help="litert only: float16 weights, or int8 calibrated on the run's training images.")
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="The run's archive, if it moved.  [default: the one the run trained on]")
@user_errors
def export(run, fmt, quantize, data):
    """Export RUN's model into RUN/export/, checked on the test set with its runtime.

    The exported model takes raw 0-255 RGB (uint8) with the preprocessing inside; labels.txt
    and export.json (input, outputs, calibration, parity with Keras) come with it.
    """
    load_tensorflow()
    from .ship.exporter import export as run_export

    result = run_export(run, fmt, quantize, data=data, progress=progress_enabled())
    click.echo(result.summary())


@cli.command()
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True,
              help="Comma-separated strategies to train.")
@training_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the runs and the comparison.  [default: runs/compare-<time>]")
@user_errors
def compare(strategies, data, out, **options):
    """Train several strategies on one archive: one table, one plot."""
    load_tensorflow()
    from .training.trainer import compare as run_compare

    chosen = [s.strip() for s in strategies.split(",") if s.strip()]
    result = run_compare(data, chosen, out=out, verbose=_fit_verbosity(),
                         progress=progress_enabled(), **_train_options(options))
    click.echo(result.table())
    click.echo(f"comparison: {result.folder / 'report.html'}")


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
