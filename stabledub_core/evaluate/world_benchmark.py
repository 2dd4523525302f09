"""Dub held-out world clips with other speech and measure the result against the world's ground truth.

A case is a world clip (an avatar never trained on) and a speech file (never trained on) it is dubbed with; the world
renders what the dub should look like (``synthetic.world.dub_ground_truth``: the same avatar, head motion and
occluder, the mouth driven by the new speech through the avatar's own lip habit). :func:`evaluate_clip` runs the
real pipeline (``pipeline.dub.dub_clip``: tracking, masks, exposure of the occluder's patches, sampling, paste-back)
and measures, per clip:

- **sync**: ``sync_correlation``, the Pearson correlation over frames between the mouth opening the estimator
  (``synthetic.estimator``) reads from the dub and the true opening for the new speech; ``opening_error`` their mean
  absolute difference; ``lse_d`` / ``lse_c`` from the AV-sync scorer on the dub's lip crops and the speech;
- **habit**: ``habit_error``, the mean absolute error of (opening, width, rounding) against the truth, which is the
  avatar's own habit applied to the new speech (the LMD analogue);
- **occluder**: ``occluder_psnr``, PSNR of the occluder's pixels against the truth (clips with an occluder);
- **preservation**: ``outside_mask_identical``, every pixel outside the paste region equals the source's; the
  region is found by dubbing the clip once more with two probe models that paint constant crops (black, white):
  a pixel that neither probe changed lies outside the mask;
- **temporal**: ``flicker`` (``metrics.flicker``) of the mouth patch against the truth;
- **image quality**: ``psnr`` / ``ssim`` of the mouth patch against the truth.

Frames whose mouth the occluder hides are left out of the mouth-state measures (the estimator marks them); a clip
with fewer than :data:`MIN_VALID_FRAMES` readable frames has no mouth-state measures (NaN), since a correlation
over a handful of frames is noise (over 3 frames it is often +-1). The mouth patch is the estimator's: an upright
box of 4 x 3 neutral mouth half-widths around the mouth pose.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from stabledub_core.evaluate.metrics import flicker, pearson, psnr, ssim
from stabledub_core.masks.lips import lip_crops
from stabledub_core.media.audio import load_audio, to_encoder_input
from stabledub_core.media.clip import read_clip
from stabledub_core.media.frames import FrameSource
from stabledub_core.models.sync_scorer import SyncScorer, sync_offsets
from stabledub_core.models.vae import decode_latents, encode_frames
from stabledub_core.pipeline.chunk_model import StableDubChunkModel, crops_to_tensor, tensor_to_crops
from stabledub_core.pipeline.dub import dub_clip
from stabledub_core.pipeline.options import DubOptions
from stabledub_core.pipeline.stages import habit_lip_crops, reference_frame, track_faces
from stabledub_core.synthetic.estimator import PATCH_SIZE, estimate_clip, patch_matrix
from stabledub_core.synthetic.habit import mean_habit
from stabledub_core.synthetic.world import WorldClip, dub_ground_truth, list_speech, load_metadata, render_speech

STATE_NAMES = ("opening", "width", "rounding")
MIN_VALID_FRAMES = 10  # readable frames a clip needs for its mouth-state measures (0.4 s at 25 fps)


@dataclass
class EvalCase:
    """A held-out clip and the speech it is dubbed with.

    Args:
        name: The clip's name.
        video: The clip's video file.
        metadata: Its ``synthetic.world.load_metadata``.
        speech: The new speech file.
        truth: The ground truth of the dub (rendered on first use).
    """

    name: str
    video: Path
    metadata: dict
    speech: Path
    _frames: np.ndarray | None = field(default=None, repr=False)
    _truth: WorldClip | None = field(default=None, repr=False)
    _track: object = field(default=None, repr=False)
    _region: np.ndarray | None = field(default=None, repr=False)

    @property
    def frames(self) -> np.ndarray:
        """``(F, H, W, 3)`` uint8: the clip's decoded frames (what a user's dub would read)."""
        if self._frames is None:
            self._frames = read_clip(self.video).frames
        return self._frames

    @property
    def source(self) -> FrameSource:
        return FrameSource(self.frames, self.metadata["fps"], name=self.name)

    @property
    def truth(self) -> WorldClip:
        if self._truth is None:
            wave, rate = load_audio(self.speech)
            self._truth = dub_ground_truth(self.metadata, wave, rate)
        return self._truth

    @property
    def occluder(self) -> np.ndarray | None:
        """``(F, H, W)`` float32 occluder masks of the truth, or None without an occluder."""
        if self.metadata["occluder"] is None:
            return None
        return self.truth.rendered.occluder_masks.astype(np.float32)

    def track(self, face_model):
        """The source's face track (for lip crops of the dub and of a habit donor)."""
        if self._track is None:
            self._track = track_faces(self.source, face_model)
        return self._track


