"""Preprocessing for training: a folder tree of talking videos -> filtered 25 fps clips in shards, with a report.

``python -m stabledub_core train preprocess IN_DIR OUT_DIR`` (``cli/train.py``) runs :func:`preprocess`. Per clip
(every video file under ``IN_DIR``, in sorted order of its relative path):

1. The video is resampled to 25 fps (:class:`ResampledSource`: output frame ``k`` at ``k / 25`` s shows the source
   frame nearest in time), as in the paper (Sec. IV-A: "all video clips are first resampled to 25 fps").
2. The face is tracked with the pipeline's own stage (``pipeline.stages.track_faces``) on the 25 fps frames, while
   the bundled face detector counts the faces every ``face_count_every`` frames.
3. The filters of the paper's Fig. 5 (:data:`FILTERS`, options in :class:`FilterOptions`) run in order; the first
   that fails drops the clip, and its name, measured value, limit and a sentence are recorded. The optional sync
   filter (``--sync-scorer``, a ``models.sync_scorer`` checkpoint) runs last, on the kept clip's crops.
4. A kept clip is cropped exactly as inference crops it: crop spans from ``masks.crop_spans.CropPlan`` (span length
   = the preset's ``num_frames``, crop size = its ``resolution``), crops by ``pipeline.stages.crop_frame``, Mu from
   the spans' ``union_mask``, Mc from ``CropSpan.coarse_masks``, landmarks in crop coordinates from the spans, and
   the 16 kHz mono audio from ``media.audio.load_encoder_input`` (cut or padded to 640 samples a frame).

Output folder::

    OUT_DIR/manifest.json         settings, shards, every kept clip (shard and offsets) and every dropped clip
    OUT_DIR/report.json           clips and hours each filter kept and dropped, and why (also printed as a table)
    OUT_DIR/shards/shard-00000/   several clips, each array one .npy file (memory-mappable), clips back to back:
        crops.npy         (N, S, S, 3) uint8 RGB crops at the preset's resolution S
        mc.npy            (N, S, S) uint8 coarse mouth mask Mc of each frame (0/1)
        landmarks.npy     (N, 478, 2) float32 landmarks in crop coordinates (NaN where no face was tracked)
        angles.npy        (N, 3) float32 head yaw, pitch, roll in degrees (``train.head_pose``)
        source_index.npy  (N,) int64 source video frame shown by each 25 fps frame
        mu.npy            (M, S, S) uint8 union mask Mu of each crop span, round(Mu * 255)
        boxes.npy         (M, 4) int64 crop box (x0, y0, x1, y1) of each span in source pixels
        audio.npy         (A,) float32 16 kHz mono; frame k of a clip owns samples [640 k, 640 (k + 1))
    OUT_DIR/staging/              finished clips not yet packed into a shard (transient)

A clip's frames are ``crops[frame_offset : frame_offset + frames]`` of its shard, its spans ``mu[span_offset :
span_offset + spans]`` (frame ``k`` of the clip lies in span ``k // span_length``, the spans are aligned to the
preset's window), its audio ``audio[audio_offset : audio_offset + audio_samples]``.

Why uint8 ``.npy`` crops and not an mp4 of crops: they are exactly the pipeline's crops (no second lossy encoding;
the tests compare them bit for bit with ``CropPlan`` + ``crop_frame``), any frame is one memory-mapped slice
away (random access for stage 1's single images, no decoder in the data loader). The price is storage: S * S * 3
bytes a frame, 49 KB for ``tiny`` (128), 786 KB for ``sd15`` (512), i.e. about 16 TB for the paper's 225 hours at
512. At that scale the latent cache (VAE latents, 4 x 64 x 64, 32 KB a frame in float16; not written yet) is the
form to keep. Mu is stored per span (its frames share it) and quantised to 1/255; Mc is binary.

Resumable: a clip is finished once its result is staged (a folder or JSON file renamed into ``staging/`` in one
step) and its key (relative path, size, modification time) is then never processed again; a rerun packs staged
clips instead of recomputing them, and a clip whose file changed is processed anew (its old frames stay,
unreferenced, in their shard). Shards are written to a
temporary folder and renamed, and ``manifest.json`` is rewritten atomically (temporary file + rename) after each
shard, so a crash (or Ctrl-C) at any point leaves no half entry: unreferenced shards and temporary folders are
removed on the next run. ``workers > 1`` runs clips in parallel processes (each with its own face tracker) and
gives the same manifest as one worker (results are taken in clip order).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import types
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from stabledub_core.errors import (
    DatasetNotFoundError,
    EmptyMediaError,
    ManifestError,
    MediaError,
    NoFaceError,
    OptionError,
)
from stabledub_core.face.indices import POSE, face_size
from stabledub_core.face.landmarker import FaceCounter
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.crop_spans import CropPlan
from stabledub_core.masks.lips import lip_crops
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE, fit_samples, load_encoder_input
from stabledub_core.media.video import Run, VideoFrame, VideoReader
from stabledub_core.models.config import get_preset
from stabledub_core.models.sync_scorer import load_scorer, sync_offsets
from stabledub_core.pipeline import stages
from stabledub_core.pipeline.options import MaskOptions, StageOptions, option
from stabledub_core.train.head_pose import head_angles

FPS = 25  # every clip is resampled to 25 fps (paper, Sec. IV-A)
SAMPLES_PER_FRAME = ENCODER_SAMPLE_RATE // FPS  # 640 samples of 16 kHz audio per frame
FORMAT_VERSION = 1
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ts"})
DEFAULT_SHARD_FRAMES = 2048  # frames per shard (~82 s of video; 1.6 GB of crops at 512, 100 MB at 128)
MANIFEST = "manifest.json"
REPORT = "report.json"
SHARDS = "shards"
STAGING = "staging"
TMP = ".tmp"
# The arrays of a shard: name -> (per "frame" or per "span" or "audio" sample, dtype, description)
ARRAYS = {
    "crops": ("frame", "uint8", "(N, S, S, 3) RGB crops at the preset's resolution"),
    "mc": ("frame", "uint8", "(N, S, S) coarse mouth mask Mc, 0/1"),
    "landmarks": ("frame", "float32", "(N, 478, 2) landmarks in crop coordinates, NaN without a face"),
    "angles": ("frame", "float32", "(N, 3) head yaw, pitch, roll in degrees"),
    "source_index": ("frame", "int64", "(N,) source video frame of each 25 fps frame"),
    "mu": ("span", "uint8", "(M, S, S) union mask Mu of each span, round(Mu * 255)"),
    "boxes": ("span", "int64", "(M, 4) crop box x0, y0, x1, y1 of each span in source pixels"),
    "audio": ("audio", "float32", "(A,) 16 kHz mono, 640 samples a frame"),
}


@dataclass
class FilterOptions(StageOptions):
    """The clip filters of the paper's Fig. 5, each with a paper-like default (the paper gives no numbers).

    Head angles are measured by ``train.head_pose.head_angles``; face size is the larger side of the landmarks'
    bounding box (``face.indices.face_size``); motion compares consecutive 25 fps frames.
    """

    require_audio: bool = option(True, "drop clips without a sound track (stage-2 data; use --no-require-audio "
                                       "for stage-1 image data)")
    min_audio_dbfs: float = option(-50.0, "drop clips whose sound is quieter than this RMS level in dBFS (a "
                                          "silent track is no speech)", min=-200.0, max=0.0)
    min_seconds: float = option(2.0, "drop clips shorter than this (at 25 fps; a stage-2 sample needs 16 frames "
                                     "and a disjoint lip-habit segment)", min=0.0, max=36000.0)
    face_count_every: int = option(5, "count the faces every this many frames; the clip is dropped when a count "
                                      "finds more than one (more people in view)", min=1, max=10000)
    min_face_coverage: float = option(1.0, "drop clips where the face is tracked in fewer than this part of the "
                                           "frames", min=0.0, max=1.0)
    min_face_size: float = option(64.0, "drop clips whose face is ever smaller than this many pixels (the larger "
                                        "side of the landmarks' box; low clarity)", min=0.0, max=100000.0)
    max_yaw: float = option(30.0, "drop clips whose head ever turns further left/right than this, in degrees",
                            min=0.0, max=180.0)
    max_pitch: float = option(25.0, "drop clips whose head ever tilts further up/down than this, in degrees",
                              min=0.0, max=180.0)
    max_roll: float = option(20.0, "drop clips whose head ever leans further sideways (in the image plane) than "
                                   "this, in degrees", min=0.0, max=180.0)
    max_motion: float = option(0.1, "drop clips whose face ever moves further than this from one frame to the next, "
                                    "in face sizes (excessive head transitions, cuts)", min=0.0, max=100.0)
    max_scale_change: float = option(1.15, "drop clips whose face size ever changes by more than this ratio from one "
                                           "frame to the next (zooms, cuts)", min=1.0, max=100.0)
    sync_scorer: str = option("", "sync scorer checkpoint (`train sync` + `train export`): drop clips whose lips do "
                                  "not follow their speech (empty: no sync filter)")
    min_sync_confidence: float = option(0.3, "with --sync-scorer: drop clips whose sync confidence (LSE-C: median "
                                             "minus smallest distance over shifts of +-15 frames) is lower",
                                        min=0.0, max=100.0)
    max_sync_offset: int = option(2, "with --sync-scorer: drop clips whose best audio shift is more frames than "
                                     "this away from 0 (speech out of step with the video)", min=0, max=15)


# The filters in the order they are applied; a dropped clip names the first one it fails.
FILTERS = ("decode", "audio", "min_seconds", "one_face", "face_coverage", "min_face_size", "head_angle",
           "transitions", "sync")


def filter_limits(options: FilterOptions) -> dict[str, str]:
    """Each filter's limit in words (for the report)."""
    return {
        "decode": "readable video",
        "audio": (f"audio track >= {options.min_audio_dbfs:g} dBFS" if options.require_audio else "not required"),
        "min_seconds": f">= {options.min_seconds:g} s",
        "one_face": "exactly 1 face",
        "face_coverage": f">= {options.min_face_coverage:.0%} of frames",
        "min_face_size": f">= {options.min_face_size:g} px",
        "head_angle": f"|yaw| <= {options.max_yaw:g}, |pitch| <= {options.max_pitch:g}, "
                      f"|roll| <= {options.max_roll:g} deg",
        "transitions": f"motion <= {options.max_motion:g} face/frame, size x <= {options.max_scale_change:g}",
        "sync": (f"LSE-C >= {options.min_sync_confidence:g}, |offset| <= {options.max_sync_offset}"
                 if options.sync_scorer else "not checked"),
    }


