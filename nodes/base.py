"""Shared pieces of the node classes: custom type names, the model handle, interruption and error handling."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from stabledub_core.errors import StableDubError
from stabledub_core.runtime import Interrupted

from . import comfy_env

# Custom ComfyUI types of the pack (values only StableDub nodes produce and consume).
MODEL = "STABLEDUB_MODEL"  # ModelHandle
TRACK = "STABLEDUB_TRACK"  # stabledub_core.face.track.FaceTrack
CROP_PLAN = "STABLEDUB_CROP_PLAN"  # stabledub_core.masks.crop_spans.CropPlan: crop window and Mu of every frame
HABIT = "STABLEDUB_HABIT"  # (C,) torch.Tensor: a lip-habit vector (nodes/habit.py)
AUDIO_FEATURES = "STABLEDUB_AUDIO_FEATURES"  # stabledub_core.pipeline.modular.AudioFeatures (nodes/audio.py)

# Inputs several nodes share, with their tooltips.
MODEL_IN = (MODEL, {"tooltip": "the StableDub model (StableDub Load Model)"})
IMAGES_IN = ("IMAGE", {"tooltip": "the video frames (F, H, W, 3), e.g. from StableDub Load Video or core Load Video + "
                                  "Get Video Components"})
TRACK_IN = (TRACK, {"tooltip": "the face track of these frames (StableDub Track Faces)"})
CROP_PLAN_IN = (CROP_PLAN, {"tooltip": "crop box and union mask Mu of every frame (StableDub Plan Masks)"})

HABIT_IN = (HABIT, {"tooltip": "optional: a lip-habit vector (StableDub Habit Encode / Load Habit) instead of the "
                              "lips of this video"})

AUDIO_FEATURES_IN = (AUDIO_FEATURES, {"tooltip": "optional: the speech encoded once (StableDub Audio Encode), "
                                                 "instead of audio"})

FPS = ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                 "tooltip": "frame rate of the frames (e.g. from StableDub Load Video)"})


@dataclass
class ModelHandle:
    """A loaded StableDub model and the dtype it runs in (it lives on ComfyUI's offload device between runs).

    Attributes:
        model: The ``StableDub`` module.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        name: The checkpoint's file name.
    """

    model: Any
    dtype: str
    name: str

    @property
    def crop_size(self) -> int:
        return int(self.model.config.resolution)

    @property
    def crop_box_scale(self) -> float:
        return float(self.model.config.crop_box_scale)

    @property
    def lip_size(self) -> int:
        return int(self.model.config.habit.lip_size)

    @property
    def window(self) -> int:
        return int(self.model.config.num_frames)


def node_error(exc: StableDubError) -> StableDubError:
    """A core error as ComfyUI shows a node error: its message on one line, raised from the node (its traceback
    into the core dropped: the message says what is wrong and what to do, the server log shows no deep trace)."""
    exc.args = (" ".join(str(exc).split()),)
    return exc.with_traceback(None)


def interruptible(function):
    """Make the core's ``Interrupted`` (raised when ``should_stop()`` was True) ComfyUI's interruption, and its
    user-facing errors (bad checkpoint, bad output path...) one-line node errors (:func:`node_error`)."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Interrupted as exc:
            comfy_env.raise_interrupt(exc)
        except StableDubError as exc:
            raise node_error(exc) from None

    return run
