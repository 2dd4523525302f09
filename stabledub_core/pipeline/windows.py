"""Temporal windows for clips of any length: MultiDiffusion-style averaging and chunk stitching.

A clip of ``F`` frames is covered by windows of ``window`` frames (16 by default) that overlap by ``overlap``
frames. At every denoising step each window is denoised from the current clip latent and the per-frame noise
predictions are averaged with per-frame weights (a linear ramp inside the overlaps, so a frame near a window's
edge counts less than one near its centre). The last window is shifted back to end on the last frame, so no frame is
dropped and every window has the same length (windows can be batched). Clips shorter than a window are one window.

For memory-bounded streaming of long videos, the clip is processed in *chunks*: a chunk is a run of consecutive
windows denoised jointly for all steps (exact MultiDiffusion inside the chunk). Chunks start on window starts, so
a chunk's windows are exactly the clip's windows there. Consecutive chunks share the overlap of two neighbouring
windows (``overlap`` frames, more before the shifted last window); the shared frames are denoised in both chunks
from the same clip noise (``sampler.ClipNoise``), so both results are already close, and :class:`ChunkStitcher`
cross-fades them with a linear ramp. The cross-fade works on any per-frame tensor (latents or decoded frames).
Chunked results differ from whole-clip sampling only in the shared frames (by ~2% of the disagreement between
neighbouring windows in ``tests/pipeline/test_sampler.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from stabledub_core.models.config import StableDubConfig
from stabledub_core.pipeline.options import SamplingOptions

from stabledub_core.errors import SamplerWindowError

DEFAULT_WINDOW = StableDubConfig.num_frames  # the model's window (read from the loaded model's config)
DEFAULT_OVERLAP = SamplingOptions.overlap


@dataclass(frozen=True)
class FrameWindow:
    """A frame range ``[start, stop)`` of the clip (or of a chunk)."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def _check(num_frames: int, window: int, overlap: int) -> None:
    if num_frames < 1:
        raise SamplerWindowError(f"need at least one frame, got num_frames={num_frames}")
    if window < 1:
        raise SamplerWindowError(f"window must be >= 1 frame, got {window}")
    if not 0 <= overlap < window:
        raise SamplerWindowError(f"overlap must be in [0, window) = [0, {window}), got {overlap}")


def plan_frame_windows(num_frames: int, window: int = DEFAULT_WINDOW,
                       overlap: int = DEFAULT_OVERLAP) -> list[FrameWindow]:
    """Cover ``num_frames`` frames with windows of ``window`` frames overlapping by at least ``overlap``.

    Args:
        num_frames: frames in the clip (any number >= 1).
        window: frames per window.
        overlap: frames shared by consecutive windows (the last window may share more: it is shifted back to end
            on the last frame instead of being cut short).

    Returns:
        Windows in order; their union is ``[0, num_frames)``. A clip shorter than ``window`` is one window.
    """
    _check(num_frames, window, overlap)
    if num_frames <= window:
        return [FrameWindow(0, num_frames)]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride))
    starts.append(num_frames - window)  # last window ends on the last frame
    return [FrameWindow(s, s + window) for s in starts]


def ramp(length: int, overlap: int, left: bool = True, right: bool = True) -> torch.Tensor:
    """Per-frame weights of a window: 1 in the middle, a linear ramp over ``overlap`` frames at each faded edge.

    Args:
        length: frames in the window.
        overlap: frames of the ramp at each faded edge.
        left: fade in at the start (False at the clip's first frame).
        right: fade out at the end (False at the clip's last frame).

    Returns:
        ``(length,)`` float32 weights in (0, 1].
    """
    i = torch.arange(length, dtype=torch.float32)
    w = torch.ones(length)
    step = 1.0 / (overlap + 1)
    if left:
        w = torch.minimum(w, (i + 1) * step)
    if right:
        w = torch.minimum(w, (length - i) * step)
    return w


