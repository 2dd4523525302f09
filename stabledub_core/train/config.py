"""Training options: one dataclass, every default defined once, read from a file with command-line overrides.

``train vae | stage1 | stage2`` take the same :class:`TrainOptions`. Values come, in increasing priority, from the
field defaults below, from ``--config FILE`` (TOML or JSON, flat ``name = value`` keys spelt as the fields), and from
the command-line flags (``--learning-rate 1e-4``), which are made from these fields (``cli/train.py``), so ``--help``
shows the same defaults. The options a run used are written to ``OUTPUT_DIR/train_config.json``; a resumed run reads
that file, so it continues with the same settings unless a flag overrides one.

Sizes: ``batch_size`` is per process and per micro-step; one optimizer step consumes ``global_batch`` samples =
``batch_size * grad_accumulation * world_size``. The data order is a function of (seed, epoch) only and a step's
samples are fixed by the global batch, so a run on 2 processes sees exactly the samples of a 1-process run with the
same global batch (``train.sampling``).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from stabledub_core.errors import OptionError
from stabledub_core.masks.exposure import DEFAULT_GRID
from stabledub_core.models.config import PRESETS
from stabledub_core.pipeline.options import StageOptions, option, option_fields

STAGES = ("vae", "stage1", "stage2", "sync")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
CONFIG_FILE = "train_config.json"  # the options of a run, in its output folder


@dataclass
class TrainOptions(StageOptions):
    """Everything a training run is set by (paths are given on the command line as ``DATA`` and ``--output``)."""

    preset: str = option("", "model preset (default: the one the data was preprocessed for)",
                         choices=("", *sorted(PRESETS)))
    init: str = option("", "StableDub checkpoint to start from (`python -m stabledub_core init` for SD 1.5, or the "
                           "export of the previous stage); empty: the preset's random init")
    vae: str = option("", "SD 1.5 VAE (single file or diffusers folder) when the checkpoint does not store the VAE")
    wav2vec2: str = option("", "local wav2vec2-base folder when the preset uses the wav2vec2 audio encoder")
    max_steps: int = option(1000, "optimizer steps of the run", min=1, max=100_000_000)
    batch_size: int = option(4, "samples per process per micro-step", min=1, max=4096)
    grad_accumulation: int = option(1, "micro-steps per optimizer step", min=1, max=4096)
    learning_rate: float = option(1e-4, "peak learning rate (AdamW)", min=0.0, max=1.0)
    weight_decay: float = option(1e-2, "AdamW weight decay", min=0.0, max=1.0)
    adam_beta1: float = option(0.9, "AdamW beta1", min=0.0, max=1.0)
    adam_beta2: float = option(0.999, "AdamW beta2", min=0.0, max=1.0)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)", min=0.0, max=1e6)
    lr_scheduler: str = option("constant_with_warmup", "learning-rate schedule (diffusers.optimization)",
                               choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option(0, "warm-up steps of the schedule", min=0, max=100_000_000)
    mixed_precision: str = option("no", "autocast precision (bf16 on CPUs and recent GPUs, fp16 on older GPUs)",
                                  choices=MIXED_PRECISION)
    gradient_checkpointing: bool = option(False, "recompute U-Net activations in the backward pass (less memory, "
                                                 "about a third more time)")
    ema_decay: float = option(0.0, "EMA of the trained weights with this decay (diffusers EMAModel); 0: no EMA",
                              min=0.0, max=1.0)
    lcf_weight: float = option(1.0, "weight of the latent coarse facial loss L_LCF (eq. 5; 1 in eq. 6)",
                               min=0.0, max=100.0)
    drop_prob: float = option(0.1, "stage 2: probability of replacing the audio, and independently the habit, by the "
                                   "zero embedding (classifier-free guidance, eq. 7)", min=0.0, max=1.0)
    image_layers: bool = option(False, "stage 2: also train the U-Net's image layers (stage 1's set), for a tiny "
                                       "U-Net trained from scratch whose denoiser stage 1 alone leaves short")
    sync_loss_weight: float = option(0.0, "stage 2: weight of the stabilized sync loss on the decoded one-step lip "
                                          "prediction (train.sync_loss); 0: off", min=0.0, max=100.0)
    sync_scorer: str = option("", "stage 2: the AV-sync scorer checkpoint the sync loss uses (`train sync` + "
                                  "`train export`, e.g. assets/sync_scorer_world.safetensors)")
    sync_negatives: int = option(0, "sync: negatives per stack from its own clip, the speech shifted by "
                                    "--sync-min-shift..15 frames (same speaker and words, wrong timing), besides the "
                                    "batch's other clips; 0: the batch only", min=0, max=30)
    sync_min_shift: int = option(2, "sync: the smallest shift (frames) of an in-clip negative", min=1, max=15)
    exposure_start: float = option(0.7, "stage 1: share of Mu's patches exposed at the start (progressive mask "
                                         "exposure)", min=0.0, max=1.0)
    exposure_end: float = option(0.0, "stage 1: share exposed at the end of the run", min=0.0, max=1.0)
    exposure_grid: int = option(DEFAULT_GRID, "patches per crop side of the exposure grid", min=1, max=64)
    habit_frames: int = option(8, "stage 2: lip crops (K) of the lip-habit segment", min=1, max=64)
    kl_weight: float = option(1e-6, "vae: weight of the KL term (SD's autoencoder uses 1e-6)", min=0.0, max=1.0)
    vae_mouth_weight: float = option(0.0, "vae: extra weight of the L1 error inside the coarse mouth mask Mc (the "
                                          "emphasis of L_LCF, on pixels)", min=0.0, max=100.0)
    latent_cache: bool = option(False, "read VAE latents cached by `train cache-latents` instead of encoding crops "
                                       "in the loop (stage 1 and 2)")
    seed: int = option(0, "seed of the data order, the per-sample draws and the init", min=0, max=0xFFFFFFFF)
    num_workers: int = option(0, "DataLoader worker processes per training process", min=0, max=256)
    checkpoint_every: int = option(500, "write a resumable checkpoint every this many steps", min=1,
                                   max=100_000_000)
    keep_checkpoints: int = option(3, "keep the last this many checkpoints (0: keep all)", min=0, max=100_000)
    log_every: int = option(1, "write a log row every this many steps", min=1, max=100_000_000)
    tensorboard: bool = option(False, "also log to TensorBoard (OUTPUT_DIR/tensorboard; needs tensorboard)")

    @property
    def exposure(self) -> tuple[float, float]:
        return self.exposure_start, self.exposure_end

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def read_config_file(path) -> dict:
    """The flat option values of a TOML (``.toml``) or JSON file; unknown names are an error."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"config file {str(path)!r} does not exist")
    try:
        values = tomllib.loads(path.read_text()) if path.suffix.lower() == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OptionError(f"cannot read config file {str(path)!r}: {error}") from None
    if not isinstance(values, dict):
        raise OptionError(f"config file {str(path)!r} must hold name = value pairs")
    check_names(values, str(path))
    return values


def check_names(values: dict, where: str) -> None:
    known = {f.name for f in option_fields(TrainOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionError(f"{where}: unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def merge_options(*layers: dict) -> TrainOptions:
    """``TrainOptions`` from value dicts, later ones overriding earlier ones (defaults < file < flags)."""
    values: dict = {}
    for layer in layers:
        check_names(layer, "options")
        values.update(layer)
    types = {f.name: type(f.default) for f in option_fields(TrainOptions)}
    for name, value in values.items():
        if types[name] is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, types[name]):
            raise OptionError(f"option {name} must be a {types[name].__name__}, got {value!r}")
    return TrainOptions(**values)


def load_run_options(output_dir) -> dict:
    """The options an earlier run in ``output_dir`` was started with (empty when none was)."""
    path = Path(output_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
