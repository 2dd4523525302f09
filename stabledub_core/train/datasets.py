"""Training datasets over a preprocessed folder (``train preprocess`` output): stage 1 frames, stage 2 clips.

Both read the shards memory-mapped (``np.load(mmap_mode="r")``, opened lazily in each process, so a ``DataLoader``
worker never pickles arrays) and index them from ``manifest.json`` only: building the index reads no array.
Everything a sample holds comes from the arrays the pipeline's own functions wrote (crops by ``crop_frame``, Mc,
Mu and landmarks from ``CropPlan``, 16 kHz audio from ``load_encoder_input``) and is conditioned by the functions
inference uses (``masks.exposure``, ``masks.reference.choose_reference``, ``pipeline.conditions.habit_segment``,
``masks.lips.lip_crops``).

Value conventions (as the model's inputs at inference, ``pipeline.chunk_model``):

- images are ``(3, S, S)`` float32 in **[0, 1]** (what ``models.vae.encode_frames`` and the habit module take);
- ``mask`` is the inpainting mask, float32 in [0, 1], 1 = generate: Mu (stored as round(Mu * 255), so read back
  to 1/255) with the exposure patches set to 0 (``masks.exposure.apply``); ``masked`` is the crop with every pixel
  where ``mask > 0`` set to 0, exactly ``np.where(masks > 0, 0, crops)`` of ``StableDubChunkModel.generate``;
  ``to_latent(mask, factor)`` gives the latent mask as at inference;
- ``mc`` is the coarse mouth mask (0/1) of L_LCF (eq. 6).

Randomness (exposure patches, appearance frame, habit segment) is drawn from ``np.random.default_rng([seed, epoch,
index, stream])``: a sample is a pure function of (seed, epoch, index, progress). The training loop sets
``dataset.set_epoch(e)`` and ``dataset.set_progress(p)``; as ``DataLoader`` workers hold a copy of the dataset, with
``persistent_workers=True`` (or to change the progress inside an epoch) index the dataset with a
:class:`SampleKey` ``(index, epoch, progress)`` instead (a sampler can yield them), which overrides both.

Frame status: the shards keep landmarks (NaN where no face was tracked) but not the tracker's status; a frame with
finite landmarks counts as ``DETECTED``, else ``MISSING`` (interpolated frames therefore count as detected, which
only changes ``choose_reference``'s preference for detected frames). Stage 1 indexes every frame of every kept clip;
with ``--min-face-coverage`` below 1 a frame without a face is a sample too (its Mc is empty), and a clip too short
for ``exclude_radius`` raises ``NoReferenceFrameError`` (``train preprocess`` keeps clips of 2 s and more by default).

Stage 2 audio: the dataset gives the raw 16 kHz segment, not features, because the audio encoder is trained (its
layer mix) and runs in the training step. The segment is the very slice ``StableDubChunkModel._audio_context``
gives the encoder for the clip's frame times (:func:`~stabledub_core.models.audio_context.audio_segment`: the frames' span plus ``context_seconds + 1``
s each side, clamped to the clip's audio), with the frame times relative to the segment's start; the training step
calls ``encoder(audio[:audio_length])`` and ``frame_audio_context(features, encoder.frame_rate, frame_times, ...)``
as inference does. Segments are zero-padded to one length (:attr:`Stage2Dataset.audio_samples`) so the default
collate stacks them; ``audio_length`` is the real length (encode ``audio[i, :audio_length[i]]`` for inference's
exact input; a batched encode of the padded segments differs only near the padded end).

Stage 2 lip habit: inference cuts the lip crops from the full source frames with full-frame landmarks
(``stages.habit_lip_crops``); the shards hold only the model-resolution crops and landmarks in crop coordinates,
so the dataset calls the same ``lip_crops(crops, landmarks, lip_size)`` on the stored crops. Crop coordinates are a
scale + shift of frame coordinates within a span, and the lip crop's side is a multiple of the (median)
inter-ocular distance, so the two cut the same region of the face; they differ by resampling (the crop was already
resampled to S) and, for a segment crossing spans, by the spans' slightly different scales (the median measure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from stabledub_core.errors import DatasetNotFoundError, ManifestError, OptionError
from stabledub_core.face.gaps import TrackStatus
from stabledub_core.masks.exposure import (
    DEFAULT_GRID,
    ExposedPatches,
    ExposureSchedule,
    apply,
    from_schedule,
    to_latent,
)
from stabledub_core.masks.lips import lip_crops
from stabledub_core.masks.reference import ReferenceStrategy, choose_reference
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE
from stabledub_core.models.audio_context import SEGMENT_MARGIN, audio_segment
from stabledub_core.models.config import StableDubConfig, get_preset
from stabledub_core.models.sync_scorer import MAX_OFFSET, SyncScorerConfig, audio_windows, stack_centres
from stabledub_core.pipeline.conditions import habit_segment
from stabledub_core.train.latent_cache import open_cache
from stabledub_core.train.preprocess import FPS, MANIFEST, SAMPLES_PER_FRAME, SHARDS

# Streams of a sample's random generator (one per draw, so changing one never shifts the others)
_EXPOSURE, _REFERENCE, _HABIT, _STEP, _NEGATIVES = 0, 1, 2, 3, 4


class SampleKey(NamedTuple):
    """An index with its epoch and training progress (overrides the dataset's ``set_epoch`` / ``set_progress``)."""

    index: int
    epoch: int
    progress: float


def _image(array: np.ndarray) -> torch.Tensor:
    """``(..., S, S, 3)`` uint8 -> ``(..., 3, S, S)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, -3))).float().div_(255)


@dataclass
class _Clip:
    shard: str
    frame_offset: int
    frames: int
    span_offset: int
    spans: int
    audio_offset: int
    audio_samples: int
    path: str


class PreprocessedData:
    """The manifest of a preprocessed folder and its shards, memory-mapped on first use (per process).

    Args:
        root: ``train preprocess``'s OUT_DIR.

    Raises:
        DatasetNotFoundError: No manifest in ``root``.
        ManifestError: The manifest is unreadable or lists no kept clip.
    """

    def __init__(self, root):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DatasetNotFoundError(f"no {MANIFEST} in {str(self.root)!r}: give the OUT_DIR of `train preprocess`")
        try:
            manifest = json.loads(path.read_text())
            self.settings = manifest["settings"]
            self.clips = [_Clip(c["shard"], int(c["frame_offset"]), int(c["frames"]), int(c["span_offset"]),
                                int(c["spans"]), int(c["audio_offset"]), int(c["audio_samples"]), c["path"])
                          for c in manifest["clips"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"{str(path)!r} is not a preprocessing manifest ({error})") from error
        if not self.clips:
            raise ManifestError(f"{str(path)!r} lists no kept clip: preprocess more videos or relax the filters")
        self.span_length = int(self.settings.get("span_length", 16))
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._status: dict[int, np.ndarray] = {}
        self.latent_root: Path | None = None

    def use_latents(self, folder: Path) -> None:
        """Read cached latents from ``folder`` (``train.latent_cache.open_cache``)."""
        self.latent_root = Path(folder)

    def latents(self, clip: int, name: str, indices) -> torch.Tensor:
        """``(n, C, h, w)`` float32 cached ``latents`` or ``masked_latents`` of frames of a clip."""
        c = self.clips[clip]
        key = f"latent:{name}"
        arrays = self._arrays.setdefault(c.shard, {})
        if key not in arrays:
            arrays[key] = np.load(self.latent_root / c.shard / f"{name}.npy", mmap_mode="r")
        rows = arrays[key][c.frame_offset + np.asarray(indices, np.int64)]
        return torch.from_numpy(rows.astype(np.float32))

    def __getstate__(self):  # workers reopen the memory maps themselves
        state = dict(self.__dict__)
        state["_arrays"], state["_status"] = {}, {}
        return state

    def array(self, shard: str, name: str) -> np.ndarray:
        arrays = self._arrays.setdefault(shard, {})
        if name not in arrays:
            arrays[name] = np.load(self.root / SHARDS / shard / f"{name}.npy", mmap_mode="r")
        return arrays[name]

    def frames(self, clip: int, name: str, start: int, stop: int) -> np.ndarray:
        """Per-frame array ``name`` of frames ``[start, stop)`` of a clip (a memory-mapped view)."""
        c = self.clips[clip]
        return self.array(c.shard, name)[c.frame_offset + start:c.frame_offset + stop]

    def take(self, clip: int, name: str, indices) -> np.ndarray:
        c = self.clips[clip]
        return self.array(c.shard, name)[c.frame_offset + np.asarray(indices, np.int64)]

    def mu(self, clip: int, frame: int) -> np.ndarray:
        """``(S, S)`` float32 Mu of the span holding a frame, in [0, 1] (1/255 steps)."""
        c = self.clips[clip]
        return self.array(c.shard, "mu")[c.span_offset + frame // self.span_length].astype(np.float32) / 255

    def audio(self, clip: int) -> np.ndarray:
        c = self.clips[clip]
        return self.array(c.shard, "audio")[c.audio_offset:c.audio_offset + c.audio_samples]

    def status(self, clip: int) -> np.ndarray:
        """``(F,)`` ``TrackStatus`` of a clip's frames: DETECTED where landmarks are finite, else MISSING (cached)."""
        if clip not in self._status:
            marks = self.frames(clip, "landmarks", 0, self.clips[clip].frames)[:, 0, 0]
            self._status[clip] = np.where(np.isfinite(marks), TrackStatus.DETECTED, TrackStatus.MISSING).astype(
                np.int64)
        return self._status[clip]


class _Indexed(Dataset):
    """Samples numbered clip after clip: ``starts`` holds the first index of each clip."""

    stride = 1  # frames between the first frames of consecutive samples of a clip
    starts: np.ndarray  # (clips + 1,) first dataset index of each clip, set by the subclass

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(clip, first frame within the clip) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        clip = int(np.searchsorted(self.starts, index, side="right")) - 1
        return clip, int(index - self.starts[clip]) * self.stride

    def _key(self, key) -> SampleKey:
        if isinstance(key, tuple):
            key = SampleKey(*key)
            return SampleKey(int(key.index), int(key.epoch), float(key.progress))
        return SampleKey(int(key), self.epoch, self.progress)

    epoch, progress = 0, 0.0


class _Base(_Indexed):
    """Shared options and randomness of the two stages."""

    def __init__(self, root, preset, exposure: ExposureSchedule | None, grid: int, seed: int,
                 reference: str, exclude_radius: int, latent_cache: str | None = None):
        self.data = PreprocessedData(root)
        if isinstance(preset, StableDubConfig):
            self.config = preset
        else:
            self.config = get_preset(preset or self.data.settings.get("preset", "sd15"))
        self.size = int(self.data.settings.get("resolution", self.config.resolution))
        if self.size != self.config.resolution:
            raise OptionError(f"the data was preprocessed at {self.size} pixels but preset {self.config.preset!r} "
                              f"works at {self.config.resolution}: preprocess with --preset {self.config.preset}")
        self.latent_factor = 2 ** (len(self.config.vae.block_out_channels) - 1)
        self.exposure, self.grid, self.seed = exposure, int(grid), int(seed)
        self.reference = ReferenceStrategy(reference)
        if exclude_radius < 0:
            raise OptionError(f"exclude_radius must be >= 0, got {exclude_radius}")
        self.exclude_radius = int(exclude_radius)
        self.epoch, self.progress = 0, 0.0
        self.latent_cache = latent_cache
        if latent_cache is not None:
            self.data.use_latents(open_cache(root, latent_cache, {c.shard for c in self.data.clips}))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (sets the exposure rate through the schedule)."""
        if not 0 <= progress <= 1:
            raise OptionError(f"training progress must be in [0, 1], got {progress}")
        self.progress = float(progress)

    def exposure_rate(self, progress: float) -> float:
        """Fraction of Mu's patches exposed at ``progress`` (0 without a schedule)."""
        if self.exposure is None:
            return 0.0
        return self.exposure.rate(round(progress * 1_000_000), 1_000_001)

    def _seed(self, key: SampleKey, stream: int) -> list[int]:
        return [self.seed, key.epoch, key.index, stream]

    def sample_seed(self, key: SampleKey) -> int:
        """The seed of the training step's draws for this sample (noise, timestep, condition dropout): a function
        of (seed, epoch, index) only, so they do not depend on the batch or the process it lands in."""
        return int(np.random.default_rng(self._seed(key, _STEP)).integers(2 ** 63 - 1))

    def _common(self, key: SampleKey, mask: np.ndarray, mc: np.ndarray, patches: ExposedPatches, rate: float,
                clip: int, reference: int) -> dict:
        """The entries both stages share: latent-size masks, patches, the step's seed, the cached latents."""
        item = {
            "mask_latent": torch.from_numpy(to_latent(mask, self.latent_factor)),
            "mc_latent": torch.from_numpy(to_latent(mc, self.latent_factor)),
            "exposed": torch.from_numpy(patches.to_array()), "exposure_rate": torch.tensor(rate, dtype=torch.float32),
            "sample_seed": torch.tensor(self.sample_seed(key)), "clip": torch.tensor(clip),
            "appearance_frame": torch.tensor(reference),
        }
        if self.latent_cache is not None:
            item["appearance_latent"] = self.data.latents(clip, "latents", [reference])[0]
            item["masked_cached"] = torch.tensor(not patches.to_array().any())
        return item

    def _patches(self, key: SampleKey, mu: np.ndarray) -> tuple[ExposedPatches, float]:
        """The exposed patches of Mu drawn for this sample (``from_schedule`` at the progress's rate) and the rate."""
        rate = self.exposure_rate(key.progress)
        return from_schedule(mu, self.grid, rate, np.random.default_rng(self._seed(key, _EXPOSURE))), rate

    def _appearance(self, key: SampleKey, clip: int, target: tuple[int, int]) -> int:
        landmarks = self.data.frames(clip, "landmarks", 0, self.data.clips[clip].frames)
        seed = int(np.random.default_rng(self._seed(key, _REFERENCE)).integers(2 ** 31))
        return choose_reference(landmarks, self.data.status(clip), self.reference, seed, target=target,
                                exclude_radius=self.exclude_radius)


class Stage1Dataset(_Base):
    """Single frames for stage 1 (spatial layers): crop, Mc, Mu, exposed Mu, masked crop, appearance frame.

    Args:
        root: ``train preprocess``'s OUT_DIR.
        preset: Model preset (default: the one the data was preprocessed for).
        exposure: The progressive exposure schedule (default 70% -> 0% linear; None: no exposure).
        grid: Patches per crop side of the exposure grid.
        seed: Seed of every draw.
        reference: ``ReferenceStrategy`` of the appearance frame (default ``random``).
        exclude_radius: Frames within this distance of the target cannot be its appearance frame.

    A sample (``dataset[i]`` or ``dataset[SampleKey(i, epoch, progress)]``) is a dict:

    - ``crop`` (3, S, S) float32 [0, 1]; ``masked`` (3, S, S) float32 [0, 1] (0 where ``mask > 0``);
      ``appearance`` (3, S, S) float32 [0, 1];
    - ``mc``, ``mu``, ``mask`` (1, S, S) float32 [0, 1] (Mc, Mu, Mu with the exposed patches at 0);
    - ``exposed`` (G, G) bool; ``exposure_rate`` float32 ();
    - ``clip``, ``frame``, ``appearance_frame`` int64 () (clip in the manifest, frames within it);
    - ``mask_latent``, ``mc_latent`` (1, h, w) float32 {0, 1}: ``mask`` and Mc at latent size (``to_latent``, as
      inference); ``sample_seed`` int64 (): the seed of the training step's draws for this sample;
    - with ``latent_cache`` (a VAE fingerprint, ``train.latent_cache``): ``latent``, ``masked_latent`` (Mu masked, no
      exposure), ``appearance_latent`` (C, h, w) float32 and ``masked_cached`` bool () (no patch exposed: the cached
      masked latent is this sample's).
    """

    def __init__(self, root, preset: str | None = None, exposure: ExposureSchedule | None = ExposureSchedule(),
                 grid: int = DEFAULT_GRID, seed: int = 0, reference: str = ReferenceStrategy.RANDOM.value,
                 exclude_radius: int = 8, latent_cache: str | None = None):
        super().__init__(root, preset, exposure, grid, seed, reference, exclude_radius, latent_cache)
        self.starts = np.cumsum([0] + [c.frames for c in self.data.clips])  # (clips + 1,) first index of each clip

    def __getitem__(self, key) -> dict:
        key = self._key(key)
        clip, frame = self.locate(key.index)
        crop = np.asarray(self.data.frames(clip, "crops", frame, frame + 1)[0])  # (S, S, 3)
        mu = self.data.mu(clip, frame)
        patches, rate = self._patches(key, mu)
        mask = apply(mu, patches)  # (S, S)
        reference = self._appearance(key, clip, (frame, frame + 1))
        masked = np.where((mask > 0)[..., None], 0, crop).astype(np.uint8)
        mc = self.data.frames(clip, "mc", frame, frame + 1).astype(np.float32)  # (1, S, S)
        item = {
            "crop": _image(crop), "masked": _image(masked),
            "appearance": _image(self.data.frames(clip, "crops", reference, reference + 1)[0]),
            "mc": torch.from_numpy(mc), "mu": torch.from_numpy(mu)[None], "mask": torch.from_numpy(mask)[None],
            "frame": torch.tensor(frame),
            **self._common(key, mask[None], mc, patches, rate, clip, reference),
        }
        if self.latent_cache is not None:
            item["latent"] = self.data.latents(clip, "latents", [frame])[0]
            item["masked_latent"] = self.data.latents(clip, "masked_latents", [frame])[0]
        return item


class Stage2Dataset(_Base):
    """Clips of ``num_frames`` consecutive frames for stage 2: crops, masks, audio segment, appearance, lip habit.

    Args:
        root: ``train preprocess``'s OUT_DIR.
        preset: Model preset (default: the one the data was preprocessed for); gives ``num_frames`` F,
            ``habit.lip_size`` and ``audio.context_seconds``.
        stride: Frames between clip starts (default F: one clip per crop span, the windows inference samples).
        habit_frames: K, lip crops of the habit segment (inference's default 8).
        exposure: Exposure schedule (default None: the mask is Mu, as at inference without an occluder); one draw
            per clip, the same patches on every frame.
        grid, seed, reference: As :class:`Stage1Dataset`.
        exclude_radius: Frames within this distance of the clip cannot be its appearance frame.

    A sample is a dict:

    - ``crops``, ``masked`` (F, 3, S, S) float32 [0, 1]; ``appearance`` (3, S, S) float32 [0, 1];
    - ``mc``, ``mu``, ``mask`` (F, 1, S, S) float32 [0, 1];
    - ``audio`` (A,) float32 16 kHz segment (zero-padded to ``audio_samples``), ``audio_length`` int64 (),
      ``audio_start`` int64 () (its first sample in the clip's audio), ``frame_times`` (F,) float64 (s, in the
      segment);
    - ``lips`` (K, 3, L, L) float32 [0, 1] (L = ``habit.lip_size``), ``habit_frames`` (K,) int64 (shuffled order);
    - ``landmarks`` (F, 478, 2), ``appearance_landmarks`` (478, 2) float32 in crop pixels, NaN where no face was
      tracked (the sync loss cuts its lip crops with them, ``train.sync_loss``);
    - ``exposed`` (G, G) bool, ``exposure_rate`` float32 (); ``clip``, ``start``, ``appearance_frame`` int64 ();
    - ``mask_latent``, ``mc_latent`` (F, 1, h, w), ``sample_seed``: as :class:`Stage1Dataset`;
    - with ``latent_cache``: ``latents``, ``masked_latents`` (F, C, h, w), ``appearance_latent`` (C, h, w),
      ``masked_cached`` bool ().
    """

    def __init__(self, root, preset: str | None = None, stride: int | None = None, habit_frames: int = 8,
                 exposure: ExposureSchedule | None = None, grid: int = DEFAULT_GRID, seed: int = 0,
                 reference: str = ReferenceStrategy.RANDOM.value, exclude_radius: int = 0,
                 latent_cache: str | None = None):
        super().__init__(root, preset, exposure, grid, seed, reference, exclude_radius, latent_cache)
        self.length = int(self.config.num_frames)
        self.stride = int(stride or self.length)
        if self.stride < 1 or habit_frames < 1:
            raise OptionError(f"stride and habit_frames must be at least 1, got {self.stride} and {habit_frames}")
        self.habit_frames = int(habit_frames)
        self.lip_size = int(self.config.habit.lip_size)
        self.context_seconds = float(self.config.audio.context_seconds)
        margin = self.context_seconds + SEGMENT_MARGIN
        self.audio_samples = int(((self.length - 1) / FPS + 2 * margin) * ENCODER_SAMPLE_RATE) + 2
        counts = [max((c.frames - self.length) // self.stride + 1, 0) for c in self.data.clips]
        self.starts = np.cumsum([0] + counts)

    def frame_times(self, start: int) -> np.ndarray:
        """``(F,)`` times (s) of the clip's frames in its clip's audio (frame k at k / 25 s)."""
        return (start + np.arange(self.length, dtype=np.float64)) / FPS

    def __getitem__(self, key) -> dict:
        key = self._key(key)
        clip, start = self.locate(key.index)
        stop = start + self.length
        crops = np.asarray(self.data.frames(clip, "crops", start, stop))  # (F, S, S, 3)
        mus = np.stack([self.data.mu(clip, k) for k in range(start, stop)])  # (F, S, S)
        patches, rate = self._patches(key, mus[0])
        masks = np.stack([apply(mu, patches) for mu in mus])  # (F, S, S)
        masked = np.where((masks > 0)[..., None], 0, crops).astype(np.uint8)
        wave = self.data.audio(clip)
        times = self.frame_times(start)
        a, b = audio_segment(len(wave), times, self.context_seconds)
        audio = np.zeros(self.audio_samples, np.float32)
        audio[:b - a] = wave[a:b]
        status = self.data.status(clip)
        k = min(self.habit_frames, len(status))
        habit_seed = int(np.random.default_rng(self._seed(key, _HABIT)).integers(2 ** 31))
        picks = habit_segment(status, k, habit_seed, avoid=(start, stop))
        lips = lip_crops(np.asarray(self.data.take(clip, "crops", picks)),
                         np.asarray(self.data.take(clip, "landmarks", picks)), self.lip_size)
        reference = self._appearance(key, clip, (start, stop))
        mc = self.data.frames(clip, "mc", start, stop).astype(np.float32)  # (F, S, S)
        item = {
            "crops": _image(crops), "masked": _image(masked),
            "appearance": _image(self.data.frames(clip, "crops", reference, reference + 1)[0]),
            "mc": torch.from_numpy(mc)[:, None], "mu": torch.from_numpy(mus)[:, None],
            "mask": torch.from_numpy(np.ascontiguousarray(masks))[:, None],
            "audio": torch.from_numpy(audio), "audio_length": torch.tensor(b - a),
            "audio_start": torch.tensor(a), "frame_times": torch.from_numpy(times - a / ENCODER_SAMPLE_RATE),
            "lips": _image(lips), "habit_frames": torch.from_numpy(picks), "start": torch.tensor(start),
            "landmarks": torch.from_numpy(np.asarray(self.data.frames(clip, "landmarks", start, stop), np.float32)),
            "appearance_landmarks": torch.from_numpy(
                np.asarray(self.data.frames(clip, "landmarks", reference, reference + 1)[0], np.float32)),
            **self._common(key, masks, mc, patches, rate, clip, reference),
        }
        item["mask_latent"], item["mc_latent"] = item["mask_latent"][:, None], item["mc_latent"][:, None]
        if self.latent_cache is not None:
            item["latents"] = self.data.latents(clip, "latents", range(start, stop))
            item["masked_latents"] = self.data.latents(clip, "masked_latents", range(start, stop))
        return item


def negative_shifts(negatives: int, min_shift: int) -> np.ndarray:
    """The shifts (frames) an in-clip negative of ``SyncDataset`` may have: ``min_shift``..``MAX_OFFSET`` either way.

    Raises:
        OptionError: more negatives than shifts, or a smallest shift below 1.
    """
    magnitudes = np.arange(int(min_shift), MAX_OFFSET + 1)
    shifts = np.concatenate([-magnitudes[::-1], magnitudes])
    if negatives < 0 or min_shift < 1 or negatives > len(shifts):
        raise OptionError(f"--sync-negatives {negatives} with --sync-min-shift {min_shift}: there are {len(shifts)} "
                          f"shifts of {min_shift}..{MAX_OFFSET} frames either way; ask for at most that many (and a "
                          "smallest shift of at least 1)")
    return shifts


class SyncDataset(_Indexed):
    """Aligned lip-crop stacks and their speech for the sync scorer (``models.sync_scorer``).

    Args:
        root: ``train preprocess``'s OUT_DIR (25 fps).
        config: the scorer's config (stack length, lip size).
        seed: seed of the per-sample draws.
        negatives: in-clip negatives per sample (``--sync-negatives``): the speech of the sample's own clip under
            the stack shifted by ``min_shift``..``MAX_OFFSET`` frames either way, drawn without repeats; 0: none.
        min_shift: the smallest shift (frames) of a negative.

    A sample is a dict: ``lips`` (F_s, 3, L, L) float32 [0, 1] (``lip_crops`` on the stored crops, as the
    stage-2 habit segment), ``audio`` (A,) float32 (the 16 kHz speech under the stack, ``audio_windows``),
    ``sample_seed``, ``clip``, ``start``; with negatives also ``negative_audio`` (N, A) and ``negative_shifts``
    (N,) int64 frames (> 0: later speech). Only stacks whose frames all have a tracked face are samples.
    """

    def __init__(self, root, config: SyncScorerConfig, seed: int = 0, negatives: int = 0, min_shift: int = 2):
        self.data = PreprocessedData(root)
        if config.fps != FPS:
            raise OptionError(f"the scorer works at {config.fps} fps but the data is at {FPS}")
        self.shifts = negative_shifts(negatives, min_shift)  # the shifts a negative may have
        self.config, self.seed, self.negatives = config, int(seed), int(negatives)
        self.valid = []  # per clip: the first frames of stacks with a face in every frame
        for clip in range(len(self.data.clips)):
            detected = (self.data.status(clip) == TrackStatus.DETECTED).astype(np.int64)
            runs = np.convolve(detected, np.ones(config.frames, np.int64), mode="valid")  # faces per stack
            self.valid.append(np.flatnonzero(runs == config.frames))
        self.starts = np.cumsum([0] + [len(v) for v in self.valid])

    def __getitem__(self, key) -> dict:
        key = self._key(key)
        clip, position = self.locate(key.index)
        start = int(self.valid[clip][position])
        stop = start + self.config.frames
        lips = lip_crops(np.asarray(self.data.frames(clip, "crops", start, stop)),
                         np.asarray(self.data.frames(clip, "landmarks", start, stop)), self.config.lip_size)
        centre = stack_centres(np.array([start]), self.config)
        audio = audio_windows(self.data.audio(clip), centre, self.config.audio_samples)[0]
        seed = int(np.random.default_rng([self.seed, key.epoch, key.index, _STEP]).integers(2 ** 63 - 1))
        item = {"lips": _image(lips), "audio": torch.from_numpy(audio), "sample_seed": torch.tensor(seed),
                "clip": torch.tensor(clip), "start": torch.tensor(start)}
        if self.negatives:
            rng = np.random.default_rng([self.seed, key.epoch, key.index, _NEGATIVES])
            shifts = rng.choice(self.shifts, self.negatives, replace=False)
            windows = audio_windows(self.data.audio(clip), stack_centres(start + shifts, self.config),
                                    self.config.audio_samples)  # (N, A)
            item.update(negative_audio=torch.from_numpy(windows), negative_shifts=torch.from_numpy(shifts))
        return item


__all__ = ["PreprocessedData", "SampleKey", "Stage1Dataset", "Stage2Dataset", "SyncDataset", "SAMPLES_PER_FRAME",
           "negative_shifts"]
