"""Peak memory of the streaming CLI versus video length, and end-to-end speed of the tiny preset.

Builds 1280x720 25 fps test videos of two lengths on the fly (the 512x512 face of the repository's
``assets/face_occluded.mp4`` on a grey canvas, played forwards and backwards; ``assets/speech_es.wav`` resampled to
44.1 kHz stereo and looped as the video's own AAC track), saves a tiny random-weights checkpoint, then runs
``python -m stabledub_core dub`` on each video in a subprocess and reads the child's peak RSS (``ru_maxrss`` from
``os.wait4``). Both runs use the same settings, side by side in one run. The face model is
``assets/face_landmarker.task``: nothing outside the repository is needed.

``--probe SECONDS...`` also runs the streaming pipeline without the model (``dub_video`` with a ``ChunkModel``
stand-in whose generated crops are the inverted source crops) on videos of those lengths; ``--skip-model`` runs only
those (a quick check: ``--probe 2 --skip-model --out /tmp/memory.json``).

Usage:
    python bench/memory_vs_length.py [--short 10] [--long 600] [--steps 1] [--probe S ...] [--skip-model] [--out F]

Writes bench/results/memory_vs_length.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSETS = REPO / "assets"
FACE_VIDEO = ASSETS / "face_occluded.mp4"
SPEECH = ASSETS / "speech_es.wav"
FACE_MODEL = ASSETS / "face_landmarker.task"
SPEECH_RATE = 44100
WORK = REPO / "out" / "bench_memory"
RESULTS = REPO / "bench" / "results" / "memory_vs_length.json"
CANVAS = (720, 1280)
FPS = 25


def speech_stereo(path: Path, rate: int) -> tuple[np.ndarray, int]:
    """``(2, S)`` float32 planar: the speech of ``path`` resampled by PyAV (libswresample) to ``rate`` Hz stereo."""
    import av

    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
    with av.open(str(path)) as source:
        frames = [out for frame in [*source.decode(audio=0), None] for out in resampler.resample(frame)]
    return np.concatenate([frame.to_ndarray() for frame in frames], axis=1).astype(np.float32), rate


def make_video(path: Path, seconds: float) -> Path:
    """A 720p video of ``seconds`` with the face pasted in the middle and looped speech as its AAC track."""
    import av

    with av.open(str(FACE_VIDEO)) as c:
        face = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    cycle = face + face[-2:0:-1]  # ping-pong: no jump at the seams
    speech, rate = speech_stereo(SPEECH, SPEECH_RATE)  # (2, S)
    frames = int(round(seconds * FPS))
    samples = int(round(frames / FPS * rate))
    h, w = CANVAS
    y0, x0 = (h - 512) // 2, (w - 512) // 2
    canvas = np.full((h, w, 3), 128, np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "23"}
        aus = out.add_stream("aac", rate=rate, layout="stereo")
        for i in range(frames):
            canvas[y0:y0 + 512, x0:x0 + 512] = cycle[i % len(cycle)]
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        block = rate  # one second of audio at a time
        for start in range(0, samples, block):
            idx = np.arange(start, min(start + block, samples)) % speech.shape[1]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(speech[:, idx]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = rate, start
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
    return path


def make_checkpoint(path: Path) -> Path:
    import torch

    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.config import get_preset
    from stabledub_core.models.stabledub import StableDub

    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(get_preset("tiny")), path)
    return path


def run_cli(video: Path, checkpoint: Path, steps: int) -> dict:
    """Dub ``video`` in a child process; its peak RSS, wall time and the CLI's stage report."""
    out = video.with_name(video.stem + "_dub.mp4")
    report = video.with_name(video.stem + "_report.json")
    cmd = [sys.executable, "-m", "stabledub_core", "dub", "--video", str(video), "--checkpoint", str(checkpoint),
           "--out", str(out), "--steps", str(steps), "--length-policy", "pad", "--face-model", str(FACE_MODEL),
           "--report", str(report), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the CLI failed on {video} (exit {proc.returncode})")
    data = json.loads(report.read_text())
    seconds = data["seconds"]
    total = sum(seconds.values())
    return {"video_seconds": data["num_frames"] / FPS, "frames": data["num_frames"], "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "fps": round(data["num_frames"] / wall, 3),
            "stage_share": {k: round(v / total, 4) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
            "stage_seconds": {k: round(v, 2) for k, v in seconds.items()}}


PROBE = """
import sys
import torch
from stabledub_core.pipeline.dub import dub_video
from stabledub_core.pipeline.options import DubOptions
class InvertCrops:  # a ChunkModel without a network: measures streaming I/O, tracking, masks, compositing and x264
    crop_size, lip_size, window = 128, 32, 16
    def encode_habit(self, lip_crops): return torch.zeros(8)
    def begin(self, wave16, frame_times, habit, source=None): pass
    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None): return 255 - crops
dub_video(sys.argv[1], None, InvertCrops(), sys.argv[2],
          DubOptions.from_values(face_model=sys.argv[3], length_policy="pad"))
"""


def run_orchestration(video: Path) -> dict:
    """Peak RSS and speed of the streaming pipeline without the model (generated crops = inverted source)."""
    out = video.with_name(video.stem + "_probe.mp4")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(video), str(out), str(FACE_MODEL)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the orchestration probe failed on {video}")
    wall = time.perf_counter() - start
    frames = int(round(float(video.stem.split("_")[1][:-1]) * FPS))
    return {"video_seconds": frames / FPS, "frames": frames, "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "fps": round(frames / wall, 2)}


def _commit() -> str | None:
    """The checked-out commit (short hash), so that results name the code they measured."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=float, default=10.0, help="short video, seconds")
    parser.add_argument("--long", type=float, default=600.0, help="long video, seconds")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (few, to keep the long run feasible)")
    parser.add_argument("--probe", type=float, nargs="*", default=[],
                        help="also run the pipeline WITHOUT the model on videos of these lengths (seconds)")
    parser.add_argument("--skip-model", action="store_true", help="only the model-free probe runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(WORK / "tiny_random.safetensors")
    probes = []
    for seconds in args.probe:
        probes.append(run_orchestration(make_video(WORK / f"face720_{int(seconds)}s.mp4", seconds)))
        print(f"no model {seconds:7.0f} s video: peak RSS {probes[-1]['peak_rss_mb']:8.1f} MB, "
              f"{probes[-1]['fps']:.2f} frames/s", flush=True)
    if args.skip_model:
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        previous["no_model_probe"] = probes
        if len(probes) >= 2:
            previous["no_model_rss_ratio_long_vs_short"] = round(probes[-1]["peak_rss_mb"] / probes[0]["peak_rss_mb"], 3)
        args.out.write_text(json.dumps(previous, indent=1) + "\n")
        return
    runs = []
    for seconds in (args.short, args.long):
        video = make_video(WORK / f"face720_{int(seconds)}s.mp4", seconds)
        runs.append(run_cli(video, checkpoint, args.steps))
        print(f"{seconds:7.0f} s video: {runs[-1]['frames']:6d} frames, peak RSS {runs[-1]['peak_rss_mb']:8.1f} MB, "
              f"{runs[-1]['fps']:.3f} frames/s end to end", flush=True)
    short, long = runs
    ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
    is_10min = (args.short, args.long) == (10.0, 600.0)
    result = {
        "rss_ratio_10min_vs_10s": round(ratio, 3) if is_10min else None,
        "rss_ratio_long_vs_short": round(ratio, 3),
        "short_seconds": args.short, "long_seconds": args.long,
        "tiny_fps": long["fps"],
        "preset": "tiny (random weights)", "steps": args.steps, "resolution": f"{CANVAS[1]}x{CANVAS[0]}",
        "media": f"{FACE_VIDEO.relative_to(REPO)} on a grey canvas, {SPEECH.relative_to(REPO)} at {SPEECH_RATE} Hz "
                 "stereo",
        "cpu_count": os.cpu_count(), "runs": runs, "no_model_probe": probes,
        "no_model_rss_ratio_long_vs_short": (round(probes[-1]["peak_rss_mb"] / probes[0]["peak_rss_mb"], 3)
                                             if len(probes) >= 2 else None),
        "commit": _commit(),
        "note": "peak RSS = ru_maxrss of the CLI child process; fps = output frames / wall time of the whole CLI "
                "(imports, model load, tracking pass, dubbing pass); stage_share from the CLI's --report",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'video':>10} {'frames':>7} {'peak RSS MB':>12} {'fps':>7}")
    for run in runs:
        print(f"{run['video_seconds']:>9.0f}s {run['frames']:>7} {run['peak_rss_mb']:>12.1f} {run['fps']:>7.3f}")
    print(f"RSS ratio long/short: {ratio:.3f}   stage share (long): {long['stage_share']}")


if __name__ == "__main__":
    main()
