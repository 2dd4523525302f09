"""The bad-input matrix of issue #14 as tests of the command line: exit status, the one line's content, no traceback,
and what is left in the output folder.

Cases refused before any work run ``main`` in this process (milliseconds each); the dubs that must finish use the
tiny preset with one sampler step on 4-frame clips; read-only folders run as a real process (see
``robust_runs.spawn``: as root, the capabilities that ignore file permissions are dropped).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from robust_runs import assert_one_line, dub_args, names, run_here, run_process
from stabledub_core.cli.main import EXIT_USER_ERROR


def _frames(path) -> np.ndarray:
    """Every frame FFmpeg can decode, packet by packet (a truncated file's last packet fails)."""
    images = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                images += [f.to_ndarray(format="rgb24") for f in packet.decode()]
            except av.InvalidDataError:
                pass
    return np.stack(images)


# ---------------------------------------------------------------------------------------------- the input destroyed

def test_out_equal_to_the_video_is_refused_and_the_video_kept_byte_identical(inputs, tmp_path, capfd):
    video = shutil.copyfile(inputs["video"], tmp_path / "talk.mp4")
    before = video.read_bytes()
    os.symlink(video, tmp_path / "link.mp4")
    os.link(video, tmp_path / "hard.mp4")
    (tmp_path / "sub").mkdir()
    for out in (video, tmp_path / "sub" / ".." / "talk.mp4", tmp_path / "link.mp4", tmp_path / "hard.mp4"):
        status, _, err = run_here(capfd, dub_args(inputs, out, video=video))
        assert status == EXIT_USER_ERROR
        assert_one_line(err, "--out", "same file as --video", "destroy")
    assert video.read_bytes() == before
    assert names(tmp_path) == ["hard.mp4", "link.mp4", "sub", "talk.mp4"]


def test_out_equal_to_the_speech_or_report_equal_to_an_input_is_refused(inputs, tmp_path, capfd):
    speech = shutil.copyfile(inputs["speech"], tmp_path / "speech.mp4")
    status, _, err = run_here(capfd, dub_args(inputs, speech, audio=speech))
    assert status == 2 and "same file as --audio" in err[0]
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", "--report", inputs["video"]))
    assert status == 2 and "--report" in err[0] and "same file as --video" in err[0]
    assert names(tmp_path) == ["speech.mp4"]


# ---------------------------------------------------------------------------------- checked before the expensive work

@pytest.mark.parametrize("extra, words", [
    (["--crf", "-5"], ["--crf must be between 0 and 51, got -5"]),
    (["--crf", "99"], ["--crf must be between 0 and 51, got 99"]),
    (["--seed", "-1"], ["--seed must be between 0 and 4294967295, got -1"]),
    (["--steps", "0"], ["--steps must be between 1 and 1000"]),
    (["--audio-scale", "nan"], ["--audio-scale must be a finite number"]),
    (["--crf", "abc"], ["argument --crf: invalid int value: 'abc'", "--help"]),
    (["--length-policy", "stretch"], ["--length-policy", "invalid choice"]),
    (["--face-index", "-2"], ["--face-index must be between 0 and 31"]),
    (["--device", "bogus"], ["unknown --device 'bogus'", "cpu"]),
    (["--device", "cuda:99"], ["--device 'cuda:99'"]),
    (["--overlap", "16"], ["overlap 16 must be smaller than the model's window of 16 frames"]),  # before tracking
])
def test_bad_option_values_are_one_line_naming_the_flag(inputs, tmp_path, capfd, extra, words):
    try:
        status = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", *extra))
    except SystemExit as exit_:  # argparse's own errors exit from the parser
        status = (exit_.code, [], capfd.readouterr().err.strip().splitlines())
    assert status[0] == EXIT_USER_ERROR
    assert_one_line(status[2], *words)
    for internal in ("num_inference_steps", "scale_audio", "MaskConfig", "SamplingOptions"):
        assert internal not in status[2][0]
    assert names(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_on_a_cpu_build_is_one_line(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", "--device", "cuda"))
    assert status == 2
    assert_one_line(err, "--device 'cuda'", "--device cpu")
    assert names(tmp_path) == []


@pytest.mark.parametrize("out, words", [
    ("missing/o.mp4", ["--out", "does not exist", "create it first"]),
    ("o.avi", ["--out", "unsupported extension '.avi'"]),
    (".", ["--out", "is a folder"]),
])
def test_bad_output_paths_are_refused_first(inputs, tmp_path, capfd, out, words):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / out))
    assert status == 2
    assert_one_line(err, *words)
    assert names(tmp_path) == []


def test_report_into_a_missing_folder_is_refused_before_the_video_is_written(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", "--report", tmp_path / "no" / "r.json"))
    assert status == 2
    assert_one_line(err, "--report", "does not exist")
    assert names(tmp_path) == []


def test_nan_speech_is_refused_before_the_model_is_loaded(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", audio="nan_speech", checkpoint="missing"))
    assert status == 2  # the (missing) checkpoint is never looked at: the speech is checked first
    assert_one_line(err, "NaN or infinite samples", "nan.wav")
    assert names(tmp_path) == []


@pytest.mark.parametrize("checkpoint, tensor", [("nan_checkpoint", "unet.conv_in.weight"),
                                                ("inf_checkpoint", "inf_tensor")])
def test_a_checkpoint_with_a_nan_or_inf_weight_names_the_tensor(inputs, tmp_path, capfd, checkpoint, tensor):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", checkpoint=checkpoint))
    assert status == 2
    assert_one_line(err, f"tensor {inputs.get(tensor, tensor)!r}", "NaN", "infinite")
    assert names(tmp_path) == []


# ------------------------------------------------------------------------------------------ runs that must finish

def test_a_dub_with_a_report_leaves_exactly_the_video_and_the_report(inputs, tmp_path, capfd):
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    status, lines, err = run_here(capfd, dub_args(inputs, out, "--report", report))
    assert status == 0, err
    assert lines[0].startswith(f"wrote {out} (4 frames") and len(lines) == 1  # one face, even size: no notes
    assert names(tmp_path) == ["o.mp4", "r.json"]
    data = json.loads(report.read_text())
    assert (data["num_frames"], data["size"], data["undecodable_frames"], data["faces_seen"]) == (4, [160, 160], 0, 1)
    assert _frames(out).shape == (4, 160, 160, 3)


def test_overflowing_weights_stop_the_run_instead_of_writing_black_mouths(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", checkpoint="overflow_checkpoint"))
    assert status == 2
    assert_one_line(err, "NaN or infinite latents", "nothing was written")
    assert names(tmp_path) == []


def test_a_truncated_file_is_dubbed_and_says_how_many_frames_were_lost(inputs, tmp_path, capfd):
    with av.open(str(inputs["truncated"])) as container:
        announced = container.streams.video[0].frames
    decoded = len(_frames(inputs["truncated"]))
    assert announced == 30 and 0 < decoded < announced
    report = tmp_path / "r.json"
    status, lines, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", "--report", report, "--length-policy",
                                                  "trim", video=inputs["truncated"]))
    assert status == 0, err
    assert f"{announced - decoded} of its {announced} frames could not be decoded" in lines[1]
    assert f"only the {decoded} decodable frames were dubbed" in lines[1]
    assert json.loads(report.read_text())["undecodable_frames"] == announced - decoded


def test_odd_sizes_come_out_at_exactly_the_input_size(inputs, tmp_path, capfd):
    out = tmp_path / "o.mp4"
    status, lines, err = run_here(capfd, dub_args(inputs, out, video=inputs["odd"]))
    assert status == 0, err
    assert _frames(out).shape == (4, 159, 161, 3)
    assert "odd size 161x159 was kept exactly" in lines[1]


MOUTHS = {"left": (70, 46), "right": (160 + 20 + 52, 20 + 35)}  # (x, y) of each face's lips in two.mp4


def _changed(source: np.ndarray, dub: np.ndarray, face: str) -> float:
    """Mean change in a 24-pixel box around a face's lips."""
    x, y = MOUTHS[face]
    box = (slice(None), slice(y - 12, y + 12), slice(x - 12, x + 12))
    return float(np.abs(source[box].astype(int) - dub[box]).mean())


@pytest.mark.parametrize("extra, dubbed, rank, how", [
    ([], "left", 0, "the largest"),
    (["--face", "index", "--face-index", "1"], "right", 1, "by --face-index"),
    (["--face", "point", "--face-x", "240", "--face-y", "70"], "right", 1, "the one under --face-x/--face-y"),
])
def test_with_two_faces_the_summary_says_which_was_dubbed_and_how_to_choose(inputs, tmp_path, capfd, extra, dubbed,
                                                                           rank, how):
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    status, lines, err = run_here(capfd, dub_args(inputs, out, "--report", report, *extra,
                                                  video=inputs["two_faces"]))
    assert status == 0, err
    note = lines[1]
    assert f"2 faces seen; dubbed {how}: face {rank} from the left" in note
    assert "--face index --face-index N" in note and "--face point --face-x X --face-y Y" in note
    assert json.loads(report.read_text())["face"]["rank_from_left"] == rank
    source, dub = _frames(inputs["two_faces"]), _frames(out)
    left, right = _changed(source, dub, "left"), _changed(source, dub, "right")
    assert (left > 3 * right) if dubbed == "left" else (right > 3 * left), (left, right)


def test_a_face_index_beyond_the_faces_seen_says_how_many_there_are(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", "--face", "index", "--face-index", "4",
                                              video=inputs["two_faces"]))
    assert status == 2
    assert_one_line(err, "face_index 4", "at most 2 face(s)", "from 0 to 1")
    assert names(tmp_path) == []


# --------------------------------------------------------------------------------------------- leftovers, disks

# ----------------------------------------------------------------------------------------- fast motion (#14.3)

def _repainted(inputs, out) -> np.ndarray:
    """(4, H, W) bool: the pixels a dub of the fast clip changed (the untrained model paints noise)."""
    return np.abs(_frames(out).astype(int) - _frames(inputs["fast"])).max(axis=-1) > 24


def test_a_fast_moving_face_is_dubbed_inside_a_mask_that_follows_it(inputs, tmp_path, capfd):
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    status, lines, err = run_here(capfd, dub_args(inputs, out, "--report", report, video=inputs["fast"]))
    assert status == 0, err
    assert lines[0].startswith(f"wrote {out} (4 frames at 25.000 fps") and "Traceback" not in "".join(err)
    assert names(tmp_path) == ["o.mp4", "r.json"]
    assert _frames(out).shape == (4, 288, 294, 3)
    changed = _repainted(inputs, out)
    # The face moves 34 px a frame: the union of its 4 mouth masks is a ~160x50 band (about 7000 pixels repainted in
    # every frame, measured); capped, each frame's mask follows its mouth (about 1300).
    assert (changed.sum(axis=(1, 2)) < 2500).all(), changed.sum(axis=(1, 2))
    assert not changed[0, 80:130, 110:215].any()  # frame 0: right of its mouth, where later frames' mouths are
    centres = [np.nonzero(c)[1].mean() for c in changed]
    assert abs(centres[3] - centres[0] - 3 * 34) < 8, centres


def test_fast_motion_is_said_in_the_summary_and_the_report(inputs, tmp_path, capfd):
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    status, lines, err = run_here(capfd, dub_args(inputs, out, "--report", report, video=inputs["fast"]))
    assert status == 0, err
    assert len(lines) == 2 and lines[1].startswith("note: fast motion: in 1 of 1 windows (4 frames)")
    assert "at most 1.5x (--max-mask-growth sets it)" in lines[1]
    caps = json.loads(report.read_text())["mask_caps"]
    assert (caps["capped_windows"], caps["capped_frames"], caps["windows"], caps["max_growth"]) == (1, 4, 1, 1.5)
    assert caps["widest_growth"] > 3 and "the union mouth mask would have covered up to" in lines[1]


def test_stale_partial_files_of_killed_runs_are_removed_and_said(inputs, tmp_path, capfd):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".o.{int(dead.stdout)}-0123abcd.partial.mp4"
    unknown = tmp_path / ".o.89abcdef.partial.mp4"  # an older name without the writer's pid: only reported
    for path in (stale, unknown):
        path.write_bytes(b"partial")
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", checkpoint=tmp_path / "missing.safetensors"))
    assert status == 2 and "missing.safetensors" in err[-1]  # the outputs were checked (and cleaned) first
    assert any("removed 1 temporary file(s)" in line and stale.name in line for line in err)
    assert any("note:" in line and unknown.name in line for line in err)
    assert names(tmp_path) == [unknown.name]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(inputs, tmp_path, capfd):
    """The file-size limit makes every write past 20 kB fail as a full disk does (EFBIG instead of ENOSPC)."""
    out = tmp_path / "o.mp4"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        status, _, err = run_here(capfd, dub_args(inputs, out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert status == 2
    assert_one_line(err, f"cannot write output {str(out)!r}", "too large", "nothing was written")
    assert names(tmp_path) == []


def test_write_errors_name_the_cause():
    from stabledub_core.media.output import write_error

    for code, words in ((errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"),
                        (errno.EROFS, "read-only")):
        assert words in str(write_error(OSError(code, os.strerror(code)), "o.mp4"))


def test_a_preview_into_a_text_file_is_one_line(inputs, tmp_path, capfd):
    status, _, err = run_here(capfd, ["preview", str(inputs["video"]), "--out", str(tmp_path / "strip.txt")])
    assert status == 2
    assert_one_line(err, "give a .png file")
    assert names(tmp_path) == []


def test_read_only_folders_are_refused_before_any_work(inputs, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        status, _, err = run_process(dub_args(inputs, folder / "o.mp4"))
        assert status == 2
        assert_one_line(err, "--out", "cannot write in the folder", "permission denied")
        status, _, err = run_process(["preview", inputs["video"], "--out", folder / "strip.png", "--frames", "2"])
        assert status == 2
        assert_one_line(err, "--out", "permission denied")
    finally:
        folder.chmod(0o755)
    assert names(folder) == []


def test_a_disk_without_room_for_the_output_is_refused_before_the_model_loads(inputs, tmp_path, capfd, monkeypatch):
    from collections import namedtuple

    from stabledub_core.media import output

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(output.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    status, _, err = run_here(capfd, dub_args(inputs, tmp_path / "o.mp4", checkpoint=tmp_path / "never.safetensors"))
    assert status == 2
    assert_one_line(err, "--out", "has 1.0 kB free but the output needs about 2.0 kB", "free some space")
    assert names(tmp_path) == []
