"""Quality benchmark in the synthetic world: the paper's Tables II and IV as numbers with a known ground truth.

Held-out avatars (world seed 1000, never trained on) speaking held-out speech (the last 20 files of the sorted
corpus; ``bench/train_world_models.py`` trains on the first 140) are dubbed with other held-out speech by the real
pipeline, and measured against what the world renders for that speech (``stabledub_core.evaluate``):

| row | model | at inference | compared with |
| --- | --- | --- | --- |
| ours | ``assets/stabledub_tiny_demo.safetensors`` (v-prediction) | the occluder's mask given (patches exposed) | |
| ours, occluder not exposed | the same | no occluder mask | |
| w/o mask exposure | ``bench/models/ablation_no_exposure`` | no occluder mask | ours |
| w/o mask exposure, occluder exposed | the same | the occluder's mask given | ours |
| w/o habit modulation, Mamba -> attention, w/o temporal Mamba | ``bench/models/ablation_*`` | as ours | ours |
| ours, epsilon recipe | ``bench/models/epsilon/full`` | as ours | |
| ... , epsilon recipe | ``bench/models/epsilon/ablation_*`` | as ours | ours, epsilon recipe |

Without mask exposure the model never learnt to keep an occluder; given the occluder's mask anyway, what it keeps
is what the mechanism alone keeps. The ablations in ``bench/models/`` were trained with the shipped model's recipe
(a missing one is skipped), those in ``bench/models/epsilon/`` with the first recipe (epsilon prediction, one
process, the 250-step VAE, 900 + 1,300 steps), and each is compared with its own recipe's full model. A headline uses the shipped recipe's ablation where it exists (:data:`HEADLINE_ROWS`).

Two reference rows: **ground truth** (the world's truth through the same measures: what a perfect dub scores) and
**ground truth through the VAE** (the truth's crops encoded and decoded by the shipped model's VAE and pasted back
as a dub is: what a U-Net that predicted the true latents exactly would score, i.e. what the autoencoder alone loses;
not a strict bound per clip, as the estimator reads blurred mouths unevenly).

plus **habit transfer**: each clip dubbed by ours with the habit vector of the next clip's avatar (the Habit Encode
node's computation), measured against the clip's avatar rendered with the donor's habit (``transfer_gain``: how
much closer to the donor's habit than the own-habit dub; > 0 means it moved toward the donor), and **reference
transfer**: each clip dubbed by ours given, as its appearance frame, the frame the pipeline picks from the clip
rendered again with the next clip's habit (``reference_transfer_gain``, against the frame of the clip rendered again
with its own habit; ``reference_and_habit_transfer_gain`` with the donor's habit vector as well): whether the mouth
takes its habit from the reference frame rather than from the habit vector.

Headline keys (``bench/results/quality.json``): ``sync_correlation`` (ours), ``habit_error_reduction`` (1 - full
/ w/o habit, habit error = mean |estimated - true| of opening, width, rounding), ``occluder_psnr_gain_db`` (full
minus w/o mask exposure, PSNR of the occluder's pixels; ``occluder_psnr_gain_from_training_db`` is the part left when
both are given the mask), ``flicker_ratio_without_temporal`` (w/o temporal over full), ``outside_mask_identical``
(ours), where "full" is the ablation's own full model; ``headline_rows`` names the two rows behind each;
``sync_correlation_truth_through_vae`` the sync correlation of the truth through the VAE. With the targets they are
checked against and each row's full metrics. Two more reference rows, **habit-blind ground truth** (the truth
rendered with the mean habit, ``world_benchmark.habit_blind_truth``: a dub that follows the speech exactly but knows
no habit) and the same **through the VAE**, measured against the truth, bound what knowing the habit can be worth:
``habit_error_reduction_ideal`` (1 - truth / habit-blind truth) and ``habit_error_reduction_ceiling`` (the same
through the shipped VAE: about the most a perfect U-Net could show with that VAE and the estimator).

Usage:
    python bench/quality.py [--evaluate-only] [--speech DIR --out FILE] [--corpus ../shared/media/speech_corpus]
        [--clips 4] [--steps 8] [--workers 2]

Without ``--evaluate-only`` the models are first trained (``bench/train_world_models.py``; steps already done are
skipped). ``--speech DIR`` drives the held-out avatars with any folder of speech files instead of the held-out
corpus files, and ``--out FILE`` writes the results there (default: ``bench/results/quality.json`` plus the markdown
table ``quality.md`` and the example frames ``quality.png`` beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stabledub_core.cli.common import find_face_model  # noqa: E402
from stabledub_core.errors import DatasetNotFoundError  # noqa: E402
from stabledub_core.evaluate.figures import labelled_grid, write_png  # noqa: E402
from stabledub_core.evaluate.world_benchmark import (  # noqa: E402
    autoencoder_ceiling, evaluate_clip, habit_blind_truth, habit_from, make_cases, mean_metrics, mouth_patches,
    reference_with_habit, state_errors, transfer_truth)
from stabledub_core.masks.lips import lip_crops  # noqa: E402
from stabledub_core.media.audio import to_encoder_input  # noqa: E402
from stabledub_core.models.checkpoint import load_checkpoint  # noqa: E402
from stabledub_core.models.sync_scorer import load_scorer, sync_offsets  # noqa: E402
from stabledub_core.pipeline.chunk_model import StableDubChunkModel  # noqa: E402
from stabledub_core.pipeline.options import DubOptions  # noqa: E402
from stabledub_core.synthetic.world import list_speech, write_world  # noqa: E402

RESULTS = REPO / "bench" / "results" / "quality.json"
DEMO_MODEL = REPO / "assets" / "stabledub_tiny_demo.safetensors"
SCORER = REPO / "assets" / "sync_scorer_world.safetensors"
# the code a row's measures come from: a change to it invalidates the cached rows
MEASURING_CODE = tuple(REPO / "stabledub_core" / part for part in ("synthetic/estimator.py",
                       "evaluate/world_benchmark.py", "evaluate/metrics.py"))
ABLATIONS = REPO / "bench" / "models"
# the ablations' training records: the shipped recipe's and the epsilon recipe's
TRAINING = {"ablations": REPO / "bench" / "results" / "train_world_ablations.json",
            "ablations, epsilon recipe": REPO / "bench" / "results" / "train_world_ablations_epsilon.json"}
HELD_OUT_SEED, HELD_OUT_FIRST = 1000, 140  # world seed; first held-out file of the sorted corpus
TARGETS = {"sync_correlation": (">=", 0.8), "habit_error_reduction": (">=", 0.3), "occluder_psnr_gain_db": (">=", 3.0),
           "flicker_ratio_without_temporal": (">", 1.0), "outside_mask_identical": ("==", True)}
EPSILON = ABLATIONS / "epsilon"  # the previous recipe's full model and ablations
FULL_EPSILON = "ours, epsilon recipe"
# row -> (model file, exposure at inference, the full model row an ablation differs from by one change)
ROWS = {
    "ours": (DEMO_MODEL, True, None),
    "ours, occluder not exposed": (DEMO_MODEL, False, None),
    "w/o mask exposure": (ABLATIONS / "ablation_no_exposure.safetensors", False, "ours"),
    "w/o mask exposure, occluder exposed": (ABLATIONS / "ablation_no_exposure.safetensors", True, "ours"),
    "w/o habit modulation": (ABLATIONS / "ablation_no_habit.safetensors", True, "ours"),
    "Mamba -> attention": (ABLATIONS / "ablation_attention.safetensors", True, "ours"),
    "w/o temporal Mamba": (ABLATIONS / "ablation_no_temporal.safetensors", True, "ours"),
    FULL_EPSILON: (EPSILON / "full.safetensors", True, None),
    "w/o mask exposure, epsilon recipe": (EPSILON / "ablation_no_exposure.safetensors", False, FULL_EPSILON),
    "w/o mask exposure, occluder exposed, epsilon recipe": (EPSILON / "ablation_no_exposure.safetensors", True,
                                                             FULL_EPSILON),
    "w/o habit modulation, epsilon recipe": (EPSILON / "ablation_no_habit.safetensors", True, FULL_EPSILON),
    "Mamba -> attention, epsilon recipe": (EPSILON / "ablation_attention.safetensors", True, FULL_EPSILON),
    "w/o temporal Mamba, epsilon recipe": (EPSILON / "ablation_no_temporal.safetensors", True, FULL_EPSILON),
}
# headline ablation -> its rows, the shipped recipe's first: the first one evaluated is used
HEADLINE_ROWS = {
    "habit": ("w/o habit modulation", "w/o habit modulation, epsilon recipe"),
    "exposure": ("w/o mask exposure", "w/o mask exposure, epsilon recipe"),
    "exposure_training": ("w/o mask exposure, occluder exposed", "w/o mask exposure, occluder exposed, epsilon recipe"),
    "temporal": ("w/o temporal Mamba", "w/o temporal Mamba, epsilon recipe"),
}
TRUTH, CEILING = "ground truth", "ground truth through the VAE"  # the reference rows
BLIND_TRUTH, BLIND_CEILING = "habit-blind ground truth", "habit-blind ground truth through the VAE"
# reference row -> (the rendering of a case it measures, what that is, whether it goes through the shipped model's
# VAE first)
REFERENCE_ROWS = {TRUTH: (lambda case: case.truth, "the world's ground truth", False),
                  CEILING: (lambda case: case.truth, "the world's ground truth", True),
                  BLIND_TRUTH: (habit_blind_truth, "the world's ground truth with the mean habit", False),
                  BLIND_CEILING: (habit_blind_truth, "the world's ground truth with the mean habit", True)}
COLUMNS = ("sync_correlation", "opening_error", "lse_c", "lse_d", "habit_error", "occluder_psnr", "flicker", "psnr",
           "ssim", "outside_mask_identical")


def _corpus_wavs(corpus: Path) -> list[Path]:
    """The corpus's ``.wav`` files, sorted (the order the training and held-out split is made in)."""
    return sorted(p for p in corpus.iterdir() if p.suffix.lower() == ".wav")


