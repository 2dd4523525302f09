"""StableDub Audio Encode: speech encoded once into per-frame audio features under a length policy, which StableDub
Sample takes instead of the speech and turns into exactly the crops it makes from the speech itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.comfy_stub import random_model_node, run_node
from helpers.media_factory import tone

FRAMES, FPS, RATE = 20, 25.0, 16000  # 20 frames: two chunks of the tiny model's 16-frame windows (overlap 4)
CHECKPOINT = "audio_encode_tiny.safetensors"
SAMPLING = dict(steps=1, scheduler="ddim", audio_scale=2.0, habit_scale=1.5, seed=11, overlap=4,
                windows_per_chunk=1)


def speech(seconds: float, freq: float) -> dict:
    wave = tone(seconds, RATE, freq=freq) + 0.05 * np.random.default_rng(int(freq)).standard_normal(
        (1, int(round(seconds * RATE)))).astype(np.float32)
    return {"waveform": torch.from_numpy(wave.astype(np.float32))[None], "sample_rate": RATE}


@pytest.fixture(scope="module")
def setup(comfy):
    """The tiny preset with its zero-initialised layers made random (so the speech changes the crops), and random
    crops, masks, appearance and lip crops at its resolution."""
    from stabledub_core.models.config import get_preset

    handle = random_model_node(comfy, CHECKPOINT, get_preset("tiny"))
    size, rng = handle.crop_size, np.random.default_rng(5)
    crops = torch.from_numpy(rng.random((FRAMES, size, size, 3), np.float32))
    masks = torch.zeros(FRAMES, size, size)
    masks[:, size // 2:size - 16, 24:size - 24] = 1
    return {"model": handle, "crops": crops, "masks": masks, "appearance": crops[:1].repeat(FRAMES, 1, 1, 1),
            "lip_crops": torch.from_numpy(rng.random((4, handle.lip_size, handle.lip_size, 3), np.float32))}


def sample(comfy, setup, **inputs):
    (crops,) = run_node(comfy, "StableDubSample", model=setup["model"], crops=setup["crops"], masks=setup["masks"],
                        appearance=setup["appearance"], lip_crops=setup["lip_crops"], fps=FPS, **SAMPLING, **inputs)
    return crops


def encode(comfy, setup, audio, policy="trim", frames=None):
    return run_node(comfy, "StableDubAudioEncode", model=setup["model"], audio=audio,
                    images=setup["crops"] if frames is None else frames, fps=FPS, length_policy=policy)


def test_sample_with_encoded_audio_gives_exactly_the_crops_of_the_speech(comfy, setup):
    audio = speech(FRAMES / FPS, 190.0)
    itself = sample(comfy, setup, audio=audio)
    features, fitted = encode(comfy, setup, audio)
    assert features.context.shape[:2] == (FRAMES, setup["model"].model.config.audio.tokens_per_frame)
    assert torch.equal(fitted["waveform"], audio["waveform"])  # same length: the policy leaves the speech as it is
    reused = sample(comfy, setup, audio_features=features)
    assert torch.equal(reused, itself)
    other = sample(comfy, setup, audio_features=encode(comfy, setup, speech(FRAMES / FPS, 700.0))[0])
    assert not torch.equal(other, itself)  # the features are really used: other speech, other crops


def test_length_policy_and_mismatches(comfy, setup):
    from stabledub_core.errors import OptionError

    long = speech(2.0, 190.0)  # 50 frames of speech for 20 frames
    features, fitted = encode(comfy, setup, long, "trim")
    assert features.num_frames == FRAMES and fitted["waveform"].shape[-1] == round(FRAMES / FPS * RATE)
    looped, fitted = encode(comfy, setup, long, "loop")  # the frames are looped to the speech: 50 of them
    assert looped.num_frames == 50 and fitted["waveform"].shape[-1] == long["waveform"].shape[-1]
    with pytest.raises(OptionError, match="cover 50 frames but there are 20.*Fit Length"):
        sample(comfy, setup, audio_features=looped)
    with pytest.raises(OptionError, match="either audio or audio_features"):
        sample(comfy, setup, audio=long, audio_features=features)
    with pytest.raises(OptionError, match="either audio or audio_features"):
        sample(comfy, setup)


def test_every_input_has_a_tooltip_and_sample_takes_the_features(comfy):
    spec = comfy.nodes["StableDubAudioEncode"].INPUT_TYPES()
    assert all(entry[1].get("tooltip") for entry in spec["required"].values())
    assert spec["required"]["length_policy"][1]["default"] == "pingpong"
    assert comfy.nodes["StableDubAudioEncode"].RETURN_TYPES == ("STABLEDUB_AUDIO_FEATURES", "AUDIO")
    optional = comfy.nodes["StableDubSample"].INPUT_TYPES()["optional"]
    assert optional["audio_features"][0] == "STABLEDUB_AUDIO_FEATURES" and "audio" in optional
