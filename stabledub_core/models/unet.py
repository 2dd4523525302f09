"""The StableDub denoising U-Net: SD 1.5's layout with text removed, Mamba in place of self-attention.

Layout (``sd15`` preset): ``conv_in`` (13 channels) -> CrossAttnDownBlock x3 + DownBlock -> mid block with a
transformer -> UpBlock + CrossAttnUpBlock x3 -> ``conv_norm_out`` / ``conv_out``. Every transformer is spatial Mamba
-> audio cross-attention -> GEGLU feed-forward, followed by a temporal Mamba (see ``blocks.py``). Parameter names
mirror diffusers' ``UNet2DConditionModel`` for everything kept from SD 1.5 so that SD weights copy by name.

Frames are folded into the batch for every 2D operation: ``(B, F, C, h, w) -> (B * F, C, h, w)``.
"""

from __future__ import annotations

import itertools

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from stabledub_core.errors import ModelConfigError, UNetInputError
from stabledub_core.models.mamba_transformer_2d import MambaSettings, MambaTransformer2D
from stabledub_core.models.unet_blocks import DownBlock, MidBlock, UpBlock, _Stage
from stabledub_core.models.config import MIXERS, UNetConfig


def build_unet_input(noisy: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor,
                     appearance: torch.Tensor) -> torch.Tensor:
    """Stack the per-frame U-Net input: noisy latent || masked-frame latent || mask || appearance latent.

    Args:
        noisy: (B, F, 4, h, w) noisy latents z_t.
        masked: (B, F, 4, h, w) latents of the frames with the mouth region masked.
        mask: (B, F, 1, h, w) latent-size mask (1 = inpaint).
        appearance: (B, 4, h, w) latent of the appearance frame, shared by all frames, or (B, F, 4, h, w).

    Returns:
        (B, F, 13, h, w).
    """
    if noisy.dim() != 5:
        raise UNetInputError(f"noisy latents must be (B, F, C, h, w), got {tuple(noisy.shape)}")
    batch, frames, _, height, width = noisy.shape
    if appearance.dim() == 4:
        appearance = appearance[:, None].expand(-1, frames, -1, -1, -1)
    parts = {"noisy": noisy, "masked": masked, "mask": mask, "appearance": appearance}
    for name, part in parts.items():
        if part.dim() != 5 or part.shape[:2] != (batch, frames) or part.shape[-2:] != (height, width):
            raise UNetInputError(f"{name} has shape {tuple(part.shape)}; expected (B={batch}, F={frames}, C, "
                                 f"{height}, {width}) (appearance may also be (B, C, h, w))")
    if mask.shape[2] != 1:
        raise UNetInputError(f"mask must have 1 channel, got {mask.shape[2]}")
    return torch.cat([noisy, masked, mask.to(noisy.dtype), appearance], dim=2)


