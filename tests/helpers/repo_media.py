"""The real-media test files, made from the repository alone (no ``../shared`` needed).

``build_media(folder)`` writes:

- astronaut.png: tests/data/astronaut.jpg decoded, scikit-image's ``astronaut`` photo (public domain), 512x512,
  stored as JPEG quality 90 (66 KB). The lips' centre is near (223, 146), the mouth corners near (202, 139) and
  (244, 141).
- face_pan.mp4: that photo under a smooth head motion (:func:`head_motion`, the motion of face_occluded.mp4),
  75 frames, 25 fps, 512x512 H.264, with the AAC speech track of assets/face_occluded.mp4 copied packet for packet.
- face_occluded.mp4: a copy of assets/face_occluded.mp4, the same motion; from frame 37 a dark microphone covers
  the image-right corner of the mouth.
- speech_es.wav: a copy of assets/speech_es.wav, synthetic Spanish speech (espeak-ng), 22.05 kHz mono 16-bit, 5.7 s.
- speech_es_44k_stereo.wav: speech_es.wav resampled by PyAV (libswresample) to 44.1 kHz, 16-bit stereo: the left
  channel the speech, the right one 0.75 times it 0.5 ms later.
"""

from __future__ import annotations

import math
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
DATA = Path(__file__).resolve().parents[1] / "data"
FACE_MODEL = ASSETS / "face_landmarker.task"

FPS = 25
NUM_FRAMES = 75
SIZE = 512
STEREO_DELAY = 22  # samples (0.5 ms at 44.1 kHz)
STEREO_GAIN = 0.75


def astronaut() -> np.ndarray:
    """(512, 512, 3) uint8 RGB: the photo."""
    image = cv2.imread(str(DATA / "astronaut.jpg"))
    if image is None:
        raise FileNotFoundError(DATA / "astronaut.jpg")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def head_motion(t: float) -> np.ndarray:
    """(2, 3) affine from photo to frame coordinates at time ``t`` s: the motion of assets/face_occluded.mp4.

    A rotation (+-3 degrees, 5 s period) and a scale (+-3 %, 4 s) about the image centre and a shift (+-6 px, +-4 px;
    3.33 s and 2.22 s), each a sine: measured on the asset's frames by ECC registration to the photo, it maps every
    pixel within 0.04 px of where the asset's frames have it.
    """
    angle = math.radians(3.0 * math.sin(2 * math.pi * t / 5 + 4.047))
    scale = 1 - 0.03 * math.sin(2 * math.pi * t / 4 + 2.819)
    shift = np.array([-6.0 * math.sin(2 * math.pi * t * 0.3 + 0.074), -4.0 * math.sin(2 * math.pi * t * 0.45 - 3.453)])
    rotate = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([SIZE / 2, SIZE / 2])
    return np.hstack([rotate, (centre - rotate @ centre + shift)[:, None]])


def pan_frames(photo: np.ndarray) -> np.ndarray:
    """(75, 512, 512, 3) uint8: the photo under :func:`head_motion` (bilinear, mirrored borders)."""
    return np.stack([cv2.warpAffine(photo, head_motion(i / FPS), (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT) for i in range(NUM_FRAMES)])


def write_face_pan(path: Path, frames: np.ndarray, audio_from: Path) -> Path:
    """H.264 (CRF 18, yuv420p, 25 fps) of ``frames`` with the audio track of ``audio_from`` copied unchanged."""
    with av.open(str(audio_from)) as source, av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        video.options = {"crf": "18", "preset": "fast"}
        video.codec_context.time_base = Fraction(1, FPS)
        audio_in = source.streams.audio[0]
        audio_out = out.add_stream_from_template(audio_in)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for packet in source.demux(audio_in):
            if packet.dts is not None:
                packet.stream = audio_out
                out.mux(packet)
    return path


def resample(src: Path, rate: int) -> np.ndarray:
    """(1, S) int16: the first audio track of ``src`` resampled by PyAV (libswresample) to ``rate`` Hz mono."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(src)) as source:
        frames = [out for frame in [*source.decode(audio=0), None] for out in resampler.resample(frame)]
    return np.concatenate([frame.to_ndarray() for frame in frames], axis=1)


def write_wav_s16(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A 16-bit WAV of (C, S) int16 samples, bit for bit."""
    layout = av.AudioLayout(f"{samples.shape[0]}c")
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T.reshape(1, -1)), format="s16", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def stereo(mono: np.ndarray, delay: int = STEREO_DELAY, gain: float = STEREO_GAIN) -> np.ndarray:
    """(2, S) int16: the left channel is ``mono``, the right one ``gain`` times it, ``delay`` samples later (so
    that the two channels differ and a swap or a mix-down shows)."""
    right = np.zeros_like(mono[0])
    right[delay:] = np.round(mono[0, : mono.shape[1] - delay] * gain).astype(np.int16)
    return np.stack([mono[0], right])


def build_media(folder: Path) -> Path:
    """Write the files listed in the module docstring into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = astronaut()
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    for name in ("face_occluded.mp4", "speech_es.wav"):
        shutil.copyfile(ASSETS / name, folder / name)
    write_face_pan(folder / "face_pan.mp4", pan_frames(photo), ASSETS / "face_occluded.mp4")
    write_wav_s16(folder / "speech_es_44k_stereo.wav", stereo(resample(ASSETS / "speech_es.wav", 44100)), 44100)
    return folder
