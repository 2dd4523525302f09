"""An audio-visual sync scorer shaped like SyncNet: a stack of lip crops and the speech around them, embedded apart.

::

    lips  (B, F_s, 3, L, L) -> frames stacked as channels (B, 3 F_s, L, L) -> 4 conv blocks (stride 2) -> pool -> D
    audio (B, A) 16 kHz, the F_s frames' span -> log-mel (B, T, M) -> 4 conv blocks over (M, T) -> pool -> D
    distance = || normalise(v) - normalise(a) ||_2                                          (SyncNet's distance)

``F_s`` = 5 frames (0.2 s at 25 fps) and the audio segment covers the same 0.2 s, centred on the stack's middle
frame. Trained contrastively (``train sync``: the aligned pairs of a batch against all its other pairings, and with
``--sync-negatives`` against the same clip's speech shifted in time), it scores
a clip the standard way (:func:`sync_offsets`): for every audio shift of -15..15 frames the mean distance between
each frame stack and the audio shifted by that many frames; LSE-D is the smallest mean distance, LSE-C the median
minus the smallest (how clearly one shift wins), the offset is where it wins. A clip whose mouth follows its speech
has offset 0 and a high confidence.

Checkpoints are safetensors with the config in the metadata (:func:`save_scorer`, :func:`load_scorer`), used by
``train preprocess --sync-scorer`` (the Fig. 5 sync filter) and by the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from stabledub_core.errors import CheckpointError, InvalidInputError
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE
from stabledub_core.models.audio_encoders import MelAudioEncoder
from stabledub_core.models.config import AudioConfig
from stabledub_core.models.safetensors_io import check_safetensors_file, save_safetensors

FORMAT = "stabledub-sync-scorer"
MAX_OFFSET = 15  # frames: the audio shifts :func:`sync_offsets` searches (-15..15, as SyncNet's evaluation)


@dataclass
class SyncScorerConfig:
    frames: int = 5  # F_s: frames per stack
    fps: float = 25.0  # frame rate the stacks are cut at (the training data's)
    lip_size: int = 48  # L: lip crops are L x L RGB
    n_mels: int = 80  # M
    widths: tuple[int, ...] = (32, 64, 128, 256)
    embedding: int = 128  # D

    @property
    def audio_samples(self) -> int:
        """Samples of 16 kHz speech under one stack."""
        return int(round(self.frames / self.fps * ENCODER_SAMPLE_RATE))


def _encoder(in_channels: int, widths: tuple[int, ...], out: int) -> nn.Sequential:
    layers, channels = [], in_channels
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, out))


class SyncScorer(nn.Module):
    """Args:
        config: the scorer's sizes.
    """

    def __init__(self, config: SyncScorerConfig):
        super().__init__()
        self.config = config
        self.lips = _encoder(3 * config.frames, config.widths, config.embedding)
        self.audio = _encoder(1, config.widths, config.embedding)
        self.mel = MelAudioEncoder(AudioConfig(kind="mel", feature_size=config.n_mels, num_hidden_layers=0))
        self.mel.requires_grad_(False)  # only its log-mel front end is used

    def embed_lips(self, lips: torch.Tensor) -> torch.Tensor:
        """``(B, F_s, 3, L, L)`` float in [0, 1] -> ``(B, D)`` unit vectors."""
        c = self.config
        if lips.ndim != 5 or lips.shape[1:] != (c.frames, 3, c.lip_size, c.lip_size):
            raise InvalidInputError(f"lip stacks must be (B, {c.frames}, 3, {c.lip_size}, {c.lip_size}), got "
                                    f"{tuple(lips.shape)}")
        return F.normalize(self.lips(lips.flatten(1, 2) * 2 - 1), dim=-1)

    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """``(B, A)`` 16 kHz segments of ``config.audio_samples`` -> ``(B, D)`` unit vectors."""
        if wave.ndim != 2 or wave.shape[1] != self.config.audio_samples:
            raise InvalidInputError(f"audio segments must be (B, {self.config.audio_samples}), got "
                                    f"{tuple(wave.shape)}")
        mel = self.mel.log_mel(wave).transpose(1, 2)[:, None]  # (B, 1, M, T)
        return F.normalize(self.audio(mel), dim=-1)

    def distance(self, lips: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distances of aligned stacks and segments."""
        return (self.embed_lips(lips) - self.embed_audio(wave)).norm(dim=-1)


