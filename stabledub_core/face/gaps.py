"""Streaming gap filling: short runs of frames without a face are interpolated, long ones are marked missing."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stabledub_core.errors import OptionError


class TrackStatus(enum.IntEnum):
    """Per-frame state of a face track."""

    DETECTED = 0  # landmarks from the landmarker (smoothed)
    INTERPOLATED = 1  # a short gap, filled linearly in time between the detections around it
    MISSING = 2  # no face: landmarks are NaN and the frame passes through unchanged downstream


@dataclass
class TrackEntry:
    """One finalised frame of a track.

    Args:
        index: frame index in the stream.
        time: frame time in seconds.
        landmarks: (478, 2) float32, NaN when MISSING.
        status: the frame's status.
    """

    index: int
    time: float
    landmarks: np.ndarray
    status: TrackStatus


class GapFiller:
    """Turns per-frame detections (or their absence) into finalised track entries, in order.

    A frame without a face is held back until the gap it belongs to closes: a gap of at most ``max_gap`` frames
    between two detections is interpolated; a longer one, or one at the start or end of the stream, is MISSING. So
    at most ``max_gap + 1`` frames wait at any time.

    Args:
        max_gap: longest gap (frames) that is interpolated; 0 disables interpolation.
        num_points: landmarks per frame.
    """

    def __init__(self, max_gap: int = 4, num_points: int = 478):
        if max_gap < 0:
            raise OptionError(f"max_gap must be >= 0 frames, got {max_gap}")
        self.max_gap = max_gap
        self.num_points = num_points
        self._last: TrackEntry | None = None  # last detection, while a gap after it can still be filled
        self._pending: list[tuple[int, float]] = []  # (index, time) of frames without a face after _last

    @property
    def lookahead(self) -> int:
        """Most frames that can be held back before they are finalised."""
        return self.max_gap + 1

    def _missing(self, index: int, time: float) -> TrackEntry:
        return TrackEntry(index, time, np.full((self.num_points, 2), np.nan, np.float32), TrackStatus.MISSING)

    def push(self, index: int, time: float, landmarks: np.ndarray | None) -> list[TrackEntry]:
        """Add the next frame.

        Args:
            index: frame index (consecutive).
            time: frame time in seconds (increasing).
            landmarks: (478, 2) detected landmarks, or None when no face was found.

        Returns:
            The entries finalised by this frame, in frame order (possibly none).
        """
        if landmarks is None:
            if self._last is None:
                return [self._missing(index, time)]
            self._pending.append((index, time))
            if len(self._pending) > self.max_gap:
                out = [self._missing(i, t) for i, t in self._pending]
                self._pending, self._last = [], None
                return out
            return []
        detected = TrackEntry(index, time, np.asarray(landmarks, np.float32), TrackStatus.DETECTED)
        out = self._fill(detected) if self._pending else []
        out.append(detected)
        self._last, self._pending = detected, []
        return out

    def resolve(self, landmarks: Sequence[np.ndarray]) -> list[TrackEntry]:
        """The last frames held back had a face after all (a new track that starts inside the gap).

        Args:
            landmarks: K arrays (478, 2), the landmarks of the last K held-back frames (K <= the number held back).

        Returns:
            The held-back frames, finalised: the first ones MISSING, the last K DETECTED.
        """
        if len(landmarks) > len(self._pending):
            raise ValueError(f"{len(landmarks)} landmark sets for {len(self._pending)} held-back frames")
        split = len(self._pending) - len(landmarks)
        out = [self._missing(i, t) for i, t in self._pending[:split]]
        out += [TrackEntry(i, t, np.asarray(lm, np.float32), TrackStatus.DETECTED)
                for (i, t), lm in zip(self._pending[split:], landmarks)]
        self._pending = []
        self._last = out[-1] if len(landmarks) else None
        return out

    def _fill(self, nxt: TrackEntry) -> list[TrackEntry]:
        prev, span = self._last, nxt.time - self._last.time
        out = []
        for index, time in self._pending:
            w = (time - prev.time) / span
            out.append(TrackEntry(index, time, ((1 - w) * prev.landmarks + w * nxt.landmarks).astype(np.float32),
                                  TrackStatus.INTERPOLATED))
        return out

    def flush(self) -> list[TrackEntry]:
        """End of stream: frames still held back become MISSING (there is no detection after them)."""
        out = [self._missing(i, t) for i, t in self._pending]
        self._pending, self._last = [], None
        return out
