"""Lip-habit modulated audio features (StableDub eq. 3, Fig. 3).

::

    lip crops (B, K, 3, S, S) -> ViT (per crop, CLS token) -> (B, K, H_vit) -> Conv1d over K -> mean over K -> v (B, C)
    audio     (B, F, T, C_a)  -> Conv1d over T (per frame) -> AvgPool(audio_pool) -> a (B, F, T', C)
    h = LayerNorm_no_affine(a) * MLP1(v) + MLP2(v) + lambda * a              (AdaLN + learnable lambda (C,))
    tokens = ZeroConv1d(h) over T' (per frame) -> (B, F, T', C_cross)        (keys/values of every audio cross-attn)

T' = T // audio_pool (e.g. 10 tokens per frame, pool 2 -> 5 tokens per frame).

Initialisation: MLP1 = (weight 0, bias 1) and MLP2 = 0, so AdaLN starts as a plain LayerNorm and the habit acts
once trained; ``lambda`` = ``HabitConfig.lambda_init`` (1.0) everywhere; the output Conv1d is all zeros, so at
initialisation every token equals the (zero) bias and the pretrained U-Net is not disturbed (paper, Sec. III-B).

Zero embedding (classifier-free guidance, eq. 7, and the p = 0.1 training dropout): a dropped audio condition
replaces that sample's audio *features* by zeros; a dropped habit replaces that sample's habit vector ``v`` by zeros.
Both are chosen per sample with boolean (B,) masks.
"""

from __future__ import annotations

import torch
from torch import nn

from stabledub_core.errors import HabitInputError, OptionError
from stabledub_core.models.config import HabitConfig


def vit_config_from(config: HabitConfig):
    """A transformers ``ViTConfig`` for the lip encoder, built in code from ``config`` (no hub access)."""
    from transformers import ViTConfig  # local: transformers' ViT takes seconds to import (see LipHabitModulation)

    return ViTConfig(hidden_size=config.vit_hidden_size, num_hidden_layers=config.vit_layers,
                     num_attention_heads=config.vit_heads, intermediate_size=4 * config.vit_hidden_size,
                     image_size=config.lip_size, patch_size=config.vit_patch_size, num_channels=3)