def corpus_held_out(corpus: Path) -> list[Path]:
    """The held-out files of the speech corpus: its sorted ``.wav`` files from :data:`HELD_OUT_FIRST` on.

    Raises:
        DatasetNotFoundError: The folder is missing or holds no more than ``HELD_OUT_FIRST`` wav files.
    """
    if not corpus.is_dir():
        raise DatasetNotFoundError(f"speech corpus {str(corpus)!r} does not exist: give --corpus the folder of "
                                   "../shared/media/speech_corpus (160 utterances)")
    held = _corpus_wavs(corpus)[HELD_OUT_FIRST:]
    if not held:
        raise DatasetNotFoundError(f"speech corpus {str(corpus)!r} holds no more than {HELD_OUT_FIRST} wav files, so "
                                   "none is held out: give --corpus the 160-utterance speech corpus the models were "
                                   "trained on")
    return held


def corpus_head(corpus: Path, count: int) -> list[Path]:
    """The first ``count`` of the corpus's sorted ``.wav`` files (training speech: the held-out files come after)."""
    return _corpus_wavs(corpus)[:min(count, HELD_OUT_FIRST)]


def benchmark_world(folder: Path, clips: int, seed: int, speech: list[Path]) -> Path:
    """A world of ``clips`` avatars from ``seed``, each speaking one of ``speech``, half of them occluded (written
    once; the layout every world benchmark measures)."""
    if not (folder / "world.json").is_file():
        write_world(folder, clips, seed, speech, occluder_share=0.5, max_seconds=4.0)
    return folder