def make_cases(world_dir, speech_dir) -> list[EvalCase]:
    """Clip ``i`` of a world folder (sorted by name) dubbed with speech file ``i`` of ``speech_dir`` (sorted by
    path, leaving out the file the clip was rendered with; taken round-robin when there are fewer files than
    clips)."""
    world_dir = Path(world_dir)
    speech = list_speech(speech_dir)
    cases = []
    for i, meta_path in enumerate(sorted(world_dir.glob("clip_*.json"))):
        metadata = load_metadata(meta_path)
        own = Path(str(metadata["speech"].get("file", ""))).name
        others = [p for p in speech if p.name != own] or speech  # never the speech the clip was rendered with
        cases.append(EvalCase(metadata["name"], meta_path.with_suffix(".mp4"), metadata, others[i % len(others)]))
    return cases


def mouth_patches(frames: np.ndarray, poses: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``(F, h, w, ...)``: the estimator's upright mouth patch of every frame (or mask)."""
    return np.stack([cv2.warpAffine(f, patch_matrix(p), PATCH_SIZE, flags=interpolation)
                     for f, p in zip(frames, poses)])


class ConstantCrops:
    """A ``ChunkModel`` stand-in that paints every generated crop one colour: the probe that finds the paste region.

    Args:
        like: The ``StableDubChunkModel`` whose crop size, lip size and window it copies.
        value: The uint8 colour.
    """

    def __init__(self, like: StableDubChunkModel, value: int):
        self.crop_size, self.lip_size, self.window, self.value = like.crop_size, like.lip_size, like.window, value
        self.crop_box_scale = like.crop_box_scale
        self.habit_size = like.model.config.habit.hidden_size

    def encode_habit(self, lip_crops: np.ndarray) -> torch.Tensor:
        return torch.zeros(self.habit_size)

    def begin(self, wave16, frame_times, habit, source=None, audio_context=None) -> None:
        pass

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None) -> np.ndarray:
        return np.full_like(crops, self.value)


def paste_region(case: EvalCase, chunk_model: StableDubChunkModel, options: DubOptions) -> np.ndarray:
    """``(F, H, W)`` bool: the pixels a dub of ``case`` may change (those a black or a white probe changed)."""
    if case._region is None:
        wave = case.truth.waveform
        region = np.zeros(case.frames.shape[:3], bool)
        for value in (0, 255):
            probe = dub_clip(case.source, wave, case.truth.sample_rate, ConstantCrops(chunk_model, value), options,
                             occluder=case.occluder).frames
            region |= (probe != case.frames).any(axis=-1)
        case._region = region
    return case._region


class AutoencodedCrops(ConstantCrops):
    """A probe chunk model that returns its crops through the model's VAE and back, unchanged otherwise.

    Args:
        like: The ``StableDubChunkModel`` whose VAE, crop size, lip size and window it uses.
    """

    def __init__(self, like: StableDubChunkModel):
        super().__init__(like, 0)
        self.vae = like.model.vae

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None) -> np.ndarray:
        with torch.no_grad():
            return tensor_to_crops(decode_latents(self.vae, encode_frames(self.vae, crops_to_tensor(crops))))


