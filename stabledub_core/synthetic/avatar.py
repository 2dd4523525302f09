"""Avatars: the photo turned into many different talking heads, reproducible from a seed.

:func:`sample_avatar` draws an :class:`AvatarParams` (all plain numbers, saved in each clip's metadata) from a
seed: face shape (width, height, jaw), skin and hair colours, lip / teeth / tongue / mouth-interior colours,
a background, a shirt, the lighting, where the face sits in the frame, the head motion and the lip habit.
:func:`build_avatar` renders the still parts once: the *canvas*, the person (photo warped to the face shape,
recoloured, lit, with the shirt) and its alpha at the output size, the background, and the mouth's anchor in the
canvas. ``synthetic.render`` then draws the mouth into the canvas, moves the head and composites each frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from stabledub_core.errors import OptionError
from stabledub_core.synthetic import photo
from stabledub_core.synthetic.habit import LipHabit, sample_habit
from stabledub_core.synthetic.mouth import MouthPalette
from stabledub_core.synthetic.motion import HeadMotion, sample_motion

SKIN_TONES = ((250, 222, 200), (236, 192, 160), (222, 170, 130), (196, 140, 100), (160, 108, 74), (118, 78, 54),
              (90, 60, 45))
HAIR_COLOURS = ((28, 24, 22), (70, 45, 30), (120, 80, 45), (200, 165, 105), (150, 65, 35), (165, 165, 165),
                (60, 60, 140), (170, 60, 120))
LIP_BASES = ((175, 70, 85), (150, 60, 65), (195, 95, 110), (130, 55, 60), (185, 60, 60))
BACKGROUNDS = ("gradient", "stripes", "blobs", "grid")
BASE_SCALE = 1.0 / 265.0  # canvas pixels per photo pixel, times the output size
MIN_SIZE = 128


def _rgb(values) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(float(v)), 0, 255)) for v in values)


@dataclass
class AvatarParams:
    """Everything that makes one avatar (JSON-ready; see :func:`sample_avatar` for the ranges).

    Args:
        seed: The seed it was drawn from.
        size: Output frame side in pixels.
        face_scale: Face size relative to the default framing.
        offset: ``(dx, dy)`` face centre offset, as a fraction of the frame.
        shape: ``(sx, sy, jaw)``: horizontal and vertical stretch of the face, jaw widening.
        skin: Skin colour RGB.
        hair: Hair colour RGB.
        shirt: Shirt colour RGB.
        palette: The mouth colours (before lighting).
        background: ``{"kind": ..., "colours": [...], "angle": ..., "period": ..., "seed": ...}``.
        light: ``{"angle": radians, "strength": ..., "brightness": ..., "tint": [r, g, b]}``.
        motion: The head motion.
        habit: The lip habit.
    """

    seed: int
    size: int
    face_scale: float
    offset: tuple[float, float]
    shape: tuple[float, float, float]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    palette: MouthPalette
    background: dict
    light: dict
    motion: HeadMotion
    habit: LipHabit

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        out = asdict(self)
        out["motion"] = self.motion.to_dict()
        out["habit"] = self.habit.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "AvatarParams":
        """The params of :meth:`to_dict`."""
        data = dict(data)
        data["palette"] = MouthPalette(**{k: tuple(v) for k, v in data["palette"].items()})
        data["motion"] = HeadMotion.from_dict(data["motion"])
        data["habit"] = LipHabit.from_dict(data["habit"])
        for name in ("offset", "shape", "skin", "hair", "shirt"):
            data[name] = tuple(data[name])
        return cls(**data)


def sample_avatar(seed: int, size: int = 256, archetype: str | None = None) -> AvatarParams:
    """Draw an avatar from a seed.

    Args:
        seed: Any integer; the same seed always gives the same avatar.
        size: Output frame side in pixels (>= 128).
        archetype: Force a lip habit archetype (``synthetic.habit.ARCHETYPES``), or None to draw one.

    Returns:
        The :class:`AvatarParams`.
    """
    if size < MIN_SIZE:
        raise OptionError(f"avatar size must be >= {MIN_SIZE} px (the face must stay large enough to track), "
                          f"got {size}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919])
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(tone)
    skin = (1 - (tone - low)) * np.array(SKIN_TONES[low]) + (tone - low) * np.array(SKIN_TONES[low + 1])
    skin = skin * rng.uniform(0.96, 1.04, 3)
    hair = np.array(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]) * rng.uniform(0.85, 1.15, 3)
    lip = 0.45 * skin + 0.55 * np.array(LIP_BASES[int(rng.integers(len(LIP_BASES)))]) * rng.uniform(0.9, 1.1, 3)
    lip = lip * (0.8 if tone < 4 else 0.75)
    palette = MouthPalette(lip=_rgb(lip), interior=_rgb(rng.uniform([25, 5, 8], [60, 20, 28])),
                           teeth=_rgb(rng.uniform([215, 210, 190], [245, 238, 225])),
                           tongue_dark=_rgb(rng.uniform([95, 25, 35], [130, 45, 55])),
                           tongue_light=_rgb(rng.uniform([190, 95, 100], [225, 125, 135])))
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    background = {"kind": kind, "colours": [list(_rgb(rng.uniform(20, 235, 3))) for _ in range(3)],
                  "angle": float(rng.uniform(0, math.pi)), "period": float(rng.uniform(0.08, 0.3)),
                  "seed": int(rng.integers(2 ** 31))}
    light = {"angle": float(rng.uniform(0, 2 * math.pi)), "strength": float(rng.uniform(0.0, 0.3)),
             "brightness": float(rng.uniform(0.88, 1.08)), "tint": [float(v) for v in rng.uniform(0.93, 1.07, 3)]}
    return AvatarParams(
        seed=int(seed), size=int(size), face_scale=float(rng.uniform(0.9, 1.08)),
        offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.03, 0.03))),
        shape=(float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.93, 1.07)), float(rng.uniform(-0.06, 0.1))),
        skin=_rgb(skin), hair=_rgb(hair), shirt=_rgb(rng.uniform(15, 240, 3)), palette=palette,
        background=background, light=light, motion=sample_motion(rng), habit=sample_habit(rng, archetype))


# ------------------------------------------------------------------------------------------- the still layers

@dataclass
class Avatar:
    """The still layers of an avatar at its output size S (:func:`build_avatar`).

    Args:
        params: What it was built from.
        canvas: ``(S, S, 3)`` uint8 RGB, the person (mouth painted out), recoloured and lit.
        alpha: ``(S, S)`` float32 0-1, the person's coverage.
        background: ``(S, S, 3)`` uint8 RGB.
        mouth_centre: ``(x, y)`` canvas pixels.
        mouth_half_width: Neutral mouth half-width ``hw`` in canvas pixels.
        mouth_angle: Tilt of the mouth corners' line, radians.
        pivot: ``(x, y)`` canvas point the head turns about (the neck).
        mouth_light: ``(3,)`` the lighting's RGB gain at the mouth (the mouth is drawn with ``palette * gain``).
    """

    params: AvatarParams
    canvas: np.ndarray
    alpha: np.ndarray
    background: np.ndarray
    mouth_centre: tuple[float, float]
    mouth_half_width: float
    mouth_angle: float
    pivot: tuple[float, float]
    mouth_light: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))

    @property
    def lit_palette(self) -> MouthPalette:
        """The mouth colours as they appear in the frames (palette times the lighting at the mouth)."""
        p = self.params.palette
        return MouthPalette(*(_rgb(np.array(c) * self.mouth_light) for c in
                              (p.lip, p.interior, p.teeth, p.tongue_dark, p.tongue_light)))


class FaceShape:
    """The map between photo pixels and canvas pixels of one avatar (framing plus face-shape warp).

    A photo point ``q`` goes to ``u``: ``u_y = cy + (q_y - cy) * sy``, ``u_x = cx + (q_x - cx) * sx * (1 + jaw *
    g(q_y))`` about the face centre ``(cx, cy)``, with ``g`` rising smoothly from 0 at the nose to 1 at the chin;
    then ``p = c + (u - face_centre) * k`` with ``k = size * face_scale / 265`` and ``c`` the framed face centre.

    Args:
        params: The avatar.
    """

    def __init__(self, params: AvatarParams):
        self.sx, self.sy, self.jaw = params.shape
        self.k = params.size * params.face_scale * BASE_SCALE
        self.centre = np.array(photo.FACE_CENTRE, np.float64)
        self.out_centre = np.array([params.size * (0.5 + params.offset[0]),
                                    params.size * (0.46 + params.offset[1])], np.float64)

    def _g(self, y: np.ndarray) -> np.ndarray:
        t = np.clip((y - photo.NOSE_Y) / (photo.CHIN_Y - photo.NOSE_Y), 0, 1)
        return t * t * (3 - 2 * t)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` photo pixels -> canvas pixels."""
        q = np.asarray(points, np.float64).reshape(-1, 2)
        cx, cy = self.centre
        u = np.stack([cx + (q[:, 0] - cx) * self.sx * (1 + self.jaw * self._g(q[:, 1])),
                      cy + (q[:, 1] - cy) * self.sy], 1)
        return self.out_centre + (u - self.centre) * self.k

    def inverse_maps(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(S, S)`` float32 photo x and y of every canvas pixel (for ``cv2.remap``)."""
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
        u = self.centre + (np.stack([xs, ys], -1) - self.out_centre) / self.k
        cx, cy = self.centre
        qy = cy + (u[..., 1] - cy) / self.sy
        qx = cx + (u[..., 0] - cx) / (self.sx * (1 + self.jaw * self._g(qy)))
        return qx.astype(np.float32), qy.astype(np.float32)


def render_background(spec: dict, size: int) -> np.ndarray:
    """``(S, S, 3)`` uint8 RGB background of a spec (``AvatarParams.background``)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c = [np.array(colour, np.float32) for colour in spec["colours"]]
    along = xs * math.cos(spec["angle"]) + ys * math.sin(spec["angle"])  # (S, S)
    kind = spec["kind"]
    if kind == "gradient":
        t = np.clip(along / max(abs(math.cos(spec["angle"])) + abs(math.sin(spec["angle"])), 1e-6), 0, 1)[..., None]
        image = c[0] * (1 - t) + c[1] * t
    elif kind == "stripes":
        t = (0.5 + 0.5 * np.sin(2 * math.pi * along / spec["period"]))[..., None]
        image = c[0] * (1 - t) + c[1] * t
    elif kind == "grid":
        across = -xs * math.sin(spec["angle"]) + ys * math.cos(spec["angle"])
        cells = (np.floor(along / spec["period"]) + np.floor(across / spec["period"])) % 2
        image = np.where(cells[..., None] > 0, c[0], c[1])
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    elif kind == "blobs":
        rng = np.random.default_rng(spec["seed"])
        image = np.broadcast_to(c[0], (size, size, 3)).astype(np.float32).copy()
        for _ in range(6):
            centre, radius = rng.uniform(0, 1, 2), rng.uniform(0.08, 0.3)
            weight = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * radius ** 2))[..., None]
            image = image * (1 - weight) + c[1 + int(rng.integers(2))] * weight
    else:
        raise OptionError(f"unknown background kind {kind!r}: choose from {', '.join(BACKGROUNDS)}")
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _recolour(lab: np.ndarray, weight: np.ndarray, source: np.ndarray, target_rgb, contrast: float) -> np.ndarray:
    """Move the colours of ``weight``-ed pixels from ``source`` (LAB mean) to ``target_rgb``, keeping their
    detail (deviations from the mean scaled by ``contrast``)."""
    target = photo.to_lab(np.array(target_rgb, np.float32))
    moved = target + (lab - source) * contrast
    return lab + (moved - lab) * weight[..., None]


