"""``dub`` and ``demo``: a video and speech in, the dubbed video out (the streaming pipeline, ``pipeline/dub.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from stabledub_core.cli.common import ASSETS, FACE_MODEL_HELP, STOP, ProgressLine, find_face_model
from stabledub_core.cli.options import add_option_arguments, flag, options_from_args
from stabledub_core.errors import CheckpointError, require_file
from stabledub_core.evaluate.figures import labelled_grid, write_png
from stabledub_core.evaluate.world_benchmark import state_errors
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import read_clip
from stabledub_core.media.output import atomic_write, check_free_space, check_output_path, clean_stale_partials
from stabledub_core.media.video import OUTPUT_FORMATS, VideoReader
from stabledub_core.models.checkpoint import load_checkpoint
from stabledub_core.pipeline.chunk_model import check_runtime, torch_dtype
from stabledub_core.pipeline.conditions import load_habit_vector, save_habit_vector
from stabledub_core.pipeline.dub import DubResult, check_inputs, dub_video, mask_cap_note
from stabledub_core.pipeline.options import DubOptions
from stabledub_core.synthetic.world import dub_ground_truth, load_metadata, load_occluder_masks

DUB_EPILOG = FACE_MODEL_HELP + """

Length policies (when speech and video durations differ):
  trim      cut whichever is longer
  pad       keep the video's length; pad the speech with silence (or cut it)
  loop      keep the whole speech; restart the video as often as needed
  pingpong  keep the whole speech; play the video forwards and backwards (default)
  freeze    keep the whole speech; hold the last frame
When both already match (to within half a frame) the speech goes into the output untouched, bit for bit.

Several faces: the largest is dubbed (--face largest); pick another by its place from the left
(--face index --face-index 1) or by a point on it in the first frame (--face point --face-x 420 --face-y 260).
The summary says which face was dubbed when there were several.

