"""In-memory frames with the interface of the streaming pipeline, and whole-clip stages built on it.

ComfyUI (and any script that already holds its frames) has the whole clip in memory. :class:`FrameSource` gives
such frames the subset of :class:`~stabledub_core.media.video.VideoReader` that the orchestration in
``pipeline/dub.py`` uses (``frames()``, ``frames_at(runs)``, ``num_frames``, ``fps``, ``size``, ``times()``,
``is_variable_rate()``), and :class:`FrameSink` the ``write(image, time)`` of
:class:`~stabledub_core.media.video.VideoWriter`. With them the stages of ``dub.py`` run unchanged on
in-memory clips:

* :func:`dub_clip`: the whole dubbing (tracking, length policy, masks, sampling, paste-back) of a clip in memory;
* :func:`track_clip`: tracking for modular graphs (``dub.habit_crops`` and ``dub.reference_image`` take a
  :class:`FrameSource` as they are);
* :func:`window_crops`, :func:`occluder_patches`, :func:`exposure_masks`: crops and inpainting masks per frame;
* :func:`generate_crops`: the sampler over model-resolution crops with chunking and cross-fading;
* :func:`paste_clip`: composite generated crops (any size) into the frames, window by window;
* :func:`fit_length`: apply a length policy to frames and a waveform;
* :func:`read_clip` / :func:`write_clip`: a video file to/from memory.

Frames are ``(F, H, W, 3)`` uint8 numpy arrays or float torch tensors in [0, 1] (converted one frame at a time, so a
float clip is never copied whole); waveforms are ``(C, S)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from stabledub_core.media.audio import fit_samples
from stabledub_core.errors import EmptyMediaError, OptionError
from stabledub_core.runtime import check_interrupt
from stabledub_core.media.video import Run, VideoFrame

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
StopCheck = Callable[[], bool]
SOURCE_NAME = "the input frames"  # how an in-memory clip is named in error messages


def to_uint8(image) -> np.ndarray:
    """One ``(H, W, 3)`` frame as uint8: uint8 arrays as they are, floats in [0, 1] rounded (numpy or torch)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    if hasattr(image, "detach"):  # a torch tensor
        return (image.detach().float().clamp(0, 1) * 255).round().to(dtype=_torch_uint8()).cpu().numpy()
    return np.clip(np.rint(np.asarray(image, np.float32) * 255), 0, 255).astype(np.uint8)


def _torch_uint8():
    import torch

    return torch.uint8


def frame_rate(fps) -> Fraction:
    """An exact frame rate from a float or fraction (29.97 -> 30000/1001, 25.0 -> 25).

    Raises:
        OptionError: For a rate that is not positive.
    """
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise OptionError(f"frame rate must be > 0, got {fps}: give the video's fps")
    return rate


class _StreamInfo:
    """What the tracker stage reads from a reader's stream (the frame count)."""

    def __init__(self, frames: int):
        self.frames = frames


