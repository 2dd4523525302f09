"""What to do when the speech and the video do not last equally long.

Durations are compared in whole frames: the audio spans ``m = round(audio_seconds * fps)`` frames, the video has
``n`` frames. When ``m == n`` every policy leaves both untouched (the audio then goes into the output bit for bit).
Otherwise:

============  ======================  ===========================================================================
policy        output frames           what happens
============  ======================  ===========================================================================
``trim``      ``min(n, m)``           Cut whichever is longer. Nothing is invented; the output may be shorter
                                      than both the video and the speech is cut if the video is shorter.
``pad``       ``n`` (the video's)     Keep the video as it is; silence is appended to a shorter speech, a longer
                                      one is cut at the end of the video.
``loop``      ``m`` (the audio's)     Keep the whole speech; the video starts over from its first frame as often
                                      as needed (a longer video is cut).
``pingpong``  ``m``                   Keep the whole speech; the video plays forwards, then backwards, then
                                      forwards ... so there is no jump at the seams (a longer video is cut).
``freeze``    ``m``                   Keep the whole speech; the last frame is held (a longer video is cut).
============  ======================  ===========================================================================

A :class:`LengthPlan` describes the result without holding any frame: the source frame indices as a few
:class:`~stabledub_core.media.video.Run` objects (read lazily by ``VideoReader.frames_at``) and the number
of audio samples to write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from stabledub_core.errors import EmptyMediaError, OptionError
from stabledub_core.media.audio import check_waveform, fit_samples
from stabledub_core.media.frames import frame_rate
from stabledub_core.media.video import Run


class LengthPolicy(str, enum.Enum):
    """How to reconcile video and audio durations (see the module docstring)."""

    TRIM = "trim"
    PAD_SILENCE = "pad"
    LOOP = "loop"
    PING_PONG = "pingpong"
    FREEZE = "freeze"

    @classmethod
    def parse(cls, value: "str | LengthPolicy") -> "LengthPolicy":
        """Accept an enum member or its value; a clear error for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise OptionError(f"unknown length policy {value!r}; choose one of "
                              f"{', '.join(p.value for p in cls)}") from None


@dataclass(frozen=True)
class LengthPlan:
    """The output's frames and audio length.

    Attributes:
        policy: The policy that made the plan.
        num_frames: Output frames.
        runs: Source frame indices of the output frames, as runs.
        audio_samples: Output audio samples per channel (at the audio's own rate).
        audio_changed: False when the audio track is written untouched (bit-exact).
        fps: Output frame rate.
    """

    policy: LengthPolicy
    num_frames: int
    runs: tuple[Run, ...]
    audio_samples: int
    audio_changed: bool
    fps: Fraction

    @property
    def is_identity(self) -> bool:
        """True when the output frames are the source frames, in order, all of them once."""
        return len(self.runs) == 1 and self.runs[0].start == 0 and self.runs[0].step == 1

    def frame_indices(self) -> Iterator[int]:
        """Source frame index of every output frame, lazily."""
        for run in self.runs:
            yield from run.indices()

    def index_array(self) -> np.ndarray:
        """``(num_frames,)`` int64 source indices (small even for long videos: 8 bytes a frame)."""
        return np.fromiter(self.frame_indices(), dtype=np.int64, count=self.num_frames)


def _forward(n: int, m: int) -> tuple[Run, ...]:
    """The first ``min(n, m)`` frames in order (trim and pad)."""
    return (Run(0, min(n, m), 1),)


def _loop(n: int, m: int) -> tuple[Run, ...]:
    full, rest = divmod(m, n)
    return tuple([Run(0, n, 1)] * full + ([Run(0, rest, 1)] if rest else []))


def _ping_pong(n: int, m: int) -> tuple[Run, ...]:
    if n == 1:
        return _freeze(n, m)
    runs, left, forward = [], m, True
    while left > 0:
        # Forward legs show 0..n-1; backward legs n-2..1, so no frame repeats at a turn.
        run = Run(0, min(n, left), 1) if forward else Run(n - 2, min(max(n - 2, 0), left), -1)
        if run.count:
            runs.append(run)
        left -= run.count
        forward = not forward
    return tuple(runs)


