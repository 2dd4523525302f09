"""World clips: an avatar speaking a speech file, written as an ordinary video with sound plus its ground truth.

Per clip ``NAME``, :func:`write_world_clip` writes into a folder:

- ``NAME.mp4``: H.264 frames with the speech track (``media.clip.write_clip``), so ``train preprocess`` and the
  training stages consume world folders unchanged;
- ``NAME.json``: the metadata (:data:`METADATA_FORMAT`): the avatar's parameters (including its lip habit), the
  speech file and the cut, the frame rate, the per-frame mouth states, mouth poses and head-motion matrices, the
  occluder and its per-frame boxes;
- ``NAME.masks.npz`` (clips with an occluder): ``masks`` ``(F, S, S)`` bool, packed with ``np.packbits``
  along the last axis (:func:`load_occluder_masks` unpacks it).

:func:`write_world` writes a whole folder from a seed (plus ``world.json``, the list of clips and settings);
:func:`render_speech` re-renders any avatar speaking other speech: the ground truth of a cross-audio dub.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stabledub_core.errors import DatasetNotFoundError, InvalidInputError, ManifestError, OptionError
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import write_clip
from stabledub_core.media.frames import frame_rate
from stabledub_core.media.output import atomic_write
from stabledub_core.synthetic.avatar import AvatarParams, build_avatar, sample_avatar
from stabledub_core.synthetic.mouth import MouthPalette, MouthStates
from stabledub_core.synthetic.occluders import OccluderSpec, sample_occluder
from stabledub_core.synthetic.render import RenderedClip, render_clip
from stabledub_core.synthetic.speech_drive import speech_mouth_states

METADATA_FORMAT = "stabledub-synthetic-clip"
METADATA_VERSION = 1
WORLD_INDEX = "world.json"
SPEECH_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus"})


@dataclass
class WorldClip:
    """A rendered clip in memory.

    Args:
        avatar: The avatar's parameters.
        fps: Exact frame rate.
        waveform: ``(C, S)`` float32 speech, cut to the frames (``round(F * rate / fps)`` samples).
        sample_rate: Its rate.
        states: The per-frame mouth states (the ground truth).
        rendered: Frames, occluder masks, mouth poses, matrices.
        occluder: The occluder, or None.
        speech: ``{"file": name, "start_s": ...}`` where the speech came from.
        palette: The mouth colours as they appear in the frames (lit), for ``synthetic.estimator``.
    """

    avatar: AvatarParams
    fps: Fraction
    waveform: np.ndarray
    sample_rate: int
    states: MouthStates
    rendered: RenderedClip
    occluder: OccluderSpec | None
    speech: dict
    palette: MouthPalette

    @property
    def frames(self) -> np.ndarray:
        """``(F, S, S, 3)`` uint8 RGB."""
        return self.rendered.frames


def list_speech(speech_dir) -> list[Path]:
    """The speech files of a folder (any depth), sorted by relative path.

    Args:
        speech_dir: A folder of audio files (:data:`SPEECH_EXTENSIONS`).

    Raises:
        DatasetNotFoundError: The folder is missing or holds no audio file.
    """
    folder = Path(speech_dir)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"speech folder {str(folder)!r} does not exist: give a folder of speech files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SPEECH_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetNotFoundError(f"speech folder {str(folder)!r} holds no audio file "
                                   f"({', '.join(sorted(SPEECH_EXTENSIONS))})")
    return files


def cut_speech(waveform: np.ndarray, sample_rate: int, fps: Fraction, max_seconds: float | None = None,
               num_frames: int | None = None) -> tuple[np.ndarray, int]:
    """The whole frames of a speech track at ``fps``, and the samples they span.

    Args:
        waveform: ``(C, S)`` float speech.
        sample_rate: Its rate.
        fps: The video frame rate.
        max_seconds: At most this long (None: all of it).
        num_frames: Exactly this many frames instead (the speech cut, or padded with silence, to them).

    Returns:
        ``(waveform cut or padded to round(F * rate / fps) samples, F)``; without ``num_frames``, the F frames that
        start within the speech.
    """
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    rest = waveform
    frames = int(math.floor(rest.shape[1] * fps / sample_rate)) if num_frames is None else int(num_frames)
    if max_seconds is not None and num_frames is None:
        frames = min(frames, int(math.floor(max_seconds * fps)))
    if frames < 1:
        raise InvalidInputError(f"the speech is shorter than one video frame at {float(fps):g} fps")
    samples = int(round(frames * sample_rate / fps))
    rest = rest[:, :samples]
    if rest.shape[1] < samples:
        rest = np.pad(rest, ((0, 0), (0, samples - rest.shape[1])))
    return np.ascontiguousarray(rest), frames


def render_speech(avatar: AvatarParams, waveform: np.ndarray, sample_rate: int, fps=25,
                  occluder: OccluderSpec | None = None, max_seconds: float | None = None,
                  speech: dict | None = None, num_frames: int | None = None) -> WorldClip:
    """An avatar speaking a speech track (also the ground truth of dubbing a world clip with that speech).

    Args:
        avatar: The avatar (e.g. ``sample_avatar(seed)`` or ``load_metadata(...)["avatar"]``).
        waveform: ``(C, S)`` or ``(S,)`` float speech.
        sample_rate: Its rate.
        fps: Video frame rate (float or fraction; 29.97 means 30000/1001).
        occluder: An occluder, or None.
        max_seconds: Cut the speech to at most this long.
        speech: Where the speech came from, for the metadata.
        num_frames: Render exactly this many frames (the speech cut, or padded with silence, to them).

    Returns:
        The :class:`WorldClip`; frame ``k`` at ``k / fps`` s shows the mouth state of the speech at that time.
    """
    fps = frame_rate(fps)
    cut, frames = cut_speech(waveform, sample_rate, fps, max_seconds, num_frames)
    states = speech_mouth_states(cut, sample_rate, avatar.habit, float(fps), frames)
    still = build_avatar(avatar)
    rendered = render_clip(still, states, float(fps), occluder)
    return WorldClip(avatar, fps, cut, sample_rate, states, rendered, occluder, dict(speech or {}),
                     still.lit_palette)


def dub_ground_truth(metadata: dict, waveform: np.ndarray, sample_rate: int) -> WorldClip:
    """What dubbing a world clip with other speech should give: the same avatar, head motion and occluder, the
    same number of frames, the mouth driven by the new speech (cut, or padded with silence, to the clip's length).

    Args:
        metadata: The clip's :func:`load_metadata`.
        waveform: ``(C, S)`` or ``(S,)`` float: the new speech.
        sample_rate: Its rate.
    """
    return render_speech(metadata["avatar"], waveform, sample_rate, metadata["fps"], metadata["occluder"],
                         speech={"dub_of": metadata["name"]}, num_frames=metadata["num_frames"])


def occluder_boxes(masks: np.ndarray) -> list[list[int] | None]:
    """Per frame, the box ``[x0, y0, x1, y1]`` (exclusive ends) of an ``(F, H, W)`` mask, or None where empty."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None)
    return boxes


def clip_metadata(clip: WorldClip, name: str, seed: int | None = None) -> dict:
    """The JSON metadata of a clip (see the module docstring)."""
    return {
        "format": METADATA_FORMAT, "version": METADATA_VERSION, "name": name, "seed": seed,
        "fps": [clip.fps.numerator, clip.fps.denominator], "num_frames": len(clip.states),
        "size": clip.avatar.size, "sample_rate": clip.sample_rate, "audio_samples": int(clip.waveform.shape[1]),
        "speech": clip.speech, "avatar": clip.avatar.to_dict(), "habit": clip.avatar.habit.to_dict(),
        "lit_palette": asdict(clip.palette),
        "mouth_states": clip.states.to_dict(),
        "mouth_poses": [[round(float(v), 3) for v in pose] for pose in clip.rendered.mouth_poses],
        "matrices": [[round(float(v), 5) for v in m.ravel()] for m in clip.rendered.matrices],
        "occluder": clip.occluder.to_dict() if clip.occluder is not None else None,
        "occluder_boxes": occluder_boxes(clip.rendered.occluder_masks),
        "masks_file": f"{name}.masks.npz" if clip.occluder is not None else None,
    }


def write_world_clip(folder, name: str, clip: WorldClip, seed: int | None = None, crf: int = 18) -> Path:
    """Write a clip's video (with sound), metadata and occluder masks (module docstring).

    Args:
        folder: Output folder (created).
        name: File stem.
        clip: The clip.
        seed: The seed that made it, for the metadata.
        crf: x264 quality of the video.

    Returns:
        The video's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = clip_metadata(clip, name, seed)
    if clip.occluder is not None:
        np.savez_compressed(folder / metadata["masks_file"], masks=np.packbits(clip.rendered.occluder_masks, axis=-1))
    video = write_clip(folder / f"{name}.mp4", clip.frames, clip.fps, clip.waveform, clip.sample_rate, crf=crf)
    atomic_write(folder / f"{name}.json", json.dumps(metadata, indent=1))
    return video


def load_metadata(path) -> dict:
    """A clip's metadata (``NAME.json``, or the video ``NAME.mp4`` beside it) with ``avatar`` as
    :class:`AvatarParams`, ``mouth_states`` as :class:`MouthStates`, ``lit_palette`` as :class:`MouthPalette`,
    ``occluder`` as :class:`OccluderSpec` (or None), ``fps`` as a Fraction and ``mouth_poses`` / ``matrices`` as
    arrays.

    Raises:
        ManifestError: Not a world clip's metadata.
    """
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise DatasetNotFoundError(f"world clip metadata {str(path)!r} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != METADATA_FORMAT:
        raise ManifestError(f"{str(path)!r} is not the metadata of a synthetic world clip")
    data["avatar"] = AvatarParams.from_dict(data["avatar"])
    data["mouth_states"] = MouthStates.from_dict(data["mouth_states"])
    data["lit_palette"] = MouthPalette(**{k: tuple(v) for k, v in data["lit_palette"].items()})
    data["occluder"] = OccluderSpec.from_dict(data["occluder"]) if data["occluder"] else None
    data["fps"] = Fraction(*data["fps"])
    data["mouth_poses"] = np.asarray(data["mouth_poses"], np.float32)
    data["matrices"] = np.asarray(data["matrices"], np.float32).reshape(-1, 2, 3)
    return data


def load_occluder_masks(path, metadata: dict | None = None) -> np.ndarray:
    """``(F, S, S)`` bool occluder masks of a clip (all False for a clip without an occluder).

    Args:
        path: The clip's video or metadata path.
        metadata: Its :func:`load_metadata` result, if already loaded.
    """
    metadata = metadata or load_metadata(path)
    shape = (metadata["num_frames"], metadata["size"], metadata["size"])
    if not metadata["masks_file"]:
        return np.zeros(shape, bool)
    packed = np.load(Path(path).with_name(metadata["masks_file"]))["masks"]
    return np.unpackbits(packed, axis=-1, count=metadata["size"]).astype(bool).reshape(shape)


def derived_seed(seed: int, index: int, stream: int = 0) -> int:
    """A seed for item ``index`` of a world made from ``seed`` (stream 0: clips, 1: avatars), in 0..2**31."""
    return int(np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(stream), 104729]).integers(2 ** 31))


@dataclass(frozen=True)
class _ClipJob:
    """Everything one clip of :func:`write_world` needs (picklable, for worker processes)."""

    out: Path
    index: int
    clip_seed: int
    avatar_seed: int
    speech_path: Path
    speech_name: str
    occluded: bool
    fps: Fraction
    size: int
    max_seconds: float | None
    crf: int


def _write_job(job: _ClipJob) -> tuple[Path, dict]:
    """Render and write one clip of :func:`write_world`; returns its video and its ``world.json`` entry."""
    clip_rng = np.random.default_rng([job.clip_seed, 1])
    avatar = sample_avatar(job.avatar_seed, job.size)
    waveform, rate = load_audio(job.speech_path)
    duration = waveform.shape[1] / rate
    if job.max_seconds is not None:
        duration = min(duration, job.max_seconds)
    occluder = sample_occluder(clip_rng, duration, avatar.skin) if job.occluded else None
    clip = render_speech(avatar, waveform, rate, job.fps, occluder, job.max_seconds,
                         speech={"file": job.speech_name, "start_s": 0.0})
    name = f"clip_{job.index:05d}"
    video = write_world_clip(job.out, name, clip, seed=job.clip_seed, crf=job.crf)
    return video, {"name": name, "video": video.name, "avatar_seed": avatar.seed, "speech": job.speech_name,
                   "occluder": occluder.kind if occluder else None, "frames": len(clip.states)}


def write_world(out_dir, n_clips: int, seed: int, speech_dir, fps=25, size: int = 256,
                occluder_share: float = 0.3, clips_per_avatar: int = 1, max_seconds: float | None = 8.0,
                crf: int = 18, workers: int = 1, progress=None) -> list[Path]:
    """Write a world folder: ``n_clips`` clips of avatars speaking the speech of ``speech_dir``.

    Clip ``i`` (named ``clip_{i:05d}``) uses avatar ``i // clips_per_avatar`` (seed ``derived_seed(seed, i //
    clips_per_avatar, 1)``), a speech file drawn from the folder and, for exactly ``round(occluder_share *
    n_clips)`` clips (chosen at random), an occluder; the clip's own draws (speech file, occluder) use
    ``derived_seed(seed, i)``. The same arguments always write the same folder, with any number of workers.

    Args:
        out_dir: Output folder (created; existing clips of the same names are replaced).
        n_clips: Number of clips (>= 1).
        seed: The world's seed.
        speech_dir: A folder of speech files (e.g. ``../shared/media/speech_corpus``), or a list of speech files.
        fps: Frame rate.
        size: Frame side in pixels (>= 128).
        occluder_share: Share of clips with an occluder, 0-1.
        clips_per_avatar: Consecutive clips that share one avatar (speaking different speech).
        max_seconds: Cut each speech file to at most this long (None: whole files).
        crf: x264 quality.
        workers: Clips rendered in parallel processes (spawned, as ``train preprocess``'s: a script that asks for
            more than one calls this under ``if __name__ == "__main__":``).
        progress: Called as ``progress(done, total)`` after each clip.

    Returns:
        The videos written, in order (also listed in ``out_dir/world.json``).
    """
    if n_clips < 1 or clips_per_avatar < 1 or workers < 1:
        raise OptionError(f"n_clips, clips_per_avatar and workers must be >= 1, got {n_clips}, {clips_per_avatar} "
                          f"and {workers}")
    if not 0.0 <= occluder_share <= 1.0:
        raise OptionError(f"occluder_share must be within 0..1, got {occluder_share}")
    if isinstance(speech_dir, (list, tuple)):
        speech_files = sorted(Path(p) for p in speech_dir)
        missing = [str(p) for p in speech_files if not p.is_file()]
        if not speech_files or missing:
            raise DatasetNotFoundError(f"speech files missing: {', '.join(missing) or 'none given'}")
        root = Path(os.path.commonpath([p.parent for p in speech_files]))
    else:
        speech_files, root = list_speech(speech_dir), Path(speech_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = frame_rate(fps)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31])
    occluded = set(rng.permutation(n_clips)[:int(round(occluder_share * n_clips))].tolist())
    jobs = []
    for i in range(n_clips):
        clip_seed = derived_seed(seed, i)
        speech_path = speech_files[int(np.random.default_rng([clip_seed, 0]).integers(len(speech_files)))]
        jobs.append(_ClipJob(out, i, clip_seed, derived_seed(seed, i // clips_per_avatar, 1), speech_path,
                             speech_path.relative_to(root).as_posix(), i in occluded, fps, size, max_seconds, crf))
    videos, entries = [], []
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_write_job, jobs) if pool is not None else map(_write_job, jobs)
        for done, (video, entry) in enumerate(results, 1):
            videos.append(video)
            entries.append(entry)
            if progress is not None:
                progress(done, n_clips)
    finally:
        if pool is not None:
            pool.terminate()
    index = {"format": "stabledub-synthetic-world", "version": METADATA_VERSION, "seed": int(seed),
             "n_clips": n_clips, "fps": [fps.numerator, fps.denominator], "size": size,
             "occluder_share": occluder_share, "clips_per_avatar": clips_per_avatar, "max_seconds": max_seconds,
             "speech_dir": str(root), "clips": entries}
    atomic_write(out / WORLD_INDEX, json.dumps(index, indent=1))
    return videos
