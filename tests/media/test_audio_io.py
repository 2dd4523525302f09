import wave

import numpy as np
import pytest

from helpers.media_factory import decode_native, tone, write_video, write_wav
from stabledub_core.media.audio import load_audio, load_encoder_input, probe_audio, to_encoder_input
from stabledub_core.errors import EmptyMediaError, InputFileNotFoundError, NoAudioStreamError, NotAMediaFileError


def test_wav_roundtrip_values(tmp_path):
    x = tone(0.5, 22050, 2)
    path = write_wav(tmp_path / "a.wav", x, 22050)
    wave, rate = load_audio(path)
    assert rate == 22050 and wave.shape == x.shape and wave.dtype == np.float32
    np.testing.assert_allclose(wave, x * 32767 / 32768, atol=1.0 / 32768)


@pytest.mark.parametrize("suffix,codec", [(".mp3", "libmp3lame"), (".m4a", "aac"), (".flac", "flac")])
def test_compressed_containers(tmp_path, suffix, codec):
    import av

    x = tone(1.0, 44100, 2)
    path = tmp_path / f"a{suffix}"
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=44100, layout="stereo")
        fmt = s.codec_context.codec.audio_formats[0].name
        scale_dtype = {"s16": (32767, np.int16), "s32": (2**31 - 1, np.int32)}
        scale, dtype = scale_dtype.get(fmt.rstrip("p"), (1, np.float32))
        data = (x * scale).astype(dtype)
        if not s.codec_context.codec.audio_formats[0].is_planar:
            data = data.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="stereo")
        frame.sample_rate = 44100
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    wave, rate = load_audio(path)
    assert rate == 44100 and wave.shape[0] == 2
    assert abs(wave.shape[1] - 44100) < 3000  # codec priming/padding
    rms = np.sqrt(np.mean(wave[:, 5000:35000] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.02


def test_mp4_audio_track_and_encoder_input(tmp_path):
    x = tone(1.2, 48000, 2, freq=300)
    path = write_video(tmp_path / "v.mp4", 30, audio=x, audio_rate=48000)
    wave16, info = load_encoder_input(path)
    assert info.sample_rate == 48000 and info.channels == 2 and info.codec == "aac"
    assert wave16.shape == (round(info.num_samples * 16000 / 48000),) and wave16.dtype == np.float32
    full, rate = load_audio(path)
    np.testing.assert_array_equal(to_encoder_input(full, rate), wave16)


def test_resampling_is_band_limited_and_downmix_is_mean():
    rate = 44100
    t = np.arange(rate) / rate
    left = np.sin(2 * np.pi * 440 * t)
    right = np.sin(2 * np.pi * 440 * t + 0.5)
    out = to_encoder_input(np.stack([left, right]).astype(np.float32), rate)
    assert out.shape == (16000,)
    t16 = np.arange(16000) / 16000
    expected = 0.5 * (np.sin(2 * np.pi * 440 * t16) + np.sin(2 * np.pi * 440 * t16 + 0.5))
    assert np.abs(out - expected)[200:-200].max() < 1e-3
    # A tone above the 8 kHz Nyquist limit of 16 kHz is filtered out, not aliased.
    high = np.sin(2 * np.pi * 12000 * t).astype(np.float32)
    assert np.abs(to_encoder_input(high, rate))[200:-200].max() < 0.02


def test_real_speech_files(media_dir):
    wave, rate = load_audio(media_dir / "speech_es_44k_stereo.wav")
    assert rate == 44100 and wave.shape[0] == 2
    info = probe_audio(media_dir / "speech_es_44k_stereo.wav")
    assert info.num_samples == wave.shape[1] and info.is_integer_pcm
    native = decode_native(media_dir / "speech_es_44k_stereo.wav")
    np.testing.assert_array_equal(native.astype(np.float32) / 32768, wave)


def test_errors(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "speech.wav"
    text.write_text("not audio at all\n" * 10)
    with pytest.raises(NotAMediaFileError, match="not a media file"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(EmptyMediaError, match="empty audio"):
        probe_audio(empty)
    with pytest.raises(EmptyMediaError):
        load_audio(empty)
    silent_video = write_video(tmp_path / "v.mp4", 5)
    with pytest.raises(NoAudioStreamError, match="no audio track"):
        load_encoder_input(silent_video)
