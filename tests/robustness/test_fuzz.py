"""A bounded, seeded fuzz pass: real media files mutated (truncated, bytes flipped, headers zeroed, blocks wiped) and
handed to ``dub``. Every case must end with exit status 0 and a whole video, or 2 and one error line; never a
traceback (an exception escaping ``main``), never a hang (an alarm fails the case after 30 s).

The video has no face, so a file that still decodes is decoded in full (tracking reads every frame) and ends at
"no face found" without sampling: the cases stay fast (about a second each) and still read every byte FFmpeg reads.
"""

from __future__ import annotations

import random
import signal

import av
import numpy as np
import pytest

from helpers.media_factory import tone, write_video, write_wav
from robust_runs import dub_args, names, run_here

SEED = 14
CASES = 30
ALARM = 30  # seconds a case may take


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 24)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _flip_header(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(min(len(out), 1024))] = rng.randrange(256)
    return bytes(out)


def _zero_head(data: bytes, rng: random.Random) -> bytes:
    k = rng.randint(4, 512)
    return bytes(k) + data[k:]


def _wipe_block(data: bytes, rng: random.Random) -> bytes:
    start, size = rng.randrange(len(data)), rng.randint(64, 4096)
    return data[:start] + bytes(min(size, len(data) - start)) + data[start + size:]


MUTATIONS = (_truncate, _flip, _flip_header, _zero_head, _wipe_block)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    speech = tone(0.48, 16000)
    return {"mp4": write_video(folder / "clip.mp4", 12, size=(64, 96), audio=speech, audio_rate=16000),
            "mkv": write_video(folder / "clip.mkv", 12, size=(64, 96), audio=speech, audio_rate=16000),
            "wav": write_wav(folder / "speech.wav", speech, 16000)}


def _cases():
    rng = random.Random(SEED)
    return [(rng.choice(("mp4", "mkv", "wav")), rng.choice(MUTATIONS), rng.randrange(2 ** 31)) for _ in range(CASES)]


def _alarm(signum, frame):
    raise TimeoutError(f"a fuzz case ran longer than {ALARM} s")


def test_mutated_media_give_one_line_errors_or_whole_videos(inputs, originals, tmp_path, capfd):
    outcomes = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for number, (kind, mutate, seed) in enumerate(_cases()):
            case = tmp_path / f"case{number}"
            case.mkdir()
            mutated = case / f"in.{'mp4' if kind == 'wav' else kind}"
            video = originals["mkv" if kind == "mkv" else "mp4"]
            if kind == "wav":
                mutated = case / "in.wav"
            mutated.write_bytes(mutate(originals[kind].read_bytes(), random.Random(seed)))
            args = {"video": mutated if kind != "wav" else video, "audio": mutated if kind == "wav" else video}
            out = case / "o.mp4"
            signal.alarm(ALARM)
            try:
                status, lines, err = run_here(capfd, dub_args(inputs, out, video=args["video"], audio=args["audio"]))
            finally:
                signal.alarm(0)
            described = f"case {number}: {kind} {mutate.__name__} seed {seed}"
            assert status in (0, 2), (described, status, err)
            if status == 2:
                assert len(err) == 1 and err[0].startswith("stabledub: error: "), (described, err)
                assert names(case) == [mutated.name], (described, names(case))
            else:
                with av.open(str(out)) as container:
                    assert sum(1 for _ in container.decode(video=0)) > 0, described
                assert names(case) == sorted([mutated.name, "o.mp4"]), described
            outcomes.append(err[0].split(":")[2].strip()[:40] if status else "ok")
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert len(outcomes) == CASES
    assert len(set(outcomes)) > 3, outcomes  # the mutations reached different checks, not one early refusal
    assert any("no face" in o for o in outcomes)  # some mutated files still decode to their end
