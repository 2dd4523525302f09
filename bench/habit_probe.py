"""Where does the shipped model lose the lip habit? Linear probes of the habit vector and its effect on the tokens.

``bench/quality.py`` finds that habit modulation does not lower the habit error and that habit transfer moves
nothing. This benchmark looks inside the habit pathway of the shipped model, on a probe world (world seed
:data:`PROBE_SEED`, never trained on; :data:`CLIPS_PER_AVATAR` clips per avatar with different speech, no
occluders; training-corpus speech, so no held-out utterance is used):

1. **Does the habit vector tell habits apart?** For every clip the habit vector ``v`` of its own lip-habit segment
   (as the pipeline computes it), probed per avatar left out (``evaluate.probes``): ridge R^2 of the world's habit
   fields (:data:`FIELDS`), nearest-centroid accuracy of the archetype, the within-avatar / between-avatar
   distance ratio and the vectors' relative spread over the clips (unstandardised: what the modulation sees); for
   contrast, the ridge R^2 of the avatar's appearance (skin colour, face size). The same probes run on two
   controls: the same habit encoder untrained (the architecture's own random initialisation, seed 0) and the
   segment's raw pixels (8 x 8 thumbnails of the lip crops, their mean and spread over the segment), which show
   what a linear read-out of the crops themselves finds.
2. **Do the tokens carry it?** The audio cross-attention tokens of each clip's speech with its own ``v``, against
   the same speech with the next avatar's ``v`` (``habit_swap``), with the habit dropped (``habit_drop``, the zero
   embedding of classifier-free guidance) and against the next clip's speech with its own ``v`` (``audio_swap``):
   relative L2 change of the tokens over the frames both clips have.
3. **How much of the target is the habit?** Each clip's truth rendered again with the next avatar's habit (same
   speech) and with the next clip's speech (same habit): the mean squared change of the truth's upright mouth
   patches (pixels in 0..1) and the mean absolute change of its mouth states, against the clip's own render. Their
   ratio (``habit_share``) is what learning the habit could take off a diffusion loss whose target is these pixels,
   relative to what following the speech could (the VAE's latents only roughly preserve the patches' distances).

Results: ``bench/results/habit_probe.json`` (the shipped model) and a table on stdout;
``bench/results/habit_probe_epsilon.json`` is ``--model bench/models/epsilon/full.safetensors --out`` that file.

Usage:
    python bench/habit_probe.py --corpus ../shared/media/speech_corpus [--avatars 24] [--model M] [--out F]
        [--work runs/habit_probe]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import quality  # noqa: E402
from stabledub_core.cli.common import find_face_model  # noqa: E402
from stabledub_core.evaluate.probes import (  # noqa: E402
    centroid_accuracy, relative_spread, ridge_r2, within_between_ratio)
from stabledub_core.evaluate.world_benchmark import STATE_NAMES, EvalCase, mouth_patches  # noqa: E402
from stabledub_core.media.audio import load_audio, to_encoder_input  # noqa: E402
from stabledub_core.models.checkpoint import load_checkpoint  # noqa: E402
from stabledub_core.models.habit import LipHabitModulation  # noqa: E402
from stabledub_core.pipeline.chunk_model import StableDubChunkModel  # noqa: E402
from stabledub_core.pipeline.conditions import habit_vector  # noqa: E402
from stabledub_core.pipeline.options import DubOptions  # noqa: E402
from stabledub_core.pipeline.stages import habit_lip_crops  # noqa: E402
from stabledub_core.synthetic.world import dub_ground_truth, load_metadata, write_world  # noqa: E402

RESULTS = REPO / "bench" / "results" / "habit_probe.json"
PROBE_SEED, CLIPS_PER_AVATAR, SPEECH_FILES = 4000, 2, 20
FIELDS = ("open_gain", "open_bias", "width_gain", "width_bias", "round_gain", "round_bias", "teeth_gain")
APPEARANCE = ("skin_r", "skin_g", "skin_b", "face_scale")  # what the avatar looks like, for contrast
THUMB = 8  # side of the raw-pixel control's thumbnails


def probe_world(work: Path, corpus: Path, avatars: int) -> Path:
    """The probe world (written once): ``avatars`` avatars, :data:`CLIPS_PER_AVATAR` clips each, no occluders."""
    folder = work / f"world_{avatars}"
    if not (folder / "world.json").is_file():
        speech = quality.link_speech(work / "speech", quality.corpus_head(corpus, SPEECH_FILES))
        write_world(folder, avatars * CLIPS_PER_AVATAR, PROBE_SEED, speech, occluder_share=0.0,
                    clips_per_avatar=CLIPS_PER_AVATAR, max_seconds=4.0)
    return folder


def load_cases(world: Path) -> list[EvalCase]:
    """The world's clips (a probe dubs nothing: a case's speech is its own video's sound)."""
    cases = []
    for path in sorted(world.glob("clip_*.json")):
        metadata = load_metadata(path)
        cases.append(EvalCase(metadata["name"], path.with_suffix(".mp4"), metadata, path.with_suffix(".mp4")))
    return cases


