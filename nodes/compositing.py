"""Compositing nodes: model-resolution face crops out of the frames, generated crops back into them."""

from __future__ import annotations

from stabledub_core.pipeline import dub, frame_source

from . import comfy_env, convert
from .base import SEED, TRACK, WINDOWS, interruptible


def reference_strategies() -> list[str]:
    from stabledub_core.masks.reference import ReferenceStrategy

    return [s.value for s in ReferenceStrategy]


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
        return {"required": {
            "images": ("IMAGE",),
            "track": (TRACK,),
            "windows": (WINDOWS,),
            "reference": (reference_strategies(), {"tooltip": "how the appearance reference frame is chosen"}),
            "seed": SEED,
        }}

    @interruptible
    def crop(self, images, track, windows, reference, seed):
        source = frame_source.FrameSource(convert.image_in(images), 25)  # crops do not depend on the rate
        size = windows[0].crop_size
        crops = frame_source.window_crops(source, windows, size, should_stop=comfy_env.should_stop)
        image = dub.reference_image(source, track, reference, seed)
        appearance = frame_source.window_crops(source, windows, size, image=image, should_stop=comfy_env.should_stop)
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
            "images": ("IMAGE",),
            "crops": ("IMAGE", {"tooltip": "generated crops, one per frame, any square size"}),
            "windows": (WINDOWS,),
            "color_match": ("BOOLEAN", {"default": False,
                                        "tooltip": "match the generated colours to the frame around the mask"}),
        }, "optional": {"masks": ("MASK", {"tooltip": "blending masks in crop coordinates (default: Mu)"})}}

    @interruptible
    def paste(self, images, crops, windows, color_match, masks=None):
        source = frame_source.FrameSource(convert.image_in(images), 25)
        convert.image_in(crops, "crops")
        masks = None if masks is None else convert.mask_in(masks)
        frames = frame_source.paste_clip(source, crops, windows, masks, color_match, comfy_env.Progress(len(images)),
                                         comfy_env.should_stop)
        return (convert.image_out(frames),)


NODES = {
    "StableDubCropFaces": (StableDubCropFaces, "StableDub Crop Faces"),
    "StableDubPasteBack": (StableDubPasteBack, "StableDub Paste Back"),
}
