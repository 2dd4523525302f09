"""Sampling nodes: the diffusion sampler over face crops, and the all-in-one dubbing node.

The core is imported inside the node methods, not at the top: it pulls torch, diffusers, OpenCV and PyAV,
and ComfyUI imports every node pack at start-up (``tests/nodes/test_nodes.py`` checks that importing the
pack loads none of them).
"""

from __future__ import annotations

import os
import shutil
import uuid

from . import comfy_env, convert
from .base import AUDIO_FEATURES_IN, FPS, HABIT_IN, IMAGES_IN, MODEL_IN, interruptible
from .face import FACE_WIDGETS
from .widgets import widgets

SAMPLER_WIDGETS = ("steps", "scheduler", "audio_scale", "habit_scale", "seed", "overlap", "windows_per_chunk")
SOURCE_AUDIO = ("AUDIO", {"tooltip": "optional: the speech the video was filmed with. When connected, sampling "
                                     "starts from the source frames inverted under it (DDIM inversion): keeps "
                                     "beards, blur and objects near the mouth; twice the sampling time"})


def source_speech(audio):
    """The optional source-speech input as the encoder's 16 kHz mono wave, or None."""
    if audio is None:
        return None
    from stabledub_core.media.audio import to_encoder_input

    return to_encoder_input(*convert.audio_in(audio, "source_audio"))


def dub_options(device: str, dtype: str, invert: bool, **values):
    """The pipeline options of a node's widget values (inversion iff the source speech is connected)."""
    from stabledub_core.pipeline.options import DubOptions

    return DubOptions.from_values(device=device, dtype=dtype, invert=invert, **values)


class StableDubSample:
    """Generate the mouth region of face crops from speech (dual classifier-free guidance, the model's windows)."""

    CATEGORY = "StableDub/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("crops",)
    FUNCTION = "sample"
    DESCRIPTION = "Returns the generated crops (F, S, S); restore or upscale them, then StableDub Paste Back."

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import SamplingOptions

        return {"required": {
            "model": MODEL_IN,
            "crops": ("IMAGE", {"tooltip": "face crops at the model's resolution (StableDub Crop Faces)"}),
            "masks": ("MASK", {"tooltip": "inpainting masks in crop coordinates (Plan Masks / Occluder Exposure)"}),
            "appearance": ("IMAGE", {"tooltip": "appearance reference crops (StableDub Crop Faces)"}),
            "fps": FPS,
            **widgets(SamplingOptions, *SAMPLER_WIDGETS),
        }, "optional": {
            "audio": ("AUDIO", {"tooltip": "speech, starting with the first frame (or connect audio_features)"}),
            "audio_features": AUDIO_FEATURES_IN,
            "lip_crops": ("IMAGE", {"tooltip": "lip-habit segment (StableDub Lip Crops), any clip of the speaker; "
                                               "or connect a habit"}),
            "habit": HABIT_IN,
            "source_audio": SOURCE_AUDIO,
        }}

    @interruptible
    def sample(self, model, crops, masks, appearance, fps, audio=None, audio_features=None, lip_crops=None, habit=None,
               source_audio=None, **values):
        from stabledub_core.errors import OptionError
        from stabledub_core.media.audio import to_encoder_input
        from stabledub_core.pipeline.modular import check_habit, generate_crops

        if (lip_crops is None) == (habit is None):
            raise OptionError("connect either lip_crops (StableDub Lip Crops) or a habit (StableDub Habit Encode / "
                              "Load Habit), not both")
        if (audio is None) == (audio_features is None):
            raise OptionError("connect either audio or audio_features (StableDub Audio Encode), not both")
        condition = check_habit(model.model, habit) if habit is not None else convert.image_uint8(lip_crops,
                                                                                                  "lip_crops")
        wave16 = None if audio is None else to_encoder_input(*convert.audio_in(audio))
        with comfy_env.model_on_device(model) as device:
            options = dub_options(device, model.dtype, source_audio is not None, **values)
            out = generate_crops(
                model.model, convert.image_uint8(crops, "crops"), convert.mask_in(masks),
                convert.image_uint8(appearance, "appearance"), wave16, fps, condition, options,
                comfy_env.Progress(len(crops)), comfy_env.should_stop, source_speech(source_audio), audio_features)
        return (convert.image_out(out),)


