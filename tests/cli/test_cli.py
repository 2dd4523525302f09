"""The CLI's answers to bad input: exit status != 0, ONE line on stderr, no traceback, no output file."""

import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from helpers.media_factory import tone, write_video, write_wav

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "stabledub_core", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=120)


def assert_clean_error(result, out: Path, *words):
    assert result.returncode not in (0, None), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.stem}.")]


@pytest.fixture
def files(tmp_path, face_model_path):
    video = write_video(tmp_path / "v.mp4", 12, audio=tone(0.5, 16000), audio_rate=16000)
    speech = write_wav(tmp_path / "s.wav", tone(0.5, 16000), 16000)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"\0" * 16)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return {"video": video, "speech": speech, "ckpt": ckpt, "out": out_dir / "o.mp4", "face": face_model_path,
            "tmp": tmp_path}


def dub(files, **over):
    args = {"video": files["video"], "audio": files["speech"], "checkpoint": files["ckpt"], "out": files["out"],
            "face-model": files["face"]}
    args.update(over)
    flat = []
    for key, value in args.items():
        if value is not None:
            flat += [f"--{key}", value]
    return run_cli("dub", *flat)


def test_help_explains_everything():
    result = run_cli("dub", "--help")
    assert result.returncode == 0
    for word in ("--video", "--audio", "--checkpoint", "--length-policy", "pingpong", "face_landmarker.task",
                 "--scheduler", "--occluder-mask", "--reference"):
        assert word in result.stdout


def test_missing_video(files):
    assert_clean_error(dub(files, video=files["tmp"] / "nope.mp4"), files["out"], "does not exist", "nope.mp4")


def test_missing_audio(files):
    assert_clean_error(dub(files, audio=files["tmp"] / "nope.wav"), files["out"], "does not exist")


def test_text_file_named_mp4(files):
    fake = files["tmp"] / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    assert_clean_error(dub(files, video=fake), files["out"], "not a media file")


def test_video_without_audio_and_no_audio_option(files):
    silent = write_video(files["tmp"] / "silent.mp4", 12)
    assert_clean_error(dub(files, video=silent, audio=None), files["out"], "no audio track", "--audio")


def test_audio_only_file_as_video(files):
    assert_clean_error(dub(files, video=files["speech"]), files["out"], "no video stream")


def test_empty_wav(files):
    empty = files["tmp"] / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    assert_clean_error(dub(files, audio=empty), files["out"], "empty audio")


def test_one_frame_video(files):
    one = write_video(files["tmp"] / "one.mp4", 1)
    assert_clean_error(dub(files, video=one), files["out"], "at least 2")


def test_pickle_checkpoint_by_extension(files):
    ckpt = files["tmp"] / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04K\x01.")
    assert_clean_error(dub(files, checkpoint=ckpt), files["out"], "pickle")


def test_missing_face_model(files):
    assert_clean_error(dub(files, **{"face-model": files["tmp"] / "nope.task"}), files["out"], "face model")


def test_default_face_model_is_the_bundled_one(files, tmp_path):
    args = ["dub", "--video", files["video"], "--audio", files["speech"], "--checkpoint", files["ckpt"],
            "--out", files["out"]]
    result = run_cli(*args, cwd=tmp_path)  # no ./models here: assets/face_landmarker.task is found
    assert_clean_error(result, files["out"], "model.safetensors")  # the next check (the empty checkpoint) fails


def test_face_model_search_order_and_its_error(tmp_path, monkeypatch):
    from stabledub_core.cli import common as cli

    first, second = tmp_path / "models" / "face_landmarker.task", tmp_path / "assets" / "face_landmarker.task"
    monkeypatch.setattr(cli, "FACE_MODEL_SEARCH", (first, second))
    with pytest.raises(FileNotFoundError, match=f"{first}.*{second}.*https://"):
        cli.find_face_model()
    for path in (second, first):
        path.parent.mkdir()
        path.write_bytes(b"model")
        assert cli.find_face_model() == path
    assert cli.find_face_model(second) == second


def test_preview_strip_with_the_default_face_model(tmp_path, media_dir):
    out = tmp_path / "strip.png"
    result = run_cli("preview", media_dir / "face_pan.mp4", "--out", out, "--frames", "2", "--max-frames", "6",
                     "--tile", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "wrote" in result.stdout


def test_bad_output_extension(files):
    out = files["out"].with_suffix(".avi")
    assert_clean_error(dub(files, out=out), out, "unsupported extension")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.config import get_preset
    from stabledub_core.models.stabledub import StableDub

    torch.manual_seed(0)
    return save_checkpoint(StableDub.from_config(get_preset("tiny")),
                           tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_wrong_preset_checkpoint(files, tiny_checkpoint):
    result = run_cli("dub", "--video", files["video"], "--audio", files["speech"], "--checkpoint", tiny_checkpoint,
                     "--preset", "sd15", "--out", files["out"], "--face-model", files["face"])
    assert_clean_error(result, files["out"], "tiny", "sd15")


def test_pickle_named_safetensors(files):
    import torch

    ckpt = files["tmp"] / "evil.safetensors"
    torch.save({"unet.conv_in.weight": torch.zeros(1)}, ckpt)
    assert_clean_error(dub(files, checkpoint=ckpt), files["out"], "pickle")


def test_video_without_any_face(files, tiny_checkpoint):
    assert_clean_error(dub(files, checkpoint=tiny_checkpoint), files["out"], "no face found")
