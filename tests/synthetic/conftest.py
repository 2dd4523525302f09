"""Fixtures of the synthetic-world tests: real speech from the repository (assets/speech_es.wav), no ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.repo_media import ASSETS
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import write_wav

SPEECH = ASSETS / "speech_es.wav"  # synthetic Spanish speech (espeak-ng), 22.05 kHz mono, 5.7 s


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """``((1, S) float32, 22050)``: the repository's speech file."""
    return load_audio(SPEECH)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory, speech) -> Path:
    """A folder of two speech files with different words: the first 3 s of the speech and (in a subfolder) the
    rest from 2.6 s on."""
    waveform, rate = speech
    folder = tmp_path_factory.mktemp("speech")
    (folder / "later").mkdir()
    write_wav(folder / "first.wav", waveform[:, :3 * rate], rate)
    write_wav(folder / "later" / "rest.wav", waveform[:, int(2.6 * rate):], rate)
    return folder


def burst(rate: int = 16000, seconds: float = 3.0, start: float = 1.0, end: float = 1.4) -> np.ndarray:
    """``(1, S)`` float32: silence with a loud voiced burst (200 Hz harmonics) from ``start`` to ``end`` seconds."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 12))
    wave = np.where((t >= start) & (t < end), 0.3 * tone / np.abs(tone).max(), 0.0)
    return wave[None].astype(np.float32)
