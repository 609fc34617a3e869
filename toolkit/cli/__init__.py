"""The `toolkit` command: the group and its entry point. Each stage's commands live beside it
(collect, curate, data, training, ship); they parse options, call the library, print."""

from __future__ import annotations

import os
import signal
import warnings

import click

from .. import __version__
from . import collect, curate, data, ship, training

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow


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


for command in (collect.crawl, curate.review, data.pack, training.train, training.compare,
                ship.evaluate, ship.predict, ship.export):
    cli.add_command(command)


def main() -> None:
    """Console entry point: quiet library warnings, make SIGTERM behave like Ctrl-C."""
    warnings.filterwarnings("ignore", module="PIL")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="toolkit")
