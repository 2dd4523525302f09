"""Shared pieces of the node classes: custom type names, the model handle, interruption handling."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# Custom ComfyUI types of the pack (values only StableDub nodes produce and consume).
MODEL = "STABLEDUB_MODEL"  # ModelHandle
TRACK = "STABLEDUB_TRACK"  # stabledub_core.face.track.FaceTrack
WINDOWS = "STABLEDUB_WINDOWS"  # list[stabledub_core.masks.crop_spans.Window]

FPS = ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                 "tooltip": "frame rate of the frames (e.g. from StableDub Load Video)"})
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF})


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
    def lip_size(self) -> int:
        return int(self.model.config.habit.lip_size)


def interruptible(function):
    """Make the core's ``Interrupted`` (raised when ``should_stop()`` was True) ComfyUI's interruption."""
    from stabledub_core.runtime import Interrupted

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Interrupted as exc:
            from .comfy_env import raise_interrupt

            raise_interrupt(exc)

    return run
