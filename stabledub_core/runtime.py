"""The ground floor every stage stands on: interruption, progress callbacks and the stage timer.

Nothing here imports the rest of the package, so any layer may use it:

* :class:`Interrupted` is raised when the caller's ``should_stop()`` returns True (Ctrl-C in the CLI, the cancel
  button in ComfyUI); the stages check it between frames, chunks and sampler steps, and writers then leave no file.
* :data:`ProgressCallback` is how every stage reports its progress: ``on_progress(stage, done, total)``.
* :class:`StageTimer` accumulates wall time per named stage (the CLI's ``--report``, the benchmarks).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
StopCheck = Callable[[], bool]


class Interrupted(Exception):
    """The caller asked to stop (its ``should_stop()`` returned True); no partial output is left behind."""


def check_interrupt(should_stop: StopCheck | None) -> None:
    """Raise :class:`Interrupted` if ``should_stop`` is given and returns True.

    Args:
        should_stop: ``None`` or a callable without arguments returning a bool.
    """
    if should_stop is not None and should_stop():
        raise Interrupted("stopped on request")


class StageTimer:
    """Accumulates wall-clock seconds and call counts per named stage."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body of a ``with`` block under ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def reset(self) -> None:
        """Forget all timings."""
        self.seconds.clear()
        self.calls.clear()

    def summary(self, frames: int | None = None) -> dict[str, dict[str, float]]:
        """Totals per stage, with milliseconds per frame when ``frames`` is given.

        Args:
            frames: Number of frames the totals cover.

        Returns:
            ``{stage: {"seconds": s, "calls": n[, "ms_per_frame": m]}}``.
        """
        out = {}
        for name, seconds in self.seconds.items():
            out[name] = {"seconds": seconds, "calls": self.calls[name]}
            if frames:
                out[name]["ms_per_frame"] = 1000.0 * seconds / frames
        return out