def held_out_world(work: Path, corpus: Path, clips: int) -> Path:
    """The held-out avatars, each speaking one held-out corpus file (written once)."""
    folder = work / f"world_held_{clips}"
    if (folder / "world.json").is_file():
        return folder
    return benchmark_world(folder, clips, HELD_OUT_SEED, corpus_held_out(corpus))


def link_speech(folder: Path, files: list[Path]) -> Path:
    """``folder`` holding a link to each of ``files`` (the speech a benchmark dubs with)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    return folder


def held_out_speech(work: Path, corpus: Path) -> Path:
    return link_speech(work / "speech_held", corpus_held_out(corpus))


@dataclass
class Job:
    """One row (or the habit transfer) of the table, run in its own process."""

    name: str
    model: Path
    exposure: bool
    world: Path
    speech: Path
    steps: int


def _setting(job: Job):
    torch.set_num_threads(1)  # the same reductions on every machine: the committed figures are reproduced exactly
    cases = make_cases(job.world, job.speech)
    return cases, DubOptions.from_values(steps=job.steps, seed=0), find_face_model()


def example_picks(cases) -> list[tuple[int, int]]:
    """(clip, frame) pairs of the example image: the middle frame of the first two clips with an occluder."""
    clips = [i for i, c in enumerate(cases) if c.metadata["occluder"] is not None][:2] or [0]
    picks = []
    for i in clips:
        occluder, fps = cases[i].metadata["occluder"], float(cases[i].metadata["fps"])
        frame = int((occluder.start_s + occluder.end_s) / 2 * fps) if occluder is not None else 0
        picks.append((i, min(frame, cases[i].metadata["num_frames"] - 1)))
    return picks


def run_row(job: Job) -> dict:
    """Dub every case with the row's model and measure it."""
    cases, options, face_model = _setting(job)
    scorer = load_scorer(SCORER) if SCORER.is_file() else None
    model = load_checkpoint(job.model, dtype=torch.float32)
    started, rows, frames = time.monotonic(), [], {}
    for i, case in enumerate(cases):
        metrics, dubbed = evaluate_clip(case, model, options, face_model, scorer, exposure=job.exposure,
                                        check_outside=job.name == "ours")
        rows.append({"clip": case.name, "speech": case.speech.name, **metrics})
        frames.update({(i, k): dubbed[k] for j, k in example_picks(cases) if j == i})
        print(f"  {job.name}: {case.name}: sync r {metrics['sync_correlation']:.3f}, habit error "
              f"{metrics['habit_error']:.4f}, psnr {metrics['psnr']:.2f}", flush=True)
    return {"model": _shown(job.model), "exposure": job.exposure, "mean": mean_metrics(rows), "clips": rows,
            "seconds": round(time.monotonic() - started, 1), "_frames": frames}


