"""The streaming dub: video + speech in, dubbed video out, with memory that does not grow with the video's length.

One orchestration for every whole-video entry point; they differ only in their frame source and sink:

* :func:`dub_video`: files in, a file out (the CLI): ``VideoReader`` -> ``VideoWriter``;
* :func:`dub_clip`: frames in memory (the all-in-one ComfyUI node): ``FrameSource`` -> ``FrameSink``;
* :func:`dub_stream`: any source and sink.

Two passes over the source, both through the stages of ``pipeline/stages.py``:

1. **Tracking** streams every frame through the face tracker; only the landmarks (478 points a frame) are kept.
2. **Dubbing** streams the output frames (in the order the length policy asks for) chunk by chunk: crop spans
   planned on demand, crops and inpainting masks, sampling of the chunk's overlapping sampler windows, cross-fade
   with the previous chunk, paste-back, and the sink. At any time only one chunk of frames (plus its overlap) is in
   memory.

What still grows with the length is small: the landmarks (3.8 KB a frame), the 16 kHz mono speech for the audio
encoder (64 KB a second) and the output-to-source index (8 bytes a frame): about 95 MB for 10 minutes at 25 fps.

Frames without a face are written unchanged. ``should_stop()`` is polled between frames, chunks and sampler steps;
it raises :class:`~stabledub_core.runtime.Interrupted`, and the atomic writer then leaves no file behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, ContextManager

import cv2
import numpy as np
import torch

from stabledub_core.errors import EmptyMediaError, NoAudioStreamError, OptionError, require_file
from stabledub_core.face.selection import FaceChoice
from stabledub_core.masks.crop_spans import CropPlan, MaskCaps
from stabledub_core.media.audio import (
    check_waveform,
    encoder_length,
    fit_samples,
    load_encoder_input,
    probe_audio,
    to_encoder_input,
)
from stabledub_core.media.frames import FrameSink, FrameSource
from stabledub_core.media.length_policy import LengthPlan, LengthPolicy, plan_length
from stabledub_core.media.video import VideoReader, VideoWriter, output_format
from stabledub_core.models.audio_context import uniform_frame_times
from stabledub_core.pipeline.chunk_model import SourceSpeech, as_chunk_model
from stabledub_core.pipeline.options import DubOptions
from stabledub_core.pipeline.stages import (
    AppearanceCrops,
    ChunkArrays,
    Compositor,
    check_occluder,
    check_reference,
    crop_frame,
    generate_chunks,
    habit_lip_crops,
    inpaint_mask,
    reference_frame,
    track_faces,
)
from stabledub_core.runtime import ProgressCallback, StageTimer, StopCheck

SinkOpener = Callable[[LengthPlan, "Fraction | None"], ContextManager]  # (plan, time base or None) -> sink


@dataclass
class DubResult:
    """What a dub produced.

    Attributes:
        sink: The (closed) sink the output frames were written to.
        plan: The length plan: output frames, frame rate, speech samples.
        faceless_frames: Output frames written unchanged because no face was tracked in them.
        habit: ``(C,)`` the lip-habit vector the dub used (save it with ``conditions.save_habit_vector``).
        seconds: Wall time per stage.
        face: Which face was dubbed when several were seen (``faces``, ``rank`` from the left, ``centre``), or None.
        undecodable_frames: Frames that could not be decoded (a truncated or damaged file): those the container's
            header announces beyond the decoded ones, or the packets FFmpeg could not decode, whichever is more; the
            dub covers only the decodable frames.
        size: ``(H, W)`` of the output frames (always the source's).
        source_frames: Frames decoded from the source.
        mask_caps: Windows where fast motion made the union mask grow past ``max_mask_growth`` (their masks followed
            the face instead; :func:`mask_cap_note` says it in a sentence).
    """

    sink: object
    plan: LengthPlan
    faceless_frames: int
    habit: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    face: FaceChoice | None = None
    undecodable_frames: int = 0
    size: tuple[int, int] | None = None
    source_frames: int = 0
    mask_caps: MaskCaps = field(default_factory=MaskCaps)

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames

    @property
    def fps(self) -> Fraction:
        return self.plan.fps

    @property
    def audio_bit_exact(self) -> bool:
        """True when the speech track was written untouched."""
        return not self.plan.audio_changed


def dub_stream(source, wave16: np.ndarray, num_samples: int, sample_rate: int, model, options: DubOptions,
               open_sink: SinkOpener, occluder: np.ndarray | None = None,
               on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
               clock: StageTimer | None = None, source_wave16: np.ndarray | None = None,
               habit: torch.Tensor | None = None, reference: np.ndarray | None = None) -> DubResult:
    """Dub the frames of any source into any sink: tracking, length policy, crop spans, sampling, paste-back.

    Args:
        source: A ``VideoReader`` or ``FrameSource`` (``frames()``, ``frames_at(runs)``, ``num_frames``, ``fps``,
            ``size``, ``time_base``, ``times()``, ``is_variable_rate()``, ``stream.frames``, ``path``).
        wave16: ``(S16,)`` float32 16 kHz mono speech (the audio encoder's input).
        num_samples: Length of the speech at its own rate (the length policy works on it).
        sample_rate: That rate.
        model: A ``StableDub`` model, a checkpoint path, or any ``chunk_model.ChunkModel``.
        options: :class:`DubOptions` (``output`` is the sink's business).
        open_sink: Called once as ``open_sink(plan, time_base)`` (``time_base``: the source's, for a variable-rate
            output, else None); returns a context manager whose value has ``write(image, time)``.
        occluder: ``(H, W)`` or ``(F_src, H, W)`` float occluder mask in [0, 1] in frame coordinates (white = an
            occluder in front of the mouth whose pixels are kept), or None.
        on_progress: Called as ``on_progress(stage, done, total)``: ``"track"`` (source frames), ``"sample"``
            (sampler steps over all chunks) and ``"paste"`` (output frames written).
        should_stop: Polled often; returning True aborts with ``Interrupted``.
        clock: Stage timer to add to (default: a new one).
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the video was filmed with; needed (and used) when
            ``options.sampling.invert`` is set.
        habit: A saved ``(C,)`` lip-habit vector to use instead of encoding one from the video's own lips.
        reference: ``(H, W, 3)`` uint8 appearance frame (the source's frame size, the face where the source's is) to
            use instead of the frame ``options.conditions.reference`` picks from the source.

    Returns:
        The :class:`DubResult`.
    """
    clock = clock or StageTimer()
    reference = check_reference(reference, source.size)
    if options.sampling.invert and source_wave16 is None:
        raise OptionError("inversion needs the speech the video was filmed with: give the source speech, or dub "
                          "without inversion")
    policy = LengthPolicy.parse(options.length.length_policy)
    chunk_model = as_chunk_model(model, options.sampling, options.runtime)
    if not 0 <= options.sampling.overlap < chunk_model.window:  # checked before the long tracking pass
        raise OptionError(f"overlap {options.sampling.overlap} must be smaller than the model's window of "
                          f"{chunk_model.window} frames: give an overlap from 0 to {chunk_model.window - 1}")
    track = track_faces(source, options.tracking.face_model, clock, on_progress, should_stop, options.tracking)
    announced = int(getattr(source.stream, "frames", 0) or 0)  # the container's count (0: not stored, e.g. MKV)
    undecodable = max(announced - source.num_frames, int(getattr(source, "damaged_packets", 0)), 0)
    occluder = check_occluder(occluder, source.num_frames, source.size)
    plan = plan_length(policy, source.num_frames, source.fps, num_samples, sample_rate)
    variable = plan.is_identity and source.is_variable_rate()
    index = plan.index_array()  # (F_out,) source frame of each output frame
    times = source.times() if variable else uniform_frame_times(plan.num_frames, plan.fps)
    wave16 = fit_samples(wave16, encoder_length(plan.audio_samples, sample_rate))
    speech = None
    if options.sampling.invert:
        speech = SourceSpeech.covering(source_wave16, source.times()[index], source.fps)
    conditions = options.conditions
    with clock.stage("prepare"):
        if habit is None:
            habit = chunk_model.encode_habit(habit_lip_crops(source, track, chunk_model.lip_size,
                                                             conditions.habit_frames, options.sampling.seed))
        chunk_model.begin(wave16, times, habit, source=speech)
        if reference is None:
            reference = reference_frame(source, track, conditions.reference, options.sampling.seed)
        appearance_of = AppearanceCrops(reference, chunk_model.crop_size)
    crop_plan = CropPlan(track, chunk_model.crop_size, chunk_model.window, options.masks.mask_config(chunk_model.crop_box_scale), index,
                         keep_all=False)
    frames = source.frames_at(plan.runs)
    buffer: dict[int, np.ndarray] = {}  # output index -> source image, for the current chunk and its overlap
    masks: dict[int, np.ndarray] = {}  # output index -> inpainting mask, likewise
    size = chunk_model.crop_size
    arrays = ChunkArrays(size)

    read = 0  # output frames read so far

    def chunk_inputs(chunk):
        nonlocal read
        with clock.stage("decode"):
            while read < chunk.stop:
                buffer[read] = next(frames)
                read += 1
        with clock.stage("crop"):
            crops, chunk_masks, appearance = arrays(chunk.length)
            for k, i in enumerate(range(chunk.start, chunk.stop)):
                span, offset = crop_plan.span_at(i)
                crops[k] = crop_frame(buffer[i], span, size)
                appearance[k] = appearance_of(span)
                masks[i] = inpaint_mask(span, offset, options.masks,
                                        occluder=None if occluder is None else occluder[index[i]])
                chunk_masks[k] = masks[i]
        return crops, chunk_masks, appearance

    with open_sink(plan, source.time_base if variable else None) as sink:
        compositor = Compositor(crop_plan, sink, plan.num_frames, times=times if variable else None, clock=clock,
                                on_progress=on_progress, should_stop=should_stop)
        for start, crops in generate_chunks(chunk_model, plan.num_frames, chunk_inputs, options.sampling, clock,
                                            on_progress, should_stop):
            done = range(start, start + len(crops))
            compositor.write(start, [buffer.pop(i) for i in done], crops, [masks.pop(i) for i in done])
    return DubResult(sink, plan, compositor.faceless, habit.detach().float().cpu(), dict(clock.seconds), track.choice,
                     undecodable, tuple(source.size), source.num_frames, crop_plan.caps)


def mask_cap_note(caps: MaskCaps, option: str = "max_mask_growth") -> str | None:
    """One sentence for the user when fast motion capped union masks, else None.

    Args:
        caps: The dub's :class:`~stabledub_core.masks.crop_spans.MaskCaps` (``DubResult.mask_caps``).
        option: How the user names the bound (the CLI: ``--max-mask-growth``).
    """
    if not caps.spans:
        return None
    return (f"fast motion: in {caps.spans} of {caps.total_spans} windows ({caps.frames} frames) the face moved so "
            f"far that the union mouth mask would have covered up to {caps.widest:.1f}x one frame's mask, over the "
            f"background; there the mask followed the face instead, at most {caps.limit:g}x ({option} sets it)")


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
        packets = reader.count_packets(2)
        if packets < 2:
            raise EmptyMediaError(f"video {str(video)!r} has {packets} frame(s); dubbing needs at least 2: give a "
                                  "real video, not a still image")
        if audio is None and not reader.has_audio:
            raise NoAudioStreamError(f"video {str(video)!r} has no audio track and no speech was given: "
                                     "give the speech with --audio")
    probe_audio(video if audio is None else audio, "video" if audio is None else "audio")


def load_occluder_image(path, size: tuple[int, int]) -> np.ndarray:
    """An occluder mask image (white = occluder) as ``(H, W)`` float32 in [0, 1], checked against the video size."""
    image = cv2.imread(str(require_file(path, "occluder mask")), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OptionError(f"occluder mask {str(path)!r} is not an image OpenCV can read: give a PNG")
    if image.shape != tuple(size):
        raise OptionError(f"occluder mask {str(path)!r} is {image.shape[1]}x{image.shape[0]} but the video is "
                          f"{size[1]}x{size[0]}: give it at the video's size")
    return image.astype(np.float32) / 255


def _source_speech(video) -> np.ndarray:
    """The 16 kHz mono speech of the video itself (for inversion)."""
    try:
        return load_encoder_input(video, "video")[0]
    except NoAudioStreamError as error:
        raise OptionError(f"inversion needs the speech the video was filmed with, but {str(video)!r} has no audio "
                          "track: dub without inversion") from error


def dub_video(video, audio, model, out, options: DubOptions | None = None, occluder_mask=None,
              on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
              habit: torch.Tensor | None = None) -> DubResult:
    """Dub a video file with a speech file into a new video file.

    Args:
        video: Video with a face.
        audio: Speech (any audio or video file); ``None`` uses the video's own audio track.
        model: A ``StableDub`` model, a checkpoint path (``.safetensors``), or any ``chunk_model.ChunkModel``.
        out: Output path (.mp4, .m4v, .mov or .mkv); written atomically.
        options: :class:`DubOptions`.
        occluder_mask: Optional image file (H, W) of the video's size, or an ``(H, W)`` / ``(F, H, W)`` float
            array in [0, 1]; white = an occluder in front of the mouth whose pixels are kept.
        on_progress: Called as ``on_progress(stage, done, total)``; see :func:`dub_stream`.
        should_stop: Polled often; returning True aborts with ``Interrupted`` and leaves no output file.
        habit: A saved ``(C,)`` lip-habit vector (e.g. of another video of the speaker).

    Returns:
        A :class:`DubResult` whose ``sink`` is the closed ``VideoWriter`` (``sink.path``, ``sink.audio``).
    """
    options = options or DubOptions()
    clock = StageTimer()
    with clock.stage("audio_decode"):
        check_inputs(video, audio, out)
    with VideoReader(video) as reader:
        with clock.stage("audio_decode"):
            wave16, info = load_encoder_input(video if audio is None else audio,
                                              "video" if audio is None else "audio")
            source16 = None
            if options.sampling.invert:
                source16 = wave16 if audio is None else _source_speech(video)
        occluder = occluder_mask
        if isinstance(occluder_mask, (str, Path)):
            occluder = load_occluder_image(occluder_mask, reader.size)
        output = options.output

        def open_writer(plan: LengthPlan, time_base: Fraction | None) -> VideoWriter:
            return VideoWriter(out, plan.fps, reader.size, audio=info, audio_samples=plan.audio_samples,
                               crf=output.crf, preset=output.x264_preset, time_base=time_base)

        return dub_stream(reader, wave16, info.num_samples, info.sample_rate, model, options, open_writer,
                          occluder, on_progress, should_stop, clock, source16, habit)


@dataclass
class DubbedClip:
    """What :func:`dub_clip` produced.

    Attributes:
        frames: ``(F_out, H, W, 3)`` uint8 dubbed frames.
        waveform: ``(C, S_out)`` float32 speech with the length policy applied.
        sample_rate: Its rate.
        fps: Output frame rate.
        faceless_frames: Output frames left unchanged because no face was tracked in them.
        habit: ``(C,)`` the lip-habit vector used.
        face: Which face was dubbed when several were seen, or None (see :class:`DubResult`).
        mask_caps: Windows whose union mask fast motion capped (see :class:`DubResult`).
    """

    frames: np.ndarray
    waveform: np.ndarray
    sample_rate: int
    fps: Fraction
    faceless_frames: int
    habit: torch.Tensor
    face: FaceChoice | None = None
    mask_caps: MaskCaps = field(default_factory=MaskCaps)


def dub_clip(source: FrameSource, waveform: np.ndarray, sample_rate: int, model, options: DubOptions | None = None,
             occluder: np.ndarray | None = None, on_progress: ProgressCallback | None = None,
             should_stop: StopCheck | None = None, source_wave16: np.ndarray | None = None,
             habit: torch.Tensor | None = None, reference: np.ndarray | None = None) -> DubbedClip:
    """Dub an in-memory clip with a speech waveform: :func:`dub_stream` from a ``FrameSource`` into a ``FrameSink``.

    Args:
        source: The clip (constant frame rate).
        waveform: ``(C, S)`` float32 speech.
        sample_rate: Its rate.
        model: A ``StableDub`` model, a checkpoint path, or any ``ChunkModel``.
        options: :class:`DubOptions` (``output`` is ignored).
        occluder: ``(H, W)`` (all frames) or ``(F, H, W)`` (per frame) float occluder mask in frame coordinates
            (white = keep those pixels), or None.
        on_progress: Called as ``on_progress(stage, done, total)`` (stages: see :func:`dub_stream`).
        should_stop: Polled often; True raises ``Interrupted``.
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the clip was filmed with (for inversion).
        habit: A saved ``(C,)`` lip-habit vector.
        reference: ``(H, W, 3)`` uint8 appearance frame instead of one picked from the clip (see :func:`dub_stream`).

    Returns:
        The :class:`DubbedClip`.
    """
    waveform = check_waveform(waveform, sample_rate)
    result = dub_stream(source, to_encoder_input(waveform, sample_rate), waveform.shape[1], sample_rate, model,
                        options or DubOptions(), lambda plan, _time_base: FrameSink(plan.num_frames, source.size),
                        occluder, on_progress, should_stop, source_wave16=source_wave16, habit=habit,
                        reference=reference)
    plan = result.plan
    return DubbedClip(result.sink.result(), fit_samples(waveform, plan.audio_samples), sample_rate, plan.fps,
                      result.faceless_frames, result.habit, result.face, result.mask_caps)
