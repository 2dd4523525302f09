"""What each stage trains, the per-sample draws and their dropout rates, and that a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from stabledub_core.errors import OptionError
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.unet import StableDubUNet
from stabledub_core.pipeline.prediction import alpha_bar_at, training_alphas_cumprod
from stabledub_core.train.config import TrainOptions
from stabledub_core.train.datasets import SampleKey, Stage1Dataset, Stage2Dataset
from stabledub_core.train.engine import train
from stabledub_core.train.objectives import (DiffusionObjective, VAEObjective, freeze_for, sample_draws,
                                             trainable_names)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return StableDub.from_config(get_preset("tiny")).eval()


def test_stage_two_trains_temporal_mamba_audio_attention_habit_and_audio_layers_only(tiny):
    names = trainable_names(tiny, "stage2")
    assert any(".temporal.mamba." in n for n in names) and any(".attn2.to_k." in n for n in names)
    assert any(n.startswith("habit.lip_encoder.") for n in names) and "habit.lam" in names
    assert "audio_encoder.conv.weight" in names
    assert not [n for n in names if ".transformer_blocks." in n and (".mamba." in n or ".norm1." in n)]
    assert not [n for n in names if n.startswith("vae.") or ".resnets." in n or n.startswith("unet.conv_in")]



def test_without_habit_modulation_stage_two_leaves_the_lip_encoder_out(tiny, prepared):
    """Every trained parameter must receive a gradient (data-parallel runs need it): the w/o-habit model has no
    habit vector, so its lip encoder is not trained."""
    config = get_preset("tiny")
    config.habit.enabled = False
    torch.manual_seed(0)
    model = StableDub.from_config(config).eval()
    names = trainable_names(model, "stage2")
    assert not [n for n in names if n.startswith(("habit.lip_encoder.", "habit.habit_conv."))]
    assert set(trainable_names(tiny, "stage2")) - set(names) == {
        n for n, _ in tiny.named_parameters() if n.startswith(("habit.lip_encoder.", "habit.habit_conv."))}
    torch.nn.init.normal_(model.habit.out_conv.weight, std=0.02)
    params = dict(zip(names, freeze_for(model, "stage2")))
    batch = default_collate([Stage2Dataset(prepared[1])[SampleKey(1, 0, 0.0)]])
    DiffusionObjective(model, "stage2", drop_prob=0.0)(batch).total.backward()
    assert [n for n, p in params.items() if p.grad is None] == []

def test_stage_one_of_the_tiny_preset_trains_the_unet_but_temporal_and_audio_layers(tiny):
    names = set(trainable_names(tiny, "stage1"))
    unet = {n for n, _ in tiny.named_parameters() if n.startswith("unet.")}
    held = {n for n in unet if ".temporal." in n or ".attn2." in n or ".norm2." in n and ".transformer_blocks." in n}
    assert names == unet - held
    assert trainable_names(tiny, "vae") == [n for n, _ in tiny.named_parameters() if n.startswith("vae.")]


def test_stage_two_with_image_layers_also_trains_stage_ones_unet_layers(tiny, prepared):
    """The option for a tiny U-Net trained from scratch: stage 2 trains the union of both stages' sets, and every
    one of them gets a gradient from an audio-conditioned clip."""
    names = trainable_names(tiny, "stage2", image_layers=True)
    assert set(names) == set(trainable_names(tiny, "stage1")) | set(trainable_names(tiny, "stage2"))
    assert names == [n for n, _ in tiny.named_parameters() if n in set(names)]  # named_parameters order
    assert any(".resnets." in n for n in names) and "unet.conv_in.weight" in names
    assert not [n for n in names if n.startswith("vae.")]
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny")).eval()
    torch.nn.init.normal_(model.habit.out_conv.weight, std=0.02)
    params = dict(zip(names, freeze_for(model, "stage2", image_layers=True)))
    assert {id(p) for p in params.values()} == {id(p) for p in model.parameters() if p.requires_grad}
    batch = default_collate([Stage2Dataset(prepared[1])[SampleKey(1, 0, 0.0)]])
    DiffusionObjective(model, "stage2", drop_prob=0.0)(batch).total.backward()
    assert [n for n, p in params.items() if p.grad is None] == []


@pytest.mark.parametrize("stage", ["vae", "stage1"])
def test_image_layers_is_refused_outside_stage_two(tiny, stage, prepared, tmp_path):
    with pytest.raises(OptionError, match="stage-2 option"):
        trainable_names(tiny, stage, image_layers=True)
    with pytest.raises(OptionError, match="stage-2 option"):  # the run refuses it before writing its folder
        train(stage, prepared[1], tmp_path / "run", TrainOptions(preset="tiny", image_layers=True))
    assert not (tmp_path / "run").exists()


def test_stage_one_of_sd15_trains_the_spatial_mamba_and_conv_in_only():
    config = get_preset("sd15")
    with torch.device("meta"):
        unet = StableDubUNet(config.unet)
    model = type("Model", (), {"config": config, "audio_encoder": object(),
                               "named_parameters": lambda self: (("unet." + n, p) for n, p in unet.named_parameters())})()
    names = trainable_names(model, "stage1")
    assert "unet.conv_in.weight" in names
    rest = [n for n in names if n != "unet.conv_in.weight" and n != "unet.conv_in.bias"]
    assert rest and all(".transformer_blocks." in n and (".mamba." in n or ".norm1." in n) for n in rest)


def test_freezing_leaves_only_the_stages_parameters_trainable(tiny):
    params = freeze_for(tiny, "stage2")
    assert {id(p) for p in params} == {id(p) for p in tiny.parameters() if p.requires_grad}
    freeze_for(tiny, "stage1")
    assert not any(p.requires_grad for n, p in tiny.named_parameters() if ".temporal." in n)


def test_condition_dropout_happens_at_the_configured_rate_independently():
    seeds = torch.arange(4000)
    _, steps, audio, habit = sample_draws(seeds, (1,), 1000, 0.1)
    assert 0.085 < audio.float().mean() < 0.115 and 0.085 < habit.float().mean() < 0.115
    assert 0.005 < (audio & habit).float().mean() < 0.016  # independent: about 0.1 * 0.1
    assert steps.min() >= 0 and steps.max() < 1000 and len(set(steps.tolist())) > 900
    _, _, audio, habit = sample_draws(seeds[:500], (1,), 1000, 0.3)
    assert 0.24 < audio.float().mean() < 0.36
    _, _, audio, habit = sample_draws(seeds[:200], (1,), 1000, 0.0)
    assert not audio.any() and not habit.any()


def test_a_samples_draws_depend_on_its_seed_only():
    one = sample_draws(torch.tensor([7, 8]), (2, 3), 1000, 0.5)
    two = sample_draws(torch.tensor([8]), (2, 3), 1000, 0.5)
    assert torch.equal(one[0][1], two[0][0]) and one[1][1] == two[1][0]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(prepared, stage):
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny")).eval()
    if stage == "stage2":  # the zero-initialised output conv of the habit module makes the audio path live
        torch.nn.init.normal_(model.habit.out_conv.weight, std=0.02)
        dataset = Stage2Dataset(prepared[1])
        batch = default_collate([dataset[SampleKey(1, 0, 0.0)]])
    else:
        dataset = Stage1Dataset(prepared[1])
        batch = default_collate([dataset[SampleKey(i, 0, 0.0)] for i in (0, 31)])
    params = freeze_for(model, stage)
    objective = DiffusionObjective(model, stage)
    optimizer = torch.optim.AdamW(params, lr=5e-3)
    before = [p.detach().clone() for p in params]
    losses = []
    for _ in range(4):
        loss = objective(batch).total
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # stage 2 trains the audio/temporal/habit layers of a random U-Net whose spatial layers are frozen: a smaller drop
    assert objective(batch).total.item() < losses[0] * (0.9 if stage == "stage1" else 0.98)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, p) for a, p in zip(before, params))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_training_target_follows_the_prediction_type(prepared, prediction_type, monkeypatch):
    """A U-Net that outputs exactly the target of its prediction type has zero loss."""
    config = get_preset("tiny")
    config.prediction_type = prediction_type
    model = StableDub.from_config(config).eval()
    batch = default_collate([Stage1Dataset(prepared[1])[SampleKey(i, 0, 0.0)] for i in (0, 5)])
    objective = DiffusionObjective(model, "stage1")
    seen = {}

    def oracle(sample, timesteps, tokens):
        x_t = sample[:, :, :4]
        a = alpha_bar_at(timesteps, training_alphas_cumprod()).float().view(-1, 1, 1, 1, 1)
        x0 = seen["x0"]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

    with torch.no_grad():
        seen["x0"] = objective._encode(batch["crop"])[:, None]
        monkeypatch.setattr(model.unet, "forward", oracle)
        assert objective(batch).total.item() < 1e-6


def test_the_vae_objective_weighs_the_reconstruction_inside_the_samples_mc(tiny, prepared):
    batch = default_collate([Stage1Dataset(prepared[1])[SampleKey(i, 0, 0.0)] for i in (0, 5)])
    assert 0 < batch["mc"].mean() < 1
    with torch.no_grad():
        plain = VAEObjective(tiny)(batch)
        weighted = VAEObjective(tiny, mouth_weight=4.0)(batch)
    assert weighted.reconstruction.item() == pytest.approx(plain.reconstruction.item(), rel=1e-6)  # same draws
    assert 0 < weighted.mouth.item() < weighted.reconstruction.item()
    assert weighted.total.item() == pytest.approx(plain.total.item() + 4.0 * weighted.mouth.item(), rel=1e-5)