class FrameSource:
    """In-memory frames behind the :class:`VideoReader` interface used by ``pipeline/dub.py``.

    Args:
        frames: ``(F, H, W, 3)`` uint8 array or float tensor in [0, 1] (or any sequence of such frames).
        fps: Frame rate (float or exact fraction).
        times: Optional ``(F,)`` frame times in seconds (variable frame rate); default ``i / fps``.
        name: How the clip is named in error messages.
    """

    def __init__(self, frames, fps, times: Sequence[float] | None = None, name: str = SOURCE_NAME):
        if len(frames) == 0:
            raise EmptyMediaError(f"{name} hold no frame: give at least 2 frames")
        shape = tuple(frames[0].shape)
        if len(shape) != 3 or shape[2] != 3:
            raise OptionError(f"{name} must be RGB frames (F, H, W, 3), got frames of shape {shape}")
        self._frames = frames
        self.fps = frame_rate(fps)
        self.size = (int(shape[0]), int(shape[1]))
        self.time_base = 1 / self.fps
        self.has_audio = False
        self.path = name
        self.stream = _StreamInfo(len(frames))
        self._times = None if times is None else np.asarray(times, np.float64)
        if self._times is not None and self._times.shape != (len(frames),):
            raise OptionError(f"{len(frames)} frames but {self._times.shape[0]} frame times")

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the frames belong to the caller)."""

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``(H, W, 3)`` uint8."""
        return to_uint8(self._frames[index])

    def times(self) -> np.ndarray:
        """``(F,)`` float64 seconds of every frame."""
        return self._times if self._times is not None else np.arange(self.num_frames) / float(self.fps)

    def is_variable_rate(self, tolerance: float = 0.02) -> bool:
        """True if frame durations differ by more than ``tolerance`` of a frame."""
        deltas = np.diff(self.times())
        if deltas.size == 0:
            return False
        return bool(np.abs(deltas - 1.0 / float(self.fps)).max() > tolerance / float(self.fps))

    def frames(self) -> Iterator[VideoFrame]:
        """Every frame in order, with its time."""
        times = self.times()
        for i in range(self.num_frames):
            yield VideoFrame(i, float(times[i]), i, self.image(i))

    def frames_at(self, runs: Iterable[Run]) -> Iterator[np.ndarray]:
        """The images of a sequence of index runs (e.g. a length plan's), lazily."""
        for run in runs:
            for index in run.indices():
                yield self.image(index)


class FrameSink:
    """Collects written frames in memory (the :class:`VideoWriter` ``write`` interface).

    Args:
        num_frames: Frames that will be written.
        size: ``(H, W)`` of the frames.
    """

    def __init__(self, num_frames: int, size: tuple[int, int]):
        self.images = np.empty((num_frames, *size, 3), np.uint8)  # (F, H, W, 3)
        self.times = np.zeros(num_frames, np.float64)
        self.count = 0

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, *exc) -> None:
        """Nothing to release (the frames stay in :attr:`images`)."""

    def write(self, image: np.ndarray, time: float | None = None) -> None:
        """Store the next frame (``time`` in seconds; None: ``index / fps``, not recorded)."""
        if self.count >= len(self.images):
            raise OptionError(f"more than the {len(self.images)} announced frames were written")
        if image.shape != self.images.shape[1:] or image.dtype != np.uint8:
            raise ValueError(f"frame {self.count}: expected uint8 {self.images.shape[1:]}, got {image.dtype} "
                             f"{image.shape}")
        self.images[self.count] = image
        self.times[self.count] = np.nan if time is None else time
        self.count += 1

    def result(self) -> np.ndarray:
        """``(F, H, W, 3)`` uint8, once every frame was written."""
        if self.count != len(self.images):
            raise OptionError(f"{self.count} of {len(self.images)} frames were written")
        return self.images


