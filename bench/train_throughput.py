"""Training throughput on this machine: tiny stage 1 / stage 2 with and without the latent cache, and one full-size
(sd15) stage-2 step's peak memory and time on the CPU.

Data: ``assets/face_occluded.mp4`` (75 frames, a microphone over the mouth) with ``assets/speech_es.wav`` as its
sound, preprocessed by ``train preprocess`` for the preset (tiny: 128-pixel crops; sd15: 512). Nothing outside the
repository is needed.

Tiny: ``train.engine.train`` runs ``--steps`` optimizer steps of each stage (stage 1: batch 4 frames; stage 2: batch
1 clip of 16 frames), logging every step; a stage's speed is ``global_batch / median step time`` (the first step is
left out: warm-up). The cached runs read the latents ``train cache-latents`` wrote (its own time is reported);
``latent_cache_speedup`` is stage 2's cached / uncached samples per second, side by side in one run.

sd15: a subprocess builds the full model (random weights in SD 1.5's layout: the figures do not depend on the values;
wav2vec2-base built from its config), takes one 16-frame 512-pixel clip of the sd15 dataset, and times
``--sd15-steps`` stage-2 optimizer steps (forward, backward, AdamW over the stage-2 parameters) with gradient
checkpointing and bf16 autocast when the CPU has bf16 (else fp32); peak memory is the child's ``ru_maxrss``.

Usage:
    python bench/train_throughput.py [--steps 6] [--sd15-steps 2] [--skip-sd15] [--skip-tiny] [--out FILE]

Writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSETS = REPO / "assets"
WORK = REPO / "out" / "bench_train"
RESULTS = REPO / "bench" / "results" / "train_throughput.json"


def prepare(preset: str) -> Path:
    """``train preprocess`` of the bundled clip for ``preset`` (kept between runs of the benchmark)."""
    from stabledub_core.media.audio import load_audio
    from stabledub_core.media.clip import read_clip, write_clip
    from stabledub_core.train.preprocess import FilterOptions, preprocess

    out = WORK / f"data_{preset}"
    if (out / "manifest.json").is_file():
        return out
    videos = WORK / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    clip = videos / "face.mp4"
    if not clip.is_file():
        loaded = read_clip(ASSETS / "face_occluded.mp4")
        wave, rate = load_audio(ASSETS / "speech_es.wav")
        seconds = len(loaded.frames) / float(loaded.fps)
        write_clip(clip, loaded.frames, loaded.fps, wave[:, :int(seconds * rate)], rate)
    preprocess(videos, out, ASSETS / "face_landmarker.task", preset=preset,
               options=FilterOptions(min_seconds=1.0, max_motion=1.0, max_scale_change=2.0))
    return out


def median_step(run: Path) -> float:
    """Median seconds per optimizer step of a run's log, first step left out."""
    with (run / "train_log.csv").open() as fh:
        elapsed = [float(line.split(",")[-1]) for line in fh.read().splitlines()[1:]]
    return float(np.median(np.diff(elapsed)))


def tiny(steps: int) -> dict:
    from stabledub_core.cli.main import main
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.config import get_preset
    from stabledub_core.models.stabledub import StableDub
    from stabledub_core.train.config import TrainOptions
    from stabledub_core.train.engine import train

    import torch

    data = prepare("tiny")
    shutil.rmtree(data / "latents", ignore_errors=True)
    torch.manual_seed(0)
    init = save_checkpoint(StableDub.from_config(get_preset("tiny")), WORK / "tiny_init.safetensors")
    started = time.monotonic()
    assert main(["train", "cache-latents", str(data), "--init", str(init)]) == 0
    cache_s = time.monotonic() - started
    results = {"tiny_latent_cache_build_s": round(cache_s, 2)}
    for stage, batch in (("stage1", 4), ("stage2", 1)):
        for cached in (False, True):
            run = WORK / f"run_{stage}_{'cached' if cached else 'plain'}"
            shutil.rmtree(run, ignore_errors=True)
            options = TrainOptions(init=str(init), max_steps=steps, batch_size=batch, latent_cache=cached,
                                   checkpoint_every=10 ** 6, log_every=1)
            train(stage, data, run, options)
            key = f"tiny_{stage}_samples_per_s" + ("_cached" if cached else "")
            results[key] = round(batch / median_step(run), 3)
    results["latent_cache_speedup"] = round(results["tiny_stage2_samples_per_s_cached"]
                                            / results["tiny_stage2_samples_per_s"], 3)
    results["latent_cache_speedup_stage1"] = round(results["tiny_stage1_samples_per_s_cached"]
                                                   / results["tiny_stage1_samples_per_s"], 3)
    return results


def sd15_child(steps: int) -> None:
    """One process: the sd15 stage-2 step, printed as JSON on the last line."""
    import torch
    from torch.utils.data import default_collate

    from stabledub_core.models.config import get_preset
    from stabledub_core.models.stabledub import StableDub
    from stabledub_core.train.datasets import SampleKey, Stage2Dataset
    from stabledub_core.train.objectives import DiffusionObjective, freeze_for

    data = prepare("sd15")
    batch = default_collate([Stage2Dataset(data)[SampleKey(0, 0, 0.0)]])
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("sd15")).eval()
    params = freeze_for(model, "stage2")
    model.unet.enable_gradient_checkpointing()
    objective = DiffusionObjective(model, "stage2")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() or "amx_bf16" in open("/proc/cpuinfo").read()
    times = []
    for _ in range(steps):
        started = time.monotonic()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective(batch).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.monotonic() - started)
        print(f"sd15 stage-2 step: {times[-1]:.1f} s, loss {loss.item():.4f}", file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"sd15_stage2_step_s_cpu": round(float(np.median(times)), 1), "sd15_step_times_s":
                      [round(t, 1) for t in times], "sd15_stage2_step_peak_gb_cpu": round(peak / 2 ** 30, 2),
                      "sd15_dtype": "bf16 autocast" if bf16 else "float32", "sd15_loss": round(loss.item(), 4),
                      "sd15_trained_parameters": sum(p.numel() for p in params),
                      "sd15_parameters": sum(p.numel() for _, p in model.network_parameters())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of each tiny run")
    parser.add_argument("--sd15-steps", type=int, default=2, help="timed sd15 stage-2 steps")
    parser.add_argument("--skip-sd15", action="store_true", help="keep the last sd15 figures of the results file")
    parser.add_argument("--skip-tiny", action="store_true", help="keep the last tiny figures of the results file")
    parser.add_argument("--sd15-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.sd15_child:
        sd15_child(args.sd15_steps)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"cpu_count": os.cpu_count(), "machine": platform.machine()})

    def save() -> None:  # after each part, so a failing later part never loses a measured one
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")

    if not args.skip_sd15:  # first, alone: the full-size step must not compete with anything for memory
        prepare("sd15")
        done = subprocess.run([sys.executable, __file__, "--sd15-child", "--sd15-steps", str(args.sd15_steps)],
                              stdout=subprocess.PIPE, text=True)  # its stderr (a line per step) passes through
        if done.returncode:
            raise SystemExit(f"sd15 step failed (exit {done.returncode}): see its messages above")
        results.update(json.loads(done.stdout.strip().splitlines()[-1]))
        save()
    if not args.skip_tiny:
        results.update(tiny(args.steps), steps=args.steps)
        save()
    rows = [(k, v) for k, v in results.items() if not isinstance(v, list)]
    width = max(len(k) for k, _ in rows)
    print(f"{'figure':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
