"""Audio decoding, resampling for the audio encoder, and muxing of the audio track into the output video.

Everything goes through PyAV (FFmpeg), so any container and codec FFmpeg reads works: WAV, MP3, AAC/M4A, FLAC, the
audio track of an MP4/MOV/MKV, ... at any sample rate and channel count.

Two views of the same track are used by the pipeline:

* the audio *encoder* sees 16 kHz mono float32 (:func:`to_encoder_input`, :func:`load_encoder_input`);
* the output video keeps the original track: same rate, same channels. When the length policy leaves the track
  untouched, :class:`AudioMuxer` copies the original packets (no re-encoding), or, for PCM (WAV) sources, which MP4
  cannot hold, encodes them losslessly with ALAC. Either way the decoded output samples are bit-for-bit the input's.
  Only a track that a length policy trims or pads is re-encoded (losslessly for integer PCM sources, AAC otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from stabledub_core.errors import (
    EmptyMediaError,
    InputFileNotFoundError,
    NoAudioStreamError,
    NonFiniteSamplesError,
    NotAMediaFileError,
    OptionError,
    require_file,
)

ENCODER_SAMPLE_RATE = 16000

# Codecs whose packets can be copied as they are into each output container (FFmpeg format names).
_ISO_CODECS = frozenset({"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"})
_REMUXABLE = {
    "mp4": _ISO_CODECS,
    "mov": _ISO_CODECS | {"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8"},
    "matroska": _ISO_CODECS | {"vorbis", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8"},
}
# Integer PCM sample formats and the planar format a lossless encoder takes them in.
_LOSSLESS_FORMAT = {"u8": "s16p", "u8p": "s16p", "s16": "s16p", "s16p": "s16p", "s32": "s32p", "s32p": "s32p"}
_LOSSLESS_CODEC = {"mp4": "alac", "mov": "alac", "matroska": "flac"}
_NUMPY_DTYPE = {"fltp": np.float32, "s16p": np.int16, "s32p": np.int32}
_LOSSY_CODEC = "aac"
_LOSSY_BIT_RATE = 256_000


def open_media(path, what: str):
    """Open a media file with PyAV, turning FFmpeg's errors into one clear :class:`StableDubError`.

    Args:
        path: The file to open.
        what: What the file is for, used in messages (``"video"``, ``"audio"``).

    Returns:
        An open ``av.container.InputContainer`` (the caller closes it).
    """
    p = require_file(path, what)
    try:
        return av.open(str(p), metadata_errors="replace")  # damaged tags must not stop a readable file
    except UnicodeDecodeError as exc:
        raise NotAMediaFileError(f"{what} file {str(p)!r} has unreadable metadata: give a real video/audio "
                                 "file") from exc
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(f"{what} file {str(p)!r} does not exist: check the path") from exc
    except av.FFmpegError as exc:
        raise NotAMediaFileError(
            f"{what} file {str(p)!r} is not a media file FFmpeg can read ({exc.strerror or 'invalid data'}): "
            "give a real video/audio file") from exc


@dataclass(frozen=True)
class AudioInfo:
    """What is known about an audio track after one decoding pass.

    Attributes:
        path: The file holding the track.
        stream_index: Index of the audio stream in the file.
        codec: FFmpeg codec name (``"aac"``, ``"pcm_s16le"``, ...).
        sample_rate: Samples per second per channel.
        channels: Number of channels.
        sample_format: FFmpeg sample format of the decoded frames (``"s16"``, ``"fltp"``, ...).
        num_samples: Exact number of decoded samples per channel.
    """

    path: Path
    stream_index: int
    codec: str
    sample_rate: int
    channels: int
    sample_format: str
    num_samples: int

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.num_samples / self.sample_rate

    @property
    def is_integer_pcm(self) -> bool:
        """True for uncompressed integer PCM (e.g. a 16-bit WAV), which ALAC/FLAC store losslessly."""
        return self.codec.startswith("pcm_") and self.sample_format in _LOSSLESS_FORMAT


def _audio_stream(container, path, what: str):
    if not container.streams.audio:
        raise NoAudioStreamError(f"{what} file {str(path)!r} has no audio track: give the speech with --audio")
    return container.streams.audio[0]


def _channel_layout(channels: int):
    """The default FFmpeg layout for a channel count (sources may carry an unspecified layout)."""
    return av.AudioLayout(f"{int(channels)}c")  # "1c" -> mono, "2c" -> stereo, "6c" -> 5.1, ...


def _native_chunks(path, what: str, sample_format: str | None = None) -> Iterator[tuple[object, np.ndarray]]:
    """Decode an audio track chunk by chunk.

    Args:
        path: Media file.
        what: What the file is for, used in messages.
        sample_format: Planar FFmpeg sample format to convert to (e.g. ``"fltp"``); ``None`` keeps the decoded
            samples as they are, converted to planar layout with the same dtype.

    Yields:
        ``(stream, chunk)`` with chunk ``(C, n)`` samples.
    """
    with open_media(path, what) as container:
        stream = _audio_stream(container, path, what)
        resampler = None
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    fmt = sample_format or frame.format.planar.name
                    resampler = av.AudioResampler(format=fmt, layout=_channel_layout(frame.layout.nb_channels),
                                                  rate=frame.sample_rate)
                frame.pts = None
                for out in resampler.resample(frame):
                    yield stream, out.to_ndarray()
            if resampler is not None:
                for out in resampler.resample(None):
                    yield stream, out.to_ndarray()
        except av.FFmpegError as exc:
            raise NotAMediaFileError(f"{what} file {str(path)!r} has an audio track FFmpeg cannot decode "
                                     f"({exc.strerror or 'invalid data'})") from exc


def probe_audio(path, what: str = "audio") -> AudioInfo:
    """Decode an audio track once to learn its exact length and format.

    Args:
        path: Any media file with an audio track.
        what: What the file is for, used in messages.

    Returns:
        The track's :class:`AudioInfo`.

    Raises:
        NoAudioStreamError: If the file has no audio track.
        EmptyMediaError: If the track holds no samples.
    """
    info, _ = _decode(path, what, want_encoder_input=False)
    return info


def _decode(path, what: str, want_encoder_input: bool) -> tuple[AudioInfo, np.ndarray | None]:
    """One streaming pass: exact sample count, and optionally the 16 kHz mono encoder input."""
    num = 0
    meta = None
    mono = None
    pieces = []
    for stream, chunk in _native_chunks(path, what, "fltp" if want_encoder_input else None):
        if meta is None:
            cc = stream.codec_context
            native = cc.format.name if cc.format is not None else "fltp"
            meta = (stream.index, cc.name, cc.sample_rate, chunk.shape[0], native)
        check_finite_samples(chunk, path, what, meta[2], num)
        num += chunk.shape[1]
        if want_encoder_input:
            mono = mono or _MonoResampler(meta[2], ENCODER_SAMPLE_RATE)
            pieces.extend(mono.push(chunk))
    if meta is None or num == 0:
        raise EmptyMediaError(f"{what} file {str(path)!r} has an empty audio track: give a file with sound")
    info = AudioInfo(Path(path), meta[0], meta[1], meta[2], meta[3], meta[4], num)
    if not want_encoder_input:
        return info, None
    pieces.extend(mono.push(None))
    return info, fit_samples(np.concatenate(pieces), encoder_length(num, info.sample_rate))


def check_finite_samples(chunk: np.ndarray, path, what: str, rate: int, start: int = 0) -> None:
    """Refuse NaN or infinite samples (float tracks only; they would fail the encoder much later).

    Args:
        chunk: ``(C, n)`` decoded samples.
        path: The file, for the message.
        what: What the file is for.
        rate: The sample rate.
        start: Index of the chunk's first sample in the track.

    Raises:
        NonFiniteSamplesError: Naming the time of the first bad sample.
    """
    if chunk.dtype.kind != "f":
        return
    bad = ~np.isfinite(chunk)
    if bad.any():
        first = int(np.argmax(bad.any(axis=0)))
        raise NonFiniteSamplesError(f"{what} file {str(path)!r} holds NaN or infinite samples (the first near "
                                    f"{(start + first) / rate:.2f} s): re-export it as "
                                    "16-bit PCM or give another file")


def load_audio(path) -> tuple[np.ndarray, int]:
    """Decode a whole audio track.

    Args:
        path: Any media file with an audio track (WAV, MP3, M4A, the audio of an MP4, ...).

    Returns:
        ``(waveform, sample_rate)``: waveform ``(C, S)`` float32 in [-1, 1] at the track's own rate.
    """
    rate = None
    chunks = []
    for stream, chunk in _native_chunks(path, "audio", "fltp"):
        rate = stream.codec_context.sample_rate
        check_finite_samples(chunk, path, "audio", rate, sum(c.shape[1] for c in chunks))
        chunks.append(chunk)
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise EmptyMediaError(f"audio file {str(path)!r} has an empty audio track: give a file with sound")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(rate)


class _MonoResampler:
    """Streaming mono downmix (channel mean) + FFmpeg (swresample) rate conversion."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in = rate_in
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)

    def push(self, chunk: np.ndarray | None) -> list[np.ndarray]:
        if chunk is None:
            frames = self.resampler.resample(None)
        else:
            mono = np.ascontiguousarray(chunk.mean(axis=0, dtype=np.float32)[None])  # (1, n)
            frame = av.AudioFrame.from_ndarray(mono, format="flt", layout="mono")
            frame.sample_rate = self.rate_in
            frames = self.resampler.resample(frame)
        return [f.to_ndarray()[0] for f in frames]


