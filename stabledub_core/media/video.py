"""Streaming video reading and atomic video writing with PyAV.

The reader yields one frame at a time (``uint8 (H, W, 3)`` RGB) with its timestamp in seconds, so a video of
any length costs the memory of a few frames. Frame rates are exact fractions (29.97 fps is ``30000/1001``);
variable-frame-rate sources are read by their presentation timestamps.

The writer encodes H.264 (libx264, yuv420p, CRF 18) into a temporary file beside the destination and renames it into
place only when everything went well; on any exception, ``Ctrl-C`` included, the temporary file is deleted, so a
destination path never holds a partial video. An ``OSError`` while writing (disk full, permission denied) is one
:class:`~stabledub_core.errors.OutputWriteError`. Odd frame sizes are kept exactly: H.264 in 4:2:0 cannot hold them,
so they are encoded in 4:4:4 (``yuv444p``; some browsers do not play it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from stabledub_core.media.audio import AudioInfo, AudioMuxer, open_media
from stabledub_core.media.output import partial_path, write_error
from stabledub_core.errors import FrameFormatError, NoVideoStreamError, NotAMediaFileError, OptionError

# Output containers by file extension (FFmpeg muxer names).
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Descending runs (ping-pong) are decoded forwards in blocks of this many frames and yielded reversed.
REVERSE_BLOCK = 16
# A forward jump of at most this many frames is decoded through instead of seeking.
SKIP_LIMIT = 48


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    Attributes:
        index: Position of the frame in decoding (display) order, from 0.
        time: Presentation time in seconds, relative to the first frame.
        pts: Raw presentation timestamp in the stream's time base.
        image: ``(H, W, 3)`` uint8 RGB.
    """

    index: int
    time: float
    pts: int | None
    image: np.ndarray


@dataclass(frozen=True)
class Run:
    """A run of source frame indices: ``start, start + step, ...`` (``count`` of them; ``step`` in -1, 0, 1)."""

    start: int
    count: int
    step: int

    def indices(self) -> range | list[int]:
        if self.step == 0:
            return [self.start] * self.count
        return range(self.start, self.start + self.step * self.count, self.step)


def _stream_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise NotAMediaFileError("the video stream has no frame rate: re-encode it with a constant frame rate")
    return Fraction(rate.numerator, rate.denominator)


