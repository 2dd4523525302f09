"""``train preprocess``: the Fig. 5 filters, crops equal to inference's, shards + manifest, resume, workers, report.

The clips are made here: a 192x192 cut of ``face_pan.mp4`` (the real face photo under head motion, from the
``media_dir`` fixture) with the bundled Spanish speech, the same face twice side by side, a clip without a face, one
without sound and one too short. The tiny preset (128-pixel crops, 16-frame spans) keeps it fast.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from helpers.media_factory import tone, write_video
from helpers.repo_media import astronaut
from stabledub_core.cli import train as train_command
from stabledub_core.cli.main import main
from stabledub_core.errors import DatasetNotFoundError, LandmarkShapeError, ManifestError
from stabledub_core.face.track import FaceTrack, FaceTracker
from stabledub_core.masks.crop_spans import CropPlan
from stabledub_core.media.audio import fit_samples, load_audio, load_encoder_input
from stabledub_core.media.frames import FrameSource
from stabledub_core.media.video import Run, VideoReader
from stabledub_core.models.config import get_preset
from stabledub_core.pipeline import stages
from stabledub_core.pipeline.options import MaskOptions
from stabledub_core.train import preprocess as pre
from stabledub_core.train.head_pose import (
    camera_matrix,
    canonical_face_points,
    head_angles,
    line_of_sight,
    rotation_from_angles,
)

FRAMES = 40  # 1.6 s at 25 fps
OPTIONS = pre.FilterOptions(min_seconds=1.0)  # the test clips are short; every other filter at its default


def face_frames(media_dir: Path, count: int = FRAMES) -> np.ndarray:
    """``(count, 192, 192, 3)`` uint8: the face region of face_pan.mp4 (256 px around the face), resized."""
    with av.open(str(media_dir / "face_pan.mp4")) as container:
        images = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), container.decode(video=0))]
    return np.stack([cv2.resize(image[0:256, 96:352], (192, 192), interpolation=cv2.INTER_AREA) for image in images])


def speech(media_dir: Path, seconds: float) -> np.ndarray:
    """``(1, S)`` float32: the bundled speech at 22.05 kHz, cut to ``seconds``."""
    wave, rate = load_audio(media_dir / "speech_es.wav")
    assert rate == 22050
    return wave[:, :int(seconds * rate)]


@pytest.fixture(scope="module")
def dataset(media_dir, tmp_path_factory) -> Path:
    """A folder tree: one.mp4 (kept), sub/two.mp4, noface.mp4, silent.mp4, short.mp4."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    faces = face_frames(media_dir)
    voice = speech(media_dir, FRAMES / 25)
    write_video(root / "one.mp4", FRAMES, size=(192, 192), frames=faces, audio=voice, audio_rate=22050)
    write_video(root / "sub" / "two.mp4", FRAMES, size=(192, 384), frames=np.concatenate([faces, faces], axis=2),
                audio=voice, audio_rate=22050)
    write_video(root / "noface.mp4", 30, size=(96, 96), audio=tone(30 / 25, 16000))
    write_video(root / "silent.mp4", FRAMES, size=(192, 192), frames=faces)
    write_video(root / "short.mp4", 10, size=(192, 192), frames=faces[:10], audio=tone(10 / 25, 16000))
    (root / "notes.txt").write_text("not a video: ignored")
    return root


@pytest.fixture(scope="module")
def run1(dataset, face_model_path, tmp_path_factory) -> tuple[Path, pre.PreprocessResult]:
    out = tmp_path_factory.mktemp("out1")
    return out, pre.preprocess(dataset, out, face_model_path, preset="tiny", options=OPTIONS, workers=1)


def shard(out: Path, name: str) -> dict[str, np.ndarray]:
    return {array: np.load(out / "shards" / name / f"{array}.npy") for array in pre.ARRAYS}


# ------------------------------------------------------------------------------------------------- filters

