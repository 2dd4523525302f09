"""``python -m stabledub_core train ...``: the training commands.

``preprocess IN_DIR OUT_DIR`` (data), ``vae`` / ``stage1`` / ``stage2 DATA --output RUN`` (training, see
:mod:`stabledub_core.train.engine`), ``cache-latents DATA`` (the latent cache) and ``export RUN --out FILE``.

``train preprocess`` filters every video under IN_DIR with the paper's Fig. 5 filters, crops the kept clips as
inference does, writes shards with a manifest to OUT_DIR and prints the report (see
:mod:`stabledub_core.train.preprocess`). A rerun resumes: finished clips are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from pathlib import Path

from stabledub_core.cli.common import FACE_MODEL_HELP, find_face_model
from stabledub_core.cli.options import flag
from stabledub_core.models.config import PRESETS
from stabledub_core.pipeline.options import MaskOptions, option_fields
from stabledub_core.train.config import TrainOptions, load_run_options, merge_options, read_config_file
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
  sync           with --sync-scorer: the lips follow the speech (LSE-C >= --min-sync-confidence, best shift
                 within --max-sync-offset frames); runs on the crops of a clip that passed the others

""" + FACE_MODEL_HELP


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``train`` command group (with ``preprocess``) on ``sub`` (the main parser's subparsers)."""
    parser = sub.add_parser("train", help="training: preprocess videos, train the VAE and the two stages, export",
                            description="Training commands.")
    commands = parser.add_subparsers(dest="train_command", required=True,
                                     metavar="{preprocess,vae,stage1,stage2,sync,cache-latents,export}")
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
    pre.add_argument("--crop-box-scale", type=float, default=None,
                     help="the crops' framing: crop box side / longer side of the feathered union mask Mu (default: "
                     "the preset's crop_box_scale); models trained on the data take it into their config")
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
    add_training_parsers(commands)
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
    framing = None if args.crop_box_scale is None else MaskOptions().mask_config(args.crop_box_scale)
    result = preprocess(args.in_dir, args.out_dir, find_face_model(args.face_model), preset=args.preset,
                        options=options, workers=args.workers, shard_frames=args.shard_frames, mask_config=framing,
                        on_progress=_Progress())
    if result.processed == 0:
        print("every clip was finished by an earlier run", file=sys.stderr)
    print(format_report(result.report))
    return 0


# ------------------------------------------------------------------------------------------- vae, stage1, stage2, ...

STAGE_HELP = {
    "vae": "train the tiny preset's VAE on the crops (reconstruction + KL); sd15 uses SD's VAE, frozen",
    "stage1": "train the spatial layers on single frames (L_DM + L_LCF, progressive mask exposure)",
    "stage2": "train audio cross-attention, temporal Mamba and habit modulation on 16-frame clips",
    "sync": "train the audio-visual sync scorer (SyncNet-shaped; for the preprocessing sync filter and LSE-C/D)",
}
TRAINING_EXTRA = ("accelerate", "matplotlib", "tqdm")
TRAIN_EPILOG = """\
Option values come from the defaults, then --config FILE (TOML or JSON: name = value, spelt as the flags without
--, with _ for -), then the flags. A resumed run starts from the options it was started with.

Launch on several processes or GPUs with Accelerate or torchrun, e.g.
  accelerate launch --num_processes 8 -m stabledub_core train stage2 DATA --output RUN ...
  torchrun --nproc_per_node 2 -m stabledub_core train stage1 DATA --output RUN ...
"""


def _missing_extra() -> list[str]:
    return [name for name in TRAINING_EXTRA if importlib.util.find_spec(name) is None]


def _add_option_flags(parser: argparse.ArgumentParser, names=None) -> None:
    """One flag per ``TrainOptions`` field, default SUPPRESS so the file and the run's saved options can layer."""
    group = parser.add_argument_group("training options")
    for f in option_fields(TrainOptions):
        if names is not None and f.name not in names:
            continue
        meta = f.metadata
        text = f"{meta['help']} (default: {f.default!r})"
        if isinstance(f.default, bool):
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(flag(f.name), type=type(f.default), choices=meta["choices"],
                               default=argparse.SUPPRESS, help=text)


def _given_options(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in option_fields(TrainOptions) if hasattr(args, f.name)}


def add_training_parsers(commands) -> None:
    for stage, text in STAGE_HELP.items():
        p = commands.add_parser(stage, help=text, description=text[0].upper() + text[1:] + ".",
                                epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("data", type=Path, metavar="DATA", help="the OUT_DIR of `train preprocess`")
        p.add_argument("--output", type=Path, required=True, help="the run's folder (checkpoints, logs)")
        p.add_argument("--config", type=Path, default=None, help="options file (TOML or JSON)")
        p.add_argument("--resume", default=None, metavar="latest|PATH",
                       help="continue the run in --output from its newest checkpoint, or from a checkpoint folder")
        _add_option_flags(p)
        p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
        p.set_defaults(run=run_stage, stage=stage)

    cache = commands.add_parser("cache-latents", help="encode every crop once with the VAE training will use",
                                description="Encode every crop (and its Mu-masked twin) of a preprocessed folder "
                                "with the VAE, so `--latent-cache` training skips the VAE encoder. A rerun resumes.")
    cache.add_argument("data", type=Path, metavar="DATA", help="the OUT_DIR of `train preprocess`")
    cache.add_argument("--batch", type=int, default=16, help="frames per VAE call (default: %(default)s)")
    _add_option_flags(cache, {"preset", "init", "vae"})
    cache.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    cache.set_defaults(run=run_cache_latents)

    export = commands.add_parser("export", help="write the StableDub checkpoint of a training run",
                                 description="Write a training checkpoint as the StableDub .safetensors checkpoint "
                                 "that `dub`, the API and the ComfyUI nodes load (put it in models/stabledub/).")
    export.add_argument("run_dir", type=Path, metavar="RUN", help="the --output folder of a training run")
    export.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    export.add_argument("--checkpoint", default="latest", metavar="latest|PATH",
                        help="which checkpoint (default: %(default)s)")
    export.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="use the EMA weights (default: when the run kept an EMA)")
    export.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    export.set_defaults(run=run_export)


def _check_extra() -> int | None:
    missing = _missing_extra()
    if missing:
        print(f"stabledub: error: training needs {', '.join(missing)}: pip install -r requirements-train.txt",
              file=sys.stderr)
        return 2
    return None


def run_stage(args: argparse.Namespace) -> int:
    """Run ``train vae|stage1|stage2``; exit 0 when done, 130/143 when a signal stopped it (after a checkpoint)."""
    if (status := _check_extra()) is not None:
        return status
    from stabledub_core.train.engine import StopRequests, train  # local: imports Accelerate

    saved = load_run_options(args.output) if args.resume else {}
    from_file = read_config_file(args.config) if args.config else {}
    options = merge_options(saved, from_file, _given_options(args))
    stop = StopRequests()
    result = train(args.stage, args.data, args.output, options, resume=args.resume, stop=stop)
    if result.stopped:
        name = signal.Signals(stop.requested).name
        print(f"{name}: stopped at step {result.step}; checkpoint {result.checkpoint}; continue with "
              f"--resume latest", file=sys.stderr)
        return 128 + stop.requested
    print(f"trained {args.stage} to step {result.step} (loss {result.loss:.4f}); checkpoint {result.checkpoint}\n"
          f"export: python -m stabledub_core train export {args.output} --out stabledub_{args.stage}.safetensors")
    return 0


def run_cache_latents(args: argparse.Namespace) -> int:
    from stabledub_core.train.engine import load_training_vae, model_config
    from stabledub_core.train.latent_cache import cache_latents

    options = merge_options(_given_options(args))
    vae = load_training_vae(options, model_config(options, args.data))
    folder = cache_latents(args.data, vae, batch=args.batch,
                           on_progress=lambda done, total, shard: print(f"cache-latents [{done}/{total}] {shard}",
                                                                        file=sys.stderr))
    print(f"latents in {folder}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from stabledub_core.train.export import export

    path = export(args.run_dir, args.out, checkpoint=args.checkpoint, ema=args.ema)
    print(f"wrote {path}")
    return 0