def run_reference(job: Job) -> dict:
    """A reference row (:data:`REFERENCE_ROWS`): a rendering of each case (the truth, or the habit-blind truth)
    through the same measures against the truth, straight or through the VAE of the row's model
    (``world_benchmark.autoencoder_ceiling``); LSE is the scorer's on it."""
    cases, options, face_model = _setting(job)
    scorer = load_scorer(SCORER) if SCORER.is_file() else None
    render, what, through_vae = REFERENCE_ROWS[job.name]
    model = load_checkpoint(job.model, dtype=torch.float32) if through_vae else None
    rows, frames = [], {}
    for i, case in enumerate(cases):
        truth, rendered = case.truth, render(case)
        if through_vae:
            metrics, shown = autoencoder_ceiling(case, model, options, face_model, scorer, rendered=rendered)
        else:
            shown = rendered.rendered.frames
            metrics = state_errors(shown, truth, case.metadata["mouth_poses"])
            metrics.pop("estimated")
            if scorer is not None:
                lips = lip_crops(shown, case.track(face_model).landmarks, scorer.config.lip_size)
                score = sync_offsets(scorer, lips, to_encoder_input(truth.waveform, truth.sample_rate))
                metrics.update(lse_d=score.lse_d, lse_c=score.lse_c, sync_offset=score.offset)
        rows.append({"clip": case.name, **metrics})
        if through_vae and rendered is truth:
            frames.update({(i, k): shown[k] for j, k in example_picks(cases) if j == i})
    return {"model": f"{what} through the VAE of {_shown(job.model)}" if through_vae else what, "exposure": True,
            "mean": mean_metrics(rows), "clips": rows, "seconds": 0.0, "_frames": frames}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _transfer_setting(job: Job):
    """(pairs, options, face model, model, chunk model) of a transfer job; a pair is a case and its donor, the next
    case."""
    cases, options, face_model = _setting(job)
    model = load_checkpoint(job.model, dtype=torch.float32)
    chunk_model = StableDubChunkModel(model, options.sampling, options.runtime)
    pairs = [(case, cases[(i + 1) % len(cases)]) for i, case in enumerate(cases)]
    return pairs, options, face_model, model, chunk_model


