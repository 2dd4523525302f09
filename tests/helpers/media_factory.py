"""Small media files generated on the fly with PyAV for the media, dub and CLI tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern(index: int, size: tuple[int, int]) -> np.ndarray:
    """A frame whose content encodes its index (a bright bar that moves), (H, W, 3) uint8."""
    h, w = size
    img = np.full((h, w, 3), 40, np.uint8)
    x = (index * 7) % max(w - 8, 1)
    img[:, x:x + 8] = 230
    img[: h // 4, :, 1] = (index * 11) % 256
    return img


def write_video(path, num_frames: int, fps=Fraction(25), size=(64, 96), audio: np.ndarray | None = None,
                audio_rate: int = 16000, audio_codec: str = "aac", pts: list[int] | None = None,
                time_base: Fraction | None = None, frames=None) -> Path:
    """Write a test video with raw PyAV (independent of the code under test).

    Args:
        audio: Optional (C, S) float32 track.
        pts: Optional explicit pts per frame (variable frame rate), in ``time_base`` units.
        frames: Optional iterable of images instead of :func:`pattern`.
    """
    path = Path(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = size[1], size[0], "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "20"}
        tb = time_base or 1 / Fraction(fps)
        vs.codec_context.time_base = tb
        if audio is not None:
            as_ = out.add_stream(audio_codec, rate=audio_rate, layout=av.AudioLayout(f"{audio.shape[0]}c"))
            fmt = "fltp" if audio_codec == "aac" else "s16p"
            as_.codec_context.format = fmt
        images = frames if frames is not None else (pattern(i, size) for i in range(num_frames))
        for i, img in enumerate(images):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i if pts is None else pts[i]
            f.time_base = tb
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if audio is not None:
            data = audio.astype(np.float32) if fmt == "fltp" else (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=av.AudioLayout(f"{audio.shape[0]}c"))
            af.sample_rate = audio_rate
            af.pts = 0
            af.time_base = Fraction(1, audio_rate)
            for p in as_.encode(af):
                out.mux(p)
            for p in as_.encode(None):
                out.mux(p)
    return path


def write_wav(path, audio: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    """Write (C, S) float audio as a WAV (16-bit by default)."""
    path = Path(path)
    fmt = {"pcm_s16le": "s16", "pcm_f32le": "flt", "pcm_s24le": "s32"}[codec]
    with av.open(str(path), "w", format="wav") as out:
        s = out.add_stream(codec, rate=rate, layout=av.AudioLayout(f"{audio.shape[0]}c"))
        if audio.shape[1]:
            if fmt == "s16":
                data = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            elif fmt == "s32":
                data = (np.clip(audio, -1, 1) * 8388607).astype(np.int32) << 8
            else:
                data = audio.astype(np.float32)
            packed = np.ascontiguousarray(data.T.reshape(1, -1))
            af = av.AudioFrame.from_ndarray(packed, format=fmt, layout=av.AudioLayout(f"{audio.shape[0]}c"))
            af.sample_rate = rate
            af.pts = 0
            for p in s.encode(af):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """(C, S) float32 sine tone, a different phase per channel."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def decode_native(path, stream: str = "audio") -> np.ndarray:
    """Decode the first audio track in its native sample format as a planar (C, S) array (for exact checks)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(c.streams.audio[0]))
    planar = frames[0].format.is_planar
    ch = frames[0].layout.nb_channels
    arrs = [f.to_ndarray() for f in frames]
    if not planar:
        arrs = [a.reshape(-1, ch).T for a in arrs]
    return np.concatenate(arrs, axis=1)


def count_frames(path) -> tuple[int, Fraction, float]:
    """(frames, average rate, video duration in s from the last frame's pts + one frame)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        rate = Fraction(s.average_rate.numerator, s.average_rate.denominator)
        tb = s.time_base
        dur = float((pts[-1] - pts[0]) * tb) + 1 / float(rate)
    return len(pts), rate, dur
