"""The dubbing pipeline's options: one small dataclass per stage, and the one home of every default.

Each field is declared with :func:`option`, which keeps the default together with the help text, the choices and the
range. The command line (``cli/options.py``) makes its flags from these fields and the ComfyUI nodes
(``nodes/widgets.py``) their widgets, so ``--help``, the node widgets and the Python API show the same defaults and
the same spellings (``tests/nodes/test_option_defaults.py`` checks it).

What the model decides is not an option: the window length (``StableDubConfig.num_frames``), the crop size
(``resolution``) and the latent channels come from the loaded model's config.

Seeds: one user seed drives three independent streams (:func:`stream_seed`): the initial noise, the choice of the
lip-habit segment and the choice of the appearance reference, so changing how one is drawn never changes the others.
"""

from __future__ import annotations

import enum
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from stabledub_core.errors import OptionError
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.exposure import DEFAULT_GRID
from stabledub_core.masks.reference import ReferenceStrategy
from stabledub_core.media.length_policy import LengthPolicy
from stabledub_core.pipeline.schedulers import SchedulerKind

DEFAULT_FACE_MODEL = Path("models") / "mediapipe" / "face_landmarker.task"
DTYPES = ("auto", "float32", "float16", "bfloat16")  # auto: float16 on a GPU, float32 elsewhere


def option(default, help: str, *, choices: tuple | None = None, min: float | None = None, max: float | None = None,
           step: float | None = None, flag: bool = True):
    """A dataclass field with the metadata the CLI and the nodes build their inputs from.

    Args:
        default: The default value (the one place it is defined).
        help: One line for ``--help`` and the node tooltip.
        choices: Allowed values (strings), if the option is a choice.
        min, max, step: Range of a number (node widgets; checked by :func:`check_options`).
        flag: False for options that have no command-line flag (set from the Python API or a node input).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max,
                                            "step": step, "flag": flag})


def _values(kind: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in kind)


def check_value(f, value, name: str | None = None) -> None:
    """One clear error for a value of option field ``f`` out of its range or not among its choices.

    Args:
        f: The option's dataclass field.
        value: The value to check.
        name: How the user named the option (e.g. the flag ``--crf``); default the field's name.

    Raises:
        OptionError: Saying the allowed range or choices.
    """
    meta, name = f.metadata, name or f.name
    if meta["choices"] and value not in meta["choices"]:
        raise OptionError(f"unknown {name} {value!r}; choose one of {', '.join(meta['choices'])}")
    low, high = meta["min"], meta["max"]
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise OptionError(f"{name} must be between {low} and {high}, got {value}")


class StageOptions:
    """Checks every :func:`option` field of a stage's options when they are made: one clear error for a value out
    of its range or not among its choices."""

    def __post_init__(self) -> None:
        for f in option_fields(type(self)):
            check_value(f, getattr(self, f.name))


@dataclass
class SamplingOptions(StageOptions):
    """How the mouth region is generated."""

    steps: int = option(20, "denoising steps", min=1, max=1000)
    scheduler: str = option(SchedulerKind.DDIM.value, "diffusion solver", choices=_values(SchedulerKind))
    audio_scale: float = option(2.0, "how strongly the lips follow the audio (guidance scale la of eq. 7)",
                                min=0.0, max=20.0, step=0.05)
    habit_scale: float = option(1.5, "how strongly the speaker's own lip habit is kept (guidance scale lh of eq. 7)",
                                min=0.0, max=20.0, step=0.05)
    seed: int = option(0, "seed of the initial noise, the lip-habit segment and the reference choice (three "
                          "independent streams)", min=0, max=0xFFFFFFFF)
    invert: bool = option(False, "start from the source frames inverted under the video's own speech (DDIM "
                                 "inversion) instead of noise: keeps beards, blur and objects near the mouth; needs "
                                 "the video's speech and takes twice as long")
    overlap: int = option(4, "frames shared by consecutive sampler windows (averaged at every step)", min=0, max=63)
    windows_per_chunk: int = option(4, "sampler windows denoised together; bounds memory on long videos",
                                    min=1, max=64)
    keep_known: bool = option(True, "at every step, set the latents outside the inpainting mask to the source "
                                    "crops' latents noised to that step (RePaint-style known-region blending), so "
                                    "the mouth is denoised against the real face around it")


@dataclass
class MaskOptions(StageOptions):
    """The inpainting masks: the union mask Mu and the patches an occluder keeps."""

    mask_margin: float = option(MaskConfig.coarse_dilation, "widen the mouth mask by this fraction of the face "
                                "width", min=0.0, max=1.0, step=0.01)
    occluder_grid: int = option(DEFAULT_GRID, "patches per crop side for occluder exposure (16: one per latent cell at 512)",
                                min=1, max=64)
    occluder_fraction: float = option(0.2, "part of a patch an occluder must cover to keep the patch",
                                      min=0.01, max=1.0, step=0.01)
    max_mask_growth: float = option(MaskConfig.max_growth, "largest area of a window's union mask as a multiple "
                                    "of one frame's mask; a face moving faster makes the masks follow the face "
                                    "instead of covering its whole path (100: practically never)", min=1.0, max=100.0, step=0.1)

    def mask_config(self, box_scale: float = MaskConfig.box_scale) -> MaskConfig:
        """The mask geometry with this margin and growth bound, framed as the model's crops are (``box_scale``:
        its config's ``crop_box_scale``)."""
        return MaskConfig(coarse_dilation=self.mask_margin, max_growth=self.max_mask_growth, box_scale=box_scale)


