import json

import pytest
import torch

from helpers.sd_layout import small_sd_unet, write_sd_files
from stabledub_core.errors import CheckpointError, PickleRefusedError
from stabledub_core.models.config import get_preset
from stabledub_core.models.safetensors_io import read_safetensors
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.vae import build_vae
from stabledub_core.models.weights import init_from_sd15, ldm_unet_to_diffusers

SD_CROSS_DIM = 48  # differs from the tiny preset's 64: attn2.to_k / to_v must be reported as shape mismatches


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    cfg = get_preset("tiny")
    u = cfg.unet
    unet = small_sd_unet(u.block_out_channels, u.layers_per_block, u.attention_head_dim, SD_CROSS_DIM,
                         u.norm_num_groups)
    torch.manual_seed(1)
    vae = build_vae(cfg.vae)
    folder, single = write_sd_files(tmp_path_factory.mktemp("sd"), unet, vae)
    return unet, vae, folder, single


@pytest.fixture(scope="module")
def initialised(sd_files):
    _, _, folder, single = sd_files
    out = {}
    for kind, source in (("folder", folder), ("single", single)):
        torch.manual_seed(0)
        model = StableDub.from_config(get_preset("tiny"))
        out[kind] = (model, init_from_sd15(model, source))
    return out


@pytest.mark.parametrize("layers", [1, 2])
def test_ldm_mapping_equals_diffusers_converter(tmp_path, layers):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = small_sd_unet((32, 64, 64), layers, 4, 32, 16)
    _, single = write_sd_files(tmp_path, unet, build_vae(get_preset("tiny").vae))
    tensors = read_safetensors(single)
    ours = ldm_unet_to_diffusers(tensors, layers)
    theirs = convert_ldm_unet_checkpoint(tensors, dict(unet.config))
    assert set(ours) == set(theirs) == set(unet.state_dict())
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def test_both_formats_copy_the_same_tensors(initialised, sd_files):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd_unet, _, _, single = sd_files
    (model_f, rep_f), (model_s, rep_s) = initialised["folder"], initialised["single"]
    assert rep_f.copied == rep_s.copied and len(rep_f.copied) > 50
    assert "text encoder removed" in dict(rep_f.skipped)["text_encoder/"]
    reference = convert_ldm_unet_checkpoint(read_safetensors(single), dict(sd_unet.config))
    state_f, state_s = model_f.unet.state_dict(), model_s.unet.state_dict()
    for name in rep_f.copied:
        assert torch.equal(state_f[name], reference[name]), name
        assert torch.equal(state_s[name], reference[name]), name
    # what both formats do not copy is left as initialised (same seed): the whole U-Net is identical
    for name in state_f:
        assert torch.equal(state_f[name], state_s[name]), name
    vae_s, vae_f = model_s.vae.state_dict(), model_f.vae.state_dict()
    for name, value in sd_files[1].state_dict().items():  # SD's VAE, from first_stage_model.* and from vae/
        assert torch.equal(value, vae_s[name]) and torch.equal(value, vae_f[name]), name


def test_conv_in_gets_sd_channels_then_zeros(initialised, sd_files):
    sd_unet = sd_files[0]
    model, report = initialised["single"]
    weight = model.unet.conv_in.weight
    assert weight.shape[1] == 13
    assert torch.equal(weight[:, :4], sd_unet.conv_in.weight)
    assert not weight[:, 4:].any()
    assert [n for n, _ in report.partial] == ["conv_in.weight"]
    assert torch.equal(model.unet.conv_in.bias, sd_unet.conv_in.bias)


def test_report_lists_new_skipped_and_mismatched(initialised):
    _, report = initialised["single"]
    skipped = dict(report.skipped)
    attn1 = [n for n in skipped if ".attn1." in n]
    assert attn1 and all(skipped[n] == "self-attention replaced by spatial Mamba" for n in attn1)
    assert "text encoder removed" in skipped["cond_stage_model.transformer.text_model.embeddings."
                                            "token_embedding.weight"]
    assert "noise-schedule" in skipped["alphas_cumprod"]
    mismatched = dict(report.mismatched)
    assert any(n.endswith("attn2.to_k.weight") for n in mismatched)
    assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in mismatched)
    assert all(f", {SD_CROSS_DIM}) vs StableDub" in note and ", 64)" in note for note in mismatched.values())
    new = dict(report.new)
    assert any(".mamba." in n for n in new) and any(".temporal." in n for n in new)
    # every U-Net tensor is accounted for exactly once
    accounted = report.copied + [n for n, _ in report.partial + report.new + report.mismatched]
    assert sorted(accounted) == sorted(initialised["single"][0].unet.state_dict())
    text = report.to_text()
    assert "self-attention replaced by spatial Mamba" in text and "VAE:" in text
    assert json.loads(report.to_json())["copied"] == report.copied


def test_refusals_and_missing_sources(tmp_path):
    model = StableDub.from_config(get_preset("tiny"))
    pickle_file = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": {}}, pickle_file)
    with pytest.raises(PickleRefusedError, match="convert it to .safetensors|Convert it to .safetensors"):
        init_from_sd15(model, pickle_file)
    with pytest.raises(FileNotFoundError, match="not found"):
        init_from_sd15(model, tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        init_from_sd15(model, tmp_path / "empty")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="model.diffusion_model"):
        init_from_sd15(model, tmp_path / "other.safetensors")


def test_full_sd15_layout_maps_onto_the_sd15_unet_on_meta():
    """SD 1.5's real U-Net layout (meta tensors, no memory): every SD tensor but attn1 finds its place."""
    from diffusers import UNet2DConditionModel

    from helpers.sd_layout import diffusers_to_ldm_unet_key
    from stabledub_core.models.unet import StableDubUNet
    from stabledub_core.models.weights import WeightInitReport, init_unet_from_sd

    with torch.device("meta"):
        sd = UNet2DConditionModel(cross_attention_dim=768)  # SD 1.5's config
        ours = StableDubUNet(get_preset("sd15").unet)
    up_attn = ["CrossAttn" in t for t in sd.config.up_block_types]
    ldm = {"model.diffusion_model." + diffusers_to_ldm_unet_key(k, 2, up_attn): v for k, v in sd.state_dict().items()}
    mapped = ldm_unet_to_diffusers(ldm, 2)
    assert set(mapped) == set(sd.state_dict())
    report = init_unet_from_sd(ours, mapped, WeightInitReport(source="meta"))
    assert report.mismatched == []
    assert {why for _, why in report.skipped} == {"self-attention replaced by spatial Mamba"}
    assert len(report.skipped) == 16 * 5  # 16 transformers x (to_q, to_k, to_v, to_out.0 weight + bias)
    assert len(report.copied) + len(report.skipped) + 1 == len(mapped)  # + conv_in.weight (partial)
