"""The per-frame audio context does not depend on the chunks: blocks of the model's window, computed on demand
(bounded memory) or for the whole clip at once (what ``begin(..., audio_context=...)`` takes), give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.comfy_stub import micro_config
from helpers.media_factory import tone
from stabledub_core.errors import OptionError
from stabledub_core.models.audio_context import uniform_frame_times
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.chunk_model import AudioContextBlocks, StableDubChunkModel
from stabledub_core.pipeline.options import RuntimeOptions, SamplingOptions

FRAMES, FPS = 40, 25


@pytest.fixture(scope="module")
def chunk_model():
    torch.manual_seed(0)
    return StableDubChunkModel(StableDub.from_config(micro_config()), SamplingOptions(), RuntimeOptions())


def test_chunks_of_any_cut_take_the_whole_clips_context(chunk_model):
    wave = tone(FRAMES / FPS, 16000, freq=230.0)[0]
    times = uniform_frame_times(FRAMES, FPS)
    whole = chunk_model.audio_context(wave, times)  # (F, T, C_a)
    cfg = chunk_model.config.audio
    assert whole.shape == (FRAMES, cfg.tokens_per_frame, cfg.feature_size)
    window = chunk_model.window
    blocks = AudioContextBlocks(chunk_model._audio_context, wave, times, window)
    for start, stop in ((0, window), (window - 4, 2 * window - 4), (2 * window - 8, FRAMES)):  # overlapping chunks
        assert torch.equal(blocks.frames(start, stop), whole[start:stop])
    assert min(blocks._blocks) == 1  # blocks before the last chunk's start are dropped
    # the first block is the encoder run on that block's own segment, as in training
    assert torch.equal(whole[:window], chunk_model._audio_context(wave, times[:window]))


def test_begin_refuses_a_context_of_another_clip_or_model(chunk_model):
    wave = tone(FRAMES / FPS, 16000)[0]
    times = uniform_frame_times(FRAMES, FPS)
    habit = torch.zeros(chunk_model.config.habit.hidden_size)
    context = chunk_model.audio_context(wave, times)
    with pytest.raises(OptionError, match="encode the speech again"):
        chunk_model.begin(wave, times[:-1], habit, audio_context=context)
    with pytest.raises(OptionError, match="encode the speech again"):
        chunk_model.begin(wave, times, habit, audio_context=context[..., :-1])
    chunk_model.begin(wave, times, habit, audio_context=context)
    assert torch.equal(chunk_model._audio.frames(3, 9), context[3:9])
    assert np.isfinite(context.numpy()).all()
