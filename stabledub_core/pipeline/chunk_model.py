"""The model side of the pipeline: generate one chunk of crops (audio context, habit tokens, VAE, sampler, decode).

:class:`ChunkModel` is the seam between the orchestration and the network: the stages hand it model-resolution
crops, masks and appearance crops of a chunk of frames and get generated crops back. :class:`StableDubChunkModel`
implements it for a ``StableDub`` model; tests give light stand-ins.

The per-frame audio context does not depend on how the clip is cut into chunks: the frames are grouped in blocks of
the model's window (frames ``[k W, (k + 1) W)``, the length the model was trained on) and each block's context is
cut from the audio encoder run on that block's speech segment, as the training datasets do. A chunk takes the blocks
it overlaps (:class:`AudioContextBlocks`, bounded memory); the whole clip's context
(:meth:`StableDubChunkModel.audio_context`, the ComfyUI Audio Encode node) is the same blocks in a row, so a context
computed once and handed to ``begin`` gives exactly what the model computes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from stabledub_core.errors import NumericalError, OptionError
from stabledub_core.masks.exposure import to_latent
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE, fit_samples
from stabledub_core.models.audio_context import audio_segment, frame_audio_context
from stabledub_core.models.checkpoint import load_checkpoint
from stabledub_core.models.vae import decode_latents, encode_frames
from stabledub_core.pipeline.composite import resize_square
from stabledub_core.pipeline.conditions import branch_tokens, clip_conditions, habit_vector
from stabledub_core.pipeline.guidance import Branch
from stabledub_core.pipeline.inversion import invert_clip
from stabledub_core.pipeline.options import RuntimeOptions, SamplingOptions
from stabledub_core.pipeline.prediction import noise_predictor
from stabledub_core.pipeline.sampler import ClipConditions, SamplerConfig, denoise_chunk
from stabledub_core.runtime import StageTimer, StopCheck

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device) -> str:
    """A dtype option with ``auto`` resolved: float16 on a CUDA device, float32 elsewhere."""
    if name == "auto":
        return "float16" if torch.device(device).type == "cuda" else "float32"
    if name not in TORCH_DTYPES:
        raise OptionError(f"unknown dtype {name!r}; choose one of auto, {', '.join(TORCH_DTYPES)}")
    return name


def check_runtime(device: str, dtype: str, name=lambda option: option) -> str | None:
    """Check a device and a dtype against what this torch build and machine offer, before any model is loaded.

    Args:
        device: The device option (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        dtype: The dtype option (``auto``, ``float32``, ``float16``, ``bfloat16``).
        name: How the user named an option (e.g. ``"--device"`` for ``"device"``), for the messages.

    Returns:
        A warning to show (float16 on a CPU), or None.

    Raises:
        OptionError: An unknown device, a device this build or machine does not have, an unknown dtype.
    """
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError):
        raise OptionError(f"unknown {name('device')} {device!r}: use cpu, cuda, cuda:N or mps") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise OptionError(f"{name('device')} {device!r}: {build} (torch {torch.__version__}): use "
                              f"{name('device')} cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if where.index is not None and where.index >= count:
            raise OptionError(f"{name('device')} {device!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    elif where.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError(f"{name('device')} {device!r}: MPS (Apple GPU) is not available here: use "
                              f"{name('device')} cpu")
    elif where.type != "cpu":
        raise OptionError(f"unknown {name('device')} {device!r}: use cpu, cuda, cuda:N or mps")
    if dtype != "auto" and dtype not in TORCH_DTYPES:
        raise OptionError(f"unknown {name('dtype')} {dtype!r}; choose one of auto, {', '.join(TORCH_DTYPES)}")
    if where.type == "cpu" and dtype == "float16":
        return (f"{name('dtype')} float16 on the CPU is slow and may overflow; {name('dtype')} float32 (the CPU "
                "default) or bfloat16 is better there")
    return None


def check_finite(values: torch.Tensor, what: str, start: int, dtype: torch.dtype) -> None:
    """Stop a dub whose model produced NaN or infinite numbers (one cheap check per chunk).

    Raises:
        NumericalError: Naming the chunk's frames and what to try.
    """
    if not bool(torch.isfinite(values).all()):
        name = str(dtype).removeprefix("torch.")
        retry = "dtype float32, or " if dtype != torch.float32 else ""
        raise NumericalError(f"the model produced NaN or infinite {what} for output frames from {start} "
                             f"(dtype {name}); nothing was written: try {retry}another checkpoint (its weights "
                             "overflow)")


def torch_dtype(name: str, device="cpu") -> torch.dtype:
    """The torch dtype of a dtype option (``auto``, ``float32``, ``float16``, ``bfloat16``) on ``device``."""
    return TORCH_DTYPES[resolve_dtype(name, device)]


@dataclass
class SourceSpeech:
    """The speech the source frames were filmed with, for DDIM inversion (``SamplingOptions.invert``).

    Attributes:
        wave16: ``(S16,)`` float32 16 kHz mono source speech.
        frame_times: ``(F_out,)`` time (s) in it of the source frame shown at each output frame.
    """

    wave16: np.ndarray
    frame_times: np.ndarray

    @classmethod
    def covering(cls, wave16: np.ndarray, frame_times: np.ndarray, fps) -> "SourceSpeech":
        """The speech padded with silence to the last frame's end (a video may outlast its own audio track)."""
        covered = int(np.ceil((float(np.max(frame_times)) + 1.0 / float(fps)) * ENCODER_SAMPLE_RATE))
        return cls(fit_samples(wave16, max(len(wave16), covered)), np.asarray(frame_times, np.float64))


class ChunkModel(Protocol):
    """What the orchestration needs from a model (see :class:`StableDubChunkModel`)."""

    crop_size: int  # side S of the model's crops
    crop_box_scale: float  # their framing (``MaskConfig.box_scale``): the one the model was trained on
    lip_size: int  # side of the lip crops of the habit vector
    window: int  # frames per sampler window (the model's training length)

    def encode_habit(self, lip_crops: np.ndarray) -> torch.Tensor:
        """The lip-habit vector ``(C,)`` of K lip crops ``(K, s, s, 3)`` uint8 (any size s)."""

    def begin(self, wave16: np.ndarray, frame_times: np.ndarray, habit: torch.Tensor,
              source: SourceSpeech | None = None, audio_context: torch.Tensor | None = None) -> None:
        """Start a clip: its 16 kHz mono speech, output frame times (s) and habit vector ``(C,)``; with ``source``,
        start every chunk from the DDIM inversion of its source crops under that speech; with ``audio_context``
        (``(F_out, T, C_a)``, from ``StableDubChunkModel.audio_context``), use it instead of encoding ``wave16``."""

    def generate(self, start: int, crops: np.ndarray, masks: np.ndarray, appearance: np.ndarray,
                 clock: StageTimer, should_stop: StopCheck | None,
                 on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Dub output frames ``[start, start + n)``.

        Args:
            start: Output index of the first frame (selects the shared noise and the audio).
            crops: ``(n, S, S, 3)`` uint8 source crops.
            masks: ``(n, S, S)`` float32 inpainting masks (1 = generate, 0 = keep).
            appearance: ``(n, S, S, 3)`` uint8 crops of the appearance reference frame.
            clock: Stage timer to account the model's stages in.
            should_stop: Interruption check.
            on_step: Called as ``on_step(done, total)`` after every sampler step of the chunk.

        Returns:
            ``(n, S, S, 3)`` uint8 generated crops.
        """


class AudioContextBlocks:
    """The per-frame audio context of a clip, computed block by block (blocks of ``window`` frames) on demand.

    Args:
        encode: ``encode(wave16, times) -> (n, T, C_a)``: the context of frames at ``times`` from the encoder run on
            their speech segment (``StableDubChunkModel._audio_context``).
        wave16: ``(S16,)`` float32 16 kHz mono speech.
        times: ``(F,)`` frame times (s) in it.
        window: Frames per block (the model's window).
    """

    def __init__(self, encode: Callable[[np.ndarray, np.ndarray], torch.Tensor], wave16: np.ndarray,
                 times: np.ndarray, window: int):
        self.encode, self.wave16, self.times, self.window = encode, wave16, np.asarray(times, np.float64), window
        self._blocks: dict[int, torch.Tensor] = {}  # block index -> (window, T, C_a), only those still needed

    def __len__(self) -> int:
        return len(self.times)

    def block(self, k: int) -> torch.Tensor:
        """``(n, T, C_a)`` context of frames ``[k window, (k + 1) window)`` (fewer at the clip's end)."""
        if k not in self._blocks:
            part = slice(k * self.window, min((k + 1) * self.window, len(self.times)))
            self._blocks[k] = self.encode(self.wave16, self.times[part])
        return self._blocks[k]

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, T, C_a)`` context of frames ``[start, stop)``; blocks before ``start`` are dropped
        (chunks come in order), so memory stays bounded on long clips."""
        if not 0 <= start < stop <= len(self.times):
            raise OptionError(f"audio context of frames [{start}, {stop}) asked for a clip of {len(self.times)} "
                              "frames")
        first, last = start // self.window, (stop - 1) // self.window
        for k in [k for k in self._blocks if k < first]:
            del self._blocks[k]
        context = torch.cat([self.block(k) for k in range(first, last + 1)])
        return context[start - first * self.window:stop - first * self.window]


class PrecomputedAudioContext:
    """A clip's whole ``(F, T, C_a)`` audio context given to ``begin`` (e.g. by the ComfyUI Audio Encode node)."""

    def __init__(self, context: torch.Tensor):
        self.context = context

    def __len__(self) -> int:
        return len(self.context)

    def frames(self, start: int, stop: int) -> torch.Tensor:
        return self.context[start:stop]


def crops_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(n, S, S, 3)`` uint8 -> ``(n, 3, S, S)`` float in [0, 1] (what the VAE encodes)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)


def tensor_to_crops(images: torch.Tensor) -> np.ndarray:
    """``(n, 3, S, S)`` float in [0, 1] (what the VAE decodes) -> ``(n, S, S, 3)`` uint8."""
    return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)


class StableDubChunkModel:
    """:class:`ChunkModel` for a ``StableDub`` model: VAE, audio encoder, lip-habit tokens, sampler with dual CFG.

    Args:
        model: A ``StableDub`` (``.config``, ``.unet``, ``.habit``, ``.audio_encoder``, ``.vae``).
        sampling: Sampler settings.
        runtime: Device and dtype.
    """

    def __init__(self, model, sampling: SamplingOptions, runtime: RuntimeOptions):
        self.model = model.eval()
        self.config = model.config
        self.crop_size = int(self.config.resolution)
        self.crop_box_scale = float(self.config.crop_box_scale)
        self.lip_size = int(self.config.habit.lip_size)
        self.window = int(self.config.num_frames)
        self.device = torch.device(runtime.device)
        self.dtype = torch_dtype(runtime.dtype, self.device)
        self.sampler = SamplerConfig.from_options(sampling, self.window)
        self._denoiser = noise_predictor(self.model)  # the U-Net as a noise prediction
        self._noise = None
        self._v = None

    def encode_habit(self, lip_crops: np.ndarray) -> torch.Tensor:
        lips = np.stack([resize_square(crop, self.lip_size) for crop in lip_crops])
        return habit_vector(self.model.habit, lips, self.device, self.dtype)

    def begin(self, wave16: np.ndarray, frame_times: np.ndarray, habit: torch.Tensor,
              source: SourceSpeech | None = None, audio_context: torch.Tensor | None = None) -> None:
        self.wave16 = wave16
        self.times = np.asarray(frame_times, np.float64)
        self.source = source
        if audio_context is None:
            self._audio = AudioContextBlocks(self._audio_context, wave16, self.times, self.window)
        else:
            self._audio = PrecomputedAudioContext(self.check_audio_context(audio_context, len(self.times)))
        self._source_audio = None if source is None else AudioContextBlocks(
            self._audio_context, source.wave16, source.frame_times, self.window)
        self._v = habit.to(self.device, self.dtype)
        latent = self.crop_size // 2 ** (len(self.config.vae.block_out_channels) - 1)
        self._noise = self.sampler.clip_noise((self.config.vae.latent_channels, latent, latent))

    def audio_context(self, wave16: np.ndarray, frame_times: np.ndarray) -> torch.Tensor:
        """The whole clip's per-frame audio context, block by block exactly as :meth:`generate` computes it.

        Args:
            wave16: ``(S16,)`` float32 16 kHz mono speech.
            frame_times: ``(F,)`` output frame times (s) in it.

        Returns:
            ``(F, T, C_a)`` float32 on the CPU, for ``begin(..., audio_context=...)``.
        """
        blocks = AudioContextBlocks(self._audio_context, np.asarray(wave16, np.float32), frame_times, self.window)
        if len(blocks) == 0:
            raise OptionError("no frames to compute the audio context of")
        return torch.cat([blocks.block(k) for k in range((len(blocks) - 1) // self.window + 1)])

    def check_audio_context(self, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """A given audio context checked against the clip's frames and this model's audio features."""
        audio_cfg = self.config.audio
        shape = (num_frames, int(audio_cfg.tokens_per_frame), int(audio_cfg.feature_size))
        if not isinstance(context, torch.Tensor) or tuple(context.shape) != shape:
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise OptionError(f"the audio features have shape {got} but this clip and model need {shape} (frames, "
                              "tokens per frame, feature width): encode the speech again for these frames with this "
                              "model")
        return context.float().cpu()

    def _audio_context(self, wave16: np.ndarray, times: np.ndarray) -> torch.Tensor:
        """``(n, T, C_a)`` per-frame audio features of the speech ``wave16`` at the frame times ``times`` (s)."""
        encoder = self.model.audio_encoder
        audio_cfg = self.config.audio
        a, b = audio_segment(len(wave16), times, audio_cfg.context_seconds)
        segment = torch.from_numpy(np.ascontiguousarray(wave16[a:b]))[None]
        with torch.no_grad():
            features = encoder(segment.to(self.device))[0].float().cpu()  # (T_feat, C_a)
        return frame_audio_context(features, encoder.frame_rate, times - a / ENCODER_SAMPLE_RATE,
                             audio_cfg.tokens_per_frame, audio_cfg.context_seconds,
                             feature_offset=getattr(encoder, "time_offset", 0.0))

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        n = len(crops)
        factor = self.crop_size // self._noise.shape[-1]
        vae = self.model.vae
        with torch.no_grad():
            with clock.stage("audio"):
                audio = self._audio.frames(start, start + n)  # (n, T, C_a)
            with clock.stage("vae_encode"):
                hide = (masks > 0)[..., None]  # (n, S, S, 1)
                masked = encode_frames(vae, crops_to_tensor(np.where(hide, 0, crops))).float().cpu()  # (n, 4, h, w)
                # The reference crop is the same for all frames of a crop span: encode each distinct one once
                unique, inverse = np.unique(appearance.reshape(n, -1), axis=0, return_inverse=True)
                app = encode_frames(vae, crops_to_tensor(unique.reshape(-1, *appearance.shape[1:]))).float().cpu()
                app = app[torch.from_numpy(inverse.reshape(-1))]  # (n, 4, h, w)
                mask = torch.from_numpy(to_latent(masks, factor))[:, None]  # (n, 1, h, w)
                clean = None
                if self.sampler.keep_known or self.source is not None:
                    clean = encode_frames(vae, crops_to_tensor(crops)).float().cpu()  # (n, 4, h, w) source latents
            start_latents = {"noise": self._noise.frames(start, start + n)}
            if self.source is not None:
                with clock.stage("invert"):  # EdiDub: the source crops' latents walked back to the first step
                    source_audio = self._source_audio.frames(start, start + n)  # (n, T, C_a)
                    source_tokens = branch_tokens(self.model.habit, source_audio, self._v, (Branch.FULL,),
                                                  self.device, self.dtype)
                    start_latents = {"init_latents": invert_clip(
                        self._denoiser, ClipConditions(masked, mask, app, source_tokens), clean, self.sampler,
                        self.device, self.dtype, should_stop=should_stop)}
            with clock.stage("audio"):  # branch -> (n, T', C_cross) tokens, checked against the latents
                conditions = clip_conditions(self.model.habit, audio, self._v, masked, mask, app,
                                             self.sampler.guidance.branches, self.device, self.dtype,
                                             known=clean if self.sampler.keep_known else None)
            with clock.stage("sample"):
                latents = denoise_chunk(self._denoiser, conditions, self.sampler, **start_latents,
                                        device=self.device, dtype=self.dtype, on_step=on_step,
                                        should_stop=should_stop)
                check_finite(latents, "latents", start, self.dtype)
            with clock.stage("vae_decode"):
                images = decode_latents(vae, latents)  # (n, 3, S, S) in [0, 1]
                check_finite(images, "decoded frames", start, self.dtype)
        return tensor_to_crops(images)


def as_chunk_model(model, sampling: SamplingOptions, runtime: RuntimeOptions) -> ChunkModel:
    """The :class:`ChunkModel` of a model.

    Args:
        model: A :class:`ChunkModel` (returned as it is), a ``StableDub`` model, or a checkpoint path (loaded on
            ``runtime.device`` in ``runtime.dtype``).
        sampling: Sampler settings.
        runtime: Device and dtype.

    Returns:
        The :class:`ChunkModel`.
    """
    if hasattr(model, "generate") and hasattr(model, "begin"):
        return model
    if isinstance(model, (str, Path)):
        model = load_checkpoint(model, device=runtime.device, dtype=torch_dtype(runtime.dtype, runtime.device))
    return StableDubChunkModel(model, sampling, runtime)

