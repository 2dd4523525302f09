"""``python -m stabledub_core summary PRESET``: the per-module parameter table of a preset (``sd15`` or ``tiny``).

Built on the meta device, so it needs no memory and no weights. The last line is ``parameters: N``, the size of the
StableDub network (see :func:`stabledub_core.models.summary.render`).
"""

from __future__ import annotations

import argparse

from stabledub_core.models.config import PRESETS
from stabledub_core.models.summary import render


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``summary`` subcommand on ``sub`` (the ``add_subparsers`` of the main parser)."""
    parser = sub.add_parser("summary", help="print the parameter table of a model preset",
                            description="Print a per-module parameter table of a StableDub preset (built on the meta "
                            "device: no memory, no weights).")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the table; returns the exit status (0)."""
    print(render(args.preset))
    return 0
