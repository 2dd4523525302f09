"""Initialise StableDub from Stable Diffusion 1.5 weights, with a written report of what happened to every tensor.

Sources (no hub access; every config is built in code):

- an original single-file ``.safetensors`` (LDM names: ``model.diffusion_model.*`` U-Net, ``first_stage_model.*``
  VAE, ``cond_stage_model.*`` text encoder);
- a diffusers folder (``unet/diffusion_pytorch_model.safetensors`` and ``vae/``).

The U-Net's LDM names are mapped to diffusers names by :func:`ldm_to_diffusers_unet_key` (our own mapping, tested
against diffusers' ``convert_ldm_unet_checkpoint``); StableDub's U-Net mirrors diffusers' names for every layer kept
from SD. Then, for every tensor of the target U-Net:

- same name and shape in SD -> copied (1x1 conv <-> linear projections are reshaped);
- ``conv_in.weight``: SD's 4 input channels are copied into the first 4 of our 13, the other 9 are zero;
- no SD tensor -> new (kept as the module initialised it; the report says "zeros" or "module default init");
- shape mismatch -> kept as initialised and reported with both shapes.

SD tensors that are not used are reported with the reason (self-attention replaced by spatial Mamba, text encoder
removed, ...). The target is then loaded with ``load_state_dict(strict=True)``: nothing is silently dropped.
Pickle files are refused (convert them to safetensors).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from stabledub_core.errors import CheckpointError, WeightsNotFoundError
from stabledub_core.models.checkpoint import read_checkpoint_config
from stabledub_core.models.safetensors_io import read_safetensors, safetensors_keys
from stabledub_core.models.vae import LDM_VAE_PREFIX, load_sd_vae

LDM_UNET_PREFIX = "model.diffusion_model."

# ---------------------------------------------------------------------------------------- LDM -> diffusers names

RESNET_SUFFIXES = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
TOP_LEVEL = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
MID_BLOCK = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}


def _resnet(prefix: str, rest: str) -> str:
    for old, new in RESNET_SUFFIXES.items():
        if rest.startswith(old + "."):
            return f"{prefix}.{new}{rest[len(old):]}"
    raise KeyError(rest)


def ldm_to_diffusers_unet_key(key: str, layers_per_block: int) -> str:
    """Map one original-LDM U-Net name (without ``model.diffusion_model.``) to its diffusers name.

    Args:
        key: e.g. ``input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``.
        layers_per_block: the U-Net's ``layers_per_block`` (2 for SD 1.5).

    Returns:
        e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``.

    Raises:
        KeyError: ``key`` is not a U-Net name this mapping knows.
    """
    for old, new in TOP_LEVEL.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    stride = layers_per_block + 1
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, sub, rest = int(m[1]), m[2], m[3]
        block, layer = divmod(i - 1, stride)
        if sub == "0" and rest.startswith("op."):
            return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
        if sub == "0":
            return _resnet(f"down_blocks.{block}.resnets.{layer}", rest)
        return f"down_blocks.{block}.attentions.{layer}.{rest}"
    m = re.fullmatch(r"middle_block\.(\d)\.(.+)", key)
    if m:
        target = f"mid_block.{MID_BLOCK[m[1]]}"
        return _resnet(target, m[2]) if "resnets" in target else f"{target}.{m[2]}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        block, layer = divmod(int(m[1]), stride)
        sub, rest = m[2], m[3]
        if sub == "0":
            return _resnet(f"up_blocks.{block}.resnets.{layer}", rest)
        if rest.startswith("conv."):
            return f"up_blocks.{block}.upsamplers.0.{rest}"
        return f"up_blocks.{block}.attentions.{layer}.{rest}"
    raise KeyError(key)


def ldm_unet_to_diffusers(tensors: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename every ``model.diffusion_model.*`` tensor of an LDM checkpoint to diffusers names.

    Args:
        tensors: the LDM tensors (other prefixes are ignored).
        layers_per_block: the U-Net's ``layers_per_block``.
    """
    out = {}
    for key, value in tensors.items():
        if key.startswith(LDM_UNET_PREFIX):
            try:
                out[ldm_to_diffusers_unet_key(key[len(LDM_UNET_PREFIX):], layers_per_block)] = value
            except KeyError:
                raise CheckpointError(f"unknown U-Net tensor {key!r}: is this an SD 1.x checkpoint?") from None
    return out


# ------------------------------------------------------------------------------------------------------- the report

