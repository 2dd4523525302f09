"""The training loop of every stage, on Hugging Face Accelerate: one script for a CPU, one GPU, many GPUs, many nodes.

``python -m stabledub_core train stage1 DATA --output RUN`` runs :func:`train` in one process; ``accelerate launch
-m stabledub_core train ...`` or ``torchrun --nproc_per_node N -m stabledub_core train ...`` runs it data-parallel
(DDP; gloo on CPUs, NCCL on GPUs). Accelerate gives the device, mixed precision, DDP, gradient accumulation and the
checkpoint state; diffusers gives the noise schedule, ``get_scheduler`` and ``EMAModel``.

Choices that make runs reproducible and resumable exactly:

- The data order is a function of (seed, epoch, step) and split across processes by ``train.sampling``; every
  per-sample draw (noise, timestep, condition dropout, exposure patches, appearance frame, habit segment) comes from
  the sample's own seed. A checkpoint therefore needs only the step as the data position, and 2 processes compute
  the loss of exactly the samples one process with the same global batch computes.
- The LR schedule is stepped once per optimizer step by this loop (not by Accelerate, which would step it once per
  process) and saved as a registered object with the EMA.
- The model stays in eval mode: none of its layers behaves differently when training (no dropout is configured, no
  batch norm), and a frozen wav2vec2 backbone keeps its dropout off.
- SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal closed) set a flag checked after each optimizer step (agreed across processes): the loop writes
  a checkpoint and returns ``stopped=True``; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from stabledub_core.errors import CheckpointError, OptionError
from stabledub_core.masks.exposure import ExposureSchedule
from stabledub_core.models.audio_encoders import Wav2Vec2AudioEncoder
from stabledub_core.models.checkpoint import load_checkpoint, read_checkpoint_config
from stabledub_core.models.config import StableDubConfig, get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.sync_scorer import SyncScorer, SyncScorerConfig, scorer_config_from_json
from stabledub_core.models.vae import build_vae, load_sd_vae
from stabledub_core.train import checkpoints
from stabledub_core.train.config import CONFIG_FILE, TrainOptions
from stabledub_core.train.datasets import (
    PreprocessedData,
    Stage1Dataset,
    Stage2Dataset,
    SyncDataset,
    negative_shifts,
)
from stabledub_core.train.latent_cache import vae_fingerprint
from stabledub_core.train.latent_scale import measure_latent_scale
from stabledub_core.train.logs import CURVE_FILE, TrainLog, plot_losses
from stabledub_core.train.objectives import check_image_layers, check_sync_negatives, freeze_for, make_objective
from stabledub_core.train.sampling import GlobalBatchSampler
from stabledub_core.train.sync_loss import SyncTerm, check_sync_loss

MODEL_CONFIG = "model_config.json"
SYNC_SCORER = "sync_scorer"  # model_config.json of a `train sync` run: {"sync_scorer": {...}}
EMA_FILE = "ema.safetensors"


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        output_dir: the run's folder.
        step: optimizer steps done (including those of resumed runs).
        stopped: True when a signal stopped it before ``max_steps``.
        checkpoint: the last checkpoint written.
        loss: the last logged loss.
        ranks_identical: with several processes, whether every process ended with bit-identical trained weights.
    """

    output_dir: Path
    step: int
    stopped: bool
    checkpoint: Path | None
    loss: float
    ranks_identical: bool | None = None


# ---------------------------------------------------------------------------------------------------------- the model


def data_preset(data_dir) -> str:
    return PreprocessedData(data_dir).settings.get("preset", "sd15")


def model_config(options: TrainOptions, data_dir) -> StableDubConfig:
    """The config of the model a run trains: the ``--init`` checkpoint's, else the preset's framed as the data
    (``crop_box_scale`` = the box scale the data was preprocessed with).

    Raises:
        OptionError: the ``--init`` checkpoint was trained on crops framed otherwise than the data's (inference
            frames its crops by the model's config, so the two must agree).
    """
    framing = PreprocessedData(data_dir).settings.get("mask", {}).get("box_scale")
    if not options.init:
        config = get_preset(options.preset or data_preset(data_dir))
        return config if framing is None else dataclasses.replace(config, crop_box_scale=float(framing))
    config = read_checkpoint_config(options.init)
    if options.preset and config.preset != options.preset:
        raise OptionError(f"--init {options.init} is a {config.preset!r} checkpoint but --preset is "
                          f"{options.preset!r}: drop --preset or pick a matching checkpoint")
    if framing is not None and abs(config.crop_box_scale - float(framing)) > 1e-6:
        raise OptionError(f"--init {options.init} frames its crops with crop_box_scale {config.crop_box_scale:g} but "
                          f"{str(data_dir)!r} was preprocessed with {float(framing):g}: preprocess again with "
                          f"--crop-box-scale {config.crop_box_scale:g}, or init the model with --set "
                          f"crop_box_scale={float(framing):g}")
    return config


