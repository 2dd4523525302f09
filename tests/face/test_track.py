"""Face tracking on the real test media (MediaPipe Face Landmarker)."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stabledub_core.face import (FaceModelNotFoundError, FaceSelection, FaceTrack, FaceTracker, FineSearchConfig,
                                 FrameFormatError, TrackStatus)
from stabledub_core.face.indices import LIPS_INNER, mouth_centre
from stabledub_core.face.landmarker import FaceCounter
from stabledub_core.face.search import FineSearch, keeps_face
from stabledub_core.face.track import TrackBuilder

around = FineSearch.around

ASTRONAUT_LIP_CENTRE = np.array([223.0, 146.0])  # helpers/repo_media.py
ASTRONAUT_CORNERS = np.array([[202.0, 139.0], [244.0, 141.0]])


def read_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (F, H, W, 3)


@pytest.fixture(scope="module")
def pan(media_dir) -> np.ndarray:
    return read_video(media_dir / "face_pan.mp4")


@pytest.fixture(scope="module")
def astronaut(media_dir) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(media_dir / "astronaut.png")), cv2.COLOR_BGR2RGB)  # (512, 512, 3)


@pytest.fixture(scope="module")
def tracker(face_model_path):
    with FaceTracker(face_model_path) as t:
        yield t


def lip_centre(landmarks: np.ndarray) -> np.ndarray:
    return landmarks[..., LIPS_INNER, :].mean(axis=-2)


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, size: int) -> None:
    canvas[y:y + size, x:x + size] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", ["face_pan.mp4", "face_occluded.mp4"])
def test_tracks_every_frame_of_the_test_videos(tracker, media_dir, name):
    frames = read_video(media_dir / name)
    track = tracker.track(frames, fps=25)
    assert len(track) == 75 and track.frame_size == (512, 512)
    assert (track.status == TrackStatus.DETECTED).all()
    assert np.isfinite(track.landmarks).all()
    assert np.allclose(track.times, np.arange(75) / 25)
    # The head moves smoothly: the lips never jump more than a few pixels between frames.
    assert np.linalg.norm(np.diff(mouth_centre(track.landmarks), axis=0), axis=-1).max() < 8


def test_smoothing_halves_landmark_jitter_on_the_real_video(face_model_path, pan):
    # Asked for several faces, MediaPipe re-detects the face every frame and its raw landmarks jitter most.
    with FaceTracker(face_model_path, smoothing=None, face_count_interval=0) as tracker:
        raw = tracker.track(pan[:30], fps=25).landmarks
    with FaceTracker(face_model_path, face_count_interval=0) as tracker:
        smooth = tracker.track(pan[:30], fps=25).landmarks
    accel = lambda x: np.sqrt((np.diff(x, 2, axis=0) ** 2).mean())  # noqa: E731  jitter shows as acceleration
    assert accel(smooth) < 0.7 * accel(raw)
    assert np.abs(smooth - raw).mean() < 1.0  # pixels: no visible lag on the panning head
    with FaceTracker(face_model_path) as tracker:  # the default: one face, followed from its last landmarks
        default = tracker.track(pan[:30], fps=25).landmarks
    assert accel(default) < accel(smooth)


def test_astronaut_lip_centre_and_corners(tracker, astronaut):
    track = tracker.track([astronaut], fps=25)
    landmarks = track.landmarks[0]
    assert np.linalg.norm(lip_centre(landmarks) - ASTRONAUT_LIP_CENTRE) < 4
    assert np.linalg.norm(landmarks[[61, 291]] - ASTRONAUT_CORNERS, axis=-1).max() < 4


@pytest.mark.parametrize("max_gap, expected", [(3, TrackStatus.INTERPOLATED), (0, TrackStatus.MISSING)])
def test_faceless_frames_are_interpolated_or_missing(face_model_path, pan, max_gap, expected):
    frames = list(pan[:14])
    frames[8] = np.zeros_like(pan[0])  # blank
    frames[9] = np.full_like(pan[0], 200)
    with FaceTracker(face_model_path, max_gap=max_gap) as tracker:
        track = tracker.track(frames, fps=25)
    assert track.status[8] == expected and track.status[9] == expected
    assert (np.delete(track.status, [8, 9]) == TrackStatus.DETECTED).all()
    if expected is TrackStatus.INTERPOLATED:
        between = (track.landmarks[7] + track.landmarks[10]) / 2
        assert np.abs(track.landmarks[8:10].mean(axis=0) - between).max() < 1e-3
    else:
        assert np.isnan(track.landmarks[8:10]).all()


def test_long_gap_is_missing_and_the_track_recovers(face_model_path, pan):
    frames = np.concatenate([pan[:5], np.zeros((6,) + pan.shape[1:], np.uint8), pan[5:10]])
    with FaceTracker(face_model_path, max_gap=3) as tracker:
        track = tracker.track(frames, fps=25)
    assert (track.status[5:11] == TrackStatus.MISSING).all()
    assert (track.status[:5] == TrackStatus.DETECTED).all() and (track.status[11:] == TrackStatus.DETECTED).all()


def test_a_video_without_a_face_is_all_missing(face_model_path):
    with FaceTracker(face_model_path, search=FineSearchConfig(tile_interval=3)) as tracker:
        track = tracker.track(np.zeros((7, 64, 96, 3), np.uint8), fps=25)
        assert tracker.timer.calls["detect"] == 7 and tracker.timer.calls["tiles"] == 3  # frames 0, 3 and 6
    assert (track.status == TrackStatus.MISSING).all() and np.isnan(track.landmarks).all()


@pytest.mark.parametrize("flip", ["vertical", "rotate180"])
def test_upside_down_frame_is_interpolated(tracker, pan, flip):
    # MediaPipe fits an upright face to the vertically flipped photo (its "lips" on the flipped eyes): the jump
    # breaks the track's continuity, so the frame counts as faceless and is interpolated.
    frames = list(pan[:12])
    frames[6] = np.ascontiguousarray(pan[6, ::-1] if flip == "vertical" else pan[6, ::-1, ::-1])
    track = tracker.track(frames, fps=25)
    expected = np.zeros(12, np.uint8)
    expected[6] = TrackStatus.INTERPOLATED
    assert np.array_equal(track.status, expected)
    assert np.linalg.norm(lip_centre(track.landmarks[6]) - lip_centre(track.landmarks[5])) < 3


def test_a_cut_to_another_shot_starts_a_new_track_without_losing_frames(face_model_path, pan, astronaut):
    # After frame 6 the face sits elsewhere and smaller (another shot): held back, then accepted from the cut on.
    other = np.full_like(pan[0], 90)
    paste(other, astronaut, 200, 180, 300)
    frames = list(pan[:6]) + [other] * 8
    with FaceTracker(face_model_path, max_gap=3) as tracker:
        track = tracker.track(frames, fps=25)
    assert (track.status == TrackStatus.DETECTED).all()
    expected = np.array([200, 180]) + ASTRONAUT_LIP_CENTRE * 300 / 512
    assert np.linalg.norm(lip_centre(track.landmarks[6:]) - expected, axis=-1).max() < 3


@pytest.fixture(scope="module")
def two_faces(astronaut) -> np.ndarray:
    canvas = np.full((512, 1024, 3), 90, np.uint8)
    paste(canvas, astronaut, 0, 0, 512)  # large face on the left
    paste(canvas, astronaut, 600, 100, 360)  # smaller copy on the right
    return canvas


@pytest.mark.parametrize("selection, index, side", [
    (FaceSelection.LARGEST, 0, "left"),
    (FaceSelection.INDEX, 0, "left"),
    (FaceSelection.INDEX, 1, "right"),
])
def test_face_selection_on_two_faces(face_model_path, two_faces, selection, index, side):
    with FaceTracker(face_model_path, selection=selection, face_index=index) as tracker:
        track = tracker.track([two_faces] * 3, fps=25)
    assert (track.status == TrackStatus.DETECTED).all()
    x = lip_centre(track.landmarks)[:, 0]
    assert ((x < 512) if side == "left" else (x > 600)).all()


def test_nearest_selection_follows_the_first_pick(face_model_path, astronaut):
    # Frame 0 shows one face on the right; then a larger face appears on the left: NEAREST keeps the right one.
    first = np.full((512, 1024, 3), 90, np.uint8)
    paste(first, astronaut, 600, 100, 360)
    later = first.copy()
    paste(later, astronaut, 0, 0, 512)
    with FaceTracker(face_model_path, selection=FaceSelection.NEAREST) as tracker:
        track = tracker.track([first, later, later], fps=25)
    assert (track.status == TrackStatus.DETECTED).all()
    assert (lip_centre(track.landmarks)[:, 0] > 600).all()
    with FaceTracker(face_model_path, selection=FaceSelection.NEAREST) as tracker:
        fresh = tracker.track([later, later], fps=25)  # no history: the initial pick (LARGEST) is the left face
    assert (lip_centre(fresh.landmarks)[:, 0] < 512).all()


def test_small_face_in_a_portrait_frame_is_found_by_the_fine_search(face_model_path, astronaut):
    # The photo 200 px high in a 1080x1920 portrait frame: a face of ~45 px, 2.3 % of the frame height.
    canvas = np.full((1920, 1080, 3), 90, np.uint8)
    x, y, size = 700, 1300, 200
    paste(canvas, astronaut, x, y, size)
    expected = np.array([x, y]) + ASTRONAUT_LIP_CENTRE * size / 512
    with FaceTracker(face_model_path) as tracker:
        track = tracker.track([canvas, canvas], fps=25)
        assert (track.status == TrackStatus.DETECTED).all()
        assert np.linalg.norm(lip_centre(track.landmarks) - expected, axis=-1).max() < 3
        # The full-frame pass misses it, the tiles find it, then the zoomed crop carries the track.
        assert tracker.timer.calls["tiles"] == 1 and tracker.timer.calls["zoom"] == 1
    with FaceTracker(face_model_path, search=FineSearchConfig(enabled=False)) as tracker:
        assert (tracker.track([canvas], fps=25).status == TrackStatus.MISSING).all()


@pytest.mark.parametrize("height, width", [(333, 517), (900, 404)])
def test_odd_and_portrait_frame_sizes(tracker, astronaut, height, width):
    canvas = np.full((height, width, 3), 90, np.uint8)
    size = min(height, width) - 3
    paste(canvas, astronaut, 1, height - size - 2, size)
    track = tracker.track([canvas] * 2, fps=30)
    assert track.frame_size == (height, width) and (track.status == TrackStatus.DETECTED).all()
    expected = np.array([1, height - size - 2]) + ASTRONAUT_LIP_CENTRE * size / 512
    assert np.linalg.norm(lip_centre(track.landmarks[0]) - expected) < 4


def test_streaming_chunks_match_the_whole_clip(face_model_path, pan):
    frames = list(pan[:12])
    frames[5] = frames[6] = np.zeros_like(pan[0])
    with FaceTracker(face_model_path, max_gap=2) as tracker:
        whole = tracker.track(frames, fps=25)
        tracker.reset()
        chunks, held = [], []
        for i, frame in enumerate(frames):
            chunk = tracker.feed(frame, i / 25)
            chunks += [] if chunk is None else [chunk]
            held.append(i + 1 - (chunks[-1].start + len(chunks[-1]) if chunks else 0))
        chunks += [c for c in [tracker.flush()] if c is not None]
        streamed = list(tracker.stream((frame, i / 25) for i, frame in enumerate(frames)))
    assert max(held) <= tracker.lookahead
    assert len(chunks) > 2 and [c.start for c in chunks] == sorted(c.start for c in chunks)
    joined = FaceTrack.concatenate(chunks)
    assert np.array_equal(joined.status, whole.status) and np.allclose(joined.landmarks, whole.landmarks)
    assert (joined.status[5:7] == TrackStatus.INTERPOLATED).all()
    assert [(c.start, len(c)) for c in streamed] == [(c.start, len(c)) for c in chunks]


def test_missing_model_error_names_the_path(tmp_path):
    missing = tmp_path / "models" / "mediapipe" / "face_landmarker.task"
    with pytest.raises(FaceModelNotFoundError, match=str(missing).replace("\\", "\\\\")) as info:
        FaceTracker(missing)
    assert "models/mediapipe" in str(info.value) and isinstance(info.value, FileNotFoundError)
    missing.parent.mkdir(parents=True)
    with pytest.raises(FaceModelNotFoundError, match="face_landmarker.task"):
        FaceTracker(missing.parent)  # a folder without the model


def test_model_folder_is_accepted(face_model_path, pan):
    with FaceTracker(face_model_path.parent) as tracker:
        assert tracker.model_path == face_model_path
        assert tracker.track(pan[:2], fps=25).status.tolist() == [0, 0]


def test_bad_input_gets_clear_errors(tracker):
    with pytest.raises(FrameFormatError, match="uint8"):
        tracker.track([np.zeros((64, 64, 3), np.float32)], fps=25)
    with pytest.raises(ValueError, match="fps"):
        tracker.track([np.zeros((64, 64, 3), np.uint8)])
    tracker.reset()
    tracker.feed(np.zeros((64, 64, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="increase"):
        tracker.feed(np.zeros((64, 64, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="reset"):
        tracker.feed(np.zeros((64, 80, 3), np.uint8), 1.0)


def test_track_save_load_and_slicing(tmp_path, tracker, pan):
    track = tracker.track(pan[:6], fps=25)
    track.save(tmp_path / "t.npz")
    loaded = FaceTrack.load(tmp_path / "t.npz")
    assert np.array_equal(loaded.landmarks, track.landmarks) and loaded.frame_size == (512, 512)
    part = track[2:5]
    assert part.start == 2 and len(part) == 3 and np.array_equal(part.landmarks, track.landmarks[2:5])


def test_the_full_frame_pass_is_retried_while_the_zoom_carries_the_track(face_model_path, astronaut):
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    paste(canvas, astronaut, 900, 400, 400)  # face ~80 px: too small for the full-frame pass
    with FaceTracker(face_model_path, search=FineSearchConfig(full_frame_interval=3)) as tracker:
        track = tracker.track([canvas] * 7, fps=25)
        calls = dict(tracker.timer.calls)
    assert (track.status == TrackStatus.DETECTED).all()
    # Frame 0: full frame, tiles. Frames 1-6: zoom first; the full-frame pass again at frames 3 and 6.
    assert calls == {"count": 1, "detect": 3, "tiles": 1, "zoom": 6, "smooth": 7}  # faces counted at frame 0


def test_a_zoomed_face_is_followed_in_video_mode(face_model_path, astronaut, monkeypatch):
    # A face too small for the full-frame pass drifts 3 px a frame across a 1080p frame. The zoom box stays put
    # while the face stays well inside it, and MediaPipe follows the face there in VIDEO mode, as accurately as
    # fresh IMAGE-mode searches (the Python API's one, used when no VIDEO landmarker is given).
    frames, expected = [], []
    for i in range(12):
        canvas = np.full((1080, 1920, 3), 90, np.uint8)
        x = 900 + 3 * i
        paste(canvas, astronaut, x, 400, 400)
        frames.append(canvas)
        expected.append(np.array([x, 400]) + ASTRONAUT_LIP_CENTRE * 400 / 512)
    boxes = []
    follow = FineSearch._follow

    def spy(self, face, size):
        boxes.append(follow(self, face, size))
        return boxes[-1]

    monkeypatch.setattr(FineSearch, "_follow", spy)
    with FaceTracker(face_model_path) as tracker:
        followed = tracker.track(frames, fps=25)
    assert (followed.status == TrackStatus.DETECTED).all()
    assert len(boxes) >= 9 and len(set(boxes)) == 1  # one box for the whole drift
    error = np.linalg.norm(lip_centre(followed.landmarks) - np.array(expected), axis=-1)
    monkeypatch.setattr(FineSearch, "around", lambda self, frame, faces, timestamp_ms=None: around(self, frame, faces))
    with FaceTracker(face_model_path) as tracker:
        fresh = tracker.track(frames, fps=25)
    fresh_error = np.linalg.norm(lip_centre(fresh.landmarks) - np.array(expected), axis=-1)
    assert error.max() < 4 and error.mean() <= fresh_error.mean() + 1.0


def test_a_zoom_box_is_kept_while_the_face_stays_well_inside():
    face = np.array([[100.0, 100.0], [140.0, 150.0]])  # a face's extent (any landmarks: min and max matter)
    box, frame = (60, 70, 180, 190), (400, 600)  # a 120 px box (margin 20 px) in a 600x400 frame
    assert keeps_face(box, face, 120, frame)
    assert not keeps_face(box, face + [25, 0], 120, frame)  # its right edge 165 > 180 - 20
    assert keeps_face(box, face + [25, 0], 120, (400, 180))  # ... unless the box's right side is the frame's edge
    assert not keeps_face(box, face, 160, frame)  # the face grew: a new box would be a third larger
    assert not keeps_face(box, face, 90, frame)


def test_variable_frame_times(tracker, pan):
    # Irregular times, two of them within the same millisecond (MediaPipe's VIDEO timestamps are integer ms).
    times = [0.0, 0.0002, 0.05, 0.2, 0.21]
    track = tracker.track(pan[:5], times=times)
    assert (track.status == TrackStatus.DETECTED).all() and np.allclose(track.times, times)
    with pytest.raises(ValueError, match="more frames than times"):
        tracker.track(pan[:3], times=[0.0, 0.1])


@pytest.mark.parametrize("expected", [0, 3, 40, 1000])
def test_track_builder_joins_chunks_like_concatenate(expected):
    rng = np.random.default_rng(0)
    chunks, start = [], 7
    for n in [1, 1, 4, 1, 9, 2, 1, 1, 5]:
        chunks.append(FaceTrack(rng.random((n, 478, 2), np.float32), rng.integers(0, 3, n), (64, 48), start,
                                np.arange(start, start + n) / 25.0))
        start += n
    builder = TrackBuilder(expected)
    for chunk in chunks:
        builder.append(chunk)
    track = builder.build()
    assert (track.start, len(track), track.frame_size) == (7, 25, (64, 48))
    assert np.array_equal(track.landmarks, np.concatenate([c.landmarks for c in chunks]))
    assert np.array_equal(track.status, np.concatenate([c.status for c in chunks]))
    assert np.array_equal(track.times, np.arange(7, 32) / 25.0)
    assert track.landmarks.base is None or track.landmarks.base.shape[0] * 3 <= 4 * 25  # no large slack kept
    with pytest.raises(ValueError, match="not consecutive"):
        builder.append(chunks[0])
    with pytest.raises(ValueError, match="no track chunks"):
        TrackBuilder().build()


def test_one_face_is_tracked_alone_until_a_second_face_is_counted(face_model_path, pan, astronaut):
    # A one-face video: MediaPipe is asked for one face only (no detector pass per frame), with the same landmarks.
    with FaceTracker(face_model_path) as tracker:
        single = tracker.track(pan[:16], fps=25)
        assert tracker.tracked_faces == 1 and tracker.timer.calls["count"] == 2  # frames 0 and 8
    with FaceTracker(face_model_path, face_count_interval=0) as tracker:
        always = tracker.track(pan[:16], fps=25)
        assert tracker.tracked_faces == 4 and "count" not in tracker.timer.calls
    assert (single.status == TrackStatus.DETECTED).all()
    distance = np.linalg.norm(single.landmarks - always.landmarks, axis=-1)  # (F, 478): only MediaPipe's ROI differs
    assert distance.mean() < 1.0 and distance[:, LIPS_INNER].max() < 2.0
    # A second face appears at frame 3: it is counted at frame 8, from which MediaPipe follows several faces.
    face = cv2.resize(astronaut[20:320, 75:375], (512, 512))  # the face ~160 px: the detector sees it in 512x1024
    first = np.full((512, 1024, 3), 90, np.uint8)
    first[:, 512:] = face
    later = first.copy()
    later[:, :512] = face
    with FaceTracker(face_model_path) as tracker:
        followed = []
        for i, frame in enumerate([first] * 3 + [later] * 9):
            tracker.feed(frame, i / 25)
            followed.append(tracker.tracked_faces)
    assert followed == [1] * 8 + [4] * 4
    # Two faces from the first frame: counted at once, so INDEX 1 gets the right face from frame 0 on.
    with FaceTracker(face_model_path, selection=FaceSelection.INDEX, face_index=1) as tracker:
        track = tracker.track([later] * 4, fps=25)
        assert tracker.tracked_faces == 4 and "zoom" not in tracker.timer.calls
    assert (track.status == TrackStatus.DETECTED).all() and (lip_centre(track.landmarks)[:, 0] > 512).all()


def test_face_counter_counts_and_checks_its_bundle(face_model_path, pan, tmp_path):
    with FaceCounter(face_model_path) as counter:
        assert counter.count(pan[0]) == 1 and counter.count(np.zeros_like(pan[0])) == 0
    with pytest.raises(RuntimeError, match="closed"):
        counter.count(pan[0])
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not a zip")
    with pytest.raises(FaceModelNotFoundError, match="not a MediaPipe face landmarker bundle"):
        FaceCounter(fake)


def test_point_selection_picks_the_face_under_the_point_then_follows_it():
    from stabledub_core.face.selection import FaceSelection, FaceSelector, rank_from_left

    def face(x, y, size):
        grid = np.stack(np.meshgrid(np.linspace(-1, 1, 22), np.linspace(-1, 1, 22)), -1).reshape(-1, 2)[:478]
        return (grid * size / 2 + [x, y]).astype(np.float32)

    faces = np.stack([face(300, 100, 40), face(100, 100, 80), face(200, 100, 60)])  # (3, 478, 2)
    assert FaceSelector(FaceSelection.LARGEST).select(faces, None) == 1
    point = FaceSelector(FaceSelection.NEAREST, initial=FaceSelection.POINT, point=(305, 95))
    assert point.select(faces, None) == 0 and rank_from_left(faces, 0) == 2
    assert point.select(faces, faces[2]) == 2  # once tracking, the nearest face to the track
    assert FaceSelector(FaceSelection.POINT, point=(210, 400)).select(faces, None) == 2  # under no face: nearest
    index = FaceSelector(FaceSelection.NEAREST, initial=FaceSelection.INDEX, index=1)
    assert index.select(faces, None) == 2
    from stabledub_core.errors import OptionError

    with pytest.raises(OptionError, match="needs a point"):
        FaceSelector(FaceSelection.POINT)
