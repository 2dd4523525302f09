"""Per-stage wall-clock accounting (so benchmarks can report where tracking time goes)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Accumulates seconds and call counts per named stage."""

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
            frames: number of frames the totals cover.

        Returns:
            {stage: {"seconds": s, "calls": n[, "ms_per_frame": m]}}.
        """
        out = {}
        for name, seconds in self.seconds.items():
            out[name] = {"seconds": seconds, "calls": self.calls[name]}
            if frames:
                out[name]["ms_per_frame"] = 1000.0 * seconds / frames
        return out
