"""Mask nodes: union-mask windows and crop boxes, occluder exposure (with the patch editor), previews."""

from __future__ import annotations

import os
import uuid

import numpy as np

from stabledub_core.pipeline import frame_source

from . import convert
from .base import MODEL, TRACK, WINDOWS

DEFAULT_GRID = 16
EMPTY_PATCHES = '{"grid": 16, "cells": []}'


class StableDubPlanMasks:
    """Windows of frames sharing one crop box and one feathered union mask Mu (the mouth region to inpaint)."""

    CATEGORY = "StableDub/masks"
    RETURN_TYPES = (WINDOWS, "MASK")
    RETURN_NAMES = ("windows", "union_masks")
    FUNCTION = "plan"
    DESCRIPTION = "union_masks: each frame's Mu in crop coordinates (F, S, S), S = the model's crop size."

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.masks.config import MaskConfig

        return {"required": {
            "model": (MODEL, {"tooltip": "sets the crop size"}),
            "track": (TRACK,),
            "window": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "frames sharing a box and a mask"}),
            "mask_margin": ("FLOAT", {"default": MaskConfig.coarse_dilation, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "widening of the mouth mask, as a fraction of the face width"}),
        }}

    def plan(self, model, track, window, mask_margin):
        from stabledub_core.masks.config import MaskConfig
        from stabledub_core.masks.crop_spans import plan_windows

        windows = plan_windows(track, window=window, overlap=0, crop_size=model.crop_size,
                               config=MaskConfig(coarse_dilation=mask_margin))
        return windows, convert.mask_out(frame_source.exposure_masks(windows, len(track)))


class StableDubOccluderExposure:
    """Keep occluders (hands, microphones...) over the mouth: patches of Mu that stay visible.

    Patches come from the editor (click them on the preview crop) and/or from an occluder MASK in frame
    coordinates, e.g. from a segmentation node.
    """

    CATEGORY = "StableDub/masks"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("masks",)
    FUNCTION = "expose"
    DESCRIPTION = ("masks: the inpainting masks (F, S, S) in crop coordinates, Mu with the exposed patches at 0. "
                   "Run once to see the preview crop, then click patches to toggle them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "windows": (WINDOWS,),
            "images": ("IMAGE",),
            "patches": ("STRING", {"default": EMPTY_PATCHES, "multiline": False,
                                   "tooltip": 'exposed patches {"grid": G, "cells": [[row, col], ...]} in crop '
                                              "coordinates, kept in every frame (edited by clicking the preview)"}),
            "grid": ("INT", {"default": DEFAULT_GRID, "min": 1, "max": 64,
                             "tooltip": "patches per crop side (editor and occluder)"}),
            "min_fraction": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01,
                                       "tooltip": "occluder coverage that exposes a patch"}),
            "preview_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000}),
        }, "optional": {"occluder": ("MASK", {"tooltip": "white where an occluder is, frame coordinates; one "
                                                         "mask or one per frame"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, patches):
        """Reject a malformed patch list when the prompt is queued, before anything runs."""
        from stabledub_core.masks.exposure import ExposedPatches, ExposureError

        try:
            ExposedPatches.from_json(patches or EMPTY_PATCHES)
        except ExposureError as error:
            return f"patches: {error}"
        return True

    def expose(self, windows, images, patches, grid, min_fraction, preview_frame, occluder=None):
        from stabledub_core.masks.exposure import ExposedPatches, union_cells
        from stabledub_core.pipeline.composite import crop_frames

        painted = ExposedPatches.from_json(patches or EMPTY_PATCHES)
        occluded = {}
        if occluder is not None:
            occluder = convert.mask_in(occluder, "occluder")
            occluded = frame_source.occluder_patches(windows, len(images), occluder, grid, min_fraction)
        masks = frame_source.exposure_masks(windows, len(images), painted, occluded)
        index = min(preview_frame, len(images) - 1)
        window = frame_source.frame_windows(windows, len(images))[index]
        crop = crop_frames(convert.image_uint8(images[index:index + 1]), window.box, window.crop_size)[0]
        from_occluder = occluded.get(index)
        ui = {"stabledub_preview": [_save_preview(crop)], "stabledub_grid": [grid],
              "stabledub_union_cells": union_cells(window.union_mask, grid).astype(int).tolist(),
              "stabledub_occluder_cells": [] if from_occluder is None else [list(c) for c in from_occluder.cells]}
        return {"ui": ui, "result": (convert.mask_out(masks),)}


def _save_preview(image: np.ndarray) -> dict:
    """Write a preview PNG to ComfyUI's temp folder; the UI's image reference."""
    import cv2
    import folder_paths

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
            "images": ("IMAGE",),
            "windows": (WINDOWS,),
            "frames": ("INT", {"default": 6, "min": 1, "max": 64, "tooltip": "tiles, spread over the clip"}),
            "tile": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 16}),
        }}

    def preview(self, images, windows, frames, tile):
        from stabledub_core.masks.preview import PreviewStyle, render_frame

        owners = frame_source.frame_windows(windows, len(images))
        indices = np.unique(np.linspace(0, len(images) - 1, frames).round().astype(int))
        tiles = [render_frame(convert.image_uint8(images[i:i + 1])[0], int(i), owners[i], style=PreviewStyle(tile))
                 for i in indices]
        return (convert.image_out(np.stack(tiles)),)


NODES = {
    "StableDubPlanMasks": (StableDubPlanMasks, "StableDub Plan Masks"),
    "StableDubOccluderExposure": (StableDubOccluderExposure, "StableDub Occluder Exposure"),
    "StableDubPreview": (StableDubPreview, "StableDub Mask Preview"),
}
