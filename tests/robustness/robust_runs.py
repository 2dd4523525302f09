"""Running the command line the way the robustness tests need: in this process (fast) or as a real process."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from stabledub_core.cli.main import main

REPO = Path(__file__).resolve().parents[2]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def dub_args(inputs, out, *extra, video=None, audio="speech", checkpoint="checkpoint") -> list[str]:
    """``dub`` arguments: the session's inputs by name, one sampler step, the fastest x264 preset."""
    args = ["dub", "--video", str(video or inputs["video"]), "--checkpoint", str(inputs.get(checkpoint, checkpoint)),
            "--out", str(out), "--steps", "1", "--x264-preset", "ultrafast", "--quiet"]
    if audio is not None:
        args += ["--audio", str(inputs.get(audio, audio))]
    return args + [str(e) for e in extra]


def run_here(capfd, args) -> tuple[int, list[str], list[str]]:
    """``main(args)`` in this process: ``(status, stdout lines, stderr lines)``."""
    status = main(args)
    captured = capfd.readouterr()
    return status, captured.out.strip().splitlines(), captured.err.strip().splitlines()


def _without_root_overrides():
    """In the child before exec: drop the capabilities that let root ignore file permissions (so a read-only folder
    is read-only for a test run as root too); the exec'd program then runs without them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def spawn(args, cwd=None, **kwargs) -> subprocess.Popen:
    """``python -m stabledub_core args`` as a real process (signals, exit at interpreter shutdown)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    preexec = _without_root_overrides if os.geteuid() == 0 else None
    return subprocess.Popen([sys.executable, "-m", "stabledub_core", *map(str, args)], cwd=cwd or REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec, **kwargs)


def run_process(args, timeout: float = 120) -> tuple[int, list[str], list[str]]:
    """``python -m stabledub_core args`` to its end: ``(status, stdout lines, stderr lines)``."""
    process = spawn(args)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out.strip().splitlines(), err.strip().splitlines()


def assert_one_line(err: list[str], *words: str) -> None:
    """Exactly one line on stderr, an error line, no traceback, holding every word."""
    assert len(err) == 1, err
    assert err[0].startswith("stabledub: error: ") and "Traceback" not in err[0], err
    for word in words:
        assert word in err[0], (word, err[0])


def names(folder: Path) -> list[str]:
    """Every name in a folder, hidden temporary files included."""
    return sorted(p.name for p in Path(folder).iterdir())
