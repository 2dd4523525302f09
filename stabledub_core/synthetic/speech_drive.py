"""The fixed audio -> mouth-state function of the synthetic world (the model never sees it; it must learn it).

Everything is a function of time, computed on the speech alone and then sampled at the video frame times
``t_k = k / fps``, so frames and audio stay aligned at any frame rate and the same speech gives the same mouth at
25 or 29.97 fps.

1. **Analysis** (:func:`speech_features`): the waveform is mixed to mono and resampled to 16 kHz
   (``media.audio.to_encoder_input``); a 32 ms Hann window every 10 ms (centred at ``t = 10 ms * n``) gives the
   power spectrum, and from it, per window:

   - ``voice``: level of the 300-3000 Hz band (vowels, formants F1/F2) in dB, mapped to [0, 1] from
     ``ref - 40`` dB (0) to ``ref - 5`` dB (1), where ``ref`` is the 95th percentile of that level over the whole
     track given (the clip's speech, as cut to the clip), so any recording level works;
   - ``bright``: the spectral centroid over 300-7600 Hz, on a log scale from 700 Hz (0) to 3500 Hz (1): front
     vowels /i/, /e/ and sibilants are bright, back rounded vowels /u/, /o/ dark;
   - ``fric``: frication, the 3000-7600 Hz band level minus the 300-3000 Hz one, mapped from -25 dB (0) to
     +5 dB (1): /s/, /f/, /sh/;
   - windows quieter than ``ref - 40`` dB are silence: ``bright`` and ``fric`` are 0 there.

2. **Drives** (per window, before the habit):

   - opening drive ``voice * (1 - 0.6 * fric)`` (sibilants are said with the teeth nearly closed),
   - spread drive ``0.5 + 0.5 * (bright - 0.5) * voice + 0.25 * fric`` (about 0.5 in silence),
   - rounding drive ``voice * (1 - bright)``,
   - teeth drive ``max(fric, voice * bright)``,
   - tongue shade ``voice * (1 - fric)``.

3. **Habit** (:class:`~stabledub_core.synthetic.habit.LipHabit`): each drive is smoothed by a one-pole filter at
   100 Hz with the habit's ``attack_s`` while it rises and ``release_s`` while it falls, and the mouth state at
   time ``t`` reads the smoothed drives at ``t - lag_s`` (linear interpolation between windows, edges held).
   Then ``opening = open_bias + open_gain * drive``, ``width = 0.5 + width_bias + width_gain * (spread - 0.5)``,
   ``rounding = round_bias + round_gain * rounding``, ``teeth = teeth_gain * teeth``, ``tongue = tongue shade``;
   each clipped to [0, 1] (``synthetic.mouth.MouthStates``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stabledub_core.errors import InvalidInputError
from stabledub_core.media.audio import ENCODER_SAMPLE_RATE, to_encoder_input
from stabledub_core.synthetic.habit import LipHabit
from stabledub_core.synthetic.mouth import MouthStates

HOP_S = 0.01  # analysis step, seconds
WINDOW_S = 0.032  # analysis window, seconds
VOICE_BAND = (300.0, 3000.0)  # Hz
HIGH_BAND = (3000.0, 7600.0)
CENTROID_RANGE = (700.0, 3500.0)  # Hz mapped to bright 0 .. 1 on a log scale
REF_PERCENTILE = 95.0
VOICE_FLOOR_DB = 40.0  # voice = 0 at ref - 40 dB
VOICE_TOP_DB = 5.0  # voice = 1 at ref - 5 dB
FRIC_RANGE_DB = (-25.0, 5.0)


@dataclass
class SpeechFeatures:
    """Per-window features of a speech track (:func:`speech_features`).

    Args:
        times: ``(N,)`` window centres in seconds, ``HOP_S * n``.
        voice: ``(N,)`` voiced-band level in [0, 1].
        bright: ``(N,)`` spectral brightness in [0, 1].
        fric: ``(N,)`` frication in [0, 1].
    """

    times: np.ndarray
    voice: np.ndarray
    bright: np.ndarray
    fric: np.ndarray


def _band_db(power: np.ndarray, freqs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """``(N,)`` band power in dB of ``(N, K)`` power spectra."""
    pick = (freqs >= band[0]) & (freqs < band[1])
    return 10 * np.log10(power[:, pick].sum(1) + 1e-10)


def speech_features(waveform: np.ndarray, sample_rate: int) -> SpeechFeatures:
    """Step 1 of the module docstring.

    Args:
        waveform: ``(C, S)`` or ``(S,)`` float samples.
        sample_rate: Their rate in Hz.

    Returns:
        The :class:`SpeechFeatures`, one window per 10 ms from t = 0 to the end of the track.
    """
    wave = to_encoder_input(waveform, sample_rate).astype(np.float64)  # (S16,); EmptyMediaError if empty
    hop = int(round(HOP_S * ENCODER_SAMPLE_RATE))
    size = int(round(WINDOW_S * ENCODER_SAMPLE_RATE))
    count = int(np.ceil(wave.size / hop)) + 1
    padded = np.pad(wave, (size // 2, size // 2 + count * hop))
    starts = np.arange(count) * hop
    frames = padded[starts[:, None] + np.arange(size)[None]] * np.hanning(size)[None]  # (N, size)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (N, size // 2 + 1)
    freqs = np.fft.rfftfreq(size, 1.0 / ENCODER_SAMPLE_RATE)
    voice_db = _band_db(power, freqs, VOICE_BAND)
    high_db = _band_db(power, freqs, HIGH_BAND)
    ref = float(np.percentile(voice_db, REF_PERCENTILE))
    voice = np.clip((voice_db - (ref - VOICE_FLOOR_DB)) / (VOICE_FLOOR_DB - VOICE_TOP_DB), 0, 1)
    band = (freqs >= VOICE_BAND[0]) & (freqs < HIGH_BAND[1])
    centroid = (power[:, band] * freqs[band]).sum(1) / (power[:, band].sum(1) + 1e-10)
    low, high = np.log(CENTROID_RANGE[0]), np.log(CENTROID_RANGE[1])
    bright = np.clip((np.log(np.maximum(centroid, 1.0)) - low) / (high - low), 0, 1)
    fric = np.clip((high_db - voice_db - FRIC_RANGE_DB[0]) / (FRIC_RANGE_DB[1] - FRIC_RANGE_DB[0]), 0, 1)
    silent = voice_db < ref - VOICE_FLOOR_DB
    bright[silent] = 0.0
    fric[silent] = 0.0
    return SpeechFeatures(np.arange(count) * HOP_S, voice.astype(np.float32), bright.astype(np.float32),
                          fric.astype(np.float32))


def drives(features: SpeechFeatures) -> dict[str, np.ndarray]:
    """Step 2 of the module docstring: ``(N,)`` drives named opening, spread, rounding, teeth, tongue."""
    v, b, f = features.voice, features.bright, features.fric
    return {"opening": v * (1 - 0.6 * f), "spread": 0.5 + 0.5 * (b - 0.5) * v + 0.25 * f,
            "rounding": v * (1 - b), "teeth": np.maximum(f, v * b), "tongue": v * (1 - f)}


def smooth(values: np.ndarray, attack_s: float, release_s: float, step_s: float = HOP_S) -> np.ndarray:
    """Asymmetric one-pole smoothing: ``y[n] = y[n-1] + alpha * (x[n] - y[n-1])``, ``alpha = 1 - exp(-step / tau)``
    with ``tau = attack_s`` while ``x`` rises above ``y`` and ``release_s`` otherwise; ``y[-1] = x[0]``.

    Args:
        values: ``(N,)`` samples every ``step_s`` seconds.
        attack_s: Rise time constant in seconds.
        release_s: Fall time constant.
        step_s: Sample spacing.
    """
    up, down = 1 - np.exp(-step_s / attack_s), 1 - np.exp(-step_s / release_s)
    out = np.empty(len(values), np.float64)
    state = float(values[0]) if len(values) else 0.0
    for i, x in enumerate(values.astype(np.float64)):
        state += (up if x > state else down) * (x - state)
        out[i] = state
    return out.astype(np.float32)


def mouth_states(features: SpeechFeatures, habit: LipHabit, times: np.ndarray) -> MouthStates:
    """Step 3 of the module docstring: the mouth states at the given times.

    Args:
        features: From :func:`speech_features`.
        habit: The avatar's lip habit.
        times: ``(F,)`` seconds, e.g. ``np.arange(F) / fps``.

    Returns:
        The :class:`MouthStates` of the F times.
    """
    at = np.asarray(times, np.float64) - habit.lag_s
    read = {name: np.interp(at, features.times, smooth(values, habit.attack_s, habit.release_s))
            for name, values in drives(features).items()}
    return MouthStates(opening=habit.open_bias + habit.open_gain * read["opening"],
                       width=0.5 + habit.width_bias + habit.width_gain * (read["spread"] - 0.5),
                       rounding=habit.round_bias + habit.round_gain * read["rounding"],
                       teeth=habit.teeth_gain * read["teeth"], tongue=read["tongue"])


def frame_times(num_frames: int, fps: float) -> np.ndarray:
    """``(F,)`` float64 seconds of the video frames: ``k / fps``."""
    if not fps > 0:
        raise InvalidInputError(f"fps must be > 0, got {fps}")
    return np.arange(num_frames, dtype=np.float64) / float(fps)


def speech_mouth_states(waveform: np.ndarray, sample_rate: int, habit: LipHabit, fps: float,
                        num_frames: int | None = None) -> MouthStates:
    """The whole function: speech -> mouth states at the frame times of a video at ``fps``.

    Args:
        waveform: ``(C, S)`` or ``(S,)`` float speech.
        sample_rate: Its rate in Hz.
        habit: The avatar's lip habit.
        fps: The video frame rate.
        num_frames: Frames to compute; None: every frame that starts within the speech (``floor(S * fps / rate)``).

    Returns:
        The :class:`MouthStates`.
    """
    samples = np.asarray(waveform).shape[-1]
    count = int(np.floor(samples * float(fps) / sample_rate)) if num_frames is None else int(num_frames)
    return mouth_states(speech_features(waveform, sample_rate), habit, frame_times(count, fps))