class StableDubDub:
    """Dub frames with speech in one node: tracking, masks, sampling and paste-back (streaming, bounded memory)."""

    CATEGORY = "StableDub/sampling"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "dub"
    DESCRIPTION = "audio: the speech with the length policy applied, to save with the frames."

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import (ConditionOptions, LengthOptions, MaskOptions, SamplingOptions,
                                                     TrackingOptions)

        return {"required": {
            "model": MODEL_IN,
            "images": IMAGES_IN,
            "audio": ("AUDIO", {"tooltip": "the new speech"}),
            "fps": FPS,
            "face_model": (comfy_env.face_models(),
                           {"tooltip": "MediaPipe face_landmarker.task: from models/mediapipe, else the copy "
                                       "bundled with the pack"}),
            **widgets(LengthOptions, "length_policy"),
            **widgets(SamplingOptions, *SAMPLER_WIDGETS),
            **widgets(ConditionOptions, "reference", "habit_frames"),
            **widgets(MaskOptions, "mask_margin", "occluder_grid", "occluder_fraction"),
            **widgets(TrackingOptions, *FACE_WIDGETS),
        }, "optional": {"occluder": ("MASK", {"tooltip": "one mask for all frames or one per frame, at the frames' "
                                                    "size; white = keep (an occluder)"}),
                         "source_audio": SOURCE_AUDIO, "habit": HABIT_IN}}

    @interruptible
    def dub(self, model, images, audio, fps, face_model, occluder=None, source_audio=None, habit=None, **values):
        from stabledub_core.pipeline.modular import check_habit

        from stabledub_core.media.frames import FrameSource
        from stabledub_core.pipeline.dub import dub_clip

        waveform, rate = convert.audio_in(audio)
        source = FrameSource(convert.image_in(images), fps)
        if occluder is not None:
            occluder = convert.mask_in(occluder, "occluder")  # (1, H, W) or (F, H, W)
        with comfy_env.model_on_device(model) as device:
            options = dub_options(device, model.dtype, source_audio is not None,
                                  face_model=comfy_env.face_model_path(face_model), **values)
            result = dub_clip(source, waveform, rate, model.model, options, occluder,
                              comfy_env.Progress(len(images), stages=("track", "sample")), comfy_env.should_stop,
                              source_speech(source_audio), None if habit is None else check_habit(model.model, habit))
        return (convert.image_out(result.frames), convert.audio_out(result.waveform, result.sample_rate),
                float(result.fps))


NO_FILE = "(the video input or video_path)"
TEMPORARY_VIDEO = "stabledub_video_"  # name start of the temporary copy of a VIDEO held in memory
DUB_WIDGETS = (("LengthOptions", ("length_policy",)), ("SamplingOptions", SAMPLER_WIDGETS),
               ("ConditionOptions", ("reference", "habit_frames")),
               ("MaskOptions", ("mask_margin", "occluder_grid", "occluder_fraction")),
               ("TrackingOptions", FACE_WIDGETS))


def video_file(video: str, video_path: str = "", video_in=None) -> str:
    """The file to dub: a ComfyUI VIDEO's own file (never decoded here), else ``video_path``, else the input-folder
    file ``video``."""
    from stabledub_core.errors import InputFileNotFoundError, OptionError

    if video_in is not None:
        source = video_in.get_stream_source() if hasattr(video_in, "get_stream_source") else None
        if isinstance(source, (str, os.PathLike)):
            return os.fspath(source)
        if hasattr(source, "read"):  # an uploaded video held in memory: copied to a temporary file, in blocks
            import folder_paths

            os.makedirs(folder_paths.get_temp_directory(), exist_ok=True)
            path = os.path.join(folder_paths.get_temp_directory(), f"{TEMPORARY_VIDEO}{uuid.uuid4().hex[:10]}.mp4")
            with open(path, "wb") as out:
                shutil.copyfileobj(source, out)
            return path
        raise OptionError("this VIDEO holds frames, not a file (e.g. from Create Video): dub its images with StableDub "
                          "Dub (all in one), or save it and load the file")
    if video_path.strip():
        path = os.path.expanduser(video_path.strip())
        if not os.path.isabs(path):
            import folder_paths

            path = os.path.join(folder_paths.get_input_directory(), path)
        if not os.path.isfile(path):
            raise InputFileNotFoundError(f"video_path {video_path!r}: no such file ({path}): give a video file, "
                                         "absolute or relative to ComfyUI's input folder")
        return path
    if video == NO_FILE:
        raise OptionError("no video: pick one of the input folder, type a video_path or connect a VIDEO")
    return comfy_env.input_path(video)


