from fractions import Fraction

import av
import numpy as np
import pytest

from helpers.media_factory import count_frames, decode_native, pattern, tone, write_video, write_wav
from stabledub_core.media.audio import probe_audio
from stabledub_core.errors import MediaError, NoVideoStreamError, NotAMediaFileError, OptionError
from stabledub_core.media.video import Run, VideoReader, VideoWriter

NTSC = Fraction(30000, 1001)


def test_reader_ntsc_rate_and_times(tmp_path):
    path = write_video(tmp_path / "v.mp4", 20, fps=NTSC)
    with VideoReader(path) as reader:
        frames = list(reader.frames())
        assert reader.fps == NTSC and reader.size == (64, 96)
        assert [f.index for f in frames] == list(range(20))
        np.testing.assert_allclose([f.time for f in frames], np.arange(20) * 1001 / 30000, atol=1e-4)
        assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (64, 96, 3)
        assert not reader.is_variable_rate()
        # Content survives encoding (moving bright bar at x = 7 * index).
        bar = frames[5].image[40, :, 0].astype(int)
        assert abs(int(np.argmax(bar > 150)) - 35) <= 2


def test_reader_variable_rate(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 200, 240, 400, 440, 480]
    path = write_video(tmp_path / "vfr.mkv", len(pts), fps=25, pts=pts, time_base=tb)
    with VideoReader(path) as reader:
        times = [f.time for f in reader.frames()]
        np.testing.assert_allclose(times, np.array(pts) / 1000, atol=1e-3)
        assert reader.is_variable_rate()


def test_frames_at_any_order(tmp_path):
    path = write_video(tmp_path / "v.mp4", 60, fps=25)
    with VideoReader(path) as reader:
        ref = [f.image for f in reader.frames()]
        runs = [Run(0, 60, 1), Run(58, 59, -1), Run(59, 4, 0), Run(30, 10, 1), Run(5, 3, 1)]
        got = list(reader.frames_at(runs))
    expected = [i for r in runs for i in r.indices()]
    assert len(got) == len(expected)
    for image, index in zip(got, expected):
        np.testing.assert_array_equal(image, ref[index])


def test_reader_errors(tmp_path, media_dir):
    with pytest.raises(NoVideoStreamError, match="no video stream"):
        VideoReader(media_dir / "speech_es.wav")
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello\n")
    with pytest.raises(NotAMediaFileError):
        VideoReader(fake)


def _write(path, n, fps=Fraction(25), size=(64, 96), **kw):
    with VideoWriter(path, fps, size, **kw) as writer:
        for i in range(n):
            writer.write(pattern(i, size))
    return path


def test_writer_counts_rate_and_odd_size(tmp_path):
    out = _write(tmp_path / "o.mp4", 70, fps=NTSC, size=(63, 95))
    n, rate, dur = count_frames(out)
    assert n == 70 and rate == NTSC
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (95, 63)  # the exact size, not padded
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv444p"  # 4:2:0 needs even sizes
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (63, 95, 3) and np.abs(first.astype(int) - pattern(0, (63, 95))).mean() < 3
    assert list(tmp_path.iterdir()) == [out]
    even = _write(tmp_path / "even.mp4", 3, size=(64, 96))
    with av.open(str(even)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_writer_leaves_nothing_on_failure(tmp_path, exc):
    out = tmp_path / "o.mp4"
    with pytest.raises(exc):
        with VideoWriter(out, Fraction(25), (64, 96)) as writer:
            for i in range(10):
                writer.write(pattern(i, (64, 96)))
            raise exc()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_unknown_extension(tmp_path):
    with pytest.raises(OptionError, match="unsupported extension"):
        VideoWriter(tmp_path / "o.avi", Fraction(25), (64, 96))
    assert list(tmp_path.iterdir()) == []


def test_aac_track_is_copied_bit_exact(tmp_path):
    src = write_video(tmp_path / "src.mp4", 70, audio=tone(2.8, 22050, 1), audio_rate=22050)
    info = probe_audio(src)
    out = _write(tmp_path / "o.mp4", 70, audio=info)
    np.testing.assert_array_equal(decode_native(out), decode_native(src))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_wav_track_is_lossless(tmp_path, media_dir, suffix):
    src = media_dir / "speech_es_44k_stereo.wav"
    info = probe_audio(src)
    n = round(info.duration * 25)
    out = _write(tmp_path / f"o{suffix}", n, audio=info)
    got = decode_native(out)
    assert got.shape == (2, info.num_samples)
    np.testing.assert_array_equal(got, decode_native(src))
    _, _, video_seconds = count_frames(out)
    assert abs(video_seconds - info.duration) <= 1 / 25


def test_24bit_wav_is_lossless(tmp_path):
    src = write_wav(tmp_path / "s24.wav", tone(0.7, 48000, 2), 48000, codec="pcm_s24le")
    out = _write(tmp_path / "o.mp4", 18, audio=probe_audio(src))
    np.testing.assert_array_equal(decode_native(out), decode_native(src))


def test_changed_track_is_padded_and_cut(tmp_path, media_dir):
    info = probe_audio(media_dir / "speech_es.wav")
    longer = info.num_samples + 22050
    out = _write(tmp_path / "pad.mp4", 10, audio=info, audio_samples=longer)
    got = decode_native(out)
    src = decode_native(media_dir / "speech_es.wav")
    assert got.shape == (1, longer)
    np.testing.assert_array_equal(got[:, : info.num_samples], src)
    assert not got[:, info.num_samples:].any()
    out = _write(tmp_path / "cut.mp4", 10, audio=info, audio_samples=1000)
    np.testing.assert_array_equal(decode_native(out), src[:, :1000])


def test_writer_keeps_variable_frame_times(tmp_path):
    times = [0.0, 0.04, 0.08, 0.2, 0.24, 0.4]
    out = tmp_path / "vfr.mp4"
    with VideoWriter(out, Fraction(25), (64, 96), time_base=Fraction(1, 1000)) as writer:
        for i, t in enumerate(times):
            writer.write(pattern(i, (64, 96)), time=t)
    with VideoReader(out) as reader:
        got = [f.time for f in reader.frames()]
    np.testing.assert_allclose(got, times, atol=2e-3)


def test_a_truncated_file_decodes_up_to_the_damage(tmp_path):
    """A packet FFmpeg cannot decode (the cut-off last one) is skipped and counted, not an error; seeking works over
    the frames that decoded."""
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as out:  # the header first: it survives the cut
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(pattern(i, (64, 96)), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with VideoReader(cut) as reader:
        assert reader.stream.frames == 30
        images = [f.image for f in reader.frames()]
        assert 0 < reader.num_frames == len(images) < 30  # (the cut-off packet, if any, in damaged_packets)
        again = list(reader.frames_at([Run(reader.num_frames - 1, reader.num_frames, -1)]))
    assert len(again) == len(images)
    np.testing.assert_array_equal(again[-1], images[0])
    cut.write_bytes(data[:200])  # not even the header: a clear error
    with pytest.raises(MediaError):
        with VideoReader(cut) as reader:
            list(reader.frames())
