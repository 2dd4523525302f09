"""The crops' framing (``crop_box_scale``) travels from preprocessing into the model's config, and a model is never
trained on crops framed otherwise than it will be run on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stabledub_core.errors import OptionError
from stabledub_core.models.checkpoint import save_checkpoint
from stabledub_core.models.config import config_with, get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.chunk_model import StableDubChunkModel
from stabledub_core.pipeline.options import RuntimeOptions, SamplingOptions
from stabledub_core.train.config import TrainOptions
from stabledub_core.train.engine import model_config


def _framed(prepared, tmp_path, scale: float):
    """A copy of the prepared data's manifest claiming the crops were framed with ``scale``."""
    manifest = json.loads((prepared[1] / "manifest.json").read_text())
    manifest["settings"]["mask"]["box_scale"] = scale
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_new_model_takes_the_datas_framing(prepared, tmp_path):
    assert model_config(TrainOptions(preset="tiny"), prepared[1]).crop_box_scale == get_preset("tiny").crop_box_scale
    assert model_config(TrainOptions(preset="tiny"), _framed(prepared, tmp_path, 1.3)).crop_box_scale == 1.3


def test_an_init_framed_otherwise_than_the_data_is_refused(prepared, tmp_path):
    data = _framed(prepared, tmp_path, 1.3)
    init = save_checkpoint(StableDub.from_config(get_preset("tiny")), tmp_path / "init.safetensors")
    with pytest.raises(OptionError, match=r"--crop-box-scale 1.8.*crop_box_scale=1.3"):
        model_config(TrainOptions(init=str(init)), data)
    tight = StableDub.from_config(config_with(get_preset("tiny"), ["crop_box_scale=1.3"]))
    assert model_config(TrainOptions(init=str(save_checkpoint(tight, tmp_path / "tight.safetensors"))),
                        data).crop_box_scale == 1.3
    # and inference frames its crops by the model's config
    assert StableDubChunkModel(tight, SamplingOptions(), RuntimeOptions()).crop_box_scale == 1.3


def test_preprocess_frames_the_crops_as_asked(prepared, tmp_path, face_model_path):
    """``train preprocess --crop-box-scale 1.3`` records the framing and crops tighter: the mouth mask Mu covers
    about (1.8 / 1.3)^2 of its share in the default crops."""
    out = tmp_path / "tight"
    subprocess.run([sys.executable, "-m", "stabledub_core", "train", "preprocess", str(prepared[0]), str(out),
                    "--preset", "tiny", "--min-seconds", "1", "--crop-box-scale", "1.3", "--face-model",
                    str(face_model_path)], check=True, capture_output=True)
    assert json.loads((out / "manifest.json").read_text())["settings"]["mask"]["box_scale"] == 1.3
    shares = [np.mean([(np.load(p, mmap_mode="r") > 0).mean() for p in sorted(root.glob("shards/*/mu.npy"))])
              for root in (prepared[1], out)]
    assert 1.5 < shares[1] / shares[0] < 2.4, shares
