"""Compositing nodes: model-resolution face crops out of the frames, generated crops back into them.

The core is imported inside the node methods, not at the top: it pulls torch, diffusers, OpenCV and PyAV,
and ComfyUI imports every node pack at start-up (``tests/nodes/test_nodes.py`` checks that importing the
pack loads none of them).
"""

from __future__ import annotations

from . import comfy_env, convert
from .base import CROP_PLAN_IN, IMAGES_IN, TRACK_IN, interruptible
from .face import ANY_RATE
from .widgets import widget


class StableDubCropFaces:
    """Crop every frame with its window's box at the model's resolution, and the appearance reference likewise."""

    CATEGORY = "StableDub/compositing"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("crops", "appearance")
    FUNCTION = "crop"
    DESCRIPTION = ("crops: (F, S, S) face crops; appearance: the reference frame (closed lips, nearest pose...) "
                   "cropped with each frame's box.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import ConditionOptions, SamplingOptions

        return {"required": {
            "images": IMAGES_IN,
            "track": TRACK_IN,
            "crop_plan": CROP_PLAN_IN,
            "reference": widget(ConditionOptions, "reference"),
            "seed": widget(SamplingOptions, "seed"),
        }}

    @interruptible
    def crop(self, images, track, crop_plan, reference, seed):
        from stabledub_core.media.frames import FrameSource
        from stabledub_core.pipeline.modular import crop_clip
        from stabledub_core.pipeline.stages import reference_frame

        source = FrameSource(convert.image_in(images), ANY_RATE)
        crops = crop_clip(source, crop_plan, should_stop=comfy_env.should_stop)
        image = reference_frame(source, track, reference, seed)
        appearance = crop_clip(source, crop_plan, image=image, should_stop=comfy_env.should_stop)
        return convert.image_out(crops), convert.image_out(appearance)


class StableDubPasteBack:
    """Blend generated crops (any size: upscaled or restored ones too) into the frames inside the masks."""

    CATEGORY = "StableDub/compositing"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": IMAGES_IN,
            "crops": ("IMAGE", {"tooltip": "generated crops, one per frame, any square size"}),
            "crop_plan": CROP_PLAN_IN,
            "color_match": ("BOOLEAN", {"default": False,
                                        "tooltip": "match the generated colours to the frame around the mask"}),
        }, "optional": {"masks": ("MASK", {"tooltip": "blending masks in crop coordinates (default: Mu)"})}}

    @interruptible
    def paste(self, images, crops, crop_plan, color_match, masks=None):
        from stabledub_core.media.frames import FrameSource
        from stabledub_core.pipeline.modular import paste_clip

        source = FrameSource(convert.image_in(images), ANY_RATE)
        convert.image_in(crops, "crops")
        masks = None if masks is None else convert.mask_in(masks)
        frames = paste_clip(source, crops, crop_plan, masks, color_match, comfy_env.Progress(len(images)),
                            comfy_env.should_stop)
        return (convert.image_out(frames),)


NODES = {
    "StableDubCropFaces": (StableDubCropFaces, "StableDub Crop Faces"),
    "StableDubPasteBack": (StableDubPasteBack, "StableDub Paste Back"),
}
