"""Inference pipeline: sampler with dual CFG, temporal windows, compositing, video I/O."""


class Interrupted(Exception):
    """Raised by the sampler when its ``should_stop()`` check returns True (e.g. the user cancelled)."""
