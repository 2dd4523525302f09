"""Frames in memory behind the interfaces of the video reader and writer.

ComfyUI (and any script that already holds its frames) has the whole clip in memory. :class:`FrameSource` gives such
frames the interface of :class:`~stabledub_core.media.video.VideoReader` that the pipeline's stages use
(``frames()``, ``frames_at(runs)``, ``num_frames``, ``fps``, ``size``, ``times()``, ``is_variable_rate()``), and
:class:`FrameSink` the ``write(image, time)`` of :class:`~stabledub_core.media.video.VideoWriter`: with them the
streaming dub runs unchanged on in-memory clips.

Frames are ``(F, H, W, 3)`` uint8 numpy arrays or float torch tensors in [0, 1] (converted one frame at a time, so a
float clip is never copied whole).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Iterator, Sequence

import numpy as np

from stabledub_core.errors import EmptyMediaError, FrameFormatError, OptionError
from stabledub_core.media.video import Run, VideoFrame

SOURCE_NAME = "the input frames"  # how an in-memory clip is named in error messages


def to_uint8(image) -> np.ndarray:
    """One ``(H, W, 3)`` frame as uint8: uint8 arrays as they are, floats in [0, 1] rounded (numpy or torch)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    if hasattr(image, "detach"):  # a torch tensor: convert it without importing torch here
        image = image.detach().float().cpu().numpy()
    return np.clip(np.rint(np.asarray(image, np.float32) * 255), 0, 255).astype(np.uint8)


def frame_rate(fps) -> Fraction:
    """An exact frame rate from a float or fraction (29.97 -> 30000/1001, 25.0 -> 25).

    Raises:
        OptionError: For a rate that is not positive.
    """
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise OptionError(f"frame rate must be > 0, got {fps}: give the video's fps")
    return rate


class _StreamInfo:
    """What the tracker stage reads from a reader's stream (the frame count)."""

    def __init__(self, frames: int):
        self.frames = frames


class FrameSource:
    """In-memory frames behind the :class:`VideoReader` interface used by ``pipeline/dub.py``.

    Args:
        frames: ``(F, H, W, 3)`` uint8 array or float tensor in [0, 1] (or any sequence of such frames).
        fps: Frame rate (float or exact fraction).
        times: Optional ``(F,)`` frame times in seconds (variable frame rate); default ``i / fps``.
        name: How the clip is named in error messages.
    """

    def __init__(self, frames, fps, times: Sequence[float] | None = None, name: str = SOURCE_NAME):
        if len(frames) == 0:
            raise EmptyMediaError(f"{name} hold no frame: give at least 2 frames")
        shape = tuple(frames[0].shape)
        if len(shape) != 3 or shape[2] != 3:
            raise OptionError(f"{name} must be RGB frames (F, H, W, 3), got frames of shape {shape}")
        self._frames = frames
        self.fps = frame_rate(fps)
        self.size = (int(shape[0]), int(shape[1]))
        self.time_base = 1 / self.fps
        self.has_audio = False
        self.path = name
        self.stream = _StreamInfo(len(frames))
        self._times = None if times is None else np.asarray(times, np.float64)
        if self._times is not None and self._times.shape != (len(frames),):
            raise OptionError(f"{len(frames)} frames but {self._times.shape[0]} frame times")

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the frames belong to the caller)."""

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``(H, W, 3)`` uint8."""
        return to_uint8(self._frames[index])

    def times(self) -> np.ndarray:
        """``(F,)`` float64 seconds of every frame."""
        return self._times if self._times is not None else np.arange(self.num_frames) / float(self.fps)

    def is_variable_rate(self, tolerance: float = 0.02) -> bool:
        """True if frame durations differ by more than ``tolerance`` of a frame."""
        deltas = np.diff(self.times())
        if deltas.size == 0:
            return False
        return bool(np.abs(deltas - 1.0 / float(self.fps)).max() > tolerance / float(self.fps))

    def frames(self) -> Iterator[VideoFrame]:
        """Every frame in order, with its time."""
        times = self.times()
        for i in range(self.num_frames):
            yield VideoFrame(i, float(times[i]), i, self.image(i))

    def frames_at(self, runs: Iterable[Run]) -> Iterator[np.ndarray]:
        """The images of a sequence of index runs (e.g. a length plan's), lazily."""
        for run in runs:
            for index in run.indices():
                yield self.image(index)


class FrameSink:
    """Collects written frames in memory (the :class:`VideoWriter` ``write`` interface).

    Args:
        num_frames: Frames that will be written.
        size: ``(H, W)`` of the frames.
    """

    def __init__(self, num_frames: int, size: tuple[int, int]):
        self.images = np.empty((num_frames, *size, 3), np.uint8)  # (F, H, W, 3)
        self.times = np.zeros(num_frames, np.float64)
        self.count = 0

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, *exc) -> None:
        """Nothing to release (the frames stay in :attr:`images`)."""

    def write(self, image: np.ndarray, time: float | None = None) -> None:
        """Store the next frame (``time`` in seconds; None: ``index / fps``, not recorded)."""
        if self.count >= len(self.images):
            raise OptionError(f"more than the {len(self.images)} announced frames were written")
        if image.shape != self.images.shape[1:] or image.dtype != np.uint8:
            raise FrameFormatError(f"frame {self.count}: expected uint8 {self.images.shape[1:]}, got {image.dtype} "
                                   f"{image.shape}")
        self.images[self.count] = image
        self.times[self.count] = np.nan if time is None else time
        self.count += 1

    def result(self) -> np.ndarray:
        """``(F, H, W, 3)`` uint8, once every frame was written."""
        if self.count != len(self.images):
            raise OptionError(f"{self.count} of {len(self.images)} frames were written")
        return self.images
