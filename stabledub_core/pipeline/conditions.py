"""Conditions of the sampler: appearance latent, lip-habit segment and vector, per-branch audio tokens.

- Appearance: one frame of the clip (chosen by ``masks.reference.choose_reference``); its crop's latent is
  concatenated to every frame's U-Net input.
- Lip habit: K lip crops of one contiguous segment from another part of the same video (seeded), shuffled, as in
  the paper, or from another video; the habit module turns them into the vector ``v``. ``v`` can be
  saved and loaded (safetensors with metadata) to transfer a speaker's habit to other clips.
- Tokens: the habit module maps the per-frame audio context and ``v`` to the cross-attention tokens; each branch of
  eq. 7 uses its drop masks (a dropped condition becomes the module's zero embedding). All needed branches are
  computed in one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from stabledub_core.errors import ConditionError, HabitFileNotFoundError
from stabledub_core.masks.lips import choose_lip_segment
from stabledub_core.media.output import atomic_write
from stabledub_core.pipeline.guidance import Branch
from stabledub_core.pipeline.sampler import ClipConditions

HABIT_FORMAT = "stabledub.habit"
HABIT_FORMAT_VERSION = "1"
_HABIT_KEY = "habit"


class HabitModule(Protocol):
    """The lip-habit modulation module's contract (``models.habit.LipHabitModulation``)."""

    def encode_habit(self, lip_crops: torch.Tensor) -> torch.Tensor:
        """``(B, K, 3, S, S)`` float in [0, 1] -> ``(B, C)``."""

    def __call__(self, audio: torch.Tensor, v: torch.Tensor, drop_audio: torch.Tensor | None,
                 drop_habit: torch.Tensor | None) -> torch.Tensor:
        """``(B, F, T, C_a)``, ``(B, C)``, ``(B,)`` bool, ``(B,)`` bool -> ``(B, F, T', C_cross)``."""


def habit_segment(status: np.ndarray, length: int, seed: int,
                  avoid: tuple[int, int] | None = None) -> np.ndarray:
    """Frames of the lip-habit segment, in shuffled order (the paper: "random sampled and shuffled").

    The segment is chosen by ``masks.lips.choose_lip_segment`` (a run of tracked frames, outside ``avoid`` when
    the video allows); the shuffle keeps the habit (how the lips move) but breaks the segment's own speech timing,
    so it cannot leak lip sync. Use the same function on another video's track for habit transfer.

    Args:
        status: ``(F,)`` ``TrackStatus`` values of the video the habit is taken from.
        length: K, frames in the segment.
        seed: seed of the choice and the shuffle.
        avoid: frame range ``[a, b)`` to stay out of if possible (the frames being dubbed).

    Returns:
        ``(K,)`` int64 frame indices: a contiguous run, shuffled.
    """
    start = choose_lip_segment(status, length, seed=seed, avoid=avoid)
    indices = np.arange(start, start + length, dtype=np.int64)
    np.random.default_rng([seed, 1]).shuffle(indices)
    return indices


