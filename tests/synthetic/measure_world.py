"""Measure the synthetic world (not a test; run by hand): face detection rate, estimator accuracy, preprocess kept.

    python tests/synthetic/measure_world.py --speech ../shared/media/speech_corpus --seeds 20 --frames 50

1. Detection: ``--seeds`` avatars (seeds ``--first`` ...), ``--frames`` frames each at 25 fps, every other one
   with an occluder in view the whole time (microphone, hand, bar in turn); MediaPipe's face landmarker (VIDEO
   mode, as the tracker runs it) must find the face in every frame and the bundled face detector (``train
   preprocess``'s one-face filter) must count exactly one face in every frame.
2. Estimator: on the same clips (frames without an occluder), correlation and mean absolute error of the
   estimated opening / width / rounding against the truth, on the drawn frames and after an H.264 round trip.
3. ``--preprocess N``: writes an N-clip world (8 s clips, 30 % occluded) and runs ``train preprocess`` (tiny).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stabledub_core.face.landmarker import FaceCounter, LandmarkerMode, MediaPipeLandmarker  # noqa: E402
from stabledub_core.media.audio import load_audio  # noqa: E402
from stabledub_core.media.clip import read_clip, write_clip  # noqa: E402
from stabledub_core.synthetic.avatar import sample_avatar  # noqa: E402
from stabledub_core.synthetic.estimator import estimate_clip  # noqa: E402
from stabledub_core.synthetic.occluders import KINDS, sample_occluder  # noqa: E402
from stabledub_core.synthetic.world import list_speech, render_speech, write_world  # noqa: E402

FACE_MODEL = REPO / "assets" / "face_landmarker.task"
FIELDS = ("opening", "width", "rounding")


def scores(truth: list[np.ndarray], guess: list[np.ndarray]) -> dict:
    t, g = np.concatenate(truth), np.concatenate(guess)
    return {name: {"corr": round(float(np.corrcoef(t[:, i], g[:, i])[0, 1]), 3),
                   "mae": round(float(np.abs(t[:, i] - g[:, i]).mean()), 3)} for i, name in enumerate(FIELDS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", default=str(REPO / "assets"), help="folder of speech files")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--preprocess", type=int, default=0, help="also write and preprocess a world of N clips")
    args = parser.parse_args()
    files = list_speech(args.speech)
    failures, frames, truth, drawn, decoded = [], 0, [], [], []
    start = time.time()
    with FaceCounter(FACE_MODEL) as counter, tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(range(args.first, args.first + args.seeds)):
            avatar = sample_avatar(seed)
            waveform, rate = load_audio(files[i % len(files)])
            occluder = None
            if i % 2:
                spec = sample_occluder(np.random.default_rng(seed), 1.0, avatar.skin, KINDS[i // 2 % 3])
                occluder = dataclasses.replace(spec, start_s=0.0, end_s=1e9)
            clip = render_speech(avatar, waveform, rate, 25, occluder, max_seconds=args.frames / 25)
            with MediaPipeLandmarker(FACE_MODEL, LandmarkerMode.VIDEO, num_faces=1) as landmarker:
                for k, frame in enumerate(clip.frames):
                    frames += 1
                    found, counted = len(landmarker.detect(frame, 40 * k)), counter.count(frame)
                    if found != 1 or counted != 1:
                        failures.append({"seed": seed, "frame": k, "landmarker": found, "detector": counted,
                                         "occluder": occluder.kind if occluder else None})
            if occluder is None:
                video = write_clip(Path(tmp) / f"{seed}.mp4", clip.frames, clip.fps)
                for frames_of, out in ((clip.frames, drawn), (read_clip(video).frames, decoded)):
                    est = estimate_clip(frames_of, clip.rendered.mouth_poses, clip.palette)
                    out.append(np.stack([getattr(est, name) for name in FIELDS], 1))
                truth.append(clip.states.as_array()[:, :3])
    report = {"detection": {"avatars": args.seeds, "frames": frames, "failed_frames": len(failures),
                            "rate": round(1 - len(failures) / frames, 4), "failures": failures[:20]},
              "estimator_drawn": scores(truth, drawn), "estimator_h264": scores(truth, decoded),
              "seconds": round(time.time() - start, 1)}
    if args.preprocess:
        from stabledub_core.train.preprocess import preprocess

        with tempfile.TemporaryDirectory() as tmp:
            write_world(Path(tmp) / "world", args.preprocess, seed=args.first, speech_dir=args.speech,
                        occluder_share=0.3, max_seconds=8.0)
            result = preprocess(Path(tmp) / "world", Path(tmp) / "pre", FACE_MODEL, preset="tiny")
            report["preprocess"] = {"clips": result.report["clips"], "kept": result.report["kept_clips"],
                                    "dropped": result.report["dropped"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
