"""The stabilized synchronization loss L_ss on stage 2's one-step lip prediction (``--sync-loss-weight``).

The denoising loss rewards a mouth that follows the speech only weakly: on the synthetic world the right audio
removes a few per cent of the mouth's L_LCF (TRAINING.md). A sync loss asks for it directly, as Wav2Lip and
LatentSync do, here in the stabilized form of Yaman et al. (``stabilized_sync_loss.md`` eq. 3-4)::

    x = AVSIM(generated lips, audio)   y = AVSIM(true lips, audio)   d = AVSIM(reference lips, audio)
    L_ss = -log(1 - (|x - y| + eps) / (|x - y| + |y - d| + eps))

AVSIM is the cosine similarity of the frozen AV-sync scorer's embeddings (``models.sync_scorer``, trained by
``train sync`` on the same kind of data). The loss asks for the true lips' similarity, not the highest one, so a
scorer that rates some true pairs low does not push the mouth away from the truth; and it weighs a sample more
when the reference's static mouth scores almost as well as the truth (``d`` near ``y``), where copying the
reference would otherwise be cheap. Its gradient with respect to ``x`` is ``sign(x - y) / (|x - y| + |y - d| +
eps)``.

In a stage-2 step (:meth:`SyncTerm.forward`), per sample: one window of ``F_s`` frames of the clip (its start a
function of the sample's seed), the U-Net's one-step estimate of their clean latents at the sample's timestep
(``pipeline.prediction.predicted_clean``), decoded by the frozen VAE with gradient, pasted into the true crops where
the inpainting mask is (as inference composites), cut to lip crops with the clip's landmarks by
:func:`~stabledub_core.masks.lips.warp_crops_torch` (the differentiable twin of the crops the scorer was trained on)
and scored against the audio under the window (``audio_windows``, as ``SyncDataset``). The reference stack is the
appearance frame's lips repeated: the mouth the model sees. Samples whose audio was dropped (classifier-free
guidance), or whose window or appearance frame has no landmarks, add 0; the term is the sum over the micro-batch
divided by its size, so it does not depend on how a global batch is split into equal micro-batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stabledub_core.errors import OptionError
from stabledub_core.masks.lips import lip_crop_matrices, warp_crops_torch
from stabledub_core.models.sync_scorer import SyncScorer, audio_windows, load_scorer
from stabledub_core.models.vae import decode_with_grad
from stabledub_core.train.preprocess import FPS

DEFAULT_EPS = 1e-3


def check_sync_loss(stage: str, weight: float, scorer: str) -> None:
    """Refuse an inconsistent ``--sync-loss-weight`` / ``--sync-scorer`` pair before a run writes anything."""
    if weight > 0 and stage != "stage2":
        raise OptionError(f"--sync-loss-weight is a stage-2 option (stage {stage} has no audio): leave it out")
    if weight > 0 and not scorer:
        raise OptionError("--sync-loss-weight needs --sync-scorer: the AV-sync scorer checkpoint of `train sync` "
                          "(e.g. assets/sync_scorer_world.safetensors)")
    if scorer and weight <= 0:
        raise OptionError("--sync-scorer is only read by the sync loss: give --sync-loss-weight > 0 too, or leave "
                          "the scorer out")


def stabilized_sync_loss(x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Eq. 3 of the stabilized sync loss, per sample.

    Args:
        x: (B,) similarity of the generated lips and the audio (the term with gradient).
        y: (B,) similarity of the true lips and the audio.
        d: (B,) similarity of the reference lips and the audio.
        eps: keeps the ratio below 1 and defined when ``x = y`` and ``y = d``.

    Returns:
        (B,) losses, 0 where ``x = y`` (up to ``eps``).
    """
    gap = (x - y).abs()
    ratio = (gap + eps) / (gap + (y - d).abs() + eps)
    return -torch.log1p(-ratio.clamp(max=1 - eps))


