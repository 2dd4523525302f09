"""Whole clips between files and memory: a video file decoded into frames and its audio track, and frames (with
speech) encoded into a video file atomically."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stabledub_core.errors import EmptyMediaError
from stabledub_core.media.audio import check_waveform, load_audio, probe_audio
from stabledub_core.media.frames import FrameSource
from stabledub_core.media.video import VideoReader, VideoWriter, output_format
from stabledub_core.runtime import StopCheck, check_interrupt


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
               preset: str = "medium", should_stop: StopCheck | None = None, lossless_audio: bool = True) -> Path:
    """Encode frames (and speech) into a video file, atomically (``VideoWriter``).

    The waveform is first stored beside the output and muxed from there; the temporary file is deleted in every
    case. ``lossless_audio``: stored as 16-bit PCM, which the muxer keeps losslessly (ALAC in MP4, PCM in MOV and
    MKV); otherwise as float64 PCM, a codec no output container takes as is, so the muxer encodes it (AAC).

    Args:
        path: Output file (.mp4, .m4v, .mov or .mkv).
        frames: ``(F, H, W, 3)`` uint8 array or float tensor in [0, 1].
        fps: Frame rate.
        waveform: ``(C, S)`` float32 audio, or None for a silent video.
        sample_rate: Its rate.
        crf: x264 quality.
        preset: x264 speed preset.
        should_stop: Interruption check, polled per frame (no file is left behind).
        lossless_audio: Keep the audio losslessly (True) or let the muxer encode it as AAC (False).

    Returns:
        The path written.
    """
    path = Path(path)
    output_format(path)
    if len(frames) == 0:
        raise EmptyMediaError("no frames to write")
    source = FrameSource(frames, fps)
    wav = path.with_name(f".{path.stem}.audio.wav")
    try:
        info = None
        if waveform is not None:
            write_wav(wav, check_waveform(waveform, sample_rate), sample_rate, float64=not lossless_audio)
            info = probe_audio(wav, "audio")
        with VideoWriter(path, source.fps, source.size, audio=info, crf=crf, preset=preset) as writer:
            for i in range(source.num_frames):
                check_interrupt(should_stop)
                writer.write(source.image(i))
    finally:
        wav.unlink(missing_ok=True)
    return path


def write_wav(path: Path, waveform: np.ndarray, sample_rate: int, float64: bool = False) -> None:
    """A ``(C, S)`` float waveform as a 16-bit (or, with ``float64``, 64-bit float) PCM WAV file (PyAV)."""
    if float64:
        samples, codec, layout_format = np.ascontiguousarray(waveform, np.float64), "pcm_f64le", "dblp"
    else:
        samples = (np.clip(waveform, -1, 1) * 32767).round().astype(np.int16)  # (C, S)
        codec, layout_format = "pcm_s16le", "s16p"
    layout = f"{samples.shape[0]}c"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=layout_format, layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