def encoder_length(num_samples: int, rate: int) -> int:
    """Samples at 16 kHz that ``num_samples`` samples at ``rate`` Hz last."""
    return int(round(num_samples * ENCODER_SAMPLE_RATE / rate))


def fit_samples(wave: np.ndarray, length: int) -> np.ndarray:
    """Cut a wave (``(S,)`` or ``(C, S)``) to ``length`` samples, or append silence up to it; float32, contiguous."""
    wave = np.asarray(wave, np.float32)
    if wave.shape[-1] >= length:
        return np.ascontiguousarray(wave[..., :length])
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, length - wave.shape[-1])])


def to_encoder_input(waveform: np.ndarray, rate: int) -> np.ndarray:
    """Downmix to mono and resample to 16 kHz for the audio encoder.

    Args:
        waveform: ``(C, S)`` or ``(S,)`` float samples.
        rate: Their sample rate in Hz.

    Returns:
        ``(S16,)`` float32 at 16 kHz, ``S16 = round(S * 16000 / rate)``.
    """
    wave = np.asarray(waveform, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[1] == 0:
        raise EmptyMediaError(f"expected a non-empty (C, S) waveform, got shape {tuple(np.shape(waveform))}")
    length = encoder_length(wave.shape[1], rate)
    if rate == ENCODER_SAMPLE_RATE:
        return fit_samples(wave.mean(axis=0), length)
    resampler = _MonoResampler(rate, ENCODER_SAMPLE_RATE)
    pieces = resampler.push(wave) + resampler.push(None)
    return fit_samples(np.concatenate(pieces), length)


def load_encoder_input(path, what: str = "audio") -> tuple[np.ndarray, AudioInfo]:
    """Stream a track once: its 16 kHz mono encoder input and its exact :class:`AudioInfo`.

    The original-rate waveform is never held whole, so long tracks cost only their 16 kHz mono copy.

    Args:
        path: Any media file with an audio track.
        what: What the file is for, used in messages.

    Returns:
        ``(wave16k (S16,) float32, info)``.
    """
    info, wave = _decode(path, what, want_encoder_input=True)
    return wave, info


class AudioMuxer:
    """Writes one audio track into an output container, interleaved with the video as it is written.

    The output holds ``target_samples`` samples at the source's rate and channel count: the source's first
    samples, followed by silence if ``target_samples`` is longer than the source. When ``target_samples`` equals
    the source's length the track is kept bit-for-bit: its packets are copied when the container takes the codec,
    integer PCM is encoded losslessly (ALAC in MP4/MOV, FLAC in MKV). Anything else is encoded as AAC.

    Args:
        container: The open ``av.container.OutputContainer``.
        info: The source track (from :func:`probe_audio` or :func:`load_encoder_input`).
        target_samples: Samples per channel to write; ``None`` keeps the source length.
    """

    def __init__(self, container, info: AudioInfo, target_samples: int | None = None):
        self.info = info
        self.target = info.num_samples if target_samples is None else int(target_samples)
        if self.target <= 0:
            raise EmptyMediaError("the output audio would be empty: check the length policy")
        fmt_name = container.format.name.split(",")[0]
        self.unchanged = self.target == info.num_samples
        self.remux = self.unchanged and info.codec in _REMUXABLE.get(fmt_name, ())
        self._source = open_media(info.path, "audio")
        self._in_stream = self._source.streams[info.stream_index]
        self._written = 0  # samples (encode mode) handed to the encoder
        self._done = False
        if self.remux:
            self.stream = container.add_stream_from_template(self._in_stream)
            self._packets = self._source.demux(self._in_stream)
        else:
            lossless = info.is_integer_pcm and fmt_name in _LOSSLESS_CODEC
            codec = _LOSSLESS_CODEC[fmt_name] if lossless else _LOSSY_CODEC
            self.stream = container.add_stream(codec, rate=info.sample_rate, layout=_channel_layout(info.channels))
            self._format = _LOSSLESS_FORMAT[info.sample_format] if lossless else "fltp"
            self.stream.codec_context.format = self._format
            if not lossless:
                self.stream.codec_context.bit_rate = _LOSSY_BIT_RATE
            self._source.close()
            self._chunks = _native_chunks(info.path, "audio", self._format)
        self.container = container

    @property
    def codec(self) -> str:
        """The output codec name."""
        return self.stream.codec_context.name

    def pump(self, until_seconds: float) -> None:
        """Write the audio up to ``until_seconds`` of output time (call after each video frame).

        Args:
            until_seconds: Output time the video has reached.
        """
        if self._done:
            return
        if self.remux:
            self._pump_packets(until_seconds)
        else:
            wanted = until_seconds * self.info.sample_rate
            self._pump_encoded(self.target if math.isinf(wanted) else min(self.target, int(math.ceil(wanted))))

    def finish(self) -> None:
        """Write the rest of the track and flush the encoder."""
        self.pump(math.inf)
        self.close()

    def close(self) -> None:
        """Release the source file (idempotent)."""
        self._done = True
        self._source.close()

    def _pump_packets(self, until_seconds: float) -> None:
        for packet in self._packets:
            if packet.dts is None:  # the demuxer's final empty packet
                continue
            packet.stream = self.stream
            self.container.mux(packet)
            if packet.pts is not None and float(packet.pts * packet.time_base) >= until_seconds:
                return
        self.close()

    def _pump_encoded(self, until_sample: int) -> None:
        while self._written < until_sample:
            chunk = next(self._chunks, None)
            if chunk is None:  # source exhausted: pad with silence up to the target
                silence = min(until_sample - self._written, 65536)
                chunk = np.zeros((self.info.channels, silence), _NUMPY_DTYPE[self._format])
            else:
                chunk = chunk[1]
            chunk = chunk[:, : self.target - self._written]
            if chunk.shape[1] == 0:
                break
            self._encode(chunk)
        if self._written >= self.target:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.close()

    def _encode(self, chunk: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=self._format,
                                           layout=_channel_layout(self.info.channels))
        frame.sample_rate = self.info.sample_rate
        frame.pts = self._written
        frame.time_base = Fraction(1, self.info.sample_rate)
        self._written += chunk.shape[1]
        for packet in self.stream.encode(frame):
            self.container.mux(packet)


def check_waveform(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """A ``(C, S)`` waveform with sound as float32, and a positive sample rate (clear errors otherwise)."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 2 or waveform.shape[1] == 0:
        raise EmptyMediaError(f"the speech must be a (channels, samples) waveform with sound, got shape "
                              f"{waveform.shape}")
    if sample_rate <= 0:
        raise OptionError(f"the speech's sample rate must be > 0, got {sample_rate}")
    if not np.isfinite(waveform).all():
        raise NonFiniteSamplesError("the speech holds NaN or infinite samples: give a waveform of finite numbers")
    return waveform
