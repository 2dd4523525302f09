"""The U-Net stages: down, mid and up blocks built from diffusers' ResnetBlock2D / Downsample2D / Upsample2D.

One class per role, with or without transformers: with ``make_transformer`` a block has diffusers'
``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D`` names (``resnets``, ``attentions``, ``downsamplers`` /
``upsamplers``), without it ``DownBlock2D`` / ``UpBlock2D``'s names. Feature maps are ``(B * F, C, h, w)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.utils.checkpoint import checkpoint

TransformerFactory = Callable[[int], nn.Module]  # channels -> MambaTransformer2D


class _Stage(nn.Module):
    """Common behaviour: optional gradient checkpointing of every resnet and transformer."""

    gradient_checkpointing = False

    def _run(self, module: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)


def _resnet(in_channels: int, out_channels: int, temb_channels: int, groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                         groups=groups, eps=1e-5)


class DownBlock(_Stage):
    """``num_layers`` resnets (each followed by a transformer when given), then an optional 2x downsampler.

    Args:
        in_channels: input width.
        out_channels: output width.
        temb_channels: width of the timestep embedding.
        num_layers: resnets in the block.
        norm_num_groups: GroupNorm groups.
        add_downsample: end with a stride-2 conv.
        make_transformer: builds the transformer after each resnet, or None for a plain DownBlock2D.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int,
                 norm_num_groups: int, add_downsample: bool, make_transformer: TransformerFactory | None = None):
        super().__init__()
        self.resnets = nn.ModuleList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, norm_num_groups)
            for i in range(num_layers)
        ])
        if make_transformer is not None:
            self.attentions = nn.ModuleList([make_transformer(out_channels) for _ in range(num_layers)])
        if add_downsample:
            self.downsamplers = nn.ModuleList([
                Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")
            ])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor,
                num_frames: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Args:
            hidden_states: (B*F, C_in, h, w).
            temb: (B*F, C_temb).
            encoder_hidden_states: (B*F, T, C_cross).
            num_frames: F.

        Returns:
            (B*F, C_out, h', w') and the skip tensors for the up path.
        """
        skips = ()
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            hidden_states = self._run(resnet, hidden_states, temb)
            if attentions is not None:
                hidden_states = self._run(attentions[i], hidden_states, encoder_hidden_states, num_frames)
            skips += (hidden_states,)
        if hasattr(self, "downsamplers"):
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class MidBlock(_Stage):
    """SD's ``UNetMidBlock2DCrossAttn``: resnet, transformer, resnet.

    Args:
        channels: width.
        temb_channels: width of the timestep embedding.
        norm_num_groups: GroupNorm groups.
        make_transformer: builds the transformer.
    """

    def __init__(self, channels: int, temb_channels: int, norm_num_groups: int, make_transformer: TransformerFactory):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(channels, channels, temb_channels, norm_num_groups) for _ in range(2)])
        self.attentions = nn.ModuleList([make_transformer(channels)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor,
                num_frames: int) -> torch.Tensor:
        """Args/Returns: as :meth:`DownBlock.forward`, without skips; (B*F, C, h, w) -> (B*F, C, h, w)."""
        hidden_states = self._run(self.resnets[0], hidden_states, temb)
        hidden_states = self._run(self.attentions[0], hidden_states, encoder_hidden_states, num_frames)
        return self._run(self.resnets[1], hidden_states, temb)


class UpBlock(_Stage):
    """``num_layers`` resnets over (input || skip) (each followed by a transformer when given), then an optional 2x
    upsampler.

    Args:
        in_channels: width of the block's deepest skip (the matching down block's input width).
        prev_output_channel: width of the incoming feature map.
        out_channels: output width.
        temb_channels: width of the timestep embedding.
        num_layers: resnets in the block (SD: layers_per_block + 1).
        norm_num_groups: GroupNorm groups.
        add_upsample: end with a nearest 2x upsampling and conv.
        make_transformer: builds the transformer after each resnet, or None for a plain UpBlock2D.
    """

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, norm_num_groups: int, add_upsample: bool,
                 make_transformer: TransformerFactory | None = None):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet(resnet_in + skip_channels, out_channels, temb_channels, norm_num_groups))
        self.resnets = nn.ModuleList(resnets)
        if make_transformer is not None:
            self.attentions = nn.ModuleList([make_transformer(out_channels) for _ in range(num_layers)])
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def forward(self, hidden_states: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                encoder_hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Args:
            hidden_states: (B*F, C_prev, h, w).
            skips: this block's skip tensors from the down path, consumed last-first.
            temb, encoder_hidden_states, num_frames: as :meth:`DownBlock.forward`.

        Returns:
            (B*F, C_out, h', w').
        """
        attentions = getattr(self, "attentions", None)
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = self._run(resnet, hidden_states, temb)
            if attentions is not None:
                hidden_states = self._run(attentions[i], hidden_states, encoder_hidden_states, num_frames)
        if hasattr(self, "upsamplers"):
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states
