"""``python -m stabledub_core train ...``: training commands. So far ``train preprocess IN_DIR OUT_DIR``.

``train preprocess`` filters every video under IN_DIR with the paper's Fig. 5 filters, crops the kept clips as
inference does, writes shards with a manifest to OUT_DIR and prints the report (see
:mod:`stabledub_core.train.preprocess`). A rerun resumes: finished clips are skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stabledub_core.cli.common import FACE_MODEL_HELP, find_face_model
from stabledub_core.cli.options import flag
from stabledub_core.models.config import PRESETS
from stabledub_core.pipeline.options import option_fields
from stabledub_core.train.preprocess import DEFAULT_SHARD_FRAMES, FilterOptions, format_report, preprocess

PREPROCESS_EPILOG = """\
Filters, in order (a dropped clip is reported with the first one it fails and the value measured):
  decode         the file is a readable video
  audio          a sound track louder than --min-audio-dbfs (unless --no-require-audio)
  min_seconds    at least --min-seconds long at 25 fps
  one_face       a face is tracked, and no face count (every --face-count-every frames) finds more than one
  face_coverage  the face is tracked in at least --min-face-coverage of the frames
  min_face_size  the face is never smaller than --min-face-size pixels
  head_angle     |yaw|, |pitch|, |roll| within --max-yaw, --max-pitch, --max-roll degrees in every frame
  transitions    the face never moves more than --max-motion face sizes, nor changes size by more than
                 --max-scale-change times, between two frames

""" + FACE_MODEL_HELP


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``train`` command group (with ``preprocess``) on ``sub`` (the main parser's subparsers)."""
    parser = sub.add_parser("train", help="training: preprocess videos into training shards",
                            description="Training commands.")
    commands = parser.add_subparsers(dest="train_command", required=True, metavar="{preprocess}")
    pre = commands.add_parser("preprocess", help="filter, crop and shard a folder of talking videos",
                              description="Resample every video under IN_DIR to 25 fps, filter the clips (paper "
                              "Fig. 5), crop the kept ones exactly as inference does (crops, Mc, Mu, landmarks, "
                              "16 kHz audio) into shards in OUT_DIR with manifest.json, and write report.json. A "
                              "rerun skips finished clips.", epilog=PREPROCESS_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder tree of talking videos")
    pre.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (a rerun resumes it)")
    pre.add_argument("--preset", default="sd15", choices=sorted(PRESETS),
                     help="model preset: its resolution is the crop size, its window the span length "
                     "(default: %(default)s)")
    pre.add_argument("--workers", type=int, default=1, help="parallel processes over clips (default: %(default)s)")
    pre.add_argument("--shard-frames", type=int, default=DEFAULT_SHARD_FRAMES,
                     help="frames per shard (default: %(default)s)")
    pre.add_argument("--face-model", type=Path, default=None, help="MediaPipe face_landmarker.task")
    group = pre.add_argument_group("filters")
    for f in option_fields(FilterOptions):
        text = f"{f.metadata['help']} (default: %(default)s)"
        if isinstance(f.default, bool):
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            group.add_argument(flag(f.name), type=type(f.default), default=f.default, help=text)
    pre.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    pre.set_defaults(run=run_preprocess)
    return parser


class _Progress:
    """One line per finished clip: overwritten in place on a terminal, every 1% of the clips otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr  # looked up now: the CLI replaces sys.stderr while native logs are hidden
        self.tty = self.stream.isatty()
        self.kept = self.seconds = 0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int, entry: dict) -> None:
        if entry["kept"]:
            self.kept += 1
            self.seconds += entry["seconds"]
        if not self.tty and done != total and done % max(total // 100, 1):
            return
        rate = done / max(time.monotonic() - self.start, 1e-9)
        line = (f"preprocess [{done}/{total}] kept {self.kept} ({self.seconds / 3600:.3f} h), "
                f"{rate:.2f} clips/s: {entry['path']}")
        self.stream.write(f"\r{line[:160]:<160}" if self.tty else line + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()


def run_preprocess(args: argparse.Namespace) -> int:
    """Run ``train preprocess``; prints the report table; returns the exit status (0)."""
    options = FilterOptions(**{f.name: getattr(args, f.name) for f in option_fields(FilterOptions)})
    result = preprocess(args.in_dir, args.out_dir, find_face_model(args.face_model), preset=args.preset,
                        options=options, workers=args.workers, shard_frames=args.shard_frames,
                        on_progress=_Progress())
    if result.processed == 0:
        print("every clip was finished by an earlier run", file=sys.stderr)
    print(format_report(result.report))
    return 0
