"""The StableDub sampler: overlapping 16-frame windows, dual CFG, one shared clip noise.

The sampler only needs a *denoiser*: any callable with the U-Net's forward contract
``model_fn(sample (B, F, 13, h, w), timestep (B,), encoder_hidden_states (B, F, T, C)) -> eps (B, F, 4, h, w)``
(``StableDub.unet`` is one). Conditions come as per-frame latents and per-branch token tensors
(:class:`ClipConditions`); the tokens of each branch of eq. 7 are produced by the habit module with the matching
drop masks (``conditions.branch_tokens``).

At every step each window is denoised from the current clip latent; the guided noise predictions of all windows
are averaged per frame with ramp weights and the scheduler takes ONE step on the whole clip (or chunk). We average
the noise prediction rather than ``x0`` or ``x_{t-1}``: every solver used here (DDIM, DPM++ 2M, Euler, UniPC)
updates the sample as an affine function of the model output at a given ``x_t``, so averaging ``eps`` gives the
same result as averaging the per-window updates (MultiDiffusion's least-squares fusion) while keeping a single
solver state (the multistep history) for the clip instead of one inconsistent history per window.

Memory: :func:`denoise_chunk` denoises a bounded chunk of frames; :class:`ClipNoise` yields the noise of any frame
range deterministically (counter-based: frame ``i``'s noise depends only on ``(seed, i)``), so the shared initial
noise is the same whatever the chunking. :func:`sample_clip` runs the chunks of a whole clip in memory and stitches
them with :class:`~stabledub_core.pipeline.windows.ChunkStitcher`; a streaming orchestrator does the same chunk by
chunk while reading frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np
import torch

from stabledub_core.errors import SamplerError
from stabledub_core.models.unet import build_unet_input
from stabledub_core.runtime import Interrupted
from stabledub_core.pipeline.guidance import Branch, GuidancePlan
from stabledub_core.pipeline.options import SamplingOptions, stream_seed
from stabledub_core.pipeline.schedulers import (
    SchedulerKind,
    make_scheduler,
    noise_levels,
    to_sample_space,
)
from stabledub_core.pipeline.windows import (
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    FrameWindow,
    iter_window_batches,
    plan_chunks,
    plan_frame_windows,
    stitch_chunks,
    window_weights,
)

class Denoiser(Protocol):
    """The U-Net's forward contract."""

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, F, 13, h, w)``, ``(B,)``, ``(B, F, T, C)`` -> ``(B, F, 4, h, w)``."""


@dataclass(frozen=True)
class ClipNoise:
    """Counter-based initial noise of a clip: the noise of frame ``i`` depends only on ``(seed, i)``.

    Attributes:
        seed: the clip's seed.
        shape: ``(4, h, w)`` latent shape of one frame.
        shared: fraction of the variance that is one base noise pattern common to all frames (DiffDub's shared
            ``x_T``): 0 = independent noise per frame, 1 = the same noise for every frame. Unit variance always.
    """

    seed: int
    shape: tuple[int, int, int]
    shared: float = 0.0

    def __post_init__(self):
        if self.seed < 0:
            raise SamplerError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.shared <= 1.0:
            raise SamplerError(f"shared noise fraction must be in [0, 1], got {self.shared}")

    def _normal(self, *key: int) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32, *key]).generate_state(2)
        gen = torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randn(self.shape, generator=gen, dtype=torch.float32)

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Noise of frames ``[start, stop)``.

        Returns:
            ``(stop - start, 4, h, w)`` float32 on the CPU.
        """
        if not 0 <= start <= stop:
            raise SamplerError(f"bad frame range [{start}, {stop})")
        n = stop - start
        if self.shared == 1.0:
            return self._normal(0).expand(n, *self.shape).clone()
        own = torch.stack([self._normal(1, i) for i in range(start, stop)]) if n else torch.empty(0, *self.shape)
        if self.shared == 0.0:
            return own
        return self.shared ** 0.5 * self._normal(0) + (1.0 - self.shared) ** 0.5 * own


