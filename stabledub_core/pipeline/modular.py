"""The stages over a whole clip in memory, one function per node of the modular ComfyUI graph.

    Track Faces -> Plan Masks -> (Occluder Exposure) -> Crop Faces -> Lip Crops -> Sample -> Paste Back
                                                               (Audio Encode) -^

Each function maps the per-frame stage of ``pipeline/stages.py`` over the clip, so the graph computes exactly what
the streaming dub computes for the same frames, options and seed; what it adds is that every intermediate is a value
a user can look at, replace or feed from other packs (restore or upscale the crops before pasting them back, give an
occluder MASK from a segmentation node).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

from stabledub_core.errors import EmptyMediaError, OptionError
from stabledub_core.face.track import FaceTrack
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.crop_spans import CropPlan
from stabledub_core.masks.exposure import ExposedPatches
from stabledub_core.media.audio import check_waveform, encoder_length, fit_samples, to_encoder_input
from stabledub_core.media.clip import write_clip, write_wav
from stabledub_core.media.video import output_format
from stabledub_core.media.frames import FrameSink, FrameSource, frame_rate
from stabledub_core.media.length_policy import plan_length
from stabledub_core.models.audio_context import uniform_frame_times
from stabledub_core.pipeline.chunk_model import SourceSpeech, as_chunk_model
from stabledub_core.pipeline.dub import DubResult, dub_video
from stabledub_core.pipeline.options import DubOptions, MaskOptions
from stabledub_core.pipeline.stages import (
    AppearanceCrops,
    Compositor,
    check_occluder,
    crop_frame,
    generate_chunks,
    inpaint_mask,
    occluder_cells,
)
from stabledub_core.runtime import ProgressCallback, StageTimer, StopCheck, check_interrupt


def plan_masks(track: FaceTrack, crop_size: int, window: int, options: MaskOptions,
               box_scale: float = MaskConfig.box_scale) -> CropPlan:
    """The crop spans of every frame of a clip (kept in memory for the other nodes).

    Args:
        track: The clip's face track.
        crop_size: The model's crop size (``config.resolution``).
        window: The model's window (``config.num_frames``).
        options: Mask geometry.
        box_scale: The model's crop framing (``config.crop_box_scale``).
    """
    return CropPlan(track, crop_size, window, options.mask_config(box_scale), keep_all=True)


def crop_clip(source: FrameSource, plan: CropPlan, image: np.ndarray | None = None,
              should_stop: StopCheck | None = None) -> np.ndarray:
    """Model-resolution crops of every frame with its span's box.

    Args:
        source: The clip.
        plan: Its crop spans.
        image: Crop this one ``(H, W, 3)`` image (the appearance reference frame) with every frame's box instead.
        should_stop: Polled per frame.

    Returns:
        ``(F, S, S, 3)`` uint8.
    """
    plan.check_frames(source.num_frames)
    out = np.empty((source.num_frames, plan.crop_size, plan.crop_size, 3), np.uint8)
    appearance_of = None if image is None else AppearanceCrops(image, plan.crop_size)
    for i in range(source.num_frames):
        check_interrupt(should_stop)
        span = plan.span_at(i)[0]
        out[i] = crop_frame(source.image(i), span, plan.crop_size) if image is None else appearance_of(span)
    return out


def mask_clip(plan: CropPlan, options: MaskOptions, patches: ExposedPatches | None = None,
              occluder: np.ndarray | None = None, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """Inpainting masks of every frame: its span's Mu with the exposed patches set to 0 (crop coordinates).

    Args:
        plan: The clip's crop spans.
        options: Occluder grid and coverage.
        patches: Patches exposed in every frame (the editor's).
        occluder: ``(H, W)``, ``(1, H, W)`` or ``(F, H, W)`` float occluder mask in frame coordinates.
        frame_size: ``(H, W)`` of the frames (needed with ``occluder``).

    Returns:
        ``(F, S, S)`` float32, 1 = inpaint, 0 = keep the source pixels.
    """
    n = len(plan)
    if occluder is not None:
        occluder = check_occluder(occluder, n, frame_size or plan.track.frame_size)
    out = np.empty((n, plan.crop_size, plan.crop_size), np.float32)
    for i in range(n):
        span, offset = plan.span_at(i)
        out[i] = inpaint_mask(span, offset, options, patches, None if occluder is None else occluder[i])
    return out


def occluded_cells(plan: CropPlan, index: int, options: MaskOptions, occluder: np.ndarray) -> ExposedPatches:
    """The patches an occluder exposes in frame ``index`` (what the patch editor shows)."""
    span, offset = plan.span_at(index)
    frame = check_occluder(occluder, len(plan), plan.track.frame_size)[index]
    return occluder_cells(span, offset, options, frame)


@dataclass
class AudioFeatures:
    """Speech encoded once for a clip's frames (the ComfyUI Audio Encode node), reusable by every Sample.

    Attributes:
        context: ``(F, T, C_a)`` float32 per-frame audio context (``StableDubChunkModel.audio_context``).
        wave16: ``(S16,)`` float32 16 kHz mono speech it was encoded from (after the length policy).
        fps: Frame rate of the frames.
        waveform: ``(C, S)`` float32 speech after the length policy, at ``sample_rate`` (to save with the frames).
        sample_rate: Its rate.
    """

    context: torch.Tensor
    wave16: np.ndarray
    fps: Fraction
    waveform: np.ndarray
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return len(self.context)


def encode_audio(model, waveform: np.ndarray, sample_rate: int, num_frames: int, fps, length_policy: str,
                 options: DubOptions | None = None) -> AudioFeatures:
    """Encode speech once into the per-frame audio context of a clip's frames, under a length policy.

    The speech is fitted as the streaming dub fits it (``plan_length``; resampled to 16 kHz, then cut or padded to
    the policy's duration) and encoded block by block as ``StableDubChunkModel.generate`` does, so Sample with these
    features gives exactly what it computes from the speech itself.

    Args:
        model: A ``StableDub`` or any ``ChunkModel`` with ``audio_context``.
        waveform: ``(C, S)`` float32 speech.
        sample_rate: Its rate.
        num_frames: Frames of the clip the speech is for.
        fps: Their frame rate.
        length_policy: What to do when speech and frames differ in length (``LengthOptions.length_policy``). A
            policy that changes the frame count (e.g. ``loop``) gives features for the new count: fit the frames the
            same way (StableDub Fit Length).
        options: Runtime (device, dtype).

    Returns:
        The :class:`AudioFeatures`.
    """
    options = options or DubOptions()
    waveform = check_waveform(waveform, sample_rate)
    rate = frame_rate(fps)
    plan = plan_length(length_policy, int(num_frames), rate, waveform.shape[1], sample_rate)
    wave16 = fit_samples(to_encoder_input(waveform, sample_rate), encoder_length(plan.audio_samples, sample_rate))
    chunk_model = as_chunk_model(model, options.sampling, options.runtime)
    context = chunk_model.audio_context(wave16, uniform_frame_times(plan.num_frames, plan.fps))  # (F, T, C_a)
    return AudioFeatures(context, wave16, plan.fps, fit_samples(waveform, plan.audio_samples), sample_rate)


def check_audio_features(features: AudioFeatures, num_frames: int, fps) -> AudioFeatures:
    """Audio features checked against the frames they are used with (count and frame rate)."""
    if features.num_frames != num_frames:
        raise OptionError(f"the audio features cover {features.num_frames} frames but there are {num_frames}: encode "
                          "the speech for these frames (StableDub Audio Encode with their images), or fit the frames "
                          "with the same length policy (StableDub Fit Length)")
    if frame_rate(fps) != features.fps:
        raise OptionError(f"the audio features were encoded for {float(features.fps):g} fps but the frames are at "
                          f"{float(frame_rate(fps)):g} fps: give Audio Encode the frames' fps")
    return features


def generate_crops(model, crops: np.ndarray, masks: np.ndarray, appearance: np.ndarray, wave16: np.ndarray | None,
                   fps, habit: np.ndarray | torch.Tensor, options: DubOptions | None = None,
                   on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
                   source_wave16: np.ndarray | None = None,
                   audio_features: AudioFeatures | None = None) -> np.ndarray:
    """Dub model-resolution crops with a model: the chunk loop of the streaming dub over crops in memory.

    Args:
        model: A ``StableDub`` or any :class:`~stabledub_core.pipeline.chunk_model.ChunkModel`.
        crops: ``(F, S, S, 3)`` uint8 source crops at the model's resolution.
        masks: ``(F, S, S)`` float32 inpainting masks (1 = generate).
        appearance: ``(F, S, S, 3)`` uint8 appearance reference crops.
        wave16: ``(S16,)`` float32 16 kHz mono speech; frame ``i`` is at ``i / fps`` seconds (None with
            ``audio_features``).
        fps: Frame rate of the crops.
        habit: ``(K, s, s, 3)`` uint8 lip crops of the habit segment (any clip of the same speaker), or a saved
            ``(C,)`` habit vector.
        options: :class:`DubOptions` (sampling, runtime).
        on_progress: Called as ``on_progress("sample", steps done, steps of all chunks)``.
        should_stop: Interruption check.
        source_wave16: ``(S16,)`` float32 16 kHz mono speech the crops were filmed with (same timing as
            ``wave16``): when given, every chunk starts from the DDIM inversion of its crops under it.
        audio_features: The speech encoded once (:func:`encode_audio`), instead of ``wave16``: the same crops as
            from the speech it was encoded from.

    Returns:
        ``(F, S, S, 3)`` uint8 generated crops.
    """
    options = options or DubOptions()
    if (wave16 is None) == (audio_features is None):
        raise OptionError("give either the speech or its audio features (StableDub Audio Encode), not both")
    chunk_model = as_chunk_model(model, options.sampling, options.runtime)
    n, size = len(crops), chunk_model.crop_size
    for name, value, shape in (("crops", crops, (n, size, size, 3)), ("masks", masks, (n, size, size)),
                               ("appearance", appearance, (n, size, size, 3))):
        if tuple(value.shape) != shape:
            raise OptionError(f"{name} must be {shape} for {n} frames at the model's {size}-pixel resolution, got "
                              f"{tuple(value.shape)}: crop them with the model's crop size")
    rate = frame_rate(fps)
    times = uniform_frame_times(n, rate)
    v = habit if isinstance(habit, torch.Tensor) else chunk_model.encode_habit(habit)
    source = None if source_wave16 is None else SourceSpeech.covering(source_wave16, times, rate)
    if audio_features is None:
        chunk_model.begin(np.asarray(wave16, np.float32), times, v, source=source)
    else:
        check_audio_features(audio_features, n, rate)
        chunk_model.begin(audio_features.wave16, times, v, source=source, audio_context=audio_features.context)

    def inputs(chunk):
        part = slice(chunk.start, chunk.stop)
        return crops[part], masks[part], appearance[part]

    out = np.empty((n, size, size, 3), np.uint8)
    for start, final in generate_chunks(chunk_model, n, inputs, options.sampling, StageTimer(), on_progress,
                                        should_stop):
        out[start:start + len(final)] = final
    return out


def paste_clip(source: FrameSource, crops, plan: CropPlan, masks: np.ndarray | None = None,
               color_match: bool = False, on_progress: ProgressCallback | None = None,
               should_stop: StopCheck | None = None) -> np.ndarray:
    """Composite generated crops into every frame with its span's box and mask (the streaming dub's paste loop).

    Args:
        source: The original clip.
        crops: ``(F, s, s, 3)`` generated crops of any size ``s`` (uint8 or float in [0, 1]).
        plan: The clip's crop spans.
        masks: ``(F, S, S)`` blending masks in crop coordinates (e.g. from :func:`mask_clip`); default each span's
            Mu.
        color_match: Match the generated region's colours to the source around the mask.
        on_progress: Called as ``on_progress("paste", done, total)``.
        should_stop: Polled per frame.

    Returns:
        ``(F, H, W, 3)`` uint8; frames without a face are unchanged.
    """
    n = source.num_frames
    plan.check_frames(n)
    if len(crops) != n or (masks is not None and len(masks) != n):
        raise OptionError(f"{n} frames but {len(crops)} crops" + ("" if masks is None else f" and {len(masks)} "
                          "masks") + ": give one crop (and mask) per frame")
    sink = FrameSink(n, source.size)
    compositor = Compositor(plan, sink, n, color_match=color_match, on_progress=on_progress,
                            should_stop=should_stop)
    compositor.write(0, (source.image(i) for i in range(n)), crops, masks)
    return sink.result()


AUDIO_CODECS = ("aac", "lossless")  # save_clip's audio: AAC plays in browsers and players; lossless keeps 16 bits


def save_clip(path, frames, fps, waveform: np.ndarray | None = None, sample_rate: int = 0, crf: int = 18,
              preset: str = "medium", audio_codec: str = "aac", should_stop: StopCheck | None = None) -> Path:
    """Encode frames (and audio) into a video file, atomically, with the audio exactly as long as the frames.

    The frames are all written (the file has as many frames as given); the audio is cut to their duration or padded
    with silence. ``audio_codec="aac"`` stores it as AAC (it goes through a float64 WAV, a codec no output container
    takes as is, so :class:`~stabledub_core.media.audio.AudioMuxer` encodes it: AAC in MP4, MOV and MKV);
    ``"lossless"`` stores it as 16-bit PCM, losslessly (ALAC in MP4, PCM in MOV and MKV).

    Args:
        path: Output file (.mp4, .m4v, .mov or .mkv).
        frames: ``(F, H, W, 3)`` uint8 array or float tensor in [0, 1].
        fps: Frame rate.
        waveform: ``(C, S)`` float32 audio, or None for a silent video.
        sample_rate: Its rate.
        crf: x264 quality.
        preset: x264 speed preset.
        audio_codec: One of :data:`AUDIO_CODECS`.
        should_stop: Interruption check, polled per frame (no file is left behind).

    Returns:
        The path written.
    """
    if audio_codec not in AUDIO_CODECS:
        raise OptionError(f"audio codec {audio_codec!r}: use one of {', '.join(AUDIO_CODECS)}")
    path = Path(path)
    output_format(path)
    if len(frames) == 0:
        raise EmptyMediaError("no frames to write")
    if waveform is not None:  # cut or padded with silence to the frames' duration
        waveform = check_waveform(waveform, sample_rate)
        fitted = np.zeros((waveform.shape[0], int(round(len(frames) / float(frame_rate(fps)) * sample_rate))),
                          np.float32)
        kept = min(fitted.shape[1], waveform.shape[1])
        fitted[:, :kept] = waveform[:, :kept]
        if fitted.shape[1] == 0:
            raise EmptyMediaError("the frames are too short to hold any audio sample")
        waveform = fitted
    return write_clip(path, frames, fps, waveform, sample_rate, crf=crf, preset=preset, should_stop=should_stop,
                      lossless_audio=audio_codec == "lossless")


def dub_file(video, out, model, options: DubOptions | None = None, waveform: np.ndarray | None = None,
             sample_rate: int = 0, occluder: np.ndarray | None = None, on_progress: ProgressCallback | None = None,
             should_stop: StopCheck | None = None, habit: torch.Tensor | None = None) -> DubResult:
    """:func:`~stabledub_core.pipeline.dub.dub_video` (file in, file out, bounded memory) with the speech and the
    occluder given as arrays, for the ComfyUI node that dubs long videos.

    The speech is stored beside ``out`` as a hidden float WAV (the output's audio is then AAC) and the occluder as a
    hidden PNG; both are deleted in every case.

    Args:
        video: The video file.
        out: Output path (.mp4, .m4v, .mov or .mkv); written atomically.
        model: A ``StableDub`` model, a checkpoint path, or any ``ChunkModel``.
        options: :class:`DubOptions`.
        waveform: ``(C, S)`` float32 new speech, or None for the video's own audio track.
        sample_rate: Its rate.
        occluder: ``(H, W)`` or ``(1, H, W)`` float mask at the video's size (white = an occluder kept), or None.
        on_progress: Called as ``on_progress(stage, done, total)`` (stages: see ``dub_stream``).
        should_stop: Polled often; True raises ``Interrupted`` and leaves no output file.
        habit: A saved ``(C,)`` lip-habit vector.

    Returns:
        The :class:`~stabledub_core.pipeline.dub.DubResult`.
    """
    out = Path(out)
    speech = out.with_name(f".{out.stem}.speech.wav") if waveform is not None else None
    mask = out.with_name(f".{out.stem}.occluder.png") if occluder is not None else None
    try:
        if speech is not None:
            write_wav(speech, check_waveform(waveform, sample_rate), sample_rate, float64=True)
        if mask is not None:
            occluder = np.asarray(occluder, np.float32)
            if occluder.ndim == 3 and len(occluder) == 1:
                occluder = occluder[0]
            if occluder.ndim != 2:
                raise OptionError(f"the occluder of a video file must be one mask (H, W) for every frame, got shape "
                                  f"{occluder.shape}: give a single mask")
            if not cv2.imwrite(str(mask), (np.clip(occluder, 0, 1) * 255).round().astype(np.uint8)):
                raise OptionError(f"could not write the occluder mask beside {str(out)!r}")
        return dub_video(video, speech, model, out, options, mask, on_progress, should_stop, habit)
    finally:
        for temporary in (speech, mask):
            if temporary is not None:
                temporary.unlink(missing_ok=True)


def encode_habit(model, lip_crops: np.ndarray, options: DubOptions | None = None) -> torch.Tensor:
    """The lip-habit vector ``(C,)`` of lip crops (any clip of a speaker, e.g. another video), to reuse or save
    (``conditions.save_habit_vector``).

    Args:
        model: A ``StableDub`` or any ``ChunkModel``.
        lip_crops: ``(K, s, s, 3)`` uint8 lip crops (resized to the model's lip size).
        options: Runtime (device, dtype).
    """
    options = options or DubOptions()
    if lip_crops.ndim != 4 or len(lip_crops) == 0:
        raise OptionError(f"lip crops must be a non-empty (K, s, s, 3) batch, got shape {lip_crops.shape}")
    return as_chunk_model(model, options.sampling, options.runtime).encode_habit(lip_crops).detach().float().cpu()


def check_habit(model, habit: torch.Tensor) -> torch.Tensor:
    """A given habit vector, checked against the model's habit width (a vector of another preset is refused)."""
    size = int(model.config.habit.hidden_size)
    if tuple(habit.shape) != (size,):
        raise OptionError(f"the habit vector has shape {tuple(habit.shape)} but this model needs ({size},): it was "
                          "made with another model preset; encode it again with this model")
    return habit