def run_transfer(job: Job) -> dict:
    """Ours with the next clip's habit: error to the donor-habit truth, against the own-habit dub's."""
    pairs, options, face_model, model, chunk_model = _transfer_setting(job)
    rows = []
    for case, donor in pairs:
        truth_b = transfer_truth(case, donor)
        own_metrics, own = evaluate_clip(case, model, options, face_model, check_outside=False)
        habit = habit_from(donor, chunk_model, options, face_model)
        _, moved = evaluate_clip(case, model, options, face_model, habit=habit, check_outside=False)
        poses = case.metadata["mouth_poses"]
        own_to_b = state_errors(own, truth_b, poses)["habit_error"]
        moved_to_b = state_errors(moved, truth_b, poses)["habit_error"]
        moved_to_a = state_errors(moved, case.truth, poses)["habit_error"]
        truth_gap = float(np.mean([np.abs(getattr(truth_b.states, n) - getattr(case.truth.states, n)).mean()
                                   for n in ("opening", "width", "rounding")]))
        rows.append({"clip": case.name, "donor": donor.name, "own_habit_error_to_donor_truth": own_to_b,
                     "transfer_error_to_donor_truth": moved_to_b, "transfer_error_to_own_truth": moved_to_a,
                     "own_error_to_own_truth": own_metrics["habit_error"], "truth_habit_gap": truth_gap,
                     "transfer_gain": 1 - moved_to_b / own_to_b if own_to_b > 0 else math.nan})
        print(f"  habit transfer {case.name} <- {donor.name}: to donor truth {own_to_b:.4f} -> {moved_to_b:.4f}",
              flush=True)
    return {"mean": mean_metrics(rows), "clips": rows}


def run_reference_transfer(job: Job) -> dict:
    """Ours given the appearance frame of the clip re-rendered with the next clip's habit: does the mouth follow the
    reference's habit? Against the same dub given the frame of the clip re-rendered with its own habit (both lossless
    renders, picked by the same strategy), measured against the donor-habit truth."""
    pairs, options, face_model, model, chunk_model = _transfer_setting(job)
    rows = []
    for case, donor in pairs:
        truth_b, poses = transfer_truth(case, donor), case.metadata["mouth_poses"]
        own_habit, donor_habit = case.metadata["avatar"].habit, donor.metadata["avatar"].habit
        dubs = {"own": dict(reference=reference_with_habit(case, own_habit, options, face_model)),
                "reference": dict(reference=reference_with_habit(case, donor_habit, options, face_model))}
        dubs["both"] = dict(dubs["reference"], habit=habit_from(donor, chunk_model, options, face_model))
        errors = {}
        for name, given in dubs.items():
            _, frames = evaluate_clip(case, model, options, face_model, check_outside=False, **given)
            errors[name] = (state_errors(frames, truth_b, poses)["habit_error"],
                            state_errors(frames, case.truth, poses)["habit_error"])
        gain = lambda name: 1 - errors[name][0] / errors["own"][0] if errors["own"][0] > 0 else math.nan  # noqa: E731
        rows.append({"clip": case.name, "donor": donor.name,
                     "own_reference_error_to_donor_truth": errors["own"][0],
                     "own_reference_error_to_own_truth": errors["own"][1],
                     "donor_reference_error_to_donor_truth": errors["reference"][0],
                     "donor_reference_error_to_own_truth": errors["reference"][1],
                     "donor_reference_and_habit_error_to_donor_truth": errors["both"][0],
                     "reference_transfer_gain": gain("reference"), "reference_and_habit_transfer_gain": gain("both")})
        print(f"  reference transfer {case.name} <- {donor.name}: to donor truth {errors['own'][0]:.4f} -> "
              f"{errors['reference'][0]:.4f} (and its habit vector: {errors['both'][0]:.4f})", flush=True)
    return {"mean": mean_metrics(rows), "clips": rows}


