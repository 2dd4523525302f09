"""SIGINT, SIGTERM and SIGHUP at seeded random moments of a real ``python -m stabledub_core dub`` process: each run
ends within 10 s with exit status 130, one line, and nothing in the output folder (no ``.partial`` file either).

A handful of runs keeps the suite fast; the moments cover the imports (the first second), tracking (MediaPipe start
and shutdown) and sampling; the last runs send a second signal 50 ms after the first, into the cleanup. A run that
finished before its signal must have written its video, and nothing else.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest

from robust_runs import dub_args, names, spawn

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MOMENTS = 5  # runs


@pytest.mark.parametrize("run", range(MOMENTS))
def test_a_signal_at_a_random_moment_exits_130_within_10_s_and_leaves_nothing(inputs, tmp_path, run):
    rng = random.Random(1400 + run)
    delay = [0.5, 1.5][run] if run < 2 else rng.uniform(2.0, 7.0)  # the imports, then tracking and sampling
    sig = SIGNALS[run % len(SIGNALS)] if run < 3 else rng.choice(SIGNALS)
    out = tmp_path / "o.mp4"
    process = spawn(dub_args(inputs, out, "--steps", "2", video=inputs["long_video"], audio=None))
    time.sleep(delay)
    process.send_signal(sig)
    sent = time.monotonic()
    if run >= 3:  # a second Ctrl-C while the first is being handled must not break the cleanup
        time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"no exit within 10 s of {sig.name} at {delay:.2f} s")
    assert time.monotonic() - sent < 10
    if process.returncode == 0:  # the dub was faster than the signal: a whole video, nothing else
        assert names(tmp_path) == ["o.mp4"], stderr
        return
    assert process.returncode == 130, (sig.name, delay, stderr)
    assert stderr.strip().splitlines() == ["stabledub: interrupted; no output written"], stderr
    assert names(tmp_path) == [], (sig.name, delay)