def habit_vector(habit: HabitModule, lip_crops: np.ndarray, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Encode K lip crops into the habit vector ``v``.

    Args:
        habit: the habit module.
        lip_crops: ``(K, S, S, 3)`` uint8 RGB lip crops (``masks.lips.lip_crops`` of the segment's frames).
        device, dtype: where the module runs.

    Returns:
        ``(C,)`` float32 habit vector on the CPU.
    """
    if lip_crops.ndim != 4 or lip_crops.shape[-1] != 3 or lip_crops.dtype != np.uint8:
        raise ConditionError(f"lip crops must be (K, S, S, 3) uint8, got {lip_crops.shape} {lip_crops.dtype}")
    crops = torch.from_numpy(lip_crops).permute(0, 3, 1, 2).to(device, dtype) / 255.0  # (K, 3, S, S)
    with torch.no_grad():
        v = habit.encode_habit(crops[None])[0]
    return v.float().cpu()


@dataclass
class HabitVector:
    """A saved lip-habit vector with its metadata (source video, frames, model preset...)."""

    vector: torch.Tensor  # (C,)
    metadata: dict[str, str] = field(default_factory=dict)


def save_habit_vector(path: str | Path, vector: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    """Save ``v`` as safetensors; ``metadata`` (str -> str) is stored alongside the format fields."""
    if vector.dim() != 1:
        raise ConditionError(f"a habit vector is 1-D (C,), got shape {tuple(vector.shape)}")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(format=HABIT_FORMAT, format_version=HABIT_FORMAT_VERSION, size=str(vector.shape[0]))
    atomic_write(path, save({_HABIT_KEY: vector.detach().float().cpu().contiguous()}, metadata=meta), "habit file")


def load_habit_vector(path: str | Path, expected_size: int | None = None) -> HabitVector:
    """Load a habit vector saved by :func:`save_habit_vector`.

    Args:
        path: the ``.safetensors`` file.
        expected_size: the model's habit width C, checked when given.

    Returns:
        The vector and its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise HabitFileNotFoundError(f"habit vector file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != HABIT_FORMAT or _HABIT_KEY not in f.keys():
            raise ConditionError(f"{path} is not a StableDub habit vector (format {meta.get('format')!r}); "
                                 "create one with save_habit_vector")
        vector = f.get_tensor(_HABIT_KEY)
    if expected_size is not None and vector.shape != (expected_size,):
        raise ConditionError(f"{path} holds a habit vector of size {tuple(vector.shape)}, the model needs "
                             f"({expected_size},); it was made with another model preset")
    return HabitVector(vector, dict(meta))


def branch_tokens(habit: HabitModule, audio: torch.Tensor, v: torch.Tensor, branches: tuple[Branch, ...],
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[Branch, torch.Tensor]:
    """Cross-attention tokens of each guidance branch, in one batched forward of the habit module.

    Args:
        habit: the habit module.
        audio: ``(F, T, C_a)`` per-frame audio context (``models.audio_context.frame_audio_context``).
        v: ``(C,)`` habit vector.
        branches: the branches to compute (``GuidancePlan.branches``).
        device, dtype: where the module runs.

    Returns:
        branch -> ``(F, T', C_cross)`` tokens on the CPU (float32).
    """
    if audio.dim() != 3:
        raise ConditionError(f"the audio context must be (F, T, C_a), got {tuple(audio.shape)}")
    if v.dim() != 1:
        raise ConditionError(f"habit vector must be (C,), got {tuple(v.shape)}")
    nb = len(branches)
    drop_audio = torch.tensor([b.drop_audio for b in branches], device=device)
    drop_habit = torch.tensor([b.drop_habit for b in branches], device=device)
    audio_b = audio.to(device, dtype).unsqueeze(0).expand(nb, *audio.shape)  # (nb, F, T, C_a)
    v_b = v.to(device, dtype).unsqueeze(0).expand(nb, -1)  # (nb, C)
    with torch.no_grad():
        tokens = habit(audio_b, v_b, drop_audio, drop_habit)  # (nb, F, T', C_cross)
    return {b: t.float().cpu() for b, t in zip(branches, tokens)}


def clip_conditions(habit: HabitModule, audio: torch.Tensor, v: torch.Tensor, masked: torch.Tensor,
                    mask: torch.Tensor, appearance: torch.Tensor, branches: tuple[Branch, ...],
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    known: torch.Tensor | None = None) -> ClipConditions:
    """Assemble the sampler's conditions of a clip or chunk.

    Args:
        habit: the habit module.
        audio: ``(F, T, C_a)`` audio context of the frames.
        v: ``(C,)`` habit vector.
        masked: ``(F, 4, h, w)`` latents of the masked crops.
        mask: ``(F, 1, h, w)`` latent-size masks.
        appearance: ``(4, h, w)`` appearance latent.
        branches: the branches the sampler will evaluate (``SamplerConfig.guidance.branches``).
        device, dtype: where the habit module runs.
        known: ``(F, 4, h, w)`` latents of the unmasked source crops (known-region blending), or None.

    Returns:
        :class:`ClipConditions`, validated.
    """
    if audio.shape[0] != masked.shape[0]:
        raise ConditionError(f"audio context of {audio.shape[0]} frames for {masked.shape[0]} frames")
    if known is not None and known.shape != masked.shape:
        raise ConditionError(f"source latents {tuple(known.shape)} do not match the masked ones "
                             f"{tuple(masked.shape)}")
    cond = ClipConditions(masked, mask, appearance, branch_tokens(habit, audio, v, branches, device, dtype), known)
    cond.validate(branches)
    return cond