Reference strategies (the frame that gives the face's appearance):
  closed_lips            the frame with the most closed lips (no lip shape leaks into the dub; default)
  nearest_pose           the frame whose head pose is closest to the clip's mean pose
  closed_lips_near_pose  closed lips among the frames near the mean pose
  random                 a seeded random tracked frame
"""

# A low estimate of an output's size (H.264 at the default quality stores a talking head in 0.05-0.3 bytes a
# pixel): a disk with less room than this is refused before the work, a fuller one fails cleanly when it is full.
OUTPUT_BYTES_PER_PIXEL = 0.02
DEMO_CLIP = ASSETS / "demo_world" / "clip_00000.mp4"  # a held-out world avatar, a microphone over part of the clip
DEMO_SPEECH = ASSETS / "speech_es.wav"
DEMO_MODEL = ASSETS / "stabledub_tiny_demo.safetensors"
DEMO_STEPS = 10  # the bundled model's 100 frames in about a minute on 2 cores
DEMO_LENGTH_POLICY = "trim"


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser)
    files = parser.add_argument_group("conditions files")
    files.add_argument("--face-model", type=Path, default=None, metavar="PATH",
                       help="MediaPipe face_landmarker.task (default: ./models/mediapipe/face_landmarker.task, "
                            "else the bundled assets/face_landmarker.task)")
    files.add_argument("--occluder-mask", type=Path, default=None, metavar="PNG",
                       help="image at the video's size, white where something covers the mouth (kept as is)")
    files.add_argument("--habit", type=Path, default=None, metavar="FILE",
                       help="use this saved lip-habit vector (.safetensors, from --save-habit) instead of the "
                            "video's own lips, e.g. the habit of another video of the speaker")
    files.add_argument("--save-habit", type=Path, default=None, metavar="FILE",
                       help="save the lip-habit vector the dub used (.safetensors) for --habit")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="also write frames, fps and seconds per stage to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")


def add_parsers(sub, description: str) -> None:
    """Register ``dub`` and ``demo`` on the subcommand parsers."""
    dub = sub.add_parser("dub", help="dub a video with new speech", description=description, epilog=DUB_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    io = dub.add_argument_group("files")
    io.add_argument("--video", type=Path, required=True, help="video with a face (mp4, mov, mkv, ...)")
    io.add_argument("--audio", type=Path, default=None,
                    help="new speech: any audio or video file (default: the video's own audio track)")
    io.add_argument("--checkpoint", type=Path, required=True, help="StableDub weights (.safetensors)")
    io.add_argument("--preset", choices=["sd15", "tiny"], default=None,
                    help="refuse a checkpoint of another model size")
    io.add_argument("--out", type=Path, required=True, help="output video (.mp4, .mov, .mkv, .m4v)")
    io.add_argument("--vae", type=Path, default=None,
                    help="SD 1.5 VAE (file or diffusers folder) if the checkpoint does not contain it")
    io.add_argument("--wav2vec2", type=Path, default=None,
                    help="local wav2vec2 folder if the checkpoint uses the wav2vec2 audio encoder")
    _add_common(dub)
    dub.set_defaults(run=run_dub)
    demo = sub.add_parser("demo", help="dub a bundled synthetic-world clip with the bundled demo model; writes the "
                          "video and a side-by-side image (source | ground truth | ours)",
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DUB_EPILOG)
    demo.add_argument("--out", type=Path, default=Path("out") / "demo.mp4", help="default: out/demo.mp4")
    _add_common(demo)
    demo.set_defaults(steps=DEMO_STEPS, length_policy=DEMO_LENGTH_POLICY, run=run_demo)


def _options(args) -> DubOptions:
    """The options of the flags (each checked with its flag's name), the device and dtype checked against this
    torch build (a warning for float16 on a CPU)."""
    options = options_from_args(args, face_model=find_face_model(args.face_model))
    warning = check_runtime(options.runtime.device, options.runtime.dtype, flag)
    if warning is not None:
        print(f"stabledub: warning: {warning}", file=sys.stderr)
    return options


def _check_outputs(args, video: Path, audio: Path | None) -> None:
    """Every output path checked before any work: not an input (paths and inodes, through links), a writable
    folder, a known container; stale temporary files of killed runs removed (and said)."""
    inputs = {"--video": video, "--audio": audio, "--checkpoint": getattr(args, "checkpoint", None),
              "--vae": getattr(args, "vae", None), "--wav2vec2": getattr(args, "wav2vec2", None),
              "--habit": args.habit, "--occluder-mask": args.occluder_mask, "--face-model": args.face_model}
    check_output_path(args.out, "--out", inputs, tuple(sorted(OUTPUT_FORMATS)))
    written = {"--out": args.out}
    for option, path in (("--report", args.report), ("--save-habit", args.save_habit)):
        if path is not None:
            check_output_path(path, option, {**inputs, **written})
            written[option] = path
    STOP.guard(*written.values())
    for path in written.values():
        removed, left = clean_stale_partials(path)
        if removed:
            print(f"stabledub: removed {len(removed)} temporary file(s) left by an interrupted earlier run: "
                  f"{', '.join(p.name for p in removed)}", file=sys.stderr)
        if left:
            print(f"stabledub: note: temporary file(s) of an earlier run left in {str(path.parent)!r}: "
                  f"{', '.join(p.name for p in left)} (delete them if no other dub is running)", file=sys.stderr)


def load_model(path: Path, preset: str | None, options: DubOptions, vae: Path | None = None,
               wav2vec2: Path | None = None):
    """Load a ``.safetensors`` StableDub checkpoint on the options' device and dtype (pickles are refused)."""
    path = require_file(path, "checkpoint")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"checkpoint {str(path)!r} is not a .safetensors file; pickled checkpoints "
                              "(.ckpt/.pt/.bin) are refused because loading them can run code")
    runtime = options.runtime
    return load_checkpoint(path, runtime.device, torch_dtype(runtime.dtype, runtime.device), expect_preset=preset,
                           vae_path=vae, wav2vec2_path=wav2vec2)


CHOSEN_BY = {"largest": "the largest", "index": "by --face-index", "point": "the one under --face-x/--face-y"}


def _notes(result: DubResult, video: Path, options: DubOptions) -> list[str]:
    """What the user should know besides the output: another face, undecodable frames, an odd size."""
    notes = []
    face = result.face
    if face is not None and face.faces > 1:
        notes.append(f"{face.faces} faces seen; dubbed {CHOSEN_BY[options.tracking.face]}: face {face.rank} from "
                     f"the left (numbered from 0), centred at ({face.centre[0]}, {face.centre[1]}) in frame "
                     f"{face.frame}. Dub another with --face index --face-index N, or --face point --face-x X "
                     "--face-y Y (a point on it in the first frame)")
    if result.undecodable_frames:
        decoded, lost = result.source_frames, result.undecodable_frames
        notes.append(f"video {str(video)!r}: {lost} of its {decoded + lost} frames could not be decoded (a truncated "
                     f"or damaged file); only the {decoded} decodable frames were dubbed")
    capped = mask_cap_note(result.mask_caps, "--max-mask-growth")
    if capped is not None:
        notes.append(capped)
    pix_fmt = getattr(result.sink, "pix_fmt", "yuv420p")
    if pix_fmt != "yuv420p" and result.size is not None:
        notes.append(f"the video's odd size {result.size[1]}x{result.size[0]} was kept exactly, in H.264 4:4:4 "
                     "(yuv444p), which some browsers do not play; an even size gives the usual 4:2:0")
    return notes


def _dub(args, video: Path, audio: Path | None, model, options: DubOptions,
         occluder: np.ndarray | None = None) -> tuple[DubResult, list[str]]:
    """Run the dub with the command's habit files, progress line and report; returns the result and its notes.
    ``occluder``: per-frame occluder masks ``(F, H, W)`` instead of ``--occluder-mask`` (the demo's)."""
    habit = None
    if args.habit is not None:
        habit = load_habit_vector(args.habit, expected_size=int(model.config.habit.hidden_size)).vector
    result = dub_video(video, audio, model, args.out, options,
                       occluder_mask=args.occluder_mask if occluder is None else occluder,
                       on_progress=ProgressLine(not args.quiet and sys.stderr.isatty()), should_stop=STOP,
                       habit=habit)
    if args.save_habit is not None:
        save_habit_vector(args.save_habit, result.habit, {"video": str(video), "preset": model.config.preset})
    notes = _notes(result, video, options)
    if args.report is not None:
        face = result.face
        atomic_write(args.report, json.dumps({
            "path": str(result.sink.path), "num_frames": result.num_frames, "fps": float(result.fps),
            "size": list(result.size or ()), "pixel_format": getattr(result.sink, "pix_fmt", None),
            "audio_codec": result.sink.audio.codec, "audio_bit_exact": result.audio_bit_exact,
            "faceless_frames": result.faceless_frames, "undecodable_frames": result.undecodable_frames,
            "mask_caps": result.mask_caps.as_dict(),
            "faces_seen": face.faces if face is not None else 0,
            "face": None if face is None else {"rank_from_left": face.rank, "frame": face.frame,
                                               "centre": list(face.centre)},
            "notes": notes, "seconds": result.seconds}, indent=1), "--report")
    return result, notes


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}")