@dataclass
class ClipConditions:
    """Per-frame conditions of a clip or chunk (CPU tensors are fine: windows are moved to the device one by one).

    Attributes:
        masked: ``(F, 4, h, w)`` latents of the masked crops.
        mask: ``(F, 1, h, w)`` latent-size inpainting masks.
        appearance: ``(4, h, w)`` one appearance latent, or ``(F, 4, h, w)`` per frame.
        tokens: branch -> ``(F, T, C)`` habit-modulated audio tokens of that branch.
        known: ``(F, 4, h, w)`` latents of the unmasked source crops, or None: with ``SamplerConfig.keep_known``
            the latents outside the mask follow them, noised to each step.
    """

    masked: torch.Tensor
    mask: torch.Tensor
    appearance: torch.Tensor
    tokens: Mapping[Branch, torch.Tensor]
    known: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.masked.shape[0]

    def validate(self, branches: tuple[Branch, ...]) -> None:
        """Check shapes and that every needed branch has tokens."""
        f = self.num_frames
        if self.masked.dim() != 4:
            raise SamplerError(f"masked latents must be (F, C, h, w), got {tuple(self.masked.shape)}")
        c, hw = self.masked.shape[1], tuple(self.masked.shape[2:])
        if tuple(self.mask.shape) != (f, 1, *hw):
            raise SamplerError(f"mask must be (F, 1, h, w) = {(f, 1, *hw)}, got {tuple(self.mask.shape)}")
        if tuple(self.appearance.shape) not in ((c, *hw), (f, c, *hw)):
            raise SamplerError(f"appearance latent must be (C, h, w) or (F, C, h, w) with C, h, w = {(c, *hw)}, "
                               f"got {tuple(self.appearance.shape)}")
        missing = [b.name for b in branches if b not in self.tokens]
        if missing:
            raise SamplerError(f"guidance needs tokens for branches {missing}; compute them with "
                               "conditions.branch_tokens(..., branches=plan.branches)")
        shapes = {tuple(self.tokens[b].shape) for b in branches}
        for b in branches:
            tok = self.tokens[b]
            if tok.dim() != 3 or tok.shape[0] != f:
                raise SamplerError(f"tokens of branch {b.name} must be (F={f}, T, C), got {tuple(tok.shape)}")
        if len(shapes) > 1:
            raise SamplerError(f"the branches' tokens differ in shape {sorted(shapes)}; compute them together with "
                               "conditions.branch_tokens")

    def slice(self, start: int, stop: int) -> "ClipConditions":
        """The conditions of frames ``[start, stop)``."""
        app = self.appearance if self.appearance.dim() == 3 else self.appearance[start:stop]
        return ClipConditions(self.masked[start:stop], self.mask[start:stop], app,
                              {b: t[start:stop] for b, t in self.tokens.items()},
                              None if self.known is None else self.known[start:stop])


@dataclass
class SamplerConfig:
    """Sampler settings.

    Attributes:
        scheduler: the solver.
        num_inference_steps: denoising steps.
        scale_audio: ``la`` of eq. 7 (untuned default; the paper gives no values).
        scale_habit: ``lh`` of eq. 7.
        window: frames per window (the model's training length).
        overlap: frames shared by consecutive windows (and chunks).
        window_batch_size: windows evaluated in one forward (each times the number of guidance branches).
        seed: seed of the clip noise.
        shared_noise: see :class:`ClipNoise`.
        keep_known: known-region blending (``SamplingOptions.keep_known``) when the conditions carry ``known``.
    """

    scheduler: SchedulerKind = SchedulerKind(SamplingOptions.scheduler)
    num_inference_steps: int = SamplingOptions.steps
    scale_audio: float = SamplingOptions.audio_scale
    scale_habit: float = SamplingOptions.habit_scale
    window: int = DEFAULT_WINDOW
    overlap: int = DEFAULT_OVERLAP
    window_batch_size: int = 1
    seed: int = 0
    shared_noise: float = 0.0
    scheduler_overrides: dict = field(default_factory=dict)
    keep_known: bool = SamplingOptions.keep_known

    def __post_init__(self):
        self.scheduler = SchedulerKind.parse(self.scheduler)
        if self.num_inference_steps < 1:
            raise SamplerError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")

    @classmethod
    def from_options(cls, options: SamplingOptions, window: int) -> "SamplerConfig":
        """The sampler settings of the pipeline's sampling options for a model with ``window``-frame windows."""
        return cls(scheduler=options.scheduler, num_inference_steps=options.steps, scale_audio=options.audio_scale,
                   scale_habit=options.habit_scale, window=window, overlap=options.overlap,
                   seed=stream_seed(options.seed, "noise"), keep_known=options.keep_known)

    @property
    def guidance(self) -> GuidancePlan:
        return GuidancePlan.from_scales(self.scale_audio, self.scale_habit)

    def clip_noise(self, latent_shape: tuple[int, int, int]) -> ClipNoise:
        return ClipNoise(self.seed, latent_shape, self.shared_noise)


StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


class WindowedDenoiser:
    """Guided noise prediction for a whole chunk: windows in batched forwards, ramp-weighted per-frame average.

    Args:
        model_fn: the U-Net forward (:class:`Denoiser`).
        conditions: conditions of the chunk's frames.
        plan: the branches of eq. 7 to evaluate and their coefficients.
        window, overlap, window_batch_size: see :class:`SamplerConfig`.
        device, dtype: where and in which precision the model runs.
        should_stop: polled before every window batch (a step of a large model takes long on a CPU); True raises
            :class:`Interrupted`.
    """

    def __init__(self, model_fn: Denoiser, conditions: ClipConditions, plan: GuidancePlan, window: int,
                 overlap: int, window_batch_size: int, device: torch.device | str, dtype: torch.dtype,
                 should_stop: StopCheck | None = None):
        conditions.validate(plan.branches)
        self.model_fn = model_fn
        self.conditions = conditions
        self.plan = plan
        self.windows = plan_frame_windows(conditions.num_frames, window, overlap)
        self.weights = window_weights(self.windows, overlap)
        self.window_batch_size = window_batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.should_stop = should_stop
        norm = torch.zeros(conditions.num_frames)
        for w, wt in zip(self.windows, self.weights):
            norm[w.slice] += wt
        self._norm = norm.to(self.device).view(-1, 1, 1, 1)

    def _stack(self, tensor: torch.Tensor, batch: list[FrameWindow]) -> torch.Tensor:
        return torch.stack([tensor[w.slice] for w in batch]).to(self.device, self.dtype)

    def _forward(self, sample: torch.Tensor, t: torch.Tensor, batch: list[FrameWindow]) -> torch.Tensor:
        c = self.conditions
        noisy = self._stack(sample, batch)  # (n, Fw, 4, h, w)
        app = c.appearance
        app = (app.expand(len(batch), *app.shape).to(self.device, self.dtype) if app.dim() == 3
               else self._stack(app, batch))
        latent_in = build_unet_input(noisy, self._stack(c.masked, batch), self._stack(c.mask, batch), app)
        branches = self.plan.branches
        latent_in = latent_in.repeat(len(branches), 1, 1, 1, 1)  # (nb * n, Fw, 13, h, w), branch-major
        tokens = torch.cat([self._stack(c.tokens[b], batch) for b in branches])  # (nb * n, Fw, T, C)
        timestep = t.to(self.device).expand(latent_in.shape[0])
        eps = self.model_fn(latent_in, timestep, tokens)
        if tuple(eps.shape) != (latent_in.shape[0], *noisy.shape[1:]):
            raise SamplerError(f"denoiser returned {tuple(eps.shape)}, expected "
                               f"{(latent_in.shape[0], *noisy.shape[1:])}")
        return self.plan.combine(eps.float())  # (n, Fw, 4, h, w)

    def __call__(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided, window-averaged noise prediction.

        Args:
            sample: ``(F, 4, h, w)`` model input of the whole chunk (already ``scale_model_input``-ed).
            t: the scalar timestep.

        Returns:
            ``(F, 4, h, w)`` float32 noise prediction on the device.
        """
        acc = torch.zeros(sample.shape, dtype=torch.float32, device=self.device)
        t = torch.as_tensor(t).reshape(1)
        for indices in iter_window_batches(self.windows, self.window_batch_size):
            if self.should_stop is not None and self.should_stop():
                raise Interrupted("sampling interrupted")
            batch = [self.windows[i] for i in indices]
            eps = self._forward(sample, t, batch)
            for i, e in zip(indices, eps):
                weight = self.weights[i].to(self.device).view(-1, 1, 1, 1)
                acc[self.windows[i].slice] += e * weight
        return acc / self._norm


def denoise_chunk(
    model_fn: Denoiser,
    conditions: ClipConditions,
    config: SamplerConfig,
    noise: torch.Tensor | None = None,
    init_latents: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Denoise one chunk of frames (all its windows jointly, every step).

    Args:
        model_fn: the U-Net forward.
        conditions: the chunk's conditions.
        config: sampler settings.
        noise: ``(F, 4, h, w)`` standard normal initial noise of the chunk's frames (``ClipNoise.frames``).
        init_latents: instead of ``noise``, a variance-preserving latent at the first sampling timestep (from
            ``inversion.ddim_invert``).
        device, dtype: where and in which precision the model runs (the solver runs in float32).
        on_step: called as ``on_step(done, total)`` after every step.
        should_stop: polled before every step; when it returns True :class:`Interrupted` is raised.

    Returns:
        ``(F, 4, h, w)`` float32 denoised latents on the CPU.
    """
    if (noise is None) == (init_latents is None):
        raise SamplerError("give exactly one of noise (fresh sampling) or init_latents (from inversion)")
    start = noise if noise is not None else init_latents
    shape = tuple(conditions.masked.shape)  # the latent channels are the VAE's (the masked crops' latents)
    if tuple(start.shape) != shape:
        raise SamplerError(f"initial latents must be {shape}, got {tuple(start.shape)}")
    denoiser = WindowedDenoiser(model_fn, conditions, config.guidance, config.window, config.overlap,
                                config.window_batch_size, device, dtype, should_stop)
    scheduler = make_scheduler(config.scheduler, **config.scheduler_overrides)
    scheduler.set_timesteps(config.num_inference_steps, device=device)
    x = start.to(device, torch.float32)
    if noise is not None:
        x = x * scheduler.init_noise_sigma
    else:
        x = to_sample_space(x, noise_levels(scheduler, config.scheduler)[0][1], config.scheduler)
    blend = None
    if config.keep_known and conditions.known is not None and noise is not None:
        blend = KnownRegion(conditions.known.to(device, torch.float32), conditions.mask.to(device, torch.float32),
                            noise.to(device, torch.float32))
    total = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        if should_stop is not None and should_stop():
            raise Interrupted(f"sampling interrupted at step {i} of {total}")
        if blend is not None:
            x = blend.at(scheduler, x, t)
        eps = denoiser(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x).prev_sample
        if on_step is not None:
            on_step(i + 1, total)
    if blend is not None:
        x = blend.final(x)
    return x.cpu()


@dataclass
class KnownRegion:
    """Known-region blending (RePaint, Lugmayr et al. 2022; diffusers' inpainting with a non-inpainting U-Net):
    before every step the latents outside the mask are replaced by the source latents noised to that step with the
    chunk's own initial noise, and after the last step by the source latents themselves. The generated region is
    thus always denoised next to a face that is exactly on the data, which keeps a weak model's samples coherent.

    Attributes:
        known: ``(F, C, h, w)`` clean source latents.
        mask: ``(F, 1, h, w)`` inpainting mask in [0, 1] (1 = generate).
        noise: ``(F, C, h, w)`` the initial standard normal noise of the chunk.
    """

    known: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor

    def at(self, scheduler, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noised = scheduler.add_noise(self.known, self.noise, t.reshape(1))  # in the solver's sample space
        return self.mask * x + (1 - self.mask) * noised

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * x + (1 - self.mask) * self.known


def sample_clip(
    model_fn: Denoiser,
    conditions: ClipConditions,
    config: SamplerConfig,
    windows_per_chunk: int | None = None,
    init_latents: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Denoise a whole clip of any length (in memory), chunk by chunk, from the shared clip noise.

    Args:
        model_fn: the U-Net forward.
        conditions: the clip's conditions (``F`` frames).
        config: sampler settings (seed, steps, scales, windows...).
        windows_per_chunk: windows denoised jointly per chunk; None = the whole clip in one chunk (exact
            MultiDiffusion over the clip).
        init_latents: ``(F, 4, h, w)`` inverted latents to start from instead of the seeded noise.
        device, dtype, on_step, should_stop: see :func:`denoise_chunk`; ``on_step`` counts steps over all chunks.

    Returns:
        ``(F, 4, h, w)`` float32 latents on the CPU, one per input frame.
    """
    f = conditions.num_frames
    chunks = plan_chunks(f, windows_per_chunk or 1 << 30, config.window, config.overlap)
    noise = None if init_latents is not None else config.clip_noise(tuple(conditions.masked.shape[1:]))
    steps = config.num_inference_steps

    def denoise(k: int, chunk) -> torch.Tensor:
        progress = None if on_step is None else (lambda d, _t: on_step(k * steps + d, len(chunks) * steps))
        return denoise_chunk(
            model_fn, conditions.slice(chunk.start, chunk.stop), config,
            noise=None if noise is None else noise.frames(chunk.start, chunk.stop),
            init_latents=None if init_latents is None else init_latents[chunk.start:chunk.stop],
            device=device, dtype=dtype, on_step=progress, should_stop=should_stop)

    pieces = [final for _, final in stitch_chunks(chunks, denoise)]
    return torch.cat(pieces)
