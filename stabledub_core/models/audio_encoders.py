"""Audio encoders: 16 kHz mono waveforms -> feature sequences for the lip-habit modulation.

Two encoders share one interface, ``forward(wave (B, S)) -> (B, T_feat, C_a)`` with ``.frame_rate`` (features per
second), ``.time_offset`` (seconds that feature 0 describes) and ``.feature_size`` (C_a):

- :class:`Wav2Vec2AudioEncoder`: transformers' ``Wav2Vec2Model`` (frozen) loaded from a local folder; all hidden
  states (the CNN-projected input and every transformer layer) mixed by a learned softmax-weighted sum. 50 Hz.
- :class:`MelAudioEncoder`: a built-in log-mel spectrogram (torch STFT, mel filterbank computed in code) followed by
  a small residual Conv1d that starts at zero. 100 Hz. Used by the ``tiny`` preset: no files needed.

``build_audio_encoder(config)`` picks one from ``AudioConfig.kind`` through the :data:`AUDIO_ENCODERS` registry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stabledub_core.errors import AudioEncoderError, WeightsNotFoundError
from stabledub_core.models.config import AudioConfig

SAMPLE_RATE = 16000


def _check_wave(wave: torch.Tensor) -> torch.Tensor:
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise AudioEncoderError(f"expected a (B, S) 16 kHz mono waveform, got shape {tuple(wave.shape)}; "
                                "convert with stabledub_core.media.audio.to_encoder_input first")
    if not wave.is_floating_point():
        raise AudioEncoderError(f"expected a float waveform in [-1, 1], got dtype {wave.dtype}")
    return wave


# --------------------------------------------------------------------------------------------------------- wav2vec2


def wav2vec2_config_from(config: AudioConfig):
    """A transformers ``Wav2Vec2Config`` (wav2vec2-base layout) sized by ``config``; built in code, no hub access.

    Args:
        config: ``feature_size`` is the hidden size, ``num_hidden_layers`` the transformer depth.
    """
    from transformers import Wav2Vec2Config  # local: transformers' wav2vec2 takes seconds to import (see below)

    heads = max(1, config.feature_size // 64)
    return Wav2Vec2Config(hidden_size=config.feature_size, num_hidden_layers=config.num_hidden_layers,
                          num_attention_heads=heads, intermediate_size=4 * config.feature_size)


class Wav2Vec2AudioEncoder(nn.Module):
    """Frozen wav2vec2 backbone + learned softmax-weighted sum of all its hidden states.

    Args:
        config: the audio config (``feature_size`` must equal the backbone's hidden size).
        backbone: a transformers ``Wav2Vec2Model``; when omitted, a randomly initialised one is built from
            :func:`wav2vec2_config_from` (for shapes, parameter counts and tests; load real weights with
            :meth:`from_folder`).
        normalize: zero-mean / unit-variance normalise each waveform first, as wav2vec2's feature extractor does.
    """

    external_prefixes = ("backbone.",)  # pretrained, frozen: comes from its own folder, not the StableDub checkpoint

    def __init__(self, config: AudioConfig, backbone=None, normalize: bool = True):
        super().__init__()
        if backbone is None:
            # local: transformers' wav2vec2 takes seconds to import; only this encoder needs it (ComfyUI imports the
            # node pack at startup, and the tiny preset uses the mel encoder)
            from transformers import Wav2Vec2Model

            backbone = Wav2Vec2Model(wav2vec2_config_from(config))
        hidden = backbone.config.hidden_size
        if hidden != config.feature_size:
            raise AudioEncoderError(f"wav2vec2 hidden size is {hidden} but AudioConfig.feature_size is "
                                    f"{config.feature_size}; use a matching wav2vec2 model or preset")
        self.config = config
        self.normalize = normalize
        self.backbone = backbone.requires_grad_(False).eval()
        num_states = backbone.config.num_hidden_layers + 1
        self.layer_logits = nn.Parameter(torch.zeros(num_states))  # softmax -> uniform mix at init
        strides = backbone.config.conv_stride
        kernels = backbone.config.conv_kernel
        self.hop = math.prod(strides)
        receptive = 1
        for k, s in zip(reversed(kernels), reversed(strides)):
            receptive = (receptive - 1) * s + k
        self.receptive_field = receptive  # samples seen by one feature

    @classmethod
    def from_folder(cls, path, config: AudioConfig | None = None, **kwargs) -> "Wav2Vec2AudioEncoder":
        """Load the backbone with ``Wav2Vec2Model.from_pretrained(path, local_files_only=True)``.

        Args:
            path: a local folder holding ``config.json`` and the weights (e.g. a saved ``facebook/wav2vec2-base``).
            config: the audio config; defaults to one matching the folder's sizes.
        """
        from transformers import Wav2Vec2Model  # local: slow to import, see __init__

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise WeightsNotFoundError(f"no wav2vec2 model folder at {folder} (config.json missing): download a "
                                       "wav2vec2 model (e.g. facebook/wav2vec2-base) and give its local folder")
        backbone = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True)
        if config is None:
            config = AudioConfig(kind="wav2vec2", feature_size=backbone.config.hidden_size,
                                 num_hidden_layers=backbone.config.num_hidden_layers)
        return cls(config, backbone=backbone, **kwargs)

    @property
    def frame_rate(self) -> float:
        """Features per second (50 for wav2vec2)."""
        return SAMPLE_RATE / self.hop

    @property
    def time_offset(self) -> float:
        """Seconds from the start that feature 0 describes (centre of its receptive field)."""
        return self.receptive_field / 2 / SAMPLE_RATE

    @property
    def feature_size(self) -> int:
        return self.config.feature_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: dropout off, always
        return self

    def forward(self, wave: torch.Tensor, chunk_seconds: float | None = 30.0,
                margin_seconds: float = 2.0) -> torch.Tensor:
        """Args:
            wave: (B, S) float 16 kHz mono, at least ``receptive_field`` samples.
            chunk_seconds: long audio is encoded in chunks of this many seconds (plus ``margin_seconds`` of context
                on each side, dropped afterwards), so memory grows linearly with the length instead of
                quadratically (self-attention). None encodes in one pass. Chunking is exact only up to the
                context the margins cut off (and, for ``feat_extract_norm="group"`` models such as
                wav2vec2-base, the first conv layer's GroupNorm statistics, taken per chunk).
            margin_seconds: context on each side of a chunk.

        Returns:
            (B, T_feat, C_a) features, T_feat = (S - receptive_field) // hop + 1.
        """
        wave = _check_wave(wave)
        if wave.shape[1] < self.receptive_field:
            raise AudioEncoderError(f"audio too short for wav2vec2: {wave.shape[1]} samples, need at least "
                                    f"{self.receptive_field}")
        if self.normalize:
            wave = (wave - wave.mean(1, keepdim=True)) / (wave.std(1, keepdim=True) + 1e-7)
        wave = wave.to(self.layer_logits.dtype)
        total = (wave.shape[1] - self.receptive_field) // self.hop + 1  # features of the whole clip
        step = total if chunk_seconds is None else max(1, int(chunk_seconds * self.frame_rate))
        margin = int(margin_seconds * self.frame_rate)
        pieces = []
        for start in range(0, total, step):
            stop = min(start + step, total)
            lo, hi = max(0, start - margin), min(total, stop + margin)  # feature range encoded with context
            # feature i sees samples [i * hop, i * hop + receptive_field); one pass takes the wave unchanged
            end = wave.shape[1] if hi == total else (hi - 1) * self.hop + self.receptive_field
            states = self._mixed(wave[:, lo * self.hop:end])
            pieces.append(states[:, start - lo:stop - lo])
        return torch.cat(pieces, dim=1)

    def _mixed(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) normalised wave -> (B, T, C_a) softmax-weighted sum of all hidden states."""
        with torch.no_grad():
            out = self.backbone(wave, output_hidden_states=True)
        states = torch.stack(out.hidden_states, dim=0)  # (L+1, B, T, C_a)
        weights = self.layer_logits.softmax(0)  # (L+1,)
        return torch.einsum("l,lbtc->btc", weights, states)


# -------------------------------------------------------------------------------------------------------------- mel


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int = SAMPLE_RATE, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters.

    Args:
        n_mels: number of mel bands.
        n_fft: FFT size (n_fft // 2 + 1 frequency bins).
        sample_rate: audio sample rate in Hz.
        f_min: lowest band edge in Hz.
        f_max: highest band edge in Hz (default: Nyquist).

    Returns:
        (n_mels, n_fft // 2 + 1) filter matrix.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    hz_to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,) band edges in Hz
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (n_freq,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def mel_band_centres(n_mels: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Centre frequency in Hz of each band of :func:`mel_filterbank` (f_min 0, f_max Nyquist)."""
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    mels = torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64)[1:-1]
    return 700.0 * (10 ** (mels / 2595.0) - 1.0)


class MelAudioEncoder(nn.Module):
    """Log-mel spectrogram (``feature_size`` bands, hop ``mel_hop_length``) + zero-initialised residual Conv1d.

    Args:
        config: ``feature_size`` = number of mel bands; ``mel_n_fft`` / ``mel_hop_length`` in samples at 16 kHz.
    """

    external_prefixes: tuple[str, ...] = ()  # everything is built in and stored in the StableDub checkpoint

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        n_mels = config.feature_size
        self.register_buffer("window", torch.hann_window(config.mel_n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, config.mel_n_fft), persistent=False)
        self.conv = nn.Conv1d(n_mels, n_mels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    @property
    def frame_rate(self) -> float:
        """Features per second (100 with the default 160-sample hop)."""
        return SAMPLE_RATE / self.config.mel_hop_length

    @property
    def time_offset(self) -> float:
        """Centred STFT frames: feature 0 describes time 0."""
        return 0.0

    @property
    def feature_size(self) -> int:
        return self.config.feature_size

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: (B, S) float 16 kHz mono.

        Returns:
            (B, T_feat, n_mels) natural-log mel energies, T_feat = S // hop + 1.
        """
        wave = _check_wave(wave).float()
        spec = torch.stft(wave, self.config.mel_n_fft, hop_length=self.config.mel_hop_length,
                          window=self.window.float(), center=True, pad_mode="constant", return_complex=True)
        power = spec.abs() ** 2  # (B, n_freq, T_feat)
        mel = torch.einsum("mf,bft->btm", self.filters.float(), power)  # (B, T_feat, n_mels)
        return torch.log(mel + 1e-6)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: (B, S) float 16 kHz mono.

        Returns:
            (B, T_feat, n_mels) features.
        """
        feats = self.log_mel(wave).to(self.conv.weight.dtype)  # (B, T, M)
        return feats + F.gelu(self.conv(feats.transpose(1, 2))).transpose(1, 2)


AUDIO_ENCODERS: dict[str, Callable[[AudioConfig], nn.Module]] = {
    "wav2vec2": Wav2Vec2AudioEncoder,
    "mel": MelAudioEncoder,
}


def build_audio_encoder(config: AudioConfig) -> nn.Module:
    """Build the encoder named by ``config.kind`` (randomly initialised wav2vec2 backbone; see ``from_folder``)."""
    try:
        factory = AUDIO_ENCODERS[config.kind]
    except KeyError:
        raise AudioEncoderError(f"unknown audio encoder kind {config.kind!r}; choose one of "
                                f"{sorted(AUDIO_ENCODERS)}") from None
    return factory(config)
