import dataclasses

import pytest
import torch

from stabledub_core.models.config import VAEConfig, get_preset
from stabledub_core.models.vae import (VAEWeightsError, build_vae, decode_latents, encode_frames, load_vae_folder,
                                       vae_diffusers_config)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(get_preset("tiny").vae).eval()


def test_sd_config_is_sd15s_autoencoder():
    cfg = vae_diffusers_config(VAEConfig())
    assert cfg["block_out_channels"] == (128, 256, 512, 512) and len(cfg["down_block_types"]) == 4
    assert cfg["latent_channels"] == 4 and cfg["scaling_factor"] == 0.18215 and cfg["sample_size"] == 512


def test_encode_decode_shapes_scaling_and_chunking(vae):
    frames = torch.rand(3, 3, 32, 32)
    z = encode_frames(vae, frames, chunk=2)
    assert z.shape == (3, 4, 4, 4)
    torch.testing.assert_close(z, encode_frames(vae, frames, chunk=8))
    with torch.no_grad():
        raw = vae.encode(frames * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(z, raw * 0.18215)
    out = decode_latents(vae, z, chunk=2)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, decode_latents(vae, z, chunk=3))


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        encode_frames(vae, torch.rand(2, 32, 32, 3))
    with pytest.raises(ValueError, match="latents must be"):
        decode_latents(vae, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="chunk"):
        encode_frames(vae, torch.rand(1, 3, 32, 32), chunk=0)


def test_folder_with_another_layout_is_refused(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    assert load_vae_folder(tmp_path, get_preset("tiny").vae).config.latent_channels == 4
    other = dataclasses.replace(get_preset("tiny").vae, block_out_channels=(32, 64, 64, 128))
    with pytest.raises(VAEWeightsError, match="block_out_channels"):
        load_vae_folder(tmp_path / "vae", other)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae_folder(tmp_path / "nothing", other)
