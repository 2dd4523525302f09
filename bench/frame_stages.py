"""Per-frame cost of the dub's frame stages as they ship: face tracking, masks, crops and paste-back.

Runs on face_occluded.mp4 (512x512) and on a 1080p version of it (each frame scaled to 1080x1080 and centred on a
1920x1080 canvas), through the code the streaming dub (``pipeline/dub.py: dub_stream``) runs, not a re-implementation:

* tracking: ``FaceTracker.feed`` per frame into a ``TrackBuilder`` (as ``stages.track_faces``; decoding not
  counted). The face count runs on one frame in ``face_count_interval``: each block's cost is spread over its
  frames (incomplete last block dropped), so the median over frames is the median over blocks of the amortised
  cost.
* masks: the crop spans (boxes, Mu) of one ``CropPlan(track, 512, 16, MaskOptions().mask_config(), index,
  keep_all=False)`` asked frame by frame in order with ``span_at(i)``, inside the chunk loop as dub_stream asks it.
  The first ``span_at`` of a group plans the whole group (``SPANS_PER_GROUP`` spans), the others only look up: the
  time of every ``span_at`` call of a group is summed and spread evenly over the group's frames (the shipped cost
  per frame, planning included). Plus ``stages.inpaint_mask`` per frame (no occluder, no painted patches: the span's
  own Mu) and its copy into the chunk's reused mask array (``stages.ChunkArrays``).
* crops: ``stages.crop_frame`` of the frame and ``stages.AppearanceCrops`` of the appearance reference frame
  (``stages.reference_frame``, chosen once per clip, not timed; cropped once per span), as dub_stream's chunk inputs
  do. A frame two sampler chunks
  share (their overlap) is cropped by both: its cost is the sum.
* paste: ``stages.Compositor.write`` called as dub_stream calls it, once per run of final frames that the chunk
  loop (``stages.generate_chunks`` with the default ``SamplingOptions``: 4 windows of 16 frames per chunk, overlap
  4) yields, with the masks from ``inpaint_mask``, into a sink that drops the frames; each call's time (span
  look-ups, the paste weight prepared once per span, ``paste_back`` on a copy of the frame) is spread over the
  frames it writes. The model is a stand-in that returns the source crops, and the chunk cross-fade is not charged
  to any stage.

Each repeat reports every stage's median over frames; the median repeat (by total) of a few repeats is the
headline (the machine's speed drifts by up to 20 % from minute to minute), and every repeat's medians (with the
parts of masks and crops) are kept in bench/results/frame_stages.json, with the commit they measured. Each repeat
also times MediaPipe's landmarker alone on the same frames (one face, VIDEO mode, nothing else), side by side, so
the tracker's own cost is a difference measured in the same run.

    python bench/frame_stages.py [--media DIR] [--face-model PATH] [--repeats N] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/frame_stages.py`

from stabledub_core.face.landmarker import LandmarkerMode, MediaPipeLandmarker  # noqa: E402
from stabledub_core.face.track import FaceTracker, TrackBuilder  # noqa: E402
from stabledub_core.masks.crop_spans import SPANS_PER_GROUP, CropPlan  # noqa: E402
from stabledub_core.media.frames import FrameSource  # noqa: E402
from stabledub_core.media.video import VideoReader  # noqa: E402
from stabledub_core.pipeline.options import ConditionOptions, MaskOptions, SamplingOptions  # noqa: E402
from stabledub_core.pipeline.stages import (  # noqa: E402
    AppearanceCrops,
    ChunkArrays,
    Compositor,
    crop_frame,
    generate_chunks,
    inpaint_mask,
    reference_frame,
)
from stabledub_core.runtime import StageTimer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
CROP_SIZE = 512
WINDOW = 16
STAGES = ("tracking", "masks", "crops", "paste")
PARTS = ("plan", "inpaint_mask", "mask_copy", "crop_frame", "crop_reference")  # what masks and crops are made of


class SourceCrops:
    """A ``ChunkModel`` stand-in whose generated crops are the source crops (no network)."""

    crop_size, lip_size, window = CROP_SIZE, 64, WINDOW

    def encode_habit(self, lip_crops: np.ndarray) -> torch.Tensor:
        return torch.zeros(8)

    def begin(self, wave16, frame_times, habit, source=None) -> None:
        pass

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None) -> np.ndarray:
        return crops


class DropSink:
    """A sink that drops the frames."""

    def write(self, image: np.ndarray, time: float | None) -> None:
        pass


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


def track(frames: np.ndarray, fps: float, model: Path) -> tuple:
    """The clip's FaceTrack, seconds per frame of ``tracker.feed`` (face count amortised) and tracker facts."""
    seconds = []
    builder = TrackBuilder(len(frames))
    with FaceTracker(model) as tracker:
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            chunk = tracker.feed(frame, i / fps)
            seconds.append(time.perf_counter() - start)
            if chunk is not None:
                builder.append(chunk)
        last = tracker.flush()
        interval = tracker.config.face_count_interval or 1
        facts = {"tracked_faces": tracker.tracked_faces, "face_count_interval": interval}
    if last is not None:
        builder.append(last)
    seconds = np.asarray(seconds)
    full = len(seconds) // interval * interval
    amortised = np.repeat(seconds[:full].reshape(-1, interval).mean(axis=1), interval)
    return builder.build(), amortised, facts


