"""The stabilized sync loss of stage 2 (``train.sync_loss``): eq. 3 itself, the one-step x0 estimate, the
differentiable lip crops against the cv2 crops the scorer was trained on, the stacks and audio it scores (those of
``SyncDataset``), its gradient into the trained layers, the samples it skips, and the run options."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from stabledub_core.errors import OptionError
from stabledub_core.masks.lips import lip_crop_matrices, lip_crops, warp_crops_torch
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.sync_scorer import SyncScorer, SyncScorerConfig, save_scorer
from stabledub_core.pipeline.prediction import predicted_clean
from stabledub_core.train.config import TrainOptions
from stabledub_core.train.datasets import SampleKey, Stage2Dataset, SyncDataset
from stabledub_core.train.engine import train
from stabledub_core.train.objectives import DiffusionObjective, freeze_for, noise_scheduler
from stabledub_core.train.sync_loss import SyncTerm, SyncWindows, check_sync_loss, stabilized_sync_loss


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.manual_seed(3)
    model = SyncScorer(SyncScorerConfig())
    return model, save_scorer(model, tmp_path_factory.mktemp("scorer") / "scorer.safetensors")


def test_the_loss_is_zero_at_the_truths_similarity_and_pulls_towards_it():
    y, d = torch.tensor([0.6, 0.6]), torch.tensor([0.1, 0.55])
    assert stabilized_sync_loss(y, y, d).max() < 0.03
    x = torch.tensor([0.2, 0.2], requires_grad=True)
    loss = stabilized_sync_loss(x, y, d)
    loss.sum().backward()
    assert (x.grad < 0).all()  # below the truth: raising x lowers the loss
    assert loss[1] > loss[0]  # a reference that scores almost as well as the truth weighs more
    above = torch.tensor([0.9], requires_grad=True)
    stabilized_sync_loss(above, y[:1], d[:1]).backward()
    assert above.grad > 0  # above the truth is pulled down, not rewarded
    assert torch.isfinite(stabilized_sync_loss(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([0.5])))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_one_step_estimate_recovers_the_clean_latents_from_an_exact_prediction(kind):
    scheduler = noise_scheduler()
    clean, noise = torch.randn(3, 2, 4, 8, 8), torch.randn(3, 2, 4, 8, 8)
    steps = torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(clean, noise, steps)
    exact = noise if kind == "epsilon" else scheduler.get_velocity(clean, noise, steps)
    estimate = predicted_clean(exact, noisy, scheduler.alphas_cumprod[steps], kind)
    assert torch.allclose(estimate, clean, atol=1e-3 if kind == "v_prediction" else 5e-2)


def test_the_differentiable_lip_crops_match_the_cv2_crops_and_pass_gradients(prepared):
    data = Stage2Dataset(prepared[1])
    crops = np.asarray(data.data.frames(0, "crops", 4, 9))  # (5, S, S, 3) uint8
    landmarks = np.asarray(data.data.frames(0, "landmarks", 4, 9))
    images = torch.from_numpy(crops.copy()).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    ours = warp_crops_torch(images, lip_crop_matrices(landmarks, 48), 48)  # (5, 3, 48, 48)
    theirs = lip_crops(crops, landmarks, 48).astype(np.float32) / 255
    difference = np.abs(ours.detach().permute(0, 2, 3, 1).numpy() - theirs)
    assert difference.max() <= 1.5 / 255 and difference.mean() < 0.5 / 255  # cv2 rounds to 8 bits
    ours.sum().backward()
    assert images.grad.abs().sum() > 0
    shrink = lip_crop_matrices(landmarks, 8) * np.array([[[1, 1, 0]]]) * 0.01
    with pytest.raises(OptionError, match="shrinks the frame"):
        warp_crops_torch(images.detach(), shrink, 8)


def test_the_windows_are_the_stacks_and_audio_the_scorer_was_trained_on(prepared, scorer):
    dataset = Stage2Dataset(prepared[1])
    stacks = SyncDataset(prepared[1], scorer[0].config)
    batch = default_collate([dataset[SampleKey(i, 0, 0.0)] for i in range(len(dataset))])
    windows = SyncWindows(batch, scorer[0], torch.zeros(len(dataset), dtype=torch.bool))
    assert windows.samples == list(range(len(dataset)))
    for n, (b, start) in enumerate(zip(windows.samples, windows.starts)):
        assert start == int(batch["sample_seed"][b]) % (dataset.length - 4)
        frame = int(batch["start"][b]) + start  # the stack's first frame in the clip
        position = int(np.flatnonzero(stacks.valid[0] == frame)[0])
        sample = stacks[SampleKey(position, 0, 0.0)]
        assert torch.equal(windows.audio[n], sample["audio"])
        crops = windows.take(batch["crops"])[n]  # (5, 3, S, S)
        lips = warp_crops_torch(crops, windows.matrices[n], 48)
        assert (lips - sample["lips"]).abs().max() <= 1.5 / 255


def objective_and_batch(prepared, scorer, drop_prob=0.0):
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny")).eval()
    torch.nn.init.normal_(model.habit.out_conv.weight, std=0.02)
    params = freeze_for(model, "stage2")
    objective = DiffusionObjective(model, "stage2", drop_prob=drop_prob, sync=SyncTerm(scorer), sync_weight=0.1)
    batch = default_collate([Stage2Dataset(prepared[1])[SampleKey(i, 0, 0.0)] for i in (0, 1)])
    return objective, batch, params


def test_the_sync_term_reaches_the_trained_layers_through_the_frozen_decoder(prepared, scorer):
    objective, batch, params = objective_and_batch(prepared, scorer[0])
    losses = objective(batch)
    assert losses._fields == ("total", "dm", "lcf", "sync") and float(losses.sync.detach()) > 0
    assert torch.isclose(losses.total, losses.dm + losses.lcf + 0.1 * losses.sync)
    losses.sync.backward()
    assert sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0
    frozen = [p for p in [*objective.model.vae.parameters(), *objective.sync.scorer.parameters()]]
    assert all(p.grad is None for p in frozen) and not objective.sync.scorer.training


def test_samples_without_audio_or_landmarks_add_nothing(prepared, scorer):
    objective, batch, _ = objective_and_batch(prepared, scorer[0], drop_prob=1.0)
    assert float(objective(batch).sync) == 0  # every audio dropped: nothing to be in sync with
    objective, batch, _ = objective_and_batch(prepared, scorer[0])
    one = objective(batch).sync
    batch["landmarks"][1] = float("nan")
    assert 0 < float(objective(batch).sync) < float(one)


def test_the_run_options_are_checked_before_anything_is_written(prepared, scorer, tmp_path):
    cases = [("stage1", 0.1, str(scorer[1]), "stage-2 option"), ("stage2", 0.1, "", "needs --sync-scorer"),
             ("stage2", 0.0, str(scorer[1]), "only read by the sync loss")]
    for stage, weight, path, message in cases:
        with pytest.raises(OptionError, match=message):
            check_sync_loss(stage, weight, path)
        with pytest.raises(OptionError, match=message):
            train(stage, prepared[1], tmp_path / "run", TrainOptions(preset="tiny", sync_loss_weight=weight,
                                                                     sync_scorer=path))
        assert not (tmp_path / "run").exists()


def test_a_stage_two_run_with_the_sync_loss_logs_its_term(prepared, scorer, tmp_path):
    options = TrainOptions(preset="tiny", max_steps=2, batch_size=1, sync_loss_weight=0.1,
                           sync_scorer=str(scorer[1]))
    result = train("stage2", prepared[1], tmp_path / "run", options)
    assert result.step == 2
    with open(tmp_path / "run" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(float(row["loss_sync"]) >= 0 for row in rows)
    assert any(float(row["loss_sync"]) > 0 for row in rows)