class StableDubDubVideoFile:
    """Dub a video file of any length into a new file under the output folder, streaming (bounded memory)."""

    CATEGORY = "StableDub/sampling"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "dub"
    OUTPUT_NODE = True
    DESCRIPTION = ("Frames are decoded, dubbed and encoded a chunk at a time: memory stays bounded however long the "
                   "video is (a 10-minute 1080p video never sits in RAM). Writes <prefix>_00001_.mp4, ... and shows "
                   "it on the node; path: the file written.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline import options

        return {"required": {
            "model": MODEL_IN,
            "video": ([NO_FILE] + comfy_env.input_videos(),
                      {"tooltip": "video file in ComfyUI's input folder (unless video_path or a VIDEO is given); "
                                  "upload one with the button", "video_upload": True}),
            "face_model": (comfy_env.face_models(),
                           {"tooltip": "MediaPipe face_landmarker.task: from models/mediapipe, else the copy "
                                       "bundled with the pack"}),
            "filename_prefix": ("STRING", {"default": "StableDub/dub_file",
                                           "tooltip": "file name start in the output folder; may hold a "
                                                      "sub-folder"}),
            "format": (["mp4", "mov", "mkv"], {"tooltip": "container of the H.264 video"}),
            **{name: spec for kind, names in DUB_WIDGETS for name, spec in widgets(getattr(options, kind),
                                                                                    *names).items()},
            "crf": widgets(options.OutputOptions, "crf")["crf"],
            "invert": ("BOOLEAN", {"default": False,
                                   "tooltip": "start from the source frames inverted under the video's own speech "
                                              "(keeps beards, blur and objects near the mouth); twice the time"}),
        }, "optional": {
            "audio": ("AUDIO", {"tooltip": "the new speech (not connected: the video's own audio track)"}),
            "video_path": ("STRING", {"default": "", "tooltip": "a video file path, absolute or relative to the "
                                                                "input folder (instead of the list)"}),
            "video_in": ("VIDEO", {"tooltip": "a VIDEO (e.g. core Load Video): its file is streamed, not decoded "
                                              "into memory"}),
            "occluder": ("MASK", {"tooltip": "one mask at the video's size, for every frame; white = keep (an "
                                             "occluder)"}),
            "habit": HABIT_IN,
        }}

    @classmethod
    def IS_CHANGED(cls, **_):
        """Never equal to itself: every queued run writes a new file (and the video file may have changed)."""
        return float("nan")

    @interruptible
    def dub(self, model, video, face_model, filename_prefix, format, crf, invert, audio=None, video_path="",
            video_in=None, occluder=None, habit=None, **values):
        from stabledub_core.pipeline.modular import check_habit, dub_file

        if habit is not None:
            habit = check_habit(model.model, habit)

        waveform, rate = convert.audio_in(audio) if audio is not None else (None, 0)
        if occluder is not None:
            occluder = convert.mask_in(occluder, "occluder")
        source = video_file(video, video_path, video_in)
        try:
            path, filename, subfolder = comfy_env.output_file(filename_prefix, format)
            with comfy_env.model_on_device(model) as device:
                options = dub_options(device, model.dtype, bool(invert),
                                      face_model=comfy_env.face_model_path(face_model), crf=crf, **values)
                dub_file(source, path, model.model, options, waveform, rate, occluder,
                         comfy_env.Progress(1, stages=("track", "sample")), comfy_env.should_stop, habit)
        finally:
            if os.path.basename(source).startswith(TEMPORARY_VIDEO):  # an in-memory VIDEO's temporary copy
                os.unlink(source)
        return {"ui": comfy_env.video_ui(filename, subfolder), "result": (path,)}


NODES = {
    "StableDubSample": (StableDubSample, "StableDub Sample"),
    "StableDubDub": (StableDubDub, "StableDub Dub (all in one)"),
    "StableDubDubVideoFile": (StableDubDubVideoFile, "StableDub Dub Video File (long videos)"),
}
