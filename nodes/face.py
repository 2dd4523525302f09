"""Face nodes: landmark tracking and the lip crops of the lip-habit segment."""

from __future__ import annotations

from stabledub_core.pipeline import dub, frame_source

from . import comfy_env, convert
from .base import FPS, MODEL, SEED, TRACK, interruptible


class StableDubTrackFaces:
    """Track one face through the frames (MediaPipe Face Landmarker, 478 landmarks per frame)."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = (TRACK,)
    RETURN_NAMES = ("track",)
    FUNCTION = "track"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "fps": FPS,
            "face_model": (comfy_env.model_files("mediapipe"),
                           {"tooltip": "face_landmarker.task in models/mediapipe"}),
        }}

    @interruptible
    def track(self, images, fps, face_model):
        source = frame_source.FrameSource(convert.image_in(images), fps)
        progress = comfy_env.Progress(len(images))
        return (frame_source.track_clip(source, comfy_env.model_path("mediapipe", face_model), progress,
                                        comfy_env.should_stop),)


class StableDubLipCrops:
    """Mouth crops of a run of tracked frames: the lip-habit segment (may come from another video of the speaker)."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("lip_crops",)
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "sets the lip crop size"}),
            "images": ("IMAGE",),
            "track": (TRACK,),
            "frames": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "K, crops in the segment"}),
            "seed": SEED,
        }}

    def crop(self, model, images, track, frames, seed):
        source = frame_source.FrameSource(convert.image_in(images), 25)  # the crops do not depend on the rate
        return (convert.image_out(dub.habit_crops(source, track, model.lip_size, frames, seed)),)


NODES = {
    "StableDubTrackFaces": (StableDubTrackFaces, "StableDub Track Faces"),
    "StableDubLipCrops": (StableDubLipCrops, "StableDub Lip Crops"),
}
