"""The transformer part of the StableDub U-Net: spatial Mamba, audio cross-attention, feed-forward, temporal Mamba.

Names mirror diffusers' ``Transformer2DModel`` / ``BasicTransformerBlock`` (SD 1.5, conv 1x1 ``proj_in``) for every
layer kept from SD 1.5, so SD weights copy by name:

    attentions.j.norm                         GroupNorm (as SD)
    attentions.j.proj_in / proj_out           Conv2d 1x1 (as SD)
    attentions.j.transformer_blocks.0.norm1   LayerNorm, now the pre-norm of the spatial Mamba (as SD's norm1)
    attentions.j.transformer_blocks.0.mamba   bidirectional spatial Mamba (new; replaces attn1)
    attentions.j.transformer_blocks.0.norm2 / attn2 / norm3 / ff    as SD (attn2 now attends to audio tokens)
    attentions.j.temporal.norm / .mamba       temporal Mamba (new; output projection zero-initialised)

Hidden states inside a transformer are tokens ``(B * F, h * w, C)``: frames are folded into the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from stabledub_core.errors import ModelConfigError
from stabledub_core.models.attention_mixer import SelfAttentionMixer
from stabledub_core.models.mamba import Mamba
from stabledub_core.models.recompute import recompute_in_blocks

FEED_FORWARD_TOKENS = 4096  # tokens per block when the feed-forward is recomputed in training


@dataclass(frozen=True)
class MambaSettings:
    """Hyper-parameters shared by all Mamba mixers of the U-Net.

    Args:
        d_state: SSM state size.
        d_conv: depthwise convolution kernel size.
        expand: inner width factor.
        bidirectional: scan both directions (Vim v2).
        attention_heads: when > 0, every mixer is a :class:`SelfAttentionMixer` with this many heads instead (the
            "Mamba -> attention" ablation, ``UNetConfig.mixer = "attention"``).
    """

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bidirectional: bool = True
    attention_heads: int = 0

    def build(self, dim: int, ordered: bool = False) -> Mamba | SelfAttentionMixer:
        """The mixer of width ``dim``; ``ordered``: its sequence order matters beyond what convolutions tell (the
        temporal layers), so an attention mixer gets position codes."""
        if self.attention_heads:
            return SelfAttentionMixer(dim, self.attention_heads, positional=ordered)
        return Mamba(dim, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                     bidirectional=self.bidirectional)


class SpatialMambaTransformerBlock(nn.Module):
    """SD's ``BasicTransformerBlock`` with the self-attention replaced by a spatial Mamba.

    Each sub-layer is pre-norm with a residual: spatial Mamba over the h*w tokens of one frame, audio
    cross-attention (each frame's tokens attend to that frame's audio tokens), GEGLU feed-forward.

    Args:
        dim: token width C.
        num_heads: heads of the cross-attention (``dim_head = dim // num_heads``).
        cross_attention_dim: width of the audio tokens.
        mamba: Mamba hyper-parameters.
        transpose_scan: scan the frame column-major (the (h, w) grid transposed before flattening) instead of
            row-major; the U-Net alternates it between consecutive layers.
        recompute_feed_forward: in training, keep only the feed-forward's input and recompute its pre-norm and GEGLU
            in the backward pass, :data:`FEED_FORWARD_TOKENS` tokens at a time. Its (tokens, 4 C)-wide activations
            are the largest of the block (8x the block's input, 60 % of its training memory at 16 x 64x64); this
            costs one more forward of the feed-forward.
    """

    def __init__(self, dim: int, num_heads: int, cross_attention_dim: int, mamba: MambaSettings,
                 transpose_scan: bool = False, recompute_feed_forward: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ModelConfigError(f"width {dim} is not divisible by {num_heads} attention heads: change the U-Net "
                                   "config")
        self.transpose_scan = transpose_scan
        self.recompute_feed_forward = recompute_feed_forward
        self.norm1 = nn.LayerNorm(dim)
        self.mamba = mamba.build(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=num_heads,
                               dim_head=dim // num_heads, bias=False, out_bias=True)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def _spatial_mix(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Run the Mamba over a frame in row-major or column-major order; tokens (N, h*w, C) row-major."""
        if not self.transpose_scan:
            return self.mamba(tokens)
        n, _, c = tokens.shape
        cols = tokens.reshape(n, height, width, c).transpose(1, 2).reshape(n, height * width, c)  # column-major
        mixed = self.mamba(cols)
        return mixed.reshape(n, width, height, c).transpose(1, 2).reshape(n, height * width, c)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, height: int,
                width: int) -> torch.Tensor:
        """Args:
            hidden_states: (B*F, h*w, C) row-major tokens of each frame.
            encoder_hidden_states: (B*F, T, C_cross) audio tokens of each frame.
            height, width: the latent grid h, w.

        Returns:
            (B*F, h*w, C).
        """
        hidden_states = hidden_states + self._spatial_mix(self.norm1(hidden_states), height, width)
        hidden_states = hidden_states + self.attn2(self.norm2(hidden_states), encoder_hidden_states)
        return hidden_states + self._feed_forward(hidden_states)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Pre-norm GEGLU feed-forward of every token: (B*F, h*w, C) -> (B*F, h*w, C)."""
        def feed_forward(tokens: torch.Tensor) -> torch.Tensor:
            return self.ff(self.norm3(tokens))

        if not self.recompute_feed_forward:
            return feed_forward(hidden_states)
        tokens = hidden_states.reshape(-1, 1, hidden_states.shape[-1])  # (B*F*h*w, 1, C): rows are tokens
        params = [*self.norm3.parameters(), *self.ff.parameters()]
        out = recompute_in_blocks(feed_forward, tokens, FEED_FORWARD_TOKENS, params)
        return out.reshape(hidden_states.shape)


class TemporalMamba(nn.Module):
    """Pre-norm temporal Mamba with a residual: the sequence is the F frames at each spatial position.

    The mixer's ``out_proj`` is zero-initialised, so the layer starts as the identity.

    Args:
        dim: token width C.
        mamba: Mamba hyper-parameters.
    """

    def __init__(self, dim: int, mamba: MambaSettings):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = mamba.build(dim, ordered=True)
        nn.init.zeros_(self.mamba.out_proj.weight)
        if self.mamba.out_proj.bias is not None:
            nn.init.zeros_(self.mamba.out_proj.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Args:
            hidden_states: (B*F, L, C) tokens, frames folded into the batch (frame index fastest within a clip).
            num_frames: F.

        Returns:
            (B*F, L, C).
        """
        bf, length, c = hidden_states.shape
        batch = bf // num_frames
        seq = hidden_states.reshape(batch, num_frames, length, c).transpose(1, 2)  # (B, L, F, C)
        seq = seq.reshape(batch * length, num_frames, c)  # (B*L, F, C)
        mixed = self.mamba(self.norm(seq)).reshape(batch, length, num_frames, c).transpose(1, 2)  # (B, F, L, C)
        return hidden_states + mixed.reshape(bf, length, c)


class MambaTransformer2D(nn.Module):
    """SD 1.5's ``Transformer2DModel`` (one block, conv 1x1 projections) with Mamba in place of self-attention,
    followed (inside the projections) by a temporal Mamba.

    Args:
        channels: feature-map width C.
        num_heads: cross-attention heads.
        cross_attention_dim: width of the audio tokens.
        norm_num_groups: groups of the input GroupNorm.
        mamba: Mamba hyper-parameters.
        transpose_scan: column-major spatial scan (see :class:`SpatialMambaTransformerBlock`).
        temporal: with the temporal Mamba (False: the "w/o temporal" ablation, ``UNetConfig.temporal``).
    """

    def __init__(self, channels: int, num_heads: int, cross_attention_dim: int, norm_num_groups: int,
                 mamba: MambaSettings, transpose_scan: bool = False, temporal: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            SpatialMambaTransformerBlock(channels, num_heads, cross_attention_dim, mamba, transpose_scan)
        ])
        self.temporal = TemporalMamba(channels, mamba) if temporal else None
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                num_frames: int) -> torch.Tensor:
        """Args:
            hidden_states: (B*F, C, h, w) feature maps.
            encoder_hidden_states: (B*F, T, C_cross) audio tokens of each frame.
            num_frames: F.

        Returns:
            (B*F, C, h, w).
        """
        bf, c, height, width = hidden_states.shape
        residual = hidden_states
        tokens = self.proj_in(self.norm(hidden_states))
        tokens = tokens.permute(0, 2, 3, 1).reshape(bf, height * width, c)  # (B*F, h*w, C) row-major
        for block in self.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states, height, width)
        if self.temporal is not None:
            tokens = self.temporal(tokens, num_frames)
        maps = tokens.reshape(bf, height, width, c).permute(0, 3, 1, 2)  # (B*F, C, h, w)
        return self.proj_out(maps.contiguous()) + residual
