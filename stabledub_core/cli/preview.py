"""``python -m stabledub_core preview VIDEO --out strip.png``: a PNG strip previewing the masks of a few frames.

The video is read with :class:`stabledub_core.media.video.VideoReader`, the face tracked, the crop spans planned,
and the chosen frames rendered by :func:`stabledub_core.masks.preview.preview_strip` (mouth masks, crop box, union
mask, exposed patches from a JSON list, an occluder image or a random training-style rate).
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from stabledub_core.errors import (
    EmptyMediaError,
    ExposureError,
    NotAMediaFileError,
    OptionError,
    OutputPathError,
    require_file,
)
from stabledub_core.face.track import FaceTracker
from stabledub_core.masks import exposure as exposure_lib
from stabledub_core.masks.crop_spans import CropSpan, plan_crop_spans
from stabledub_core.masks.preview import PreviewStyle, preview_strip
from stabledub_core.media.output import atomic_write, check_output_path
from stabledub_core.media.video import VideoReader
from stabledub_core.models.config import StableDubConfig
from stabledub_core.pipeline.options import MaskOptions


def read_video(path: Path, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_frames`` frames (F, H, W, 3) uint8 of the video at ``path`` and their times in seconds."""
    with VideoReader(require_file(path, "video")) as reader:
        frames = list(itertools.islice(reader.frames(), max_frames))
    if not frames:
        raise EmptyMediaError(f"no video frames could be decoded from {path}")
    return np.stack([f.image for f in frames]), np.asarray([f.time for f in frames])


def read_occluder(path: Path, frame_size: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 occluder mask image at ``path`` (non-zero where something covers the mouth)."""
    occluder = cv2.imread(str(require_file(path, "occluder mask")), cv2.IMREAD_GRAYSCALE)
    if occluder is None:
        raise NotAMediaFileError(f"cannot read the occluder mask image {path}: give a PNG (or another image "
                                 "format OpenCV reads)")
    if occluder.shape != tuple(frame_size):
        raise ExposureError(f"occluder mask is {occluder.shape[1]}x{occluder.shape[0]}, the video is "
                            f"{frame_size[1]}x{frame_size[0]}: give it at the video's size")
    return occluder


def exposed_patches(args: argparse.Namespace, frames: np.ndarray, spans: Sequence[CropSpan], grid: int,
                    occluder: np.ndarray | None = None) -> dict[int, exposure_lib.ExposedPatches]:
    """Exposed patches per clip frame from the command-line sources (at most one; ``occluder``: the read image)."""
    out: dict[int, exposure_lib.ExposedPatches] = {}
    if args.patches is not None:
        fixed = exposure_lib.ExposedPatches.from_json(require_file(args.patches, "patches").read_text())
        return {i: fixed for i in range(len(frames))}
    if occluder is not None:
        for span in spans:
            for i, found in zip(range(span.start, span.stop), exposure_lib.from_occluder(occluder, span, grid)):
                out[i] = found
        return out
    if args.exposure_rate > 0:
        rng = np.random.default_rng(args.seed)
        for span in spans:
            for i in range(span.start, span.stop):
                out[i] = exposure_lib.from_schedule(span.union_mask, grid, args.exposure_rate, rng)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The preview command's arguments.

    Args:
        parser: The parser to add them to.
    """
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--frames", type=int, default=6, help="frames in the strip, spread over the video")
    parser.add_argument("--face-model", type=Path, default=os.environ.get("STABLEDUB_FACE_MODEL"),
                        help="MediaPipe face_landmarker.task (default: $STABLEDUB_FACE_MODEL)")
    parser.add_argument("--span-length", type=int, default=StableDubConfig.num_frames,
                        help="frames sharing one crop box and union mask (the model's window; default: %(default)s)")
    parser.add_argument("--crop-size", type=int, default=StableDubConfig.resolution,
                        help="side of the model's crops (default: %(default)s)")
    parser.add_argument("--grid", type=int, default=MaskOptions.occluder_grid,
                        help="exposure patches per crop side (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=256, help="pixels per preview tile")
    parser.add_argument("--max-frames", type=int, default=1000, help="read at most this many frames")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--patches", type=Path, help="JSON exposed patches {grid, cells} for every frame")
    source.add_argument("--occluder", type=Path, help="grayscale image, non-zero where an occluder is")
    source.add_argument("--exposure-rate", type=float, default=0.0, help="random training-style exposure rate")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Write the preview strip of parsed :func:`add_arguments` arguments (``args.face_model`` must be set).

    Args:
        args: The parsed arguments.

    Returns:
        The exit status (0).
    """
    for name in ("frames", "max_frames", "tile"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not cv2.haveImageWriter(str(args.out)):
        raise OptionError(f"--out {args.out}: OpenCV cannot write {args.out.suffix or 'files without a suffix'}; "
                          "give a .png file")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"--out {str(args.out)!r}: cannot create the folder {str(args.out.parent)!r} "
                              f"({exc.strerror}): choose a folder you can write to") from None
    check_output_path(args.out, "--out", {"video": args.video, "--occluder": args.occluder,
                                          "--patches": args.patches})
    frames, times = read_video(args.video, args.max_frames)
    occluder = None if args.occluder is None else read_occluder(args.occluder, frames.shape[1:3])  # before tracking
    with FaceTracker(args.face_model) as tracker:
        track = tracker.track(frames, times=times)
    spans = plan_crop_spans(track, length=args.span_length, crop_size=args.crop_size)
    patches = exposed_patches(args, frames, spans, args.grid, occluder)
    indices = np.unique(np.linspace(0, len(frames) - 1, args.frames).round().astype(int))
    strip = preview_strip(frames, spans, indices.tolist(), patches, PreviewStyle(tile=args.tile))
    encoded, data = cv2.imencode(args.out.suffix, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise OptionError(f"--out {args.out}: OpenCV could not encode the strip as {args.out.suffix}; give a .png file")
    atomic_write(args.out, data.tobytes(), "--out")
    print(f"wrote {args.out} ({strip.shape[1]}x{strip.shape[0]}, frames {indices.tolist()})")
    return 0
