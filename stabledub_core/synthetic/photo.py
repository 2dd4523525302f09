"""The real photo the avatars are made from: the bundled astronaut (scikit-image's ``astronaut``, public domain),
with its mouth painted out and its person matte, skin and hair regions.

The photo is ``tests/data/astronaut.jpg`` of the repository (512 x 512). Its key points (MediaPipe landmarks measured
once on that file) are constants here, so building an avatar needs no face tracker. A real face photo is used
because MediaPipe's face landmarker must find the avatar's face in every frame (``train preprocess`` drops clips
where it does not); the mouth is re-drawn by ``synthetic.mouth`` in every frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stabledub_core.errors import InputFileNotFoundError

REPO = Path(__file__).resolve().parents[2]
PHOTO_PATH = REPO / "tests" / "data" / "astronaut.jpg"

# Key points in photo pixels (MediaPipe landmarks of the photo).
MOUTH_CENTRE = (223.4, 147.0)  # between the outer lip midpoints 0 and 17
MOUTH_CORNERS = ((202.3, 139.2), (244.8, 140.7))  # 61, 291
FACE_CENTRE = (225.0, 118.0)  # centre of the face oval
NECK = (223.0, 195.0)  # the head turns about this point
CHIN_Y = 177.8
NOSE_Y = 131.3
LIPS_OUTER = ((202.3, 139.2), (204.4, 143.6), (207.2, 147.8), (211.2, 151.7), (216.5, 154.2), (222.9, 155.1),
              (229.2, 154.6), (234.7, 152.5), (239.0, 148.9), (242.3, 144.9), (244.8, 140.7), (242.6, 140.3),
              (239.5, 140.0), (235.5, 139.9), (229.8, 139.8), (223.5, 140.6), (217.3, 139.3), (211.6, 139.0),
              (207.7, 138.8), (204.7, 138.9))
FACE_OVAL = ((225.9, 72.3), (238.6, 73.2), (249.3, 75.1), (258.8, 78.5), (264.5, 83.6), (267.9, 89.9), (269.6, 96.8),
             (270.2, 105.6), (269.8, 114.1), (269.1, 123.1), (267.8, 132.9), (265.2, 143.5), (261.1, 152.4),
             (256.3, 159.2), (249.9, 165.5), (244.3, 170.2), (238.2, 174.4), (230.8, 177.3), (221.5, 177.8),
             (212.3, 176.3), (205.3, 172.5), (199.8, 167.7), (194.8, 162.5), (189.2, 155.8), (185.5, 148.7),
             (182.7, 139.5), (181.4, 128.5), (181.0, 118.6), (181.0, 109.6), (181.0, 101.1), (182.0, 92.4),
             (184.0, 85.6), (187.6, 79.7), (193.5, 75.2), (202.9, 72.7), (213.4, 71.9))
# The person (hair, face, neck, collar) lies inside this box; GrabCut separates it from the wall behind.
PERSON_BOX = (110, 0, 340, 230)  # x0, y0, x1, y1
COLLAR_Y = 190.0  # below this the collar begins; the avatar's shirt is drawn from here down
HAIR_BLUR = 4.0  # photo pixels
HAIR_DARKEST = 12.0  # CIELAB lightness below the hair's mean


@dataclass(frozen=True)
class PhotoLayers:
    """The photo prepared for avatars (all ``(512, 512, ...)``, photo pixels).

    Args:
        image: ``(H, W, 3)`` float32 RGB 0-255, the mouth painted out (inpainted with the skin around it).
        matte: ``(H, W)`` float32 0-1, the person (feathered).
        skin: ``(H, W)`` float32 0-1, how much each pixel is skin (face and neck, by colour).
        hair: ``(H, W)`` float32 0-1, how much each pixel is hair.
        skin_lab: Median skin colour, CIELAB (OpenCV float scale: L 0-100).
        hair_lab: Mean hair colour, CIELAB.
    """

    image: np.ndarray
    matte: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    skin_lab: np.ndarray
    hair_lab: np.ndarray


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RGB 0-255 -> CIELAB float32 (L 0-100, a and b about -128..127)."""
    rgb = np.asarray(rgb, np.float32)
    return cv2.cvtColor((rgb / 255.0).reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(rgb.shape)


def to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_lab`: RGB float32 0-255 (clipped)."""
    lab = np.asarray(lab, np.float32)
    return np.clip(cv2.cvtColor(lab.reshape(-1, 1, 3), cv2.COLOR_LAB2RGB).reshape(lab.shape) * 255.0, 0, 255)


def _feather(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), radius)


@functools.lru_cache(maxsize=2)
def photo_layers(path: str = str(PHOTO_PATH)) -> PhotoLayers:
    """The :class:`PhotoLayers` of the photo (computed once per process).

    Args:
        path: The astronaut photo (the repository's ``tests/data/astronaut.jpg``).
    """
    bgr = cv2.imread(path)
    if bgr is None:
        raise InputFileNotFoundError(f"avatar photo {path!r} is missing or unreadable: it ships with the "
                                     "repository as tests/data/astronaut.jpg")
    oval = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(oval, [np.round(np.array(FACE_OVAL)).astype(np.int32)], 1)
    lips = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(np.array(LIPS_OUTER)).astype(np.int32)], 255)
    lips = cv2.dilate(lips, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    painted = cv2.inpaint(bgr, lips, 7, cv2.INPAINT_TELEA)

    cut = np.full(bgr.shape[:2], cv2.GC_BGD, np.uint8)
    x0, y0, x1, y1 = PERSON_BOX
    cut[y0:y1, x0:x1] = cv2.GC_PR_BGD
    cv2.ellipse(cut, (225, 95), (80, 95), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cut[oval > 0] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, cut, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    person = np.isin(cut, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    person = cv2.morphologyEx(person, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))

    image = cv2.cvtColor(painted, cv2.COLOR_BGR2RGB).astype(np.float32)
    lab = to_lab(image)
    skin_lab = np.median(lab[(oval > 0) & (lips == 0)], axis=0)
    distance = np.linalg.norm((lab - skin_lab) * np.array([0.5, 1.0, 1.0], np.float32), axis=-1)
    rows = np.arange(bgr.shape[0], dtype=np.float32)[:, None]
    near_face = cv2.dilate(oval, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))) > 0
    neck = person.astype(bool) & (rows > CHIN_Y - 10) & (rows < COLLAR_Y + 10)
    skin = np.exp(-0.5 * (distance / 14.0) ** 2) * (near_face | neck)
    skin = np.maximum(skin, _feather(oval * (lips > 0), 2))
    hair_region = (person.astype(bool) & ~near_face & (rows < CHIN_Y)).astype(np.uint8)
    # Close the dark gaps between curls (they are hair too, and the darkest of them face-like to a detector).
    hair_region = cv2.morphologyEx(hair_region, cv2.MORPH_CLOSE,
                                   cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))).astype(bool)
    hair_region &= ~near_face
    hair = _feather(hair_region, 1.5) * (1 - skin)
    hair_lab = lab[hair_region].mean(axis=0)
    # Soften the hair's texture: some of its dark curls look like a second small face to the face detector. The
    # curls' shadows are lifted (lightness at most HAIR_DARKEST below the hair's mean) and the texture blurred.
    lifted = lab.copy()
    lifted[..., 0] = np.maximum(lab[..., 0], hair_lab[0] - HAIR_DARKEST)
    soft = cv2.GaussianBlur(to_rgb(lifted), (0, 0), HAIR_BLUR)
    image = image + (soft - image) * hair[..., None]
    return PhotoLayers(image, _feather(person, 1.0), skin.astype(np.float32), hair.astype(np.float32),
                       skin_lab.astype(np.float32), hair_lab.astype(np.float32))
