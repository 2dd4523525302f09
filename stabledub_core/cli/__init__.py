"""Command line: ``python -m stabledub_core {dub,demo,preview,init,summary} ...`` (argparse, one-line errors)."""

from stabledub_core.cli.main import main

__all__ = ["main"]