class VideoReader:
    """Streams the frames of a video file.

    Use as a context manager. :meth:`frames` walks the whole video once; :meth:`frames_at` fetches any sequence of
    frame indices (forward, backward, repeated) with seeking, after :meth:`frames` has learnt the timestamps.

    Args:
        path: A video file (any container/codec FFmpeg reads).
        what: What the file is for, used in messages.

    Attributes:
        fps: Average frame rate as an exact fraction.
        size: ``(H, W)`` of the decoded frames.
        time_base: The stream's time base (a fraction of a second).
    """

    def __init__(self, path, what: str = "video"):
        self.path = Path(path)
        self.container = open_media(path, what)
        streams = [s for s in self.container.streams.video if not s.disposition & _attached_pic()]
        if not streams:
            self.container.close()
            raise NoVideoStreamError(f"{what} file {str(path)!r} has no video stream (is it an audio file?): "
                                     "give a video with a face as --video")
        self.stream = streams[0]
        self.stream.thread_type = "AUTO"
        self.fps = _stream_rate(self.stream)
        self.time_base = Fraction(self.stream.time_base.numerator, self.stream.time_base.denominator)
        cc = self.stream.codec_context
        self.size = (int(cc.height), int(cc.width))
        self.has_audio = bool(self.container.streams.audio)
        self.pts: list[int | None] = []  # filled by frames(): presentation timestamp of each index
        self._decoder: Iterator | None = None
        self._next = 0  # index of the next frame the decoder yields
        self._last: tuple[int, np.ndarray] | None = None
        self._pending = None  # a frame decoded by _seek but not consumed yet
        self._position: dict | None = None  # pts -> index, built on the first seek
        self.damaged_packets = 0  # packets of the last pass from the start that could not be decoded

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def count_packets(self, limit: int) -> int:
        """Non-empty video packets at the start of the file, up to ``limit`` (cheap: nothing is decoded; a damaged
        container ends the count)."""
        packets = 0
        try:
            for packet in self.container.demux(self.stream):
                packets += packet.size > 0
                if packets >= limit:
                    break
        except av.FFmpegError:
            pass
        return packets

    def estimated_frames(self) -> int:
        """Frames the container announces, else its duration times the frame rate (0 when it says neither)."""
        if self.stream.frames:
            return int(self.stream.frames)
        duration = self.stream.duration * self.stream.time_base if self.stream.duration else None
        if duration is None and self.container.duration:
            duration = self.container.duration / av.time_base
        return int(float(duration) * float(self.fps)) if duration else 0

    @property
    def num_frames(self) -> int:
        """Number of frames seen by :meth:`frames` (exact once it has run to the end)."""
        return len(self.pts)

    def _decode_from_start(self) -> Iterator:
        """Decode from the first frame, packet by packet: a packet FFmpeg cannot decode (a damaged or truncated
        file) is skipped and counted in :attr:`damaged_packets`; a file where no frame decodes is an error."""
        self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
        self.damaged_packets = 0
        yield from self._decode_packets()

    def _decode_packets(self) -> Iterator:
        """Decode from where the container stands, skipping (and counting) packets that cannot be decoded."""
        decoded, first_error = 0, None
        try:
            packets = self.container.demux(self.stream)
            for packet in packets:
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    self.damaged_packets += 1
                    first_error = first_error or exc
                    continue
                for frame in frames:
                    decoded += 1
                    yield frame
        except av.FFmpegError as exc:  # the container itself (demuxing) broke: keep what was decoded
            self.damaged_packets += 1
            first_error = first_error or exc
        if decoded == 0 and first_error is not None:
            raise NotAMediaFileError(f"video file {str(self.path)!r} cannot be decoded "
                                     f"({first_error.strerror or 'invalid data'})") from first_error

    def frames(self) -> Iterator[VideoFrame]:
        """Decode the whole video in order.

        Yields:
            :class:`VideoFrame` per frame, timestamps relative to the first frame.
        """
        self.pts = []
        self._position = None
        first = None
        for index, frame in enumerate(self._decode_from_start()):
            pts = frame.pts
            self.pts.append(pts)
            if first is None:
                first = pts if pts is not None else 0
            time = float((pts - first) * self.time_base) if pts is not None else index / float(self.fps)
            yield VideoFrame(index, time, pts, frame.to_ndarray(format="rgb24"))
        self._decoder = None

    def times(self) -> np.ndarray:
        """``(F,)`` float64 seconds of every frame, relative to the first (after :meth:`frames`)."""
        if not self.pts or any(p is None for p in self.pts):
            return np.arange(len(self.pts)) / float(self.fps)
        pts = np.asarray(self.pts, dtype=np.float64)
        return (pts - pts[0]) * float(self.time_base)

    def is_variable_rate(self, tolerance: float = 0.02) -> bool:
        """True if frame durations differ by more than ``tolerance`` of a frame (after :meth:`frames`)."""
        deltas = np.diff(self.times())
        if deltas.size == 0:
            return False
        return bool(np.abs(deltas - 1.0 / float(self.fps)).max() > tolerance / float(self.fps))

    def _seek(self, index: int) -> None:
        pts = self.pts[index]
        if pts is None or index == 0:
            self._decoder = self._decode_from_start()
            self._next = 0
            return
        self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)
        self._decoder = iter(self._decode_packets())
        if self._position is None or len(self._position) != len(self.pts):
            self._position = {p: i for i, p in enumerate(self.pts)}
        position = self._position
        # Decode up to the keyframe's successor to learn where the decoder stands.
        frame = next(self._decoder)
        self._pending = frame
        self._next = position.get(frame.pts, 0)

    def _frame(self, index: int) -> np.ndarray:
        """The image at ``index``, decoding forward (or seeking) as needed."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._decoder is None or index < self._next or index >= self._next + SKIP_LIMIT:
            self._pending = None
            self._seek(index)
        while True:
            if self._pending is not None:
                frame, self._pending = self._pending, None
            else:
                frame = next(self._decoder, None)
                if frame is None:
                    raise NotAMediaFileError(f"video file {str(self.path)!r} ended before frame {index}")
            current = self._next
            self._next += 1
            if current == index:
                image = frame.to_ndarray(format="rgb24")
                self._last = (index, image)
                return image
            if current > index:  # the seek landed after the target (broken index): restart from the top
                self._decoder, self._next = self._decode_from_start(), 0

    def frames_at(self, runs: Iterable[Run]) -> Iterator[np.ndarray]:
        """Yield the images of a sequence of index runs, lazily (a few frames in memory at a time).

        Args:
            runs: :class:`Run` objects, e.g. from a length policy's plan. Needs :meth:`frames` to have run.

        Yields:
            ``(H, W, 3)`` uint8 RGB images in run order.
        """
        if not self.pts:
            raise RuntimeError("VideoReader.frames_at needs a first full pass with frames()")
        for run in runs:
            if run.step >= 0:
                for index in run.indices():
                    yield self._frame(index)
                continue
            high = run.start
            low = run.start - run.count + 1
            while high >= low:  # descending: read blocks forwards, hand them out reversed
                block_low = max(low, high - REVERSE_BLOCK + 1)
                block = [self._frame(i) for i in range(block_low, high + 1)]
                yield from reversed(block)
                high = block_low - 1


def _attached_pic() -> int:
    return av.stream.Disposition.attached_pic


def output_format(path) -> str:
    """FFmpeg muxer name for an output path, from its extension.

    Raises:
        OptionError: For an extension other than .mp4/.m4v/.mov/.mkv.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OptionError(f"output {str(path)!r}: unsupported extension {suffix!r}; use one of "
                          f"{', '.join(sorted(OUTPUT_FORMATS))}")
    return OUTPUT_FORMATS[suffix]


