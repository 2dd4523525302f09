"""Every option has one default, and ``--help``, the node widgets and the Python API show it the same way."""

from __future__ import annotations

import re

import pytest

from stabledub_core.cli.dub import DEMO_STEPS
from stabledub_core.cli.main import build_parser
from stabledub_core.cli.options import GROUPS, flag
from stabledub_core.errors import OptionError
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.reference import ReferenceStrategy
from stabledub_core.media.length_policy import LengthPolicy
from stabledub_core.pipeline.options import (
    STAGE_OPTIONS,
    DubOptions,
    MaskOptions,
    SamplingOptions,
    option_fields,
)
from stabledub_core.pipeline.sampler import SamplerConfig
from stabledub_core.pipeline.schedulers import SchedulerKind
from stabledub_core.pipeline.windows import DEFAULT_OVERLAP

FLAGGED = [(stage, f) for stage in GROUPS for f in option_fields(STAGE_OPTIONS[stage]) if f.metadata["flag"]]
DUB_ARGS = ["dub", "--video", "v.mp4", "--checkpoint", "c.safetensors", "--out", "o.mp4"]


@pytest.mark.parametrize("stage, field", FLAGGED, ids=[f.name for _, f in FLAGGED])
def test_cli_flag_defaults_are_the_options(stage, field):
    args = build_parser().parse_args(DUB_ARGS)
    assert getattr(args, field.name) == field.default == getattr(getattr(DubOptions(), stage), field.name)
    dub = build_parser()._subparsers._group_actions[0].choices["dub"]
    text = " ".join(dub.format_help().split())  # argparse wraps lines
    help_line = re.search(re.escape(flag(field.name)) + r"(?:, --no-[a-z-]+)?[^-]*?(?:\{[^}]*\})?[^-]*?" +
                          re.escape(" ".join(field.metadata["help"].split())) + r" \(default: ([^)]*)\)", text)
    assert help_line, field.name
    assert help_line.group(1) == str(field.default)


def _node_options(comfy):
    """(node id, option field, ComfyUI input spec) of every node input named after a pipeline option (files, such as
    the face model, are found by each front end its own way: ComfyUI's model folders, the CLI's search path)."""
    options = {f.name: f for kind in STAGE_OPTIONS.values() for f in option_fields(kind) if f.metadata["flag"]}
    for node_id, cls in comfy.nodes.items():
        inputs = cls.INPUT_TYPES()
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            if name in options:
                yield node_id, options[name], spec


def test_node_widgets_show_the_option_defaults(comfy):
    seen = set()
    for node_id, field, spec in _node_options(comfy):
        kind, extra = spec[0], (spec[1] if len(spec) > 1 else {})
        assert extra.get("default") == field.default, (node_id, field.name)
        meta = field.metadata
        if meta["choices"]:
            assert list(kind) == list(meta["choices"]), (node_id, field.name)
        for key in ("min", "max", "step"):
            if meta[key] is not None:
                assert extra[key] == meta[key], (node_id, field.name, key)
        seen.add(field.name)
    # the options a user sets in a graph are all there
    assert {"steps", "scheduler", "audio_scale", "habit_scale", "seed", "overlap", "windows_per_chunk",
            "reference", "habit_frames", "mask_margin", "occluder_grid", "occluder_fraction", "length_policy",
            "crf", "dtype"} <= seen


def test_one_vocabulary_and_one_home_for_each_default():
    fields = {f.name: f for kind in STAGE_OPTIONS.values() for f in option_fields(kind)}
    assert fields["reference"].metadata["choices"] == tuple(s.value for s in ReferenceStrategy)
    assert fields["scheduler"].metadata["choices"] == tuple(k.value for k in SchedulerKind)
    assert fields["length_policy"].metadata["choices"] == tuple(p.value for p in LengthPolicy)
    # lower layers read their defaults from the options (or the options from them), never a second literal
    sampler = SamplerConfig()
    sampling = SamplingOptions()
    assert (sampler.num_inference_steps, sampler.scale_audio, sampler.scale_habit, sampler.scheduler.value) == \
        (sampling.steps, sampling.audio_scale, sampling.habit_scale, sampling.scheduler)
    assert DEFAULT_OVERLAP == sampling.overlap and MaskOptions().mask_margin == MaskConfig().coarse_dilation


def test_demo_changes_only_what_it_says(capsys):
    args = build_parser().parse_args(["demo"])
    assert (args.steps, args.length_policy) == (DEMO_STEPS, "trim") == (10, "trim")
    assert args.scheduler == SamplingOptions.scheduler and args.seed == SamplingOptions.seed


@pytest.mark.parametrize("values, message", [
    (dict(steps=0), "steps must be between 1 and 1000"),
    (dict(reference="closed-lips"), "unknown reference 'closed-lips'; choose one of closed_lips"),
    (dict(length_policy="stretch"), "unknown length_policy"),
    (dict(occluder_fraction=0.0), "occluder_fraction must be between"),
    (dict(colour="red"), "unknown option"),
])
def test_bad_option_values_get_one_clear_error(values, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        DubOptions.from_values(**values)