def run_dub(args) -> int:
    """``python -m stabledub_core dub``: every check before the expensive work, then the dub."""
    options = _options(args)
    _check_outputs(args, args.video, args.audio)
    check_inputs(args.video, args.audio, args.out)
    with VideoReader(args.video) as reader:
        estimate = reader.estimated_frames() * reader.size[0] * reader.size[1] * OUTPUT_BYTES_PER_PIXEL
    check_free_space(args.out, int(estimate), "--out")
    model = load_model(args.checkpoint, args.preset, options, args.vae, args.wav2vec2)
    result, notes = _dub(args, args.video, args.audio, model, options)
    print(f"wrote {result.sink.path} ({result.num_frames} frames at {float(result.fps):.3f} fps, audio "
          f"{result.sink.audio.codec}{', bit-exact' if result.audio_bit_exact else ''}; "
          f"{result.faceless_frames} frames without a face left unchanged)")
    _print_notes(notes)
    return 0


def run_demo(args) -> int:
    """``python -m stabledub_core demo``: the bundled world clip dubbed with the bundled speech by the bundled model,
    and a side-by-side image (source | ground truth | ours) beside the video."""
    args.out.parent.mkdir(parents=True, exist_ok=True)  # out/ on a fresh clone
    options = _options(args)
    picture = args.out.with_suffix(".png")
    _check_outputs(args, DEMO_CLIP, DEMO_SPEECH)
    check_output_path(picture, "--out (its side-by-side .png)", {"--out": args.out})
    require_file(DEMO_MODEL, "bundled demo model (assets/stabledub_tiny_demo.safetensors; reinstall the pack)")
    print("NOTE: the bundled model is a small StableDub (the tiny preset) trained for under an hour on 2 CPU cores "
          "in the synthetic world: procedurally drawn avatars speaking real speech. It is not a model of real "
          "faces; TRAINING.md shows how to train one on real videos.")
    metadata = load_metadata(DEMO_CLIP.with_suffix(".json"))
    occluder = load_occluder_masks(DEMO_CLIP.with_suffix(".masks.npz"), metadata).astype(np.float32)
    model = load_model(DEMO_MODEL, "tiny", options)
    result, notes = _dub(args, DEMO_CLIP, DEMO_SPEECH, model, options, occluder=occluder)
    wave, rate = load_audio(DEMO_SPEECH)
    truth = dub_ground_truth(metadata, wave, rate)
    source, dubbed = read_clip(DEMO_CLIP).frames, read_clip(result.sink.path).frames
    picks = demo_frames(metadata)
    write_png(picture, labelled_grid([[source[k], truth.rendered.frames[k], dubbed[k]] for k in picks],
                                     ["source", "ground truth", "ours"]))
    sync = state_errors(dubbed, truth, metadata["mouth_poses"])
    print(f"wrote {result.sink.path} ({result.num_frames} frames) and {picture} (frames {', '.join(map(str, picks))}: "
          f"source | ground truth | ours); the dub's mouth opening follows the new speech with correlation "
          f"{sync['sync_correlation']:.2f} to the world's truth ({sync['valid_frames']} frames where the microphone "
          "leaves the mouth visible)")
    _print_notes(notes)
    return 0


def demo_frames(metadata: dict) -> list[int]:
    """Three frames of the demo clip: before, during and after its occluder (or evenly spread)."""
    frames, fps = int(metadata["num_frames"]), float(metadata["fps"])
    occluder = metadata["occluder"]
    if occluder is None:
        return [frames // 6, frames // 2, 5 * frames // 6]
    start, end = int(occluder.start_s * fps), min(int(occluder.end_s * fps), frames - 1)
    return sorted({max(start // 2, 0), (start + end) // 2, min((end + frames) // 2, frames - 1)})
