"""``train export``: a training checkpoint -> the StableDub checkpoint the pipeline, the CLI and the nodes load (or,
for a ``train sync`` run, the sync scorer checkpoint ``models.sync_scorer.load_scorer`` reads).

The run's ``model_config.json`` gives the model; the checkpoint's ``model.safetensors`` (Accelerate's, every weight
of the training module, named ``model.<part>...``) gives its weights; with ``ema=True`` (the default when the run kept
an EMA) the trained parameters are replaced by their EMA from ``ema.safetensors``. The result is written by
``models.checkpoint.save_checkpoint`` (atomic; the config in its metadata; SD's VAE and the wav2vec2 backbone left
out for sd15), with the stage, step and whether EMA weights were used in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from stabledub_core.errors import CheckpointError
from stabledub_core.models.checkpoint import check_state, save_checkpoint
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.sync_scorer import SyncScorer, SyncScorerConfig, save_scorer
from stabledub_core.models.unet import StableDubUNet
from stabledub_core.train import checkpoints
from stabledub_core.train.engine import EMA_FILE, read_model_config

MODEL_FILE = "model.safetensors"  # Accelerate's name for the one prepared model's weights
PREFIX = "model."  # the training module holds the StableDub as ``.model``


def export(output_dir, out, checkpoint: str = "latest", ema: bool | None = None) -> Path:
    """Write the StableDub checkpoint of a training checkpoint.

    Args:
        output_dir: the run's folder.
        out: the ``.safetensors`` file to write.
        checkpoint: ``latest`` or a checkpoint folder.
        ema: use the EMA weights (None: when the checkpoint has them).

    Returns:
        the path written.
    """
    folder = checkpoints.resolve_resume(output_dir, checkpoint)
    state = checkpoints.read_state(folder)
    config = read_model_config(output_dir)
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{str(folder)!r} has no {MODEL_FILE}: not a complete training checkpoint")
    tensors = {name[len(PREFIX):]: t for name, t in load_file(str(weights)).items() if name.startswith(PREFIX)}
    has_ema = (folder / EMA_FILE).is_file()
    if ema and not has_ema:
        raise CheckpointError(f"{str(folder)!r} has no EMA weights (the run had --ema-decay 0): export without --ema")
    use_ema = has_ema if ema is None else ema
    if use_ema:
        tensors.update(load_file(str(folder / EMA_FILE)))
    if isinstance(config, SyncScorerConfig):
        scorer = SyncScorer(config)
        scorer.load_state_dict(tensors, strict=True)
        return save_scorer(scorer, out)
    with torch.device("meta"):  # every U-Net and habit tensor comes from the file
        parts = {"unet": StableDubUNet(config.unet),
                 "habit": LipHabitModulation(config.habit, config.audio.feature_size)}
    model = StableDub.from_config(config, **parts)
    expected = model.state_dict()
    check_state(expected, {n: tuple(t.shape) for n, t in tensors.items()}, str(weights))
    model.load_state_dict(tensors, strict=True, assign=True)
    metadata = {"trained_stage": str(state.get("stage", "")), "step": str(state["step"]), "ema": str(use_ema).lower()}
    return save_checkpoint(model, out, metadata=metadata)
