"""The mouth-state estimator: (opening, width, rounding) read back from the pixels of a frame by analysis by
synthesis: the world's own mouth renderer draws candidate states until one looks like the frame.

It works on any frame of a world clip: one the world drew, or one a model generated for it (a dub keeps the
source's head pose, so the clip's per-frame mouth poses from its metadata locate the mouth). Per frame:

1. **Patch**: the frame is warped (``cv2.warpAffine``, bilinear) into an upright patch centred on the mouth pose
   ``(x, y, hw, tilt)``, scaled so that the neutral half-width ``hw`` is :data:`PATCH_HW` pixels, ``4 hw`` wide and
   ``3 hw`` high, then halved (``INTER_AREA``) for the fit.
2. **Model** (:func:`render_candidate`): ``synthetic.mouth`` draws a state (opening, width, rounding, teeth, tongue)
   into the same patch with the clip's lit palette, on the patch's own skin (the patch with the largest mouth the
   renderer draws inpainted from its surround, so the face's shading and a nearby background are kept), and blurs
   it with a Gaussian of ``sigma`` patch pixels. The blur is a free
   parameter because what is read is rarely sharp: a codec, an autoencoder or a sampler softens the mouth, and a
   reading that thresholds colours then loses a small opening altogether (``bench/estimator_blur.py``).
3. **Fit** (:func:`fit_patch`): the candidate with the smallest mean squared RGB difference inside an ellipse
   about the mouth (``1.55 hw`` by ``1.3 hw``). First a joint grid over opening, rounding and blur (a closed mouth
   with thick lips and a half-open one with thin lips are far apart in the state but both fit a dark band, so a
   search from one start falls into the wrong one), then coordinate passes over every parameter, then a pattern
   search with halving steps.

Teeth and tongue shade are fitted too (they change the pixels) but not reported. A frame whose mouth region is
covered by a known occluder (its ground-truth mask over more than ``max_occluded`` of the patch's central box) is
marked invalid; its estimate is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError
from stabledub_core.synthetic.mouth import STATE_FIELDS, MouthPalette, draw_mouth, mouth_shape

PATCH_HW = 32  # neutral mouth half-width in patch pixels
PATCH_SIZE = (4 * PATCH_HW, 3 * PATCH_HW)  # (width, height)
FIT_SCALE = 2  # the fit works on the patch downsampled by this
_FIT_W, _FIT_H, _FIT_HW = PATCH_SIZE[0] // FIT_SCALE, PATCH_SIZE[1] // FIT_SCALE, PATCH_HW / FIT_SCALE
_FINE, _COARSE = np.linspace(0, 1, 11), np.linspace(0, 1, 6)  # grids of a state field's values
_GRID_BLUR = (0.0, 1.0, 2.25)  # fit-patch pixels
_BLURS = (0.0, 0.5, 1.0, 1.5, 2.25, 3.0, 4.0)
_START = {"width": 0.5, "teeth": 0.3, "tongue": 0.5}
# pattern-search moves: each field alone, and width, rounding and opening in pairs (their effects on the outline
# overlap: a wider mouth or a less rounded one both move the corners out)
_PAIRS = (("width", "rounding"), ("opening", "rounding"), ("opening", "width"))
_MOVES = ([((name, sign),) for name in STATE_FIELDS for sign in (-1, 1)]
          + [((a, sa), (b, sb)) for a, b in _PAIRS for sa in (-1, 1) for sb in (-1, 1)])


def _ellipse(rx: float, ry: float) -> np.ndarray:
    y, x = np.mgrid[0:_FIT_H, 0:_FIT_W] + 0.5
    return ((x - _FIT_W / 2) / (rx * _FIT_HW)) ** 2 + ((y - _FIT_H / 2) / (ry * _FIT_HW)) ** 2 <= 1


_REGION = _ellipse(1.55, 1.3)  # the pixels compared
_LARGEST_MOUTH = _ellipse(1.35, 1.2).astype(np.uint8)  # holds any mouth the renderer draws (inpainted away)


@dataclass
class MouthEstimate:
    """Estimated mouth states, each ``(F,)`` float32 (NaN where invalid).

    Args:
        opening: Estimated opening.
        width: Estimated width.
        rounding: Estimated rounding.
        valid: ``(F,)`` bool, False where an occluder hid the mouth.
    """

    opening: np.ndarray
    width: np.ndarray
    rounding: np.ndarray
    valid: np.ndarray


def patch_matrix(pose) -> np.ndarray:
    """``(2, 3)`` affine from frame pixels to the upright mouth patch of a pose ``(x, y, hw, tilt)``."""
    x, y, hw, tilt = (float(v) for v in pose)
    if not hw > 0:
        raise InvalidInputError(f"mouth half-width must be > 0 px, got {hw}")
    scale = PATCH_HW / hw
    cos, sin = math.cos(-tilt) * scale, math.sin(-tilt) * scale
    rotate = np.array([[cos, -sin], [sin, cos]])
    centre = np.array([PATCH_SIZE[0] / 2, PATCH_SIZE[1] / 2])
    return np.hstack([rotate, (centre - rotate @ np.array([x, y]))[:, None]])


def mouthless(small: np.ndarray) -> np.ndarray:
    """The fit patch ``(h, w, 3)`` uint8 with the largest mouth's ellipse inpainted from its surround (Telea)."""
    return cv2.inpaint(np.ascontiguousarray(small), _LARGEST_MOUTH, 3, cv2.INPAINT_TELEA)