def autoencoder_ceiling(case: EvalCase, model, options: DubOptions, face_model, scorer: SyncScorer | None = None,
                        rendered: WorldClip | None = None) -> tuple[dict, np.ndarray]:
    """The ground truth through the model's VAE: what a U-Net that predicted the true latents exactly would score.

    The truth's frames are dubbed by :class:`AutoencodedCrops` (tracked, cropped, encoded, decoded and pasted back
    through the paste region as a dub is) and measured against the truth: what the autoencoder alone loses of the
    sync, habit and image measures. It is not a strict bound on a dub's measures (the estimator reads a blurred
    mouth unevenly, so a dub can score above it on a clip).

    Args:
        rendered: The clip whose frames go through the VAE instead of the truth (e.g. :func:`habit_blind_truth`);
            they are still measured against the truth.

    Returns:
        (metrics, the frames ``(F, H, W, 3)`` uint8).
    """
    options = _with_face_model(options, face_model)
    truth = case.truth
    rendered = truth if rendered is None else rendered
    source = FrameSource(rendered.rendered.frames, case.metadata["fps"], name=case.name)
    probe = AutoencodedCrops(StableDubChunkModel(model, options.sampling, options.runtime))
    frames = dub_clip(source, truth.waveform, truth.sample_rate, probe, options, occluder=case.occluder).frames
    return measure_dub(case, frames, truth, face_model, scorer), frames


def habit_from(case: EvalCase, chunk_model: StableDubChunkModel, options: DubOptions, face_model) -> torch.Tensor:
    """The lip-habit vector of a clip (``case``'s own video as the donor), as the Habit Encode node computes it."""
    lips = habit_lip_crops(case.source, case.track(face_model), chunk_model.lip_size, options.conditions.habit_frames,
                           options.sampling.seed)
    return chunk_model.encode_habit(lips)


def state_errors(frames: np.ndarray, truth: WorldClip, poses: np.ndarray) -> dict:
    """The estimator on ``frames`` against ``truth``'s mouth states: correlation of the opening, mean absolute
    errors; NaN with fewer than :data:`MIN_VALID_FRAMES` readable frames."""
    occluders = truth.rendered.occluder_masks if truth.occluder is not None else None
    est = estimate_clip(frames, poses, truth.palette, occluders)
    valid = est.valid
    out = {"valid_frames": int(valid.sum())}
    if valid.sum() < MIN_VALID_FRAMES:
        return {**out, "sync_correlation": math.nan, "opening_error": math.nan, "habit_error": math.nan,
                "estimated": est}
    estimated = np.stack([getattr(est, n)[valid] for n in STATE_NAMES], 1)  # (V, 3)
    true = np.stack([getattr(truth.states, n)[valid] for n in STATE_NAMES], 1)
    out.update(sync_correlation=pearson(estimated[:, 0], true[:, 0]),
               opening_error=float(np.abs(estimated[:, 0] - true[:, 0]).mean()),
               habit_error=float(np.abs(estimated - true).mean()), estimated=est)
    return out


def _with_face_model(options: DubOptions, face_model) -> DubOptions:
    return dataclasses.replace(options, tracking=dataclasses.replace(options.tracking, face_model=str(face_model)))


def measure_dub(case: EvalCase, dubbed: np.ndarray, truth: WorldClip, face_model,
                scorer: SyncScorer | None = None) -> dict:
    """The per-clip measures (module docstring) of ``dubbed`` frames of ``case`` against ``truth``, except
    ``outside_mask_identical``.

    Args:
        case: The case.
        dubbed: ``(F, H, W, 3)`` uint8 frames, the shape of the case's.
        truth: What they are measured against.
        face_model: MediaPipe ``face_landmarker.task`` (the lip crops of the LSE measures).
        scorer: The AV-sync scorer, or None (no LSE).
    """
    if dubbed.shape != case.frames.shape:
        raise RuntimeError(f"the dub of {case.name} has shape {dubbed.shape}, its source {case.frames.shape}")
    poses = case.metadata["mouth_poses"]
    metrics = state_errors(dubbed, truth, poses)
    metrics.pop("estimated")
    out_patch, true_patch = mouth_patches(dubbed, poses), mouth_patches(truth.rendered.frames, poses)
    metrics.update(psnr=psnr(out_patch, true_patch), ssim=float(np.mean([ssim(a, b) for a, b in
                                                                         zip(out_patch, true_patch)])),
                   flicker=flicker(out_patch, true_patch))
    if truth.occluder is not None:
        occluder = mouth_patches(truth.rendered.occluder_masks.astype(np.uint8), poses, cv2.INTER_NEAREST) > 0
        metrics["occluder_psnr"] = psnr(out_patch, true_patch, occluder)
    if scorer is not None:
        lips = lip_crops(dubbed, case.track(face_model).landmarks, scorer.config.lip_size)
        score = sync_offsets(scorer, lips, to_encoder_input(truth.waveform, truth.sample_rate))
        metrics.update(lse_d=score.lse_d, lse_c=score.lse_c, sync_offset=score.offset)
    return metrics


