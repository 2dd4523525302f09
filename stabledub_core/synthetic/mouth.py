"""The parametric mouth: a mouth state (opening, width, rounding, teeth, tongue) -> lip and aperture shapes -> pixels.

Geometry, in units of the avatar's neutral mouth half-width ``hw`` (pixels), in the mouth's own frame (x along the
line of the corners, y down, origin at the mouth centre):

- outer half-width ``a = hw * (0.85 + 0.35 * width) * (1 - 0.3 * rounding)``;
- aperture (the dark opening) half-height ``h = hw * OPEN_SCALE * opening`` (``OPEN_SCALE = 0.6``), half-width
  ``ai = a * (0.82 - 0.35 * rounding)``; it is drawn at least ``MIN_APERTURE`` (0.6 px) high, the dark line
  between closed lips;
- lip thicknesses (upper, lower) ``hw * (0.16 + 0.22 * rounding)`` and ``hw * (0.2 + 0.26 * rounding)``: a pucker
  pushes the lips out, so they look thicker;
- teeth: the upper teeth fill the top ``0.6 * teeth`` share (at most ``0.3 * hw``) of the aperture; the tongue
  lies at its bottom, its shade going from a dark red (``tongue = 0``) to a light pink (``tongue = 1``).

:func:`mouth_shape` gives the polygons, :func:`draw_mouth` paints them (4x supersampled) into an image, and
``synthetic.estimator`` reads a state back by drawing candidates with the same two functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError

STATE_FIELDS = ("opening", "width", "rounding", "teeth", "tongue")
OPEN_SCALE = 0.6  # aperture half-height at opening 1, in mouth half-widths
TEETH_MAX = 0.3  # tallest visible band of upper teeth, in mouth half-widths
TEETH_SHARE = 0.6  # at teeth = 1 the teeth fill this share of the aperture's height
UPPER_LIP = (0.16, 0.22)  # upper lip thickness = hw * (base + gain * rounding)
LOWER_LIP = (0.20, 0.26)
APERTURE_WIDTH = (0.82, 0.35)  # aperture half-width = a * (base - gain * rounding)
SUPERSAMPLE = 4
MIN_APERTURE = 0.6  # px: the dark line between closed lips
_PROFILE_POINTS = 24


@dataclass
class MouthStates:
    """Per-frame mouth states, each an ``(F,)`` float32 array in [0, 1].

    Args:
        opening: Jaw/lip opening (0 closed).
        width: Horizontal spread (0.5 neutral, 1 wide smile-like spread, 0 narrow).
        rounding: Lip rounding / protrusion (pucker).
        teeth: Share of the aperture the upper teeth fill.
        tongue: Tongue shade (0 dark, 1 light).
    """

    opening: np.ndarray
    width: np.ndarray
    rounding: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray

    def __post_init__(self):
        lengths = {len(np.asarray(getattr(self, name))) for name in STATE_FIELDS}
        if len(lengths) != 1:
            raise InvalidInputError(f"mouth state fields have different lengths: {sorted(lengths)}")
        for name in STATE_FIELDS:
            setattr(self, name, np.clip(np.asarray(getattr(self, name), np.float32), 0.0, 1.0))

    def __len__(self) -> int:
        return len(self.opening)

    def frame(self, index: int) -> dict[str, float]:
        """The state of one frame as a dict."""
        return {name: float(getattr(self, name)[index]) for name in STATE_FIELDS}

    def as_array(self) -> np.ndarray:
        """``(F, 5)`` float32 in :data:`STATE_FIELDS` order."""
        return np.stack([getattr(self, name) for name in STATE_FIELDS], axis=1)

    @classmethod
    def from_array(cls, array: np.ndarray) -> "MouthStates":
        """The states of an ``(F, 5)`` array (:meth:`as_array`)."""
        array = np.asarray(array, np.float32)
        if array.ndim != 2 or array.shape[1] != len(STATE_FIELDS):
            raise InvalidInputError(f"mouth states must be (F, {len(STATE_FIELDS)}), got {array.shape}")
        return cls(*(array[:, i] for i in range(len(STATE_FIELDS))))

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready lists, rounded to 1e-4."""
        return {name: [round(float(v), 4) for v in getattr(self, name)] for name in STATE_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> "MouthStates":
        """The states of :meth:`to_dict`."""
        return cls(*(np.asarray(data[name], np.float32) for name in STATE_FIELDS))


@dataclass(frozen=True)
class MouthPalette:
    """The mouth's colours, RGB 0-255 (as drawn, before the avatar's lighting).

    Args:
        lip: Lip colour.
        interior: Colour of the dark mouth cavity.
        teeth: Teeth colour.
        tongue_dark: Tongue colour at shade 0.
        tongue_light: Tongue colour at shade 1.
    """

    lip: tuple[int, int, int]
    interior: tuple[int, int, int]
    teeth: tuple[int, int, int]
    tongue_dark: tuple[int, int, int]
    tongue_light: tuple[int, int, int]


@dataclass(frozen=True)
class MouthShape:
    """Polygons of one mouth, ``(N, 2)`` float64 pixel coordinates in the image.

    Args:
        outer: Outer lip contour (lips plus aperture).
        aperture: The opening (at least :data:`MIN_APERTURE` px high: the line between closed lips).
        teeth: Upper teeth region (clipped to the aperture when drawn), or None.
        tongue: Tongue region (clipped to the aperture when drawn), or None.
    """

    outer: np.ndarray
    aperture: np.ndarray
    teeth: np.ndarray | None
    tongue: np.ndarray | None


def mouth_dimensions(state: dict[str, float], half_width: float) -> dict[str, float]:
    """The lengths (pixels) of the geometry in the module docstring.

    Args:
        state: One frame's state (:meth:`MouthStates.frame`).
        half_width: The avatar's neutral mouth half-width ``hw`` in pixels.

    Returns:
        ``a`` (outer half-width), ``h`` (aperture half-height), ``ai`` (aperture half-width), ``upper`` and
        ``lower`` (lip thicknesses), ``teeth`` (teeth band height).
    """
    r, o, w = state["rounding"], state["opening"], state["width"]
    a = half_width * (0.85 + 0.35 * w) * (1 - 0.3 * r)
    h = half_width * OPEN_SCALE * o
    return {"a": a, "h": h, "ai": a * (APERTURE_WIDTH[0] - APERTURE_WIDTH[1] * r),
            "upper": half_width * (UPPER_LIP[0] + UPPER_LIP[1] * r),
            "lower": half_width * (LOWER_LIP[0] + LOWER_LIP[1] * r),
            "teeth": min(state["teeth"] * TEETH_SHARE * 2 * h, TEETH_MAX * half_width)}


def _profile(half_width: float, height: float, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """x and y (>= 0) of a lens-shaped half contour over -half_width..half_width: ``height * (1 - |u|^p)^0.5``."""
    u = np.linspace(-1.0, 1.0, _PROFILE_POINTS)
    return u * half_width, height * np.power(np.clip(1 - np.abs(u) ** sharpness, 0, 1), 0.5)


def mouth_shape(state: dict[str, float], centre: tuple[float, float], half_width: float,
                angle: float = 0.0) -> MouthShape:
    """The polygons of one mouth state.

    Args:
        state: One frame's state (:meth:`MouthStates.frame`).
        centre: Mouth centre ``(x, y)`` in image pixels.
        half_width: Neutral mouth half-width ``hw`` in pixels.
        angle: Tilt of the corners' line in radians (image y down).
    """
    d = mouth_dimensions(state, half_width)
    sharp = 2.0 + 1.5 * (1 - state["rounding"])  # flat, wide lips when spread; rounder when puckered
    x, top = _profile(d["a"], d["h"] + d["upper"], sharp)
    _, bottom = _profile(d["a"], d["h"] + d["lower"], sharp)
    outer = np.concatenate([np.stack([x, -top], 1), np.stack([x[::-1], bottom[::-1]], 1)])
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, -sin], [sin, cos]])

    def place(points: np.ndarray) -> np.ndarray:
        return points @ rotate.T + np.asarray(centre, np.float64)

    # The aperture is always drawn, at least MIN_APERTURE px high: a closed mouth shows a thin dark line.
    xi, yi = _profile(d["ai"], max(d["h"], MIN_APERTURE / 2), 2.0 + (1 - state["rounding"]))
    aperture = np.concatenate([np.stack([xi, -yi], 1), np.stack([xi[::-1], yi[::-1]], 1)])
    teeth = tongue = None
    if d["h"] > 0.25:
        if d["teeth"] > 0.25:
            teeth = np.array([[-d["ai"], -d["h"] - 1], [d["ai"], -d["h"] - 1], [d["ai"], -d["h"] + d["teeth"]],
                              [-d["ai"], -d["h"] + d["teeth"]]])
        tongue_x, tongue_y = _profile(d["ai"] * 0.7, d["h"] * 0.45, 2.0)
        tongue = np.stack([tongue_x, d["h"] + 1 - tongue_y], 1)
    aperture, teeth, tongue = (place(p) if p is not None else None for p in (aperture, teeth, tongue))
    return MouthShape(place(outer), aperture, teeth, tongue)


