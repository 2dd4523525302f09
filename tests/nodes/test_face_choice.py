"""Speaker choice in the nodes: Track Faces, Dub and Dub Video File dub the largest face, the one at an index from
the left, or the one under a point of the first frame (TrackingOptions' face, face_index, face_x, face_y)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.comfy_stub import REPO, random_model_node, run_node
from helpers.media_factory import tone, write_video
from stabledub_core.face.indices import LIPS_INNER

FRAMES, FPS = 8, 25.0
CHECKPOINT = "face_choice.safetensors"
FACE_MODEL = "face_landmarker.task"
RIGHT = (600, 100, 360)  # x, y, side of the right-hand (smaller) copy of the face
RIGHT_POINT = dict(face_x=780, face_y=300)  # a point on the right-hand face
VALUES = dict(length_policy="trim", steps=1, scheduler="ddim", audio_scale=2.0, habit_scale=1.5, seed=2, overlap=4,
              windows_per_chunk=1, reference="closed_lips", habit_frames=4, mask_margin=0.08, occluder_grid=16,
              occluder_fraction=0.2)


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, size: int) -> None:
    canvas[y:y + size, x:x + size] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    """(512, 1024, 3) uint8: the astronaut on the left (512 px) and a smaller copy on the right."""
    astronaut = cv2.cvtColor(cv2.imread(str(REPO / "tests" / "data" / "astronaut.jpg")), cv2.COLOR_BGR2RGB)
    canvas = np.full((512, 1024, 3), 90, np.uint8)
    paste(canvas, astronaut, 0, 0, 512)
    paste(canvas, astronaut, *RIGHT)
    return canvas


@pytest.fixture(scope="module")
def setup(comfy, two_faces):
    handle = random_model_node(comfy, CHECKPOINT)
    audio = {"waveform": torch.from_numpy(tone(FRAMES / FPS, 16000, freq=200.0))[None], "sample_rate": 16000}
    images = torch.from_numpy(np.stack([two_faces] * FRAMES)).float() / 255
    return {"model": handle, "audio": audio, "images": images}


def lips_x(track) -> np.ndarray:
    return np.asarray(track.landmarks)[:, LIPS_INNER, 0].mean(axis=-1)  # (F,)


def changed_columns(before: np.ndarray, after: np.ndarray, threshold: float) -> np.ndarray:
    """x of the columns where the dub changed the frames (mean over frames and rows of |after - before|)."""
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(axis=(0, 1, 3))  # (W,)
    return np.flatnonzero(diff > threshold)


@pytest.mark.parametrize("choice, side", [
    ({}, "left"),  # the default: the largest
    (dict(face="index", face_index=1), "right"),
    (dict(face="point", **RIGHT_POINT), "right"),
    (dict(face="point", face_x=250, face_y=300), "left"),
])
def test_track_faces_follows_the_chosen_face(comfy, setup, choice, side):
    (track,) = run_node(comfy, "StableDubTrackFaces", images=setup["images"], fps=FPS, face_model=FACE_MODEL,
                        **choice)
    x = lips_x(track)
    assert ((x < 512) if side == "left" else (x > RIGHT[0])).all()


def test_dub_dubs_the_right_hand_face(comfy, setup):
    before = (setup["images"].numpy() * 255).round().astype(np.uint8)
    images, _, _ = run_node(comfy, "StableDubDub", model=setup["model"], images=setup["images"], audio=setup["audio"],
                            fps=FPS, face_model=FACE_MODEL, face="index", face_index=1, **VALUES)
    columns = changed_columns(before, (images.numpy() * 255).round().astype(np.uint8), 0.0)
    assert len(columns) and columns.min() > RIGHT[0]  # only the right-hand face's mouth changed
    images, _, _ = run_node(comfy, "StableDubDub", model=setup["model"], images=setup["images"], audio=setup["audio"],
                            fps=FPS, face_model=FACE_MODEL, **VALUES)
    columns = changed_columns(before, (images.numpy() * 255).round().astype(np.uint8), 0.0)
    assert len(columns) and columns.max() < 512  # by default the largest: the left one


def test_dub_video_file_dubs_the_face_under_the_point(comfy, setup, two_faces):
    write_video(comfy.root / "input" / "two_faces.mp4", FRAMES, fps=FPS, size=two_faces.shape[:2],
                frames=[two_faces] * FRAMES)
    (path,) = run_node(comfy, "StableDubDubVideoFile", model=setup["model"], video="two_faces.mp4",
                       face_model=FACE_MODEL, filename_prefix="faces/dub", format="mp4", crf=0, invert=False,
                       audio=setup["audio"], face="point", **RIGHT_POINT, **VALUES)
    with av.open(str(path)) as c:
        after = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(comfy.root / "input" / "two_faces.mp4")) as c:
        before = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert after.shape == before.shape
    columns = changed_columns(before, after, 2.0)  # above the noise of re-encoding
    assert len(columns) and columns.min() > RIGHT[0]
    assert Path(path).parent == comfy.root / "output" / "faces"


@pytest.mark.parametrize("node", ["StableDubTrackFaces", "StableDubDub", "StableDubDubVideoFile"])
def test_face_widgets_come_from_the_tracking_options(comfy, node):
    from stabledub_core.pipeline.options import TrackingOptions

    required = comfy.nodes[node].INPUT_TYPES()["required"]
    defaults = TrackingOptions()
    assert required["face"][0] == ["largest", "index", "point"]
    for name in ("face", "face_index", "face_x", "face_y"):
        assert required[name][1]["default"] == getattr(defaults, name) and required[name][1]["tooltip"]