class SyncWindows:
    """Where the sync term looks in a stage-2 batch: per usable sample its window start, the lip-crop maps of the
    window and of the reference, and the 16 kHz audio under the window.

    Args:
        batch: a collated ``Stage2Dataset`` batch (``landmarks``, ``appearance_landmarks``, ``audio``,
            ``audio_length``, ``frame_times``, ``sample_seed``).
        scorer: the frozen ``SyncScorer`` (its stack length, lip size, audio span).
        drop_audio: (B,) bool, the samples whose audio the step replaced by the zero embedding.
    """

    def __init__(self, batch: dict, scorer: SyncScorer, drop_audio: torch.Tensor):
        c = scorer.config
        frames = batch["landmarks"].shape[1]
        if frames < c.frames:
            raise OptionError(f"the sync loss needs clips of at least {c.frames} frames, got {frames}")
        self.samples, self.starts, matrices, references, audio = [], [], [], [], []
        landmarks = batch["landmarks"].cpu().numpy()  # (B, F, 478, 2), NaN where no face was tracked
        appearance = batch["appearance_landmarks"].cpu().numpy()  # (B, 478, 2)
        for b, seed in enumerate(batch["sample_seed"].tolist()):
            start = int(seed) % (frames - c.frames + 1)
            window = landmarks[b, start:start + c.frames]
            if bool(drop_audio[b]) or not np.isfinite(window).all() or not np.isfinite(appearance[b]).all():
                continue
            self.samples.append(b)
            self.starts.append(start)
            matrices.append(lip_crop_matrices(window, c.lip_size))
            references.append(np.repeat(lip_crop_matrices(appearance[b][None], c.lip_size), c.frames, 0))
            times = batch["frame_times"][b].cpu().numpy()  # (F,) s in the audio segment
            wave = batch["audio"][b, :int(batch["audio_length"][b])].cpu().numpy()
            centre = times[start] + (c.frames - 1) / 2 / c.fps
            audio.append(audio_windows(wave, np.array([centre]), c.audio_samples)[0])
        self.matrices = np.stack(matrices) if matrices else np.zeros((0, c.frames, 2, 3))  # (n, F_s, 2, 3)
        self.references = np.stack(references) if references else np.zeros((0, c.frames, 2, 3))
        self.audio = torch.from_numpy(np.stack(audio)) if audio else torch.zeros(0, c.audio_samples)  # (n, A)

    def take(self, clips: torch.Tensor) -> torch.Tensor:
        """``(B, F, ...)`` -> ``(n, F_s, ...)``: each usable sample's window."""
        length = self.matrices.shape[1]
        return torch.stack([clips[b, s:s + length] for b, s in zip(self.samples, self.starts)])


class SyncTerm(nn.Module):
    """``L_ss`` of a stage-2 step; the scorer is frozen and part of no optimizer.

    Args:
        scorer: the ``SyncScorer`` (its frame rate must be the training data's).
        eps: as :func:`stabilized_sync_loss`.
    """

    def __init__(self, scorer: SyncScorer, eps: float = DEFAULT_EPS):
        super().__init__()
        if scorer.config.fps != FPS:
            raise OptionError(f"the sync scorer works at {scorer.config.fps} fps but the training data is at {FPS}")
        self.scorer, self.eps = scorer.eval().requires_grad_(False), float(eps)

    @classmethod
    def from_file(cls, path) -> "SyncTerm":
        return cls(load_scorer(path))

    def train(self, mode: bool = True):  # the scorer stays in eval mode (GroupNorm only, but as a rule)
        super().train(mode)
        self.scorer.eval()
        return self

    def similarities(self, lips: torch.Tensor, audio_embedding: torch.Tensor) -> torch.Tensor:
        """``(n, F_s, 3, L, L)`` stacks against ``(n, D)`` unit audio embeddings -> ``(n,)`` cosine similarities."""
        return (self.scorer.embed_lips(lips) * audio_embedding).sum(-1)

    def forward(self, vae, clean: torch.Tensor, batch: dict, drop_audio: torch.Tensor) -> torch.Tensor:
        """The term for a batch.

        Args:
            vae: the frozen ``AutoencoderKL`` (its decoder is differentiated, not trained).
            clean: (B, F, C, h, w) the one-step x0 estimate (``pipeline.prediction.predicted_clean``).
            batch: the stage-2 batch (``crops``, ``mask``, ``appearance`` and :class:`SyncWindows`' keys).
            drop_audio: (B,) bool.

        Returns:
            () the sum of the usable samples' L_ss over the batch size.
        """
        windows = SyncWindows(batch, self.scorer, drop_audio)
        if not windows.samples:
            return clean.new_zeros(())
        c = self.scorer.config
        n, size = len(windows.samples), c.lip_size
        latents = windows.take(clean)  # (n, F_s, C, h, w)
        decoded = decode_with_grad(vae, latents.flatten(0, 1)).float()  # (n F_s, 3, S, S) in [0, 1]
        truth = windows.take(batch["crops"]).flatten(0, 1).float()  # (n F_s, 3, S, S)
        mask = windows.take(batch["mask"]).flatten(0, 1).float()  # (n F_s, 1, S, S)
        generated = mask * decoded + (1 - mask) * truth  # pasted back as inference composites
        maps = windows.matrices.reshape(-1, 2, 3)
        lips = warp_crops_torch(generated, maps, size).view(n, c.frames, 3, size, size)
        true_lips = warp_crops_torch(truth, maps, size).view(n, c.frames, 3, size, size)
        reference = batch["appearance"][windows.samples].float()  # (n, 3, S, S)
        reference = reference[:, None].expand(-1, c.frames, -1, -1, -1).flatten(0, 1)
        reference_lips = warp_crops_torch(reference, windows.references.reshape(-1, 2, 3), size).view(
            n, c.frames, 3, size, size)
        audio = self.scorer.embed_audio(windows.audio.to(decoded.device))  # (n, D)
        with torch.no_grad():
            y, d = self.similarities(true_lips, audio), self.similarities(reference_lips, audio)
        x = self.similarities(lips, audio)
        return stabilized_sync_loss(x, y, d, self.eps).sum() / len(batch["sample_seed"])
