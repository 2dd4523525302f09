"""Occluders in front of the mouth: a microphone, a hand or a bar, with their exact pixel masks.

An occluder is placed relative to the mouth (in units of the mouth half-width ``hw``) and covers part of it — one
corner or the lower half, never the whole mouth, so the face stays trackable — during a time interval of the clip.
It is drawn antialiased (4x supersampled); its ground-truth mask is where it covers at least half a pixel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from stabledub_core.errors import OptionError

KINDS = ("microphone", "hand", "bar")
SUPERSAMPLE = 4


@dataclass(frozen=True)
class OccluderSpec:
    """One occluder.

    Args:
        kind: A name of :data:`KINDS`.
        start_s: It appears at this time (seconds).
        end_s: And is gone from this time on.
        side: -1 (image left of the mouth) or +1 (image right).
        offset: ``(dx, dy)`` of its anchor from the mouth centre, in mouth half-widths (dx times ``side``).
        extent: Its size, in mouth half-widths (microphone head radius, hand palm half-height, bar half-width).
        angle: Tilt in radians.
        colour: RGB.
    """

    kind: str
    start_s: float
    end_s: float
    side: int
    offset: tuple[float, float]
    extent: float
    angle: float
    colour: tuple[int, int, int]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise OptionError(f"unknown occluder kind {self.kind!r}: choose from {', '.join(KINDS)}")

    def active(self, t: float) -> bool:
        """Whether it is in view at time ``t``."""
        return self.start_s <= t < self.end_s

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "OccluderSpec":
        """The spec of :meth:`to_dict`."""
        return cls(data["kind"], data["start_s"], data["end_s"], data["side"], tuple(data["offset"]),
                   data["extent"], data["angle"], tuple(data["colour"]))


def sample_occluder(rng: np.random.Generator, duration_s: float, skin: tuple[int, int, int],
                    kind: str | None = None) -> OccluderSpec:
    """A random occluder in view for 40-100 % of a clip.

    Args:
        rng: The clip's random generator.
        duration_s: The clip's length.
        skin: The avatar's skin colour (a hand is a similar one).
        kind: Force a kind, or None to draw one.
    """
    kind = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
    length = duration_s * float(rng.uniform(0.4, 1.0))
    start = float(rng.uniform(0, duration_s - length))
    side = int(rng.choice([-1, 1]))
    if kind == "microphone":
        offset, extent = (float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.25, 0.55))), float(rng.uniform(0.5, 0.7))
        colour = tuple(int(v) for v in rng.integers(20, 90, 3))
    elif kind == "hand":
        offset, extent = (float(rng.uniform(1.6, 1.9)), float(rng.uniform(0.1, 0.4))), float(rng.uniform(0.7, 0.9))
        colour = tuple(int(np.clip(c * rng.uniform(0.85, 1.1), 0, 255)) for c in skin)
    else:
        offset, extent = (float(rng.uniform(0.35, 0.65)), 0.0), float(rng.uniform(0.18, 0.3))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    return OccluderSpec(kind, start, start + length, side, offset, extent, float(rng.uniform(-0.3, 0.3)), colour)


def _capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> None:
    cv2.line(mask, tuple(np.round(a * SUPERSAMPLE).astype(int)), tuple(np.round(b * SUPERSAMPLE).astype(int)), 1,
             thickness=max(1, int(round(2 * radius * SUPERSAMPLE))))


def occluder_coverage(spec: OccluderSpec, size: tuple[int, int], mouth_centre: tuple[float, float],
                      half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Where an occluder covers the frame and how it is shaded.

    Args:
        spec: The occluder.
        size: ``(H, W)`` of the frame.
        mouth_centre: ``(x, y)`` of the mouth in the frame.
        half_width: The mouth half-width ``hw`` in frame pixels.

    Returns:
        ``(coverage (H, W) float32 0-1, shade (H, W) float32)``: the colour drawn is ``colour * shade``.
    """
    height, width = size
    big = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    shade = np.ones((height * SUPERSAMPLE, width * SUPERSAMPLE), np.float32)
    hw = half_width
    anchor = np.array(mouth_centre, np.float64) + hw * np.array([spec.offset[0] * spec.side, spec.offset[1]])
    down = np.array([math.sin(spec.angle), math.cos(spec.angle)])  # the direction the occluder extends to
    if spec.kind == "microphone":
        radius = spec.extent * hw
        _capsule(big, anchor, anchor + down * (height + width), radius * 0.28)
        cv2.circle(big, tuple(np.round(anchor * SUPERSAMPLE).astype(int)), int(round(radius * SUPERSAMPLE)), 1, -1)
        ys = np.arange(big.shape[0], dtype=np.float32)[:, None] / SUPERSAMPLE
        xs = np.arange(big.shape[1], dtype=np.float32)[None] / SUPERSAMPLE
        grille = 0.75 + 0.25 * ((np.floor(xs / 2.0) + np.floor(ys / 2.0)) % 2)  # a mesh
        inside = ((xs - anchor[0]) ** 2 + (ys - anchor[1]) ** 2) < radius ** 2
        shade = np.where(inside, grille, 1.0).astype(np.float32)
    elif spec.kind == "hand":
        # A palm beside the mouth and four fingers reaching over its corner (towards the mouth centre).
        towards = np.array([-spec.side * math.cos(spec.angle), math.sin(spec.angle)])
        across = np.array([-towards[1], towards[0]])
        palm = anchor
        axes = (int(round(spec.extent * 0.9 * hw * SUPERSAMPLE)), int(round(spec.extent * 1.5 * hw * SUPERSAMPLE)))
        cv2.ellipse(big, tuple(np.round(palm * SUPERSAMPLE).astype(int)), axes, math.degrees(spec.angle), 0, 360,
                    1, -1)
        for i in range(4):
            base = palm + across * (i - 1.5) * 0.55 * spec.extent * hw
            length = (1.3 + 0.35 * (1.5 - abs(i - 1.5))) * spec.extent * hw
            _capsule(big, base, base + towards * length, 0.24 * spec.extent * hw)
        _capsule(big, palm, palm + np.array([spec.side * 0.3 * hw, height]), 0.8 * spec.extent * hw)  # the wrist
        ys = np.arange(big.shape[0], dtype=np.float32)[:, None] / SUPERSAMPLE
        shade = np.broadcast_to(1.05 - 0.15 * np.clip((ys - palm[1]) / (3 * hw), 0, 1),
                                big.shape).astype(np.float32)
    else:
        top = anchor - down * 0.9 * hw
        _capsule(big, top, top + down * (height + width), spec.extent * hw)
    coverage = cv2.resize(big.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    shade = cv2.resize(shade, (width, height), interpolation=cv2.INTER_AREA)
    return coverage, shade


def draw_occluder(frame: np.ndarray, spec: OccluderSpec, mouth_centre: tuple[float, float],
                  half_width: float) -> np.ndarray:
    """Draw an occluder into a frame.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB; modified in place.
        spec: The occluder.
        mouth_centre: ``(x, y)`` of the mouth in the frame.
        half_width: The mouth half-width in frame pixels.

    Returns:
        ``(H, W)`` bool: its ground-truth mask (coverage >= 0.5).
    """
    coverage, shade = occluder_coverage(spec, frame.shape[:2], mouth_centre, half_width)
    colour = np.array(spec.colour, np.float32)[None, None] * shade[..., None]
    mixed = frame.astype(np.float32) * (1 - coverage[..., None]) + colour * coverage[..., None]
    frame[...] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return coverage >= 0.5