@dataclass
class ConditionOptions(StageOptions):
    """The appearance reference and the lip-habit segment."""

    reference: str = option(ReferenceStrategy.CLOSED_LIPS.value, "which frame gives the face's appearance",
                            choices=_values(ReferenceStrategy))
    habit_frames: int = option(8, "lip crops (K) of the lip-habit segment", min=1, max=64)


@dataclass
class LengthOptions(StageOptions):
    """What to do when speech and video durations differ."""

    length_policy: str = option(LengthPolicy.PING_PONG.value, "what to do when speech and video lengths differ",
                                choices=_values(LengthPolicy))


FACE_CHOICES = ("largest", "index", "point")  # which face to dub when a video shows several


@dataclass
class TrackingOptions(StageOptions):
    """Face tracking, and which face to dub when the video shows several."""

    face_model: Path = option(DEFAULT_FACE_MODEL, "MediaPipe face_landmarker.task", flag=False)
    face: str = option(FACE_CHOICES[0], "which face to dub when several are visible: the largest, the one at "
                                        "face_index, or the one under the point face_x, face_y of the first frame",
                       choices=FACE_CHOICES)
    face_index: int = option(0, "with face index: the face to dub, counted from the left from 0", min=0, max=31)
    face_x: int = option(0, "with face point: x in pixels of a point on the face to dub, in the first frame",
                         min=0, max=65535)
    face_y: int = option(0, "with face point: y in pixels of that point", min=0, max=65535)


@dataclass
class OutputOptions(StageOptions):
    """Encoding of an output video file."""

    crf: int = option(18, "H.264 quality, lower is better", min=0, max=51)
    x264_preset: str = option("medium", "x264 speed preset", choices=("ultrafast", "superfast", "veryfast",
                              "faster", "fast", "medium", "slow", "slower", "veryslow"))


@dataclass
class RuntimeOptions(StageOptions):
    """Where the model runs."""

    device: str = option("cpu", "torch device, e.g. cpu, cuda, cuda:1")
    dtype: str = option("auto", "model precision; auto: float16 on a GPU, float32 elsewhere", choices=DTYPES)


STAGE_OPTIONS = {"sampling": SamplingOptions, "masks": MaskOptions, "conditions": ConditionOptions,
                 "length": LengthOptions, "tracking": TrackingOptions, "output": OutputOptions,
                 "runtime": RuntimeOptions}


@dataclass
class DubOptions:
    """Every option of a dub, by stage (each part defaults to its stage's defaults)."""

    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    masks: MaskOptions = field(default_factory=MaskOptions)
    conditions: ConditionOptions = field(default_factory=ConditionOptions)
    length: LengthOptions = field(default_factory=LengthOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    @classmethod
    def from_values(cls, **values) -> "DubOptions":
        """Options from flat ``name=value`` pairs (``steps=4, reference="random"``), each routed to its stage."""
        parts = {}
        for stage, kind in STAGE_OPTIONS.items():
            names = {f.name for f in fields(kind)}
            parts[stage] = kind(**{k: values.pop(k) for k in list(values) if k in names})
        if values:
            raise OptionError(f"unknown option(s) {', '.join(sorted(values))}")
        return cls(**parts)


def option_fields(kind: type) -> list:
    """The fields of a stage's options that carry :func:`option` metadata."""
    return [f for f in fields(kind) if "help" in f.metadata and f.default is not MISSING]


STREAMS = ("noise", "habit", "reference")


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one random stream derived from the user's seed.

    Args:
        seed: The user's seed.
        stream: ``noise``, ``habit`` or ``reference``.

    Returns:
        A 32-bit seed, independent for each stream.
    """
    return int(np.random.SeedSequence([int(seed), STREAMS.index(stream)]).generate_state(1)[0])
