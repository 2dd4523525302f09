"""What each training stage trains and how a batch becomes its loss.

=========  =========================================================  ==========================================
stage      trained (``trainable_names``)                              loss
=========  =========================================================  ==========================================
``vae``    the VAE (tiny preset; sd15 uses SD's VAE, frozen)          L1 reconstruction + KL (``losses``)
``stage1`` spatial Mamba + ``conv_in`` (sd15, initialised from SD);   L_DM + L_LCF on single frames, conditioned
           every U-Net layer but the temporal Mamba and the audio     on the zero audio/habit embedding
           cross-attention (tiny, which has no pretrained U-Net)
``stage2`` temporal Mamba, audio cross-attention, habit modulation    L_DM + L_LCF on 16-frame clips with audio
           (ViT, AdaLN, convs) and the audio encoder's own layers;    and habit, each dropped with ``drop_prob``;
           with ``image_layers`` also stage 1's U-Net layers          with ``sync``, + the stabilized sync loss
``sync``   the AV-sync scorer (``models.sync_scorer``), all of it     contrastive (InfoNCE) over the batch
=========  =========================================================  ==========================================

Everything else is frozen (``requires_grad=False``, not in the optimizer), so e.g. stage 2 leaves the spatial Mamba
bit-identical. The model's inputs are built exactly as at inference (``pipeline.chunk_model``): latents by
``models.vae.encode_frames``, the U-Net input by ``models.unet.build_unet_input``, the per-frame audio context by the
encoder + ``models.audio_context.frame_audio_context``, the tokens by the habit module with its zero embedding.

Per-sample randomness (noise, timestep, condition dropout) comes from the sample's own ``sample_seed`` (a function
of the run's seed, the epoch and the dataset index), so a global batch gives the same loss however it is split over
processes and micro-steps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabledub_core.errors import OptionError
from stabledub_core.models.audio_context import frame_audio_context
from stabledub_core.models.habit import random_drop_masks
from stabledub_core.models.unet import build_unet_input
from stabledub_core.models.vae import encode_frames
from stabledub_core.pipeline.prediction import predicted_clean
from stabledub_core.pipeline.schedulers import SD15_NOISE_SCHEDULE
from stabledub_core.train.losses import DiffusionLosses, DiffusionSyncLosses, diffusion_losses, vae_losses
from stabledub_core.train.sync_loss import SyncTerm

# Inside a U-Net transformer block, norm1/mamba are the spatial Mamba and norm2/attn2 the audio cross-attention
AUDIO_ATTENTION = (".attn2.", ".norm2.")
TEMPORAL = (".temporal.",)
HABIT_ENCODER = ("habit.lip_encoder.", "habit.habit_conv.")  # lip crops -> the habit vector v


def _is_spatial_mamba(name: str) -> bool:
    return ".transformer_blocks." in name and (".mamba." in name or ".norm1." in name)


def _is_audio_attention(name: str) -> bool:
    return ".transformer_blocks." in name and any(part in name for part in AUDIO_ATTENTION)


def _is_temporal(name: str) -> bool:
    return any(part in name for part in TEMPORAL)


def check_image_layers(stage: str, image_layers: bool) -> None:
    """Refuse ``image_layers`` (``--image-layers``) outside stage 2, before a run writes anything."""
    if image_layers and stage != "stage2":
        raise OptionError(f"--image-layers is a stage-2 option; stage {stage} trains the image layers itself or "
                          "never does: leave it out")


def trainable_names(model, stage: str, image_layers: bool = False) -> list[str]:
    """The parameter names of ``model`` a stage trains, in ``named_parameters`` order.

    Args:
        model: a ``StableDub`` (a ``SyncScorer`` for ``sync``).
        stage: ``vae``, ``stage1``, ``stage2`` or ``sync``.
        image_layers: stage 2 only: also train the U-Net layers stage 1 trains, so that the image denoiser learns
            from audio-conditioned clips too (for a tiny U-Net trained from scratch, whose stage 1 is short).
    """
    check_image_layers(stage, image_layers)
    if stage == "sync":  # the whole scorer but its fixed log-mel front end
        return [name for name, _ in model.named_parameters() if not name.startswith("mel.")]
    if stage not in ("vae", "stage1", "stage2"):
        raise OptionError(f"unknown training stage {stage!r}; choose vae, stage1 or stage2")
    external = tuple(f"audio_encoder.{p}" for p in getattr(model.audio_encoder, "external_prefixes", ()))
    from_sd = model.config.preset != "tiny"  # sd15-shaped models start from SD 1.5's U-Net (models.weights)
    habit_on = model.config.habit.enabled  # without habit modulation the lip encoder is not part of the model

    def in_stage1(name: str) -> bool:
        in_unet = name.startswith("unet.")
        if from_sd:
            return in_unet and (_is_spatial_mamba(name) or name.startswith("unet.conv_in."))
        return in_unet and not _is_temporal(name) and not _is_audio_attention(name)

    def in_stage2(name: str) -> bool:
        return (name.startswith("unet.") and (_is_temporal(name) or _is_audio_attention(name))) \
            or (name.startswith("habit.") and not (name.startswith(HABIT_ENCODER) and not habit_on)) \
            or (name.startswith("audio_encoder.") and not name.startswith(external)) \
            or (image_layers and in_stage1(name))

    keep = {"vae": lambda name: name.startswith("vae."), "stage1": in_stage1, "stage2": in_stage2}[stage]
    return [name for name, _ in model.named_parameters() if keep(name)]


def freeze_for(model, stage: str, image_layers: bool = False) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a stage (``image_layers`` as in :func:`trainable_names`); returns the trained
    parameters (in a fixed order)."""
    names = set(trainable_names(model, stage, image_layers))
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        if name in names:
            params.append(param)
    if not params:
        raise OptionError(f"stage {stage} has nothing to train in this model")
    return params


