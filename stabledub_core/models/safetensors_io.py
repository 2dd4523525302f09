"""Reading safetensors files safely: complete-file checks, pickle refusal, tensors by name.

Every weight file the project reads (StableDub checkpoints, SD 1.5 single files, diffusers folders' weights) goes
through :func:`check_safetensors_file` first, so a truncated download, a file that is not safetensors, or a pickle
(``.ckpt``/``.pt``/``.bin``... which can run code when loaded) is refused with a message that says what to do.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stabledub_core.errors import CheckpointError, PickleRefusedError, WeightsNotFoundError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


def pickle_refused(path: Path, why: str) -> PickleRefusedError:
    """The error for a pickle file given where safetensors are required (``why``: how it was recognised)."""
    return PickleRefusedError(
        f"{path.name} looks like a pickle file ({why}); pickles can run arbitrary code when loaded and are refused. "
        "Convert it to .safetensors first, e.g. in Python: safetensors.torch.save_file("
        "torch.load(path, weights_only=True)['state_dict'], 'model.safetensors')")


def looks_like_pickle(head: bytes) -> bool:
    """torch.save writes a zip archive ("PK\\x03\\x04"); older pickles start with the PROTO opcode 0x80."""
    return head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and head[1] <= 5)


def check_safetensors_file(path) -> dict[str, str]:
    """Check that ``path`` is a complete safetensors file and return its metadata.

    Args:
        path: the file.

    Returns:
        the ``__metadata__`` dict (empty when there is none).

    Raises:
        WeightsNotFoundError: no such file.
        PickleRefusedError: a pickle suffix, or pickle/zip content.
        CheckpointError: not safetensors, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refused(path, f"suffix {path.suffix}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        header_len = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        header_bytes = fh.read(min(header_len, size))
    try:
        header = json.loads(header_bytes)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")  # caught just below
    except ValueError as err:  # includes JSONDecodeError and UnicodeDecodeError
        if looks_like_pickle(raw):
            raise pickle_refused(path, "zip/pickle content") from None
        if 8 + header_len > size and header_bytes.startswith(b"{"):
            raise CheckpointError(f"{path} is truncated: its header needs {8 + header_len} bytes, the file has "
                                  f"{size}; re-download or re-save it") from None
        raise CheckpointError(f"{path} is not a safetensors file ({type(err).__name__}: {err})") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path} is truncated: its tensors need {8 + header_len + end} bytes, the file has "
                              f"{size}; re-download or re-save it")
    return dict(header.get("__metadata__") or {})


def read_safetensors(path, names=None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read tensors from a checked safetensors file.

    Args:
        path: the file.
        names: the tensor names to read (default all); names not in the file are an error.
        device: where to put the tensors.
    """
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
    check_safetensors_file(path)
    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary file in the same folder, then ``os.replace``.

    Args:
        tensors: name -> tensor (contiguous, on the CPU, no shared storage).
        path: the file to write (its folder is created).
        metadata: string metadata of the file.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
