"""Configuration of mask, union-mask and crop-box planning."""

from __future__ import annotations

from dataclasses import dataclass

from stabledub_core.errors import OptionError


@dataclass
class MaskConfig:
    """Geometry of Mc, Mu and the crop boxes; all lengths are relative, so one config fits any frame size.

    Attributes:
        coarse_dilation: Mc widens the detailed mask by this fraction of the face width (cheek to cheek).
        feather: Mu's soft edge, outside its hard rectangle, as a fraction of the rectangle's longer side.
        box_scale: side of the square crop box as a multiple of the longer side of Mu's feathered rectangle.
        box_shift_y: vertical offset of the box centre from Mu's centre, as a fraction of the box side (negative:
            up, towards the eyes, so the crop shows the whole face rather than the neck).
        box_smoothing: weight of the neighbouring windows in the exponential smoothing of box centre and size
            across windows (0: no smoothing, each window's own box).
        min_box: smallest crop box side in source pixels.
        max_growth: largest area of a window's union rectangle as a multiple of its largest single-frame Mc
            rectangle. A face moving fast across a window widens the union into a band over the background; above
            this ratio the window's masks follow the face instead (see :mod:`stabledub_core.masks.crop_spans`).
    """

    coarse_dilation: float = 0.06
    feather: float = 0.12
    box_scale: float = 1.8
    box_shift_y: float = -0.12
    box_smoothing: float = 0.6
    min_box: int = 32
    max_growth: float = 1.5

    def __post_init__(self) -> None:
        checks = {
            "coarse_dilation": self.coarse_dilation >= 0,
            "feather": self.feather >= 0,
            "box_scale": self.box_scale >= 1,
            "box_smoothing": 0 <= self.box_smoothing < 1,
            "min_box": self.min_box >= 1,
            "max_growth": self.max_growth >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise OptionError(f"invalid MaskConfig values for {bad}: coarse_dilation >= 0, feather >= 0, "
                              f"box_scale >= 1, 0 <= box_smoothing < 1, min_box >= 1, max_growth >= 1 "
                              f"(got {self})")