def _freeze(n: int, m: int) -> tuple[Run, ...]:
    if m <= n:
        return (Run(0, m, 1),)
    return (Run(0, n, 1), Run(n - 1, m - n, 0))


# policy -> (frames function (n, m) -> runs, output frame count (n, m) -> int, whether the audio is kept whole)
_POLICIES: dict[LengthPolicy, tuple[Callable[[int, int], tuple[Run, ...]], Callable[[int, int], int], bool]] = {
    LengthPolicy.TRIM: (_forward, min, False),
    LengthPolicy.PAD_SILENCE: (lambda n, m: _forward(n, n), lambda n, m: n, False),
    LengthPolicy.LOOP: (_loop, lambda n, m: m, True),
    LengthPolicy.PING_PONG: (_ping_pong, lambda n, m: m, True),
    LengthPolicy.FREEZE: (_freeze, lambda n, m: m, True),
}


def audio_frames(audio_samples: int, sample_rate: int, fps: Fraction) -> int:
    """Video frames spanned by an audio track: ``round(seconds * fps)`` (exact rational arithmetic)."""
    return int(round(Fraction(audio_samples, sample_rate) * Fraction(fps)))


def plan_length(policy: "LengthPolicy | str", num_frames: int, fps: Fraction, audio_samples: int,
                sample_rate: int) -> LengthPlan:
    """Plan the output of a policy.

    Args:
        policy: A :class:`LengthPolicy` or its name.
        num_frames: Frames in the source video (``n``).
        fps: The video's exact frame rate.
        audio_samples: Samples per channel in the speech track.
        sample_rate: The speech track's sample rate.

    Returns:
        The :class:`LengthPlan`.

    Raises:
        EmptyMediaError: If the video has no frame or the speech is shorter than half a frame.
    """
    policy = LengthPolicy.parse(policy)
    fps = Fraction(fps)
    n, m = int(num_frames), audio_frames(audio_samples, sample_rate, fps)
    if n < 1:
        raise EmptyMediaError("the video has no frames")
    if m < 1:
        raise EmptyMediaError(f"the audio lasts {audio_samples / sample_rate:.3f} s, less than one video frame: "
                              "give a longer speech track")
    if m == n:  # equal to within half a frame: nothing to reconcile
        return LengthPlan(policy, n, (Run(0, n, 1),), audio_samples, False, fps)
    runs_of, count_of, keeps_audio = _POLICIES[policy]
    count = count_of(n, m)
    runs = runs_of(n, m)
    if sum(r.count for r in runs) != count:  # the policies' own invariant; cheap to keep honest
        raise AssertionError(f"{policy.value}: runs cover {sum(r.count for r in runs)} frames, expected {count}")
    samples = audio_samples if keeps_audio or count == m else int(round(Fraction(count) / fps * sample_rate))
    return LengthPlan(policy, count, runs, samples, samples != audio_samples, fps)


@dataclass
class FittedClip:
    """Frames and speech of equal duration after a length policy.

    Attributes:
        index: ``(F_out,)`` source frame index of each output frame.
        waveform: ``(C, S_out)`` float32 speech cut or padded as the policy says.
        audio_changed: False when the speech is untouched.
    """

    index: np.ndarray
    waveform: np.ndarray
    audio_changed: bool


def fit_length(num_frames: int, fps, waveform: np.ndarray, sample_rate: int, policy) -> FittedClip:
    """Apply a length policy (``pipeline/length_policy.py``) to a clip of ``num_frames`` frames and a waveform.

    Args:
        num_frames: Frames of the video.
        fps: Its frame rate.
        waveform: ``(C, S)`` float32 speech.
        sample_rate: Its rate.
        policy: A :class:`~stabledub_core.media.length_policy.LengthPolicy` or its name.

    Returns:
        The :class:`FittedClip` (the frames themselves are picked by the caller with ``index``).
    """
    waveform = check_waveform(waveform, sample_rate)
    plan = plan_length(policy, num_frames, frame_rate(fps), waveform.shape[1], sample_rate)
    return FittedClip(plan.index_array(), fit_samples(waveform, plan.audio_samples), plan.audio_changed)
