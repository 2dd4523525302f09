"""Streaming dubbing end to end with the real tracker, masks and compositing, and a transparent crop model.

The crop model here (:class:`InvertCrops`) returns the inverted source crops instead of running the diffusion
model, so every property of the orchestration is checkable exactly: frame counts per length policy, A/V timing at
29.97 fps with a 44.1 kHz stereo track, bit-exact audio, pass-through of faceless frames, interruption. The real
StableDub model runs through the same seam in ``test_dub_model.py``.
"""

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.media_factory import count_frames, decode_native, tone, write_video
from stabledub_core.errors import NoFaceError
from stabledub_core.runtime import Interrupted
from stabledub_core.media.frames import FrameSource
from stabledub_core.media.length_policy import fit_length
from stabledub_core.pipeline.chunk_model import SourceSpeech
from stabledub_core.pipeline.dub import dub_clip, dub_video
from stabledub_core.pipeline.options import DubOptions

NTSC = Fraction(30000, 1001)
SIZE = 192


class InvertCrops:
    """A ChunkModel whose 'generation' is the inverted source crop (records what it was asked)."""

    crop_size = 64
    crop_box_scale = 1.8
    lip_size = 32
    window = 16
    steps = 2  # sampler steps reported per chunk

    def __init__(self):
        self.calls = []

    def encode_habit(self, lip_crops):
        self.lips = lip_crops
        return torch.from_numpy(lip_crops.reshape(len(lip_crops), -1).mean(axis=1).astype(np.float32))

    def begin(self, wave16, frame_times, habit, source=None):
        self.times = frame_times
        self.habit = habit

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        self.calls.append((start, len(crops)))
        for step in range(self.steps if on_step is not None else 0):
            on_step(step + 1, self.steps)
        return 255 - crops


@pytest.fixture(scope="module")
def face_frames(media_dir):
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for f in c.decode(video=0)]
    return frames


@pytest.fixture(scope="module")
def short_video(tmp_path_factory, face_frames):
    """24 frames at 25 fps with its own AAC track (22.05 kHz mono)."""
    path = tmp_path_factory.mktemp("dub") / "face24.mp4"
    return write_video(path, 24, fps=25, size=(SIZE, SIZE), frames=face_frames[:24],
                       audio=tone(24 / 25, 22050, 1), audio_rate=22050)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory, face_frames):
    """70 frames at 29.97 fps with its own AAC track (44.1 kHz stereo)."""
    path = tmp_path_factory.mktemp("dub") / "face70.mp4"
    return write_video(path, 70, fps=NTSC, size=(SIZE, SIZE), frames=face_frames[:70],
                       audio=tone(70 / float(NTSC), 44100, 2), audio_rate=44100)


def options(face_model_path, **kw):
    return DubOptions.from_values(face_model=face_model_path, x264_preset="ultrafast", **kw)


def decoded_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_keep_video_length_pad_and_44k_stereo_timing(tmp_path, face_video, media_dir, face_model_path):
    speech = media_dir / "speech_es_44k_stereo.wav"
    out = tmp_path / "pad.mp4"
    model = InvertCrops()
    result = dub_video(face_video, speech, model, out, options(face_model_path, length_policy="pad"))
    n, rate, video_seconds = count_frames(out)
    assert n == result.num_frames == 70 and rate == NTSC
    audio = decode_native(out)
    source = decode_native(speech)
    assert audio.shape[0] == 2  # channels kept
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 44100
    np.testing.assert_array_equal(audio, source[:, : audio.shape[1]])  # a lossless cut of the speech
    assert abs(audio.shape[1] / 44100 - video_seconds) <= 1 / float(NTSC)
    assert sum(c[1] for c in model.calls) >= 70 and model.lips.shape == (8, 32, 32, 3)
    assert list(tmp_path.iterdir()) == [out]


