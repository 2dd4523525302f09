"""Sampler, windowing, compositing, video I/O and the streaming dubbing pipeline."""

from stabledub_core.errors import Interrupted

__all__ = ["Interrupted"]