def noise_scheduler():
    """The training noise schedule: SD 1.5's (every sampler at inference uses the same betas). The U-Net's target is
    the noise or the velocity, as ``config.prediction_type`` says (``pipeline.prediction``)."""
    from diffusers import DDPMScheduler  # local: diffusers' schedulers import in seconds; needed when training

    config = {k: v for k, v in SD15_NOISE_SCHEDULE.items() if k != "steps_offset"}
    return DDPMScheduler(**config)


def sample_draws(seeds: torch.Tensor, shape: tuple[int, ...], timesteps: int, drop_prob: float):
    """Per-sample noise ``(B, *shape)``, timesteps ``(B,)`` and audio/habit drop masks ``(B,)`` from each seed."""
    noise, steps, drop_audio, drop_habit = [], [], [], []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn(shape, generator=generator))
        steps.append(torch.randint(0, timesteps, (1,), generator=generator))
        audio, habit = random_drop_masks(1, drop_prob, generator=generator)
        drop_audio.append(audio)
        drop_habit.append(habit)
    return torch.stack(noise), torch.cat(steps), torch.cat(drop_audio), torch.cat(drop_habit)


class DiffusionObjective(nn.Module):
    """Stage 1 / stage 2 loss of a ``StableDub`` model: ``forward(batch) -> DiffusionLosses``.

    Args:
        model: the ``StableDub`` (its VAE frozen).
        stage: ``stage1`` (single frames, zero condition) or ``stage2`` (clips with audio and habit).
        lcf_weight: weight of L_LCF.
        drop_prob: stage 2's condition dropout.
        sync: stage 2 only: the stabilized sync loss on the decoded one-step prediction (``train.sync_loss``),
            added with ``sync_weight``; None: the paper's loss alone.
        sync_weight: weight of the sync term.
    """

    def __init__(self, model, stage: str, lcf_weight: float = 1.0, drop_prob: float = 0.1,
                 sync: SyncTerm | None = None, sync_weight: float = 0.0):
        super().__init__()
        self.model, self.stage = model, stage
        self.lcf_weight, self.drop_prob = float(lcf_weight), float(drop_prob)
        self.scheduler = noise_scheduler()
        if sync is not None and stage != "stage2":
            raise OptionError(f"the sync loss is a stage-2 term; stage {stage} has no audio")
        self.sync, self.sync_weight = sync, float(sync_weight)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` [0, 1] -> ``(N, C, h, w)`` latents (no gradient: the VAE is frozen)."""
        return encode_frames(self.model.vae, images).float()

    def _masked_latents(self, batch: dict, images: torch.Tensor, cached_key: str) -> torch.Tensor:
        """Latents of the masked crops: from the cache where the mask had no exposed patch, else encoded."""
        if cached_key not in batch:
            return self._encode(images.flatten(0, 1) if images.dim() == 5 else images).view(
                *images.shape[:-3], -1, *self._latent_hw)
        latents = batch[cached_key].float().clone()
        need = ~batch["masked_cached"].bool()
        if need.any():
            flat = images[need].flatten(0, 1) if images.dim() == 5 else images[need]
            latents[need] = self._encode(flat).view(latents[need].shape)
        return latents

    @property
    def _latent_hw(self) -> tuple[int, int]:
        side = self.model.config.resolution // 2 ** (len(self.model.config.vae.block_out_channels) - 1)
        return side, side

    def _audio_context(self, batch: dict) -> torch.Tensor:
        """``(B, F, T, C_a)`` per-frame audio features of each sample's segment (as ``StableDubChunkModel``)."""
        encoder, cfg = self.model.audio_encoder, self.model.config.audio
        contexts = []
        for wave, length, times in zip(batch["audio"], batch["audio_length"], batch["frame_times"]):
            features = encoder(wave[:int(length)][None])[0]  # (T_feat, C_a)
            contexts.append(frame_audio_context(features, encoder.frame_rate, times.cpu().numpy(),
                                                cfg.tokens_per_frame, cfg.context_seconds,
                                                feature_offset=getattr(encoder, "time_offset", 0.0)))
        return torch.stack(contexts)

    def forward(self, batch: dict) -> DiffusionLosses | DiffusionSyncLosses:
        model = self.model
        clip = self.stage == "stage2"
        if clip:
            frames = batch["crops"]  # (B, F, 3, S, S)
            b, f = frames.shape[:2]
            latents = batch["latents"].float() if "latents" in batch else \
                self._encode(frames.flatten(0, 1)).view(b, f, -1, *self._latent_hw)  # (B, F, C, h, w)
            masked = self._masked_latents(batch, batch["masked"], "masked_latents")  # (B, F, C, h, w)
            mask, mc = batch["mask_latent"], batch["mc_latent"]  # (B, F, 1, h, w)
        else:
            b, f = batch["crop"].shape[0], 1
            latents = batch["latent"].float() if "latent" in batch else self._encode(batch["crop"])
            latents = latents[:, None]  # (B, 1, C, h, w)
            masked = self._masked_latents(batch, batch["masked"], "masked_latent")[:, None]
            mask, mc = batch["mask_latent"][:, None], batch["mc_latent"][:, None]  # (B, 1, 1, h, w)
        appearance = batch["appearance_latent"].float() if "appearance_latent" in batch else \
            self._encode(batch["appearance"])  # (B, C, h, w)

        drop = self.drop_prob if clip else 0.0
        noise, timesteps, drop_audio, drop_habit = sample_draws(
            batch["sample_seed"], tuple(latents.shape[1:]), self.scheduler.config.num_train_timesteps, drop)
        device = latents.device
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # (B, F, C, h, w)

        if clip:
            audio = self._audio_context(batch)  # (B, F, T, C_a)
            v = model.habit.encode_habit(batch["lips"]) if model.config.habit.enabled else None  # (B, C)
            tokens = model.habit(audio, v, drop_audio=drop_audio.to(device), drop_habit=drop_habit.to(device))
        else:  # stage 1 learns the image prior: audio and habit are the zero embedding (eq. 7's empty condition)
            cfg = model.config
            silent = latents.new_zeros(b, f, cfg.audio.tokens_per_frame, model.habit.audio_feature_size)
            tokens = model.habit(silent, None, drop_audio=torch.ones(b, dtype=torch.bool, device=device))
        sample = build_unet_input(noisy, masked, mask, appearance)  # (B, F, 13, h, w)
        prediction = model.unet(sample, timesteps, tokens)
        target = noise if model.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(latents, noise, timesteps)  # v = sqrt(a) eps - sqrt(1 - a) x0
        losses = diffusion_losses(prediction, target, mc, self.lcf_weight)
        if self.sync is None:
            return losses
        alpha_bar = self.scheduler.alphas_cumprod.to(device)[timesteps]  # (B,)
        clean = predicted_clean(prediction, noisy, alpha_bar, model.config.prediction_type)  # (B, F, C, h, w)
        sync = self.sync(model.vae, clean, batch, drop_audio)
        return DiffusionSyncLosses(losses.total + self.sync_weight * sync, losses.dm, losses.lcf, sync)


class VAEObjective(nn.Module):
    """The autoencoder's loss on stage-1 crops: ``forward(batch) -> VAELosses``.

    Args:
        model: the ``StableDub`` whose ``vae`` is trained.
        kl_weight: weight of the KL term.
        mouth_weight: weight of the reconstruction error inside the coarse mouth mask Mc.
    """

    def __init__(self, model, kl_weight: float = 1e-6, mouth_weight: float = 0.0):
        super().__init__()
        self.model, self.kl_weight, self.mouth_weight = model, float(kl_weight), float(mouth_weight)

    def forward(self, batch: dict):
        vae = self.model.vae
        x = batch["crop"] * 2 - 1  # (B, 3, S, S) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                           for s in batch["sample_seed"].tolist()]).to(x.device)
        z = posterior.mean + posterior.std * eps  # a posterior sample drawn from each sample's seed
        reconstruction = vae.decode(z).sample
        return vae_losses(reconstruction, x, posterior, self.kl_weight, batch["mc"], self.mouth_weight)


class SyncLosses(NamedTuple):
    total: torch.Tensor
    aligned: torch.Tensor  # mean distance of the aligned pairs
    shuffled: torch.Tensor  # mean distance of each stack to another sample's audio


class SyncShiftLosses(NamedTuple):
    """``train sync --sync-negatives N``: :class:`SyncLosses` and the in-clip negatives' distance."""

    total: torch.Tensor
    aligned: torch.Tensor
    shuffled: torch.Tensor
    shifted: torch.Tensor  # mean distance of each stack to its own clip's speech shifted in time


def check_sync_negatives(stage: str, negatives: int) -> None:
    """Refuse ``--sync-negatives`` outside ``train sync``, before a run writes anything."""
    if negatives and stage != "sync":
        raise OptionError(f"--sync-negatives is an option of `train sync` (the scorer); stage {stage} has no "
                          "contrastive loss: leave it out")


class SyncObjective(nn.Module):
    """The sync scorer's contrastive loss: each stack against every audio segment of the batch (and back), the
    aligned one the target (InfoNCE). The negatives are the batch's other samples, so unlike the diffusion stages the
    loss depends on how a global batch is split over processes.

    Batch negatives come from other clips, other speakers and other words, so a scorer can tell them apart by what
    is said and how the lips look while saying it, without timing. With ``negative_audio`` in the batch
    (``SyncDataset(negatives=N)``) each stack is also scored against its own clip's speech a few frames earlier or
    later: same speaker, same words, only the timing wrong. Those N logits join the stack's row of the softmax (the
    audio-to-stack direction keeps the batch only, a shifted segment having no stack of its own).

    Args:
        model: the ``SyncScorer``.
        temperature: softmax temperature of the cosine similarities.
    """

    def __init__(self, model, temperature: float = 0.07):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, batch: dict) -> SyncLosses | SyncShiftLosses:
        video = self.model.embed_lips(batch["lips"])  # (B, D)
        audio = self.model.embed_audio(batch["audio"])  # (B, D)
        logits = video @ audio.T / self.temperature  # (B, B)
        targets = torch.arange(len(logits), device=logits.device)
        rows = logits
        if "negative_audio" in batch:
            b, n, samples = batch["negative_audio"].shape
            shifted = self.model.embed_audio(batch["negative_audio"].reshape(b * n, samples)).view(b, n, -1)
            hard = torch.einsum("bd,bnd->bn", video, shifted) / self.temperature  # (B, N)
            rows = torch.cat([logits, hard], 1)  # (B, B + N)
        total = (F.cross_entropy(rows, targets) + F.cross_entropy(logits.T, targets)) / 2
        aligned = (video - audio).norm(dim=-1).mean()
        shuffled = (video - audio.roll(1, 0)).norm(dim=-1).mean()
        if "negative_audio" not in batch:
            return SyncLosses(total, aligned.detach(), shuffled.detach())
        distance = (video[:, None] - shifted).norm(dim=-1).mean()
        return SyncShiftLosses(total, aligned.detach(), shuffled.detach(), distance.detach())


def make_objective(model, stage: str, lcf_weight: float, drop_prob: float, kl_weight: float,
                   vae_mouth_weight: float = 0.0, sync: SyncTerm | None = None,
                   sync_weight: float = 0.0) -> nn.Module:
    if stage == "vae":
        return VAEObjective(model, kl_weight, vae_mouth_weight)
    if stage == "sync":
        return SyncObjective(model)
    return DiffusionObjective(model, stage, lcf_weight, drop_prob, sync, sync_weight)