def test_follow_audio_loop_keeps_speech_bit_exact(tmp_path, face_video, media_dir, face_model_path):
    speech = media_dir / "speech_es_44k_stereo.wav"
    out = tmp_path / "loop.mp4"
    result = dub_video(face_video, speech, InvertCrops(), out, options(face_model_path, length_policy="loop"))
    source = decode_native(speech)
    n, rate, video_seconds = count_frames(out)
    assert n == result.num_frames == round(source.shape[1] / 44100 * NTSC)
    assert result.audio_bit_exact and result.sink.audio.codec == "alac"
    np.testing.assert_array_equal(decode_native(out), source)
    assert abs(source.shape[1] / 44100 - video_seconds) <= 1 / float(NTSC)
    # The mouth region is replaced (inverted), the corner of the frame is not.
    src, dub = decoded_frames(face_video)[5], decoded_frames(out)[5]
    assert np.abs(src[:20, :20].astype(int) - dub[:20, :20]).mean() < 3
    assert np.abs(src.astype(int) - dub).max() > 100


def test_own_aac_track_is_copied(tmp_path, short_video, face_model_path):
    out = tmp_path / "own.mp4"
    model, events = InvertCrops(), []
    result = dub_video(short_video, None, model, out, options(face_model_path, length_policy="freeze"),
                       on_progress=lambda *event: events.append(event))
    assert result.audio_bit_exact and result.sink.audio.codec == "aac"
    steps = [(done, total) for stage, done, total in events if stage == "sample"]  # per sampler step
    total = InvertCrops.steps * len(model.calls)
    assert steps == [(done, total) for done in range(1, total + 1)]
    assert events[-1] == ("paste", 24, 24)
    np.testing.assert_array_equal(decode_native(out), decode_native(short_video))


def test_faceless_frames_pass_through(tmp_path, face_frames, face_model_path):
    blank = np.full((SIZE, SIZE, 3), 90, np.uint8)
    frames = face_frames[:16] + [blank] * 16
    video = write_video(tmp_path / "half.mp4", 32, fps=25, size=(SIZE, SIZE), frames=frames,
                        audio=tone(32 / 25, 16000), audio_rate=16000)
    out = tmp_path / "o.mp4"
    result = dub_video(video, None, InvertCrops(), out, options(face_model_path, length_policy="trim"))
    assert result.num_frames == 32 and result.faceless_frames >= 12
    src, dub = decoded_frames(video), decoded_frames(out)
    for i in range(20, 32):
        assert np.abs(src[i].astype(int) - dub[i]).mean() < 2
    assert np.abs(src[5].astype(int) - dub[5]).max() > 100


def test_no_face_at_all(tmp_path, face_model_path):
    video = write_video(tmp_path / "noface.mp4", 8, size=(96, 96), audio=tone(0.32, 16000), audio_rate=16000)
    out = tmp_path / "o.mp4"
    with pytest.raises(NoFaceError, match="no face found"):
        dub_video(video, None, InvertCrops(), out, options(face_model_path))
    assert list(tmp_path.iterdir()) == [video]


@pytest.mark.parametrize("after", [3, 40])  # during tracking / during dubbing
def test_interruption_leaves_no_file(tmp_path, short_video, face_model_path, after):
    calls = iter(range(10_000))
    out = tmp_path / "o.mp4"
    with pytest.raises(Interrupted):
        dub_video(short_video, None, InvertCrops(), out, options(face_model_path),
                  should_stop=lambda: next(calls) >= after)
    assert list(tmp_path.iterdir()) == []


def test_per_frame_occluder_follows_the_source_frames(face_frames, face_model_path):
    """An (F_src, H, W) occluder is looked up by each output frame's source frame (here through a ping-pong)."""
    frames = np.stack(face_frames[:24])
    speech = tone(40 / 25, 16000)
    occluder = np.zeros((24, SIZE, SIZE), np.float32)
    occluder[:6] = 1  # source frames 0-5 are fully occluded: every patch is exposed, nothing is generated
    result = dub_clip(FrameSource(frames, 25), speech, 16000, InvertCrops(), options(face_model_path), occluder)
    index = fit_length(24, 25, speech, 16000, "pingpong").index
    assert len(result.frames) == len(index) == 40
    for i, src in enumerate(index):
        kept = np.array_equal(result.frames[i], frames[src])
        assert kept == (src < 6), (i, src)
    with pytest.raises(ValueError, match="one per frame"):
        dub_clip(FrameSource(frames, 25), speech, 16000, InvertCrops(), options(face_model_path), occluder[:5])