# Why an SD tensor is not used (first matching pattern wins).
SKIP_REASONS: list[tuple[str, str]] = [
    (r"(^|\.)attn1\.", "self-attention replaced by spatial Mamba"),
    (r"(^|\.)norm1\.", "pre-norm of the removed self-attention"),
    (r"^cond_stage_model\.", "text encoder removed (StableDub is conditioned on audio, not text)"),
    (r"^first_stage_model\.", "VAE tensors (not requested: load_vae=False)"),
    (r"^model_ema\.", "EMA copy not used (the non-EMA weights are loaded)"),
    (r"^(alphas_cumprod|alphas_cumprod_prev|betas|log_one_minus_alphas_cumprod|posterior_.*|sqrt_.*|"
     r"model_ema\.decay|model_ema\.num_updates)$", "noise-schedule buffer (schedulers are configured in code)"),
]


FOLDER_SKIPS = {"text_encoder/": "text encoder removed (StableDub is conditioned on audio, not text)",
                "tokenizer/": "text tokenizer (text encoder removed)",
                "safety_checker/": "image safety checker (not part of the model)"}


def skip_reason(name: str) -> str:
    """Why an SD tensor ``name`` has no place in StableDub."""
    for pattern, reason in SKIP_REASONS:
        if re.search(pattern, name):
            return reason
    return "no tensor of this name in the StableDub U-Net"