def test_keeps_the_one_face_clip_and_drops_the_others_with_their_reasons(run1):
    out, result = run1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    assert [c["path"] for c in manifest["clips"]] == ["one.mp4"]
    dropped = {d["path"]: d for d in manifest["dropped"]}
    assert sorted(dropped) == ["noface.mp4", "short.mp4", "silent.mp4", "sub/two.mp4"]
    assert (dropped["noface.mp4"]["filter"], dropped["noface.mp4"]["value"]) == ("one_face", 0)
    assert (dropped["sub/two.mp4"]["filter"], dropped["sub/two.mp4"]["value"]) == ("one_face", 2)
    assert "2 faces" in dropped["sub/two.mp4"]["reason"]
    assert dropped["silent.mp4"]["filter"] == "audio" and "no sound track" in dropped["silent.mp4"]["reason"]
    assert (dropped["short.mp4"]["filter"], dropped["short.mp4"]["value"]) == ("min_seconds", 0.4)
    kept = manifest["clips"][0]
    assert (kept["frames"], kept["spans"], kept["seconds"], kept["audio_samples"]) == (40, 3, 1.6, 40 * 640)
    measured = kept["measured"]
    assert measured["face_coverage"] == 1.0 and measured["max_faces_counted"] == 1
    assert 70 < measured["min_face_size"] < 100  # the face is ~80 px in the 192-pixel frames
    assert measured["max_abs_yaw"] < 10 and measured["max_abs_roll"] < 10 and measured["max_motion"] < 0.05
    assert manifest["settings"]["resolution"] == 128 and manifest["settings"]["span_length"] == 16
    assert not list((out / "staging").iterdir())


def test_the_report_counts_clips_and_hours_per_filter(run1):
    out, result = run1
    report = json.loads((out / "report.json").read_text())
    assert report == result.report
    rows = {row["filter"]: row for row in report["filters"]}
    assert [row["filter"] for row in report["filters"]] == list(pre.FILTERS)
    assert report["clips"] == 5 and report["kept_clips"] == 1
    assert {name: row["dropped_clips"] for name, row in rows.items()} == {
        "decode": 0, "audio": 1, "min_seconds": 1, "one_face": 2, "face_coverage": 0, "min_face_size": 0,
        "head_angle": 0, "transitions": 0, "sync": 0}
    assert rows["one_face"]["in_clips"] == 3 and rows["one_face"]["kept_clips"] == 1
    assert rows["audio"]["dropped_hours"] == pytest.approx(1.6 / 3600, abs=1e-6)
    assert rows["transitions"]["kept_hours"] == pytest.approx(report["kept_hours"]) == pytest.approx(1.6 / 3600)
    assert report["hours"] == pytest.approx((1.6 * 3 + 30 / 25 + 0.4) / 3600, abs=1e-6)
    table = pre.format_report(report)
    assert "one_face" in table and "dropped sub/two.mp4: one_face: 2 faces are in view" in table


def test_kept_crops_masks_landmarks_and_audio_equal_what_inference_computes(run1, dataset, face_model_path):
    out, result = run1
    clip = result.manifest["clips"][0]
    arrays = shard(out, clip["shard"])
    frames = slice(clip["frame_offset"], clip["frame_offset"] + clip["frames"])
    spans = slice(clip["span_offset"], clip["span_offset"] + clip["spans"])
    config = get_preset("tiny")
    with VideoReader(dataset / "one.mp4") as reader:  # a 25 fps source: every frame once
        track = stages.track_faces(reader, face_model_path)
        plan = CropPlan(track, crop_size=config.resolution, span_length=config.num_frames,
                        config=MaskOptions().mask_config(config.crop_box_scale))
        images = list(reader.frames_at([Run(0, reader.num_frames, 1)]))
    assert len(images) == clip["frames"]
    for k, image in enumerate(images):
        span, offset = plan.span_at(k)
        assert np.array_equal(arrays["crops"][frames][k], stages.crop_frame(image, span, config.resolution))
        assert np.array_equal(arrays["mc"][frames][k], span.coarse_masks[offset])
        np.testing.assert_array_equal(arrays["landmarks"][frames][k], span.landmarks[offset])
    for j, span in enumerate(plan.spans()):
        mu = arrays["mu"][spans][j]
        assert np.array_equal(mu, np.rint(span.union_mask * 255).astype(np.uint8))
        assert np.abs(mu / 255.0 - span.union_mask).max() <= 0.5 / 255 + 1e-6
        assert tuple(arrays["boxes"][spans][j]) == span.box
    assert np.array_equal(arrays["source_index"][frames], np.arange(clip["frames"]))
    wave, _ = load_encoder_input(dataset / "one.mp4")
    audio = arrays["audio"][clip["audio_offset"]:clip["audio_offset"] + clip["audio_samples"]]
    assert np.array_equal(audio, fit_samples(wave, clip["frames"] * 640))
    assert arrays["mu"][spans].max() == 255 and arrays["mc"][frames].max() == 1