# ---------------------------------------------------------------------------------------------- 25 fps source

class ResampledSource:
    """A video source at 25 fps over any source with the ``VideoReader`` interface (a file or a ``FrameSource``).

    Output frame ``k`` (time ``k / 25`` s) shows the source frame nearest in time (ties go to the later one); the
    clip lasts as long as the source (last frame time + one source frame), so a 25 fps source maps onto itself,
    50 fps keeps every other frame and 20 fps repeats every fourth. The mapping is learnt while :meth:`frames`
    streams (the first pass, which ``stages.track_faces`` makes); :meth:`frames_at` then seeks through it.

    Args:
        reader: The source (its ``frames()`` must give times relative to the first frame).
        on_frame: Called as ``on_frame(k, image)`` for every output frame of the first pass (e.g. a face count).
    """

    def __init__(self, reader, on_frame: Callable[[int, np.ndarray], None] | None = None):
        self.reader = reader
        self.on_frame = on_frame
        self.fps = Fraction(FPS)
        self.time_base = 1 / self.fps
        self.size = reader.size
        self.path = reader.path
        self.has_audio = reader.has_audio
        estimate = reader.stream.frames or 0
        self.stream = types.SimpleNamespace(frames=int(round(estimate * FPS / float(reader.fps))))
        self.index = np.zeros(0, np.int64)  # (F,) source frame of every output frame, after frames()

    @property
    def num_frames(self) -> int:
        """Output frames (after :meth:`frames` has run)."""
        return len(self.index)

    def times(self) -> np.ndarray:
        """``(F,)`` float64 seconds: ``k / 25``."""
        return np.arange(self.num_frames) / FPS

    def is_variable_rate(self, tolerance: float = 0.02) -> bool:
        """Always False: the output rate is constant."""
        return False

    def frames(self) -> Iterator[VideoFrame]:
        """Stream the 25 fps frames (decoding the source once) and learn the index mapping."""
        index: list[int] = []
        held: VideoFrame | None = None

        def emit(frame: VideoFrame) -> VideoFrame:
            k = len(index)
            index.append(frame.index)
            if self.on_frame is not None:
                self.on_frame(k, frame.image)
            return VideoFrame(k, k / FPS, None, frame.image)

        for frame in self.reader.frames():
            if held is not None:
                boundary = (held.time + frame.time) / 2  # times nearer to `held` than to `frame`
                while len(index) / FPS < boundary - 1e-9:
                    yield emit(held)
            held = frame
        if held is not None:
            total = int(round((held.time + 1 / float(self.reader.fps)) * FPS))
            while len(index) < max(total, 1):
                yield emit(held)
        self.index = np.asarray(index, np.int64)

    def frames_at(self, runs: Iterable[Run]) -> Iterator[np.ndarray]:
        """The images of runs of output frame indices (seeking in the source through the mapping)."""
        if self.num_frames == 0:
            raise RuntimeError("ResampledSource.frames_at needs a first full pass with frames()")
        source_runs = (Run(int(self.index[i]), 1, 1) for run in runs for i in run.indices())
        yield from self.reader.frames_at(source_runs)


