"""Head angles (yaw, pitch, roll) from the 478 tracked landmarks, for the preprocessing head-angle filter.

Method: a perspective-n-point fit of MediaPipe's canonical face model to the tracked 2D landmarks.

- The 3D model is the canonical face mesh that ships inside ``face_landmarker.task`` itself (the
  ``geometry_pipeline_metadata_landmarks.binarypb`` member: 468 vertices in centimetres, x to the subject's left, y
  up, z towards the viewer), the mesh MediaPipe's own facial transformation matrix is fitted to. Landmark ``i < 468``
  of the tracker is vertex ``i`` of that mesh (the 10 iris points are not used).
- The camera is a pinhole with the principal point at the frame centre and a focal length of ``max(H, W)`` pixels
  (a ~53 degree field of view, a typical webcam or phone; the tracked landmarks carry no focal length). The angles
  depend little on it: the face is small against its distance.
- ``cv2.solvePnP`` (SQPnP, a globally optimal solver that needs no initial guess) gives the rotation of the model
  into the camera and the face's position; with the model's axes turned into the camera's (x right, y down, z away
  from the camera), and the rotation taken relative to the line of sight to the face (a face off the frame centre
  is seen obliquely: :func:`line_of_sight`), a face looking at the camera has the identity rotation ``H``.
  ``H = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` about the camera axes:

  - yaw (about the vertical axis): > 0 when the face turns towards image-left (the subject's right);
  - pitch (about the horizontal axis): > 0 when the face looks down;
  - roll (about the optical axis, applied last, so an in-plane rotation of the image changes roll only): > 0 when
    the face turns clockwise on screen (``cv2.getRotationMatrix2D(centre, +a, 1)``, a counter-clockwise image
    rotation, lowers roll by ``a``).

Tested on the canonical mesh projected with known angles and on the real face photo rotated in-plane
(``tests/train/test_preprocess.py``).
"""

from __future__ import annotations

import struct
import zipfile
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from stabledub_core.errors import FaceModelNotFoundError, LandmarkShapeError
from stabledub_core.face.indices import NUM_LANDMARKS
from stabledub_core.face.landmarker import MODEL_FILENAME, MODEL_URL, check_model_path

GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
MESH_VERTICES = 468  # the canonical mesh has no iris points
# Model axes (x subject's left, y up, z to the viewer) -> camera axes (x right, y down, z away from the camera)
_MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes):
    """``(field number, wire type, value)`` of a serialised protobuf message (value: int or bytes)."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_canonical_mesh(data: bytes) -> np.ndarray:
    """The canonical mesh's vertex positions from a serialised ``GeometryPipelineMetadata``.

    The message (MediaPipe's ``geometry_pipeline_metadata.proto``) holds ``canonical_mesh`` (field 1, a ``Mesh3d``)
    whose ``vertex_buffer`` (field 3, floats, packed or not) has 5 floats per vertex: x, y, z, u, v.

    Args:
        data: The bytes of ``geometry_pipeline_metadata_landmarks.binarypb``.

    Returns:
        ``(V, 3)`` float64 vertex positions in centimetres.
    """
    floats: list[float] = []
    for number, wire, value in _fields(data):
        if number != 1 or wire != 2:
            continue
        for inner, inner_wire, item in _fields(value):
            if inner != 3:
                continue
            if inner_wire == 5:
                floats.append(struct.unpack("<f", item)[0])
            elif inner_wire == 2:
                floats.extend(np.frombuffer(item, "<f4").tolist())
    if not floats or len(floats) % 5:
        raise ValueError(f"no 5-float vertex buffer in the canonical mesh ({len(floats)} floats)")
    return np.asarray(floats, np.float64).reshape(-1, 5)[:, :3]


@lru_cache(maxsize=4)
def canonical_face_points(face_model: str) -> np.ndarray:
    """``(468, 3)`` float64: the canonical face mesh of a ``face_landmarker.task`` bundle, in camera axes.

    Args:
        face_model: Path of ``face_landmarker.task`` (or a folder holding it), as a string (cached per path).

    Raises:
        FaceModelNotFoundError: The file is missing or is not a face landmarker bundle with the mesh.
    """
    path = check_model_path(face_model)
    try:
        with zipfile.ZipFile(path) as bundle:
            points = parse_canonical_mesh(bundle.read(GEOMETRY_MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError, IndexError) as error:
        raise FaceModelNotFoundError(f"'{path}' holds no canonical face mesh ({GEOMETRY_MEMBER}): download "
                                     f"{MODEL_FILENAME} again from {MODEL_URL}") from error
    if points.shape != (MESH_VERTICES, 3):
        raise FaceModelNotFoundError(f"the canonical face mesh in '{path}' has {len(points)} vertices, expected "
                                     f"{MESH_VERTICES}: download {MODEL_FILENAME} again from {MODEL_URL}")
    return points @ _MODEL_TO_CAMERA


def camera_matrix(frame_size: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` pinhole intrinsics: focal length ``max(H, W)`` pixels, principal point at the frame centre."""
    height, width = frame_size
    focal = float(max(height, width))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """``(3,)`` degrees (yaw, pitch, roll) of a head rotation ``H = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.

    Args:
        rotation: ``(3, 3)`` head rotation in camera axes (identity = frontal).
    """
    h = np.asarray(rotation, np.float64)
    yaw = np.arcsin(np.clip(-h[2, 0], -1.0, 1.0))
    pitch = np.arctan2(h[2, 1], h[2, 2])
    roll = np.arctan2(h[1, 0], h[0, 0])
    return np.degrees([yaw, pitch, roll])


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` from degrees (the inverse of :func:`euler_angles`)."""
    y, p, r = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


def head_angles(landmarks: np.ndarray, frame_size: tuple[int, int], face_model) -> np.ndarray:
    """Yaw, pitch and roll of every frame (see the module docstring for the method and the signs).

    Args:
        landmarks: ``(F, 478, 2)`` pixel landmarks of one face (NaN where the frame has none).
        frame_size: ``(H, W)`` of the frames.
        face_model: ``face_landmarker.task`` (its canonical mesh is the 3D model).

    Returns:
        ``(F, 3)`` float32 degrees (yaw, pitch, roll); NaN for frames without landmarks.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
        raise LandmarkShapeError(f"head_angles needs (F, {NUM_LANDMARKS}, 2) landmarks, got {landmarks.shape}")
    model = canonical_face_points(str(Path(face_model)))  # (468, 3)
    intrinsics = camera_matrix(frame_size)
    out = np.full((len(landmarks), 3), np.nan, np.float32)
    for i, points in enumerate(landmarks[:, :MESH_VERTICES]):
        if not np.isfinite(points).all():
            continue
        ok, rvec, tvec = cv2.solvePnP(model, np.ascontiguousarray(points), intrinsics, None,
                                      flags=cv2.SOLVEPNP_SQPNP)
        if ok:
            out[i] = euler_angles(line_of_sight(tvec[:, 0]).T @ cv2.Rodrigues(rvec)[0])
    return out


def line_of_sight(translation: np.ndarray) -> np.ndarray:
    """``(3, 3)``: the smallest rotation taking the optical axis (0, 0, 1) onto the direction of ``translation``.

    A face away from the frame centre is seen obliquely; angles are measured against the line of sight (what a crop
    around the face shows), not against the optical axis.
    """
    direction = np.asarray(translation, np.float64) / np.linalg.norm(translation)
    axis = np.cross([0.0, 0.0, 1.0], direction)
    sine, cosine = np.linalg.norm(axis), direction[2]
    if sine < 1e-12:
        return np.eye(3)
    return cv2.Rodrigues(axis / sine * np.arctan2(sine, cosine))[0]
