"""`python -m toolkit.cli`: the `toolkit` command."""

from . import main

main()
