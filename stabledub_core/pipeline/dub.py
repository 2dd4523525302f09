"""Streaming dubbing: video + speech in, dubbed video out, with memory that does not grow with the video's length.

Two passes over the video:

1. **Tracking** streams every frame through the face tracker; only the landmarks (478 points a frame) are kept.
2. **Dubbing** streams the output frames (in the order the length policy asks for) chunk by chunk: crop boxes and
   union masks for the chunk's 16-frame mask windows, model crops, sampling of all the chunk's overlapping
   windows jointly (the sampler), cross-fade with the previous chunk over the shared frames, paste-back into the
   original frames, and H.264 encoding. At any time only one chunk of frames (plus its overlap) is in memory.

What still grows with the length is small: the landmarks (3.8 KB a frame), the 16 kHz mono speech for the audio
encoder (64 KB a second) and the output-to-source index (8 bytes a frame): about 95 MB for 10 minutes at 25 fps.

Frames without a face (``TrackStatus.MISSING``) are written unchanged. ``should_stop()`` is polled between frames,
chunks and sampler steps; it raises :class:`~stabledub_core.pipeline.Interrupted`, and the atomic writer then
leaves no file behind.

:func:`dub_video` opens the files and calls :func:`dub_stream`, which runs both passes on any reader with the
``VideoReader`` interface and writes to any sink with ``write(image, time)``; ``frame_source.dub_clip`` calls it with
in-memory frames (ComfyUI).

The model side is behind a small seam, :class:`ChunkModel`: :class:`StableDubChunkModel` adapts a ``StableDub``
model (VAE, audio encoder, lip-habit module, U-Net, sampler with dual CFG).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import numpy as np

from stabledub_core.media.audio import ENCODER_SAMPLE_RATE, encoder_length, fit_samples, load_encoder_input, probe_audio
from stabledub_core.errors import EmptyMediaError, NoAudioStreamError, NoFaceError, OptionError
from stabledub_core.runtime import check_interrupt
from stabledub_core.media.length_policy import LengthPlan, LengthPolicy, plan_length
from stabledub_core.media.video import Run, VideoReader, VideoWriter, output_format

DEFAULT_FACE_MODEL = Path("models") / "mediapipe" / "face_landmarker.task"
FACE_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
                  "face_landmarker.task")
MASK_WINDOW = 16  # frames sharing one crop box and union mask (the model's window)
MASK_GROUP = 8  # mask windows planned together (box smoothing runs within a group)
EXPOSURE_GRID = 16  # occluder patches per crop side (16 x 16: patches line up with latent cells)

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
StopCheck = Callable[[], bool]


@dataclass
class DubOptions:
    """Settings of :func:`dub_video` and :func:`dub_stream`.

    Attributes:
        length_policy: What to do when speech and video durations differ (see ``length_policy.py``).
        steps: Denoising steps.
        scheduler: Solver name: ``ddim``, ``dpm++2m``, ``euler`` or ``unipc``.
        audio_scale: Audio guidance scale (``la`` of eq. 7).
        habit_scale: Lip-habit guidance scale (``lh`` of eq. 7).
        seed: Seed of the shared initial noise.
        device: Torch device for the model.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        mask_margin: Widening of the coarse mouth mask as a fraction of the face width (``None``: default).
        occluder_mask: Optional image (H, W) of the video's size; white = an occluder in front of the mouth whose
            pixels are kept (exposed patches).
        reference: Appearance reference frame strategy: ``closed-lips``, ``pose`` or ``random``.
        habit_frames: Lip crops (K) used for the lip-habit vector.
        face_model: MediaPipe ``face_landmarker.task``.
        window: Frames per sampler window.
        overlap: Frames shared by consecutive sampler windows and chunks.
        windows_per_chunk: Sampler windows denoised jointly per chunk (bounds memory).
        invert: Start from the DDIM inversion of the source crops under the video's own speech instead of fresh
            noise (EdiDub's content-aware editing: keeps fine detail such as stubble, blur and occluders); needs
            the video's audio track and runs the model ``steps`` more times per chunk.
        crf: x264 quality of the output.
        x264_preset: x264 speed preset.
    """

    length_policy: LengthPolicy | str = LengthPolicy.PING_PONG
    steps: int = 20
    scheduler: str = "ddim"
    audio_scale: float = 2.0
    habit_scale: float = 1.5
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    mask_margin: float | None = None
    occluder_mask: str | Path | None = None
    reference: str = "closed-lips"
    habit_frames: int = 8
    face_model: str | Path = DEFAULT_FACE_MODEL
    window: int = 16
    overlap: int = 4
    windows_per_chunk: int = 4
    invert: bool = False
    crf: int = 18
    x264_preset: str = "medium"


@dataclass
class DubResult:
    """What :func:`dub_video` produced.

    Attributes:
        path: The output file.
        num_frames: Frames written.
        fps: Output frame rate.
        audio_codec: Codec of the output audio track.
        audio_bit_exact: True when the speech track was written untouched.
        faceless_frames: Output frames written unchanged because no face was tracked in them.
        seconds: Wall time per stage.
    """

    path: Path
    num_frames: int
    fps: Fraction
    audio_codec: str
    audio_bit_exact: bool
    faceless_frames: int
    seconds: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Accumulates wall time per named stage."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass
class SourceSpeech:
    """The speech the source frames were filmed with, for DDIM inversion (:attr:`DubOptions.invert`).

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
    lip_size: int  # side of the lip crops of the habit vector

    def begin(self, wave16: np.ndarray, frame_times: np.ndarray, lip_crops: np.ndarray,
              source: SourceSpeech | None = None) -> None:
        """Start a clip: its 16 kHz mono speech, output frame times (s) and K lip crops ``(K, s, s, 3)`` uint8;
        with ``source``, start every chunk from the DDIM inversion of its source crops under that speech."""

    def generate(self, start: int, crops: np.ndarray, masks: np.ndarray, appearance: np.ndarray,
                 clock: StageClock, should_stop: StopCheck | None,
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


def check_inputs(video, audio, out) -> None:
    """Cheap checks of the inputs before any model is loaded (no frame is decoded).

    Args:
        video: Video with a face.
        audio: Speech file, or ``None`` for the video's own audio track.
        out: Output path.

    Raises:
        StableDubError: One clear error for a missing file, a file that is not media, a video without a video
            stream or with fewer than 2 frames, no speech track, or an unsupported output extension.
    """
    output_format(out)
    with VideoReader(video) as reader:
        packets = 0
        for packet in reader.container.demux(reader.stream):
            packets += packet.size > 0
            if packets >= 2:
                break
        if packets < 2:
            raise EmptyMediaError(f"video {str(video)!r} has {packets} frame(s); dubbing needs at least 2: give a "
                                  "real video, not a still image")
        if audio is None and not reader.has_audio:
            raise NoAudioStreamError(f"video {str(video)!r} has no audio track and no speech was given: "
                                     "give the speech with --audio")
    probe_audio(video if audio is None else audio, "video" if audio is None else "audio")


def dub_video(video, audio, model, out, options: DubOptions | None = None,
              on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None) -> DubResult:
    """Dub a video file with a speech file into a new video file.

    Args:
        video: Video with a face.
        audio: Speech (any audio or video file); ``None`` uses the video's own audio track.
        model: A ``StableDub`` model, a checkpoint path (``.safetensors``), or any :class:`ChunkModel`.
        out: Output path (.mp4, .m4v, .mov or .mkv); written atomically.
        options: :class:`DubOptions`.
        on_progress: Called as ``on_progress(stage, done, total)``; see :func:`dub_stream`.
        should_stop: Polled often; returning True aborts with ``Interrupted`` and leaves no output file.

    Returns:
        A :class:`DubResult`.
    """
    options = options or DubOptions()
    clock = StageClock()
    with clock.stage("audio_decode"):
        check_inputs(video, audio, out)
    with VideoReader(video) as reader:
        with clock.stage("audio_decode"):
            wave16, info = load_encoder_input(video if audio is None else audio,
                                              "video" if audio is None else "audio")
        occluder = _load_occluder(options.occluder_mask, reader.size)
        source16 = None
        if options.invert:
            with clock.stage("audio_decode"):
                source16 = wave16 if audio is None else _source_speech(video)

        def open_writer(plan: LengthPlan, time_base: Fraction | None) -> VideoWriter:
            return VideoWriter(out, plan.fps, reader.size, audio=info, audio_samples=plan.audio_samples,
                               crf=options.crf, preset=options.x264_preset, time_base=time_base)

        stream = dub_stream(reader, wave16, info.num_samples, info.sample_rate, model, options, open_writer,
                            occluder, on_progress, should_stop, clock, source16)
    plan = stream.plan
    return DubResult(Path(out), plan.num_frames, plan.fps, stream.sink.audio.codec, not plan.audio_changed,
                     stream.faceless_frames, stream.seconds)


@dataclass
class StreamResult:
    """What :func:`dub_stream` produced.

    Attributes:
        sink: The (closed) sink the output frames were written to.
        plan: The length plan: output frames, frame rate, speech samples.
        faceless_frames: Output frames written unchanged because no face was tracked in them.
        seconds: Wall time per stage.
    """

    sink: object
    plan: LengthPlan
    faceless_frames: int
    seconds: dict[str, float]


SinkOpener = Callable[[LengthPlan, "Fraction | None"], ContextManager]  # (plan, time base or None) -> sink


def _source_speech(video) -> np.ndarray:
    """The 16 kHz mono speech of the video itself (for :attr:`DubOptions.invert`)."""
    try:
        return load_encoder_input(video, "video")[0]
    except NoAudioStreamError as error:
        raise OptionError(f"inversion needs the speech the video was filmed with, but {str(video)!r} has no audio "
                          "track: dub without inversion") from error


def dub_stream(reader, wave16: np.ndarray, num_samples: int, sample_rate: int, model, options: DubOptions,
               open_sink: SinkOpener, occluder: np.ndarray | None = None,
               on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
               clock: StageClock | None = None, source_wave16: np.ndarray | None = None) -> StreamResult:
    """Dub the frames of any reader into any sink: tracking, length policy, masks, sampling, paste-back.

    Args:
        reader: A :class:`VideoReader`, or anything with its ``frames()``, ``frames_at(runs)``, ``num_frames``,
            ``fps``, ``size``, ``time_base``, ``times()``, ``is_variable_rate()``, ``stream.frames`` and ``path``
            (e.g. ``frame_source.FrameSource``).
        wave16: ``(S16,)`` float32 16 kHz mono speech (the audio encoder's input).
        num_samples: Length of the speech at its own rate (the length policy works on it).
        sample_rate: That rate.
        model: A ``StableDub`` model, a checkpoint path, or any :class:`ChunkModel`.
        options: :class:`DubOptions` (``occluder_mask``, ``crf`` and ``x264_preset`` are the caller's business).
        open_sink: Called once as ``open_sink(plan, time_base)`` (``time_base``: the reader's, for a variable-rate
            output, else None); returns a context manager whose value has ``write(image, time)``.
        occluder: ``(H, W)`` or ``(F_src, H, W)`` float occluder mask in [0, 1] in frame coordinates (white = an
            occluder in front of the mouth whose pixels are kept), or None.
        on_progress: Called as ``on_progress(stage, done, total)``: ``"track"`` (source frames), ``"sample"``
            (sampler steps over all chunks) and ``"dub"`` (output frames written).
        should_stop: Polled often; returning True aborts with ``Interrupted``.
        clock: Stage timer to add to (default: a new one).
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the video was filmed with: with it, every chunk starts
            from the DDIM inversion of its source crops (:attr:`DubOptions.invert`).

    Returns:
        The :class:`StreamResult`.
    """
    policy = LengthPolicy.parse(options.length_policy)
    clock = clock or StageClock()
    chunk_model = as_chunk_model(model, options)
    track = track_faces(reader, options.face_model, clock, on_progress, should_stop)
    occluder = _check_occluder(occluder, reader.num_frames, reader.size)
    plan = plan_length(policy, reader.num_frames, reader.fps, num_samples, sample_rate)
    variable = plan.is_identity and reader.is_variable_rate()
    index = plan.index_array()  # (F_out,) source frame of each output frame
    times = reader.times() if variable else np.arange(plan.num_frames) / float(plan.fps)
    wave16 = fit_samples(wave16, encoder_length(plan.audio_samples, sample_rate))
    source = None if source_wave16 is None else SourceSpeech.covering(source_wave16, reader.times()[index],
                                                                       reader.fps)
    with clock.stage("prepare"):
        chunk_model.begin(wave16, times, habit_crops(reader, track, chunk_model.lip_size, options.habit_frames,
                                                     options.seed), source=source)
        reference = reference_image(reader, track, options.reference, options.seed)
    with open_sink(plan, reader.time_base if variable else None) as sink:
        faceless = _dub_frames(reader, sink, plan, index, times if variable else None, track, reference,
                               occluder, chunk_model, options, clock, on_progress, should_stop)
    return StreamResult(sink, plan, faceless, dict(clock.seconds))


def as_chunk_model(model, options: DubOptions) -> ChunkModel:
    """The :class:`ChunkModel` of a model.

    Args:
        model: A :class:`ChunkModel` (returned as it is), a ``StableDub`` model, or a checkpoint path (loaded on
            ``options.device`` in ``options.dtype``).
        options: :class:`DubOptions` (device, dtype and sampler settings).

    Returns:
        The :class:`ChunkModel`.
    """
    if hasattr(model, "generate") and hasattr(model, "begin"):
        return model
    if isinstance(model, (str, Path)):
        from stabledub_core.models.checkpoint import load_checkpoint

        model = load_checkpoint(model, device=options.device, dtype=_torch_dtype(options.dtype))
    return StableDubChunkModel(model, options)


def _torch_dtype(name: str):
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise OptionError(f"unknown dtype {name!r}; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def track_faces(reader, face_model, clock: StageClock | None = None, on_progress: ProgressCallback | None = None,
                should_stop: StopCheck | None = None):
    """Pass 1: landmarks of every source frame, streaming.

    Args:
        reader: A :class:`VideoReader` or a reader with its interface (see :func:`dub_stream`).
        face_model: MediaPipe ``face_landmarker.task``.
        clock: Stage timer to add to (``decode``, ``track``).
        on_progress: Called as ``on_progress("track", done, total)``.
        should_stop: Polled per frame.

    Returns:
        The clip's :class:`~stabledub_core.face.track.FaceTrack`.

    Raises:
        EmptyMediaError: If the video has fewer than 2 frames.
        NoFaceError: If no frame has a face.
    """
    from stabledub_core.face import FaceTracker
    from stabledub_core.face.track import TrackBuilder

    clock = clock or StageClock()
    total = reader.stream.frames or 0
    builder = TrackBuilder(total)
    with FaceTracker(face_model) as tracker:
        frames = reader.frames()
        while True:
            check_interrupt(should_stop)
            with clock.stage("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            with clock.stage("track"):
                chunk = tracker.feed(frame.image, frame.time)
            if chunk is not None:
                builder.append(chunk)
            if on_progress is not None:
                on_progress("track", frame.index + 1, max(total, frame.index + 1))
        last = tracker.flush()
    if last is not None:
        builder.append(last)
    if reader.num_frames < 2:
        raise EmptyMediaError(f"video {str(reader.path)!r} has {reader.num_frames} frame(s); dubbing needs at "
                              "least 2: give a real video, not a still image")
    track = builder.build()
    if not track.valid.any():
        raise NoFaceError(f"no face found in any of the {len(track)} frames of {str(reader.path)!r}: give a video "
                          "where a face is visible (frontal, not too small)")
    return track


def _read(reader: VideoReader, indices: list[int]) -> np.ndarray:
    """``(k, H, W, 3)`` images of a few source frames (seeking)."""
    return np.stack(list(reader.frames_at([Run(int(i), 1, 1) for i in indices])))


def habit_crops(reader, track, size: int, frames: int = 8, seed: int = 0) -> np.ndarray:
    """Lip crops of the lip-habit segment: a run of tracked frames, shuffled (``conditions.habit_segment``).

    Args:
        reader: A :class:`VideoReader` or a reader with its interface (see :func:`dub_stream`).
        track: The clip's ``FaceTrack``.
        size: Side of the lip crops.
        frames: K, frames in the segment (at most the clip's length).
        seed: Seed of the segment's choice and shuffle.

    Returns:
        ``(K, size, size, 3)`` uint8 lip crops.
    """
    from stabledub_core.masks.lips import lip_crops
    from stabledub_core.pipeline.conditions import habit_segment

    picks = [int(i) for i in habit_segment(track.status, min(frames, len(track)), seed)]
    return lip_crops(_read(reader, picks), track.landmarks[picks], size)


# CLI names of the reference strategies -> ReferenceStrategy values (masks/reference.py)
REFERENCE_STRATEGIES = {"closed-lips": "closed_lips", "pose": "nearest_pose", "random": "random"}


def reference_image(reader, track, strategy: str = "closed-lips", seed: int = 0) -> np.ndarray:
    """The appearance reference frame.

    Args:
        reader: A :class:`VideoReader` or a reader with its interface (see :func:`dub_stream`).
        track: The clip's ``FaceTrack``.
        strategy: ``closed-lips``, ``pose`` or ``random`` (or a ``ReferenceStrategy`` value).
        seed: Seed of the ``random`` strategy.

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    from stabledub_core.masks.reference import ReferenceStrategy, choose_reference

    name = REFERENCE_STRATEGIES.get(strategy, strategy)
    try:
        kind = ReferenceStrategy(name)
    except ValueError:
        raise OptionError(f"unknown reference strategy {strategy!r}; choose one of "
                          f"{', '.join(REFERENCE_STRATEGIES)}") from None
    index = choose_reference(track.landmarks, track.status, kind, seed)
    return _read(reader, [index])[0]


def _load_occluder(path, size: tuple[int, int]) -> np.ndarray | None:
    """An occluder mask image as ``(H, W)`` float32 in [0, 1], or None."""
    if path is None:
        return None
    import cv2

    from stabledub_core.errors import require_file

    image = cv2.imread(str(require_file(path, "occluder mask")), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OptionError(f"occluder mask {str(path)!r} is not an image OpenCV can read: give a PNG")
    if image.shape != size:
        raise OptionError(f"occluder mask {str(path)!r} is {image.shape[1]}x{image.shape[0]} but the video is "
                          f"{size[1]}x{size[0]}: give it at the video's size")
    return image.astype(np.float32) / 255


def _check_occluder(occluder, num_frames: int, size: tuple[int, int]) -> np.ndarray | None:
    """An occluder mask as float32 ``(F_src, H, W)`` (one for every source frame), or None.

    Args:
        occluder: ``(H, W)`` (the same for every frame), ``(1, H, W)`` or ``(F_src, H, W)``, or None.
        num_frames: F_src, frames of the source clip.
        size: ``(H, W)`` of the frames.

    Raises:
        OptionError: For any other shape.
    """
    if occluder is None:
        return None
    occluder = np.asarray(occluder, np.float32)
    if occluder.ndim == 2:
        occluder = occluder[None]
    if occluder.ndim != 3 or occluder.shape[1:] != size or occluder.shape[0] not in (1, num_frames):
        raise OptionError(f"the occluder mask has shape {occluder.shape} but the clip has {num_frames} frames of "
                          f"{size[1]}x{size[0]}: give one (H, W) mask for all frames or one per frame (F, H, W)")
    return np.broadcast_to(occluder, (num_frames, *size))


class _MaskWindows:
    """Crop boxes and union masks of the output frames, planned in groups of mask windows on demand.

    Windows are aligned to multiples of :data:`MASK_WINDOW` output frames, so a frame gets the same box in every
    sampler chunk that contains it. Only the last two groups are kept.
    """

    def __init__(self, track, index: np.ndarray, crop_size: int, options: DubOptions):
        from stabledub_core.masks.config import MaskConfig

        self.track, self.index, self.crop_size = track, index, crop_size
        self.config = MaskConfig() if options.mask_margin is None else MaskConfig(coarse_dilation=options.mask_margin)
        self.group = MASK_WINDOW * MASK_GROUP
        self._cache: dict[int, list] = {}

    def _plan(self, g: int) -> list:
        if g not in self._cache:
            from stabledub_core.face import FaceTrack
            from stabledub_core.masks.crop_spans import plan_windows

            previous = self._plan(g - 1)[-1].box if g > 0 else None  # boxes continue smoothly across groups
            frames = self.index[g * self.group:(g + 1) * self.group]
            sub = FaceTrack(self.track.landmarks[frames], self.track.status[frames], self.track.frame_size)
            windows = plan_windows(sub, window=MASK_WINDOW, overlap=0, crop_size=self.crop_size, config=self.config,
                                   previous_box=previous)
            self._cache = {k: v for k, v in self._cache.items() if k == g - 1}
            self._cache[g] = windows
        return self._cache[g]

    def window(self, i: int):
        """``(window, offset)``: the mask window of output frame ``i`` and ``i``'s position in it."""
        g, r = divmod(i, self.group)
        window = self._plan(g)[r // MASK_WINDOW]
        return window, r - window.start


def _dub_frames(reader, writer, plan: LengthPlan, index, write_times, track, reference, occluder,
                model: ChunkModel, options: DubOptions, clock: StageClock, on_progress, should_stop) -> int:
    """Pass 2: stream the output frames chunk by chunk. Returns the number of faceless frames written."""
    from stabledub_core.masks.exposure import apply, from_occluder, grid_size
    from stabledub_core.pipeline.composite import crop_frames, paste_back
    from stabledub_core.pipeline.windows import plan_chunks, stitch_images

    size = model.crop_size
    windows = _MaskWindows(track, index, size, options)
    chunks = plan_chunks(plan.num_frames, options.windows_per_chunk, options.window, options.overlap)
    source = reader.frames_at(plan.runs)
    buffer: dict[int, np.ndarray] = {}  # output index -> source image, for the current chunk and its overlap
    masks: dict[int, np.ndarray] = {}  # output index -> inpainting mask, likewise
    grid = grid_size(size, grid=EXPOSURE_GRID)
    read = 0  # output frames read so far

    def generate(number: int, chunk) -> np.ndarray:
        """Read, crop and mask the chunk's frames and generate their crops."""
        nonlocal read
        check_interrupt(should_stop)
        with clock.stage("decode"):
            while read < chunk.stop:
                buffer[read] = next(source)
                read += 1
        with clock.stage("crop"):
            n = chunk.stop - chunk.start
            crops = np.empty((n, size, size, 3), np.uint8)
            appearance = np.empty((n, size, size, 3), np.uint8)
            for k, i in enumerate(range(chunk.start, chunk.stop)):
                window, offset = windows.window(i)
                crops[k] = crop_frames(buffer[i][None], window.box, size)[0]
                appearance[k] = crop_frames(reference[None], window.box, size)[0]
                mask = window.union_mask
                if occluder is not None and not window.passthrough:
                    frame_occluder = occluder[index[i]][None]  # (1, H, W): the output frame's source frame
                    mask = apply(mask, from_occluder(frame_occluder, _single(window, offset), grid)[0])
                masks[i] = mask
        return model.generate(chunk.start, crops, np.stack([masks[i] for i in range(chunk.start, chunk.stop)]),
                              appearance, clock, should_stop, on_step=_chunk_steps(on_progress, number, len(chunks)))

    faceless = 0
    for start, final in stitch_images(chunks, generate):
        for k, i in enumerate(range(start, start + len(final))):
            window, offset = windows.window(i)
            active = bool(window.active[offset])
            faceless += not active
            image, mask = buffer.pop(i), masks.pop(i)
            if active:
                with clock.stage("composite"):
                    image = paste_back(image[None], final[k][None], window.box, mask)[0]
            with clock.stage("encode"):
                writer.write(image, None if write_times is None else float(write_times[i]))
                if on_progress is not None:
                    on_progress("dub", i + 1, plan.num_frames)
                check_interrupt(should_stop)
    return faceless


def _chunk_steps(on_progress: ProgressCallback | None, number: int, chunks: int):
    """The ``on_step(done, total)`` of chunk ``number``: reports ``("sample", steps done, steps of all chunks)``."""
    if on_progress is None:
        return None
    return lambda done, total: on_progress("sample", number * total + done, chunks * total)


def _single(window, offset: int):
    """A one-frame view of a window (for per-frame occluder exposure)."""
    import dataclasses

    return dataclasses.replace(window, start=0, stop=1, active=window.active[offset:offset + 1],
                               landmarks=window.landmarks[offset:offset + 1])


class StableDubChunkModel:
    """:class:`ChunkModel` for a ``StableDub`` model: VAE, audio encoder, lip-habit tokens, sampler with dual CFG.

    Args:
        model: A ``StableDub`` (``.config``, ``.unet``, ``.habit``, ``.audio_encoder``, ``.vae``).
        options: Sampler settings are read from the :class:`DubOptions`.
    """

    def __init__(self, model, options: DubOptions):
        import torch

        from stabledub_core.pipeline.sampler import SamplerConfig

        self.model = model.eval()
        self.config = model.config
        self.crop_size = int(self.config.resolution)
        self.lip_size = int(self.config.habit.lip_size)
        self.device = torch.device(options.device)
        self.dtype = _torch_dtype(options.dtype)
        self.sampler = SamplerConfig(scheduler=options.scheduler, num_inference_steps=options.steps,
                                     scale_audio=options.audio_scale, scale_habit=options.habit_scale,
                                     window=options.window, overlap=options.overlap, seed=options.seed)
        self._noise = None
        self._v = None

    def begin(self, wave16: np.ndarray, frame_times: np.ndarray, lip_crops: np.ndarray,
              source: SourceSpeech | None = None) -> None:
        import torch

        self.wave16 = wave16
        self.times = np.asarray(frame_times, np.float64)
        self.source = source
        with torch.no_grad():
            crops = torch.from_numpy(lip_crops).permute(0, 3, 1, 2).float().div(255)[None]  # (1, K, 3, s, s)
            self._v = self.model.habit.encode_habit(crops.to(self.device, self.dtype))[0]  # (C,)
        latent = self.crop_size // 2 ** (len(self.config.vae.block_out_channels) - 1)
        self._noise = self.sampler.clip_noise((self.config.vae.latent_channels, latent, latent))

    def _audio_windows(self, wave16: np.ndarray, times: np.ndarray):
        """``(n, T, C_a)`` per-frame audio features of the speech ``wave16`` at the frame times ``times`` (s)."""
        import torch

        from stabledub_core.models.audio_context import frame_windows

        encoder = self.model.audio_encoder
        audio_cfg = self.config.audio
        margin = audio_cfg.window_seconds + 1.0  # seconds of context around the chunk
        a = max(int((times[0] - margin) * ENCODER_SAMPLE_RATE), 0)
        b = min(int((times[-1] + margin) * ENCODER_SAMPLE_RATE), len(wave16))
        segment = torch.from_numpy(np.ascontiguousarray(wave16[a:max(b, a + 1)]))[None]
        with torch.no_grad():
            features = encoder(segment.to(self.device))[0].float().cpu()  # (T_feat, C_a)
        return frame_windows(features, encoder.frame_rate, times - a / ENCODER_SAMPLE_RATE,
                             audio_cfg.tokens_per_frame, audio_cfg.window_seconds,
                             feature_offset=getattr(encoder, "time_offset", 0.0))

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        import torch

        from stabledub_core.masks.exposure import to_latent
        from stabledub_core.models.vae import decode_latents, encode_frames
        from stabledub_core.pipeline.conditions import branch_tokens
        from stabledub_core.pipeline.guidance import Branch
        from stabledub_core.pipeline.inversion import invert_clip
        from stabledub_core.pipeline.sampler import ClipConditions, denoise_chunk

        n = len(crops)
        factor = self.crop_size // self._noise.shape[-1]
        vae = self.model.vae
        with torch.no_grad():
            with clock.stage("audio"):
                audio = self._audio_windows(self.wave16, self.times[start:start + n])  # (n, T, C_a)
                tokens = branch_tokens(self.model.habit, audio, self._v, self.sampler.guidance.branches,
                                       self.device, self.dtype)  # branch -> (n, T', C_cross)
            with clock.stage("vae_encode"):
                hide = (masks > 0)[..., None]  # (n, S, S, 1)
                masked = torch.from_numpy(np.where(hide, 0, crops)).permute(0, 3, 1, 2).float().div(255)
                masked = encode_frames(vae, masked).float().cpu()  # (n, 4, h, w)
                # The reference crop is the same for all frames of a mask window: encode each distinct one once
                unique, inverse = np.unique(appearance.reshape(n, -1), axis=0, return_inverse=True)
                app = torch.from_numpy(unique.reshape(-1, *appearance.shape[1:])).permute(0, 3, 1, 2).float()
                app = encode_frames(vae, app.div(255)).float().cpu()[torch.from_numpy(inverse.reshape(-1))]
                mask = torch.from_numpy(to_latent(masks, factor))[:, None]  # (n, 1, h, w)
            start_latents = {"noise": self._noise.frames(start, start + n)}
            if self.source is not None:
                with clock.stage("invert"):  # EdiDub: the source crops' latents walked back to the first step
                    source_audio = self._audio_windows(self.source.wave16, self.source.frame_times[start:start + n])
                    source_tokens = branch_tokens(self.model.habit, source_audio, self._v, (Branch.FULL,),
                                                  self.device, self.dtype)
                    clean = encode_frames(vae, torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255))
                    start_latents = {"init_latents": invert_clip(
                        self.model.unet, ClipConditions(masked, mask, app, source_tokens), clean.float().cpu(),
                        self.sampler, self.device, self.dtype, should_stop=should_stop)}
            with clock.stage("sample"):
                conditions = ClipConditions(masked, mask, app, tokens)
                latents = denoise_chunk(self.model.unet, conditions, self.sampler, **start_latents,
                                        device=self.device, dtype=self.dtype, on_step=on_step,
                                        should_stop=should_stop)
            with clock.stage("vae_decode"):
                images = decode_latents(vae, latents)  # (n, 3, S, S) in [0, 1]
        return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
