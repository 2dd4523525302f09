"""The training engine through the command line: exact resume after SIGTERM and SIGKILL, two processes equal to one,
stage 2 leaves the spatial Mamba bit-identical, the VAE stage, the latent cache, and an export that dubs.

Runs use the ``prepared`` folder of conftest.py (one clip: 48 stage-1 frames, 3 stage-2 clips) and the tiny preset.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stabledub_core.cli.main import main
from stabledub_core.models.checkpoint import load_checkpoint, save_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.vae import encode_frames
from stabledub_core.train.config import TrainOptions
from stabledub_core.train.datasets import SampleKey, Stage1Dataset, Stage2Dataset
from stabledub_core.train.latent_cache import vae_fingerprint
from stabledub_core.train.objectives import DiffusionObjective
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["--max-steps", "8", "--batch-size", "2", "--checkpoint-every", "2", "--learning-rate", "1e-3",
          "--ema-decay", "0.9", "--keep-checkpoints", "2"]


def log_rows(run: Path) -> list[dict]:
    with (run / "train_log.csv").open() as fh:
        return list(csv.DictReader(fh))


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "stabledub_core", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory) -> Path:
    """A tiny model whose zero-initialised output layers are made random, so every path carries gradient."""
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    torch.nn.init.normal_(model.habit.out_conv.weight, std=0.02)
    return save_checkpoint(model, tmp_path_factory.mktemp("init") / "init.safetensors")


@pytest.fixture(scope="module")
def reference_run(prepared, tmp_path_factory) -> Path:
    """An uninterrupted 8-step stage-1 run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "stage1", str(prepared[1]), "--output", str(run), *STAGE1]) == 0
    return run


def test_a_run_stopped_by_sigterm_and_killed_by_sigkill_resumes_to_the_same_losses_and_weights(prepared,
                                                                                              reference_run,
                                                                                              tmp_path):
    run = tmp_path / "run"
    first = run_cli("train", "stage1", str(prepared[1]), "--output", str(run), *STAGE1)
    wait_for(run / "checkpoints" / "checkpoint-00000002", first)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopped at step" in err and "--resume latest" in err and "Traceback" not in err
    stopped = int(err.split("stopped at step ")[1].split(";")[0])
    assert 2 <= stopped < 8 and (run / "checkpoints" / f"checkpoint-{stopped:08d}").is_dir()

    second = run_cli("train", "stage1", str(prepared[1]), "--output", str(run), "--resume", "latest")
    target = max(stopped + 1, 4) + (max(stopped + 1, 4) % 2)  # the next even step after the stop
    wait_for(run / "checkpoints" / f"checkpoint-{target:08d}", second)
    second.kill()  # SIGKILL: no handler runs
    second.communicate(timeout=60)

    assert main(["train", "stage1", str(prepared[1]), "--output", str(run), "--resume", "latest"]) == 0
    reference, resumed = log_rows(reference_run), log_rows(run)
    assert [r["step"] for r in resumed] == [str(s) for s in range(1, 9)]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]  # bit for bit, as printed
    final = "checkpoints/checkpoint-00000008"
    a, b = load_file(reference_run / final / "model.safetensors"), load_file(run / final / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = load_file(reference_run / final / "ema.safetensors"), load_file(run / final / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep-last-2, no temporary folder left
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_processes_hold_identical_weights_equal_to_one_process_with_the_same_global_batch(prepared, tmp_path):
    common = ["--max-steps", "3", "--checkpoint-every", "3", "--learning-rate", "1e-4"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "stage1", str(prepared[1]), "--output", str(one), "--batch-size", "2", *common]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29400 + os.getpid() % 500), "-m", "stabledub_core", "train", "stage1", str(prepared[1]),
                           "--output", str(two), "--batch-size", "1", *common],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((two / "checkpoints" / "checkpoint-00000003" / "trainer_state.json").read_text())
    assert state["processes"] == 2 and state["global_batch"] == 2 and state["ranks_identical"] is True
    for a, b in zip(log_rows(one), log_rows(two)):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    wa = load_file(one / "checkpoints" / "checkpoint-00000003" / "model.safetensors")
    wb = load_file(two / "checkpoints" / "checkpoint-00000003" / "model.safetensors")
    assert wa.keys() == wb.keys()
    torch.manual_seed(TrainOptions().seed)  # the preset's init with the run's seed: where both runs started
    initial = {f"model.{k}": v for k, v in StableDub.from_config(get_preset("tiny")).state_dict().items()}
    moved = sum(float((wa[k] - initial[k]).abs().sum()) for k in wa)
    apart = sum(float((wa[k] - wb[k]).abs().sum()) for k in wa)
    assert moved > 0 and apart < 0.01 * moved


def test_stage_two_leaves_every_spatial_mamba_weight_bit_identical_and_its_export_dubs(prepared, init_checkpoint,
                                                                                       media_dir, tmp_path):
    run = tmp_path / "stage2"
    assert main(["train", "stage2", str(prepared[1]), "--output", str(run), "--init", str(init_checkpoint),
                 "--max-steps", "2", "--batch-size", "1", "--learning-rate", "1e-3", "--ema-decay", "0.5"]) == 0
    exported = tmp_path / "stage2.safetensors"
    assert main(["train", "export", str(run), "--out", str(exported)]) == 0
    before = load_checkpoint(init_checkpoint).state_dict()
    after = load_checkpoint(exported).state_dict()
    spatial = [k for k in before if ".transformer_blocks." in k and (".mamba." in k or ".norm1." in k)]
    assert spatial and all(torch.equal(before[k], after[k]) for k in spatial)
    frozen = [k for k in before if k.startswith("vae.") or ".resnets." in k]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    for part in (".temporal.mamba.in_proj.", ".attn2.to_k.", "habit.scale.", "audio_encoder.conv."):
        assert any(part in k and not torch.equal(before[k], after[k]) for k in before), part
    raw = tmp_path / "raw.safetensors"
    assert main(["train", "export", str(run), "--out", str(raw), "--no-ema"]) == 0
    ema, plain = load_checkpoint(exported).state_dict(), load_checkpoint(raw).state_dict()
    assert any(not torch.equal(ema[k], plain[k]) for k in ema if ".temporal." in k)  # EMA weights by default

    video, out = prepared[0] / "one.mp4", tmp_path / "dub.mp4"
    status = main(["dub", "--video", str(video), "--audio", str(media_dir / "speech_es.wav"), "--checkpoint",
                   str(exported), "--out", str(out), "--steps", "1", "--length-policy", "trim"])
    assert status == 0 and out.stat().st_size > 0