def window_weights(windows: list[FrameWindow], overlap: int) -> list[torch.Tensor]:
    """Ramp weights of each window; edges on the clip boundary are not faded.

    Args:
        windows: windows from :func:`plan_frame_windows`.
        overlap: ramp length in frames.

    Returns:
        One ``(window.length,)`` weight vector per window.
    """
    first = min(w.start for w in windows)
    last = max(w.stop for w in windows)
    return [ramp(w.length, overlap, left=w.start > first, right=w.stop < last) for w in windows]


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive frames denoised jointly (all steps) by the sampler.

    Attributes:
        start, stop: frame range ``[start, stop)`` of the chunk in the clip.
        blend: frames at the chunk's start shared with the previous chunk (cross-faded by :class:`ChunkStitcher`).
    """

    start: int
    stop: int
    blend: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def plan_chunks(num_frames: int, windows_per_chunk: int, window: int = DEFAULT_WINDOW,
                overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """Group the clip's windows (:func:`plan_frame_windows`) into chunks of ``windows_per_chunk`` windows.

    A chunk spans its windows' frames, so consecutive chunks share the frames of two neighbouring windows'
    overlap (more where the last window is shifted back). Because chunk starts fall on window starts, the windows
    the sampler plans inside a chunk are exactly the clip's windows in that range: chunked sampling differs from
    whole-clip sampling only in the shared frames (predicted by one window per chunk, then cross-faded by
    :class:`ChunkStitcher`). A chunk spans at most ``windows_per_chunk * (window - overlap) + overlap`` frames
    whatever the clip length.

    Args:
        num_frames: frames in the clip.
        windows_per_chunk: windows per chunk (>= 1).
        window: frames per window.
        overlap: frames shared by consecutive windows.

    Returns:
        Chunks in order covering ``[0, num_frames)``; no frame is dropped.
    """
    if windows_per_chunk < 1:
        raise SamplerWindowError(f"windows_per_chunk must be >= 1, got {windows_per_chunk}")
    windows = plan_frame_windows(num_frames, window, overlap)
    chunks: list[Chunk] = []
    for k in range(0, len(windows), windows_per_chunk):
        group = windows[k:k + windows_per_chunk]
        start, stop = group[0].start, group[-1].stop
        chunks.append(Chunk(start, stop, chunks[-1].stop - start if chunks else 0))
    return chunks


class ChunkStitcher:
    """Joins consecutive chunk outputs, cross-fading the frames two chunks share.

    Feed chunks in order with :meth:`push`; it returns the frames that are final (never touched again), keeping
    the tail that the next chunk will overlap; the last push returns every remaining frame. :meth:`finish` checks
    that no chunk was left out.
    Works on any tensor whose first dimension is the frame (latents ``(n, 4, h, w)``, frames ``(n, H, W, 3)``...).
    """

    def __init__(self, chunks: list[Chunk]):
        self._chunks = chunks
        self._index = 0
        self._tail: torch.Tensor | None = None  # frames of the previous chunk not yet emitted

    def push(self, values: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Add the output of the next chunk.

        Args:
            values: ``(chunk.length, ...)`` per-frame output of the next chunk.

        Returns:
            ``(start, frames)``: frames ``[start, start + len(frames))`` of the clip that are now final.
        """
        if self._index >= len(self._chunks):
            raise SamplerWindowError("all chunks were already pushed")
        chunk = self._chunks[self._index]
        if values.shape[0] != chunk.length:
            raise SamplerWindowError(f"chunk {self._index} covers {chunk.length} frames, got {values.shape[0]}")
        self._index += 1
        if chunk.blend:
            prev = self._tail
            n = chunk.blend
            # weight of the new chunk rises from ~0 to ~1 over the shared frames
            w = torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)
            w = w.to(values.device).view(n, *([1] * (values.dim() - 1)))
            mixed = prev.to(torch.float32) * (1 - w) + values[:n].to(torch.float32) * w
            values = torch.cat([mixed.to(values.dtype), values[n:]], dim=0)
        # keep the frames the next chunk will overlap
        keep = self._chunks[self._index].blend if self._index < len(self._chunks) else 0
        final, self._tail = values[: values.shape[0] - keep], values[values.shape[0] - keep:]
        start = chunk.start
        return start, final

    def finish(self) -> None:
        """Check that every chunk was pushed."""
        if self._index != len(self._chunks):
            raise SamplerWindowError(f"{len(self._chunks) - self._index} chunk(s) were never pushed")


def stitch_chunks(chunks: list[Chunk], generate: Callable[[int, Chunk], torch.Tensor]
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """The one chunk loop: generate chunk by chunk and yield the frames cross-faded, as soon as they are final.

    Args:
        chunks: The clip's chunks (:func:`plan_chunks`).
        generate: ``generate(number, chunk) -> (chunk.length, ...)`` per-frame output of the chunk (latents,
            images...).

    Yields:
        ``(start, values)``: frames ``[start, start + len(values))`` of the clip, in order.
    """
    stitcher = ChunkStitcher(chunks)
    for number, chunk in enumerate(chunks):
        yield stitcher.push(generate(number, chunk))
    stitcher.finish()


def stitch_images(chunks: list[Chunk], generate: Callable[[int, Chunk], np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`stitch_chunks` for uint8 images: the cross-faded frames are rounded back to uint8."""
    for start, final in stitch_chunks(chunks, lambda number, chunk: torch.from_numpy(generate(number, chunk)).float()):
        yield start, final.round().clamp(0, 255).to(torch.uint8).numpy()


def iter_window_batches(windows: list[FrameWindow], batch_size: int) -> Iterator[list[int]]:
    """Group the indices of consecutive windows of equal length into batches of at most ``batch_size``."""
    if batch_size < 1:
        raise SamplerWindowError(f"window batch size must be >= 1, got {batch_size}")
    batch: list[int] = []
    for i, w in enumerate(windows):
        if batch and (len(batch) == batch_size or windows[batch[0]].length != w.length):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