def _fill(mask: np.ndarray, points: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``mask`` (uint8, supersampled) with ``points`` (image pixels) filled at 1."""
    poly = np.round((points - offset) * SUPERSAMPLE).astype(np.int32)
    cv2.fillPoly(mask, [poly], 1)
    return mask


def draw_mouth(image: np.ndarray, shape: MouthShape, palette: MouthPalette, tongue_shade: float) -> np.ndarray:
    """Paint a mouth into an image, antialiased (polygons filled at 4x and averaged down).

    Args:
        image: ``(H, W, 3)`` uint8 RGB; modified in place and returned.
        shape: From :func:`mouth_shape`.
        palette: The avatar's mouth colours.
        tongue_shade: 0 dark .. 1 light.

    Returns:
        ``image``.
    """
    height, width = image.shape[:2]
    lo = np.floor(shape.outer.min(0)) - 2
    hi = np.ceil(shape.outer.max(0)) + 2
    x0, y0 = int(max(lo[0], 0)), int(max(lo[1], 0))
    x1, y1 = int(min(hi[0], width)), int(min(hi[1], height))
    if x1 <= x0 or y1 <= y0:
        return image
    offset = np.array([x0, y0], np.float64)
    size = ((y1 - y0) * SUPERSAMPLE, (x1 - x0) * SUPERSAMPLE)
    # Layers from back to front: each (mask at 4x, RGB colour); later layers cover earlier ones.
    layers = [(_fill(np.zeros(size, np.uint8), shape.outer, offset), palette.lip)]
    aperture = _fill(np.zeros(size, np.uint8), shape.aperture, offset)
    layers.append((aperture, palette.interior))
    shade = float(np.clip(tongue_shade, 0, 1))
    tongue_rgb = tuple((1 - shade) * np.array(palette.tongue_dark) + shade * np.array(palette.tongue_light))
    for polygon, colour in ((shape.tongue, tongue_rgb), (shape.teeth, palette.teeth)):
        if polygon is not None:
            layers.append((_fill(np.zeros(size, np.uint8), polygon, offset) & aperture, colour))
    patch = image[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
    for mask, colour in layers:
        cover = cv2.resize(mask.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)[..., None]
        patch = patch * (1 - cover) + np.asarray(colour, np.float32) * cover
    image[y0:y1, x0:x1] = np.clip(np.round(patch), 0, 255).astype(np.uint8)
    return image
