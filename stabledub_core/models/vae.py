"""The VAE: diffusers ``AutoencoderKL`` with SD's layout built in code, SD 1.5 VAE loading, frame <-> latent helpers.

SD's VAE weights come from an original single file (``first_stage_model.*``, converted with diffusers' own
converter) or a diffusers folder (:func:`load_sd_vae`).

Latents are *scaled* (multiplied by ``VAEConfig.scaling_factor``, SD's 0.18215) so they have roughly unit variance,
as the diffusion U-Net expects. Frames are float (N, 3, H, W) in [0, 1]. Encoding and decoding run in chunks of
frames to bound memory on long clips.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stabledub_core.errors import OptionError, VAEInputError, VAEWeightsError, WeightsNotFoundError
from stabledub_core.models.config import VAEConfig
from stabledub_core.models.safetensors_io import read_safetensors, safetensors_keys

LDM_VAE_PREFIX = "first_stage_model."


def vae_diffusers_config(config: VAEConfig) -> dict:
    """The ``AutoencoderKL`` constructor arguments for ``config``."""
    n = len(config.block_out_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(config.block_out_channels),
                layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
                norm_num_groups=config.norm_num_groups, sample_size=config.sample_size,
                scaling_factor=config.scaling_factor)


def build_vae(config: VAEConfig):
    """Build a randomly initialised ``diffusers.AutoencoderKL`` (load SD's weights with :func:`load_sd_vae`).

    Args:
        config: the VAE config (SD 1.5's by default).
    """
    # local: diffusers' AutoencoderKL (and its model registry) takes seconds to import; deferred until a VAE is built
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_diffusers_config(config))


def vae_state_dict_from_ldm(checkpoint: dict, vae) -> dict:
    """Convert original-LDM VAE tensors (``first_stage_model.*``) to diffusers names with diffusers' own converter.

    Args:
        checkpoint: the tensors of an original single-file checkpoint (only ``first_stage_model.*`` are used).
        vae: the target ``AutoencoderKL`` (its config drives the conversion).

    Returns:
        diffusers-named state dict.
    """
    # local: diffusers' single-file loaders take seconds to import and are needed only to convert an SD single file
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_keys = {k: v for k, v in checkpoint.items() if k.startswith(LDM_VAE_PREFIX)}
    if not vae_keys:
        raise VAEWeightsError("the checkpoint holds no VAE tensors (no 'first_stage_model.*' names)")
    return convert_ldm_vae_checkpoint(vae_keys, dict(vae.config))


def load_vae_folder(folder, config: VAEConfig):
    """Load a diffusers VAE folder (``AutoencoderKL.from_pretrained(folder, local_files_only=True)``).

    Args:
        folder: a folder with ``config.json`` + weights, or a diffusers pipeline folder holding ``vae/``.
        config: the expected layout; a different layout is an error.
    """
    from diffusers import AutoencoderKL  # local: slow to import, see build_vae

    folder = Path(folder)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"no diffusers VAE at {folder}: expected config.json (or vae/config.json)")
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    expected = vae_diffusers_config(config)
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        got = vae.config[key]
        got = tuple(got) if isinstance(got, list) else got
        if got != expected[key]:
            raise VAEWeightsError(f"the VAE in {folder} has {key}={got}, the model expects {expected[key]}")
    return vae


def load_sd_vae(vae, source, config: VAEConfig) -> str:
    """Load SD's VAE into ``vae`` from an original single file (``first_stage_model.*``) or a diffusers folder.

    Args:
        vae: the target ``AutoencoderKL``.
        source: single-file ``.safetensors`` or diffusers folder (pipeline folder with ``vae/``, or a VAE folder).
        config: the ``VAEConfig`` the weights must fit.

    Returns:
        a one-line description for the report.
    """
    source = Path(source)
    if source.is_dir():
        state = load_vae_folder(source, config).state_dict()
        what = f"{len(state)} tensors loaded from the diffusers folder {source}"
    else:
        names = [k for k in safetensors_keys(source) if k.startswith(LDM_VAE_PREFIX)]
        state = vae_state_dict_from_ldm(read_safetensors(source, names), vae)
        what = f"{len(state)} tensors converted from {source.name}:first_stage_model.* (diffusers converter)"
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise VAEWeightsError(f"the VAE weights in {source} do not fit the configured VAE: {err}") from None
    return what


def _chunks(n: int, chunk: int):
    if chunk < 1:
        raise OptionError(f"chunk size must be >= 1, got {chunk}")
    return range(0, n, chunk)


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, chunk: int = 8, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames -> scaled latents.

    Args:
        vae: the ``AutoencoderKL``.
        frames: (N, 3, H, W) float in [0, 1], H and W multiples of 2 ** (number of VAE blocks - 1).
        chunk: frames per VAE call.
        sample: sample the latent distribution instead of taking its mean.
        generator: random generator for ``sample=True``.

    Returns:
        (N, latent_channels, H / s, W / s) latents times ``scaling_factor``.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise VAEInputError(f"frames must be (N, 3, H, W) floats in [0, 1], got shape {tuple(frames.shape)}")
    param = next(vae.parameters())
    out = []
    for i in _chunks(frames.shape[0], chunk):
        x = frames[i:i + chunk].to(param.device, param.dtype) * 2 - 1  # (n, 3, H, W) in [-1, 1]
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        out.append(z * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Scaled latents -> frames.

    Args:
        vae: the ``AutoencoderKL``.
        latents: (N, latent_channels, h, w) scaled latents.
        chunk: latents per VAE call.

    Returns:
        (N, 3, h * s, w * s) float in [0, 1].
    """
    return decode_with_grad(vae, latents, chunk)


def decode_with_grad(vae, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """:func:`decode_latents` keeping the autograd graph (a training loss on decoded frames, e.g. the sync loss:
    the gradient flows through the frozen decoder into the latents)."""
    if latents.ndim != 4 or latents.shape[1] != vae.config.latent_channels:
        raise VAEInputError(f"latents must be (N, {vae.config.latent_channels}, h, w), got {tuple(latents.shape)}")
    param = next(vae.parameters())
    out = []
    for i in _chunks(latents.shape[0], chunk):
        z = latents[i:i + chunk].to(param.device, param.dtype) / vae.config.scaling_factor
        out.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)
