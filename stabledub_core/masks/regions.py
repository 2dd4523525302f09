"""Named index sets of the MediaPipe Face Landmarker's 478-point face mesh that build the mouth masks.

The generic groups (lip contours, face oval, mouth corners) live in :mod:`stabledub_core.face.indices`; this module
adds the mask-specific ones. Indices follow MediaPipe's canonical face mesh. "Image-left/right" are the sides of a
frontal face in the image (the subject's right cheek appears on the image's left).
"""

from __future__ import annotations

from stabledub_core.face.indices import FACE_OVAL, LIPS_INNER, LIPS_OUTER, MOUTH_CORNERS, NUM_LANDMARKS

__all__ = ["FACE_OVAL", "FACE_WIDTH_PAIR", "LIP_CENTRES", "LIPS_INNER", "LIPS_OUTER", "LOWER_FACE_OVAL",
           "LOWER_FACE_POLYGON", "MOUTH_CORNERS", "NOSE_BASE", "NUM_LANDMARKS", "RIGID_ANCHOR"]

# Lower face oval: from the image-left cheek (132, at the level of the nose base), down the jaw line, through the
# chin (152), up to the image-right cheek (361). Followed by NOSE_BASE it is a closed simple polygon.
LOWER_FACE_OVAL: tuple[int, ...] = (
    132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
)

# Line under the nose from the image-right cheek (425) through the alar creases and the subnasale (2) to the
# image-left cheek (205). Closes the lower-face polygon at the top.
NOSE_BASE: tuple[int, ...] = (425, 327, 326, 2, 97, 98, 205)

# The detailed mask polygon: lips, jaw and lower cheeks up to the nose base.
LOWER_FACE_POLYGON: tuple[int, ...] = LOWER_FACE_OVAL + NOSE_BASE

# Cheek-to-cheek points at the level of the nose: their distance (the face width) scales the mask margins.
FACE_WIDTH_PAIR: tuple[int, int] = (234, 454)

# Top of the upper lip and bottom of the lower lip on the face's midline.
LIP_CENTRES: tuple[int, int] = (0, 17)

# Points that move with the head but not with the jaw (the nose base and the cheeks at the nose's level): their mean
# follows the face's translation, so masks aligned on it keep the jaw's motion inside the mask.
RIGID_ANCHOR: tuple[int, ...] = NOSE_BASE + FACE_WIDTH_PAIR