def build_avatar(params: AvatarParams) -> Avatar:
    """Render the still layers of an avatar.

    Args:
        params: From :func:`sample_avatar` (or a clip's metadata).

    Returns:
        The :class:`Avatar`.
    """
    layers = photo.photo_layers()
    size = params.size
    shape = FaceShape(params)
    map_x, map_y = shape.inverse_maps(size)

    def warp(image: np.ndarray) -> np.ndarray:
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    lab = photo.to_lab(layers.image)
    lab = _recolour(lab, layers.skin, layers.skin_lab, params.skin, 1.0)
    lab = _recolour(lab, layers.hair, layers.hair_lab, params.hair, 0.6)
    person = warp(photo.to_rgb(lab))  # (S, S, 3) float32
    alpha = warp(layers.matte)
    # The shirt: below the collar line, a wide rounded shape, so the frame's bottom shows shoulders.
    collar = shape.forward([[photo.NECK[0], photo.COLLAR_Y]])[0]
    shirt = np.zeros((size, size), np.uint8)
    cv2.ellipse(shirt, (int(round(collar[0])), int(round(collar[1] + size * 0.35))),
                (int(size * 0.55), int(size * 0.4)), 0, 0, 360, 1, -1)
    shirt = cv2.GaussianBlur(shirt.astype(np.float32), (0, 0), 1.0)
    person = person * (1 - shirt[..., None]) + np.array(params.shirt, np.float32) * shirt[..., None]
    alpha = np.maximum(alpha, shirt)
    # Lighting: a directional ramp across the face, a brightness and a colour tint.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    light = params.light
    face_centre = shape.out_centre
    ramp = ((xs - face_centre[0]) * math.cos(light["angle"]) + (ys - face_centre[1]) * math.sin(light["angle"]))
    gain = light["brightness"] * (1 + light["strength"] * np.clip(ramp / (0.3 * size), -1, 1))  # (S, S)
    gain = gain[..., None] * np.array(light["tint"], np.float32)  # (S, S, 3)
    person = np.clip(person * gain, 0, 255)

    corners = shape.forward(photo.MOUTH_CORNERS)
    centre = shape.forward([photo.MOUTH_CENTRE])[0]
    pivot = shape.forward([photo.NECK])[0]
    mx, my = int(np.clip(round(centre[0]), 0, size - 1)), int(np.clip(round(centre[1]), 0, size - 1))
    return Avatar(params=params, canvas=np.round(person).astype(np.uint8), alpha=np.clip(alpha, 0, 1),
                  background=render_background(params.background, size),
                  mouth_centre=(float(centre[0]), float(centre[1])),
                  mouth_half_width=float(np.linalg.norm(corners[1] - corners[0]) / 2),
                  mouth_angle=float(math.atan2(corners[1, 1] - corners[0, 1], corners[1, 0] - corners[0, 0])),
                  pivot=(float(pivot[0]), float(pivot[1])), mouth_light=gain[my, mx].astype(np.float32))
