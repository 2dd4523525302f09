"""Which guidance scales make the shipped model follow the speech and the habit best? A sweep on a validation world.

The dual classifier-free guidance of eq. 7 weighs the audio-conditioned prediction by the audio scale ``la``
(``--audio-scale``) and the habit-conditioned one by the habit scale ``lh`` (``--habit-scale``). This benchmark
dubs a **validation** world with the shipped model at several ``(la, lh)`` pairs and measures each with
``bench/quality.py``'s measures. The validation avatars (world seed
:data:`VALIDATION_SEED`, never trained on) speak, and are dubbed with, training-corpus speech (the first
:data:`SPEECH_FILES` files), so that no choice made here looks at ``bench/quality.py``'s held-out clips or speech.

Results: ``bench/results/guidance_sweep.json`` and a table on stdout.

Usage:
    python bench/guidance_sweep.py --corpus ../shared/media/speech_corpus [--scales 1:1.5,2:1.5] [--clips 4]
        [--steps 8] [--workers 2] [--work runs/guidance_sweep] [--out FILE]

Each pair's result is cached in WORK/pairs (keyed by the pair, the world, the steps and the model file), so a
longer list re-runs only the new pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import quality  # noqa: E402
from stabledub_core.cli.common import find_face_model  # noqa: E402
from stabledub_core.evaluate.world_benchmark import evaluate_clip, make_cases, mean_metrics  # noqa: E402
from stabledub_core.models.checkpoint import load_checkpoint  # noqa: E402
from stabledub_core.models.sync_scorer import load_scorer  # noqa: E402
from stabledub_core.pipeline.options import DubOptions  # noqa: E402

RESULTS = REPO / "bench" / "results" / "guidance_sweep.json"
VALIDATION_SEED, SPEECH_FILES = 3000, 20
COLUMNS = ("sync_correlation", "opening_error", "lse_c", "habit_error", "flicker", "psnr", "ssim")


@dataclass
class Job:
    audio_scale: float
    habit_scale: float
    world: Path
    speech: Path
    steps: int


def validation_speech(work: Path, corpus: Path) -> Path:
    """A folder linking the first :data:`SPEECH_FILES` training files of the corpus."""
    return quality.link_speech(work / "speech", quality.corpus_head(corpus, SPEECH_FILES))


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """``"1:1.5,2"`` -> ``[(1.0, 1.5), (2.0, default lh)]``."""
    default = DubOptions().sampling.habit_scale
    pairs = []
    for item in filter(None, text.split(",")):
        la, _, lh = item.partition(":")
        pairs.append((float(la), float(lh) if lh else default))
    return pairs


def run_job(job: Job) -> dict:
    """One pair's mean and per-clip measures, from WORK/pairs when it ran before."""
    key = hashlib.sha256(json.dumps([job.audio_scale, job.habit_scale, str(job.world), job.steps,
                                     hashlib.sha256(quality.DEMO_MODEL.read_bytes()).hexdigest()]).encode())
    cache = job.world.parent / "pairs" / f"{key.hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    torch.set_num_threads(1)
    cases = make_cases(job.world, job.speech)
    options = DubOptions.from_values(steps=job.steps, seed=0, audio_scale=job.audio_scale,
                                     habit_scale=job.habit_scale)
    model = load_checkpoint(quality.DEMO_MODEL, dtype=torch.float32)
    scorer = load_scorer(quality.SCORER) if quality.SCORER.is_file() else None
    face_model, rows = find_face_model(), []
    for case in cases:
        metrics, _ = evaluate_clip(case, model, options, face_model, scorer, check_outside=False)
        rows.append({"clip": case.name, "speech": case.speech.name, **metrics})
    result = {"audio_scale": job.audio_scale, "habit_scale": job.habit_scale, "mean": mean_metrics(rows),
              "clips": rows}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(quality._clean(result)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "media" / "speech_corpus")
    parser.add_argument("--scales", default="0.5,1,2,3,5,1:0,1:1,1:2.5,1.5:1.5",
                        help="comma-separated la:lh pairs (a bare la keeps the default lh)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "guidance_sweep")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        parser.error(f"speech corpus {str(args.corpus)!r} does not exist: give --corpus the speech corpus folder")
    work = args.work.resolve()
    speech = validation_speech(work, args.corpus.resolve())
    world = quality.benchmark_world(work / f"world_{args.clips}", args.clips, VALIDATION_SEED, sorted(speech.iterdir()))
    jobs = [Job(la, lh, world, speech, args.steps) for la, lh in parse_pairs(args.scales)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run_job, jobs, chunksize=1)
    out = {"settings": {"clips": args.clips, "steps": args.steps, "seed": 0, "validation_world_seed": VALIDATION_SEED,
                        "speech": f"the first {SPEECH_FILES} files of the sorted corpus (training speech)",
                        "torch_threads": 1},
           "default_audio_scale": DubOptions().sampling.audio_scale,
           "default_habit_scale": DubOptions().sampling.habit_scale, "sweep": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(quality._clean(out), indent=1) + "\n")
    print("| la | lh | " + " | ".join(COLUMNS) + " |\n| --- | --- |" + " --- |" * len(COLUMNS))
    for r in results:
        values = " | ".join(f"{r['mean'].get(k, float('nan')):.3f}" for k in COLUMNS)
        print(f"| {r['audio_scale']:g} | {r['habit_scale']:g} | {values} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
