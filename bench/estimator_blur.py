"""How the benchmark's readers hold up on blurred mouths: the mouth-state estimator and the AV-sync scorer on the
held-out truth, sharp, blurred and through the shipped model's VAE.

A dub is never as sharp as the world's renders: the tiny model's autoencoder and its sampler blur the mouth. The
sync measure of ``bench/quality.py`` is the correlation between the opening the estimator
(``synthetic.estimator``) reads from a dub and the world's true opening, so it can only be as good as the estimator
is on blurred frames. Here the truth of every held-out clip (``bench/quality.py``'s world and speech) is read
straight, after a Gaussian blur of ``sigma`` frame pixels (the mouth's neutral half-width is about 21 of the 256),
and after the shipped model's VAE (``world_benchmark.autoencoder_ceiling``), each against the true mouth states.
The scorer's LSE-C and offset on the same frames say whether the lips still carry the sync.

Usage:
    python bench/estimator_blur.py [--corpus ../shared/media/speech_corpus] [--work runs/quality] [--clips 4]
        [--out bench/results/estimator_blur.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import quality  # noqa: E402
from stabledub_core.cli.common import find_face_model  # noqa: E402
from stabledub_core.evaluate.world_benchmark import autoencoder_ceiling, make_cases, state_errors  # noqa: E402
from stabledub_core.masks.lips import lip_crops  # noqa: E402
from stabledub_core.media.audio import to_encoder_input  # noqa: E402
from stabledub_core.models.checkpoint import load_checkpoint  # noqa: E402
from stabledub_core.models.sync_scorer import load_scorer, sync_offsets  # noqa: E402
from stabledub_core.pipeline.options import DubOptions  # noqa: E402

RESULTS = REPO / "bench" / "results" / "estimator_blur.json"
SIGMAS = (1.0, 2.0, 3.0)  # Gaussian blur, frame pixels


def blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in frames])


def read(case, frames: np.ndarray, scorer, face_model) -> dict:
    """The estimator's sync measures and the scorer's LSE on ``frames`` of ``case``, against its truth."""
    metrics = state_errors(frames, case.truth, case.metadata["mouth_poses"])
    metrics.pop("estimated", None)
    lips = lip_crops(frames, case.track(face_model).landmarks, scorer.config.lip_size)
    score = sync_offsets(scorer, lips, to_encoder_input(case.truth.waveform, case.truth.sample_rate))
    keep = ("valid_frames", "sync_correlation", "opening_error")
    return {**{k: metrics.get(k) for k in keep}, "lse_c": score.lse_c, "sync_offset": score.offset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "media" / "speech_corpus")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "quality", help="working folder")
    parser.add_argument("--clips", type=int, default=4, help="held-out clips (default: 4)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, corpus = args.work.resolve(), args.corpus.resolve()
    cases = make_cases(quality.held_out_world(work, corpus, args.clips), quality.held_out_speech(work, corpus))
    face_model, scorer = find_face_model(), load_scorer(quality.SCORER)
    model = load_checkpoint(quality.DEMO_MODEL, dtype=torch.float32)
    options = DubOptions.from_values(steps=8, seed=0)
    conditions = {"sharp": lambda case: case.truth.rendered.frames}
    conditions.update({f"blur sigma {s:g}": (lambda case, s=s: blurred(case.truth.rendered.frames, s)) for s in SIGMAS})
    conditions["through the shipped VAE"] = lambda case: autoencoder_ceiling(case, model, options, face_model)[1]
    rows = {}
    for name, make in conditions.items():
        clips = [{"clip": case.name, **read(case, make(case), scorer, face_model)} for case in cases]
        mean = {k: float(np.nanmean([c[k] for c in clips])) for k in ("sync_correlation", "opening_error", "lse_c")}
        rows[name] = {"mean": mean, "clips": clips}
        print(f"{name:26s} sync {mean['sync_correlation']:6.3f}  opening error {mean['opening_error']:.3f}  "
              f"LSE-C {mean['lse_c']:.3f}  per clip " + " ".join(f"{c['sync_correlation']:.2f}" for c in clips),
              flush=True)
    results = {"what": __doc__.split("\n\n")[0], "frame_size": list(cases[0].frames.shape[1:3]),
               "mouth_half_width_px": float(np.median(cases[0].metadata["mouth_poses"][:, 2])),
               "scorer": quality.SCORER.name, "model": quality.DEMO_MODEL.name, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(quality._clean(results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
