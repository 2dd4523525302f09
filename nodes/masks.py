"""Mask nodes: crop spans and union masks, occluder exposure (with the patch editor), previews.

The core is imported inside the node methods, not at the top: it pulls torch, diffusers, OpenCV and PyAV,
and ComfyUI imports every node pack at start-up (``tests/nodes/test_nodes.py`` checks that importing the
pack loads none of them).
"""

from __future__ import annotations

import os
import uuid

import numpy as np

from . import convert
from .base import CROP_PLAN, CROP_PLAN_IN, IMAGES_IN, MODEL, TRACK_IN
from .widgets import widget, widgets

EMPTY_PATCHES = '{"grid": 16, "cells": []}'


class StableDubPlanMasks:
    """Crop spans: frames sharing one crop box and one feathered union mask Mu (the mouth region to inpaint)."""

    CATEGORY = "StableDub/masks"
    RETURN_TYPES = (CROP_PLAN, "MASK")
    RETURN_NAMES = ("crop_plan", "union_masks")
    FUNCTION = "plan"
    DESCRIPTION = ("crop_plan: the crop box and Mu of every frame, one span per window of the model's length; "
                   "union_masks: each frame's Mu in crop coordinates (F, S, S), S = the model's crop size.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import MaskOptions

        return {"required": {
            "model": (MODEL, {"tooltip": "sets the crop size and the window length"}),
            "track": TRACK_IN,
            "mask_margin": widget(MaskOptions, "mask_margin"),
        }}

    def plan(self, model, track, mask_margin):
        from stabledub_core.pipeline.modular import mask_clip, plan_masks
        from stabledub_core.pipeline.options import MaskOptions

        options = MaskOptions(mask_margin=mask_margin)
        crop_plan = plan_masks(track, model.crop_size, model.window, options, model.crop_box_scale)
        return crop_plan, convert.mask_out(mask_clip(crop_plan, options))


class StableDubOccluderExposure:
    """Keep occluders (hands, microphones...) over the mouth: patches of Mu that stay visible.

    Patches come from the editor (click them on the preview crop) and/or from an occluder MASK in frame
    coordinates, e.g. from a segmentation node.
    """

    CATEGORY = "StableDub/masks"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("masks",)
    FUNCTION = "expose"
    OUTPUT_NODE = True  # "Preview crop" in the editor runs this node alone: tracking and planning, not the dub
    DESCRIPTION = ("masks: the inpainting masks (F, S, S) in crop coordinates, Mu with the exposed patches at 0. "
                   "Press Preview crop (or run the workflow) to see the crop, then click patches to toggle them.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import MaskOptions

        return {"required": {
            "crop_plan": CROP_PLAN_IN,
            "images": IMAGES_IN,
            "patches": ("STRING", {"default": EMPTY_PATCHES, "multiline": False,
                                   "tooltip": 'exposed patches {"grid": G, "cells": [[row, col], ...]} in crop '
                                              "coordinates, kept in every frame (edited by clicking the preview)"}),
            **widgets(MaskOptions, "occluder_grid", "occluder_fraction"),
            "preview_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                       "tooltip": "the frame whose crop the editor shows (clamped to the last)"}),
        }, "optional": {"occluder": ("MASK", {"tooltip": "white where an occluder is, frame coordinates; one "
                                                         "mask or one per frame"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, patches):
        """Reject a malformed patch list when the prompt is queued, before anything runs."""
        from stabledub_core.errors import ExposureError
        from stabledub_core.masks.exposure import ExposedPatches

        try:
            ExposedPatches.from_json(patches or EMPTY_PATCHES)
        except ExposureError as error:
            return f"patches: {error}"
        return True

    def expose(self, crop_plan, images, patches, occluder_grid, occluder_fraction, preview_frame, occluder=None):
        from stabledub_core.masks.exposure import ExposedPatches, union_cells
        from stabledub_core.pipeline.modular import mask_clip, occluded_cells
        from stabledub_core.pipeline.options import MaskOptions
        from stabledub_core.pipeline.stages import crop_frame

        options = MaskOptions(occluder_grid=occluder_grid, occluder_fraction=occluder_fraction)
        painted = ExposedPatches.from_json(patches or EMPTY_PATCHES)
        crop_plan.check_frames(len(images))
        if occluder is not None:
            occluder = convert.mask_in(occluder, "occluder")
        masks = mask_clip(crop_plan, options, painted, occluder, tuple(images.shape[1:3]))
        index = min(preview_frame, len(images) - 1)
        span = crop_plan.span_at(index)[0]
        crop = crop_frame(convert.image_uint8(images[index:index + 1])[0], span, crop_plan.crop_size)
        from_occluder = None if occluder is None else occluded_cells(crop_plan, index, options, occluder)
        ui = {"stabledub_preview": [_save_preview(crop)], "stabledub_grid": [occluder_grid],
              "stabledub_union_cells": union_cells(span.union_mask, occluder_grid).astype(int).tolist(),
              "stabledub_occluder_cells": [] if from_occluder is None else [list(c) for c in from_occluder.cells],
              "stabledub_frame": [index]}
        return {"ui": ui, "result": (convert.mask_out(masks),)}


def _save_preview(image: np.ndarray) -> dict:
    """Write a preview PNG to ComfyUI's temp folder; the UI's image reference."""
    import cv2
    import folder_paths  # ComfyUI's: imported when a node runs, never at import time

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"stabledub_exposure_{uuid.uuid4().hex[:10]}.png"
    if not cv2.imwrite(os.path.join(folder, name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the preview to {folder}")
    return {"filename": name, "subfolder": "", "type": "temp"}


class StableDubPreview:
    """Tiles showing the masks of a few frames: Mu (blue), crop box, mouth masks and landmarks."""

    CATEGORY = "StableDub/masks"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    FUNCTION = "preview"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": IMAGES_IN,
            "crop_plan": CROP_PLAN_IN,
            "frames": ("INT", {"default": 6, "min": 1, "max": 64, "tooltip": "tiles, spread over the clip"}),
            "tile": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 16,
                              "tooltip": "side of each tile in pixels"}),
        }}

    def preview(self, images, crop_plan, frames, tile):
        from stabledub_core.masks.preview import PreviewStyle, render_frame

        crop_plan.check_frames(len(images))
        indices = np.unique(np.linspace(0, len(images) - 1, frames).round().astype(int))
        tiles = [render_frame(convert.image_uint8(images[i:i + 1])[0], int(i), crop_plan.span_at(int(i))[0],
                              style=PreviewStyle(tile)) for i in indices]
        return (convert.image_out(np.stack(tiles)),)


NODES = {
    "StableDubPlanMasks": (StableDubPlanMasks, "StableDub Plan Masks"),
    "StableDubOccluderExposure": (StableDubOccluderExposure, "StableDub Occluder Exposure"),
    "StableDubPreview": (StableDubPreview, "StableDub Mask Preview"),
}
