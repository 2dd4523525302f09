"""Conversions between ComfyUI values and the core's arrays (no computation beyond layout and dtype).

ComfyUI: IMAGE ``(F, H, W, 3)`` float32 in [0, 1] (torch, CPU); MASK ``(F, H, W)`` float32; AUDIO
``{"waveform": (B, C, S) float32, "sample_rate": int}``. Core: frames ``(F, H, W, 3)`` uint8 numpy (or float in
[0, 1], read frame by frame); masks ``(F, H, W)`` float32 numpy; waveforms ``(C, S)`` float32 numpy.
"""

from __future__ import annotations

import numpy as np

from stabledub_core.errors import OptionError


def image_in(image, what: str = "image"):
    """Check an IMAGE batch and return it as is (the core reads it frame by frame)."""
    if image is None or image.dim() != 4 or image.shape[-1] != 3:
        shape = None if image is None else tuple(image.shape)
        raise OptionError(f"{what} must be an IMAGE batch (F, H, W, 3) RGB, got {shape}: convert RGBA/grey images "
                          "to RGB first")
    return image


def image_uint8(image, what: str = "image") -> np.ndarray:
    """An IMAGE as ``(F, H, W, 3)`` uint8 numpy."""
    image = image_in(image, what)
    return (image.detach().float().clamp(0, 1) * 255).round().to(dtype=_torch().uint8).cpu().numpy()


def image_out(frames: np.ndarray):
    """``(F, H, W, 3)`` uint8 numpy as an IMAGE."""
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255)


def mask_in(mask, what: str = "mask") -> np.ndarray:
    """A MASK ``(F, H, W)`` or ``(H, W)`` as float32 numpy ``(F, H, W)``."""
    mask = mask.detach().float().cpu().numpy()
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise OptionError(f"{what} must be a MASK (F, H, W), got shape {mask.shape}")
    return mask


def mask_out(masks: np.ndarray):
    """``(F, H, W)`` float numpy as a MASK."""
    return _torch().from_numpy(np.ascontiguousarray(masks, np.float32))


def audio_in(audio, what: str = "audio") -> tuple[np.ndarray, int]:
    """An AUDIO as ``((C, S) float32, sample_rate)`` (the first item of the batch)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise OptionError(f"{what} is missing or not an AUDIO value (the video may have no audio track): connect "
                          "a speech AUDIO, e.g. from Load Audio")
    waveform = audio["waveform"]
    if waveform.dim() == 2:
        waveform = waveform[None]
    return waveform[0].detach().float().cpu().numpy(), int(audio["sample_rate"])


def audio_out(waveform: np.ndarray | None, sample_rate: int):
    """``(C, S)`` float numpy as an AUDIO (None stays None: no audio track)."""
    if waveform is None:
        return None
    return {"waveform": _torch().from_numpy(np.ascontiguousarray(waveform, np.float32))[None],
            "sample_rate": int(sample_rate)}


def _torch():
    import torch

    return torch
