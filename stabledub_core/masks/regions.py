"""Named index sets of the MediaPipe Face Landmarker's 478-point face mesh used to build the mouth masks.

Indices follow MediaPipe's canonical face mesh (468 mesh points + 10 iris points). "Left"/"right" below are the image
sides of a frontal face (the subject's right cheek appears on the image's left).
"""

from __future__ import annotations

NUM_LANDMARKS = 478

# Lower face oval: from the cheek on the image's left, down the jaw line, through the chin (152), up to the cheek on
# the image's right. Ordered so that, followed by NOSE_BASE, it is a closed simple polygon.
LOWER_FACE_OVAL: tuple[int, ...] = (
    93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323,
)

# Line under the nose from the image's right alar crease, through the subnasale (2), to the image's left alar crease.
# Closes the lower-face polygon at the top.
NOSE_BASE: tuple[int, ...] = (425, 327, 326, 2, 97, 98, 205)

# Outer lip contour, clockwise from the image-left mouth corner (61) along the lower lip to the right corner (291).
LIPS_OUTER: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
)

# Inner lip contour (the mouth opening), same orientation.
LIPS_INNER: tuple[int, ...] = (
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
)

# The detailed mask polygon: lips, jaw and lower cheeks up to the nose base.
LOWER_FACE_POLYGON: tuple[int, ...] = LOWER_FACE_OVAL + NOSE_BASE

# Points whose distance measures the face's width (cheek to cheek at the level of the nose); scales mask margins.
FACE_WIDTH_PAIR: tuple[int, int] = (234, 454)

# Mouth corners and lip centres (upper lip top, lower lip bottom), handy for previews and tests.
MOUTH_CORNERS: tuple[int, int] = (61, 291)
LIP_CENTRES: tuple[int, int] = (0, 17)
