"""``python -m stabledub_core demo``: the bundled world clip, speech and trained model -> a video and a side-by-side
image, with the note saying what the bundled model is."""

import cv2
import numpy as np

from stabledub_core.cli.dub import DEMO_CLIP, DEMO_MODEL, demo_frames
from stabledub_core.cli.main import main
from stabledub_core.media.clip import read_clip
from stabledub_core.models.checkpoint import read_checkpoint_config
from stabledub_core.synthetic.world import load_metadata


def test_the_bundled_demo_model_and_clip_are_what_the_demo_says():
    config = read_checkpoint_config(DEMO_MODEL)
    assert config.preset == "tiny" and config.unet.mixer == "mamba" and config.unet.temporal
    metadata = load_metadata(DEMO_CLIP.with_suffix(".json"))
    occluder = metadata["occluder"]
    duration = metadata["num_frames"] / float(metadata["fps"])
    assert occluder is not None and 0 < occluder.start_s and occluder.end_s < duration  # over part of the clip
    picks = demo_frames(metadata)
    fps = float(metadata["fps"])
    assert len(picks) == 3 and picks[0] / fps < occluder.start_s <= picks[1] / fps < occluder.end_s <= picks[2] / fps


def test_demo_writes_the_dub_and_the_side_by_side(tmp_path, capfd):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--out", str(out), "--steps", "1", "--quiet"]) == 0
    printed = capfd.readouterr().out
    assert "synthetic world" in printed and "not a model of real" in printed
    assert "correlation" in printed
    source, dubbed = read_clip(DEMO_CLIP), read_clip(out)
    assert dubbed.frames.shape == source.frames.shape
    picture = cv2.imread(str(out.with_suffix(".png")))
    h, w = source.frames.shape[1:3]
    assert picture.shape[1] == 3 * w and picture.shape[0] > 3 * h  # 3 frames x (source | truth | ours) + labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.mp4", "demo.png"]
    assert not np.array_equal(dubbed.frames, source.frames)
