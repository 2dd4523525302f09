"""The mouth-state estimator: (opening, width, rounding) read back from the pixels of a frame.

It works on any frame of a world clip: one the world drew, or one a model generated for it (a dub keeps the
source's head pose, so the clip's per-frame mouth poses from its metadata locate the mouth). Per frame:

1. **Patch**: the frame is warped (``cv2.warpAffine``, bilinear) into an upright patch centred on the mouth pose
   ``(x, y, hw, tilt)``, scaled so that the neutral half-width ``hw`` is :data:`PATCH_HW` pixels, ``4 hw`` wide and
   ``3 hw`` high.
2. **Memberships** (:func:`memberships`): weighted CIELAB distances of every pixel to prototype colours: the
   skin (medians of four boxes just outside the largest mouth the renderer draws, so the local shading is known)
   and the clip's lit mouth palette (lip; aperture = cavity, teeth, tongue dark / mid / light). ``aperture`` is
   the pixel's share between lip and aperture colours (lightness first: it keeps full resolution in a yuv420p
   video), ``mouth`` its share between skin and the mouth colours; an antialiased edge pixel gets a fraction.
3. **Measures** in patch pixels (:func:`measure_patch`), along the central column (averaged over ``hw / 4``) and
   the central row:

   - aperture half-height ``h``: the summed ``aperture`` membership from the centre upwards (the upper half holds
     cavity and teeth; the tongue, whose colour may be close to the lips', lies at the bottom);
   - outer edges (top, bottom, left, right): past the aperture, the run of ``mouth >= 0.75``, and the four pixels
     about its edge unmixed linearly between the lip colour and the skin just beyond (an edge blurred by
     antialiasing or chroma subsampling counts by its share): lip thickness = top + bottom - 2 ``h``, outer
     half-width ``a`` = the mean of left and right;
   - aperture half-width ``ai``: the summed ``aperture`` membership along the central row.
4. **Inversion**: ``synthetic.mouth.state_from_measures`` turns ``a``, ``h``, the lip thickness and ``ai`` into
   (opening, width, rounding), inverting the renderer's geometry formulas (rounding: the mean of its reading from
   the lip thickness and from ``ai / a``).

A frame whose mouth region is covered by a known occluder (its ground-truth mask over more than
``max_occluded`` of the patch's central box) is marked invalid; its estimate is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError
from stabledub_core.synthetic.mouth import MouthPalette, state_from_measures
from stabledub_core.synthetic.photo import to_lab

PATCH_HW = 32  # neutral mouth half-width in patch pixels
PATCH_SIZE = (4 * PATCH_HW, 3 * PATCH_HW)  # (width, height)
LIP, INTERIOR, TEETH, TONGUE = range(4)
LAB_WEIGHTS = np.array([0.5, 1.0, 1.0], np.float32)  # lightness counts half: shading changes it most
APERTURE_WEIGHTS = np.array([1.0, 0.3, 0.3], np.float32)  # aperture against lip: lightness first


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


def _prototypes(palette: MouthPalette) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 3)`` LAB prototype colours of the mouth and ``(K,)`` their classes."""
    mid = tuple((np.array(palette.tongue_dark) + np.array(palette.tongue_light)) / 2)
    colours = [palette.lip, palette.interior, palette.teeth, palette.tongue_dark, mid, palette.tongue_light]
    classes = [LIP, INTERIOR, TEETH, TONGUE, TONGUE, TONGUE]
    return to_lab(np.array(colours, np.float32)), np.array(classes)


