"""The ablation variants of the model config (``unet.mixer``, ``unet.temporal``, ``habit.enabled``), ``config_with``
and ``init --set``, which starts a changed config from a trained checkpoint."""

import pytest
import torch
from safetensors import safe_open

from stabledub_core.cli.main import main
from stabledub_core.errors import ModelConfigError, OptionError
from stabledub_core.models.attention_mixer import SelfAttentionMixer
from stabledub_core.models.checkpoint import load_checkpoint, save_checkpoint
from stabledub_core.models.config import config_with, get_preset
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.unet import StableDubUNet


def _unet_inputs(config, frames=4, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, frames, config.in_channels, size, size, generator=gen)
    audio = torch.randn(1, frames, 3, config.cross_attention_dim, generator=gen)
    return sample, torch.full((1,), 300), audio


def test_config_with_parses_each_field_type_and_copies():
    base = get_preset("tiny")
    changed = config_with(base, ["unet.mixer=attention", "unet.temporal=false", "habit.enabled=0",
                                 "resolution=96", "unet.block_out_channels=16,32,32,32", "audio.context_seconds=0.4"])
    assert (changed.unet.mixer, changed.unet.temporal, changed.habit.enabled) == ("attention", False, False)
    assert changed.resolution == 96 and changed.unet.block_out_channels == (16, 32, 32, 32)
    assert changed.audio.context_seconds == 0.4
    assert (base.unet.mixer, base.unet.temporal, base.habit.enabled, base.resolution) == ("mamba", True, True, 128)


@pytest.mark.parametrize("setting", ["unet.nothing=1", "unet", "unet.temporal=maybe", "resolution=big", "unet=3",
                                     "a.b.c=1"])
def test_config_with_rejects_bad_settings_with_the_setting_named(setting):
    with pytest.raises(OptionError, match="--set"):
        config_with(get_preset("tiny"), [setting])


def test_an_unknown_mixer_is_a_config_error():
    with pytest.raises(ModelConfigError, match="mixer"):
        StableDubUNet(config_with(get_preset("tiny"), ["unet.mixer=conv"]).unet)


def test_the_attention_unet_swaps_every_mixer_and_keeps_the_shapes():
    config = config_with(get_preset("tiny"), ["unet.mixer=attention"]).unet
    torch.manual_seed(0)
    unet = StableDubUNet(config).eval()
    mixers = [m for n, m in unet.named_modules() if n.endswith(".mamba")]
    assert mixers and all(isinstance(m, SelfAttentionMixer) for m in mixers)
    temporal = [m for n, m in unet.named_modules() if n.endswith(".temporal.mamba")]
    assert temporal and all(m.positional for m in temporal)
    assert all(not m.positional for n, m in unet.named_modules() if n.endswith("transformer_blocks.0.mamba"))
    assert all(torch.count_nonzero(m.out_proj.weight) == 0 for m in temporal)  # the temporal layers start as identity
    sample, t, audio = _unet_inputs(config)
    with torch.no_grad():
        out = unet(sample, t, audio)
    assert out.shape == (1, 4, 4, 8, 8) and torch.isfinite(out).all()


def test_temporal_attention_sees_the_frame_order():
    torch.manual_seed(0)
    mixer = SelfAttentionMixer(16, 2, positional=True).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        forward, reversed_ = mixer(x), mixer(x.flip(1)).flip(1)
    assert not torch.allclose(forward, reversed_, atol=1e-4)


def test_without_temporal_layers_the_unet_equals_the_full_one_at_init():
    """Temporal layers start as the identity (zero out_proj), so dropping them changes nothing before training."""
    full_config = get_preset("tiny").unet
    torch.manual_seed(0)
    full = StableDubUNet(full_config).eval()
    reduced = StableDubUNet(config_with(get_preset("tiny"), ["unet.temporal=false"]).unet).eval()
    assert not any(".temporal." in n for n in reduced.state_dict())
    assert set(reduced.state_dict()) < set(full.state_dict())
    reduced.load_state_dict({n: t for n, t in full.state_dict().items() if n in reduced.state_dict()})
    sample, t, audio = _unet_inputs(full_config)
    with torch.no_grad():
        assert torch.equal(full(sample, t, audio), reduced(sample, t, audio))


def test_a_disabled_habit_module_ignores_the_habit_vector():
    config = config_with(get_preset("tiny"), ["habit.enabled=false"])
    torch.manual_seed(0)
    habit = LipHabitModulation(config.habit, config.audio.feature_size).eval()
    for p in habit.parameters():  # make every weight count, or the zero-initialised convs hide the difference
        torch.nn.init.normal_(p, std=0.1)
    audio = torch.randn(2, 3, 10, config.audio.feature_size)
    v = torch.randn(2, config.habit.hidden_size)
    with torch.no_grad():
        assert torch.equal(habit(audio, v), habit(audio, None))
        habit.config.enabled = True
        assert not torch.equal(habit(audio, v), habit(audio, None))


def test_init_set_copies_the_matching_tensors_of_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    source = save_checkpoint(StableDub.from_config(get_preset("tiny")), tmp_path / "source.safetensors")
    out = tmp_path / "attention.safetensors"
    assert main(["init", str(source), "--out", str(out), "--set", "unet.mixer=attention", "--set",
                 "unet.temporal=false"]) == 0
    printed = capsys.readouterr().out
    assert "StableDub checkpoint initialisation" in printed
    before, after = load_checkpoint(source), load_checkpoint(out)
    assert (after.config.unet.mixer, after.config.unet.temporal) == ("attention", False)
    a, b = before.state_dict(), after.state_dict()
    shared = [n for n in b if n in a and a[n].shape == b[n].shape]
    assert any(n.startswith("vae.") for n in shared) and all(torch.equal(a[n], b[n]) for n in shared)
    assert any(".mamba.attn." in n for n in b) and not any(".temporal." in n for n in b)
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["config_changes"] == "unet.mixer=attention;unet.temporal=false"


def test_init_set_names_a_bad_setting(tmp_path, capfd):
    source = save_checkpoint(StableDub.from_config(get_preset("tiny")), tmp_path / "source.safetensors")
    assert main(["init", str(source), "--out", str(tmp_path / "x.safetensors"), "--set", "unet.bogus=1"]) == 2
    assert "unet.bogus" in capfd.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
