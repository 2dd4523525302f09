"""How the tiny preset's autoencoder caps lip sync: VAE variants trained alike, measured through the world benchmark.

The shipped model's sync correlation (``bench/quality.py``) sits near the score of the ground truth passed through its
own VAE (``evaluate.world_benchmark.autoencoder_ceiling``): whatever the U-Net learns, a mouth the autoencoder blurs
cannot be read back. This benchmark trains VAE variants with the real commands and the same budget (``train
vae``, :data:`STEPS` steps unless named, the shipped model's VAE options otherwise) on the shipped recipe's training
world, each preprocessed with its framing (``train preprocess --crop-box-scale``), and measures each one's ceiling
on the held-out clips of ``bench/quality.py`` (world seed 1000, the held-out speech):

- ``sync_correlation``: the estimator's mouth opening on the truth through the VAE against the true opening, and
  ``opening_error`` their mean absolute difference;
- ``habit_error``: the mean absolute error of (opening, width, rounding), the habit measure; ``habit_error_blind``
  the same for the habit-blind truth (``world_benchmark.habit_blind_truth``: the mean habit) through the VAE, and
  ``habit_error_reduction_ceiling`` = 1 - habit_error / habit_error_blind: about the most habit modulation could
  take off the habit error with that VAE (``bench/quality.py``'s headline of the same name, for the shipped VAE);
- ``psnr`` / ``ssim`` of the mouth patch.

Variants differ from the shipped VAE in one or two settings: the crop framing (``crop_box_scale``: 1.8, the shipped
model's, or 1.3, the face larger in the crop) and the latent channels (4 as SD's, or 16, with the U-Net's input and
output widths to match). Wall times are the runs' own logs on this machine (``train_log.csv``). The shipped model's
VAE is measured alongside. Results: ``bench/results/vae_ceiling.json`` and ``vae_ceiling.png`` (the mouth patch of
the truth and of each VAE's reconstruction at the least, middle and most open frame of two clips).

Usage:
    python bench/vae_ceiling.py --speech ../shared/media/speech_corpus [--work runs/vae_ceiling]
        [--variants vae_1p8,vae_1p3,vae_1p8_c16,vae_1p3_c16,vae_1p3_c16_s700]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import quality  # noqa: E402
import train_world_models as recipe_of  # noqa: E402
from stabledub_core.cli.common import find_face_model  # noqa: E402
from stabledub_core.evaluate.figures import labelled_grid, write_png  # noqa: E402
from stabledub_core.evaluate.world_benchmark import (  # noqa: E402
    autoencoder_ceiling, habit_blind_truth, make_cases, mean_metrics, mouth_patches)
from stabledub_core.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from stabledub_core.models.config import config_with, get_preset  # noqa: E402
from stabledub_core.models.stabledub import StableDub  # noqa: E402
from stabledub_core.pipeline.options import DubOptions  # noqa: E402

RESULTS = REPO / "bench" / "results" / "vae_ceiling.json"
STEPS = 300
COLUMNS = ("sync_correlation", "opening_error", "habit_error", "psnr", "ssim")
TABLE = (*COLUMNS, "habit_error_blind", "habit_error_reduction_ceiling")


def _without(options: list[str], *flags: str) -> list[str]:
    """``options`` (flag, value pairs) without the given flags."""
    pairs = list(zip(options[::2], options[1::2]))
    return [item for flag, value in pairs if flag not in flags for item in (flag, value)]


VAE = _without(recipe_of.VAE, "--preset", "--max-steps")  # the shipped VAE's options but the preset and steps
WIDE16 = ["vae.latent_channels=16", "unet.in_channels=49", "unet.out_channels=16"]  # 3 latents x 16 + the mask
# variant -> (crop_box_scale, config settings, steps)
VARIANTS = {
    "framing 1.8, 4 channels (the shipped VAE's)": (1.8, [], STEPS),
    "framing 1.3, 4 channels": (1.3, [], STEPS),
    "framing 1.8, 16 channels": (1.8, WIDE16, STEPS),
    "framing 1.3, 16 channels": (1.3, WIDE16, STEPS),
    "framing 1.3, 16 channels, 700 steps (the shipped VAE's budget)": (1.3, WIDE16, 700),
}
SHIPPED = "the shipped model's VAE (framing 1.8, 4 channels, 700 steps)"  # measured, not trained here


def _slug(name: str) -> str:
    scale, settings, steps = VARIANTS[name]
    return f"vae_{scale:g}".replace(".", "p") + ("_c16" if settings else "") + (f"_s{steps}" if steps != STEPS else "")


def train_variant(recipe: recipe_of.Recipe, world: Path, name: str) -> Path:
    """Preprocess the world with the variant's framing, train its VAE, export it; returns the export."""
    scale, settings, steps = VARIANTS[name]
    data = recipe.work / f"data_{scale:g}".replace(".", "p")
    recipe.run(f"preprocess_{scale:g}", ["train", "preprocess", world, data, "--preset", "tiny", "--crop-box-scale",
                                         scale, "--workers", 2], data / "manifest.json")
    slug = _slug(name)
    start = ["--preset", "tiny"]
    if settings:  # a fresh model of the variant's config, seeded as `train vae --seed 0` seeds the preset's
        init = recipe.work / f"{slug}_init.safetensors"
        if not init.is_file():
            torch.manual_seed(recipe_of.SEED)
            save_checkpoint(StableDub.from_config(config_with(get_preset("tiny"), [f"crop_box_scale={scale:g}",
                                                                                   *settings])), init)
        start = ["--init", init]
    return recipe_of.train_stage(recipe, slug, "vae", data, None, [*start, "--max-steps", steps, *VAE],
                                 processes=recipe_of.PROCESSES)


