"""The audio context of each video frame: T audio features around the frame's time, for any frame rate.

A feature sequence produced by an audio encoder has a fixed rate (``feature_rate`` features per second; wav2vec2:
50, the mel encoder: 100) and feature ``i`` describes the audio around time ``offset + i / feature_rate`` seconds.
A video frame ``f`` is shown at ``frame_times[f]`` seconds (constant or variable frame rate alike). For each frame we
sample ``tokens_per_frame`` evenly spaced times spanning ``context_seconds`` centred on the frame time::

    t_k = frame_time - context_seconds / 2 + context_seconds * (k + 0.5) / tokens_per_frame,   k = 0 .. n-1

and linearly interpolate the feature sequence at those times. Times before the first or after the last feature take
the edge feature (edge padding), so the first and last frames of a clip get a full context.
"""

from __future__ import annotations

import numpy as np
import torch

from stabledub_core.errors import AudioContextError
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE

SEGMENT_MARGIN = 1.0  # seconds of speech encoded beyond each side of the frames' audio context


def uniform_frame_times(num_frames: int, fps: float, start: float = 0.0) -> np.ndarray:
    """Timestamps (seconds) of ``num_frames`` frames at a constant ``fps`` (e.g. 29.97 = 30000/1001).

    Args:
        num_frames: number of frames F.
        fps: frames per second, > 0.
        start: time of the first frame in seconds.

    Returns:
        (F,) float64 array of frame times.
    """
    if fps <= 0:
        raise AudioContextError(f"fps must be > 0, got {fps}")
    return start + np.arange(num_frames, dtype=np.float64) / float(fps)


def frame_audio_context(
    features: torch.Tensor,
    feature_rate: float,
    frame_times,
    tokens_per_frame: int,
    context_seconds: float,
    feature_offset: float = 0.0,
) -> torch.Tensor:
    """Cut the audio context of every video frame out of a feature sequence, by linear interpolation in time.

    Args:
        features: (T_feat, C_a) feature sequence of one clip.
        feature_rate: features per second of ``features`` (encoder ``.frame_rate``).
        frame_times: (F,) frame timestamps in seconds (array-like, any fps, may be variable).
        tokens_per_frame: number of tokens T per frame.
        context_seconds: time span of one frame's context, centred on the frame time.
        feature_offset: time in seconds that feature 0 describes (encoder ``.time_offset``).

    Returns:
        (F, tokens_per_frame, C_a) tensor, same dtype/device as ``features``.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise AudioContextError(f"features must be a non-empty (T_feat, C_a) tensor, got shape "
                                f"{tuple(features.shape)}")
    if feature_rate <= 0:
        raise AudioContextError(f"feature_rate must be > 0, got {feature_rate}")
    if tokens_per_frame < 1:
        raise AudioContextError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    if context_seconds < 0:
        raise AudioContextError(f"context_seconds must be >= 0, got {context_seconds}")
    times = torch.as_tensor(np.asarray(frame_times, dtype=np.float64), dtype=torch.float64)
    if times.ndim != 1:
        raise AudioContextError(f"frame_times must be 1-D (F,), got shape {tuple(times.shape)}")
    if not torch.isfinite(times).all():
        raise AudioContextError("frame_times contain NaN or infinite values")

    k = torch.arange(tokens_per_frame, dtype=torch.float64)
    offsets = context_seconds * ((k + 0.5) / tokens_per_frame - 0.5)  # (T,) relative to the frame time
    sample_times = times[:, None] + offsets[None, :]  # (F, T)
    position = (sample_times - feature_offset) * feature_rate  # (F, T) fractional feature index
    position = position.clamp(0.0, features.shape[0] - 1)  # edge padding

    lower = position.floor().long()  # (F, T)
    upper = (lower + 1).clamp(max=features.shape[0] - 1)
    weight = (position - lower.to(torch.float64)).to(features.dtype)[..., None]  # (F, T, 1)
    lower_feat = features[lower.to(features.device)]  # (F, T, C_a)
    upper_feat = features[upper.to(features.device)]
    return lower_feat + (upper_feat - lower_feat) * weight.to(features.device)


def audio_segment(num_samples: int, times: np.ndarray, context_seconds: float) -> tuple[int, int]:
    """The 16 kHz samples ``[a, b)`` the audio encoder is run on for frames at ``times``.

    The frames' span plus their context and :data:`SEGMENT_MARGIN` on each side (so the encoder sees the speech
    around every frame), clamped to the audio. Inference (``StableDubChunkModel``) and the training datasets cut the
    same segment.

    Args:
        num_samples: Samples of the 16 kHz audio.
        times: ``(n,)`` frame times (s) in that audio, ascending.
        context_seconds: The preset's ``audio.context_seconds``.

    Returns:
        ``(a, b)`` with ``b > a``; the frame times in ``wave[a:b]`` are ``times - a / 16000``.
    """
    margin = context_seconds + SEGMENT_MARGIN
    a = max(int((times[0] - margin) * ENCODER_SAMPLE_RATE), 0)
    b = min(int((times[-1] + margin) * ENCODER_SAMPLE_RATE), num_samples)
    return a, max(b, a + 1)
