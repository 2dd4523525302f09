"""The init, summary and preview subcommands of ``python -m stabledub_core`` (stabledub_core/cli/)."""

import json
import re

import cv2
import numpy as np
import pytest
import torch

from helpers.sd_layout import small_sd_unet, write_sd_files
from stabledub_core.cli.main import EXIT_USER_ERROR, main
from stabledub_core.models.checkpoint import load_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.vae import build_vae


def assert_one_line_error(status, capfd, *words):
    assert status == EXIT_USER_ERROR
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stabledub: error: "), err
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    cfg = get_preset("tiny")
    u = cfg.unet
    unet = small_sd_unet(u.block_out_channels, u.layers_per_block, u.attention_head_dim, 48, u.norm_num_groups)
    torch.manual_seed(1)
    folder, single = write_sd_files(tmp_path_factory.mktemp("sd"), unet, build_vae(cfg.vae))
    return unet, folder, single


def test_init_writes_an_initialised_checkpoint(sd_files, tmp_path, capsys):
    unet, _, single = sd_files
    out, report = tmp_path / "init.safetensors", tmp_path / "report.json"
    assert main(["init", str(single), "--preset", "tiny", "--out", str(out), "--report", str(report)]) == 0
    assert "self-attention replaced by spatial Mamba" in capsys.readouterr().out
    loaded = load_checkpoint(out, expect_preset="tiny")
    assert torch.equal(loaded.unet.conv_in.weight[:, :4], unet.conv_in.weight)
    assert json.loads(report.read_text())["partial"][0][0] == "conv_in.weight"


def test_init_errors_are_one_line(sd_files, tmp_path, capfd):
    out = tmp_path / "init.safetensors"
    assert_one_line_error(main(["init", str(tmp_path / "nope.safetensors"), "--preset", "tiny", "--out", str(out)]),
                          capfd, "not found")
    assert_one_line_error(main(["init", str(sd_files[2]), "--preset", "tiny", "--out", str(tmp_path / "init.ckpt")]),
                          capfd, ".safetensors")
    pickle = tmp_path / "sd.ckpt"
    pickle.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(main(["init", str(pickle), "--preset", "tiny", "--out", str(out)]), capfd, "pickle")
    assert not out.exists()


def test_summary_prints_the_parameter_table(capsys):
    assert main(["summary", "tiny"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"parameters: \d+", last)


def test_preview_writes_a_png(media_dir, face_model_path, tmp_path):
    out = tmp_path / "strip.png"
    assert main(["preview", str(media_dir / "face_occluded.mp4"), "--out", str(out), "--frames", "3", "--tile", "128",
                 "--face-model", str(face_model_path), "--exposure-rate", "0.3", "--max-frames", "40"]) == 0
    image = cv2.imread(str(out))
    assert image.shape == (128, 3 * 128, 3)


def test_preview_errors_are_one_line(media_dir, face_model_path, tmp_path, capfd):
    video = media_dir / "face_occluded.mp4"
    out = tmp_path / "strip.png"
    common = ["--out", str(out), "--face-model", str(face_model_path), "--max-frames", "4"]
    assert_one_line_error(main(["preview", str(tmp_path / "missing.mp4"), *common]), capfd, "missing.mp4")
    assert_one_line_error(main(["preview", str(video), *common, "--frames", "0"]), capfd, "--frames")
    assert_one_line_error(main(["preview", str(video), "--out", str(tmp_path / "strip.txt"), "--face-model",
                                str(face_model_path)]), capfd, "--out")
    small = tmp_path / "occluder.png"
    cv2.imwrite(str(small), np.zeros((10, 12), np.uint8))
    assert_one_line_error(main(["preview", str(video), *common, "--occluder", str(small)]), capfd, "12x10")
    not_an_image = tmp_path / "occluder_text.png"
    not_an_image.write_text("not an image")
    assert_one_line_error(main(["preview", str(video), *common, "--occluder", str(not_an_image)]), capfd,
                          "occluder")
    assert not out.exists()