# ------------------------------------------------------------------------------------------------- resume, workers

def test_a_rerun_skips_finished_clips(run1, dataset, face_model_path, monkeypatch):
    out, result = run1

    def must_not_run(task):
        raise AssertionError(f"{task.key.path} was finished by the first run")

    monkeypatch.setattr(pre, "process_clip", must_not_run)
    again = pre.preprocess(dataset, out, face_model_path, preset="tiny", options=OPTIONS)
    assert again.processed == 0
    assert again.manifest == result.manifest and again.report == result.report
    assert json.loads((out / "manifest.json").read_text()) == result.manifest


def test_other_settings_in_the_same_out_dir_are_refused(run1, dataset, face_model_path):
    out, _ = run1
    with pytest.raises(ManifestError, match="max_yaw|filters"):
        pre.preprocess(dataset, out, face_model_path, preset="tiny", options=pre.FilterOptions(min_seconds=1.0,
                                                                                               max_yaw=10.0))
    with pytest.raises(ManifestError, match="preset"):
        pre.preprocess(dataset, out, face_model_path, preset="sd15", options=OPTIONS)


def test_a_crash_mid_clip_leaves_no_half_entry_and_the_rerun_finishes(run1, dataset, face_model_path, tmp_path,
                                                                      monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("noface.mp4", "one.mp4"):  # copy2 keeps the modification times: the same clip keys
        shutil.copy2(dataset / name, videos / name)
    out = tmp_path / "out"
    crop_frame = stages.crop_frame
    cropped = []

    def crash_after_five(image, span, size):
        cropped.append(1)
        if len(cropped) > 5:
            raise RuntimeError("injected crash")
        return crop_frame(image, span, size)

    monkeypatch.setattr(stages, "crop_frame", crash_after_five)
    with pytest.raises(RuntimeError, match="injected crash"):
        pre.preprocess(videos, out, face_model_path, preset="tiny", options=OPTIONS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clips"] == [] and manifest["shards"] == [] and not list((out / "shards").iterdir())
    assert [p.name.endswith(".tmp") for p in (out / "staging").iterdir() if p.is_dir()] == [True]  # the half clip

    monkeypatch.setattr(stages, "crop_frame", crop_frame)
    processed = []
    process_clip = pre.process_clip
    monkeypatch.setattr(pre, "process_clip", lambda task: processed.append(task.key.path) or process_clip(task))
    result = pre.preprocess(videos, out, face_model_path, preset="tiny", options=OPTIONS)
    assert processed == ["one.mp4"]  # noface.mp4 was finished (staged) before the crash
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    expected = {c["path"]: c for c in run1[1].manifest["clips"] + run1[1].manifest["dropped"]}
    assert result.manifest["clips"] == [expected["one.mp4"]] and result.manifest["dropped"] == [expected["noface.mp4"]]
    clip = result.manifest["clips"][0]
    assert np.array_equal(shard(out, clip["shard"])["crops"], shard(run1[0], clip["shard"])["crops"])


def test_two_workers_give_the_same_manifest_and_shards_as_one(run1, dataset, face_model_path, tmp_path):
    out = tmp_path / "out2"
    result = pre.preprocess(dataset, out, face_model_path, preset="tiny", options=OPTIONS, workers=2)
    assert result.manifest == run1[1].manifest
    assert result.report == run1[1].report
    for name, array in shard(run1[0], "shard-00000").items():
        np.testing.assert_array_equal(shard(out, "shard-00000")[name], array, err_msg=name)


def test_clips_are_packed_into_shards_with_offsets(dataset, face_model_path, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy2(dataset / "one.mp4", videos / name)
    result = pre.preprocess(videos, tmp_path / "out", face_model_path, preset="tiny",
                            options=pre.FilterOptions(min_seconds=1.0), shard_frames=80)
    a, b = result.manifest["clips"]
    assert result.manifest["shards"] == [{"name": "shard-00000", "clips": 2, "frames": 80, "spans": 6,
                                          "audio_samples": 80 * 640}]
    assert (a["frame_offset"], b["frame_offset"], b["span_offset"], b["audio_offset"]) == (0, 40, 3, 40 * 640)
    arrays = shard(tmp_path / "out", "shard-00000")
    assert np.array_equal(arrays["crops"][:40], arrays["crops"][40:])  # the same video twice
    assert np.array_equal(arrays["mu"][:3], arrays["mu"][3:])


def test_silent_clips_are_kept_for_stage_1_without_the_audio_filter(dataset, face_model_path, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy2(dataset / "silent.mp4", videos / "silent.mp4")
    progress = []
    result = pre.preprocess(videos, tmp_path / "out", face_model_path, preset="tiny",
                            options=pre.FilterOptions(min_seconds=1.0, require_audio=False),
                            on_progress=lambda done, total, entry: progress.append((done, total, entry["path"])))
    (clip,) = result.manifest["clips"]
    assert (clip["path"], clip["frames"], clip["audio_samples"], clip["measured"]["audio_dbfs"]) == (
        "silent.mp4", 40, 0, None)
    assert shard(tmp_path / "out", clip["shard"])["audio"].shape == (0,)
    assert progress == [(1, 1, "silent.mp4")]


# ------------------------------------------------------------------------------------------------- 25 fps

@pytest.mark.parametrize("fps, expected", [(25, list(range(10))), (50, list(range(0, 20, 2))),
                                           (20, [0, 1, 2, 2, 3, 4, 5, 6, 6, 7])])
def test_resampling_to_25_fps_takes_the_nearest_source_frame(fps, expected):
    count = {25: 10, 50: 20, 20: 8}[fps]
    images = np.zeros((count, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(count)
    seen = []
    source = pre.ResampledSource(FrameSource(images, fps), on_frame=lambda k, image: seen.append(k))
    frames = list(source.frames())
    assert [int(f.image[0, 0, 0]) for f in frames] == expected
    assert [f.time for f in frames] == [k / 25 for k in range(10)] and seen == list(range(10))
    assert source.index.tolist() == expected and source.num_frames == 10
    assert [int(image[0, 0, 0]) for image in source.frames_at([Run(9, 3, -1)])] == expected[9:6:-1]


# ------------------------------------------------------------------------------------------------- head angles

def project(angles: tuple[float, float, float], face_model, centre=(0.0, 0.0), size=512) -> np.ndarray:
    """``(1, 478, 2)``: the canonical mesh turned by ``angles`` (relative to the line of sight) and projected 60 cm
    from the camera, ``centre`` cm off the optical axis."""
    model = canonical_face_points(str(face_model))
    position = np.array([centre[0], centre[1], 60.0])
    rotation = line_of_sight(position) @ rotation_from_angles(*angles)
    camera = model @ rotation.T + position
    intrinsics = camera_matrix((size, size))
    points = np.zeros((1, 478, 2))
    points[0, :468] = camera[:, :2] / camera[:, 2:] * intrinsics[0, 0] + size / 2
    return points


@pytest.mark.parametrize("angles", [(0, 0, 0), (20, -10, 5), (-35, 15, -25)])
@pytest.mark.parametrize("centre", [(0.0, 0.0), (12.0, -8.0)])
def test_head_angles_of_the_canonical_face_turned_by_known_angles(angles, centre, face_model_path):
    np.testing.assert_allclose(head_angles(project(angles, face_model_path, centre), (512, 512), face_model_path)[0],
                               angles, atol=0.05)


def test_head_angles_of_the_real_face_frontal_and_rotated_in_plane(face_model_path):
    photo = astronaut()
    measured = []
    for degrees in (0, 15, -15):  # cv2: + = counter-clockwise on screen, about the lips
        image = cv2.warpAffine(photo, cv2.getRotationMatrix2D((223, 146), degrees, 1.0), (512, 512),
                               borderMode=cv2.BORDER_REFLECT)
        with FaceTracker(face_model_path) as tracker:
            track = tracker.track(np.stack([image, image]), fps=25)
        measured.append(head_angles(track.landmarks[:1], (512, 512), face_model_path)[0])
    frontal, ccw, cw = measured
    assert abs(frontal[0]) < 5 and abs(frontal[2]) < 5  # the photo looks at the camera
    assert ccw[2] - frontal[2] == pytest.approx(-15, abs=2)
    assert cw[2] - frontal[2] == pytest.approx(15, abs=2)
    for turned in (ccw, cw):
        assert abs(turned[0] - frontal[0]) < 3 and abs(turned[1] - frontal[1]) < 4


def test_head_angles_need_landmarks_of_the_face_mesh(face_model_path):
    with pytest.raises(LandmarkShapeError, match="478"):
        head_angles(np.zeros((2, 68, 2)), (64, 64), face_model_path)
    assert np.isnan(head_angles(np.full((1, 478, 2), np.nan), (64, 64), face_model_path)).all()


# ------------------------------------------------------------------------------------------------- filter units

def test_turned_heads_and_jumps_fail_their_filters(face_model_path):
    frontal = project((0, 0, 0), face_model_path)[0]
    size = frontal.max(0) - frontal.min(0)
    turned = project((40, 0, 0), face_model_path)[0]

    def judge(landmarks):
        track = FaceTrack(np.stack(landmarks), np.zeros(len(landmarks), np.uint8), (512, 512))
        measured = pre.measure_track(track, head_angles(track.landmarks, (512, 512), face_model_path))
        return pre.first_failure(measured, pre.FilterOptions())

    assert judge([frontal, frontal, frontal]) is None
    name, value, reason = judge([frontal, turned, frontal])
    assert name == "head_angle" and value["yaw"] == pytest.approx(40, abs=0.1) and "yaw" in reason
    name, value, _ = judge([frontal, frontal + [0.3 * size.max(), 0]])
    assert name == "transitions" and value["motion"] == pytest.approx(0.3, abs=0.01)
    centre = frontal.mean(0)
    name, value, _ = judge([frontal, (frontal - centre) * 1.3 + centre])
    assert name == "transitions" and value["scale_change"] == pytest.approx(1.3, abs=0.01)
    name, value, _ = judge([frontal * 0.05, frontal * 0.05])
    assert name == "min_face_size"


# ------------------------------------------------------------------------------------------------- command line

def test_the_command_resumes_and_prints_the_report(run1, dataset, capfd):
    out, result = run1
    status = main(["train", "preprocess", str(dataset), str(out), "--preset", "tiny", "--min-seconds", "1"])
    captured = capfd.readouterr()
    assert status == 0
    assert "every clip was finished by an earlier run" in captured.err
    assert pre.format_report(result.report) in captured.out


def test_the_command_gives_one_line_errors(run1, dataset, tmp_path, capfd):
    out, _ = run1
    assert main(["train", "preprocess", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        f"stabledub: error: video folder {str(tmp_path / 'nowhere')!r} does not exist: give the folder of talking "
        "videos as IN_DIR"]
    assert main(["train", "preprocess", str(dataset), str(out), "--preset", "tiny"]) == 2  # min_seconds differs
    error = capfd.readouterr().err.strip()
    assert error.startswith("stabledub: error: ") and "other settings (filters differ)" in error
    assert main(["train", "preprocess", str(dataset), str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers" in capfd.readouterr().err
    with pytest.raises(DatasetNotFoundError, match="no video file"):
        pre.find_videos(tmp_path)


def test_the_progress_line_counts_kept_clips_and_hours():
    stream = io.StringIO()  # not a terminal: one line per clip up to 100 clips, then every 1%
    progress = train_command._Progress(stream)
    progress(1, 2, {"path": "a.mp4", "kept": True, "seconds": 1800.0})
    progress(2, 2, {"path": "b.mp4", "kept": False, "seconds": 60.0})
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["preprocess [1/2] kept 1 (0.500 h)",
                                                      "preprocess [2/2] kept 1 (0.500 h)"]
    assert lines[1].endswith(": b.mp4")