def pixel_features(lips: np.ndarray) -> np.ndarray:
    """``(K, S, S, 3)`` uint8 lip crops -> their thumbnails' mean and standard deviation over K, flattened."""
    thumbs = np.stack([cv2.resize(c, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for c in lips]).astype(np.float64)
    return np.concatenate([thumbs.mean(0).ravel(), thumbs.std(0).ravel()])


def appearance_of(avatar) -> list[float]:
    """The :data:`APPEARANCE` values of an avatar."""
    return [*(float(c) for c in avatar.skin), float(avatar.face_scale)]


def probe_scores(features: np.ndarray, habits: list, appearance: np.ndarray, groups: np.ndarray) -> dict:
    """The three probes of one feature set (module docstring, point 1), and the ridge R^2 of the avatars'
    appearance (:data:`APPEARANCE`) for contrast."""
    targets = np.array([[getattr(h, f) for f in FIELDS] for h in habits])
    r2 = ridge_r2(features, targets, groups)
    looks = ridge_r2(features, appearance, groups)
    return {"r2": dict(zip(FIELDS, (round(float(v), 4) for v in r2))), "r2_mean": round(float(np.nanmean(r2)), 4),
            "appearance_r2_mean": round(float(np.nanmean(looks)), 4),
            "archetype_accuracy": round(centroid_accuracy(features, [h.archetype for h in habits], groups), 4),
            "within_between_ratio": round(within_between_ratio(features, groups), 4),
            "relative_spread": round(relative_spread(features), 5)}


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def token_changes(habit_module, contexts: list[torch.Tensor], vectors: list[torch.Tensor]) -> dict:
    """Mean relative token changes (module docstring, point 2); clip ``i``'s donor is clip ``i + CLIPS_PER_AVATAR``
    (the next avatar)."""
    changes = {"habit_swap": [], "habit_drop": [], "audio_swap": []}
    n = len(contexts)
    with torch.no_grad():
        for i in range(n):
            j = (i + CLIPS_PER_AVATAR) % n
            f = min(len(contexts[i]), len(contexts[j]))
            audio, other = contexts[i][None, :f], contexts[j][None, :f]  # (1, F, T, C_a)
            own = habit_module(audio, vectors[i][None])
            changes["habit_swap"].append(relative_change(habit_module(audio, vectors[j][None]), own))
            changes["habit_drop"].append(relative_change(habit_module(audio, None), own))
            changes["audio_swap"].append(relative_change(habit_module(other, vectors[i][None]), own))
    return {k: round(float(np.mean(v)), 5) for k, v in changes.items()}


def target_change(metadata: dict, speech: tuple[np.ndarray, int], habit, other_speech: tuple[np.ndarray, int]) -> dict:
    """Point 3 for one clip: how far its truth moves with another ``habit`` (same speech) and with ``other_speech``
    (same habit), against the clip's own render.

    Args:
        metadata: The clip's ``load_metadata``.
        speech: ``(waveform, rate)`` the clip was rendered with.
        habit: The other lip habit (a ``synthetic.habit.LipHabit``).
        other_speech: ``(waveform, rate)``: other speech, cut or padded to the clip's frames.

    Returns:
        ``{"habit_pixels", "speech_pixels"}``: mean squared change of the mouth patches (0..1 pixels), and
        ``{"habit_states", "speech_states"}``: mean absolute change of the mouth states.
    """
    def render(meta, wave_rate):
        clip = dub_ground_truth(meta, *wave_rate)  # the clip's avatar, motion and occluder speaking wave_rate
        patches = mouth_patches(clip.rendered.frames, clip.rendered.mouth_poses).astype(np.float64) / 255.0
        return patches, np.stack([getattr(clip.states, n) for n in STATE_NAMES], 1)  # (F, h, w, 3), (F, 3)

    own = render(metadata, speech)
    other_habit = render({**metadata, "avatar": dataclasses.replace(metadata["avatar"], habit=habit)}, speech)
    other_speech_ = render(metadata, other_speech)
    return {"habit_pixels": float(np.mean((other_habit[0] - own[0]) ** 2)),
            "speech_pixels": float(np.mean((other_speech_[0] - own[0]) ** 2)),
            "habit_states": float(np.mean(np.abs(other_habit[1] - own[1]))),
            "speech_states": float(np.mean(np.abs(other_speech_[1] - own[1])))}


def target_changes(cases: list[EvalCase], speech: list[tuple[np.ndarray, int]]) -> dict:
    """Point 3 over the clips: clip ``i``'s habit donor and other speech come from clip ``i + CLIPS_PER_AVATAR`` (the
    next avatar, as in :func:`token_changes`); ``habit_share_*`` is the sum of the habit changes over the sum of the
    speech changes, ``clip_habit_share_pixels_median`` the median of the clips' own ratios."""
    n = len(cases)
    rows = [target_change(case.metadata, speech[i], cases[(i + CLIPS_PER_AVATAR) % n].metadata["avatar"].habit,
                          speech[(i + CLIPS_PER_AVATAR) % n]) for i, case in enumerate(cases)]
    total = {k: float(sum(r[k] for r in rows)) for k in rows[0]}
    out = {k: round(v / n, 6) for k, v in total.items()}
    for unit in ("pixels", "states"):
        out[f"habit_share_{unit}"] = round(total[f"habit_{unit}"] / max(total[f"speech_{unit}"], 1e-12), 4)
    out["clip_habit_share_pixels_median"] = round(float(np.median(
        [r["habit_pixels"] / max(r["speech_pixels"], 1e-12) for r in rows])), 4)
    return out


def measure(model_path: Path, world: Path, face_model) -> dict:
    """Every probe of the habit pathway of the model at ``model_path`` on the clips of ``world``."""
    cases = load_cases(world)
    model = load_checkpoint(model_path, dtype=torch.float32)
    options = DubOptions.from_values(seed=0)
    chunk_model = StableDubChunkModel(model, options.sampling, options.runtime)
    torch.manual_seed(0)
    untrained = LipHabitModulation(model.config.habit, model.habit.audio_feature_size).eval()
    features = {"trained": [], "untrained": [], "pixels": []}
    contexts, speech, habits, appearance, groups = [], [], [], [], []
    for case in cases:
        lips = habit_lip_crops(case.source, case.track(face_model), chunk_model.lip_size,
                               options.conditions.habit_frames, options.sampling.seed)  # (K, S, S, 3)
        features["trained"].append(chunk_model.encode_habit(lips))
        features["untrained"].append(habit_vector(untrained, lips))
        features["pixels"].append(pixel_features(lips))
        wave, rate = load_audio(case.video)  # the clip's own speech
        speech.append((wave, rate))
        frame_times = np.arange(case.metadata["num_frames"]) / float(case.metadata["fps"])
        contexts.append(chunk_model.audio_context(to_encoder_input(wave, rate), frame_times))
        avatar = case.metadata["avatar"]
        habits.append(avatar.habit)
        appearance.append(appearance_of(avatar))
        groups.append(avatar.seed)
        print(f"  {case.name}: {avatar.habit.archetype}", flush=True)
    groups = np.array(groups)
    probes = {name: probe_scores(np.stack([np.asarray(v, np.float64) for v in vs]), habits, np.array(appearance),
                                 groups)
              for name, vs in features.items()}
    trained_v = [torch.as_tensor(v, dtype=torch.float32) for v in features["trained"]]
    return {"probes": probes, "token_change": token_changes(model.habit, contexts, trained_v),
            "target_change": target_changes(cases, speech),
            "clips": len(cases), "avatars": int(len(np.unique(groups))),
            "archetypes": {a: int(sum(h.archetype == a for h in habits) // CLIPS_PER_AVATAR)
                           for a in sorted({h.archetype for h in habits})}}


def table(results: dict) -> str:
    rows = ["| features | R^2 mean | " + " | ".join(f"R^2 {f}" for f in FIELDS) + " | archetype acc. | within/between "
            "| R^2 appearance | spread |", "|---" * (len(FIELDS) + 6) + "|"]
    for name, p in results["probes"].items():
        rows.append(f"| {name} | {p['r2_mean']:.3f} | " + " | ".join(f"{p['r2'][f]:.3f}" for f in FIELDS)
                    + f" | {p['archetype_accuracy']:.3f} | {p['within_between_ratio']:.3f}"
                    f" | {p['appearance_r2_mean']:.3f} | {p['relative_spread']:.4f} |")
    t = results["token_change"]
    rows.append("")
    rows.append(f"token change (relative L2): habit swap {t['habit_swap']:.5f}, habit dropped {t['habit_drop']:.5f}, "
                f"audio swap {t['audio_swap']:.5f}")
    c = results["target_change"]
    rows.append(f"target change: habit {c['habit_pixels']:.5f} / speech {c['speech_pixels']:.5f} (mouth-patch MSE, "
                f"share {c['habit_share_pixels']:.3f}); habit {c['habit_states']:.4f} / speech "
                f"{c['speech_states']:.4f} (mouth states, share {c['habit_share_states']:.3f})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "media" / "speech_corpus",
                        help="the speech corpus the models were trained on (its first files drive the probe world)")
    parser.add_argument("--avatars", type=int, default=24, help="avatars of the probe world (default: 24)")
    parser.add_argument("--model", type=Path, default=quality.DEMO_MODEL, help="the model (default: the shipped one)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "habit_probe", help="working folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        parser.error(f"speech corpus {str(args.corpus)!r} does not exist: give --corpus the speech corpus folder")
    if args.avatars < 3:
        parser.error(f"--avatars must be at least 3 (a probe leaves one avatar out and fits on the others), got "
                     f"{args.avatars}")
    torch.set_num_threads(1)  # the same reductions on every machine, as bench/quality.py
    start = time.perf_counter()
    world = probe_world(args.work, args.corpus.resolve(), args.avatars)
    results = measure(args.model, world, find_face_model())
    results["settings"] = {"world_seed": PROBE_SEED, "clips_per_avatar": CLIPS_PER_AVATAR,
                           "speech": f"the first {SPEECH_FILES} training-corpus files",
                           "model": quality._shown(args.model), "torch_threads": 1}
    results["minutes"] = round((time.perf_counter() - start) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
