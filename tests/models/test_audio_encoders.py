import math

import numpy as np
import pytest
import torch

from stabledub_core.models.audio_encoders import (AudioEncoderError, MelAudioEncoder, Wav2Vec2AudioEncoder,
                                           build_audio_encoder, mel_band_centres)
from stabledub_core.models.audio_context import AudioContextError, frame_audio_context, uniform_frame_times
from stabledub_core.models.config import AudioConfig, get_preset

SR = 16000


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4)
    folder = tmp_path_factory.mktemp("w2v")
    Wav2Vec2Model(cfg).save_pretrained(folder)
    return folder


def test_wav2vec2_from_folder_shapes(wav2vec2_folder):
    enc = Wav2Vec2AudioEncoder.from_folder(wav2vec2_folder)
    assert enc.frame_rate == 50 and enc.feature_size == 32
    assert enc.time_offset == pytest.approx(400 / 2 / SR)
    wave = torch.randn(2, SR)  # 1 s
    feats = enc(wave)
    assert feats.shape == (2, (SR - 400) // 320 + 1, 32)
    # the mix is a softmax over all hidden states; only the mixing logits are trainable
    assert enc.layer_logits.shape == (3,)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["layer_logits"]
    feats.sum().backward()
    assert enc.layer_logits.grad is not None


def test_wav2vec2_weighted_sum_selects_layers(wav2vec2_folder):
    enc = Wav2Vec2AudioEncoder.from_folder(wav2vec2_folder)
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        enc.layer_logits.copy_(torch.tensor([-1e4, -1e4, 0.0]))
        norm = (wave - wave.mean()) / (wave.std() + 1e-7)
        last = enc.backbone(norm, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(enc(wave), last)


def test_wav2vec2_errors(tmp_path, wav2vec2_folder):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Wav2Vec2AudioEncoder.from_folder(tmp_path)
    with pytest.raises(AudioEncoderError, match="feature_size"):
        Wav2Vec2AudioEncoder.from_folder(wav2vec2_folder, config=AudioConfig(feature_size=768))
    enc = Wav2Vec2AudioEncoder.from_folder(wav2vec2_folder)
    with pytest.raises(AudioEncoderError, match="too short"):
        enc(torch.randn(1, 100))


def test_mel_of_a_sine_peaks_at_the_right_band():
    enc = MelAudioEncoder(get_preset("tiny").audio)
    assert enc.frame_rate == 100 and enc.feature_size == 80
    t = torch.arange(SR) / SR
    centres = mel_band_centres(80)
    for band in (10, 40, 70):
        freq = float(centres[band])
        feats = enc(torch.sin(2 * math.pi * freq * t)[None])  # (1, T, 80)
        assert feats.shape == (1, SR // 160 + 1, 80)
        assert int(feats[0, 20:-20].mean(0).argmax()) == band


def test_build_audio_encoder_registry():
    assert isinstance(build_audio_encoder(get_preset("tiny").audio), MelAudioEncoder)
    with pytest.raises(AudioEncoderError, match="choose one of"):
        build_audio_encoder(AudioConfig(kind="nope"))


@pytest.mark.parametrize("fps", [23.976, 25.0, 29.97, 30.0, 60.0])
def test_click_lands_in_the_window_of_the_nearest_frame(fps):
    """An impulse at time t gives the most energy to the centre tokens of the frame nearest t."""
    enc = MelAudioEncoder(get_preset("tiny").audio)
    click_time = 1.2345
    wave = torch.zeros(1, 3 * SR)
    wave[0, int(click_time * SR)] = 1.0
    feats = enc(wave)[0]  # (T, 80)
    energy = feats.exp().sum(-1, keepdim=True)  # (T, 1) total mel energy per feature
    times = uniform_frame_times(int(3 * fps), fps)
    windows = frame_audio_context(energy, enc.frame_rate, times, tokens_per_frame=5, context_seconds=1 / fps,
                            feature_offset=enc.time_offset)  # (F, 5, 1)
    best_frame = int(windows.amax(dim=(1, 2)).argmax())
    assert best_frame == int(np.argmin(np.abs(times - click_time)))
    # far away frames do not see it
    assert windows[best_frame].max() > 100 * windows[best_frame + 10].max()


def test_frame_windows_interpolates_linearly_and_pads_edges():
    feats = torch.arange(10, dtype=torch.float32)[:, None]  # feature i has value i, rate 10 Hz
    win = frame_audio_context(feats, 10.0, [0.0, 0.45, 5.0], tokens_per_frame=2, context_seconds=0.2)
    # tokens at t -/+ 0.05 s -> positions t*10 -/+ 0.5
    torch.testing.assert_close(win[:, :, 0], torch.tensor([[0.0, 0.5], [4.0, 5.0], [9.0, 9.0]]))


def test_variable_frame_times_and_errors():
    feats = torch.randn(50, 3)
    times = np.cumsum([0.0, 0.04, 0.033, 0.05, 0.041])
    assert frame_audio_context(feats, 50.0, times, 4, 0.2).shape == (5, 4, 3)
    with pytest.raises(AudioContextError, match="NaN"):
        frame_audio_context(feats, 50.0, [0.0, float("nan")], 4, 0.2)
    with pytest.raises(AudioContextError, match="non-empty"):
        frame_audio_context(torch.zeros(0, 3), 50.0, [0.0], 4, 0.2)


def test_wav2vec2_chunked_encoding_matches_one_pass(tmp_path):
    """Chunks with enough context reproduce the one-pass features exactly where the model is local: the first
    hidden state of a layer-norm ("layer") feature extractor (a 16-tap positional conv, 0.2 s margins)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path)
    enc = Wav2Vec2AudioEncoder.from_folder(tmp_path)
    with torch.no_grad():
        enc.layer_logits.copy_(torch.tensor([0.0, -1e4, -1e4]))
    wave = torch.randn(1, SR + 123)
    whole = enc(wave, chunk_seconds=None)
    chunked = enc(wave, chunk_seconds=0.3, margin_seconds=0.2)
    assert chunked.shape == whole.shape == (1, (SR + 123 - 400) // 320 + 1, 32)
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)
    # without margins the positional conv at the joins sees zero padding instead of the neighbours
    assert not torch.allclose(enc(wave, chunk_seconds=0.3, margin_seconds=0.0), whole, atol=1e-4)