def load_training_model(options: TrainOptions, config: StableDubConfig) -> StableDub:
    """The model a run starts from: the ``--init`` checkpoint, or the preset's init seeded by ``--seed``."""
    vae = options.vae or None
    wav2vec2 = options.wav2vec2 or None
    if options.init:
        return load_checkpoint(options.init, vae_path=vae, wav2vec2_path=wav2vec2).float()
    torch.manual_seed(options.seed)
    parts = {}
    if config.audio.kind == "wav2vec2":
        if wav2vec2 is None:
            raise OptionError("the sd15 preset encodes audio with wav2vec2: give --wav2vec2 <local wav2vec2-base "
                              "folder> (or --init a checkpoint and --wav2vec2)")
        parts["audio_encoder"] = Wav2Vec2AudioEncoder.from_folder(wav2vec2, config.audio)
    model = StableDub.from_config(config, **parts)
    if not config.vae.in_checkpoint:
        if vae is None:
            raise OptionError("this preset uses SD 1.5's VAE, which is not trained here: give --vae <SD 1.5 single "
                              "file or diffusers folder>")
        load_sd_vae(model.vae, vae, config.vae)
    return model.float()


def load_training_vae(options: TrainOptions, config: StableDubConfig):
    """Only the VAE a run with these options uses (for ``train cache-latents``)."""
    if config.vae.in_checkpoint:
        if not options.init:
            raise OptionError(f"the {config.preset} preset's VAE is trained by `train vae`: give --init <its export> "
                              "so the cache is made with the VAE training will use")
        return load_checkpoint(options.init).vae.float().eval()
    if not options.vae:
        raise OptionError("give --vae <SD 1.5 single file or diffusers folder>, the VAE training will use")
    vae = build_vae(config.vae)
    load_sd_vae(vae, options.vae, config.vae)
    return vae.float().eval()


def make_dataset(stage: str, data_dir, config: StableDubConfig, options: TrainOptions, fingerprint: str | None):
    if stage == "stage2":
        return Stage2Dataset(data_dir, preset=config, habit_frames=options.habit_frames, grid=options.exposure_grid,
                             seed=options.seed, latent_cache=fingerprint)
    exposure = ExposureSchedule(options.exposure_start, options.exposure_end) if stage == "stage1" else None
    return Stage1Dataset(data_dir, preset=config, exposure=exposure, grid=options.exposure_grid, seed=options.seed,
                         latent_cache=fingerprint if stage == "stage1" else None)


# -------------------------------------------------------------------------------------------------------- the signals