def test_the_vae_stage_trains_only_the_vae(prepared, init_checkpoint, tmp_path):
    run = tmp_path / "vae"
    assert main(["train", "vae", str(prepared[1]), "--output", str(run), "--init", str(init_checkpoint),
                 "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-3"]) == 0
    rows = log_rows(run)
    assert {"loss", "loss_reconstruction", "loss_kl"} <= set(rows[0])
    out = tmp_path / "vae.safetensors"
    assert main(["train", "export", str(run), "--out", str(out)]) == 0
    before, after = load_checkpoint(init_checkpoint).state_dict(), load_checkpoint(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("vae."))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("vae."))
    # the latent scale is measured on the run's own crops (1 / std of the posterior means) and exported
    trained = load_checkpoint(out)
    dataset = Stage1Dataset(prepared[1])
    assert len(dataset) <= 256  # so every crop is measured
    crops = torch.stack([dataset[i]["crop"] for i in range(len(dataset))])
    scale = trained.config.vae.scaling_factor
    assert scale != get_preset("tiny").vae.scaling_factor and trained.vae.config.scaling_factor == scale
    with torch.no_grad():
        std = trained.vae.encode(crops * 2 - 1).latent_dist.mean.double().std(unbiased=False).item()
    assert abs(scale * std - 1) < 1e-3


def test_the_latent_cache_holds_what_the_loop_would_encode_and_gives_the_same_loss(prepared, init_checkpoint):
    data = prepared[1]
    assert main(["train", "cache-latents", str(data), "--init", str(init_checkpoint)]) == 0
    model = load_checkpoint(init_checkpoint)
    fingerprint = vae_fingerprint(model.vae)
    plain, cached = Stage1Dataset(data), Stage1Dataset(data, latent_cache=fingerprint)
    late = SampleKey(5, 0, 1.0)  # progress 1: exposure rate 0, the masked latent comes from the cache
    early = SampleKey(5, 0, 0.0)  # rate 0.7: exposed patches, the masked latent is encoded in the loop
    assert bool(cached[late]["masked_cached"]) and not bool(cached[early]["masked_cached"])
    crop = plain[late]["crop"][None]
    np.testing.assert_allclose(cached[late]["latent"].numpy(), encode_frames(model.vae, crop)[0].numpy(),
                               rtol=2e-3, atol=2e-3)  # float16 storage
    objective = DiffusionObjective(model, "stage1")
    for key in (late, early):
        with torch.no_grad():
            a = objective(default_collate([plain[key]])).total.item()
            b = objective(default_collate([cached[key]])).total.item()
        assert a == pytest.approx(b, rel=2e-3)
    clips = Stage2Dataset(data, latent_cache=fingerprint)
    assert clips[0]["latents"].shape == (16, 4, 16, 16) and bool(clips[0]["masked_cached"])


def test_user_errors_are_one_line(prepared, reference_run, tmp_path, capfd, monkeypatch):
    assert main(["train", "stage1", str(prepared[1]), "--output", str(reference_run), "--max-steps", "1"]) == 2
    assert "already holds checkpoints" in capfd.readouterr().err
    assert main(["train", "stage1", str(prepared[1]), "--output", str(tmp_path / "new"), "--resume", "latest"]) == 2
    assert "no checkpoint" in capfd.readouterr().err
    assert main(["train", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no checkpoint" in capfd.readouterr().err
    assert main(["train", "stage1", str(tmp_path / "nodata"), "--output", str(tmp_path / "r")]) == 2
    assert "manifest.json" in capfd.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    assert main(["train", "stage1", str(prepared[1]), "--output", str(tmp_path / "r2")]) == 2
    assert "pip install -r requirements-train.txt" in capfd.readouterr().err


def test_gradient_accumulation_equals_the_same_global_batch_at_once_and_bf16_runs(prepared, tmp_path):
    common = ["--max-steps", "2", "--checkpoint-every", "2", "--learning-rate", "1e-4"]
    once, accumulated = tmp_path / "once", tmp_path / "accumulated"
    assert main(["train", "stage1", str(prepared[1]), "--output", str(once), "--batch-size", "2", *common]) == 0
    assert main(["train", "stage1", str(prepared[1]), "--output", str(accumulated), "--batch-size", "1",
                 "--grad-accumulation", "2", *common]) == 0
    for a, b in zip(log_rows(once), log_rows(accumulated)):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    mixed = tmp_path / "bf16"
    assert main(["train", "stage1", str(prepared[1]), "--output", str(mixed), "--batch-size", "2",
                 "--mixed-precision", "bf16", "--gradient-checkpointing", *common]) == 0
    rows = log_rows(mixed)
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[0]["loss"]) == pytest.approx(float(log_rows(once)[0]["loss"]), rel=0.05)
