"""Preprocessing cost per frame: face tracking, masks (windows, Mu, boxes), crops and paste-back.

Runs on face_occluded.mp4 (512x512) and on a 1080p version of it (each frame scaled to 1080x1080 and centred on a
1920x1080 canvas). Every stage is timed per frame (masks: per window, divided by its frames); the medians over
frames of the median repeat (by total) of a few repeats are reported (the machine's speed drifts by up to 20 % from
minute to minute), all repeats' medians are kept in bench/results/preprocess.json. Each repeat also times MediaPipe's
landmarker alone on the same frames (one face, VIDEO mode, nothing else), side by side, so the tracker's own cost is
a difference measured in the same run.

    python bench/preprocess.py [--media DIR] [--face-model PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/preprocess.py`

from stabledub_core.face.landmarker import LandmarkerMode, MediaPipeLandmarker
from stabledub_core.face.track import FaceTracker
from stabledub_core.masks.crop_spans import plan_crop_spans
from stabledub_core.pipeline.composite import PasteWeight, crop_frames, paste_back
from stabledub_core.media.video import VideoReader

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STABLEDUB_SHARED", ROOT.parent / "shared"))
CROP_SIZE = 512
WINDOW = 16
STAGES = ("tracking", "masks", "crops", "paste")


def mediapipe_alone(frames: np.ndarray, fps: float, model: Path) -> float:
    """Median ms per frame of a bare VIDEO-mode MediaPipe landmarker asked for one face (the tracker's core)."""
    times = []
    with MediaPipeLandmarker(model, LandmarkerMode.VIDEO, num_faces=1) as landmarker:
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            landmarker.detect(frame, int(round(i * 1000 / fps)))
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def to_1080p(frames: np.ndarray) -> np.ndarray:
    """Each frame scaled to 1080x1080 and centred on a black 1920x1080 canvas."""
    out = np.zeros((len(frames), 1080, 1920, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i, :, 420:1500] = cv2.resize(frame, (1080, 1080), interpolation=cv2.INTER_CUBIC)
    return out


def time_per_frame(frames: np.ndarray, fps: float, model: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per-frame milliseconds of every stage, and a few facts about the run."""
    times = {stage: [] for stage in STAGES}
    with FaceTracker(model) as tracker:
        tracker.reset()
        chunks = []
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            chunk = tracker.feed(frame, i / fps)
            times["tracking"].append(time.perf_counter() - start)
            if chunk is not None:
                chunks.append(chunk)
        last = tracker.flush()
        interval = tracker.config.face_count_interval or 1
        facts = {"tracked_faces": tracker.tracked_faces, "face_count_interval": interval}
    # The face count runs on one frame in `interval`: spread each block's cost over its frames, so the median
    # over frames is the median over blocks of the amortised cost (incomplete last block dropped).
    tracking = np.asarray(times["tracking"])
    full = len(tracking) // interval * interval
    times["tracking"] = list(np.repeat(tracking[:full].reshape(-1, interval).mean(axis=1), interval))
    if last is not None:
        chunks.append(last)
    from stabledub_core.face.track import FaceTrack

    track = FaceTrack.concatenate(chunks)
    # Masks: plan each window on its own (as a streaming caller does), cost shared by the window's frames.
    windows = []
    for start in range(0, len(frames), WINDOW):
        sub = track[start:start + WINDOW]
        begin = time.perf_counter()
        planned = plan_crop_spans(sub, length=WINDOW, crop_size=CROP_SIZE)
        elapsed = time.perf_counter() - begin
        times["masks"].extend([elapsed / len(sub)] * len(sub))
        windows.extend((start, w) for w in planned)
    crops = {}
    for offset, window in windows:
        for i in range(window.start, window.stop):
            begin = time.perf_counter()
            crops[offset + i] = crop_frames(frames[offset + i][None], window.box, CROP_SIZE)
            times["crops"].append(time.perf_counter() - begin)
    for offset, window in windows:
        # The paste weight is prepared once per window; its cost is shared by the window's frames.
        begin = time.perf_counter()
        weight = PasteWeight.prepare(window.union_mask, window.box[2] - window.box[0])
        shared = (time.perf_counter() - begin) / (window.stop - window.start)
        for i in range(window.start, window.stop):
            frame = frames[offset + i][None].copy()
            begin = time.perf_counter()
            paste_back(frame, crops[offset + i], window.box, weight, active=window.active[i:i + 1], inplace=True)
            times["paste"].append(time.perf_counter() - begin + shared)
    facts.update({"frames": len(frames), "windows": len(windows),
                  "box_side": int(np.median([w.box[2] - w.box[0] for _, w in windows]))})
    return {stage: np.asarray(values) * 1e3 for stage, values in times.items()}, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=SHARED / "media")
    parser.add_argument("--face-model", type=Path, default=SHARED / "models" / "face_landmarker.task")
    parser.add_argument("--repeats", type=int, default=5, help="runs per size; the median one is reported")
    parser.add_argument("--cv2-threads", type=int, default=None,
                        help="OpenCV worker threads (default: OpenCV's own choice, all cores, as the pipeline runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preprocess.json")
    args = parser.parse_args()
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)

    with VideoReader(args.media / "face_occluded.mp4") as reader:
        frames = np.stack([frame.image for frame in reader.frames()])
        fps = float(reader.fps)
    sizes = {"512": frames, "1080p": to_1080p(frames)}
    results: dict = {"video": "face_occluded.mp4", "crop_size": CROP_SIZE, "window": WINDOW,
                     "cpu_count": os.cpu_count(), "opencv_threads": cv2.getNumThreads(),
                     "machine": platform.machine(), "stages": {}}
    print(f"{'size':>6} | " + " | ".join(f"{s:>9}" for s in STAGES) + " | masks+crops+paste |     total  (ms/frame, "
          "median, median repeat) | MediaPipe alone")
    for name, video in sizes.items():
        medians = []  # per repeat: each stage's median over frames, and MediaPipe alone side by side
        for _ in range(args.repeats):
            per_frame, facts = time_per_frame(video, fps, args.face_model)
            medians.append({**{s: float(np.median(per_frame[s])) for s in STAGES},
                            "mediapipe_alone": mediapipe_alone(video, fps, args.face_model)})
        # Headline: the median repeat by total; every repeat's medians are kept too.
        by_total = sorted(medians, key=lambda m: sum(m[s] for s in STAGES))
        mid = by_total[len(by_total) // 2]
        ours = mid["masks"] + mid["crops"] + mid["paste"]
        total = mid["tracking"] + ours
        results["stages"][name] = {**{f"{s}_ms": round(mid[s], 3) for s in STAGES},
                                   "masks_crops_paste_ms": round(ours, 3),
                                   "masks_crops_paste_share_of_tracking": round(ours / mid["tracking"], 4),
                                   "mediapipe_alone_ms": round(mid["mediapipe_alone"], 3),
                                   "tracker_overhead_ms": round(mid["tracking"] - mid["mediapipe_alone"], 3),
                                   "repeats": [{s: round(v, 3) for s, v in m.items()} for m in medians],
                                   **facts}
        results[f"ms_per_frame_{name}"] = round(total, 3)
        print(f"{name:>6} | " + " | ".join(f"{mid[s]:9.3f}" for s in STAGES) + f" | {ours:17.3f} | {total:9.3f}"
              f" | {mid['mediapipe_alone']:9.3f}")
    results["note"] = ("per-stage medians over frames, of the median repeat by total (all repeats listed), on a 2-core "
                       "machine whose speed drifts from minute to minute; mediapipe_alone = a bare VIDEO-mode landmarker "
                       "(one face) on the same frames in the same repeat; tracking is FaceTracker (MediaPipe VIDEO mode + "
                       "smoothing/gap filling + the face count every face_count_interval frames, its cost spread "
                       "over blocks of that many frames before the median); masks = plan_crop_spans per 16-frame window without coarse masks "
                       "(inference); crops = crop_frames to 512; paste = paste_back (in place) of unmodified crops "
                       "with a PasteWeight prepared once per window (its cost shared by the window's frames)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