def run_job(job: Job) -> dict:
    """A job's results, from ``work/rows`` when the same job (model file, clips, speech, steps, sync scorer file,
    the measuring code of :data:`MEASURING_CODE`) ran before."""
    model = hashlib.sha256(job.model.read_bytes()).hexdigest()
    scorer = hashlib.sha256(SCORER.read_bytes()).hexdigest() if SCORER.is_file() else None
    code = hashlib.sha256(b"".join(path.read_bytes() for path in MEASURING_CODE)).hexdigest()
    key = hashlib.sha256(json.dumps([job.name, job.exposure, str(job.world), str(job.speech), job.steps, model,
                                     scorer, code]).encode()).hexdigest()[:16]
    cache = job.world.parent / "rows" / f"{key}.json"
    if cache.is_file():
        result = json.loads(cache.read_text())
        frames = np.load(cache.with_suffix(".npz"))
        result["_frames"] = {tuple(map(int, k.split("_"))): frames[k] for k in frames.files}
        return result
    run = {"habit transfer": run_transfer, "reference transfer": run_reference_transfer,
           **{name: run_reference for name in REFERENCE_ROWS}}.get(job.name, run_row)
    result = run(job)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_suffix(".npz"), **{f"{i}_{k}": v for (i, k), v in result.get("_frames", {}).items()})
    cache.write_text(json.dumps({k: v for k, v in result.items() if k != "_frames"}))
    return result


def headline(rows: dict, transfer: dict | None, reference: dict | None = None) -> dict:
    ours = rows["ours"]["mean"]
    get = lambda row, key: rows[row]["mean"].get(key, math.nan) if row in rows else math.nan  # noqa: E731
    out = {"sync_correlation": ours["sync_correlation"], "opening_error": ours["opening_error"],
           "lse_c": ours.get("lse_c", math.nan), "lse_d": ours.get("lse_d", math.nan),
           "habit_error": ours["habit_error"], "occluder_psnr_db": ours.get("occluder_psnr", math.nan),
           "occluder_psnr_not_exposed_db": get("ours, occluder not exposed", "occluder_psnr"),
           "flicker": ours["flicker"], "outside_mask_identical": ours["outside_mask_identical"],
           "psnr": ours["psnr"], "ssim": ours["ssim"]}
    pairs = {}  # ablation -> (its row, its full model's row)
    for kind, names in HEADLINE_ROWS.items():
        row = next((n for n in names if n in rows), names[-1])
        pairs[kind] = (row, ROWS[row][2])
    out["headline_rows"] = {kind: list(pair) for kind, pair in pairs.items()}
    pair = lambda kind, key: (get(pairs[kind][1], key), get(pairs[kind][0], key))  # noqa: E731  (full, ablation)
    full, ablated = pair("habit", "habit_error")
    out.update(habit_error_full=full, habit_error_without_habit=ablated, habit_error_reduction=1 - full / ablated)
    # what knowing the habit takes off the habit error of a dub that follows the speech exactly (the truth against
    # the habit-blind truth), and of one that predicts the latents exactly (both through the shipped VAE)
    out.update(habit_error_reduction_ideal=1 - get(TRUTH, "habit_error") / get(BLIND_TRUTH, "habit_error"),
               habit_error_reduction_ceiling=1 - get(CEILING, "habit_error") / get(BLIND_CEILING, "habit_error"))
    full, ablated = pair("exposure", "occluder_psnr")
    out.update(occluder_psnr_full_db=full, occluder_psnr_without_exposure_db=ablated,
               occluder_psnr_gain_db=full - ablated)
    # the part of the gain the training learnt: both models given the occluder's mask at inference
    full, ablated = pair("exposure_training", "occluder_psnr")
    out.update(occluder_psnr_without_exposure_training_db=ablated, occluder_psnr_gain_from_training_db=full - ablated)
    full, ablated = pair("temporal", "flicker")
    out.update(flicker_full=full, flicker_without_temporal=ablated, flicker_ratio_without_temporal=ablated / full)
    out["sync_correlation_truth_through_vae"] = get(CEILING, "sync_correlation")
    if transfer is not None:
        out["habit_transfer_gain"] = transfer["mean"]["transfer_gain"]
    if reference is not None:
        out["reference_transfer_gain"] = reference["mean"]["reference_transfer_gain"]
        out["reference_and_habit_transfer_gain"] = reference["mean"]["reference_and_habit_transfer_gain"]
    return out