def render_candidate(state: dict[str, float], skin: np.ndarray, palette: MouthPalette, sigma: float) -> np.ndarray:
    """``(h, w, 3)`` float32: a mouth state drawn on ``skin`` (a :func:`mouthless` patch), blurred by ``sigma`` px."""
    image = skin.copy()
    draw_mouth(image, mouth_shape(state, (_FIT_W / 2, _FIT_H / 2), _FIT_HW, 0.0), palette, state["tongue"])
    image = image.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def fit_patch(patch: np.ndarray, palette: MouthPalette) -> tuple[dict[str, float], float]:
    """The mouth state and blur that best redraw an upright mouth patch (step 3 of the module docstring).

    Args:
        patch: ``(PATCH_SIZE[1], PATCH_SIZE[0], 3)`` uint8 RGB (:func:`patch_matrix`).
        palette: The clip's lit mouth palette.

    Returns:
        (the state: a value in [0, 1] for each of ``synthetic.mouth.STATE_FIELDS``, the blur sigma in fit pixels).
    """
    small = cv2.resize(patch, (_FIT_W, _FIT_H), interpolation=cv2.INTER_AREA)
    skin = mouthless(small)
    observed = small.astype(np.float32)[_REGION]  # (N, 3)

    def cost(state: dict[str, float], sigma: float) -> float:
        return float(((render_candidate(state, skin, palette, sigma)[_REGION] - observed) ** 2).mean())

    best = (math.inf, {}, 0.0)  # (cost, state, sigma)

    def consider(state: dict[str, float], sigma: float) -> None:
        nonlocal best
        value = cost(state, sigma)
        if value < best[0]:
            best = (value, state, sigma)

    for opening in _FINE:
        for rounding in _COARSE:
            for sigma in _GRID_BLUR:
                consider({**_START, "opening": float(opening), "rounding": float(rounding)}, sigma)
    for _ in range(2):  # coordinate passes
        for name in STATE_FIELDS:
            for value in _FINE if name in ("opening", "rounding") else _COARSE:
                consider({**best[1], name: float(value)}, best[2])
        for sigma in _BLURS:
            consider(best[1], sigma)
    for step in (0.1, 0.05, 0.025, 0.0125):  # pattern search with halving steps, single and paired moves
        for _ in range(3):  # at each step size until no move helps (at most 3 rounds)
            before = best[0]
            for move in _MOVES:
                consider({**best[1], **{name: float(np.clip(best[1][name] + sign * step, 0, 1))
                                        for name, sign in move}}, best[2])
            if best[0] == before:
                break
    return best[1], best[2]


def estimate_frame(frame: np.ndarray, pose, palette: MouthPalette) -> tuple[float, float, float]:
    """``(opening, width, rounding)`` of one frame.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB.
        pose: The mouth pose ``(x, y, hw, tilt)`` in frame pixels (a clip's ``mouth_poses`` row).
        palette: The clip's lit mouth palette (metadata ``lit_palette``).
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InvalidInputError(f"the estimator needs (H, W, 3) uint8 RGB frames, got {frame.shape} {frame.dtype}")
    patch = cv2.warpAffine(frame, patch_matrix(pose), PATCH_SIZE, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    state, _ = fit_patch(patch, palette)
    return state["opening"], state["width"], state["rounding"]


def occluded_share(mask: np.ndarray, pose) -> float:
    """Share of the patch's central box (``2 hw`` x ``1.2 hw`` about the mouth) an ``(H, W)`` bool mask covers."""
    patch = cv2.warpAffine(mask.astype(np.uint8), patch_matrix(pose), PATCH_SIZE, flags=cv2.INTER_NEAREST)
    w, h = PATCH_SIZE
    box = patch[int(h / 2 - 0.6 * PATCH_HW):int(h / 2 + 0.6 * PATCH_HW), int(w / 2 - PATCH_HW):int(w / 2 + PATCH_HW)]
    return float(box.mean())


def estimate_clip(frames: np.ndarray, poses: np.ndarray, palette: MouthPalette,
                  occluder_masks: np.ndarray | None = None, max_occluded: float = 0.02) -> MouthEstimate:
    """Estimate the mouth state of every frame of a clip.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB (drawn by the world or generated by a model).
        poses: ``(F, 4)`` mouth poses (metadata ``mouth_poses``).
        palette: The lit mouth palette (metadata ``lit_palette``).
        occluder_masks: ``(F, H, W)`` bool ground-truth occluder masks, or None (every frame valid).
        max_occluded: A frame whose mouth box is covered more than this is invalid.

    Returns:
        The :class:`MouthEstimate`.
    """
    if len(frames) != len(poses):
        raise InvalidInputError(f"{len(frames)} frames but {len(poses)} mouth poses: give one pose per frame")
    out = np.full((len(frames), 3), np.nan, np.float32)
    valid = np.ones(len(frames), bool)
    for k, (frame, pose) in enumerate(zip(frames, poses)):
        if occluder_masks is not None and occluded_share(occluder_masks[k], pose) > max_occluded:
            valid[k] = False
            continue
        out[k] = estimate_frame(frame, pose, palette)
    valid &= ~np.isnan(out).any(axis=1)
    return MouthEstimate(out[:, 0], out[:, 1], out[:, 2], valid)
