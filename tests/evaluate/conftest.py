"""Fixtures of the benchmark tests: a two-clip held-out world made from the repository's speech (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.repo_media import ASSETS
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import write_wav
from stabledub_core.synthetic.world import write_world


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory) -> tuple[Path, Path]:
    """(world folder, speech folder): 2 clips of 1.2 s at 256 px (the second behind an occluder), and two other
    speech files to dub them with."""
    wave, rate = load_audio(ASSETS / "speech_es.wav")
    root = tmp_path_factory.mktemp("eval")
    own, other = root / "own", root / "other"
    own.mkdir(), other.mkdir()
    write_wav(own / "a.wav", wave[:, :2 * rate], rate)
    write_wav(other / "b.wav", wave[:, 2 * rate:4 * rate], rate)
    write_wav(other / "c.wav", wave[:, int(3.5 * rate):], rate)
    world = root / "world"
    write_world(world, 2, seed=5, speech_dir=own, occluder_share=0.5, max_seconds=1.2)
    return world, other


