"""StableDub checkpoints: safetensors files with the model config in their metadata.

File layout::

    metadata: {"format": "stabledub-checkpoint", "format_version": "1", "config": StableDubConfig JSON,
               "parts": "unet,habit,audio_encoder[,vae]"}
    tensors:  "<part>.<parameter name>" for every stored part, e.g. "unet.conv_in.weight", "habit.lam"

Which parts are stored is decided by the config, not by the preset name (:func:`stored_state_dict`):

- ``unet`` and ``habit``: always (the trained network).
- ``audio_encoder``: everything except the encoder's ``external_prefixes`` (the frozen wav2vec2 backbone, which
  comes from its own folder; only the learned layer-mixing weights are stored). The built-in mel encoder is stored
  whole.
- ``vae``: only when ``VAEConfig.in_checkpoint`` is True (the ``tiny`` preset's VAE, so the demo is one file);
  otherwise the VAE comes from its own file (SD 1.5's VAE, see ``models.weights``).

Loading validates the format, the preset (``expect_preset``), and every name and shape, and says exactly what is
wrong. Pickle files (.ckpt/.pt/.pth/.bin/.pkl) are refused: they can run code when loaded.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch

from .config import StableDubConfig

FORMAT = "stabledub-checkpoint"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
PARTS = ("unet", "habit", "audio_encoder", "vae")


class CheckpointError(ValueError):
    """A checkpoint or weight file cannot be used; the message says why and what to do."""


class PickleRefusedError(CheckpointError):
    """A pickle-based file was given where a safetensors file is required."""


def _refuse_pickle(path: Path) -> None:
    message = (f"{path.name} looks like a pickle file ({{why}}); pickles can run arbitrary code when loaded and are "
               "refused. Convert it to .safetensors first, e.g. in Python: "
               "safetensors.torch.save_file(torch.load(path, weights_only=True)['state_dict'], 'model.safetensors')")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleRefusedError(message.format(why=f"suffix {path.suffix}"))
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise PickleRefusedError(message.format(why="zip/pickle content"))


def check_safetensors_file(path) -> dict[str, str]:
    """Check that ``path`` is a complete safetensors file and return its metadata.

    Args:
        path: the file.

    Returns:
        the ``__metadata__`` dict (empty when there is none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    _refuse_pickle(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len <= 0 or 8 + header_len > size:
            raise CheckpointError(f"{path} is not a safetensors file or is truncated: its header claims "
                                  f"{header_len} bytes but the file has {size}")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path} is truncated: tensors need {8 + header_len + end} bytes, the file has {size}; "
                              "re-download or re-save it")
    return dict(header.get("__metadata__") or {})


def read_safetensors(path, names=None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read tensors from a checked safetensors file.

    Args:
        path: the file.
        names: the tensor names to read (default all); names not in the file are an error.
        device: where to put the tensors.
    """
    from safetensors import safe_open

    check_safetensors_file(path)
    with safe_open(str(path), framework="pt", device=str(device)) as fh:
        keys = set(fh.keys())
        wanted = keys if names is None else list(names)
        missing = [n for n in wanted if n not in keys]
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} tensors, e.g. {missing[:5]}")
        return {n: fh.get_tensor(n) for n in wanted}


def safetensors_keys(path) -> list[str]:
    """Names of the tensors in a checked safetensors file."""
    from safetensors import safe_open

    check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())