def skin_samples(lab: np.ndarray) -> np.ndarray:
    """``(4, 3)`` LAB skin colours of a patch: the medians of four boxes just outside the largest mouth the
    renderer draws (above, below, image-left and image-right of it), so the skin's shading near the mouth is known."""
    w, h = PATCH_SIZE
    cx, cy, u = w // 2, h // 2, PATCH_HW
    boxes = [(cx - u // 2, cy - int(1.35 * u), cx + u // 2, cy - int(1.05 * u)),
             (cx - u // 2, cy + int(1.1 * u), cx + u // 2, cy + int(1.4 * u)),
             (cx - int(1.75 * u), cy - u // 4, cx - int(1.4 * u), cy + u // 4),
             (cx + int(1.4 * u), cy - u // 4, cx + int(1.75 * u), cy + u // 4)]
    return np.stack([np.median(lab[y0:y1, x0:x1].reshape(-1, 3), axis=0) for x0, y0, x1, y1 in boxes])


def memberships(patch: np.ndarray, palette: MouthPalette) -> tuple[np.ndarray, np.ndarray]:
    """Soft memberships of every pixel of an ``(h, w, 3)`` uint8 RGB patch (step 2 of the module docstring).

    Returns:
        ``(aperture, mouth)``, each ``(h, w)`` float32 0-1: ``aperture`` = ``d_lip / (d_lip + d_aperture)`` (the
        aperture against the lips, the skin ignored) and ``mouth`` = 1 minus the skin's share of the inverse
        squared distances to the skin, lip and aperture prototypes. ``d_x`` is the weighted CIELAB distance to the
        nearest prototype of x; an antialiased edge pixel gets the share of its blend.
    """
    lab = to_lab(patch.astype(np.float32))  # (h, w, 3)
    colours, classes = _prototypes(palette)

    def nearest(protos: np.ndarray, weights: np.ndarray = LAB_WEIGHTS) -> np.ndarray:
        delta = (lab[:, :, None, :] - protos[None, None]) * weights  # (h, w, K, 3)
        return np.sqrt((delta ** 2).sum(-1)).min(-1) + 1e-3

    d_skin = nearest(skin_samples(lab))
    d_lip = nearest(colours[classes == LIP])
    d_aperture = nearest(colours[classes != LIP])
    # Aperture against lip: lightness first (cavity and teeth differ from the lips mostly in it, and it keeps the
    # full resolution of a yuv420p video, where colour has half).
    d_lip_l = nearest(colours[classes == LIP], APERTURE_WEIGHTS)
    d_aperture_l = nearest(colours[classes != LIP], APERTURE_WEIGHTS)
    aperture = d_lip_l / (d_lip_l + d_aperture_l)
    inverse = np.stack([1 / d_skin ** 2, 1 / d_lip ** 2, 1 / d_aperture ** 2])
    mouth = 1 - inverse[0] / inverse.sum(0)
    return aperture.astype(np.float32), mouth.astype(np.float32)


def _soft_run(values: np.ndarray, start: int, step: int, limit: int, inside: float = 0.5) -> tuple[float, int]:
    """Sum of a membership profile from ``start`` in direction ``step`` while it stays >= ``inside`` (one lower
    pixel bridged), plus the first pixel past the run; returns ``(sum, index of that pixel)``."""
    total, i, below = 0.0, start, 0
    while 0 <= i < len(values) and abs(i - start) < limit:
        total += float(values[i])
        if values[i] < inside:
            below += 1
            if below > 1 or not (0 <= i + step < len(values)) or values[i + step] < inside:
                return total - (float(values[i]) if below > 1 else 0.0), i
        else:
            below = 0
        i += step
    return total, i


def _unmix(pixel: np.ndarray, lip: np.ndarray, skin: np.ndarray) -> float:
    """The lip share ``alpha`` of a pixel blended as ``alpha * lip + (1 - alpha) * skin`` (RGB, clipped to 0-1)."""
    axis = lip - skin
    return float(np.clip(np.dot(pixel - skin, axis) / max(float(np.dot(axis, axis)), 1e-6), 0, 1))


def _lip_edge(rgb: np.ndarray, aperture: np.ndarray, mouth: np.ndarray, centre: int, step: int,
              lip: np.ndarray, limit: int) -> tuple[float, int]:
    """Distance (pixels, fractional) from the centre pixel of a profile to the outer edge of the lips.

    From two pixels past the aperture run, the mouth continues while its membership is >= 0.75; the four pixels
    about that edge (one inside, three outside) are unmixed against the lip colour and the skin beyond them (the
    mean of pixels 3-5 further), so an antialiased or blurred (chroma-subsampled) edge counts by its share. Also
    returns the index where the aperture run ended.
    """
    _, edge = _soft_run(aperture, centre, step, limit)
    i = edge + 2 * step  # past the blend of aperture and lip (a lip is >= 0.16 hw = 5 patch pixels thick)
    i = min(max(i, 0), len(rgb) - 1)  # a generated mouth may be open to the patch's border
    while 0 <= i + step < len(mouth) and abs(i - centre) < limit and mouth[i] >= 0.75:
        i += step
    beyond = [j for j in (i + 3 * step, i + 4 * step, i + 5 * step) if 0 <= j < len(rgb)]
    skin = rgb[beyond].mean(0) if beyond else rgb[i]
    shares = sum(_unmix(rgb[j], lip, skin) for j in range(i - step, i + 3 * step, step) if 0 <= j < len(rgb))
    return abs(i - step - centre) - 0.5 + shares, edge


def measure_patch(patch: np.ndarray, palette: MouthPalette) -> dict[str, float]:
    """Mouth lengths in patch pixels (steps 3-4 of the module docstring).

    Args:
        patch: ``(h, w, 3)`` uint8 RGB upright mouth patch.
        palette: The lit mouth palette.

    Returns:
        ``a`` (outer half-width), ``h`` (aperture half-height), ``ai`` (aperture half-width), ``thickness``
        (upper + lower lip at the centre).
    """
    aperture, mouth = memberships(patch, palette)
    rgb = patch.astype(np.float32)
    lip = np.array(palette.lip, np.float32)
    w, h = PATCH_SIZE
    cx, cy = w // 2, h // 2
    band = slice(cx - max(2, PATCH_HW // 8), cx + max(2, PATCH_HW // 8) + 1)
    col_rgb, col_ap, col_mouth = rgb[:, band].mean(1), aperture[:, band].mean(1), mouth[:, band].mean(1)  # (h, ...)
    reach = 2 * PATCH_HW
    # The aperture's upper half (teeth, cavity; never the tongue, which lies at the bottom) gives h; the centre
    # row holds the centre, so n pixels from it span n - 0.5.
    up, _ = _soft_run(col_ap, cy, -1, reach)
    half_height = max(up - 0.5, 0.0)
    top, _ = _lip_edge(col_rgb, col_ap, col_mouth, cy, -1, lip, reach)
    bottom, _ = _lip_edge(col_rgb, col_ap, col_mouth, cy, 1, lip, reach)
    thickness = max(top - half_height, 0.0) + max(bottom - half_height, 0.0)
    rows = slice(cy - 1, cy + 2)
    row_rgb, row_ap, row_mouth = rgb[rows].mean(0), aperture[rows].mean(0), mouth[rows].mean(0)  # (w, ...)
    halves = [_lip_edge(row_rgb, row_ap, row_mouth, cx, step, lip, reach)[0] for step in (-1, 1)]
    inner = [_soft_run(aperture[cy], cx, step, reach)[0] - 0.5 for step in (-1, 1)]
    return {"a": float(np.mean(halves)), "h": half_height, "ai": float(max(np.mean(inner), 0.0)),
            "thickness": float(thickness)}


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
    m = measure_patch(patch, palette)
    return state_from_measures(m["a"], m["h"], m["thickness"], PATCH_HW, m["ai"])


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
