"""``python -m stabledub_core init SD15 --out init.safetensors``: a StableDub checkpoint initialised from SD 1.5.

``SD15`` is an original single-file ``.safetensors`` or a diffusers folder. The report of what happened to every
tensor (:class:`stabledub_core.models.weights.WeightInitReport`) is printed, and written as JSON with ``--report``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stabledub_core.errors import OptionError, WeightsNotFoundError
from stabledub_core.models.checkpoint import save_checkpoint
from stabledub_core.models.config import PRESETS, get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.weights import init_from_sd15


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``init`` subcommand on ``sub`` (the ``add_subparsers`` of the main parser)."""
    parser = sub.add_parser("init", help="initialise a StableDub checkpoint from Stable Diffusion 1.5 weights",
                            description="Initialise a StableDub checkpoint from Stable Diffusion 1.5 weights and "
                            "print what happened to every tensor.")
    parser.add_argument("source", type=Path, help="SD 1.5 single-file .safetensors or diffusers folder")
    parser.add_argument("--out", type=Path, required=True, help="the StableDub .safetensors checkpoint to write")
    parser.add_argument("--preset", default="sd15", choices=sorted(PRESETS), help="model size (default: sd15)")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON", help="also write the report here")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the preset, initialise it from ``args.source``, save it; returns the exit status (0)."""
    # Checked before the (large) model is built.
    if not Path(args.source).exists():
        raise WeightsNotFoundError(f"SD 1.5 weights not found: {args.source} (give an original single-file "
                                   ".safetensors or a diffusers folder)")
    if Path(args.out).suffix.lower() != ".safetensors":
        raise OptionError(f"--out {args.out}: StableDub checkpoints are .safetensors files")
    model = StableDub.from_config(get_preset(args.preset))
    report = init_from_sd15(model, args.source)
    save_checkpoint(model, args.out, metadata={"initialised_from": str(args.source)})
    if args.report is not None:
        Path(args.report).write_text(report.to_json())
    print(report.to_text())
    return 0
