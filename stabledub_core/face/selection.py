"""Which face to follow when a frame holds several: a small registry of selection strategies."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stabledub_core.errors import OptionError
from stabledub_core.face.indices import face_size


class FaceSelection(str, enum.Enum):
    """Face selection strategies.

    LARGEST: the face with the largest landmark bounding box.
    INDEX: the ``index``-th face counted from the left (by the x of its landmark centroid).
    NEAREST: the face nearest to the previous frame's track; on the first frame (or after the track was lost) the
        ``initial`` strategy picks.
    POINT: the face under a point ``(x, y)`` in pixels (the smallest landmark box holding it), else the face whose
        landmark centroid is nearest to it; as ``NEAREST``'s ``initial``, it picks the speaker on the first frame.

    Whatever the strategy, the tracker accepts a pick only if it continues the track (``is_continuation``).
    """

    LARGEST = "largest"
    INDEX = "index"
    NEAREST = "nearest"
    POINT = "point"


@dataclass
class SelectionContext:
    """What a strategy may look at besides the candidates.

    Args:
        previous: (478, 2) the track's landmarks in the last tracked frame, or None when there is no track.
        index: face index for ``FaceSelection.INDEX`` (0 = leftmost).
        point: ``(x, y)`` pixels for ``FaceSelection.POINT``.
    """

    previous: np.ndarray | None = None
    index: int = 0
    point: tuple[float, float] | None = None


@dataclass(frozen=True)
class FaceChoice:
    """Which face a track follows, as the user can name it (for the summary of a dub).

    Attributes:
        faces: Most faces seen in one frame of the video.
        rank: Position of the followed face from the left, from 0, in the frame where its track started.
        frame: That frame's index.
        centre: ``(x, y)`` pixels of the face's landmark centroid there.
    """

    faces: int
    rank: int
    frame: int
    centre: tuple[int, int]


SelectFn = Callable[[np.ndarray, SelectionContext], "int | None"]


def _largest(candidates: np.ndarray, context: SelectionContext) -> int | None:
    return int(np.argmax(face_size(candidates)))


def _by_index(candidates: np.ndarray, context: SelectionContext) -> int | None:
    order = np.argsort(candidates.mean(axis=1)[:, 0], kind="stable")  # left to right
    return int(order[context.index]) if context.index < len(order) else None


def _nearest(candidates: np.ndarray, context: SelectionContext) -> int | None:
    distances = np.linalg.norm(candidates.mean(axis=1) - context.previous.mean(axis=0), axis=-1)  # (N,)
    return int(np.argmin(distances))


def _at_point(candidates: np.ndarray, context: SelectionContext) -> int | None:
    point = np.asarray(context.point, np.float32)
    low, high = candidates.min(axis=1), candidates.max(axis=1)  # (N, 2) landmark boxes
    inside = np.flatnonzero(((low <= point) & (point <= high)).all(axis=1))
    if len(inside):
        areas = np.prod(high[inside] - low[inside], axis=1)
        return int(inside[np.argmin(areas)])
    return int(np.argmin(np.linalg.norm(candidates.mean(axis=1) - point, axis=-1)))


def rank_from_left(candidates: np.ndarray, choice: int) -> int:
    """Position of ``candidates[choice]`` counted from the left from 0 (the ``INDEX`` strategy's numbering)."""
    order = np.argsort(candidates.mean(axis=1)[:, 0], kind="stable")
    return int(np.flatnonzero(order == choice)[0])


SELECTORS: dict[FaceSelection, SelectFn] = {
    FaceSelection.LARGEST: _largest,
    FaceSelection.INDEX: _by_index,
    FaceSelection.NEAREST: _nearest,
    FaceSelection.POINT: _at_point,
}


@dataclass
class FaceSelector:
    """Picks one face per frame.

    Args:
        strategy: the selection strategy.
        index: face index (left to right) for ``INDEX``, and for ``NEAREST``'s first pick when ``initial`` is INDEX.
        initial: strategy for ``NEAREST`` when there is no previous track (LARGEST, INDEX or POINT).
        point: ``(x, y)`` pixels for ``POINT`` (and ``NEAREST``'s first pick when ``initial`` is POINT).
    """

    strategy: FaceSelection = FaceSelection.LARGEST
    index: int = 0
    initial: FaceSelection = FaceSelection.LARGEST
    point: tuple[float, float] | None = None

    def __post_init__(self):
        self.strategy = FaceSelection(self.strategy)
        self.initial = FaceSelection(self.initial)
        if self.initial is FaceSelection.NEAREST:
            raise OptionError("the initial selection of NEAREST must be LARGEST, INDEX or POINT: there is no "
                              "previous face to be near to on the first frame")
        if self.index < 0:
            raise OptionError(f"face index must be >= 0 (0 = leftmost face), got {self.index}")
        uses_point = FaceSelection.POINT in (self.strategy, self.initial)
        if uses_point and (self.point is None or len(self.point) != 2):
            raise OptionError(f"the POINT face selection needs a point (x, y) in pixels, got {self.point!r}")

    def select(self, candidates: np.ndarray, previous: np.ndarray | None) -> int | None:
        """Choose one candidate.

        Args:
            candidates: (N, 478, 2) landmarks of the faces found in a frame.
            previous: (478, 2) the track in the last tracked frame, or None.

        Returns:
            Index into ``candidates``, or None when no candidate fits.
        """
        if len(candidates) == 0:
            return None
        strategy = self.strategy
        if strategy is FaceSelection.NEAREST and previous is None:
            strategy = self.initial
        context = SelectionContext(previous=previous, index=self.index, point=self.point)
        return SELECTORS[strategy](candidates, context)


def is_continuation(face: np.ndarray, previous: np.ndarray, max_jump: float = 1.0, max_scale: float = 1.5) -> bool:
    """Whether a face can be the tracked face of the previous frame (no jump, no sudden size change).

    Args:
        face: (478, 2) candidate landmarks.
        previous: (478, 2) the track in the previous tracked frame.
        max_jump: largest centroid move in face sizes.
        max_scale: largest size ratio (either way).

    Returns:
        True when the face is a plausible continuation.
    """
    size, previous_size = float(face_size(face)), max(float(face_size(previous)), 1e-6)
    jump = float(np.linalg.norm(face.mean(axis=0) - previous.mean(axis=0)))
    return jump <= max_jump * previous_size and 1 / max_scale <= size / previous_size <= max_scale
