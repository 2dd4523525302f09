"""Loader and file nodes: StableDub checkpoints, videos in and out, the length policy.

The core is imported inside the node methods, not at the top: it pulls torch, diffusers, OpenCV and PyAV,
and ComfyUI imports every node pack at start-up (``tests/nodes/test_nodes.py`` checks that importing the
pack loads none of them).
"""

from __future__ import annotations

import os

from . import comfy_env, convert
from .base import FPS, IMAGES_IN, MODEL, ModelHandle, interruptible
from .widgets import widget, widgets

IN_CHECKPOINT = "(in checkpoint)"
NOT_NEEDED = "(not needed)"


class StableDubLoadModel:
    """Load a StableDub checkpoint (.safetensors from models/stabledub)."""

    CATEGORY = "StableDub/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a StableDub checkpoint from models/stabledub. Checkpoints of the full (sd15) preset keep "
                   "SD 1.5's VAE and the wav2vec2 backbone outside: pick them from models/vae and models/wav2vec2.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import RuntimeOptions

        return {"required": {
            "ckpt_name": (comfy_env.checkpoints(), {"tooltip": "checkpoint in models/stabledub (else the demo model "
                                                               "bundled with the pack, when present)"}),
            "dtype": widget(RuntimeOptions, "dtype"),
            "vae_name": ([IN_CHECKPOINT] + comfy_env.model_files("vae"),
                         {"tooltip": "SD 1.5 VAE, for checkpoints that do not store it"}),
            "wav2vec2": ([NOT_NEEDED] + comfy_env.model_subfolders("wav2vec2"),
                         {"tooltip": "wav2vec2 folder in models/wav2vec2, for checkpoints with the wav2vec2 "
                                     "audio encoder"}),
        }}

    @interruptible
    def load(self, ckpt_name, dtype, vae_name=IN_CHECKPOINT, wav2vec2=NOT_NEEDED):
        import comfy.model_management as mm  # ComfyUI's: imported when a node runs, never at import time

        from stabledub_core.errors import CheckpointError
        from stabledub_core.models.checkpoint import load_checkpoint
        from stabledub_core.pipeline.chunk_model import resolve_dtype, torch_dtype

        name = resolve_dtype(dtype, mm.get_torch_device())
        try:
            model = load_checkpoint(
                comfy_env.checkpoint_path(ckpt_name), device=mm.unet_offload_device(), dtype=torch_dtype(name),
                vae_path=None if vae_name == IN_CHECKPOINT else comfy_env.model_path("vae", vae_name),
                wav2vec2_path=None if wav2vec2 == NOT_NEEDED else comfy_env.model_subfolder("wav2vec2", wav2vec2))
        except CheckpointError as exc:  # what is wrong with the file, then what to do in the node
            exc.args = (f"ckpt_name {ckpt_name!r}: {exc}; pick another ckpt_name, or replace the file in "
                        "models/stabledub with a StableDub .safetensors checkpoint",)
            raise
        return (ModelHandle(model, name, ckpt_name),)


class StableDubLoadVideo:
    """Decode a video of ComfyUI's input folder into frames, its audio track and its frame rate."""

    CATEGORY = "StableDub/io"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "load"
    DESCRIPTION = "Loads a video from ComfyUI's input folder. audio is None when the video has no audio track."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (comfy_env.input_videos(), {"tooltip": "video file in ComfyUI's input folder (upload one with "
                                                            "the button)", "video_upload": True}),
            "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                       "tooltip": "load at most this many frames (0: all); the audio is cut to "
                                                  "match"}),
        }}

    @classmethod
    def IS_CHANGED(cls, video, frame_load_cap=0):
        path = comfy_env.input_path(video)
        return f"{os.path.getmtime(path)}:{frame_load_cap}" if os.path.isfile(path) else ""

    @interruptible
    def load(self, video, frame_load_cap=0):
        from stabledub_core.media.clip import read_clip

        clip = read_clip(comfy_env.input_path(video), frame_load_cap, comfy_env.should_stop)
        return (convert.image_out(clip.frames), convert.audio_out(clip.waveform, clip.sample_rate), float(clip.fps))


class StableDubSaveVideo:
    """Encode frames (and audio) as an H.264 video in ComfyUI's output folder, atomically, numbered as ComfyUI does."""

    CATEGORY = "StableDub/io"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = ("Writes <prefix>_00001_.mp4, _00002_... (never over an earlier file) and shows it on the node. "
                   "Every frame is written; the audio is cut or padded with silence to the frames' duration.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.modular import AUDIO_CODECS
        from stabledub_core.pipeline.options import OutputOptions

        return {"required": {
            "images": IMAGES_IN,
            "fps": FPS,
            "filename_prefix": ("STRING", {"default": "StableDub",
                                           "tooltip": "file name start in the output folder; may hold a "
                                                      "sub-folder (clips/dub)"}),
            "format": (["mp4", "mov", "mkv"], {"tooltip": "container of the H.264 video"}),
            "crf": widget(OutputOptions, "crf"),
            "audio_codec": (list(AUDIO_CODECS), {"default": "aac",
                                                 "tooltip": "aac: plays in browsers and players; lossless: 16-bit "
                                                            "(ALAC in mp4, PCM in mov/mkv), for further editing"}),
        }, "optional": {"audio": ("AUDIO", {"tooltip": "sound track to mux (e.g. the Dub node's audio)"})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        """Never equal to itself: every queued run writes a new file (the nodes before it stay cached)."""
        return float("nan")

    @interruptible
    def save(self, images, fps, filename_prefix, format, crf, audio_codec="aac", audio=None):
        from stabledub_core.pipeline.modular import save_clip

        convert.image_in(images)
        path, filename, subfolder = comfy_env.output_file(filename_prefix, format, images.shape[2], images.shape[1])
        waveform, rate = convert.audio_in(audio) if audio is not None else (None, 0)
        path = save_clip(path, images, fps, waveform, rate, crf=crf, audio_codec=audio_codec,
                         should_stop=comfy_env.should_stop)
        return {"ui": comfy_env.video_ui(filename, subfolder), "result": (str(path),)}


class StableDubFitLength:
    """Make frames and speech last equally long with a length policy (loop, ping-pong, freeze, trim, pad)."""

    CATEGORY = "StableDub/io"
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("images", "audio")
    FUNCTION = "fit"

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import LengthOptions

        return {"required": {
            "images": IMAGES_IN,
            "audio": ("AUDIO", {"tooltip": "the speech to fit the frames to"}),
            "fps": FPS,
            **widgets(LengthOptions, "length_policy"),
        }}

    def fit(self, images, audio, fps, length_policy):
        import torch

        from stabledub_core.media.length_policy import fit_length

        convert.image_in(images)
        waveform, rate = convert.audio_in(audio)
        fitted = fit_length(len(images), fps, waveform, rate, length_policy)
        return images[torch.from_numpy(fitted.index)], convert.audio_out(fitted.waveform, rate)


NODES = {
    "StableDubLoadModel": (StableDubLoadModel, "StableDub Load Model"),
    "StableDubLoadVideo": (StableDubLoadVideo, "StableDub Load Video"),
    "StableDubSaveVideo": (StableDubSaveVideo, "StableDub Save Video"),
    "StableDubFitLength": (StableDubFitLength, "StableDub Fit Length"),
}
