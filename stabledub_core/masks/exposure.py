"""Exposure patches: cells of the union mask Mu that stay visible to the inpainting (paper Sec. III-C, Fig. 4).

The crop is split into a G x G grid of square patches, so patches are defined in crop coordinates (normalised: cell
(row, col) spans [col / G, (col + 1) / G] x [row / G, (row + 1) / G] of the crop) and follow the face from span to
span. A set of exposed patches comes from one of three sources:

* an explicit list (what the editor widget stores; :class:`ExposedPatches` is JSON-serialisable), or a mask painted
  over the crop (:func:`from_crop_mask`),
* an occluder mask in frame coordinates (:func:`from_occluder`): a patch is exposed when the occluder covers at least
  a given fraction of it,
* the progressive training schedule (:class:`ExposureSchedule` + :func:`from_schedule`): a random fraction r of Mu's
  patches, r going from 70% to 0% over training.

:func:`apply` turns Mu and the exposed patches into the inpainting mask (1 = inpaint, 0 = keep the source pixels);
:func:`to_latent` brings it to latent resolution. With G dividing S / 8 (:data:`DEFAULT_GRID` = 16 at S = 512 gives
32-pixel patches, 4 x 4 latent cells) patches line up with latent cells exactly.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from stabledub_core.errors import ExposureError
from stabledub_core.masks.crop_spans import CropSpan


DEFAULT_GRID = 16  # patches per crop side


def grid_size(crop_size: int, patch_size: int | None = None, grid: int | None = None) -> int:
    """The grid count G from either a patch size in crop pixels or the count itself.

    Args:
        crop_size: crop side S.
        patch_size: patch side in crop pixels (G = round(S / patch_size)).
        grid: patches per side; give exactly one of ``patch_size`` and ``grid``.

    Returns:
        G >= 1.
    """
    if (patch_size is None) == (grid is None):
        raise ExposureError("give exactly one of patch_size (pixels) and grid (patches per side)")
    count = grid if grid is not None else round(crop_size / patch_size) if patch_size > 0 else 0
    if not 1 <= count <= crop_size:
        raise ExposureError(f"the patch grid must have between 1 and {crop_size} patches per side, got {count} "
                            f"(patch_size={patch_size}, grid={grid})")
    return int(count)


def _cell_edges(size: int, grid: int) -> np.ndarray:
    """(G + 1,) integer pixel edges of the grid cells along one side of an S-pixel crop."""
    return np.round(np.arange(grid + 1) * size / grid).astype(int)


@dataclass
class ExposedPatches:
    """Exposed cells of a G x G grid over the crop.

    Attributes:
        grid: G, patches per side of the crop.
        cells: (row, col) of each exposed patch, 0 <= row, col < G.
    """

    grid: int
    cells: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.grid, (int, np.integer)) or self.grid < 1:
            raise ExposureError(f"grid must be a positive integer, got {self.grid!r}")
        cells = []
        for cell in self.cells:
            if len(cell) != 2:
                raise ExposureError(f"each exposed patch is (row, col), got {cell!r}")
            row, col = int(cell[0]), int(cell[1])
            if not (0 <= row < self.grid and 0 <= col < self.grid):
                raise ExposureError(f"patch {cell!r} is outside the {self.grid}x{self.grid} grid")
            cells.append((row, col))
        self.grid = int(self.grid)
        self.cells = sorted(set(cells))

    def to_array(self) -> np.ndarray:
        """(G, G) bool grid, True where exposed."""
        exposed = np.zeros((self.grid, self.grid), bool)
        if self.cells:
            rows, cols = zip(*self.cells)
            exposed[list(rows), list(cols)] = True
        return exposed

    @classmethod
    def from_array(cls, exposed: np.ndarray) -> "ExposedPatches":
        """From a (G, G) bool grid."""
        exposed = np.asarray(exposed, bool)
        if exposed.ndim != 2 or exposed.shape[0] != exposed.shape[1]:
            raise ExposureError(f"expected a square (G, G) grid, got {exposed.shape}")
        return cls(grid=exposed.shape[0], cells=[tuple(cell) for cell in np.argwhere(exposed).tolist()])

    def rects(self) -> list[tuple[float, float, float, float]]:
        """Normalised (x0, y0, x1, y1) crop rectangles of the exposed patches."""
        g = self.grid
        return [(col / g, row / g, (col + 1) / g, (row + 1) / g) for row, col in self.cells]

    def to_dict(self) -> dict:
        return {"grid": self.grid, "cells": [list(cell) for cell in self.cells]}

    @classmethod
    def from_dict(cls, data: dict) -> "ExposedPatches":
        if not isinstance(data, dict) or "grid" not in data:
            raise ExposureError(f'expected {{"grid": G, "cells": [[row, col], ...]}}, got {data!r}')
        return cls(grid=data["grid"], cells=[tuple(cell) for cell in data.get("cells", [])])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ExposedPatches":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ExposureError(f"exposed patches are not valid JSON ({error}): {text[:80]!r}") from error
        return cls.from_dict(data)

    def raster(self, size: int) -> np.ndarray:
        """(S, S) bool, True on exposed pixels of an S-pixel crop."""
        edges = _cell_edges(size, self.grid)
        out = np.zeros((size, size), bool)
        for row, col in self.cells:
            out[edges[row]:edges[row + 1], edges[col]:edges[col + 1]] = True
        return out


def cell_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """Mean of a square (S, S) mask over each cell of a G x G grid -> (G, G) float32."""
    mask = np.asarray(mask, np.float32)
    size = mask.shape[0]
    if size % grid == 0:
        cell = size // grid
        return mask.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    return cv2.resize(mask, (grid, grid), interpolation=cv2.INTER_AREA)


def union_cells(union_mask: np.ndarray, grid: int, min_cover: float = 0.5) -> np.ndarray:
    """Patches belonging to Mu: cells whose mean union-mask value is at least ``min_cover`` -> (G, G) bool."""
    return cell_coverage(union_mask, grid) >= min_cover


def from_list(cells: list, grid: int) -> ExposedPatches:
    """Exposed patches from an explicit list of (row, col) cells of a G x G grid (e.g. painted in the editor)."""
    return ExposedPatches(grid=grid, cells=[tuple(cell) for cell in cells])


def _occluder_frames(occluder: np.ndarray, span: "CropSpan") -> np.ndarray:
    """The occluder mask for the span's frames as (n, H, W) float32 in [0, 1]."""
    occluder = np.asarray(occluder)
    if occluder.dtype == np.uint8:
        occluder = occluder.astype(np.float32) / 255
    occluder = occluder.astype(np.float32, copy=False)
    n = span.stop - span.start
    if occluder.ndim == 2:
        return np.broadcast_to(occluder, (n, *occluder.shape))
    if occluder.ndim == 3:
        if occluder.shape[0] == 1:
            return np.broadcast_to(occluder[0], (n, *occluder.shape[1:]))
        if occluder.shape[0] >= span.stop:
            return occluder[span.start:span.stop]
        raise ExposureError(f"per-frame occluder mask has {occluder.shape[0]} frames but the span needs frames "
                            f"{span.start}..{span.stop - 1}: give one mask per frame of the clip, or one (H, W)")
    raise ExposureError(f"expected an occluder mask (H, W) or (F, H, W), got shape {occluder.shape}")