# ---------------------------------------------------------------------------------------------- one clip

@dataclass(frozen=True)
class ClipKey:
    """What identifies a clip between runs: its path relative to IN_DIR, its size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @property
    def id(self) -> str:
        """A file-name-safe digest of the key (the clip's staging name)."""
        return hashlib.sha1(f"{self.path}\0{self.size}\0{self.mtime_ns}".encode()).hexdigest()[:20]

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class ClipTask:
    """Everything a worker needs for one clip (picklable)."""

    source: Path
    key: ClipKey
    staging: Path
    face_model: Path
    crop_size: int
    span_length: int
    options: FilterOptions
    mask_config: MaskConfig


def _drop(key: ClipKey, seconds: float, name: str, value, limit: str, reason: str, measured: dict) -> dict:
    return {**key.as_dict(), "kept": False, "seconds": round(float(seconds), 6), "filter": name, "value": value,
            "limit": limit, "reason": reason, "measured": measured}


def _rounded(value, digits: int = 4):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def measure_track(track, angles: np.ndarray) -> dict:
    """The clip measurements the face filters judge, from its 25 fps track and head angles.

    Args:
        track: The clip's ``FaceTrack``.
        angles: ``(F, 3)`` degrees yaw, pitch, roll (NaN without a face).

    Returns:
        ``face_coverage`` (part of frames tracked), ``min_face_size`` (px), ``max_abs_yaw``, ``max_abs_pitch``,
        ``max_abs_roll`` (degrees), ``max_motion`` (largest median move of the pose landmarks between consecutive
        tracked frames, in face sizes) and ``max_scale_change`` (largest ratio of face sizes between consecutive
        tracked frames); None where no frame has a face.
    """
    valid = track.valid  # (F,)
    out = {"face_coverage": _rounded(valid.mean())}
    if not valid.any():
        return out
    landmarks = track.landmarks  # (F, 478, 2)
    sizes = face_size(landmarks)  # (F,)
    worst = np.nanmax(np.abs(angles[valid]), axis=0) if np.isfinite(angles[valid]).any() else [np.nan] * 3
    out.update(min_face_size=_rounded(sizes[valid].min(), 2), max_abs_yaw=_rounded(worst[0], 2),
               max_abs_pitch=_rounded(worst[1], 2), max_abs_roll=_rounded(worst[2], 2))
    pairs = valid[1:] & valid[:-1]  # (F - 1,) consecutive tracked frames
    if pairs.any():
        moves = np.linalg.norm(landmarks[1:, POSE] - landmarks[:-1, POSE], axis=-1)  # (F - 1, P)
        motion = np.median(moves, axis=-1)[pairs] / sizes[:-1][pairs]
        ratio = sizes[1:][pairs] / sizes[:-1][pairs]
        out.update(max_motion=_rounded(motion.max()), max_scale_change=_rounded(np.maximum(ratio, 1 / ratio).max()))
    else:
        out.update(max_motion=0.0, max_scale_change=1.0)
    return out


def first_failure(measured: dict, options: FilterOptions) -> tuple[str, object, str] | None:
    """``(filter, measured value, sentence)`` of the first face filter a clip fails (after ``one_face``), or None."""
    o = options
    if measured["face_coverage"] < o.min_face_coverage:
        return ("face_coverage", measured["face_coverage"],
                f"the face is tracked in {measured['face_coverage']:.1%} of the frames, fewer than "
                f"{o.min_face_coverage:.0%}")
    if measured["min_face_size"] < o.min_face_size:
        return ("min_face_size", measured["min_face_size"],
                f"the face is {measured['min_face_size']:g} px at its smallest, under {o.min_face_size:g} px")
    for axis, limit in (("yaw", o.max_yaw), ("pitch", o.max_pitch), ("roll", o.max_roll)):
        value = measured[f"max_abs_{axis}"]
        if value is None or value > limit:
            return ("head_angle", {axis: value},
                    f"the head's {axis} reaches {value} degrees, beyond {limit:g}" if value is not None else
                    "the head angle could not be estimated")
    if measured["max_motion"] > o.max_motion:
        return ("transitions", {"motion": measured["max_motion"]},
                f"the face moves {measured['max_motion']:g} face sizes between two frames, more than "
                f"{o.max_motion:g}")
    if measured["max_scale_change"] > o.max_scale_change:
        return ("transitions", {"scale_change": measured["max_scale_change"]},
                f"the face size changes {measured['max_scale_change']:g} times between two frames, more than "
                f"{o.max_scale_change:g}")
    return None


def _audio_level(wave: np.ndarray) -> float:
    """RMS level in dBFS of a waveform (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def _scan(source: ResampledSource) -> None:
    for _ in source.frames():
        pass


def process_clip(task: ClipTask) -> dict:
    """Filter one clip and, if it is kept, stage its arrays (``staging/<id>/``, renamed into place when complete).

    Args:
        task: The clip and the settings.

    Returns:
        The clip's manifest entry: its key, ``kept``, ``seconds`` (at 25 fps), ``measured`` values, and either the
        first failing ``filter`` with its ``value``, ``limit`` and ``reason``, or ``frames``, ``spans``,
        ``audio_samples`` and ``source_fps`` (then the staged folder holds the arrays of :data:`ARRAYS`).
    """
    key, o = task.key, task.options
    limits = filter_limits(o)
    measured: dict = {}
    try:
        reader = VideoReader(task.source)
    except MediaError as error:
        return _drop(key, 0.0, "decode", None, limits["decode"], " ".join(str(error).split()), measured)
    with reader:
        wave = None
        if reader.has_audio:
            try:
                wave, _ = load_encoder_input(task.source, "video")
            except MediaError:
                wave = None
        measured["audio_dbfs"] = None if wave is None else _rounded(max(_audio_level(wave), -999.0), 2)
        audio_ok = wave is not None and measured["audio_dbfs"] >= o.min_audio_dbfs
        counts: list[int] = []
        counter = None
        try:
            if o.require_audio and not audio_ok:
                source = ResampledSource(reader)
                _scan(source)
                seconds = source.num_frames / FPS
                reason = ("the video has no sound track" if not reader.has_audio else
                          "the sound track cannot be decoded" if wave is None else
                          f"the sound is at {measured['audio_dbfs']:g} dBFS, under {o.min_audio_dbfs:g} dBFS")
                return _drop(key, seconds, "audio", measured["audio_dbfs"], limits["audio"], reason, measured)
            counter = FaceCounter(task.face_model)

            def count(k: int, image: np.ndarray) -> None:
                if k % o.face_count_every == 0:
                    counts.append(counter.count(image))

            source = ResampledSource(reader, on_frame=count)
            try:
                track = stages.track_faces(source, task.face_model)
            except NoFaceError:
                track = None
            except EmptyMediaError:
                track = None
                if source.num_frames == 0:
                    raise
        except MediaError as error:
            return _drop(key, 0.0, "decode", None, limits["decode"], " ".join(str(error).split()), measured)
        finally:
            if counter is not None:
                counter.close()
        seconds = source.num_frames / FPS
        measured["seconds"] = _rounded(seconds)
        measured["max_faces_counted"] = max(counts, default=0)
        if seconds < o.min_seconds:
            return _drop(key, seconds, "min_seconds", _rounded(seconds), limits["min_seconds"],
                         f"the clip lasts {seconds:g} s, under {o.min_seconds:g} s", measured)
        if track is None:
            return _drop(key, seconds, "one_face", 0, limits["one_face"], "no face was found in any frame", measured)
        if measured["max_faces_counted"] > 1:
            frame = counts.index(measured["max_faces_counted"]) * o.face_count_every
            return _drop(key, seconds, "one_face", measured["max_faces_counted"], limits["one_face"],
                         f"{measured['max_faces_counted']} faces are in view (frame {frame} at 25 fps)", measured)
        angles = head_angles(track.landmarks, track.frame_size, task.face_model)  # (F, 3)
        measured.update(measure_track(track, angles))
        failure = first_failure(measured, o)
        if failure is not None:
            name, value, reason = failure
            return _drop(key, seconds, name, value, limits[name], reason, measured)
        return _stage_kept(task, source, track, angles, wave, seconds, measured)


def _stage_kept(task: ClipTask, source: ResampledSource, track, angles: np.ndarray, wave: np.ndarray | None,
                seconds: float, measured: dict) -> dict:
    """Crop a kept clip with the pipeline's functions and write its arrays to ``staging/<id>/`` atomically."""
    size, length = task.crop_size, task.span_length
    plan = CropPlan(track, crop_size=size, span_length=length, config=task.mask_config)
    spans = plan.spans()
    frames = len(track)
    audio = (np.zeros(0, np.float32) if wave is None else fit_samples(wave, frames * SAMPLES_PER_FRAME))
    final = task.staging / task.key.id
    tmp = final.with_name(final.name + TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shapes = {"crops": (frames, size, size, 3), "mc": (frames, size, size), "landmarks": (frames, 478, 2),
              "angles": (frames, 3), "source_index": (frames,), "mu": (len(spans), size, size),
              "boxes": (len(spans), 4), "audio": audio.shape}
    out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.dtype(ARRAYS[name][1]), shapes[name])
           for name in ARRAYS}
    for k, image in enumerate(source.frames_at([Run(0, frames, 1)])):
        span, offset = plan.span_at(k)
        out["crops"][k] = stages.crop_frame(image, span, size)
        out["mc"][k] = span.coarse_masks[offset]
        out["landmarks"][k] = span.landmarks[offset]
    for j, span in enumerate(spans):
        out["mu"][j] = np.rint(span.union_mask * 255)
        out["boxes"][j] = span.box
    out["angles"][:] = angles
    out["source_index"][:] = source.index
    out["audio"][:] = audio
    for array in out.values():
        array.flush()
    failure = _sync_failure(task, out, measured)
    del out
    if failure is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        value, reason = failure
        return _drop(task.key, seconds, "sync", value, filter_limits(task.options)["sync"], reason, measured)
    entry = {**task.key.as_dict(), "kept": True, "seconds": round(seconds, 6), "frames": frames,
             "spans": len(spans), "audio_samples": int(audio.size), "source_fps": _rounded(float(source.reader.fps)),
             "measured": measured}
    (tmp / "entry.json").write_text(json.dumps(entry))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return entry