def _check_waveform(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 2 or waveform.shape[1] == 0:
        raise EmptyMediaError(f"the speech must be a (channels, samples) waveform with sound, got shape "
                              f"{waveform.shape}")
    if sample_rate <= 0:
        raise OptionError(f"the speech's sample rate must be > 0, got {sample_rate}")
    return waveform


@dataclass
class FittedClip:
    """Frames and speech of equal duration after a length policy.

    Attributes:
        index: ``(F_out,)`` source frame index of each output frame.
        waveform: ``(C, S_out)`` float32 speech cut or padded as the policy says.
        audio_changed: False when the speech is untouched.
    """

    index: np.ndarray
    waveform: np.ndarray
    audio_changed: bool


def fit_length(num_frames: int, fps, waveform: np.ndarray, sample_rate: int, policy) -> FittedClip:
    """Apply a length policy (``pipeline/length_policy.py``) to a clip of ``num_frames`` frames and a waveform.

    Args:
        num_frames: Frames of the video.
        fps: Its frame rate.
        waveform: ``(C, S)`` float32 speech.
        sample_rate: Its rate.
        policy: A :class:`~stabledub_core.media.length_policy.LengthPolicy` or its name.

    Returns:
        The :class:`FittedClip` (the frames themselves are picked by the caller with ``index``).
    """
    from stabledub_core.media.length_policy import plan_length

    waveform = _check_waveform(waveform, sample_rate)
    plan = plan_length(policy, num_frames, frame_rate(fps), waveform.shape[1], sample_rate)
    return FittedClip(plan.index_array(), fit_samples(waveform, plan.audio_samples), plan.audio_changed)


def track_clip(source: FrameSource, face_model, on_progress: ProgressCallback | None = None,
               should_stop: StopCheck | None = None):
    """Landmarks of every frame (``dub.track_faces`` on an in-memory clip).

    Returns:
        The clip's :class:`~stabledub_core.face.track.FaceTrack`.

    Raises:
        NoFaceError: If no frame has a face.
    """
    from stabledub_core.pipeline.dub import track_faces

    return track_faces(source, face_model, on_progress=on_progress, should_stop=should_stop)


def frame_windows(windows: Sequence, num_frames: int) -> list:
    """The window owning each frame: ``[window of frame 0, window of frame 1, ...]``.

    Raises:
        OptionError: If the windows do not cover ``num_frames`` frames (masks planned for another clip).
    """
    from stabledub_core.masks.preview import window_of

    last = max(w.own_stop for w in windows)
    if last != num_frames:
        raise OptionError(f"the masks were planned for {last} frames but the clip has {num_frames}: plan them on "
                          "the same frames")
    return [window_of(windows, i) for i in range(num_frames)]


def window_crops(source: FrameSource, windows: Sequence, crop_size: int, image: np.ndarray | None = None,
                 should_stop: StopCheck | None = None) -> np.ndarray:
    """Model-resolution crops of every frame with its window's box.

    Args:
        source: The clip.
        windows: Its windows (``masks.union.plan_windows``).
        crop_size: Side S of the crops.
        image: Crop this one ``(H, W, 3)`` image (e.g. the reference frame) with every frame's box instead.
        should_stop: Interruption check, polled per frame.

    Returns:
        ``(F, S, S, 3)`` uint8.
    """
    from stabledub_core.pipeline.composite import crop_frames

    owners = frame_windows(windows, source.num_frames)
    out = np.empty((source.num_frames, crop_size, crop_size, 3), np.uint8)
    for i, window in enumerate(owners):
        check_interrupt(should_stop)
        frame = source.image(i) if image is None else image
        out[i] = crop_frames(frame[None], window.box, crop_size)[0]
    return out


def occluder_patches(windows: Sequence, num_frames: int, occluder: np.ndarray, grid: int = 16,
                     min_fraction: float = 0.2) -> dict[int, object]:
    """The patches an occluder mask exposes in each frame (``masks.exposure.from_occluder`` per window).

    Args:
        windows: The clip's windows.
        num_frames: Frames of the clip.
        occluder: ``(H, W)``, ``(1, H, W)`` or ``(F, H, W)`` float occluder mask in frame coordinates.
        grid: Patches per crop side.
        min_fraction: Covered fraction of a patch that exposes it.

    Returns:
        Frame index -> :class:`~stabledub_core.masks.exposure.ExposedPatches` (frames without a face are absent).
    """
    from stabledub_core.masks.exposure import from_occluder

    owners = frame_windows(windows, num_frames)
    occluder = np.asarray(occluder, np.float32)
    if occluder.ndim == 3 and occluder.shape[0] not in (1, num_frames):
        raise OptionError(f"the occluder mask has {occluder.shape[0]} frames but the clip has {num_frames}: "
                          "give one mask per frame, or a single mask")
    found = {}
    for window in windows:
        if window.passthrough:
            continue
        for offset, exposed in enumerate(from_occluder(occluder, window, grid, min_fraction)):
            if owners[window.start + offset] is window:
                found[window.start + offset] = exposed
    return found


def exposure_masks(windows: Sequence, num_frames: int, patches=None, occluded: dict | None = None) -> np.ndarray:
    """Inpainting masks of every frame: its window's Mu with exposed patches set to 0 (crop coordinates).

    Args:
        windows: The clip's windows.
        num_frames: Frames of the clip.
        patches: :class:`~stabledub_core.masks.exposure.ExposedPatches` exposed in every frame (the editor's).
        occluded: Patches exposed per frame, e.g. from :func:`occluder_patches`.

    Returns:
        ``(F, S, S)`` float32, 1 = inpaint, 0 = keep the source pixels.
    """
    from stabledub_core.masks.exposure import apply

    owners = frame_windows(windows, num_frames)
    size = windows[0].crop_size
    out = np.empty((num_frames, size, size), np.float32)
    occluded = occluded or {}
    for i, window in enumerate(owners):
        out[i] = apply(apply(window.union_mask, patches), occluded.get(i))
    return out


def generate_crops(model, crops: np.ndarray, masks: np.ndarray, appearance: np.ndarray, wave16: np.ndarray,
                   fps, lip_crops: np.ndarray, options=None, on_progress: ProgressCallback | None = None,
                   should_stop: StopCheck | None = None, source_wave16: np.ndarray | None = None) -> np.ndarray:
    """Dub model-resolution crops with a model: chunked sampling, cross-faded chunks (as ``dub.py`` does).

    Args:
        model: A ``StableDub`` or any :class:`~stabledub_core.pipeline.dub.ChunkModel`.
        crops: ``(F, S, S, 3)`` uint8 source crops at the model's resolution.
        masks: ``(F, S, S)`` float32 inpainting masks (1 = generate).
        appearance: ``(F, S, S, 3)`` uint8 appearance reference crops.
        wave16: ``(S16,)`` float32 16 kHz mono speech; frame ``i`` is at ``i / fps`` seconds.
        fps: Frame rate of the crops.
        lip_crops: ``(K, s, s, 3)`` uint8 lip crops of the habit segment (any clip of the same speaker).
        options: :class:`~stabledub_core.pipeline.dub.DubOptions` (sampler settings, device, dtype).
        on_progress: Called as ``on_progress("sample", frames_done, total)``.
        should_stop: Interruption check.
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the crops were filmed with (same timing as
            ``wave16``): when given, every chunk starts from the DDIM inversion of its crops under it.

    Returns:
        ``(F, S, S, 3)`` uint8 generated crops.
    """
    from stabledub_core.pipeline.composite import resize_square
    from stabledub_core.pipeline.dub import DubOptions, SourceSpeech, StageClock, as_chunk_model
    from stabledub_core.pipeline.windows import plan_chunks, stitch_images

    options = options or DubOptions()
    chunk_model = as_chunk_model(model, options)
    n, size = len(crops), chunk_model.crop_size
    for name, value, shape in (("crops", crops, (n, size, size, 3)), ("masks", masks, (n, size, size)),
                               ("appearance", appearance, (n, size, size, 3))):
        if tuple(value.shape) != shape:
            raise OptionError(f"{name} must be {shape} for {n} frames at the model's {size}-pixel resolution, got "
                              f"{tuple(value.shape)}: crop them with the model's crop size")
    lips = np.stack([resize_square(crop, chunk_model.lip_size) for crop in lip_crops])
    times = np.arange(n) / float(frame_rate(fps))
    source = None if source_wave16 is None else SourceSpeech.covering(source_wave16, times, frame_rate(fps))
    chunk_model.begin(np.asarray(wave16, np.float32), times, lips, source=source)
    clock = StageClock()

    def generate(number, chunk):
        check_interrupt(should_stop)
        part = slice(chunk.start, chunk.stop)
        return chunk_model.generate(chunk.start, crops[part], masks[part], appearance[part], clock, should_stop)

    out = np.empty((n, size, size, 3), np.uint8)
    for start, final in stitch_images(plan_chunks(n, options.windows_per_chunk, options.window, options.overlap),
                                      generate):
        out[start:start + len(final)] = final
        if on_progress is not None:
            on_progress("sample", start + len(final), n)
    return out


def paste_clip(source: FrameSource, crops, windows: Sequence, masks: np.ndarray | None = None,
               color_match: bool = False, on_progress: ProgressCallback | None = None,
               should_stop: StopCheck | None = None) -> np.ndarray:
    """Composite generated crops into every frame with its window's box and mask.

    Args:
        source: The original clip.
        crops: ``(F, s, s, 3)`` generated crops of any size ``s`` (uint8 or float in [0, 1]).
        windows: The clip's windows.
        masks: ``(F, S, S)`` blending masks in crop coordinates (e.g. from :func:`exposure_masks`); default each
            window's Mu.
        color_match: Match the generated region's colours to the source around the mask.
        on_progress: Called as ``on_progress("paste", done, total)``.
        should_stop: Interruption check, polled per frame.

    Returns:
        ``(F, H, W, 3)`` uint8; frames without a face are unchanged.
    """
    from stabledub_core.pipeline.composite import paste_back

    n = source.num_frames
    if len(crops) != n or (masks is not None and len(masks) != n):
        raise OptionError(f"{n} frames but {len(crops)} crops" + ("" if masks is None else f" and {len(masks)} "
                          "masks") + ": give one crop (and mask) per frame")
    owners = frame_windows(windows, n)
    sink = FrameSink(n, source.size)
    for i, window in enumerate(owners):
        check_interrupt(should_stop)
        image = source.image(i)
        if window.active[i - window.start]:
            mask = window.union_mask if masks is None else masks[i]
            image = paste_back(image[None], to_uint8(crops[i])[None], window.box, mask, color_match=color_match)[0]
        sink.write(image)
        if on_progress is not None:
            on_progress("paste", i + 1, n)
    return sink.result()


@dataclass
class DubbedClip:
    """What :func:`dub_clip` produced.

    Attributes:
        frames: ``(F_out, H, W, 3)`` uint8 dubbed frames.
        waveform: ``(C, S_out)`` float32 speech with the length policy applied.
        sample_rate: Its rate.
        fps: Output frame rate.
        faceless_frames: Output frames left unchanged because no face was tracked in them.
    """

    frames: np.ndarray
    waveform: np.ndarray
    sample_rate: int
    fps: Fraction
    faceless_frames: int


def dub_clip(source: FrameSource, waveform: np.ndarray, sample_rate: int, model, options=None,
             occluder: np.ndarray | None = None, on_progress: ProgressCallback | None = None,
             should_stop: StopCheck | None = None, source_wave16: np.ndarray | None = None) -> DubbedClip:
    """Dub an in-memory clip with a speech waveform: ``dub_video`` without files (``dub.dub_stream``).

    Args:
        source: The clip (constant frame rate).
        waveform: ``(C, S)`` float32 speech.
        sample_rate: Its rate.
        model: A ``StableDub`` model, a checkpoint path, or any ``ChunkModel``.
        options: :class:`~stabledub_core.pipeline.dub.DubOptions` (its file-only fields are ignored:
            ``occluder_mask``, ``crf``, ``x264_preset``).
        occluder: ``(H, W)`` (all frames) or ``(F, H, W)`` (per frame) float occluder mask in frame coordinates
            (white = keep those pixels), or None.
        on_progress: Called as ``on_progress(stage, done, total)`` (stages: see ``dub.dub_stream``).
        should_stop: Polled often; True raises ``Interrupted``.
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the clip was filmed with: when given, sampling starts
            from the DDIM inversion of the source crops under it.

    Returns:
        The :class:`DubbedClip`.
    """
    from stabledub_core.media.audio import to_encoder_input
    from stabledub_core.pipeline.dub import DubOptions, dub_stream

    waveform = _check_waveform(waveform, sample_rate)
    stream = dub_stream(source, to_encoder_input(waveform, sample_rate), waveform.shape[1], sample_rate, model,
                        options or DubOptions(), lambda plan, _time_base: FrameSink(plan.num_frames, source.size),
                        occluder, on_progress, should_stop, source_wave16=source_wave16)
    plan = stream.plan
    return DubbedClip(stream.sink.result(), fit_samples(waveform, plan.audio_samples), sample_rate, plan.fps,
                      stream.faceless_frames)


@dataclass
class LoadedClip:
    """A video file in memory.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8.
        fps: Average frame rate.
        waveform: ``(C, S)`` float32 audio track cut to the loaded frames, or None without an audio track.
        sample_rate: Its rate (0 without audio).
    """

    frames: np.ndarray
    fps: Fraction
    waveform: np.ndarray | None
    sample_rate: int


def read_clip(path, max_frames: int = 0, should_stop: StopCheck | None = None) -> LoadedClip:
    """Decode a video file (and its audio track) into memory.

    Args:
        path: Any video FFmpeg reads.
        max_frames: Read at most this many frames (0: all); the audio is cut to the frames read.
        should_stop: Interruption check, polled per frame.

    Returns:
        The :class:`LoadedClip`.
    """
    from stabledub_core.media.audio import load_audio
    from stabledub_core.media.video import VideoReader

    images = []
    with VideoReader(path) as reader:
        for frame in reader.frames():
            check_interrupt(should_stop)
            images.append(frame.image)
            if max_frames and len(images) >= max_frames:
                break
        fps, has_audio, last_time = reader.fps, reader.has_audio, frame.time if images else 0.0
    if not images:
        raise EmptyMediaError(f"video file {str(path)!r} has no frames: give a real video")
    waveform, rate = (None, 0)
    if has_audio:
        waveform, rate = load_audio(path)
        if max_frames and len(images) >= max_frames:
            waveform = waveform[:, :int(round((last_time + 1 / float(fps)) * rate))]
    return LoadedClip(np.stack(images), fps, waveform, rate)


def write_clip(path, frames, fps, waveform: np.ndarray | None = None, sample_rate: int = 0, crf: int = 18,
               preset: str = "medium", should_stop: StopCheck | None = None) -> Path:
    """Encode frames (and speech) into a video file, atomically (``VideoWriter``).

    The waveform is first stored losslessly (16-bit PCM WAV) beside the output and muxed from there; the temporary
    file is deleted in every case.

    Args:
        path: Output file (.mp4, .m4v, .mov or .mkv).
        frames: ``(F, H, W, 3)`` uint8 array or float tensor in [0, 1].
        fps: Frame rate.
        waveform: ``(C, S)`` float32 audio, or None for a silent video.
        sample_rate: Its rate.
        crf: x264 quality.
        preset: x264 speed preset.
        should_stop: Interruption check, polled per frame (no file is left behind).

    Returns:
        The path written.
    """
    from stabledub_core.media.audio import probe_audio
    from stabledub_core.media.video import VideoWriter, output_format

    path = Path(path)
    output_format(path)
    if len(frames) == 0:
        raise EmptyMediaError("no frames to write")
    source = FrameSource(frames, fps)
    wav = path.with_name(f".{path.stem}.audio.wav")
    try:
        info = None
        if waveform is not None:
            _write_wav(wav, _check_waveform(waveform, sample_rate), sample_rate)
            info = probe_audio(wav, "audio")
        with VideoWriter(path, source.fps, source.size, audio=info, crf=crf, preset=preset) as writer:
            for i in range(source.num_frames):
                check_interrupt(should_stop)
                writer.write(source.image(i))
    finally:
        wav.unlink(missing_ok=True)
    return path


def _write_wav(path: Path, waveform: np.ndarray, sample_rate: int) -> None:
    """A ``(C, S)`` float waveform as a 16-bit PCM WAV file (PyAV)."""
    import av

    pcm = (np.clip(waveform, -1, 1) * 32767).round().astype(np.int16)  # (C, S)
    layout = f"{pcm.shape[0]}c"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16p", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