class StableDubUNet(nn.Module):
    """Denoising U-Net over windows of frames, conditioned on per-frame audio tokens.

    Args:
        config: the U-Net configuration (``get_preset(...).unet``).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        channels = tuple(config.block_out_channels)
        levels = len(channels)
        temb_channels = channels[0] * 4
        groups = config.norm_num_groups
        if config.mixer not in MIXERS:
            raise ModelConfigError(f"unknown U-Net mixer {config.mixer!r}; choose one of {', '.join(MIXERS)}")
        mamba = MambaSettings(d_state=config.mamba_d_state, d_conv=config.mamba_d_conv, expand=config.mamba_expand,
                              bidirectional=config.mamba_bidirectional,
                              attention_heads=config.attention_head_dim if config.mixer == "attention" else 0)
        layer_index = itertools.count()  # consecutive transformers alternate row-/column-major spatial scans

        def make_transformer(width: int) -> MambaTransformer2D:
            return MambaTransformer2D(width, config.attention_head_dim, config.cross_attention_dim, groups, mamba,
                                      transpose_scan=next(layer_index) % 2 == 1, temporal=config.temporal)

        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)

        # SD 1.5: transformers at every level but the deepest, where the mid block has one.
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(channels):
            last = i == levels - 1
            self.down_blocks.append(DownBlock(channels[max(i - 1, 0)], width, temb_channels, config.layers_per_block,
                                              groups, add_downsample=not last,
                                              make_transformer=None if last else make_transformer))
        self.mid_block = MidBlock(channels[-1], temb_channels, groups, make_transformer)
        self.up_blocks = nn.ModuleList()
        reversed_channels = channels[::-1]
        for i, width in enumerate(reversed_channels):
            first, last = i == 0, i == levels - 1
            self.up_blocks.append(UpBlock(reversed_channels[min(i + 1, levels - 1)], reversed_channels[max(i - 1, 0)],
                                          width, temb_channels, config.layers_per_block + 1, groups,
                                          add_upsample=not last, make_transformer=None if first else make_transformer))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)
        if config.gradient_checkpointing:
            self.enable_gradient_checkpointing()

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every resnet and transformer in the backward pass instead of storing activations."""
        for module in self.modules():
            if isinstance(module, _Stage):
                module.gradient_checkpointing = enabled

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing(False)

    @property
    def downscale(self) -> int:
        """Latent sizes must be multiples of this (one factor 2 per downsampler)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        cfg = self.config
        if sample.dim() != 5 or sample.shape[2] != cfg.in_channels:
            raise UNetInputError(f"sample must be (B, F, {cfg.in_channels}, h, w) (see build_unet_input), "
                                 f"got {tuple(sample.shape)}")
        if sample.shape[-2] % self.downscale or sample.shape[-1] % self.downscale:
            raise UNetInputError(f"latent size {tuple(sample.shape[-2:])} must be a multiple of {self.downscale}: "
                                 f"use crops whose pixel size is a multiple of {8 * self.downscale}")
        expected = (sample.shape[0], sample.shape[1])
        if (encoder_hidden_states.dim() != 4 or encoder_hidden_states.shape[:2] != expected
                or encoder_hidden_states.shape[-1] != cfg.cross_attention_dim):
            raise UNetInputError(f"encoder_hidden_states must be (B={expected[0]}, F={expected[1]}, T, "
                                 f"{cfg.cross_attention_dim}), got {tuple(encoder_hidden_states.shape)}")

    def _time_embedding(self, timestep, batch: int, frames: int, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
        """(B,) or scalar timesteps -> (B*F, C_temb) embeddings, one per frame."""
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise UNetInputError(f"timestep must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        t = t.repeat_interleave(frames)  # (B*F,)
        return self.time_embedding(self.time_proj(t).to(dtype))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Predict the noise of every frame.

        Args:
            sample: (B, F, 13, h, w) U-Net input from :func:`build_unet_input`; h, w multiples of ``downscale``.
            timestep: (B,) tensor, or a scalar shared by the batch.
            encoder_hidden_states: (B, F, T, C_cross) audio tokens of each frame.

        Returns:
            (B, F, 4, h, w) predicted noise.
        """
        self._check_inputs(sample, encoder_hidden_states)
        batch, frames, channels, height, width = sample.shape
        x = sample.reshape(batch * frames, channels, height, width)  # (B*F, 13, h, w)
        context = encoder_hidden_states.reshape(batch * frames, *encoder_hidden_states.shape[2:])  # (B*F, T, Cc)
        temb = self._time_embedding(timestep, batch, frames, x.dtype, x.device)  # (B*F, C_temb)

        x = self.conv_in(x)
        skips = (x,)
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, frames)
            skips += block_skips
        x = self.mid_block(x, temb, context, frames)
        for block in self.up_blocks:
            count = len(block.resnets)
            x = block(x, skips[-count:], temb, context, frames)
            skips = skips[:-count]
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))  # (B*F, 4, h, w)
        return x.reshape(batch, frames, *x.shape[1:])
