"""``python -m stabledub_core world OUT --clips N --speech DIR``: write a folder of synthetic talking-avatar clips.

The clips (video with sound, metadata JSON with the ground-truth mouth states, occluder masks) are what
``train preprocess`` reads like any other videos (see :mod:`stabledub_core.synthetic.world`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stabledub_core.synthetic.world import write_world


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("world", help="write synthetic talking-avatar clips with known ground truth",
                            description="Write N clips of procedurally varied avatars speaking the speech files of "
                            "DIR (any depth), each with its metadata (mouth states, habit, occluder) beside it.")
    parser.add_argument("out_dir", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--speech", type=Path, required=True, help="folder of speech files (wav, flac, mp3, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (default: %(default)s)")
    parser.add_argument("--occluder-share", type=float, default=0.3,
                        help="share of clips with an occluder over the mouth (default: %(default)s)")
    parser.add_argument("--clips-per-avatar", type=int, default=1,
                        help="clips each avatar speaks (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="longest clip (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    def progress(done: int, total: int) -> None:
        print(f"world [{done}/{total}]", file=sys.stderr)

    paths = write_world(args.out_dir, args.clips, args.seed, args.speech, fps=args.fps, size=args.size,
                        occluder_share=args.occluder_share, clips_per_avatar=args.clips_per_avatar,
                        max_seconds=args.max_seconds, workers=args.workers, progress=progress)
    print(f"wrote {len(paths)} clips to {args.out_dir}")
    return 0