def run_minutes(run: Path) -> float | None:
    log = run / "train_log.csv"
    if not log.is_file():
        return None
    with log.open() as f:
        rows = list(csv.DictReader(f))
    return round(float(rows[-1]["elapsed_s"]) / 60, 1) if rows else None


def example_picks(cases) -> list[tuple[int, int]]:
    """(clip, frame) pairs of the example image: the least, the middle and the most open frame of the truth in the
    first two clips without an occluder."""
    picks = []
    for i in [i for i, case in enumerate(cases) if case.metadata["occluder"] is None][:2]:
        order = np.argsort(cases[i].truth.states.opening, kind="stable")
        picks += [(i, int(order[j])) for j in (0, len(order) // 2, -1)]
    return picks


def measure(export: Path, cases, face_model) -> tuple[dict, list[np.ndarray]]:
    """The ceiling measures of one VAE on every case (one thread: the figures are reproducible), and the mouth
    patches of its decoded truth at :func:`example_picks`."""
    torch.set_num_threads(1)
    model = load_checkpoint(export, dtype=torch.float32)
    options = DubOptions.from_values(steps=8, seed=0)
    picks, rows, examples = example_picks(cases), [], {}
    for i, case in enumerate(cases):
        metrics, frames = autoencoder_ceiling(case, model, options, face_model)
        blind, _ = autoencoder_ceiling(case, model, options, face_model, rendered=habit_blind_truth(case))
        rows.append({"clip": case.name, **{k: v for k, v in metrics.items() if k in COLUMNS + ("valid_frames",)},
                     "habit_error_blind": blind["habit_error"]})
        examples.update({(i, k): _patch(case, frames, k) for j, k in picks if j == i})
    mean = mean_metrics(rows)
    mean["habit_error_reduction_ceiling"] = 1 - mean["habit_error"] / mean["habit_error_blind"]
    return {"mean": mean, "clips": rows}, [examples[pick] for pick in picks]


def _patch(case, frames: np.ndarray, k: int) -> np.ndarray:
    """The mouth patch of frame ``k`` of ``frames`` (a clip of ``case``)."""
    return mouth_patches(frames[k:k + 1], case.metadata["mouth_poses"][k:k + 1])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", type=Path, required=True, help="the speech corpus folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "vae_ceiling", help="working folder")
    slugs = {_slug(name): name for name in VARIANTS}
    parser.add_argument("--variants", default=",".join(slugs), help="variants, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    wanted = recipe_of.parse_variants(parser, args.variants, slugs)
    work = args.work.resolve()
    recipe = recipe_of.Recipe(work, work / "commands.json")
    world = recipe_of.training_world(recipe, args.speech.resolve())
    cases = make_cases(quality.held_out_world(work, args.speech.resolve(), 4),
                       quality.held_out_speech(work, args.speech.resolve()))
    face_model = find_face_model()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(options=VAE, machine=recipe.results["machine"])
    variants = results.setdefault("variants", {})
    examples = {}
    for name in [slugs[v] for v in wanted]:
        export = train_variant(recipe, world, name)
        variants[name], examples[name] = measure(export, cases, face_model)
        scale, settings, steps = VARIANTS[name]
        variants[name].update(minutes=run_minutes(work / _slug(name)), settings=settings, crop_box_scale=scale,
                              steps=steps, command=recipe.results["steps"][f"{_slug(name)}_train"]["command"]
                              .replace(str(work), "WORK"))
        RESULTS.write_text(json.dumps(quality._clean(results), indent=1) + "\n")
    variants[SHIPPED], examples[SHIPPED] = measure(quality.DEMO_MODEL, cases, face_model)
    variants[SHIPPED].update(minutes=round(json.loads(recipe_of.RESULTS.read_text())["steps"]["vae_train"]["seconds"]
                                           / 60, 1), note="trained by bench/train_world_models.py on another machine")
    RESULTS.write_text(json.dumps(quality._clean(results), indent=1) + "\n")
    truth = [_patch(cases[i], cases[i].truth.rendered.frames, k) for i, k in example_picks(cases)]
    columns = [SHIPPED] + [n for n in examples if n != SHIPPED]
    grid = [list(row) for row in zip(truth, *(examples[n] for n in columns))]  # one row a pick
    write_png(RESULTS.with_suffix(".png"), labelled_grid(grid, ["ground truth", *columns], tile=(192, 144)))
    print(f"| variant | minutes | {' | '.join(TABLE)} |\n|{' --- |' * (len(TABLE) + 2)}")
    for name, entry in variants.items():
        print(f"| {name} | {entry['minutes']} | " + " | ".join(quality._fmt(entry["mean"].get(c, "")) for c in TABLE)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