def from_occluder(
    occluder: np.ndarray,
    span: "CropSpan",
    grid: int,
    min_fraction: float = 0.2,
    within_union: bool = True,
) -> list[ExposedPatches]:
    """Exposes the patches an occluder covers, frame by frame.

    The occluder (in source-frame pixels) is cut with the span's box and averaged over each grid cell, so a
    patch is exposed where the occluder covers at least ``min_fraction`` of it.

    Args:
        occluder: (H, W) for every frame, or (F, H, W) for the whole clip (indexed by clip frame), float in [0, 1]
            (uint8 is read as 0..255), e.g. a MASK from a segmentation node.
        span: the span whose box maps frames to crops.
        grid: G, patches per side of the crop.
        min_fraction: covered fraction of a patch that exposes it.
        within_union: only expose patches that touch Mu (others change nothing anyway).

    Returns:
        One :class:`ExposedPatches` per frame of the span.
    """
    if not 0 < min_fraction <= 1:
        raise ExposureError(f"min_fraction must be in (0, 1], got {min_fraction}")
    frames = _occluder_frames(occluder, span)
    x0, y0, x1, y1 = span.box
    if frames.shape[1] < y1 or frames.shape[2] < x1:
        raise ExposureError(f"occluder mask of size {frames.shape[2]}x{frames.shape[1]} does not contain the crop "
                            f"box {span.box}: give it at the video's frame size")
    union = span.union_mask if within_union else None
    return [from_crop_mask(np.ascontiguousarray(frame[y0:y1, x0:x1]), grid, min_fraction, union) for frame in frames]