@functools.lru_cache(maxsize=2)
def _scorer(path: str):
    return load_scorer(path)


def _sync_failure(task: ClipTask, arrays: dict, measured: dict) -> tuple[dict, str] | None:
    """Score a cropped clip with the sync scorer (lip crops of the stored crops, as the datasets cut them); records
    ``sync_confidence`` and ``sync_offset`` in ``measured``. Returns (value, reason) when it fails the filter."""
    o = task.options
    if not o.sync_scorer:
        return None
    scorer = _scorer(o.sync_scorer)
    lips = lip_crops(np.asarray(arrays["crops"]), np.asarray(arrays["landmarks"]), scorer.config.lip_size)
    score = sync_offsets(scorer, lips, np.asarray(arrays["audio"]))
    measured.update(sync_confidence=_rounded(score.lse_c), sync_distance=_rounded(score.lse_d),
                    sync_offset=score.offset)
    if score.lse_c < o.min_sync_confidence:
        return ({"confidence": _rounded(score.lse_c)},
                f"the lips follow the speech with confidence {score.lse_c:.3g}, under {o.min_sync_confidence:g}")
    if abs(score.offset) > o.max_sync_offset:
        return ({"offset": score.offset}, f"the speech is {score.offset} frames out of step with the lips")
    return None


