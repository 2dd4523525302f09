"""``python -m stabledub_core init SOURCE --out init.safetensors``: a StableDub checkpoint to start training from.

``SOURCE`` is Stable Diffusion 1.5 (an original single-file ``.safetensors`` or a diffusers folder: the preset's
model initialised from it), or a StableDub checkpoint: a model of that checkpoint's config changed by ``--set
section.field=value`` (e.g. ``unet.mixer=attention``), every tensor whose name and shape still match copied from
it. The report of what happened to every tensor (:class:`stabledub_core.models.weights.WeightInitReport`) is
printed, and written as JSON with ``--report``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stabledub_core.errors import OptionError, WeightsNotFoundError
from stabledub_core.models.checkpoint import FORMAT, read_checkpoint_config, save_checkpoint
from stabledub_core.models.config import PRESETS, config_with, get_preset
from stabledub_core.models.safetensors_io import check_safetensors_file
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.weights import init_from_checkpoint, init_from_sd15


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``init`` subcommand on ``sub`` (the ``add_subparsers`` of the main parser)."""
    parser = sub.add_parser("init", help="initialise a StableDub checkpoint from Stable Diffusion 1.5 weights or "
                            "from a StableDub checkpoint under a changed config",
                            description="Initialise a StableDub checkpoint from Stable Diffusion 1.5 weights, or "
                            "from a StableDub checkpoint with config changes (--set), and print what happened to "
                            "every tensor.")
    parser.add_argument("source", type=Path, help="SD 1.5 single-file .safetensors or diffusers folder, or a "
                        "StableDub checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the StableDub .safetensors checkpoint to write")
    parser.add_argument("--preset", default="sd15", choices=sorted(PRESETS), help="model size (default: sd15)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change the model config (repeatable), e.g. unet.mixer=attention, unet.temporal=false, "
                        "habit.enabled=false")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON", help="also write the report here")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the model, initialise it from ``args.source``, save it; returns the exit status (0)."""
    # Checked before the (large) model is built.
    if not Path(args.source).exists():
        raise WeightsNotFoundError(f"weights not found: {args.source} (give SD 1.5 as an original single-file "
                                   ".safetensors or a diffusers folder, or a StableDub checkpoint)")
    if Path(args.out).suffix.lower() != ".safetensors":
        raise OptionError(f"--out {args.out}: StableDub checkpoints are .safetensors files")
    if _is_stabledub_checkpoint(args.source):
        model = StableDub.from_config(config_with(read_checkpoint_config(args.source), args.settings))
        report = init_from_checkpoint(model, args.source)
    else:
        model = StableDub.from_config(config_with(get_preset(args.preset), args.settings))
        report = init_from_sd15(model, args.source)
    save_checkpoint(model, args.out, metadata={"initialised_from": str(args.source),
                                               "config_changes": ";".join(args.settings)})
    if args.report is not None:
        Path(args.report).write_text(report.to_json())
    print(report.to_text())
    return 0


def _is_stabledub_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".safetensors" and \
        check_safetensors_file(path).get("format") == FORMAT
