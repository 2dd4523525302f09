"""The StableDub U-Net: shapes, SD 1.5 parameter names, size, zero-initialised temporal layers, checkpointing."""

import dataclasses

import pytest
import torch

from stabledub_core.models.mamba_transformer_2d import MambaSettings, MambaTransformer2D, SpatialMambaTransformerBlock
from stabledub_core.models.config import get_preset
from stabledub_core.models.unet import StableDubUNet, UNetInputError, build_unet_input


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return StableDubUNet(get_preset("tiny").unet).eval()


def _inputs(unet, batch, frames, height, width, tokens=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(batch, frames, cfg.in_channels, height, width, generator=gen)
    audio = torch.randn(batch, frames, tokens, cfg.cross_attention_dim, generator=gen)
    return sample, audio


@pytest.mark.parametrize("batch,frames,height,width", [(2, 1, 8, 16), (1, 5, 16, 8), (1, 16, 8, 8)])
def test_tiny_output_shapes(tiny_unet, batch, frames, height, width):
    sample, audio = _inputs(tiny_unet, batch, frames, height, width)
    with torch.no_grad():
        out = tiny_unet(sample, torch.full((batch,), 500), audio)
    assert out.shape == (batch, frames, 4, height, width)
    assert torch.isfinite(out).all()


def test_build_unet_input_stacks_in_contract_order():
    noisy, masked = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    mask, appearance = torch.rand(2, 3, 1, 8, 8), torch.randn(2, 4, 8, 8)
    x = build_unet_input(noisy, masked, mask, appearance)
    assert x.shape == (2, 3, 13, 8, 8)
    torch.testing.assert_close(x[:, :, :4], noisy)
    torch.testing.assert_close(x[:, :, 4:8], masked)
    torch.testing.assert_close(x[:, :, 8:9], mask)
    torch.testing.assert_close(x[:, 2, 9:], appearance)
    per_frame = torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(build_unet_input(noisy, masked, mask, per_frame)[:, :, 9:], per_frame)
    with pytest.raises(UNetInputError, match="mask has shape"):
        build_unet_input(noisy, masked, mask[:, :2], appearance)
    with pytest.raises(UNetInputError, match="1 channel"):
        build_unet_input(noisy, masked, masked, appearance)


def test_bad_inputs_are_clear_errors(tiny_unet):
    sample, audio = _inputs(tiny_unet, 1, 2, 8, 8)
    with pytest.raises(UNetInputError, match="multiple of 8"):
        tiny_unet(sample[..., :6], 1, audio)
    with pytest.raises(UNetInputError, match="build_unet_input"):
        tiny_unet(sample[:, :, :4], 1, audio)
    with pytest.raises(UNetInputError, match="encoder_hidden_states"):
        tiny_unet(sample, 1, audio[:, :1])
    with pytest.raises(UNetInputError, match="timestep"):
        tiny_unet(sample, torch.tensor([1, 2]), audio)


def test_sd15_names_and_shapes_mirror_diffusers_unet():
    """Every SD 1.5 parameter but self-attention (attn1) exists here with the same shape (conv_in: 13 channels)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's configuration
        ours = StableDubUNet(get_preset("sd15").unet)
    sd_shapes = {k: tuple(v.shape) for k, v in sd.named_parameters() if ".attn1." not in k}
    our_shapes = {k: tuple(v.shape) for k, v in ours.named_parameters()}
    assert sorted(set(sd_shapes) - set(our_shapes)) == []
    differing = {k for k in sd_shapes if sd_shapes[k] != our_shapes[k]}
    assert differing == {"conv_in.weight"}
    assert our_shapes["conv_in.weight"] == (320, 13, 3, 3)
    new = set(our_shapes) - set(sd_shapes)
    assert new and all(".transformer_blocks.0.mamba." in k or ".temporal." in k for k in new)


def test_sd15_parameter_count():
    with torch.device("meta"):
        unet = StableDubUNet(get_preset("sd15").unet)
    count = sum(p.numel() for p in unet.parameters())
    # SD 1.5's 860 M - self-attention + bidirectional spatial and temporal Mamba: ~977 M.
    assert 0.95e9 <= count <= 0.98e9, count


def test_spatial_scan_order_alternates_between_layers(tiny_unet):
    flags = [m.transpose_scan for m in tiny_unet.modules() if isinstance(m, SpatialMambaTransformerBlock)]
    assert len(flags) >= 4
    assert flags == [i % 2 == 1 for i in range(len(flags))]


def test_column_major_scan_is_the_mamba_over_the_transposed_grid():
    torch.manual_seed(3)
    block = SpatialMambaTransformerBlock(16, 2, 8, MambaSettings(d_state=4), transpose_scan=True)
    grid = torch.randn(2, 3, 5, 16)  # (N, h, w, C)
    mixed = block._spatial_mix(grid.reshape(2, 15, 16), 3, 5)
    expected = block.mamba(grid.transpose(1, 2).reshape(2, 15, 16)).reshape(2, 5, 3, 16).transpose(1, 2)
    torch.testing.assert_close(mixed, expected.reshape(2, 15, 16))


def test_temporal_mamba_is_identity_at_init():
    torch.manual_seed(4)
    layer = MambaTransformer2D(32, 4, 16, 8, MambaSettings(d_state=4))
    x, audio = torch.randn(6, 32, 4, 4), torch.randn(6, 3, 16)  # B=2, F=3
    with torch.no_grad():
        with_temporal = layer(x, audio, 3)
        layer.temporal = _SkipTemporal()
        without_temporal = layer(x, audio, 3)
    assert torch.equal(with_temporal, without_temporal)


class _SkipTemporal(torch.nn.Module):
    def forward(self, hidden_states, num_frames):
        return hidden_states


def _permutation_error(unet, sample, audio, perm):
    with torch.no_grad():
        out = unet(sample, 10, audio)
        permuted = unet(sample[:, perm], 10, audio[:, perm])
    return (permuted - out[:, perm]).abs().max().item()


def test_frames_are_independent_at_init_and_mixed_after_training(tiny_unet):
    """At init every layer but the temporal ones is per-frame, and those are identities: permuting the frames
    commutes with the U-Net. Once a temporal layer has weights, it does not."""
    sample, audio = _inputs(tiny_unet, 1, 4, 8, 8)
    perm = torch.tensor([2, 0, 3, 1])
    assert _permutation_error(tiny_unet, sample, audio, perm) < 1e-5
    trained = StableDubUNet(tiny_unet.config).eval()
    trained.load_state_dict(tiny_unet.state_dict())
    with torch.no_grad():
        trained.mid_block.attentions[0].temporal.mamba.out_proj.weight.normal_()
    assert _permutation_error(trained, sample, audio, perm) > 1e-3


def test_each_frame_attends_to_its_own_audio(tiny_unet):
    sample, audio = _inputs(tiny_unet, 1, 3, 8, 8)
    changed = audio.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        diff = (tiny_unet(sample, 10, changed) - tiny_unet(sample, 10, audio)).abs().amax(dim=(0, 2, 3, 4))
    assert diff[1] > 1e-4 and diff[0] == 0 and diff[2] == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(5)
    cfg = dataclasses.replace(get_preset("tiny").unet, block_out_channels=(16, 32), norm_num_groups=8,
                              attention_head_dim=2, cross_attention_dim=16, mamba_d_state=4)
    plain = StableDubUNet(cfg)
    with torch.no_grad():  # make the temporal layers active so that every path carries gradient
        for m in plain.modules():
            if hasattr(m, "temporal"):
                m.temporal.mamba.out_proj.weight.normal_(std=0.02)
    ckpt = StableDubUNet(cfg)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.enable_gradient_checkpointing()
    sample, audio = _inputs(plain, 1, 2, 4, 6)
    grads = []
    for unet in (plain, ckpt):
        unet(sample, 10, audio).square().mean().backward()
        grads.append({k: p.grad for k, p in unet.named_parameters()})
    for name, grad in grads[0].items():
        assert grad is not None, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6)
    assert all(m.gradient_checkpointing for m in ckpt.down_blocks)
