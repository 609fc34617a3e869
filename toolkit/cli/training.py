"""`toolkit train` and `toolkit compare`: the command line of stage 4, over
:mod:`toolkit.training.trainer`, with the one list of training flags they share."""

from __future__ import annotations

import sys

import click

from ..core.errors import ToolkitError
from ..training.config import (
    AUGMENT_MODES,
    DISTRIBUTIONS,
    HEADS,
    PRECISIONS,
    STRATEGIES,
    TrainConfig,
)
from .common import interrupted_exit_code, load_tensorflow, progress_enabled, user_errors
from .options import backbone_option, cache_dir_option, weights_option

DEFAULT = TrainConfig  # the library's defaults are the flags' defaults


def training_options(command):
    """The flags of TrainConfig's options, shared by `train` and `compare`: one flag per
    field, named as the field with dashes."""
    options = [
        click.option("--data", default=DEFAULT.data, show_default=True,
                     type=click.Path(), help="Archive (.npz) or dataset folder (--format "
                                             "tfrecord) made by `toolkit pack`."),
        backbone_option(DEFAULT.backbone, "Pretrained base of extract/finetune/augment."),
        weights_option(DEFAULT.weights),
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
        cache_dir_option("frozen features"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _train_options(kwargs: dict) -> dict:
    kwargs["trainable"] = list(kwargs["trainable"]) or None
    return kwargs


def _fit_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2


@click.command()
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
    from ..training import trainer

    if resume:
        _report_run(lambda: trainer.resume(resume, verbose=_fit_verbosity(), progress=progress_enabled()))
        return
    if strategy is None:
        raise ToolkitError(f"choose a --strategy: {', '.join(STRATEGIES)}")
    _report_run(lambda: trainer.train(data, strategy, out=out, verbose=_fit_verbosity(),
                                      progress=progress_enabled(), **_train_options(options)))


def _report_run(start) -> None:
    try:
        run = start()
    except KeyboardInterrupt as e:
        click.echo("\nInterrupted: the last finished epoch is checkpointed; continue with "
                   f"`toolkit train --resume {getattr(e, 'folder', 'RUN')}`.", err=True)
        raise click.exceptions.Exit(interrupted_exit_code(e)) from None
    click.echo(run.report)
    m = run.metrics
    click.echo(f"precision {m['precision']['policy']} ({m['precision']['reason']})")
    click.echo(f"accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} after "
               f"{m['epochs_run']} epochs (best {m['best_epoch']}) in {m['seconds']['total']:.0f} s")
    click.echo(f"run folder: {run.folder} (open report.html)" if run.folder else
               "run folder: written by the chief worker (this is another worker)")


@click.command()
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True,
              help="Comma-separated strategies to train.")
@training_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the runs and the comparison.  [default: runs/compare-<time>]")
@user_errors
def compare(strategies, data, out, **options):
    """Train several strategies on one archive: one table, one plot."""
    load_tensorflow()
    from ..training import comparison

    chosen = [s.strip() for s in strategies.split(",") if s.strip()]
    result = comparison.compare(data, chosen, TrainConfig(data=data, **_train_options(options)), out=out,
                             verbose=_fit_verbosity(), progress=progress_enabled())
    click.echo(result.table())
    click.echo(f"comparison: {result.folder / 'report.html'}")
