"""Self-attention in place of a Mamba mixer: the paper's "Mamba -> attention" ablation (``UNetConfig.mixer``).

:class:`SelfAttentionMixer` takes and returns token sequences ``(N, L, C)`` as :class:`models.mamba.Mamba` does, so
the U-Net's transformers swap one for the other and nothing else changes (the attribute keeps the name ``mamba``).
It is diffusers' ``Attention`` (SD's self-attention: no biases on q/k/v, scaled dot-product), with sinusoidal
positions added to its input when the sequence order carries meaning that attention alone would not see (the
temporal layers; the spatial layers, as in SD, get their positions from the U-Net's convolutions).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from stabledub_core.errors import ModelConfigError


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """``(length, dim)`` sine/cosine position codes (Vaswani et al.), ``dim`` even."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim, device=device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq)
    return codes.to(dtype)


class SelfAttentionMixer(nn.Module):
    """Multi-head self-attention over a sequence, a drop-in for the Mamba mixer.

    Args:
        d_model: token width C.
        heads: attention heads (``dim_head = d_model // heads``).
        positional: add sinusoidal position codes to the input.
    """

    def __init__(self, d_model: int, heads: int, positional: bool = False):
        super().__init__()
        if d_model % heads or d_model % 2:
            raise ModelConfigError(f"width {d_model} must be even and divisible by {heads} attention heads: change "
                                   "the U-Net config")
        self.positional = positional
        self.attn = Attention(query_dim=d_model, heads=heads, dim_head=d_model // heads, bias=False, out_bias=True)

    @property
    def out_proj(self) -> nn.Linear:
        """The output projection (zero-initialised by the temporal layer, as Mamba's ``out_proj``)."""
        return self.attn.to_out[0]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, L, C) -> (N, L, C)."""
        if self.positional:
            _, length, c = hidden_states.shape
            hidden_states = hidden_states + sinusoidal_positions(length, c, hidden_states.device,
                                                                 hidden_states.dtype)
        return self.attn(hidden_states)
