"""StableDub core library: models, face tracking, masks, audio, pipeline and training.

This package never imports ComfyUI; the ComfyUI adapters live in ``nodes/``.
"""

__version__ = "0.1.0"
