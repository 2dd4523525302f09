"""Audio node: encode speech once into per-frame audio features, for StableDub Sample to reuse.

The STABLEDUB_AUDIO_FEATURES value is the core's ``modular.AudioFeatures`` (the per-frame audio context under a
length policy). The core is imported inside the node method (see ``nodes/sampling.py``).
"""

from __future__ import annotations

from . import comfy_env, convert
from .base import AUDIO_FEATURES, FPS, MODEL_IN, interruptible
from .widgets import widgets


class StableDubAudioEncode:
    """Encode speech once into the per-frame audio features of a clip's frames (the model's audio encoder)."""

    CATEGORY = "StableDub/sampling"
    RETURN_TYPES = (AUDIO_FEATURES, "AUDIO")
    RETURN_NAMES = ("audio_features", "audio")
    FUNCTION = "encode"
    DESCRIPTION = ("audio_features: for the audio_features input of StableDub Sample (the same crops as giving it the "
                   "speech; encode once, sample many times). audio: the speech with the length policy applied, to "
                   "save with the frames.")

    @classmethod
    def INPUT_TYPES(cls):
        from stabledub_core.pipeline.options import LengthOptions

        return {"required": {
            "model": MODEL_IN,
            "audio": ("AUDIO", {"tooltip": "the new speech, starting with the first frame"}),
            "images": ("IMAGE", {"tooltip": "the frames (or their face crops) the speech is for: sets the frame "
                                            "count"}),
            "fps": FPS,
            **widgets(LengthOptions, "length_policy"),
        }}

    @interruptible
    def encode(self, model, audio, images, fps, length_policy):
        from stabledub_core.pipeline.modular import encode_audio
        from stabledub_core.pipeline.options import DubOptions

        waveform, rate = convert.audio_in(audio)
        with comfy_env.model_on_device(model) as device:
            features = encode_audio(model.model, waveform, rate, len(images), fps, length_policy,
                                    DubOptions.from_values(device=device, dtype=model.dtype))
        return features, convert.audio_out(features.waveform, features.sample_rate)


NODES = {
    "StableDubAudioEncode": (StableDubAudioEncode, "StableDub Audio Encode"),
}
