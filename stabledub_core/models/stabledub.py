"""The composite StableDub model: U-Net, lip-habit modulation, audio encoder and VAE under one config."""

from __future__ import annotations

from torch import nn

from stabledub_core.errors import ModelConfigError
from stabledub_core.models.audio_encoders import build_audio_encoder
from stabledub_core.models.config import PREDICTION_TYPES, StableDubConfig
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.unet import StableDubUNet
from stabledub_core.models.vae import build_vae


class StableDub(nn.Module):
    """All networks of StableDub.

    Args:
        config: the full config (``get_preset("sd15" | "tiny")`` or from a checkpoint).
        unet: ``StableDubUNet`` (built from ``config.unet`` when omitted).
        habit: ``LipHabitModulation`` (built from ``config.habit`` when omitted).
        audio_encoder: ``Wav2Vec2AudioEncoder`` / ``MelAudioEncoder`` (built from ``config.audio`` when omitted; a
            wav2vec2 backbone built this way is random: give ``Wav2Vec2AudioEncoder.from_folder(...)`` instead).
        vae: diffusers ``AutoencoderKL`` (built from ``config.vae`` when omitted).

    Attributes:
        config, unet, habit, audio_encoder, vae.
    """

    def __init__(self, config: StableDubConfig, unet: nn.Module | None = None, habit: nn.Module | None = None,
                 audio_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        super().__init__()
        if config.habit.out_size != config.unet.cross_attention_dim:
            raise ModelConfigError(f"HabitConfig.out_size ({config.habit.out_size}) must equal "
                                   f"UNetConfig.cross_attention_dim ({config.unet.cross_attention_dim})")
        if config.prediction_type not in PREDICTION_TYPES:
            raise ModelConfigError(f"unknown prediction_type {config.prediction_type!r}; choose one of "
                                   f"{', '.join(PREDICTION_TYPES)}")
        self.config = config
        self.unet = unet if unet is not None else StableDubUNet(config.unet)
        self.audio_encoder = audio_encoder if audio_encoder is not None else build_audio_encoder(config.audio)
        self.habit = habit if habit is not None else LipHabitModulation(config.habit, config.audio.feature_size)
        self.vae = vae if vae is not None else build_vae(config.vae)

    @classmethod
    def from_config(cls, config: StableDubConfig, **parts: nn.Module) -> "StableDub":
        """Build every part from ``config`` (random weights), except the ``parts`` given by keyword."""
        return cls(config, **parts)

    def network_parameters(self):
        """(name, parameter) of the StableDub network proper: U-Net, habit modulation and the trainable part of the
        audio encoder (excluding its frozen external backbone) — what the paper's 987M counts."""
        external = tuple(f"audio_encoder.{p}" for p in getattr(self.audio_encoder, "external_prefixes", ()))
        for name, param in self.named_parameters():
            if name.startswith(("unet.", "habit.")) or (name.startswith("audio_encoder.")
                                                        and not name.startswith(external)):
                yield name, param
