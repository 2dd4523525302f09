"""Lip-habit nodes: encode a speaker's lip habit once (from any clip, e.g. a second video), save it, load it.

The HABIT value is the core's ``(C,)`` habit vector (``torch.Tensor``); Sample, Dub and Dub Video File take it
instead of encoding the lips of the video they dub. Saved habits are ``.safetensors`` files in ComfyUI's
``models/stabledub_habits`` folder (``conditions.save_habit_vector``: the vector and its metadata). The core is
imported inside the node methods (see ``nodes/sampling.py``).
"""

from __future__ import annotations

import os

from . import comfy_env, convert
from .base import HABIT, MODEL_IN, interruptible

HABITS = "stabledub_habits"  # ComfyUI model folder of saved habit vectors


class StableDubHabitEncode:
    """The lip-habit vector of lip crops: any clip of the speaker, or another speaker's video (habit transfer)."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = (HABIT,)
    RETURN_NAMES = ("habit",)
    FUNCTION = "encode"
    DESCRIPTION = "habit: the (C,) vector Sample, Dub and Dub Video File use instead of the dubbed video's own lips."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL_IN,
            "lip_crops": ("IMAGE", {"tooltip": "mouth crops (StableDub Lip Crops) of the clip whose habit to use"}),
        }}

    @interruptible
    def encode(self, model, lip_crops):
        from stabledub_core.pipeline.modular import encode_habit

        with comfy_env.model_on_device(model) as device:
            from stabledub_core.pipeline.options import DubOptions

            options = DubOptions.from_values(device=device, dtype=model.dtype)
            return (encode_habit(model.model, convert.image_uint8(lip_crops, "lip_crops"), options),)


class StableDubSaveHabit:
    """Save a habit vector to models/stabledub_habits (safetensors), to reuse or share it."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "habit": (HABIT, {"tooltip": "the habit vector (StableDub Habit Encode)"}),
            "name": ("STRING", {"default": "speaker", "tooltip": "file name start; saved as <name>_00001_.safetensors "
                                                                 "in models/stabledub_habits"}),
        }}

    def save(self, habit, name):
        from stabledub_core.errors import OptionError
        from stabledub_core.pipeline.conditions import save_habit_vector

        if not name.strip() or os.path.basename(name.strip()) != name.strip():
            raise OptionError(f"habit name {name!r}: give a plain file name (no folder)")
        folder = comfy_env.model_folder(HABITS)
        counter = 1
        while os.path.exists(os.path.join(folder, f"{name.strip()}_{counter:05}_.safetensors")):
            counter += 1
        path = os.path.join(folder, f"{name.strip()}_{counter:05}_.safetensors")
        save_habit_vector(path, habit, {"saved_by": "ComfyUI-StableDub"})
        return {"ui": {"text": [os.path.basename(path)]}, "result": (path,)}


class StableDubLoadHabit:
    """Load a saved habit vector from models/stabledub_habits."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = (HABIT,)
    RETURN_NAMES = ("habit",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "habit_name": (comfy_env.model_files(HABITS), {"tooltip": "a habit file in models/stabledub_habits "
                                                                      "(StableDub Save Habit, or the CLI's "
                                                                      "--save-habit)"}),
        }}

    def load(self, habit_name):
        from stabledub_core.pipeline.conditions import load_habit_vector

        return (load_habit_vector(comfy_env.model_path(HABITS, habit_name)).vector,)


NODES = {
    "StableDubHabitEncode": (StableDubHabitEncode, "StableDub Habit Encode"),
    "StableDubSaveHabit": (StableDubSaveHabit, "StableDub Save Habit"),
    "StableDubLoadHabit": (StableDubLoadHabit, "StableDub Load Habit"),
}