@dataclass
class WeightInitReport:
    """What initialisation from SD did to every tensor.

    Attributes:
        source: the file or folder the weights came from.
        copied: target names copied unchanged from SD.
        partial: (name, note) for tensors partly copied (conv_in) or reshaped.
        new: (name, init) for target tensors with no SD counterpart.
        mismatched: (name, note) for names present in both with different shapes (kept as initialised).
        skipped: (SD name, reason) for SD tensors not used.
        vae: one line on the VAE.
    """

    source: str
    origin: str = "SD 1.5"  # or "StableDub checkpoint" (init_from_checkpoint)
    copied: list[str] = field(default_factory=list)
    partial: list[tuple[str, str]] = field(default_factory=list)
    new: list[tuple[str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    vae: str = "not loaded"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_text(self, examples: int = 3) -> str:
        """A readable summary: counts, and per reason the number of tensors with a few example names."""
        lines = [f"{self.origin} initialisation from {self.source}",
                 f"  copied: {len(self.copied)} tensors",
                 *(f"  partial: {name}: {note}" for name, note in self.partial),
                 f"  new: {len(self.new)} tensors"]
        lines += _grouped(self.new, examples, "    init:")
        lines.append(f"  shape mismatches (kept as initialised): {len(self.mismatched)}")
        lines += [f"    {name}: {note}" for name, note in self.mismatched]
        lines.append(f"  skipped source tensors: {len(self.skipped)}")
        lines += _grouped(self.skipped, examples, "    ")
        lines.append(f"  VAE: {self.vae}")
        return "\n".join(lines)


def _grouped(pairs: list[tuple[str, str]], examples: int, label: str) -> list[str]:
    groups: dict[str, list[str]] = {}
    for name, why in pairs:
        groups.setdefault(why, []).append(name)
    return [f"{label} {why}: {len(names)} (e.g. {', '.join(names[:examples])})" for why, names in groups.items()]


# ---------------------------------------------------------------------------------------------- copying into a U-Net


def init_unet_from_sd(unet: nn.Module, sd_unet: dict[str, torch.Tensor], report: WeightInitReport,
                      extra_skipped=()) -> WeightInitReport:
    """Copy SD's U-Net tensors (diffusers names) into ``unet`` and fill ``report``.

    Args:
        unet: the target (StableDub's U-Net, or any module with diffusers-style names).
        sd_unet: SD's U-Net tensors with diffusers names.
        report: the report to fill.
        extra_skipped: further SD names (non-U-Net parts of the file) to report as skipped.

    Returns:
        ``report``.
    """
    target = unet.state_dict()
    state = dict(target)
    for name, current in target.items():
        source = sd_unet.get(name)
        if source is None:
            init = "zeros" if not current.is_meta and not current.any() else "module default init"
            report.new.append((name, init))
        elif name == "conv_in.weight" and source.shape[1] < current.shape[1] and \
                source.shape[0] == current.shape[0] and source.shape[2:] == current.shape[2:]:
            weight = torch.zeros_like(current)
            weight[:, :source.shape[1]] = source
            state[name] = weight
            report.partial.append((name, f"SD's {source.shape[1]} input channels copied into channels "
                                         f"0-{source.shape[1] - 1}; channels {source.shape[1]}-{current.shape[1] - 1} "
                                         "zero"))
        elif source.shape == current.shape:
            state[name] = source.to(current.dtype)
            report.copied.append(name)
        elif source.numel() == current.numel() and source.squeeze().shape == current.squeeze().shape:
            state[name] = source.reshape(current.shape).to(current.dtype)
            report.partial.append((name, f"reshaped {tuple(source.shape)} -> {tuple(current.shape)} "
                                         "(1x1 convolution <-> linear)"))
        else:
            report.mismatched.append((name, f"SD {tuple(source.shape)} vs StableDub {tuple(current.shape)}"))
    for name in sd_unet:
        if name not in target:
            report.skipped.append((f"unet:{name}", skip_reason(name)))
    report.skipped += [(name, skip_reason(name)) for name in extra_skipped]
    unet.load_state_dict(state, strict=True)
    return report


# ------------------------------------------------------------------------------------------------------ the sources


def _load_single_file(path: Path, layers_per_block: int):
    """The U-Net tensors (diffusers names) of an original single file, and the names of everything else."""
    keys = safetensors_keys(path)
    unet_names = [k for k in keys if k.startswith(LDM_UNET_PREFIX)]
    if not unet_names:
        raise CheckpointError(f"{path} holds no 'model.diffusion_model.*' tensors: not an original SD 1.x "
                              "single-file checkpoint")
    unet = ldm_unet_to_diffusers(read_safetensors(path, unet_names), layers_per_block)
    return unet, [k for k in keys if not k.startswith(LDM_UNET_PREFIX)]


def _load_diffusers_folder(folder: Path):
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not unet_file.is_file():
        found = sorted(p.name for p in (folder / "unet").glob("*")) if (folder / "unet").is_dir() else []
        raise WeightsNotFoundError(f"no {unet_file.relative_to(folder)} in {folder} (found: {found or 'nothing'}); "
                                   "give a diffusers SD 1.5 folder with safetensors weights")
    return read_safetensors(unet_file)


def init_from_sd15(model: nn.Module, source, load_vae: bool = True) -> WeightInitReport:
    """Initialise a StableDub model (``.unet``, ``.vae``) from SD 1.5 weights.

    Args:
        model: a :class:`~stabledub_core.models.stabledub.StableDub` (or anything with ``.unet``/``.vae``/``.config``).
        source: an original single-file ``.safetensors`` or a diffusers folder.
        load_vae: also load SD's VAE into ``model.vae``.

    Returns:
        the report (render it with ``.to_text()`` or ``.to_json()``).
    """
    source = Path(source)
    if not source.exists():
        raise WeightsNotFoundError(f"SD 1.5 weights not found: {source} (give an original single-file .safetensors "
                                   "or a diffusers folder)")
    report = WeightInitReport(source=str(source))
    if source.is_dir():
        unused = [f"{d}/" for d in ("text_encoder", "tokenizer", "safety_checker") if (source / d).is_dir()]
        init_unet_from_sd(model.unet, _load_diffusers_folder(source), report)
        report.skipped += [(name, "folder not used: " + FOLDER_SKIPS[name]) for name in unused]
    else:
        sd_unet, others = _load_single_file(source, model.config.unet.layers_per_block)
        vae_names = [k for k in others if k.startswith(LDM_VAE_PREFIX)]
        rest = [k for k in others if not k.startswith(LDM_VAE_PREFIX)]
        init_unet_from_sd(model.unet, sd_unet, report, extra_skipped=rest if load_vae else others)
        if not vae_names and load_vae:
            raise CheckpointError(f"{source} holds no VAE (first_stage_model.*); pass load_vae=False and load "
                                  "the VAE from its own file")
    if load_vae:
        report.vae = load_sd_vae(model.vae, source, model.config.vae)
    return report


def init_from_checkpoint(model: nn.Module, source) -> WeightInitReport:
    """Copy into ``model`` every tensor of a StableDub checkpoint whose name and shape match; the rest keep their
    initialisation. This starts a model of a changed config (``init --set``, e.g. the ablations'
    ``unet.mixer=attention``) from a trained one (e.g. its trained VAE).

    Args:
        model: the ``StableDub`` to initialise (its config may differ from the checkpoint's).
        source: the StableDub ``.safetensors`` checkpoint.

    Returns:
        the report: copied, new (kept as initialised), mismatched shapes, checkpoint tensors left out.
    """
    read_checkpoint_config(source)  # validates the file and its format
    report = WeightInitReport(source=str(source), origin="StableDub checkpoint")
    target = model.state_dict()
    with safe_open(str(source), framework="pt") as fh:
        names = set(fh.keys())
        for name, tensor in target.items():
            if name not in names:
                report.new.append((name, "initialised"))
                continue
            stored = fh.get_tensor(name)
            if tuple(stored.shape) != tuple(tensor.shape):
                report.mismatched.append((name, f"{tuple(stored.shape)} in the checkpoint, {tuple(tensor.shape)} "
                                                "here"))
                continue
            with torch.no_grad():
                tensor.copy_(stored.to(tensor.dtype))
            report.copied.append(name)
    report.skipped = [(name, "not in this config") for name in sorted(names - set(target))]
    report.vae = "copied" if any(n.startswith("vae.") for n in report.copied) else "as initialised"
    return report
