"""Named groups of MediaPipe Face Mesh landmark indices (478-point topology with irises).

"Left"/"right" are the subject's; index values follow MediaPipe's canonical face mesh.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# Lips, outer contour, clockwise from the right mouth corner (61) through the lower lip.
LIPS_OUTER = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375,
                       291, 409, 270, 269, 267, 0, 37, 39, 40, 185])
# Lips, inner contour (the mouth opening), same order starting at the inner right corner (78).
LIPS_INNER = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324,
                       308, 415, 310, 311, 312, 13, 82, 81, 80, 191])
MOUTH_CORNERS = np.array([61, 291])  # outer corners (right, left)
# Pairs (upper inner lip, lower inner lip) across the mouth opening, from right to left.
INNER_LIP_PAIRS = np.array([[81, 178], [82, 87], [13, 14], [312, 317], [311, 402]])

EYE_OUTER_CORNERS = np.array([33, 263])  # (right eye, left eye)
RIGHT_EYE = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246])
LEFT_EYE = np.array([263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466])
EYEBROWS = np.array([70, 63, 105, 66, 107, 336, 296, 334, 293, 300])
NOSE = np.array([1, 2, 4, 5, 6, 168, 195, 197, 98, 327, 64, 294])
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
                      400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
                      54, 103, 67, 109])
# The lower part of the face oval: the jaw line, which moves with speech.
JAW = np.array([361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132])
UPPER_FACE_OVAL = np.setdiff1d(FACE_OVAL, JAW)

# Points that move with speech: both lip contours, the whole lip area and the jaw line.
MOUTH = np.unique(np.concatenate([LIPS_OUTER, LIPS_INNER, JAW,
                                  [0, 11, 12, 13, 14, 15, 16, 17, 37, 38, 39, 40, 41, 42, 72, 73, 74,
                                   76, 77, 62, 183, 184, 96, 89, 90, 179, 180, 85, 86, 316, 315,
                                   403, 404, 319, 320, 325, 307, 306, 292, 408, 407, 302, 303, 304,
                                   268, 271, 272, 185, 40, 146, 91, 181, 84]]))
# Rigid-ish points that carry head pose but not speech (eyes, brows, nose, upper face contour).
POSE = np.unique(np.concatenate([EYE_OUTER_CORNERS, [133, 362], EYEBROWS, NOSE, UPPER_FACE_OVAL]))


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (...,) distances in pixels.
    """
    return np.linalg.norm(landmarks[..., EYE_OUTER_CORNERS[0], :] - landmarks[..., EYE_OUTER_CORNERS[1], :], axis=-1)


def mouth_width(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the outer mouth corners.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (...,) distances in pixels.
    """
    return np.linalg.norm(landmarks[..., MOUTH_CORNERS[0], :] - landmarks[..., MOUTH_CORNERS[1], :], axis=-1)


def mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """Centroid of the outer lip contour.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (..., 2) pixel coordinates.
    """
    return landmarks[..., LIPS_OUTER, :].mean(axis=-2)


def face_size(landmarks: np.ndarray) -> np.ndarray:
    """Size of a face: the larger side of its landmark bounding box.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (...,) sizes in pixels.
    """
    extent = landmarks.max(axis=-2) - landmarks.min(axis=-2)  # (..., 2)
    return extent.max(axis=-1)
