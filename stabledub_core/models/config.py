"""Configurations and presets of the StableDub model.

A preset names a full :class:`StableDubConfig`; checkpoints store the config as JSON in their safetensors metadata.
Each sub-config belongs to one module: ``UNetConfig`` to ``models/unet.py``, ``HabitConfig`` to
``models/habit.py``, ``AudioConfig`` to ``audio/encoders.py``, ``VAEConfig`` to ``models/vae.py``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from stabledub_core.errors import OptionError


MIXERS = ("mamba", "attention")  # UNetConfig.mixer
PREDICTION_TYPES = ("epsilon", "v_prediction")  # StableDubConfig.prediction_type (pipeline/prediction.py)


@dataclass
class UNetConfig:
    """The denoising U-Net (SD 1.5 layout, text removed, Mamba in place of self-attention)."""

    in_channels: int = 13  # noisy latent (4) | masked-frame latent (4) | mask (1) | appearance latent (4)
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # as in SD 1.5's config: the number of heads
    cross_attention_dim: int = 768  # width of the habit-modulated audio tokens
    norm_num_groups: int = 32
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_bidirectional: bool = True  # Vim v2 backward branch in every spatial and temporal Mamba
    mixer: str = "mamba"  # "mamba", or "attention": self-attention in every mixer (the paper's ablation)
    temporal: bool = True  # temporal layers (False: the "w/o temporal" ablation)
    gradient_checkpointing: bool = False  # recompute resnets and transformers in the backward pass


@dataclass
class HabitConfig:
    """Lip-habit modulation (eq. 3): ViT lip encoder, conv + pool heads, AdaLN, zero Conv1d."""

    lip_size: int = 112  # lip crops are lip_size x lip_size RGB
    vit_hidden_size: int = 384
    vit_layers: int = 6
    vit_heads: int = 6
    vit_patch_size: int = 16
    hidden_size: int = 768  # C: the width of a and v
    out_size: int = 768  # must equal UNetConfig.cross_attention_dim
    habit_conv_kernel: int = 3  # Conv1d over the K per-crop ViT features, then mean-pool over K -> v
    audio_conv_kernel: int = 3  # Conv1d over the T tokens of one frame's audio context (stride 1, same padding)
    audio_pool: int = 2  # average-pool stride over T: T' = T // audio_pool tokens per frame
    lambda_init: float = 1.0  # initial value of every entry of the learnable vector lambda (AdaLN out + lambda * a)
    out_conv_kernel: int = 1  # the zero-initialised Conv1d producing the cross-attention tokens
    drop_prob: float = 0.1  # training: each of audio / habit replaced by the zero embedding with this probability
    enabled: bool = True  # False: the habit vector is always the zero embedding (the "w/o habit" ablation)


@dataclass
class AudioConfig:
    """Audio encoder (16 kHz mono input) and the per-frame audio context cut from its features."""

    kind: str = "wav2vec2"  # "wav2vec2" (local transformers folder) or "mel" (built in, tiny preset)
    feature_size: int = 768  # width of the per-frame audio features fed to the habit module
    num_hidden_layers: int = 12  # wav2vec2 hidden layers mixed by a learned weighted sum
    tokens_per_frame: int = 10  # audio tokens per video frame
    context_seconds: float = 0.2  # span of audio around each frame's timestamp
    mel_n_fft: int = 400  # mel encoder: 25 ms STFT window at 16 kHz
    mel_hop_length: int = 160  # mel encoder: 10 ms hop = 100 features per second


@dataclass
class VAEConfig:
    """diffusers AutoencoderKL configuration (SD's by default)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    sample_size: int = 512
    in_checkpoint: bool = False  # True: the VAE weights are stored in StableDub checkpoints (trained/built-in VAE);
    # False: they come from their own file (SD 1.5's VAE) and are left out of StableDub checkpoints


@dataclass
class StableDubConfig:
    preset: str = "sd15"
    resolution: int = 512  # crop size in pixels
    crop_box_scale: float = 1.8  # the crops' framing: box side / longer side of the feathered Mu (MaskConfig)
    num_frames: int = 16  # frames per window
    prediction_type: str = "epsilon"  # what the U-Net outputs: "epsilon" (SD 1.5) or "v_prediction" (velocity)
    unet: UNetConfig = field(default_factory=UNetConfig)
    habit: HabitConfig = field(default_factory=HabitConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StableDubConfig":
        raw = json.loads(text)
        subs = {"unet": UNetConfig, "habit": HabitConfig, "audio": AudioConfig, "vae": VAEConfig}
        kwargs = {}
        for key, value in raw.items():
            if key in subs:
                value = subs[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[key] = value
        return cls(**kwargs)


def sd15() -> StableDubConfig:
    """The paper's size: SD 1.5 U-Net widths, wav2vec2-base audio features."""
    return StableDubConfig()


def tiny() -> StableDubConfig:
    """Same code path with small widths: tests, the demo and CPU development."""
    return StableDubConfig(
        preset="tiny",
        resolution=128,
        prediction_type="v_prediction",  # trained from scratch: v weighs the content error at high noise in full
        unet=UNetConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=4,
                        cross_attention_dim=64, norm_num_groups=16, mamba_d_state=8),
        habit=HabitConfig(lip_size=32, vit_hidden_size=32, vit_layers=2, vit_heads=2, vit_patch_size=8,
                          hidden_size=64, out_size=64),
        audio=AudioConfig(kind="mel", feature_size=80, num_hidden_layers=0),
        vae=VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=16,
                      sample_size=128, in_checkpoint=True),
    )


PRESETS = {"sd15": sd15, "tiny": tiny}


def get_preset(name: str) -> StableDubConfig:
    """Return a fresh config for a preset name."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise OptionError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def config_with(config: StableDubConfig, settings: list[str] | tuple[str, ...]) -> StableDubConfig:
    """A copy of ``config`` with ``section.field=value`` settings applied (``unet.mixer=attention``,
    ``unet.temporal=false``, ``habit.enabled=false``, ``resolution=96``); values are parsed as the field's type
    (``true``/``false`` for booleans, comma-separated numbers for tuples).
    """
    config = StableDubConfig.from_json(config.to_json())  # a deep copy
    for setting in settings:
        key, sep, text = setting.partition("=")
        path = key.strip().split(".")
        if not sep or not 1 <= len(path) <= 2:
            raise OptionError(f"--set {setting!r}: write section.field=value, e.g. unet.mixer=attention")
        owner = config if len(path) == 1 else getattr(config, path[0], None)
        fields = {f.name: f for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        if path[-1] not in fields or dataclasses.is_dataclass(getattr(owner, path[-1])):
            raise OptionError(f"--set {setting!r}: {key!r} is not a config field; see the config in "
                              "stabledub_core/models/config.py (sections: unet, habit, audio, vae)")
        setattr(owner, path[-1], _parse_value(getattr(owner, path[-1]), text.strip(), setting))
    return config


def _parse_value(current, text: str, setting: str):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(type(current[0])(part) for part in text.split(",")) if current else ()
        return type(current)(text)
    except ValueError:
        raise OptionError(f"--set {setting!r}: {text!r} is not a {type(current).__name__}") from None