def evaluate_clip(case: EvalCase, model, options: DubOptions, face_model, scorer: SyncScorer | None = None,
                  exposure: bool = True, habit: torch.Tensor | None = None, truth: WorldClip | None = None,
                  check_outside: bool = True, reference: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Dub one case and measure it.

    Args:
        case: The case.
        model: A loaded ``StableDub``.
        options: The dub's options (sampling steps, seed, guidance scales).
        face_model: MediaPipe ``face_landmarker.task``.
        scorer: The AV-sync scorer, or None (no LSE).
        exposure: Give the pipeline the occluder's mask, so that its patches are exposed (kept).
        habit: A lip-habit vector to use instead of the clip's own (habit transfer).
        reference: An ``(H, W, 3)`` appearance frame to use instead of the one the pipeline picks from the clip.
        truth: What the dub is measured against (default: the case's ground truth).
        check_outside: Measure ``outside_mask_identical`` (costs two probe dubs, once per case).

    Returns:
        (metrics, the dubbed frames ``(F, H, W, 3)`` uint8).
    """
    truth = truth or case.truth
    options = _with_face_model(options, face_model)
    chunk_model = StableDubChunkModel(model, options.sampling, options.runtime)
    dubbed = dub_clip(case.source, case.truth.waveform, case.truth.sample_rate, chunk_model, options,
                      occluder=case.occluder if exposure else None, habit=habit, reference=reference).frames
    metrics = measure_dub(case, dubbed, truth, face_model, scorer)
    if check_outside:
        region = paste_region(case, chunk_model, options)
        metrics["outside_mask_identical"] = bool(np.array_equal(dubbed[~region], case.frames[~region]))
        metrics["paste_region_share"] = float(region.mean())
    return metrics, dubbed


def truth_with_habit(case: EvalCase, habit) -> WorldClip:
    """What ``case``'s avatar speaking the case's speech with the lip habit ``habit`` looks like."""
    avatar = dataclasses.replace(case.metadata["avatar"], habit=habit)
    truth = case.truth
    return render_speech(avatar, truth.waveform, truth.sample_rate, case.metadata["fps"], case.metadata["occluder"],
                         num_frames=case.metadata["num_frames"])


def transfer_truth(case: EvalCase, donor: EvalCase) -> WorldClip:
    """What ``case``'s avatar speaking the case's speech with the donor's lip habit looks like."""
    return truth_with_habit(case, donor.metadata["avatar"].habit)


def habit_blind_truth(case: EvalCase) -> WorldClip:
    """``case``'s truth with the mean habit (``synthetic.habit.mean_habit``): a dub that follows the speech exactly
    but knows no habit (the oracle a model without habit modulation can at best approach)."""
    return truth_with_habit(case, mean_habit())


def reference_with_habit(case: EvalCase, habit, options: DubOptions, face_model) -> np.ndarray:
    """The appearance frame the pipeline would pick from ``case``'s clip had its avatar the lip habit ``habit``.

    The clip is rendered again (its own speech, head motion and occluder) with ``habit``, tracked, and its frame
    chosen by ``options.conditions.reference``, as a dub of that video would choose it.

    Args:
        case: The case.
        habit: A ``synthetic.habit.LipHabit``.
        options: The dub's options (the reference strategy and seed).
        face_model: MediaPipe ``face_landmarker.task``.

    Returns:
        ``(H, W, 3)`` uint8 frame.
    """
    wave, rate = load_audio(case.video)  # the speech the clip was rendered with
    avatar = dataclasses.replace(case.metadata["avatar"], habit=habit)
    clip = dub_ground_truth({**case.metadata, "avatar": avatar}, wave, rate)
    source = FrameSource(clip.rendered.frames, case.metadata["fps"], name=f"{case.name} ({habit.archetype} habit)")
    return reference_frame(source, track_faces(source, face_model), options.conditions.reference,
                           options.sampling.seed)


def mean_metrics(rows: list[dict]) -> dict:
    """Per metric, the mean over clips of its finite values (booleans: all True)."""
    out = {}
    for key in sorted({k for row in rows for k in row}):
        values = [row[key] for row in rows if key in row]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, (int, float)) for v in values):
            finite = [float(v) for v in values if math.isfinite(float(v))]
            out[key] = float(np.mean(finite)) if finite else math.nan
    return out

