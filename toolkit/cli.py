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
from .precision import PRECISIONS

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


# --------------------------------------------------------------------------- train

def training_options(command):
    """Options shared by `train` and `compare`."""
    options = [
        click.option("--data", default="animal.npz", show_default=True,
                     type=click.Path(dir_okay=False), help="Archive made by `toolkit pack`."),
        click.option("--backbone", default="vgg16", show_default=True,
                     type=click.Choice(["vgg16", "vgg19", "mobilenet_v2", "resnet50", "efficientnet_b0"]),
                     help="Pretrained base of extract/finetune/augment."),
        click.option("--weights", default="imagenet", show_default=True,
                     help="imagenet (Keras' download and cache), none (random), or a weights file."),
        click.option("--epochs", default=50, show_default=True, type=int,
                     help="Most epochs; early stopping on validation loss may end sooner."),
        click.option("--batch-size", default=128, show_default=True, type=int,
                     help="Images per batch (per replica with --distribute)."),
        click.option("--learning-rate", default=None, type=float,
                     help="Adam's step size.  [default: 1e-3 for cnn/extract, 1e-4 for finetune/augment]"),
        click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same result."),
        click.option("--validation-split", default=0.2, show_default=True, type=float,
                     help="Stratified fraction of the training set held out for validation."),
        click.option("--patience", default=5, show_default=True, type=int,
                     help="Epochs without a better validation loss before stopping."),
        click.option("--trainable", multiple=True, metavar="LAYER",
                     help="Backbone layers to fine-tune (names or patterns like 'block5_*'); "
                          "repeat.  [default: block5_conv3 for vgg16, the last block for others]"),
        click.option("--head", default="flatten", show_default=True, type=click.Choice(["flatten", "pool"]),
                     help="flatten: the study's head; pool: global average pooling first (fewer weights)."),
        click.option("--views", default=4, show_default=True, type=int,
                     help="augment on CPU: cached views per training image (the original + views-1 augmented)."),
        click.option("--augment-mode", default="auto", show_default=True,
                     type=click.Choice(["auto", "cached", "online"]),
                     help="augment: online (on every batch; the default on a GPU) or cached views."),
        click.option("--precision", default="auto", show_default=True,
                     type=click.Choice(PRECISIONS),
                     help="mixed: float16 on a GPU, bfloat16 on a CPU; auto: mixed where it is "
                          "faster (a GPU, a CPU with bfloat16 units), float32 otherwise."),
        click.option("--deterministic/--nondeterministic", default=None,
                     help="Deterministic TensorFlow ops.  [default: on for CPU, off for GPU]"),
        click.option("--distribute", default="none", show_default=True,
                     type=click.Choice(["none", "mirrored", "multiworker"]),
                     help="mirrored: all local GPUs; multiworker: machines named in TF_CONFIG."),
        click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                     help="Where frozen features are cached.  [default: $TOOLKIT_CACHE_DIR or ~/.cache/toolkit]"),
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
@click.option("--strategy", default=None, type=click.Choice(["cnn", "extract", "finetune", "augment"]),
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
    from .training import resume as run_resume, train as run_train

    if resume:
        _report_run(lambda: run_resume(resume, verbose=_fit_verbosity(), progress=progress_enabled()))
        return
    if strategy is None:
        raise ToolkitError("choose a --strategy: cnn, extract, finetune or augment")
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
    click.echo(f"run folder: {run.folder}" if run.folder else
               "run folder: written by the chief worker (this is another worker)")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="Archive to evaluate on.  [default: the one the model trained on]")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Also write the report files into this folder.")
@user_errors
def evaluate(run_or_model, data, out):
    """Print the test-set report of a run folder or a .keras model."""
    load_tensorflow()
    from .inference import evaluate as run_evaluate

    result = run_evaluate(run_or_model, data, out=out)
    click.echo(result.report)


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json"]), help="Output format.")
@user_errors
def predict(model, images, fmt):
    """Label images (files or folders) with a trained model.

    MODEL is a run folder or a .keras file. Each image is decoded and resized as `pack`
    does; one that is not a usable image gets a warning instead of a label.
    """
    import csv
    import json

    load_tensorflow()
    from .inference import predict as run_predict

    results = run_predict(model, list(images))
    good = [r for r in results if not r.error]
    if fmt == "json":
        click.echo(json.dumps([r.__dict__ for r in results], indent=2, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(click.get_text_stream("stdout"))
        writer.writerow(["image", "label", "probability", "error"])
        for r in results:
            writer.writerow([r.path, r.label or "", "" if r.probability is None else
                             f"{r.probability:.4f}", r.error])
    else:
        width = max([5, *(len(r.path) for r in results)])
        click.echo(f"{'image':<{width}}  {'label':<16} probability")
        for r in good:
            click.echo(f"{r.path:<{width}}  {r.label:<16} {r.probability:.3f}")
    for r in results:
        if r.error and fmt == "table":
            click.echo(f"warning: {r.path}: {r.error}", err=True)
    if not good:
        raise ToolkitError("none of the inputs is a usable image")


@cli.command()
@click.option("--strategies", default="cnn,extract,finetune,augment", show_default=True,
              help="Comma-separated strategies to train.")
@training_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the runs and the comparison.  [default: runs/compare-<time>]")
@user_errors
def compare(strategies, data, out, **options):
    """Train several strategies on one archive: one table, one plot."""
    load_tensorflow()
    from .training import compare as run_compare

    chosen = [s.strip() for s in strategies.split(",") if s.strip()]
    result = run_compare(data, chosen, out=out, verbose=_fit_verbosity(),
                         progress=progress_enabled(), **_train_options(options))
    click.echo(result.table())
    click.echo(f"comparison: {result.folder / 'comparison.png'}")


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