def dub_frames(frames: np.ndarray, fps: float, face_track) -> tuple[dict[str, np.ndarray], dict]:
    """Seconds per output frame of masks, crops and paste (and their parts), driven as ``dub_stream`` drives them."""
    num = len(frames)
    parts = {name: np.zeros(num) for name in (*PARTS, "paste")}
    masks_options = MaskOptions()
    crop_plan = CropPlan(face_track, CROP_SIZE, WINDOW, masks_options.mask_config(), np.arange(num), keep_all=False)
    appearance_of = AppearanceCrops(reference_frame(FrameSource(frames, fps), face_track,
                                                    ConditionOptions().reference, seed=0), CROP_SIZE)
    masks: dict[int, np.ndarray] = {}
    cropped = np.zeros(num, np.int64)  # how many chunks cropped each frame
    boxes: dict[int, tuple] = {}  # span start -> its box
    size = CROP_SIZE
    arrays = ChunkArrays(size)

    def chunk_inputs(chunk):  # dub_stream's chunk_inputs, each call timed
        t0 = time.perf_counter()
        crops, chunk_masks, appearance = arrays(chunk.length)  # reused arrays (ChunkArrays), as dub_stream
        parts["mask_copy"][chunk.start:chunk.stop] += (time.perf_counter() - t0) / chunk.length
        for k, i in enumerate(range(chunk.start, chunk.stop)):
            t0 = time.perf_counter()
            span, offset = crop_plan.span_at(i)
            t1 = time.perf_counter()
            crops[k] = crop_frame(frames[i], span, size)
            t2 = time.perf_counter()
            appearance[k] = appearance_of(span)
            t3 = time.perf_counter()
            masks[i] = inpaint_mask(span, offset, masks_options, occluder=None)
            t4 = time.perf_counter()
            chunk_masks[k] = masks[i]
            t5 = time.perf_counter()
            parts["plan"][i] += t1 - t0
            parts["crop_frame"][i] += t2 - t1
            parts["crop_reference"][i] += t3 - t2
            parts["inpaint_mask"][i] += t4 - t3
            parts["mask_copy"][i] += t5 - t4
            cropped[i] += 1
            boxes[span.start] = span.box
        return crops, chunk_masks, appearance

    compositor = Compositor(crop_plan, DropSink(), num)
    writes = 0
    for start, crops in generate_chunks(SourceCrops(), num, chunk_inputs, SamplingOptions(), StageTimer()):
        done = range(start, start + len(crops))
        images, chunk_masks = [frames[i] for i in done], [masks.pop(i) for i in done]
        t0 = time.perf_counter()
        compositor.write(start, images, crops, chunk_masks)
        parts["paste"][start:start + len(crops)] = (time.perf_counter() - t0) / len(crops)
        writes += 1
    # A group's planning is charged evenly to the frames it covers.
    group = crop_plan.group
    for first in range(0, num, group):
        parts["plan"][first:first + group] = parts["plan"][first:first + group].mean()
    per_frame = {"masks": parts["plan"] + parts["inpaint_mask"] + parts["mask_copy"],
                 "crops": parts["crop_frame"] + parts["crop_reference"], "paste": parts["paste"],
                 **{name: parts[name] for name in PARTS}}
    facts = {"frames": num, "spans": len(boxes), "span_groups": -(-num // group), "spans_per_group": SPANS_PER_GROUP,
             "compositor_writes": writes, "recropped_frames": int((cropped > 1).sum()),
             "box_side": int(np.median([b[2] - b[0] for b in boxes.values()])), "faceless_frames": compositor.faceless}
    return per_frame, facts


def time_per_frame(frames: np.ndarray, fps: float, model: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per-frame milliseconds of every stage and part, and a few facts about the run."""
    face_track, tracking, facts = track(frames, fps, model)
    per_frame, dub_facts = dub_frames(frames, fps, face_track)
    return {"tracking": tracking * 1e3, **{k: v * 1e3 for k, v in per_frame.items()}}, {**facts, **dub_facts}


def commit() -> dict:
    """The checked-out commit, and whether the package had uncommitted changes, so results name their code."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "stabledub_core_modified": bool(git("status", "--porcelain", "--", "stabledub_core"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=ASSETS, help="folder with face_occluded.mp4 (default: assets/)")
    parser.add_argument("--face-model", type=Path, default=ASSETS / "face_landmarker.task")
    parser.add_argument("--repeats", type=int, default=5, help="runs per size; the median one is reported")
    parser.add_argument("--cv2-threads", type=int, default=None,
                        help="OpenCV worker threads (default: OpenCV's own choice, all cores, as the pipeline runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frame_stages.json")
    args = parser.parse_args()
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)

    with VideoReader(args.media / "face_occluded.mp4") as reader:
        frames = np.stack([frame.image for frame in reader.frames()])
        fps = float(reader.fps)
    sizes = {"512": frames, "1080p": to_1080p(frames)}
    results: dict = {"video": "face_occluded.mp4", "crop_size": CROP_SIZE, "window": WINDOW, **commit(),
                     "cpu_count": os.cpu_count(), "opencv_threads": cv2.getNumThreads(),
                     "machine": platform.machine(), "stages": {}}
    print(f"{'size':>6} | " + " | ".join(f"{s:>9}" for s in STAGES) + " | masks+crops+paste |     total  (ms/frame, "
          "median, median repeat) | MediaPipe alone")
    for name, video in sizes.items():
        medians = []  # per repeat: each stage's (and part's) median over frames, and MediaPipe alone side by side
        for _ in range(args.repeats):
            per_frame, facts = time_per_frame(video, fps, args.face_model)
            medians.append({**{s: float(np.median(v)) for s, v in per_frame.items()},
                            "mediapipe_alone": mediapipe_alone(video, fps, args.face_model)})
        # Headline: the median repeat by total; every repeat's medians are kept too.
        by_total = sorted(medians, key=lambda m: sum(m[s] for s in STAGES))
        mid = by_total[len(by_total) // 2]
        ours = mid["masks"] + mid["crops"] + mid["paste"]
        total = mid["tracking"] + ours
        results["stages"][name] = {**{f"{s}_ms": round(mid[s], 3) for s in (*STAGES, *PARTS)},
                                   "masks_crops_paste_ms": round(ours, 3),
                                   "masks_crops_paste_share_of_tracking": round(ours / mid["tracking"], 4),
                                   "mediapipe_alone_ms": round(mid["mediapipe_alone"], 3),
                                   "tracker_overhead_ms": round(mid["tracking"] - mid["mediapipe_alone"], 3),
                                   "repeats": [{s: round(v, 3) for s, v in m.items()} for m in medians],
                                   **facts}
        results[f"ms_per_frame_{name}"] = round(total, 3)
        print(f"{name:>6} | " + " | ".join(f"{mid[s]:9.3f}" for s in STAGES) + f" | {ours:17.3f} | {total:9.3f}"
              f" | {mid['mediapipe_alone']:9.3f}", flush=True)
    results["note"] = (
        "per-stage medians over frames, of the median repeat by total (all repeats listed), on a machine whose speed "
        "drifts from minute to minute; the stages are the shipped ones, driven as pipeline/dub.py's dub_stream drives "
        "them: tracking = FaceTracker.feed per frame (MediaPipe VIDEO mode + smoothing/gap filling + the face count "
        "every face_count_interval frames, its cost spread over blocks of that many frames before the median); "
        "mediapipe_alone = a bare VIDEO-mode landmarker (one face) on the same frames in the same repeat; masks = "
        "CropPlan.span_at per frame in order (keep_all=False; every group's planning spread evenly over the group's "
        "frames) + stages.inpaint_mask (no occluder) + its copy into the chunk's reused mask array; crops = stages.crop_frame of the "
        "frame and stages.AppearanceCrops of the reference frame (once per span; frames in a chunk overlap are cropped twice, the sum counted); paste = "
        "stages.Compositor.write per run of final frames the chunk loop (stages.generate_chunks, default "
        "SamplingOptions, a stand-in model returning the source crops) yields, into a sink that drops the frames, "
        "each call's time spread over its frames; decoding, encoding and the chunk cross-fade not counted")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
