"""Command line: ``python -m stabledub_core {dub,demo,preview,init,summary} ...`` (argparse, one-line errors).

The entry point is :func:`stabledub_core.cli.main.main`.
"""
