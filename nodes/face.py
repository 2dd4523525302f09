"""Face nodes: landmark tracking and the lip crops of the lip-habit segment.

The core is imported inside the node methods, not at the top: it pulls torch, diffusers, OpenCV and PyAV,
and ComfyUI imports every node pack at start-up (``tests/nodes/test_nodes.py`` checks that importing the
pack loads none of them).
"""

from __future__ import annotations

from . import comfy_env, convert
from .base import FPS, IMAGES_IN, MODEL, TRACK, TRACK_IN, interruptible
from .widgets import widget, widgets

FACE_WIDGETS = ("face", "face_index", "face_x", "face_y")  # which face to dub (TrackingOptions)

ANY_RATE = 25  # frame rate given to sources whose result does not depend on it (crops, masks)


class StableDubTrackFaces:
    """Track one face through the frames (MediaPipe Face Landmarker, 478 landmarks per frame): the largest, the one
    at an index from the left, or the one under a point of the first frame."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = (TRACK,)
    RETURN_NAMES = ("track",)
    FUNCTION = "track"

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import TrackingOptions

        return {"required": {
            "images": IMAGES_IN,
            "fps": FPS,
            "face_model": (comfy_env.face_models(),
                           {"tooltip": "MediaPipe face_landmarker.task: from models/mediapipe, else the copy "
                                       "bundled with the pack"}),
            **widgets(TrackingOptions, *FACE_WIDGETS),
        }}

    @interruptible
    def track(self, images, fps, face_model, **choice):
        from stabledub_core.media.frames import FrameSource
        from stabledub_core.pipeline.options import TrackingOptions
        from stabledub_core.pipeline.stages import track_faces

        path = comfy_env.face_model_path(face_model)
        source = FrameSource(convert.image_in(images), fps)
        tracking = TrackingOptions(face_model=path, **choice)  # the face to follow: largest, index or point
        return (track_faces(source, path, on_progress=comfy_env.Progress(len(images)),
                            should_stop=comfy_env.should_stop, tracking=tracking),)


class StableDubLipCrops:
    """Mouth crops of a run of tracked frames: the lip-habit segment (may come from another video of the speaker)."""

    CATEGORY = "StableDub/face"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("lip_crops",)
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import ConditionOptions, SamplingOptions

        return {"required": {
            "model": (MODEL, {"tooltip": "sets the lip crop size"}),
            "images": IMAGES_IN,
            "track": TRACK_IN,
            "habit_frames": widget(ConditionOptions, "habit_frames"),
            "seed": widget(SamplingOptions, "seed"),
        }}

    def crop(self, model, images, track, habit_frames, seed):
        from stabledub_core.media.frames import FrameSource
        from stabledub_core.pipeline.stages import habit_lip_crops

        source = FrameSource(convert.image_in(images), ANY_RATE)
        return (convert.image_out(habit_lip_crops(source, track, model.lip_size, habit_frames, seed)),)


NODES = {
    "StableDubTrackFaces": (StableDubTrackFaces, "StableDub Track Faces"),
    "StableDubLipCrops": (StableDubLipCrops, "StableDub Lip Crops"),
}
