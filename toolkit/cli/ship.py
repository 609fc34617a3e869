"""`toolkit evaluate`, `predict` and `export`: the command line of stage 5, over
:mod:`toolkit.ship.inference` and :mod:`toolkit.ship.exporter`."""

from __future__ import annotations

import click

from ..core.errors import ToolkitError
from ..core.text import text_table
from .common import load_tensorflow, progress_enabled, user_errors
from .options import LibraryChoice, LibraryDefault, trust_saved_model_option

EXPORT = "toolkit.ship.exporter:export"  # whose keyword defaults are the flags' defaults


@click.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--data", default=None, type=click.Path(),
              help="Archive (.npz) or dataset folder to evaluate on.  [default: the one the model "
                   "trained on]")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Also write the report files into this folder.")
@trust_saved_model_option()
@user_errors
def evaluate(run_or_model, data, out, trust_saved_model):
    """Print the test-set report of a run folder, a .keras model or an export folder."""
    load_tensorflow()
    from ..ship import inference

    result = inference.evaluate(run_or_model, data, out=out, trust_saved_model=trust_saved_model)
    click.echo(result.report)


@click.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json"]), help="Output format.")
@click.option("--unknown/--no-unknown", default=True, show_default=True,
              help="Answer `unknown` for an image unlike every class (its scores are still "
                   "given); --no-unknown always names a class.")
@trust_saved_model_option()
@user_errors
def predict(model, images, fmt, unknown, trust_saved_model):
    """Label images (files or folders) with a trained model.

    MODEL is a run folder, a .keras file or an export folder (`toolkit export`, run in its
    own runtime). Each image is decoded and resized as `pack` does; one that is not a
    usable image gets a warning instead of a label. Probabilities are calibrated.
    """
    import csv
    import json

    load_tensorflow()
    from ..core.text import for_terminal
    from ..ship import inference

    results = inference.predict(model, list(images), unknown=unknown,
                                trust_saved_model=trust_saved_model)
    good = [r for r in results if not r.error]
    if fmt == "json":
        click.echo(json.dumps([r.__dict__ for r in results], indent=2, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(click.get_text_stream("stdout"))
        writer.writerow(["image", "label", "probability", "closest", "error"])
        for r in results:
            writer.writerow([for_terminal(r.path), r.label or "", "" if r.probability is None else
                             f"{r.probability:.4f}", r.closest or "", r.error])
    else:
        click.echo(text_table(["image", "label", "probability", "closest"],
                              [[r.path, r.label, f"{r.probability:.3f}", r.closest] for r in good],
                              left=(0, 1, 3)))
    for r in results:
        if r.error and fmt == "table":
            click.echo(f"warning: {for_terminal(r.path)}: {for_terminal(r.error)}", err=True)
    if not good:
        raise ToolkitError("none of the inputs is a usable image")


@click.command("export")
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", default=LibraryDefault(EXPORT, "format"), show_default=True,
              type=LibraryChoice("toolkit.ship.exporter:FORMATS"),
              help="litert: phones (.tflite); saved_model: TensorFlow Serving; onnx: onnxruntime.")
@click.option("--quantize", default=LibraryDefault(EXPORT, "quantize"), show_default=True,
              type=LibraryChoice("toolkit.ship.exporter:QUANTIZATIONS"),
              help="litert only: float16 weights, or int8 calibrated on the run's training images.")
@click.option("--data", default=None, type=click.Path(),
              help="The run's archive or dataset folder, if it moved.  [default: the one the run "
                   "trained on]")
@user_errors
def export(run, fmt, quantize, data):
    """Export RUN's model into RUN/export/, checked on the test set with its runtime.

    The exported model takes raw 0-255 RGB (uint8) with the preprocessing inside; labels.txt
    and export.json (input, outputs, calibration, parity with Keras) come with it.
    """
    load_tensorflow()
    from ..ship import exporter

    result = exporter.export(run, fmt, quantize, data=data, progress=progress_enabled())
    click.echo(result.summary())