def from_crop_mask(
    mask: np.ndarray,
    grid: int,
    min_fraction: float = 0.2,
    union_mask: np.ndarray | None = None,
) -> ExposedPatches:
    """Exposes the patches a mask in crop coordinates covers (e.g. painted over a crop in the editor).

    Args:
        mask: (s, s) float in [0, 1] over the crop box, at any resolution s (the box, or the crop).
        grid: G, patches per side.
        min_fraction: covered fraction of a patch that exposes it.
        union_mask: optional (S, S) Mu; only patches touching it are exposed.

    Returns:
        The exposed patches.
    """
    mask = np.asarray(mask, np.float32)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ExposureError(f"expected a square (s, s) mask over the crop, got {mask.shape}")
    exposed = cell_coverage(mask, grid) >= min_fraction  # (G, G)
    if union_mask is not None:
        exposed &= cell_coverage(union_mask, grid) > 0
    return ExposedPatches.from_array(exposed)


class ScheduleShape(str, enum.Enum):
    """How the exposure rate moves from its start to its end value over training."""

    LINEAR = "linear"
    COSINE = "cosine"


_SHAPES: dict[ScheduleShape, Callable[[float], float]] = {
    ScheduleShape.LINEAR: lambda t: t,
    ScheduleShape.COSINE: lambda t: 0.5 - 0.5 * math.cos(math.pi * t),
}


@dataclass
class ExposureSchedule:
    """Progressive mask exposure: the fraction of Mu's patches exposed, as a function of training progress.

    Attributes:
        start: exposure rate at the start of training (paper: 0.7).
        end: rate at the end (paper: 0).
        shape: ``linear`` or ``cosine`` interpolation between them.
    """

    start: float = 0.7
    end: float = 0.0
    shape: ScheduleShape = ScheduleShape.LINEAR

    def __post_init__(self) -> None:
        if not (0 <= self.start <= 1 and 0 <= self.end <= 1):
            raise ExposureError(f"exposure rates must be in [0, 1], got start={self.start}, end={self.end}")
        try:
            self.shape = ScheduleShape(self.shape)
        except ValueError as error:
            raise ExposureError(f"unknown schedule shape {self.shape!r}: use one of "
                                f"{[s.value for s in ScheduleShape]}") from error

    def rate(self, step: int, total_steps: int) -> float:
        """Exposure rate at a training step (0-based) out of ``total_steps``."""
        if total_steps < 1:
            raise ExposureError(f"total_steps must be >= 1, got {total_steps}")
        progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return self.start + (self.end - self.start) * _SHAPES[self.shape](progress)


def from_schedule(
    union_mask: np.ndarray,
    grid: int,
    rate: float,
    seed: int | np.random.Generator,
    min_cover: float = 0.5,
) -> ExposedPatches:
    """Exposes a random fraction ``rate`` of Mu's patches (reproducible for a given seed).

    Args:
        union_mask: (S, S) Mu in crop coordinates.
        grid: G, patches per side.
        rate: fraction of Mu's patches to expose, in [0, 1] (``ExposureSchedule.rate``).
        seed: an integer seed or a numpy Generator.
        min_cover: mean Mu value over a cell for it to count as one of Mu's patches.

    Returns:
        round(rate * number of Mu's patches) exposed patches.
    """
    if not 0 <= rate <= 1:
        raise ExposureError(f"exposure rate must be in [0, 1], got {rate}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    candidates = np.argwhere(union_cells(union_mask, grid, min_cover))  # (m, 2)
    count = int(round(rate * len(candidates)))
    chosen = candidates[rng.choice(len(candidates), size=count, replace=False)] if count else candidates[:0]
    return ExposedPatches(grid=grid, cells=[tuple(cell) for cell in chosen.tolist()])


def apply(union_mask: np.ndarray, patches: ExposedPatches | None) -> np.ndarray:
    """The inpainting mask: Mu with the exposed patches set to 0.

    Args:
        union_mask: (S, S) float Mu in crop coordinates.
        patches: exposed patches, or None for none.

    Returns:
        (S, S) float32, 1 = inpaint, 0 = keep the source pixels.
    """
    mask = np.array(union_mask, np.float32)
    if patches is not None and patches.cells:
        mask[patches.raster(mask.shape[0])] = 0
    return mask


def to_latent(mask: np.ndarray, factor: int = 8) -> np.ndarray:
    """Downsamples inpainting masks to latent resolution.

    A latent cell is inpainted (1) when any of its pixels is (mask > 0), so the generated region covers every
    pixel the feathered paste-back uses; cells fully inside exposed patches stay 0.

    Args:
        mask: (..., S, S) float, S divisible by ``factor``.
        factor: the VAE's downsampling factor.

    Returns:
        (..., S / factor, S / factor) float32 in {0, 1}.
    """
    mask = np.asarray(mask)
    size = mask.shape[-1]
    if size % factor:
        raise ExposureError(f"crop size {size} is not divisible by the latent factor {factor}")
    cells = (mask > 0).reshape(*mask.shape[:-2], size // factor, factor, size // factor, factor)
    return cells.any(axis=(-3, -1)).astype(np.float32)