def test_source_speech_is_padded_with_silence_to_the_last_frame():
    short = SourceSpeech.covering(np.ones(100, np.float32), np.arange(10) / 25, 25)
    assert len(short.wave16) == 6400 and short.wave16[:100].min() == 1 and short.wave16[100:].max() == 0
    assert len(SourceSpeech.covering(np.ones(20000, np.float32), np.arange(10) / 25, 25).wave16) == 20000


class RecordMasks(InvertCrops):
    """InvertCrops that keeps the inpainting masks it was given, framed as its ``crop_box_scale`` asks."""

    def __init__(self, crop_box_scale):
        super().__init__()
        self.crop_box_scale, self.masks = crop_box_scale, []

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        self.masks.append(masks)
        return super().generate(start, crops, masks, appearance, clock, should_stop, on_step)


def test_the_crops_are_framed_as_the_model_was_trained(face_frames, face_model_path):
    """The chunk model's ``crop_box_scale`` (its config's) frames the crops: a tighter box shows the mouth mask
    larger, by about the square of the two scales, and the dub still changes the same frame pixels."""
    frames, speech = np.stack(face_frames[:16]), tone(16 / 25, 16000)
    shares, dubs = {}, {}
    for scale in (1.8, 1.3):
        model = RecordMasks(scale)
        dubs[scale] = dub_clip(FrameSource(frames, 25), speech, 16000, model, options(face_model_path)).frames
        shares[scale] = float(np.mean([(m > 0).mean() for m in model.masks]))
    assert 1.5 < shares[1.3] / shares[1.8] < 2.4, shares
    changed = [(d != frames).any(axis=-1) for d in (dubs[1.8], dubs[1.3])]
    assert (changed[0] ^ changed[1]).mean() < 0.01 * changed[0].mean() + 1e-3


class RecordAppearance(InvertCrops):
    """InvertCrops that keeps the appearance crops it was given."""

    def __init__(self):
        super().__init__()
        self.appearance = []

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        self.appearance.append(appearance.copy())
        return super().generate(start, crops, masks, appearance, clock, should_stop, on_step)


def test_a_given_reference_frame_is_the_appearance_of_every_crop(face_frames, face_model_path):
    """``reference=`` replaces the frame the reference strategy picks: every appearance crop is cut from it with
    the frame's own face box; a frame of another size is refused with what to give."""
    frames, speech = np.stack(face_frames[:16]), tone(16 / 25, 16000)
    picked, plain, inverted = RecordAppearance(), RecordAppearance(), RecordAppearance()
    dub_clip(FrameSource(frames, 25), speech, 16000, picked, options(face_model_path))
    dub_clip(FrameSource(frames, 25), speech, 16000, plain, options(face_model_path), reference=frames[5])
    dub_clip(FrameSource(frames, 25), speech, 16000, inverted, options(face_model_path), reference=255 - frames[5])
    picked, plain, inverted = (np.concatenate(m.appearance).astype(int) for m in (picked, plain, inverted))
    assert picked.shape == plain.shape == inverted.shape
    assert not np.array_equal(picked, plain)  # the strategy picks another frame than 5 here
    # cut with the same boxes, so the inverted reference gives the inverted crops (up to the resampling's rounding)
    assert np.abs(inverted - (255 - plain)).max() <= 1
    with pytest.raises(ValueError, match="clip's size"):
        dub_clip(FrameSource(frames, 25), speech, 16000, InvertCrops(), options(face_model_path),
                 reference=frames[5][:100])
