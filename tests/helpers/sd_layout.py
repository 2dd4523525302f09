"""Test helpers: a small SD-layout diffusers U-Net/VAE written as a diffusers folder and as an original LDM file.

The diffusers -> LDM renaming here is written independently of ``models.weights`` (inverse direction), so the tests
check our LDM -> diffusers mapping and diffusers' own converter against it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
LDM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{LDM_RESNET[head]}.{tail}"


def diffusers_to_ldm_unet_key(key: str, layers: int, up_has_attention) -> str:
    for new, old in LDM_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * (layers + 1) + layers}.0.op.{rest.removeprefix('conv.')}"
        i = 1 + b * (layers + 1) + j
        return f"input_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return f"output_blocks.{b * (layers + 1) + layers}.{2 if up_has_attention[b] else 1}.{rest}"
        i = b * (layers + 1) + j
        return f"output_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    raise KeyError(key)


LDM_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm_vae_key(key: str, num_blocks: int) -> str:
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", key):
        part = f"block.{m[3]}" if m[3] is not None else "downsample"
        return f"encoder.down.{m[1]}.{part}.{m[4]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key):
        part = f"block.{m[3]}" if m[3] is not None else "upsample"
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.{part}.{m[4]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{LDM_VAE_ATTN[m[2]]}.{m[3]}"
    return key


def small_sd_unet(block_out_channels, layers_per_block, heads, cross_attention_dim, norm_num_groups, seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, attention_head_dim=heads, cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1))
    with torch.no_grad():  # make zero-initialised tensors non-trivial so copies are visible
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return unet


def write_sd_files(root: Path, unet, vae, text_names=("cond_stage_model.transformer.text_model.embeddings."
                                                        "token_embedding.weight",)):
    """Write ``root/diffusers`` (unet/ + vae/) and ``root/sd.safetensors`` (original LDM layout).

    Returns:
        (diffusers folder, single file path).
    """
    folder = root / "diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    (folder / "text_encoder").mkdir()
    layers = unet.config.layers_per_block
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    ldm = {"model.diffusion_model." + diffusers_to_ldm_unet_key(k, layers, up_attn): v.contiguous()
           for k, v in unet.state_dict().items()}
    n = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        ldm_key = diffusers_to_ldm_vae_key(k, n)
        if ".attn_1." in ldm_key and v.ndim == 2:
            v = v[:, :, None, None]  # LDM keeps 1x1 convolutions in the VAE attention
        ldm["first_stage_model." + ldm_key] = v.contiguous()
    for name in text_names:
        ldm[name] = torch.zeros(3, 4)
    ldm["alphas_cumprod"] = torch.linspace(1, 0, 10)
    single = root / "sd.safetensors"
    save_file(ldm, str(single))
    return folder, single
