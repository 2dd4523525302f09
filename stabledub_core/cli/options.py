"""Command-line flags made from the pipeline's option dataclasses (``pipeline/options.py``).

Every flag's default, choices and help come from the option's field, so ``--help`` shows exactly the defaults of the
Python API and the node widgets.
"""

from __future__ import annotations

import argparse

from stabledub_core.pipeline.options import STAGE_OPTIONS, DubOptions, check_value, option_fields

GROUPS = ("sampling", "masks", "conditions", "tracking", "length", "output", "runtime")  # the stages with flags


def flag(name: str) -> str:
    """The command-line flag of an option: ``audio_scale`` -> ``--audio-scale``."""
    return "--" + name.replace("_", "-")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option of every stage in :data:`GROUPS`, grouped by stage."""
    for stage in GROUPS:
        group = parser.add_argument_group(stage)
        for f in option_fields(STAGE_OPTIONS[stage]):
            meta = f.metadata
            if not meta["flag"]:
                continue
            text = f"{meta['help']} (default: %(default)s)"
            if isinstance(f.default, bool):  # on by default: --name / --no-name
                action = argparse.BooleanOptionalAction if f.default else "store_true"
                group.add_argument(flag(f.name), action=action, default=f.default, help=text)
            else:
                group.add_argument(flag(f.name), type=type(f.default), choices=meta["choices"], default=f.default,
                                   help=text)


def options_from_args(args: argparse.Namespace, **extra) -> DubOptions:
    """The :class:`DubOptions` of parsed arguments (flags of :func:`add_option_arguments`, plus ``extra``).

    Every value is checked first against its option's range and choices, with the flag the user typed in the
    message (``--crf must be between 0 and 51, got 99``).
    """
    values = {}
    for kind in STAGE_OPTIONS.values():
        for f in option_fields(kind):
            if f.metadata["flag"] and hasattr(args, f.name):
                check_value(f, getattr(args, f.name), flag(f.name))
                values[f.name] = getattr(args, f.name)
    return DubOptions.from_values(**{**values, **extra})