def check_targets(values: dict) -> dict:
    out = {}
    for key, (op, target) in TARGETS.items():
        value = values.get(key, math.nan)
        met = {">=": lambda: value >= target, ">": lambda: value > target, "==": lambda: value == target}[op]()
        out[key] = {"target": f"{op} {target}", "value": value, "met": bool(met)}
    return out


def _clean(value):
    """JSON-ready: floats rounded to 4 significant decimals, NaN/inf as strings."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, str, int)) or value is None:
        return value
    value = float(value)
    return round(value, 4) if math.isfinite(value) else str(value)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    lines = ["| row | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for name, row in results["rows"].items():
        cells = [_fmt(row["mean"].get(key, "")) for key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| headline | value | target | met |", "| --- | --- | --- | --- |"]
    for key, check in results["targets"].items():
        lines.append(f"| {key} | {_fmt(check['value'])} | {check['target']} | {'yes' if check['met'] else 'NO'} |")
    pairs = "; ".join(f"{kind}: {row} against {full}" for kind, (row, full) in results["headline_rows"].items())
    lines += ["", f"Each ablation against its own recipe's full model: {pairs}."]
    if "habit_transfer" in results:
        m = results["habit_transfer"]["mean"]
        lines += ["", "Habit transfer (ours with the next clip's habit): error to the donor-habit truth "
                      f"{_fmt(m['own_habit_error_to_donor_truth'])} with its own habit, "
                      f"{_fmt(m['transfer_error_to_donor_truth'])} with the donor's (transfer_gain "
                      f"{_fmt(m['transfer_gain'])}); the two truths differ by {_fmt(m['truth_habit_gap'])}."]
    if "reference_transfer" in results:
        m = results["reference_transfer"]["mean"]
        lines += ["", "Reference transfer (ours given the appearance frame of the clip rendered with the next clip's "
                      "habit): error to the donor-habit truth "
                      f"{_fmt(m['own_reference_error_to_donor_truth'])} with the own-habit frame, "
                      f"{_fmt(m['donor_reference_error_to_donor_truth'])} with the donor-habit frame "
                      f"(reference_transfer_gain {_fmt(m['reference_transfer_gain'])}), "
                      f"{_fmt(m['donor_reference_and_habit_error_to_donor_truth'])} with its habit vector too "
                      f"(gain {_fmt(m['reference_and_habit_transfer_gain'])})."]
    return "\n".join(lines) + "\n"


def example_png(path: Path, cases, rows: dict) -> None:
    """The example frames: per pick, the mouth patch of source | ground truth | each row, enlarged."""
    names = [n for n in rows if rows[n]["_frames"]]
    grid = []
    for i, k in example_picks(cases):
        case, pose = cases[i], cases[i].metadata["mouth_poses"][k:k + 1]
        images = [case.frames[k], case.truth.rendered.frames[k]] + [rows[n]["_frames"][(i, k)] for n in names]
        grid.append([mouth_patches(im[None], pose)[0] for im in images])
    write_png(path, labelled_grid(grid, ["source", "ground truth", *names], tile=(256, 192)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluate-only", action="store_true", help="do not train; evaluate the committed models")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "media" / "speech_corpus",
                        help="the speech corpus (its last 20 files are the held-out speech)")
    parser.add_argument("--speech", type=Path, default=None, help="drive the held-out avatars with these files")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "quality", help="working folder")
    parser.add_argument("--clips", type=int, default=4, help="held-out clips (default: 4)")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps (default: 8)")
    parser.add_argument("--workers", type=int, default=2, help="rows evaluated in parallel processes (default: 2; "
                        "each uses one thread, so the figures do not depend on it)")
    parser.add_argument("--reverse", action="store_true", help="run the jobs in reverse order (a second process "
                        "started so shares the work: each job's results are cached in WORK/rows)")
    args = parser.parse_args(argv)
    try:  # bad folders are usage errors, found before any training or dubbing
        corpus_held_out(args.corpus.resolve())
        if args.speech is not None:
            list_speech(args.speech.resolve())
    except DatasetNotFoundError as error:
        parser.error(str(error))
    if not args.evaluate_only:
        subprocess.run([sys.executable, str(REPO / "bench" / "train_world_models.py"), "--speech", str(args.corpus),
                        "--part", "all"], check=True)
    work = args.work.resolve()
    world = held_out_world(work, args.corpus.resolve(), args.clips)
    speech = args.speech.resolve() if args.speech is not None else held_out_speech(work, args.corpus.resolve())
    jobs = [Job(name, DEMO_MODEL, True, world, speech, args.steps) for name in REFERENCE_ROWS]
    for name, (path, exposure, _) in ROWS.items():
        if path.is_file():
            jobs.append(Job(name, path, exposure, world, speech, args.steps))
        else:
            print(f"[missing] {name}: {path} (train it with bench/train_world_models.py)")
    jobs.append(Job("habit transfer", DEMO_MODEL, True, world, speech, args.steps))
    jobs.append(Job("reference transfer", DEMO_MODEL, True, world, speech, args.steps))
    order = jobs[::-1] if args.reverse else jobs
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        done = dict(zip([j.name for j in order], pool.map(run_job, order, chunksize=1)))
    transfer, reference = done.pop("habit transfer"), done.pop("reference transfer")
    rows = {name: done[name] for name in [*ROWS, *REFERENCE_ROWS] if name in done}
    values = headline(rows, transfer, reference)
    results = {"settings": {"clips": args.clips, "steps": args.steps, "seed": 0,
                            "held_out_world_seed": HELD_OUT_SEED, "torch_threads": 1,
                            "speech": "held-out corpus files" if args.speech is None else str(args.speech),
                            "scorer": SCORER.name if SCORER.is_file() else None},
               **values, "targets": check_targets(values), "rows": rows, "habit_transfer": transfer,
               "reference_transfer": reference}
    results["training_minutes"] = {name: json.loads(path.read_text()).get("training_minutes", {})
                                   for name, path in TRAINING.items() if path.is_file()}
    cases = make_cases(world, speech)
    for row in rows.values():  # wall times differ from run to run: the committed figures are only the measures
        row.pop("seconds", None)
    clean = _clean(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(clean))
    example_png(args.out.with_suffix(".png"), cases, rows)
    print(markdown(clean))
    return 0


if __name__ == "__main__":
    sys.exit(main())