class VideoWriter:
    """Encodes RGB frames to an H.264 file, atomically.

    Frames go to a hidden temporary file in the destination folder (``media.output.partial_path``);
    :meth:`__exit__` renames it over ``path`` only if no exception occurred, and deletes it otherwise. Odd frame
    sizes are kept exactly, in ``yuv444p`` (:attr:`pix_fmt`), because yuv420p needs even dimensions.

    Args:
        path: Destination (.mp4, .m4v, .mov or .mkv).
        fps: Exact frame rate, e.g. ``Fraction(30000, 1001)``; frame ``i`` is shown at ``i / fps`` unless
            :meth:`write` is given a time.
        size: ``(H, W)`` of the frames that will be written.
        audio: Optional source track to mux in (see :class:`~stabledub_core.media.audio.AudioMuxer`).
        audio_samples: Samples per channel of output audio (``None``: the source's length, kept bit-exact).
        crf: x264 constant rate factor (lower is better quality; 18 is visually lossless).
        preset: x264 speed preset.
        time_base: Time base for explicit frame times (variable frame rate); default ``1 / fps``.
    """

    def __init__(self, path, fps: Fraction, size: tuple[int, int], audio: AudioInfo | None = None,
                 audio_samples: int | None = None, crf: int = 18, preset: str = "medium",
                 time_base: Fraction | None = None):
        self.path = Path(path)
        fmt = output_format(self.path)
        if not self.path.parent.is_dir():
            raise OptionError(f"output folder {str(self.path.parent)!r} does not exist: create it first")
        self.fps = Fraction(fps)
        self.size = tuple(int(v) for v in size)
        odd = self.size[0] % 2 or self.size[1] % 2
        self.pix_fmt = "yuv444p" if odd else "yuv420p"
        self.tmp = partial_path(self.path)
        self.container = None
        self.audio = None
        try:
            self.container = av.open(str(self.tmp), "w", format=fmt)
            self._audio_info, self._audio_samples = audio, audio_samples
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.width, self.stream.height = self.size[1], self.size[0]
            self.stream.pix_fmt = self.pix_fmt
            self.stream.options = {"crf": str(crf), "preset": preset}
            self.time_base = Fraction(time_base) if time_base is not None else 1 / self.fps
            self.stream.codec_context.time_base = self.time_base
            self.audio = AudioMuxer(self.container, audio, audio_samples) if audio is not None else None
        except OSError as exc:
            self._discard()
            raise write_error(exc, self.path) from None
        except BaseException:
            self._discard()
            raise
        self.count = 0

    def __enter__(self) -> "VideoWriter":
        return self

    def write(self, image: np.ndarray, time: float | None = None) -> None:
        """Encode one frame.

        Args:
            image: ``(H, W, 3)`` uint8 RGB of the size given at construction.
            time: Presentation time in seconds (variable frame rate); default ``index / fps``.
        """
        if image.shape != (*self.size, 3) or image.dtype != np.uint8:
            raise FrameFormatError(f"frame {self.count}: expected uint8 {(*self.size, 3)}, got {image.dtype} "
                                   f"{image.shape}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.count if time is None else int(round(time / self.time_base))
        frame.time_base = self.time_base
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.count += 1
            if self.audio is not None:
                self.audio.pump(float(frame.pts * self.time_base) + 1.0)
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            if self.audio is not None:
                self.audio.finish()
            self.container.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self._discard()
            raise write_error(exc, self.path) from None
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """Close everything and delete the temporary file (never raises: the first error is the one to report)."""
        for close in (getattr(self.audio, "close", None), getattr(self.container, "close", None)):
            try:
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001 - the file is being thrown away; the original error matters
                pass
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass
