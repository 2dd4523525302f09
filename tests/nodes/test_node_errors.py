"""Bad input in the nodes gives a node error: an exception raised from the node with a one-line message saying what
is wrong and what to do (what ComfyUI shows on the node), not a traceback from deep inside, and no file left behind.

Cases: checkpoints of random bytes, a pickle, a NaN weight, another file type, an empty file, a safetensors file that
is not a StableDub checkpoint (Load Model); bad filename_prefix values and unwritable folders (Save Video, Dub Video
File). A folder that root cannot write either: a link to ``/sys`` (sysfs refuses new files even to root).
"""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.comfy_stub import REPO, micro_config, run_node
from helpers.media_factory import write_video
from stabledub_core.errors import CheckpointError, NonFiniteWeightsError, OutputError, PickleRefusedError

NODES_DIR = REPO / "nodes"


def assert_node_error(excinfo, *words: str) -> str:
    """One line naming ``words``, raised from the pack's node code (its traceback stops there, no chained cause)."""
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message, message
    for word in words:
        assert word in message, (word, message)
    frames = traceback.extract_tb(excinfo.value.__traceback__)
    assert Path(frames[-1].filename).resolve().parent == NODES_DIR, [f.filename for f in frames]
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    return message


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _nan_checkpoint(path: Path) -> None:
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    torch.manual_seed(0)
    model = StableDub.from_config(micro_config())
    with torch.no_grad():
        model.unet.conv_in.weight.view(-1)[0] = float("nan")
    save_checkpoint(model, path)


def _other_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(path))


BAD_CHECKPOINTS = {
    "random.safetensors": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), CheckpointError,
                           ("not a safetensors file",)),
    "pickled.safetensors": (lambda p: p.write_bytes(pickle.dumps({"w": torch.zeros(3)})), PickleRefusedError,
                            ("pickle",)),
    "nan.safetensors": (_nan_checkpoint, NonFiniteWeightsError, ("unet.conv_in.weight", "NaN")),
    "video.safetensors": (lambda p: p.write_bytes((REPO / "assets" / "face_occluded.mp4").read_bytes()),
                          CheckpointError, ("not a safetensors file",)),
    "empty.safetensors": (lambda p: p.write_bytes(b""), CheckpointError, ("not a safetensors file",)),
    "other.safetensors": (_other_safetensors, CheckpointError, ("not a StableDub checkpoint",)),
}


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_a_node_error(comfy, name):
    make, kind, words = BAD_CHECKPOINTS[name]
    make(comfy.root / "models" / "stabledub" / name)
    assert name in comfy.nodes["StableDubLoadModel"].INPUT_TYPES()["required"]["ckpt_name"][0]
    with pytest.raises(kind) as excinfo:
        run_node(comfy, "StableDubLoadModel", ckpt_name=name, dtype="float32", vae_name="(in checkpoint)",
                 wav2vec2="(not needed)")
    assert_node_error(excinfo, f"ckpt_name {name!r}", *words, "pick another ckpt_name")


def test_a_checkpoint_gone_since_the_list_was_made_is_a_node_error(comfy):
    with pytest.raises(FileNotFoundError) as excinfo:
        run_node(comfy, "StableDubLoadModel", ckpt_name="gone.safetensors", dtype="float32",
                 vae_name="(in checkpoint)", wav2vec2="(not needed)")
    assert_node_error(excinfo, "gone.safetensors", "models/stabledub")


@pytest.fixture(scope="module")
def blocked_output(comfy) -> Path:
    """The output folder with a file where a sub-folder is asked for and a link to a folder nobody can write."""
    output = comfy.root / "output"
    (output / "a_file").write_text("not a folder")
    (output / "readonly").symlink_to("/sys")
    return output


BAD_PREFIXES = [
    ("", "has no file name"),
    ("   ", "has no file name"),
    ("clips/", "has no file name"),
    ("a\x00b", "control characters"),
    ("line\nbreak", "control characters"),
    ("/tmp/stabledub_abs/clip", "leaves ComfyUI's output folder"),
    ("../escape/clip", "leaves ComfyUI's output folder"),
    ("a_file/clip", "cannot make its folder"),
    ("readonly/sub/clip", "cannot make its folder"),
    ("readonly/clip", "cannot write in the folder"),
]


@pytest.mark.parametrize("prefix, words", BAD_PREFIXES)
def test_save_video_refuses_a_bad_output_path_and_writes_nothing(comfy, blocked_output, prefix, words):
    before = listing(blocked_output)
    with pytest.raises(OutputError) as excinfo:
        run_node(comfy, "StableDubSaveVideo", images=torch.rand(4, 32, 32, 3), fps=25.0, filename_prefix=prefix,
                 format="mp4", crf=18)
    assert_node_error(excinfo, "filename_prefix", words)
    assert listing(blocked_output) == before
    assert not (comfy.root / "escape").exists() and not Path("/tmp/stabledub_abs").exists()


def test_save_video_refuses_an_unwritable_folder_before_encoding(comfy, blocked_output, monkeypatch):
    from stabledub_core.pipeline import modular

    def encode(*args, **kwargs):
        raise AssertionError("nothing must be encoded for an unwritable folder")

    monkeypatch.setattr(modular, "save_clip", encode)
    with pytest.raises(OutputError) as excinfo:
        run_node(comfy, "StableDubSaveVideo", images=torch.rand(4, 32, 32, 3), fps=25.0,
                 filename_prefix="readonly/clip", format="mp4", crf=18)
    assert_node_error(excinfo, "permission denied", "choose a folder you can write to")


class NoModel:
    """A model handle the node must not touch: the output path is refused first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the output path was checked")


@pytest.mark.parametrize("prefix, words", [(p, w) for p, w in BAD_PREFIXES if p in ("", "../escape/clip",
                                                                                   "a_file/clip", "readonly/clip")])
def test_dub_video_file_refuses_a_bad_output_path_before_any_work(comfy, blocked_output, tmp_path, prefix, words):
    video = write_video(tmp_path / "clip.mp4", 4, size=(32, 32))
    before = listing(blocked_output)
    with pytest.raises(OutputError) as excinfo:
        run_node(comfy, "StableDubDubVideoFile", model=NoModel(), video="(the video input or video_path)",
                 video_path=str(video), face_model="face_landmarker.task", filename_prefix=prefix, format="mp4",
                 crf=18, invert=False)
    assert_node_error(excinfo, "filename_prefix", words)
    assert listing(blocked_output) == before
    assert os.listdir(tmp_path) == ["clip.mp4"]