class StopRequests:
    """SIGTERM / SIGINT / SIGHUP handlers that set :attr:`requested` (installed only in the main thread, restored
    after)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.requested = 0  # the signal number, 0 if none

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------------------- the loop


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _loss_terms(losses) -> dict[str, torch.Tensor]:
    names = losses._fields
    return {("loss" if name == "total" else f"loss_{name}"): value.detach().float()
            for name, value in zip(names, losses)}


def _param_sums(params) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in params])


def train(stage: str, data_dir, output_dir, options: TrainOptions, resume: str | None = None,
          stop: StopRequests | None = None) -> TrainResult:
    """Train one stage.

    Args:
        stage: ``vae``, ``stage1``, ``stage2`` or ``sync`` (the AV-sync scorer).
        data_dir: ``train preprocess``'s OUT_DIR.
        output_dir: the run's folder (checkpoints, logs, configs).
        options: the training options.
        resume: ``latest`` or a checkpoint folder to continue from (None: a new run).
        stop: the stop requests to honour (default: SIGTERM/SIGINT handlers installed for the call).

    Returns:
        the :class:`TrainResult`.
    """
    # local: Accelerate and diffusers' training utilities belong to the training extra and import in seconds
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    check_image_layers(stage, options.image_layers)
    check_sync_negatives(stage, options.sync_negatives)
    negative_shifts(options.sync_negatives, options.sync_min_shift)
    check_sync_loss(stage, options.sync_loss_weight, options.sync_scorer)
    sync = SyncTerm.from_file(options.sync_scorer) if options.sync_loss_weight > 0 else None
    if stage == "sync":
        config = SyncScorerConfig()
    else:
        config = model_config(options, data_dir)
        if stage == "vae" and not config.vae.in_checkpoint:
            raise OptionError(f"the {config.preset} preset uses SD 1.5's VAE, frozen: `train vae` is for presets "
                              "whose VAE is trained here (tiny)")
    # Accelerate runs several CPU processes data-parallel (gloo) only when told the run is on the CPU
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=several and not torch.cuda.is_available(), mixed_precision=options.mixed_precision, gradient_accumulation_steps=options.grad_accumulation,
        log_with="tensorboard" if options.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")))
    main = accelerator.is_main_process
    if resume is None and main and checkpoints.list_checkpoints(output_dir):
        raise CheckpointError(f"{str(output_dir)!r} already holds checkpoints of a run: continue it with --resume "
                              "latest, or give a new --output")
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clean_temporary(output_dir)
        (output_dir / CONFIG_FILE).write_text(options.to_json())
        (output_dir / MODEL_CONFIG).write_text(_config_json(config))
    accelerator.wait_for_everyone()

    if stage == "sync":
        torch.manual_seed(options.seed)
        model = SyncScorer(config).eval()
        dataset = SyncDataset(data_dir, config, seed=options.seed, negatives=options.sync_negatives,
                              min_shift=options.sync_min_shift)
    else:
        model = load_training_model(options, config).eval()
        if options.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        fingerprint = vae_fingerprint(model.vae) if options.latent_cache and stage != "vae" else None
        dataset = make_dataset(stage, data_dir, config, options, fingerprint)
    params = freeze_for(model, stage, options.image_layers)
    objective = make_objective(model, stage, options.lcf_weight, options.drop_prob, options.kl_weight,
                               options.vae_mouth_weight, sync, options.sync_loss_weight)
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, betas=(options.adam_beta1, options.adam_beta2),
                                  weight_decay=options.weight_decay)
    lr_scheduler = get_scheduler(options.lr_scheduler, optimizer, num_warmup_steps=options.lr_warmup_steps,
                                 num_training_steps=options.max_steps)
    ema = EMAModel(params, decay=options.ema_decay) if options.ema_decay > 0 else None
    objective, optimizer = accelerator.prepare(objective, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    step = 0
    if resume is not None:
        path = checkpoints.resolve_resume(output_dir, resume)
        accelerator.load_state(str(path))
        step = int(checkpoints.read_state(path)["step"])
    sampler = GlobalBatchSampler(len(dataset), options.batch_size, options.grad_accumulation,
                                 accelerator.num_processes, accelerator.process_index, options.seed,
                                 options.max_steps, start_step=step)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=options.num_workers)
    log = TrainLog(output_dir, resume_step=step if resume is not None else None) if main else None
    if options.tensorboard:
        accelerator.init_trackers(f"stabledub-{stage}")

    def save(at: int) -> Path:
        tmp = checkpoints.temporary_dir(output_dir, at)
        accelerator.save_state(str(tmp), safe_serialization=True)
        if main:
            if ema is not None:
                names = [n for n, p in accelerator.unwrap_model(objective).model.named_parameters() if p.requires_grad]
                save_file({n: t.detach().contiguous().cpu() for n, t in zip(names, ema.shadow_params)},
                          str(tmp / EMA_FILE))
            checkpoints.write_state(tmp, {"step": at, "epoch": sampler.epoch_of(max(at - 1, 0)), "stage": stage,
                                          "global_batch": sampler.global_batch,
                                          "processes": accelerator.num_processes})
        accelerator.wait_for_everyone()
        final = checkpoints.checkpoint_dir(output_dir, at)
        if main:
            final = checkpoints.commit(output_dir, at, options.keep_checkpoints)
            plot_losses(log.path, output_dir / CURVE_FILE, f"StableDub {stage}") if log.path.is_file() else None
        accelerator.wait_for_everyone()
        return final

    progress = None
    if main:
        from tqdm.auto import tqdm  # local: tqdm comes with the training extra's dependencies

        progress = tqdm(total=options.max_steps, initial=step, desc=f"train {stage}", unit="step", dynamic_ncols=True)
    stop = stop or StopRequests()
    last_checkpoint, loss_value, stopped = None, math.nan, False
    sums: dict[str, torch.Tensor] = {}
    micro, rates, started, samples = 0, [], time.monotonic(), 0
    with stop.installed():
        for batch in loader:
            batch = _to_device(batch, accelerator.device)
            with accelerator.accumulate(objective):
                losses = objective(batch)
                accelerator.backward(losses.total)
                if accelerator.sync_gradients and options.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, options.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name, value in _loss_terms(losses).items():
                sums[name] = sums.get(name, 0) + value
            micro += 1
            samples += len(batch["sample_seed"]) * accelerator.num_processes
            if "exposure_rate" in batch:
                rates.append(float(batch["exposure_rate"].float().mean()))
            if not accelerator.sync_gradients:
                continue
            lr = lr_scheduler.get_last_lr()[0]
            lr_scheduler.step()
            if ema is not None:
                ema.step(params)
            step += 1
            means = {name: accelerator.reduce(value / micro, reduction="mean").item() for name, value in sums.items()}
            loss_value = means["loss"]
            if main and (step % options.log_every == 0 or step == options.max_steps):
                elapsed = time.monotonic() - started
                row = {"step": step, "epoch": sampler.epoch_of(step - 1), **means, "lr": lr,
                       "exposure_rate": sum(rates) / len(rates) if rates else 0.0,
                       "samples_per_s": samples / max(elapsed, 1e-9), "elapsed_s": elapsed}
                log.write(row)
                if options.tensorboard:
                    accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
                progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if progress is not None:
                progress.update(1)
            sums, micro, rates = {}, 0, []
            requested = torch.tensor(float(stop.requested), device=accelerator.device)
            if accelerator.num_processes > 1:
                requested = accelerator.reduce(requested, reduction="max")
            stopped = bool(requested.item()) and step < options.max_steps
            if step % options.checkpoint_every == 0 or step == options.max_steps or stopped:
                last_checkpoint = save(step)
            if stopped:
                break
    if progress is not None:
        progress.close()
    if last_checkpoint is None and step > 0:  # e.g. resumed at max_steps
        found = checkpoints.list_checkpoints(output_dir)
        last_checkpoint = found[-1] if found else None
    identical = None
    if accelerator.num_processes > 1:
        gathered = accelerator.gather(_param_sums(params)[None].to(accelerator.device))  # (world, n)
        identical = bool((gathered == gathered[:1]).all())
        if main and last_checkpoint is not None:
            state = checkpoints.read_state(last_checkpoint)
            state["ranks_identical"] = identical
            checkpoints.write_state(last_checkpoint, state)
    if stage == "vae" and main and step == options.max_steps:
        # the latents' own scale, as SD measured its 0.18215 (``train.latent_scale``); export reads it from here
        config.vae.scaling_factor = measure_latent_scale(accelerator.unwrap_model(objective).model.vae, dataset)
        (output_dir / MODEL_CONFIG).write_text(_config_json(config))
    if options.tensorboard:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if accelerator.num_processes == 1:  # leave no global state: a next run in this process may pick other settings
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return TrainResult(output_dir, step, stopped, last_checkpoint, loss_value, identical)


def _config_json(config) -> str:
    if isinstance(config, SyncScorerConfig):
        return json.dumps({SYNC_SCORER: dataclasses.asdict(config)})
    return config.to_json()


def read_model_config(output_dir) -> StableDubConfig | SyncScorerConfig:
    """The config of the model a run trains (a ``SyncScorerConfig`` for ``train sync``)."""
    path = Path(output_dir) / MODEL_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{str(output_dir)!r} is not a training run folder (no {MODEL_CONFIG})")
    raw = json.loads(path.read_text())
    if SYNC_SCORER in raw:
        return scorer_config_from_json(json.dumps(raw[SYNC_SCORER]))
    return StableDubConfig.from_json(path.read_text())

