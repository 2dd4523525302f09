"""StableDub checkpoints: safetensors files with the model config in their metadata.

File layout::

    metadata: {"format": "stabledub-checkpoint", "format_version": "1", "config": StableDubConfig JSON,
               "preset": config.preset, "external": comma-separated prefixes NOT stored, e.g.
               "audio_encoder.backbone.,vae." for sd15, "" for tiny} (+ any caller metadata, e.g. the step)
    tensors:  "<part>.<parameter name>" for every stored part, e.g. "unet.conv_in.weight", "habit.lam"

Which parts are stored is decided by the config, not by the preset name (:func:`stored_state_dict`):

- ``unet`` and ``habit``: always (the trained network).
- ``audio_encoder``: everything except the encoder's ``external_prefixes`` (the frozen wav2vec2 backbone, which
  comes from its own folder; only the learned layer-mixing weights are stored). The built-in mel encoder is stored
  whole.
- ``vae``: only when ``VAEConfig.in_checkpoint`` is True (the ``tiny`` preset's VAE, so the demo is one file);
  otherwise the VAE comes from its own file (SD 1.5's VAE, see ``models.vae.load_sd_vae``).

Loading validates the format, the preset (``expect_preset``), every name and shape, and that no weight is NaN or
infinite (:func:`check_finite_weights`, also after a conversion to float16), and says exactly what is wrong. Pickle files (.ckpt/.pt/.pth/.bin/.pkl) are refused: they can run code when loaded
(``models.safetensors_io``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from stabledub_core.errors import CheckpointError, NonFiniteWeightsError
from stabledub_core.models.audio_encoders import Wav2Vec2AudioEncoder
from stabledub_core.models.config import StableDubConfig
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.safetensors_io import check_safetensors_file, save_safetensors
from stabledub_core.models.stabledub import StableDub
from stabledub_core.models.unet import StableDubUNet
from stabledub_core.models.vae import load_sd_vae

FORMAT = "stabledub-checkpoint"
FORMAT_VERSION = "1"


# ------------------------------------------------------------------------------------------------- model checkpoints


def external_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of ``model`` that are NOT stored in its checkpoint (they come from their own files).

    Decided by the config and the modules: the audio encoder's ``external_prefixes`` (frozen wav2vec2 backbone) and
    the VAE unless ``config.vae.in_checkpoint``.
    """
    prefixes = [f"audio_encoder.{p}" for p in getattr(model.audio_encoder, "external_prefixes", ())]
    if not model.config.vae.in_checkpoint:
        prefixes.append("vae.")
    return tuple(prefixes)


