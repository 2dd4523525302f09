"""Per-module parameter tables of a preset, built on the meta device (no memory, no weights).

The last line of :func:`render` is ``parameters: N``, the size of the StableDub network (the U-Net, the lip-habit
modulation and the trainable audio head); the frozen pretrained parts (wav2vec2 backbone, VAE) are listed above it
separately. The command is ``python -m stabledub_core summary sd15`` (or ``tiny``; ``stabledub_core/cli/summary.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub


def _count(module: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(exclude))


# U-Net parameters by layer kind (first matching name fragment wins)
UNET_KINDS = {".temporal.": "temporal Mamba", ".mamba.": "spatial Mamba", ".attn2.": "audio cross-attention",
              ".ff.": "feed-forward", "resnets.": "ResNet blocks", "samplers.": "up/down samplers"}


def _children(prefix: str, module: nn.Module):
    """Top-level children, with ModuleLists (down_blocks, up_blocks) expanded one level."""
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList):
            yield from ((f"{prefix}{name}.{i}", sub) for i, sub in enumerate(child))
        else:
            yield f"{prefix}{name}", child


def unet_kind_rows(unet: nn.Module) -> list[tuple[str, int]]:
    """U-Net parameter counts per layer kind (the rest: convs in/out, norms, projections, time embedding)."""
    counts = dict.fromkeys([*UNET_KINDS.values(), "other"], 0)
    for name, param in unet.named_parameters():
        kind = next((k for frag, k in UNET_KINDS.items() if frag in f".{name}"), "other")
        counts[kind] += param.numel()
    return [(f"  unet {kind}", n) for kind, n in counts.items()]


def summary_rows(model) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Rows of the table.

    Args:
        model: a ``StableDub``.

    Returns:
        (network rows, frozen/pretrained rows, network parameter count).
    """
    rows = [(name, _count(child)) for name, child in _children("unet.", model.unet)]
    rows += [(name, _count(child)) for name, child in _children("habit.", model.habit)]
    rows += [(f"habit.{name}", p.numel()) for name, p in model.habit.named_parameters(recurse=False)]
    external = tuple(getattr(model.audio_encoder, "external_prefixes", ()))
    rows.append(("audio_encoder (trainable head)", _count(model.audio_encoder, exclude=external)))
    frozen = [(f"audio_encoder.{p.rstrip('.')} (pretrained, frozen)", _count(getattr(model.audio_encoder,
                                                                                   p.rstrip("."))))
              for p in external]
    frozen.append((f"vae ({'in checkpoint' if model.config.vae.in_checkpoint else 'pretrained, own file'})",
                   _count(model.vae)))
    total = sum(p.numel() for _, p in model.network_parameters())
    return [r for r in rows if r[1]], frozen, total


def render(preset: str) -> str:
    """The table for ``preset`` as text."""
    with torch.device("meta"):
        model = StableDub.from_config(get_preset(preset))
    rows, frozen, total = summary_rows(model)
    width = max(len(name) for name, _ in rows + frozen) + 2
    lines = [f"StableDub preset {preset!r}", f"{'module':<{width}}{'parameters':>14}"]
    lines += [f"{name:<{width}}{count:>14,}" for name, count in rows]
    lines.append("U-Net by layer kind:")
    lines += [f"{name:<{width}}{count:>14,}" for name, count in unet_kind_rows(model.unet)]
    lines.append("not counted in N (pretrained or not part of the denoising network):")
    lines += [f"{name:<{width}}{count:>14,}" for name, count in frozen]
    lines.append(f"parameters: {total}")
    return "\n".join(lines)
