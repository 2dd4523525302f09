"""Finer face search for frames where the full-frame pass finds nothing (small faces in wide shots).

MediaPipe's face detector sees the whole frame downscaled to 128 x 128 pixels, so it misses faces smaller than about
a sixth of the frame's long side. The search looks closer: first a zoomed crop around the last known face, then a
pyramid of overlapping square tiles (largest first, stopping at the first level that finds a face). Landmarks found in
a crop are mapped back to frame coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stabledub_core.face.indices import face_size
from stabledub_core.face.landmarker import MediaPipeLandmarker

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixels, x1/y1 exclusive


@dataclass
class FineSearchConfig:
    """Parameters of the fine search.

    Args:
        enabled: search at all when the full-frame pass finds no face.
        zoom: side of the crop around the last face, in face sizes (the detector needs the face to cover more
            than about 1/6 of the crop).
        tile_overlap: fraction by which neighbouring tiles overlap.
        min_tile: smallest tile side in pixels; faces smaller than about min_tile / 5 are not searched for.
        level_scale: ratio between the tile sides of consecutive pyramid levels.
        dedup_distance: faces from different tiles closer than this (in face sizes) are one face.
        full_frame_interval: while only the search finds the face, the full-frame pass is tried every this many
            frames (1 = every frame); the zoomed crop goes first in between.
        tile_interval: after a tile search that found nothing, the next one waits this many frames (1 = every
            frame). The pyramid costs hundreds of detector runs on a large frame, so faceless stretches of a video
            (and faces appearing in them) are searched at this pace.
    """

    enabled: bool = True
    zoom: float = 3.0
    tile_overlap: float = 0.5
    min_tile: int = 128
    level_scale: float = 0.5
    dedup_distance: float = 0.5
    full_frame_interval: int = 10
    tile_interval: int = 6


def zoom_box(previous: np.ndarray, frame_size: tuple[int, int], zoom: float) -> Box:
    """Square box of ``zoom`` face sizes around a face, clamped to the frame.

    Args:
        previous: (478, 2) landmarks of the face.
        frame_size: (H, W).
        zoom: box side in face sizes.

    Returns:
        (x0, y0, x1, y1) box.
    """
    height, width = frame_size
    centre = (previous.min(axis=0) + previous.max(axis=0)) / 2
    half = max(zoom * float(face_size(previous)), 16.0) / 2
    x0, y0 = np.floor(centre - half).astype(int)
    x1, y1 = np.ceil(centre + half).astype(int)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_boxes(frame_size: tuple[int, int], tile: int, overlap: float) -> list[Box]:
    """Overlapping square tiles covering the frame.

    Args:
        frame_size: (H, W).
        tile: tile side in pixels (clamped to the frame's sides).
        overlap: fraction of a tile shared with its neighbour.

    Returns:
        List of (x0, y0, x1, y1) boxes, row by row.
    """
    height, width = frame_size
    stride = max(1, int(round(tile * (1 - overlap))))
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


def tile_levels(frame_size: tuple[int, int], config: FineSearchConfig) -> list[int]:
    """Tile sides of the search pyramid, from the frame's short side down to ``min_tile``.

    Args:
        frame_size: (H, W).
        config: search parameters.

    Returns:
        Tile sides in pixels, decreasing.
    """
    side = float(min(frame_size))
    levels = []
    while side >= config.min_tile or not levels:
        levels.append(int(round(side)))
        side *= config.level_scale
    return levels


def dedup_faces(faces: np.ndarray, distance: float) -> np.ndarray:
    """Drop faces found twice (in overlapping tiles), keeping the first of each.

    Args:
        faces: (N, 478, 2) landmarks.
        distance: centroids closer than this many face sizes count as one face.

    Returns:
        (M, 478, 2) landmarks, M <= N.
    """
    kept: list[np.ndarray] = []
    for face in faces:
        centre, size = face.mean(axis=0), float(face_size(face))
        if all(np.linalg.norm(centre - k.mean(axis=0)) > distance * max(size, float(face_size(k))) for k in kept):
            kept.append(face)
    return np.stack(kept) if kept else faces[:0]


def keeps_face(box: Box, face: np.ndarray, target_side: float, frame_size: tuple[int, int]) -> bool:
    """Whether a zoom box still suits a face.

    The face must lie inside the box with a margin of a sixth of the box on every side that is not the frame's own
    edge, and the box must be within 20 % of the side ``zoom_box`` would choose now.

    Args:
        box: (x0, y0, x1, y1) the current zoom box.
        face: (478, 2) landmarks.
        target_side: the side of the box ``zoom_box`` gives for this face.
        frame_size: (H, W).
    """
    x0, y0, x1, y1 = box
    height, width = frame_size
    side = max(x1 - x0, y1 - y0)
    margin = side / 6
    (fx0, fy0), (fx1, fy1) = face.min(axis=0), face.max(axis=0)
    inside = ((x0 == 0 or fx0 >= x0 + margin) and (y0 == 0 or fy0 >= y0 + margin)
              and (x1 == width or fx1 <= x1 - margin) and (y1 == height or fy1 <= y1 - margin))
    return inside and 0.8 <= side / max(target_side, 1.0) <= 1.25


class FineSearch:
    """Zoomed and tiled face search (the tracker calls ``around``, then ``tiles``).

    With a VIDEO-mode landmarker, a single face is followed in a zoom box that stays put while the face stays well
    inside it (:func:`keeps_face`): MediaPipe then tracks the face from crop to crop as in a video and runs its
    detector only when it loses it, instead of detecting it afresh in every crop (IMAGE mode), a third of the cost
    of a zoomed frame. Tiles, and zooms around several faces, use the IMAGE-mode landmarker.

    Args:
        landmarker: an IMAGE-mode ``MediaPipeLandmarker`` (owned by the caller).
        config: search parameters.
        video: optional VIDEO-mode ``MediaPipeLandmarker`` for following one face (owned by the caller; one per
            video stream).
    """

    def __init__(self, landmarker: MediaPipeLandmarker, config: FineSearchConfig | None = None,
                 video: MediaPipeLandmarker | None = None):
        self.landmarker = landmarker
        self.config = config or FineSearchConfig()
        self.video = video
        self._box: Box | None = None  # the zoom box the VIDEO-mode landmarker follows

    def _detect_in(self, frame: np.ndarray, box: Box, timestamp_ms: int | None = None) -> np.ndarray:
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
        if timestamp_ms is None:
            faces = self.landmarker.detect(crop)  # (N, 478, 2) crop pixels
        else:
            faces = self.video.detect(crop, timestamp_ms)
        return faces + np.array([x0, y0], np.float32)

    def _follow(self, face: np.ndarray, frame_size: tuple[int, int]) -> Box:
        """The zoom box for a followed face: the current one while it suits the face, else a new one."""
        target = zoom_box(face, frame_size, self.config.zoom)
        side = max(target[2] - target[0], target[3] - target[1])
        if self._box is None or not keeps_face(self._box, face, side, frame_size):
            self._box = target
        return self._box

    def around(self, frame: np.ndarray, faces: np.ndarray, timestamp_ms: int | None = None) -> np.ndarray:
        """Search zoomed crops around faces known from an earlier frame.

        Args:
            frame: (H, W, 3) uint8 RGB.
            faces: (N, 478, 2) landmarks of the faces in an earlier frame.
            timestamp_ms: the frame's time; with a VIDEO-mode landmarker and one face, the face is followed.

        Returns:
            (M, 478, 2) landmarks in frame pixels (duplicates from overlapping crops removed).
        """
        size = frame.shape[:2]
        if self.video is not None and timestamp_ms is not None and len(faces) == 1:
            return self._detect_in(frame, self._follow(faces[0], size), timestamp_ms)
        found = [self._detect_in(frame, zoom_box(face, size, self.config.zoom)) for face in faces]
        return dedup_faces(np.concatenate(found), self.config.dedup_distance)

    def tiles(self, frame: np.ndarray) -> np.ndarray:
        """Search the tile pyramid, stopping at the first level that finds a face.

        Args:
            frame: (H, W, 3) uint8 RGB.

        Returns:
            (N, 478, 2) landmarks in frame pixels (duplicates from overlapping tiles removed).
        """
        size = frame.shape[:2]
        for tile in tile_levels(size, self.config):
            faces = np.concatenate([self._detect_in(frame, box)
                                    for box in tile_boxes(size, tile, self.config.tile_overlap)])  # (N, 478, 2)
            if len(faces):
                return dedup_faces(faces, self.config.dedup_distance)
        return faces