def audio_windows(wave16: np.ndarray, centres: np.ndarray, samples: int) -> np.ndarray:
    """``(N, samples)`` segments of ``wave16`` centred on ``centres`` (s), zero outside the speech."""
    wave16 = np.asarray(wave16, np.float32)
    starts = np.rint(np.asarray(centres, np.float64) * ENCODER_SAMPLE_RATE).astype(np.int64) - samples // 2
    padded = np.concatenate([np.zeros(samples, np.float32), wave16, np.zeros(samples, np.float32)])
    index = np.clip(starts[:, None] + samples + np.arange(samples)[None], 0, len(padded) - 1)
    return padded[index]


def stack_centres(first_frames: np.ndarray, config: SyncScorerConfig) -> np.ndarray:
    """Time (s) of the middle of the stacks starting at ``first_frames``."""
    return (np.asarray(first_frames, np.float64) + (config.frames - 1) / 2) / config.fps


class SyncScore(NamedTuple):
    lse_d: float  # the smallest mean distance over the shifts
    lse_c: float  # median - smallest: the confidence
    offset: int  # the shift (frames) where the distance is smallest: audio later than video when > 0
    distances: np.ndarray  # (2 max_offset + 1,) mean distance per shift


@torch.no_grad()
def sync_offsets(scorer: SyncScorer, lips: np.ndarray, wave16: np.ndarray, max_offset: int = MAX_OFFSET,
                 batch: int = 64) -> SyncScore:
    """Score a clip: its lip crops ``(F, L, L, 3)`` uint8 at ``config.fps`` and its 16 kHz speech.

    Raises:
        InvalidInputError: fewer frames than one stack.
    """
    c = scorer.config
    count = len(lips) - c.frames + 1
    if count < 1:
        raise InvalidInputError(f"{len(lips)} frames are fewer than one {c.frames}-frame stack")
    param = next(scorer.parameters())
    frames = torch.from_numpy(np.ascontiguousarray(lips)).permute(0, 3, 1, 2).float().div(255)  # (F, 3, L, L)
    stacks = frames.unfold(0, c.frames, 1).permute(0, 4, 1, 2, 3)  # (count, F_s, 3, L, L)
    video = torch.cat([scorer.embed_lips(stacks[i:i + batch].to(param.device)) for i in range(0, count, batch)])
    shifts = np.arange(-max_offset, max_offset + 1)
    firsts = np.arange(-max_offset, count + max_offset)  # audio stacks every shift can need
    windows = torch.from_numpy(audio_windows(wave16, stack_centres(firsts, c), c.audio_samples))
    audio = torch.cat([scorer.embed_audio(windows[i:i + batch].to(param.device))
                       for i in range(0, len(windows), batch)])  # (count + 2 max_offset, D)
    distances = []
    for shift in shifts:
        aligned = audio[max_offset + shift:max_offset + shift + count]  # audio of stack k + shift
        distances.append(float((video - aligned).norm(dim=-1).mean()))
    distances = np.asarray(distances)
    best = int(np.argmin(distances))
    return SyncScore(float(distances[best]), float(np.median(distances) - distances[best]), int(shifts[best]),
                     distances)


def save_scorer(scorer: SyncScorer, path) -> Path:
    """Write a scorer checkpoint atomically (temp file + rename)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in scorer.state_dict().items()}
    return save_safetensors(tensors, path, {"format": FORMAT, "config": json.dumps(dataclasses.asdict(scorer.config))})


def scorer_config_from_json(text: str) -> SyncScorerConfig:
    raw = json.loads(text)
    return SyncScorerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def load_scorer(path, device="cpu") -> SyncScorer:
    """Load a scorer checkpoint (a StableDub model or another file is refused with what it is)."""
    path = Path(path)
    meta = check_safetensors_file(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a sync scorer checkpoint (format {meta.get('format')!r}): make "
                              "one with `python -m stabledub_core train sync` and `train export`")
    scorer = SyncScorer(scorer_config_from_json(meta["config"]))
    with safe_open(str(path), framework="pt") as fh:
        state = {name: fh.get_tensor(name) for name in fh.keys()}
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path.name} does not match its config: {error}") from None
    return scorer.to(device).eval()