def _staged_entry(task: ClipTask) -> dict | None:
    """The entry of a clip finished (staged) by an earlier run, or None."""
    for path in (task.staging / task.key.id / "entry.json", task.staging / f"{task.key.id}.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def run_task(task: ClipTask) -> dict:
    """A worker's job: the staged entry of an earlier run, else :func:`process_clip` (dropped clips are staged as
    ``staging/<id>.json``)."""
    entry = _staged_entry(task)
    if entry is not None:
        return entry
    entry = process_clip(task)
    if not entry["kept"]:
        _write_json(task.staging / f"{task.key.id}.json", entry)
    return entry


# ---------------------------------------------------------------------------------------------- the folder

def _write_json(path: Path, value) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + TMP)
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def find_videos(in_dir: Path) -> list[ClipKey]:
    """Every video file under ``in_dir`` (by extension, :data:`VIDEO_EXTENSIONS`), sorted by relative path.

    Raises:
        DatasetNotFoundError: ``in_dir`` is not a folder or holds no video file.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise DatasetNotFoundError(f"video folder {str(in_dir)!r} does not exist: give the folder of talking videos "
                                   "as IN_DIR")
    keys = []
    for path in sorted(in_dir.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            stat = path.stat()
            keys.append(ClipKey(path.relative_to(in_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    if not keys:
        raise DatasetNotFoundError(f"no video file ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {str(in_dir)!r}: "
                                   "give the folder of talking videos as IN_DIR")
    return sorted(keys, key=lambda k: k.path)


def settings(preset: str, options: FilterOptions, mask_config: MaskConfig) -> dict:
    """What the data depends on; a rerun into the same OUT_DIR must use the same."""
    config = get_preset(preset)
    return {"format": FORMAT_VERSION, "preset": preset, "resolution": config.resolution,
            "span_length": config.num_frames, "fps": FPS, "audio_rate": ENCODER_SAMPLE_RATE,
            "samples_per_frame": SAMPLES_PER_FRAME, "filters": dataclasses.asdict(options),
            "mask": dataclasses.asdict(mask_config)}


def _load_manifest(out_dir: Path, wanted: dict) -> dict:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {"settings": wanted, "arrays": {name: desc for name, (_, _, desc) in ARRAYS.items()}, "shards": [],
                "clips": [], "dropped": []}
    try:
        manifest = json.loads(path.read_text())
        found = manifest["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ManifestError(f"{str(path)!r} is not a preprocessing manifest ({error}): give an empty or new OUT_DIR") \
            from error
    if found != wanted:
        changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ManifestError(f"{str(out_dir)!r} was preprocessed with other settings ({', '.join(changed)} differ): "
                            "rerun with the same --preset and filter options, or give a new OUT_DIR")
    return manifest


class ShardWriter:
    """Packs staged clips into shards, in the order they are added, and keeps the manifest.

    Args:
        out_dir: The output folder.
        manifest: The manifest loaded (or new) for it.
        shard_frames: A shard is written once it holds at least this many frames.
    """

    def __init__(self, out_dir: Path, manifest: dict, shard_frames: int):
        self.out_dir, self.manifest, self.shard_frames = out_dir, manifest, shard_frames
        self.shards_dir, self.staging = out_dir / SHARDS, out_dir / STAGING
        self.pending: list[dict] = []  # kept clips staged, not yet in a shard
        self.unsaved: list[Path] = []  # staged files of entries added to the manifest but not yet saved
        self._clean()

    def _clean(self) -> None:
        """Remove what an interrupted run left: temporary folders and files, shards no manifest entry points to."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        referenced = {s["name"] for s in self.manifest["shards"]}
        for path in self.shards_dir.iterdir():
            if path.name not in referenced:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in self.staging.iterdir():
            if path.name.endswith(TMP):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if (self.out_dir / (MANIFEST + TMP)).exists():
            (self.out_dir / (MANIFEST + TMP)).unlink()

    def add(self, entry: dict) -> None:
        """Take a finished clip's entry (kept: packed later; dropped: listed at the next save)."""
        key = ClipKey(entry["path"], entry["size"], entry["mtime_ns"])
        if entry["kept"]:
            self.pending.append(entry)
            if sum(e["frames"] for e in self.pending) >= self.shard_frames:
                self.flush()
        else:
            self.manifest["dropped"].append(entry)
            self.unsaved.append(self.staging / f"{key.id}.json")

    def flush(self) -> None:
        """Write the pending clips as one shard (temporary folder + rename), then save the manifest."""
        if self.pending:
            number = 1 + max((int(s["name"].rsplit("-", 1)[1]) for s in self.manifest["shards"]), default=-1)
            name = f"shard-{number:05d}"
            final = self.shards_dir / name
            tmp = final.with_name(name + TMP)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            sources = [self.staging / ClipKey(e["path"], e["size"], e["mtime_ns"]).id for e in self.pending]
            totals = {"frame": sum(e["frames"] for e in self.pending), "span": sum(e["spans"] for e in self.pending),
                      "audio": sum(e["audio_samples"] for e in self.pending)}
            counts = {"frame": "frames", "span": "spans", "audio": "audio_samples"}
            for array, (per, dtype, _) in ARRAYS.items():
                first = np.load(sources[0] / f"{array}.npy", mmap_mode="r")
                out = np.lib.format.open_memmap(tmp / f"{array}.npy", "w+", np.dtype(dtype),
                                                (totals[per], *first.shape[1:]))
                offset = 0
                for entry, folder in zip(self.pending, sources):
                    part = np.load(folder / f"{array}.npy", mmap_mode="r")
                    out[offset:offset + len(part)] = part
                    offset += len(part)
                out.flush()
                del out
            os.replace(tmp, final)
            offsets = {"frame": 0, "span": 0, "audio": 0}
            for entry in self.pending:
                clip = {k: v for k, v in entry.items() if k != "kept"}
                clip.update(shard=name, frame_offset=offsets["frame"], span_offset=offsets["span"],
                            audio_offset=offsets["audio"])
                for per in offsets:
                    offsets[per] += entry[counts[per]]
                self.manifest["clips"].append(clip)
            self.manifest["shards"].append({"name": name, "clips": len(self.pending), "frames": totals["frame"],
                                            "spans": totals["span"], "audio_samples": totals["audio"]})
            self.unsaved += sources
            self.pending = []
        self.save()

    def save(self) -> None:
        """Rewrite the manifest atomically, then remove the staged files it now covers."""
        _write_json(self.out_dir / MANIFEST, self.manifest)
        for path in self.unsaved:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.unsaved = []


