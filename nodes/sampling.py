"""Sampling nodes: the diffusion sampler over face crops, and the all-in-one dubbing node."""

from __future__ import annotations

from stabledub_core.pipeline import frame_source

from . import comfy_env, convert
from .base import FPS, MODEL, SEED, interruptible
from .compositing import reference_strategies


def scheduler_names() -> list[str]:
    from stabledub_core.pipeline.schedulers import SchedulerKind

    return [k.value for k in SchedulerKind]


def sampler_inputs() -> dict:
    """Widgets shared by the sampling nodes."""
    return {
        "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
        "scheduler": (scheduler_names(),),
        "audio_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                  "tooltip": "audio guidance (la of eq. 7): lip sync strength"}),
        "habit_scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 20.0, "step": 0.05,
                                  "tooltip": "lip-habit guidance (lh of eq. 7): speaker style strength"}),
        "seed": SEED,
    }


SOURCE_AUDIO = ("AUDIO", {"tooltip": "optional: the speech the video was filmed with. When connected, sampling "
                                     "starts from the source frames inverted under it (DDIM inversion): keeps "
                                     "beards, blur and objects near the mouth; twice the sampling time"})


def source_speech(audio):
    """The optional source-speech input as the encoder's 16 kHz mono wave, or None."""
    if audio is None:
        return None
    from stabledub_core.media.audio import to_encoder_input

    return to_encoder_input(*convert.audio_in(audio, "source_audio"))


def dub_options(device: str, dtype: str, **fields):
    from stabledub_core.pipeline.dub import DubOptions

    return DubOptions(device=device, dtype=dtype, **fields)


class StableDubSample:
    """Generate the mouth region of face crops from speech (dual classifier-free guidance, 16-frame windows)."""

    CATEGORY = "StableDub/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("crops",)
    FUNCTION = "sample"
    DESCRIPTION = "Returns the generated crops (F, S, S); restore or upscale them, then StableDub Paste Back."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "crops": ("IMAGE", {"tooltip": "face crops at the model's resolution (StableDub Crop Faces)"}),
            "masks": ("MASK", {"tooltip": "inpainting masks in crop coordinates (Plan Masks / Occluder Exposure)"}),
            "appearance": ("IMAGE", {"tooltip": "appearance reference crops (StableDub Crop Faces)"}),
            "lip_crops": ("IMAGE", {"tooltip": "lip-habit segment (StableDub Lip Crops), any clip of the speaker"}),
            "audio": ("AUDIO", {"tooltip": "speech, starting with the first frame"}),
            "fps": FPS,
            **sampler_inputs(),
        }, "optional": {"source_audio": SOURCE_AUDIO}}

    @interruptible
    def sample(self, model, crops, masks, appearance, lip_crops, audio, fps, steps, scheduler, audio_scale,
               habit_scale, seed, source_audio=None):
        from stabledub_core.media.audio import to_encoder_input

        waveform, rate = convert.audio_in(audio)
        with comfy_env.model_on_device(model) as device:
            options = dub_options(device, model.dtype, steps=steps, scheduler=scheduler, audio_scale=audio_scale,
                                  habit_scale=habit_scale, seed=seed)
            out = frame_source.generate_crops(
                model.model, convert.image_uint8(crops, "crops"), convert.mask_in(masks),
                convert.image_uint8(appearance, "appearance"), to_encoder_input(waveform, rate), fps,
                convert.image_uint8(lip_crops, "lip_crops"), options, comfy_env.Progress(len(crops)),
                comfy_env.should_stop, source_speech(source_audio))
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
        from stabledub_core.masks.config import MaskConfig
        from stabledub_core.media.length_policy import LengthPolicy

        return {"required": {
            "model": (MODEL,),
            "images": ("IMAGE",),
            "audio": ("AUDIO", {"tooltip": "the new speech"}),
            "fps": FPS,
            "face_model": (comfy_env.model_files("mediapipe"),
                           {"tooltip": "face_landmarker.task in models/mediapipe"}),
            "length_policy": ([p.value for p in LengthPolicy], {"default": LengthPolicy.PING_PONG.value,
                                                                  "tooltip": "when speech and video lengths "
                                                                             "differ"}),
            **sampler_inputs(),
            "reference": (reference_strategies(),),
            "habit_frames": ("INT", {"default": 8, "min": 1, "max": 64}),
            "mask_margin": ("FLOAT", {"default": MaskConfig.coarse_dilation, "min": 0.0, "max": 1.0, "step": 0.01}),
        }, "optional": {"occluder": ("MASK", {"tooltip": "one mask for all frames or one per frame, at the frames' "
                                                    "size; white = keep (an occluder)"}),
                         "source_audio": SOURCE_AUDIO}}

    @interruptible
    def dub(self, model, images, audio, fps, face_model, length_policy, steps, scheduler, audio_scale, habit_scale,
            seed, reference, habit_frames, mask_margin, occluder=None, source_audio=None):
        waveform, rate = convert.audio_in(audio)
        source = frame_source.FrameSource(convert.image_in(images), fps)
        if occluder is not None:
            occluder = convert.mask_in(occluder, "occluder")  # (1, H, W) or (F, H, W)
        with comfy_env.model_on_device(model) as device:
            options = dub_options(device, model.dtype, length_policy=length_policy, steps=steps, scheduler=scheduler,
                                  audio_scale=audio_scale, habit_scale=habit_scale, seed=seed, reference=reference,
                                  habit_frames=habit_frames, mask_margin=mask_margin,
                                  face_model=comfy_env.model_path("mediapipe", face_model))
            result = frame_source.dub_clip(source, waveform, rate, model.model, options, occluder,
                                           comfy_env.Progress(len(images), stages=("track", "sample")),
                                           comfy_env.should_stop, source_speech(source_audio))
        return (convert.image_out(result.frames), convert.audio_out(result.waveform, result.sample_rate),
                float(result.fps))


NODES = {
    "StableDubSample": (StableDubSample, "StableDub Sample"),
    "StableDubDub": (StableDubDub, "StableDub Dub (all in one)"),
}
