"""Frames of a talking avatar: mouth drawn into the canvas, head moved, composited over the background, occluder
in front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError
from stabledub_core.synthetic.avatar import Avatar
from stabledub_core.synthetic.mouth import MouthStates, draw_mouth, mouth_shape
from stabledub_core.synthetic.occluders import OccluderSpec, draw_occluder
from stabledub_core.synthetic.speech_drive import frame_times


@dataclass
class RenderedClip:
    """Frames and their ground truth.

    Args:
        frames: ``(F, S, S, 3)`` uint8 RGB.
        occluder_masks: ``(F, S, S)`` bool, where the occluder covers each frame (all False without one).
        mouth_poses: ``(F, 4)`` float32 per frame: mouth centre x, y (frame pixels), neutral half-width ``hw``
            (frame pixels) and the corners' tilt (radians).
        matrices: ``(F, 2, 3)`` float32 canvas -> frame affine of each frame (the head motion).
    """

    frames: np.ndarray
    occluder_masks: np.ndarray
    mouth_poses: np.ndarray
    matrices: np.ndarray


def mouth_pose(avatar: Avatar, matrix: np.ndarray) -> np.ndarray:
    """``(4,)`` the mouth's centre x, y, half-width and tilt in a frame whose canvas -> frame affine is ``matrix``."""
    centre = matrix[:, :2] @ np.asarray(avatar.mouth_centre) + matrix[:, 2]
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    roll = math.atan2(matrix[1, 0], matrix[0, 0])
    return np.array([centre[0], centre[1], avatar.mouth_half_width * scale, avatar.mouth_angle + roll], np.float32)


def render_frame(avatar: Avatar, state: dict[str, float], t: float,
                 occluder: OccluderSpec | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One frame.

    Args:
        avatar: The still layers.
        state: The mouth state (``MouthStates.frame``).
        t: Time in seconds (head motion, occluder interval).
        occluder: An occluder, drawn while active.

    Returns:
        ``(frame (S, S, 3) uint8, occluder mask (S, S) bool, mouth pose (4,), matrix (2, 3))``.
    """
    size = avatar.params.size
    canvas = avatar.canvas.copy()
    shape = mouth_shape(state, avatar.mouth_centre, avatar.mouth_half_width, avatar.mouth_angle)
    draw_mouth(canvas, shape, avatar.lit_palette, state["tongue"])
    matrix = avatar.params.motion.matrix(t, avatar.pivot, size)
    person = cv2.warpAffine(canvas, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(avatar.alpha, matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)[..., None]
    frame = np.round(person * alpha + avatar.background * (1 - alpha)).astype(np.uint8)
    pose = mouth_pose(avatar, matrix)
    mask = np.zeros((size, size), bool)
    if occluder is not None and occluder.active(t):
        mask = draw_occluder(frame, occluder, (float(pose[0]), float(pose[1])), float(pose[2]))
    return frame, mask, pose, matrix.astype(np.float32)


def render_clip(avatar: Avatar, states: MouthStates, fps: float, occluder: OccluderSpec | None = None) -> RenderedClip:
    """All frames of a clip: frame ``k`` at ``k / fps`` seconds shows ``states`` row ``k``.

    Args:
        avatar: The still layers.
        states: One mouth state per frame.
        fps: Frame rate.
        occluder: An occluder, or None.

    Returns:
        The :class:`RenderedClip`.
    """
    if len(states) == 0:
        raise InvalidInputError("no mouth states to render: give at least one frame")
    times = frame_times(len(states), fps)
    out = [render_frame(avatar, states.frame(k), float(t), occluder) for k, t in enumerate(times)]
    return RenderedClip(frames=np.stack([o[0] for o in out]), occluder_masks=np.stack([o[1] for o in out]),
                        mouth_poses=np.stack([o[2] for o in out]), matrices=np.stack([o[3] for o in out]))
