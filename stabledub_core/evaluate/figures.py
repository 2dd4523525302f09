"""Labelled image grids: the demo's side-by-side (source | ground truth | ours) and the benchmark's example frames."""

from __future__ import annotations

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError

LABEL_HEIGHT = 24  # one line of label text
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def wrap_label(label: str, width: int, scale: float) -> list[str]:
    """``label`` broken at spaces into lines no wider than ``width`` pixels (a longer word keeps its own line)."""
    lines: list[str] = []
    for word in label.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(line, _FONT, scale, 1)[0][0] <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines or [""]


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str], tile: tuple[int, int] | None = None) -> np.ndarray:
    """Images in a grid, a label above each column.

    Args:
        rows: Rows of ``(H, W, 3)`` uint8 RGB images, one per column each.
        labels: One label per column.
        tile: ``(width, height)`` every image is resized to (nearest neighbour); default: the first image's size.

    Returns:
        ``(lines * LABEL_HEIGHT + rows * h, columns * w, 3)`` uint8 RGB, where ``lines`` is the most lines a label
        needs to fit its column.
    """
    if not rows or any(len(row) != len(labels) for row in rows):
        raise InvalidInputError(f"every row needs one image per label ({len(labels)})")
    w, h = tile or (rows[0][0].shape[1], rows[0][0].shape[0])
    body = np.concatenate([np.concatenate([cv2.resize(np.ascontiguousarray(im), (w, h),
                                                      interpolation=cv2.INTER_NEAREST) for im in row], axis=1)
                           for row in rows], axis=0)
    scale = min(0.5, w / 320)
    wrapped = [wrap_label(label, w - 8, scale) for label in labels]
    bar = np.full((LABEL_HEIGHT * max(map(len, wrapped)), body.shape[1], 3), 255, np.uint8)
    for j, lines in enumerate(wrapped):
        for i, line in enumerate(lines):
            cv2.putText(bar, line, (j * w + 4, (i + 1) * LABEL_HEIGHT - 7), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, body], axis=0)


def write_png(path, image: np.ndarray) -> None:
    """Write an RGB image as PNG."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