def stored_state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds (see the module docstring)."""
    skip = external_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}


def save_checkpoint(model, path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` atomically (temp file in the same folder, then ``os.replace``).

    Args:
        model: a ``StableDub``.
        path: the ``.safetensors`` file to write.
        metadata: extra string metadata (e.g. training step); the format keys cannot be overridden.

    Returns:
        the path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"StableDub checkpoints are .safetensors files, got {path.name}")
    tensors, seen = {}, set()
    for name, tensor in stored_state_dict(model).items():
        tensor = tensor.detach().contiguous()
        if tensor.data_ptr() in seen:  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.cpu()
    meta = dict(metadata or {})
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, config=model.config.to_json(),
                preset=model.config.preset, external=",".join(external_prefixes(model)))
    return save_safetensors(tensors, path, meta)


def read_checkpoint_config(path) -> StableDubConfig:
    """The config stored in a StableDub checkpoint (validates the file and its format metadata)."""
    path = Path(path)
    meta = check_safetensors_file(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is a safetensors file but not a StableDub checkpoint (no "
                              f"format={FORMAT!r} metadata). To start from Stable Diffusion 1.5 weights use "
                              "python -m stabledub_core init (stabledub_core.models.weights.init_from_sd15) instead")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path.name} has checkpoint format version {meta.get('format_version')!r}; this "
                              f"code reads version {FORMAT_VERSION!r}: update ComfyUI-StableDub")
    try:
        return StableDubConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path.name} has an unreadable config in its metadata: {err!r}") from None


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_state(expected: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise a :class:`CheckpointError` listing missing names, unexpected names and shape mismatches.

    Args:
        expected: the model's stored state dict.
        found: name -> shape in the file.
        where: the file name for the message.
    """
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    shapes = [f"{n}: file {tuple(found[n])} vs model {tuple(expected[n].shape)}"
              for n in sorted(expected.keys() & found.keys()) if tuple(found[n]) != tuple(expected[n].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors: {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_describe(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: " + "; ".join(shapes[:8]))
    if problems:
        raise CheckpointError(f"{where} does not match the model its config describes:\n  " + "\n  ".join(problems))


def check_finite_weights(named_tensors, where: str, note: str = "") -> None:
    """Refuse weights holding NaN or infinite values (a corrupt file or a diverged training run would otherwise dub
    every mouth as a black box).

    Args:
        named_tensors: ``(name, tensor)`` pairs, e.g. ``model.state_dict().items()``.
        where: The file name, for the message.
        note: Appended to the count (e.g. `` after conversion to float16``).

    Raises:
        NonFiniteWeightsError: Naming the first bad tensor.
    """
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            advice = ("load it in float32" if note else
                      "the file is corrupt or its training diverged: use another checkpoint")
            raise NonFiniteWeightsError(f"{where}: tensor {name!r} holds {nan} NaN and {inf} infinite value(s)"
                                        f"{note}; {advice}")


def load_checkpoint(path, device=None, dtype=None, expect_preset: str | None = None, vae_path=None,
                    wav2vec2_path=None):
    """Load a StableDub checkpoint.

    Args:
        path: the ``.safetensors`` checkpoint.
        device: where to put the model (default CPU).
        dtype: floating dtype of the model (default: as stored, float32 for new models).
        expect_preset: if given, a checkpoint of another preset is an error.
        vae_path: SD VAE weights (single file or diffusers folder) when the checkpoint does not hold the VAE.
        wav2vec2_path: local wav2vec2 folder when the checkpoint uses the wav2vec2 audio encoder.

    Returns:
        the ``StableDub`` model in eval mode.
    """
    path = Path(path)
    config = read_checkpoint_config(path)
    if expect_preset is not None and config.preset != expect_preset:
        raise CheckpointError(f"{path.name} is a {config.preset!r} checkpoint but a {expect_preset!r} one was "
                              "expected: pick a checkpoint made for that preset")
    parts = {}
    if config.audio.kind == "wav2vec2":
        if wav2vec2_path is None:
            raise CheckpointError(f"{path.name} uses the wav2vec2 audio encoder, whose backbone is not stored in "
                                  "the checkpoint: pass wav2vec2_path=<local wav2vec2 folder>")
        parts["audio_encoder"] = Wav2Vec2AudioEncoder.from_folder(wav2vec2_path, config.audio)
    if not config.vae.in_checkpoint and vae_path is None:
        raise CheckpointError(f"{path.name} does not store the VAE: pass vae_path=<SD 1.5 single file or "
                              "diffusers folder>")
    with torch.device("meta"):  # the big parts get every tensor from the file: skip their random init
        parts["unet"] = StableDubUNet(config.unet)
        parts["habit"] = LipHabitModulation(config.habit, config.audio.feature_size)
    model = StableDub.from_config(config, **parts)
    expected = stored_state_dict(model)
    with safe_open(str(path), framework="pt") as fh:
        found = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
        check_state(expected, found, path.name)
        state = {name: fh.get_tensor(name) for name in found}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    leftover = [n for n in missing if n in expected] + list(unexpected)
    leftover += [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:  # cannot happen after check_state; guards against silent partial loads
        raise CheckpointError(f"{path.name}: tensors not loaded: {_describe(set(leftover))}")
    if not config.vae.in_checkpoint:
        load_sd_vae(model.vae, vae_path, config.vae)
    check_finite_weights(model.state_dict().items(), path.name)
    model = model.to(device=device or "cpu", dtype=dtype).eval()
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        check_finite_weights(model.state_dict().items(), path.name, f" after conversion to {dtype}")
    return model