def random_drop_masks(batch_size: int, p: float, generator: torch.Generator | None = None,
                      device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-sample condition dropout for training (``HabitConfig.drop_prob``, 0.1 in the paper).

    Args:
        batch_size: B.
        p: probability of dropping each condition.
        generator: random generator (on CPU).
        device: device of the returned masks.

    Returns:
        (drop_audio, drop_habit): two (B,) bool masks.
    """
    if not 0.0 <= p <= 1.0:
        raise OptionError(f"drop probability must be in [0, 1], got {p}")
    draws = torch.rand(2, batch_size, generator=generator)
    drop = (draws < p).to(device)
    return drop[0], drop[1]


def _apply_drop(x: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """Zero the samples of ``x`` (B, ...) where ``drop`` (B,) is True."""
    if drop is None:
        return x
    drop = torch.as_tensor(drop, device=x.device, dtype=torch.bool)
    if drop.shape != x.shape[:1]:
        raise HabitInputError(f"drop mask must have shape ({x.shape[0]},), got {tuple(drop.shape)}")
    keep = (~drop).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return x * keep


class LipHabitModulation(nn.Module):
    """Turns audio features and a lip-habit segment into the audio cross-attention tokens.

    Args:
        config: the habit config (widths, kernels, pooling).
        audio_feature_size: C_a, the width of the audio encoder's features.
    """

    def __init__(self, config: HabitConfig, audio_feature_size: int):
        super().__init__()
        # local: transformers' ViT takes seconds to import; deferred until a model is built, so importing the package
        # (ComfyUI loads the node pack at startup, the CLI parses its arguments) stays fast
        from transformers import ViTModel

        self.config = config
        c = config.hidden_size
        self.lip_encoder = ViTModel(vit_config_from(config), add_pooling_layer=False)
        self.habit_conv = nn.Conv1d(config.vit_hidden_size, c, config.habit_conv_kernel,
                                    padding=config.habit_conv_kernel // 2)
        self.audio_conv = nn.Conv1d(audio_feature_size, c, config.audio_conv_kernel,
                                    padding=config.audio_conv_kernel // 2)
        self.audio_pool = nn.AvgPool1d(config.audio_pool, stride=config.audio_pool)
        self.norm = nn.LayerNorm(c, elementwise_affine=False)
        self.scale = nn.Linear(c, c)  # MLP1
        self.shift = nn.Linear(c, c)  # MLP2
        self.lam = nn.Parameter(torch.full((c,), float(config.lambda_init)))
        self.out_conv = nn.Conv1d(c, config.out_size, config.out_conv_kernel, padding=config.out_conv_kernel // 2)
        self.audio_feature_size = audio_feature_size
        self.reset_modulation()

    def reset_modulation(self) -> None:
        """The documented init: AdaLN = plain LayerNorm, zero output conv (the ViT keeps its own init)."""
        nn.init.zeros_(self.scale.weight)
        nn.init.ones_(self.scale.bias)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def tokens_per_frame(self, audio_tokens: int) -> int:
        """T' for T audio tokens per frame."""
        return audio_tokens // self.config.audio_pool

    def encode_habit(self, lip_crops: torch.Tensor) -> torch.Tensor:
        """Args:
            lip_crops: (B, K, 3, S, S) float in [0, 1], S = ``config.lip_size``.

        Returns:
            v: (B, C) habit vector.
        """
        size = self.config.lip_size
        if lip_crops.ndim != 5 or lip_crops.shape[2:] != (3, size, size):
            raise HabitInputError(f"lip crops must be (B, K, 3, {size}, {size}) floats in [0, 1], got shape "
                                  f"{tuple(lip_crops.shape)}")
        b, k = lip_crops.shape[:2]
        pixels = (lip_crops.flatten(0, 1) - 0.5) / 0.5  # (B*K, 3, S, S) in [-1, 1]
        pixels = pixels.to(self.habit_conv.weight.dtype)
        cls = self.lip_encoder(pixel_values=pixels).last_hidden_state[:, 0]  # (B*K, H_vit)
        feats = cls.view(b, k, -1).transpose(1, 2)  # (B, H_vit, K)
        return self.habit_conv(feats).mean(dim=2)  # (B, C)

    def forward(self, audio: torch.Tensor, v: torch.Tensor | None, drop_audio: torch.Tensor | None = None,
                drop_habit: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            audio: (B, F, T, C_a) per-frame audio context.
            v: (B, C) habit vectors from :meth:`encode_habit`, or None (= habit dropped for every sample).
            drop_audio: (B,) bool, True -> that sample's audio is the zero embedding.
            drop_habit: (B,) bool, True -> that sample's habit vector is the zero embedding.

        Returns:
            (B, F, T', C_cross) cross-attention tokens, T' = T // audio_pool.
        """
        if audio.ndim != 4 or audio.shape[-1] != self.audio_feature_size:
            raise HabitInputError(f"audio must be (B, F, T, {self.audio_feature_size}), got {tuple(audio.shape)}")
        b, f, t, _ = audio.shape
        if t < self.config.audio_pool:
            raise HabitInputError(f"{t} audio tokens per frame is fewer than audio_pool={self.config.audio_pool}")
        dtype = self.audio_conv.weight.dtype
        audio = _apply_drop(audio.to(dtype), drop_audio)
        if v is None or not self.config.enabled:
            v = audio.new_zeros(b, self.config.hidden_size)
        if v.shape != (b, self.config.hidden_size):
            raise HabitInputError(f"v must be ({b}, {self.config.hidden_size}), got {tuple(v.shape)}")
        v = _apply_drop(v.to(dtype), drop_habit)

        x = audio.flatten(0, 1).transpose(1, 2)  # (B*F, C_a, T)
        a = self.audio_pool(self.audio_conv(x)).transpose(1, 2)  # (B*F, T', C)
        a = a.unflatten(0, (b, f))  # (B, F, T', C)
        scale = self.scale(v)[:, None, None, :]  # (B, 1, 1, C)
        shift = self.shift(v)[:, None, None, :]
        h = self.norm(a) * scale + shift + self.lam * a  # (B, F, T', C)
        out = self.out_conv(h.flatten(0, 1).transpose(1, 2))  # (B*F, C_cross, T')
        return out.transpose(1, 2).unflatten(0, (b, f))  # (B, F, T', C_cross)