def _run(tasks: list[ClipTask], workers: int) -> Iterator[dict]:
    """The entries of ``tasks`` in order, computed by ``workers`` processes (1: in this process)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield run_task(task)
        return
    # spawn: MediaPipe and torch keep threads that a fork would copy in an undefined state
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(run_task, tasks)


@dataclass
class PreprocessResult:
    """What :func:`preprocess` did.

    Attributes:
        manifest: The final manifest (as written to ``manifest.json``).
        report: The report (as written to ``report.json``).
        processed: Clips processed in this run (the others were finished by an earlier run).
    """

    manifest: dict
    report: dict
    processed: int


def preprocess(in_dir, out_dir, face_model, preset: str = "sd15", options: FilterOptions | None = None,
               workers: int = 1, shard_frames: int = DEFAULT_SHARD_FRAMES, mask_config: MaskConfig | None = None,
               on_progress: Callable[[int, int, dict], None] | None = None) -> PreprocessResult:
    """Filter, crop and shard every video under ``in_dir`` into ``out_dir`` (see the module docstring).

    Args:
        in_dir: Folder tree of talking videos.
        out_dir: Output folder (created; a rerun resumes it).
        face_model: MediaPipe ``face_landmarker.task``.
        preset: Model preset whose ``resolution`` and ``num_frames`` give the crop size and span length.
        options: The filters (default :class:`FilterOptions`).
        workers: Parallel processes over clips.
        shard_frames: Frames per shard (the last shard may hold fewer).
        mask_config: Mask geometry (default: inference's for the preset, ``MaskOptions().mask_config(
            config.crop_box_scale)``).
        on_progress: Called as ``on_progress(done, total, entry)`` after each clip of this run.

    Returns:
        The :class:`PreprocessResult`.

    Raises:
        DatasetNotFoundError: ``in_dir`` holds no video.
        ManifestError: ``out_dir`` was preprocessed with other settings.
        OptionError: ``workers`` or ``shard_frames`` below 1.
    """
    options = options or FilterOptions()
    if workers < 1 or shard_frames < 1:
        raise OptionError(f"--workers and --shard-frames must be at least 1, got {workers} and {shard_frames}")
    config = get_preset(preset)
    mask_config = mask_config or MaskOptions().mask_config(config.crop_box_scale)
    keys = find_videos(in_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(out_dir, settings(preset, options, mask_config))
    current = {k.path: k for k in keys}
    finished = set()
    for group in ("clips", "dropped"):  # entries of files that changed or went away are dropped from the manifest
        kept = [e for e in manifest[group] if current.get(e["path"]) == ClipKey(e["path"], e["size"], e["mtime_ns"])]
        manifest[group] = kept
        finished |= {e["path"] for e in kept}
    writer = ShardWriter(out_dir, manifest, shard_frames)
    writer.save()  # the settings are on disk before any clip is staged
    staging = out_dir / STAGING
    tasks = [ClipTask(Path(in_dir) / k.path, k, staging, Path(face_model), config.resolution, config.num_frames,
                      options, mask_config) for k in keys if k.path not in finished]
    for done, entry in enumerate(_run(tasks, workers), 1):
        writer.add(entry)
        if on_progress is not None:
            on_progress(done, len(tasks), entry)
    writer.flush()
    report = build_report(manifest, options)
    _write_json(out_dir / REPORT, report)
    return PreprocessResult(manifest, report, len(tasks))


# ---------------------------------------------------------------------------------------------- the report

def build_report(manifest: dict, options: FilterOptions) -> dict:
    """Clips and hours each filter received, dropped and kept (in filter order), and every dropped clip's reason.

    Args:
        manifest: A preprocessing manifest.
        options: The filters it was made with (for the limits).
    """
    entries = manifest["clips"] + manifest["dropped"]

    def hours(items: list[dict]) -> float:
        return sum(e["seconds"] for e in items) / 3600

    limits = filter_limits(options)
    remaining = list(entries)
    rows = []
    for name in FILTERS:
        dropped = [e for e in remaining if e.get("filter") == name]
        after = [e for e in remaining if e.get("filter") != name]
        rows.append({"filter": name, "limit": limits[name], "in_clips": len(remaining), "in_hours": hours(remaining),
                     "dropped_clips": len(dropped), "dropped_hours": hours(dropped), "kept_clips": len(after),
                     "kept_hours": hours(after)})
        remaining = after
    return {"clips": len(entries), "hours": hours(entries), "kept_clips": len(manifest["clips"]),
            "kept_hours": hours(manifest["clips"]), "filters": rows,
            "dropped": [{"path": e["path"], "seconds": e["seconds"], "filter": e["filter"], "value": e["value"],
                         "limit": e["limit"], "reason": e["reason"]} for e in sorted(manifest["dropped"],
                                                                                     key=lambda e: e["path"])]}


def format_report(report: dict) -> str:
    """The report as a text table (one row per filter), then one line per dropped clip."""
    lines = [f"{'filter':<14} {'limit':<44} {'in':>6} {'dropped':>8} {'drop h':>9} {'kept':>6} {'kept h':>9}"]
    for row in report["filters"]:
        lines.append(f"{row['filter']:<14} {row['limit']:<44} {row['in_clips']:>6} {row['dropped_clips']:>8} "
                     f"{row['dropped_hours']:>9.3f} {row['kept_clips']:>6} {row['kept_hours']:>9.3f}")
    lines.append(f"kept {report['kept_clips']} of {report['clips']} clips, {report['kept_hours']:.3f} of "
                 f"{report['hours']:.3f} hours")
    for drop in report["dropped"]:
        lines.append(f"  dropped {drop['path']}: {drop['filter']}: {drop['reason']}")
    return "\n".join(lines)
