"""The latent cache: every crop of a preprocessed folder encoded once by the VAE, so training does not re-encode.

``python -m stabledub_core train cache-latents DATA --init CKPT`` writes, next to the shards::

    DATA/latents/<fingerprint>/cache.json                 the VAE's fingerprint, latent shape, dtype, shards done
    DATA/latents/<fingerprint>/<shard>/latents.npy        (N, C, h, w) float16 scaled latents of the crops
    DATA/latents/<fingerprint>/<shard>/masked_latents.npy (N, C, h, w) float16 latents of the crops with Mu masked

``fingerprint`` identifies the VAE's weights (:func:`vae_fingerprint`), so a cache is never used with another VAE
(the tiny preset's VAE is trained by ``train vae``: a new VAE means a new cache). Latents are the mode of the
posterior, exactly what ``models.vae.encode_frames`` gives inference; ``masked_latents`` encode the crop with every
pixel where Mu > 0 set to 0, i.e. the masked input with no exposed patch — what stage 2 (no exposure) and stage 1
once the exposure rate reaches 0 use. A sample with exposed patches has a masked image the cache cannot know, so its
masked latent is encoded in the loop (``train.objectives``).

Each shard is written to a temporary folder and renamed; ``cache.json`` is rewritten atomically after each shard, so
an interrupted run resumes at the next shard. Storage: ``2 * C * h * w * 2`` bytes a frame (4 KB for ``tiny``, 64 KB
for ``sd15``) against ``S * S * 3`` for the crops.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stabledub_core.errors import DatasetNotFoundError
from stabledub_core.models.vae import encode_frames
from stabledub_core.train.preprocess import MANIFEST, SHARDS

CACHE = "latents"
CACHE_FILE = "cache.json"
NAMES = ("latents", "masked_latents")


def vae_fingerprint(vae) -> str:
    """A short hash of the VAE's weights (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_dir(root, fingerprint: str) -> Path:
    return Path(root) / CACHE / fingerprint


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _masked_crops(crops: np.ndarray, mu: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Crops ``(n, S, S, 3)`` with every pixel where the frame's span's Mu > 0 set to 0."""
    hide = (mu[spans] > 0)[..., None]  # (n, S, S, 1)
    return np.where(hide, 0, crops).astype(np.uint8)


def _frame_spans(manifest: dict, shard: str, frames: int, span_length: int) -> np.ndarray:
    """``(N,)`` span row in ``mu.npy`` of every frame of a shard."""
    spans = np.zeros(frames, np.int64)
    for clip in manifest["clips"]:
        if clip["shard"] == shard:
            k = np.arange(int(clip["frames"]))
            spans[int(clip["frame_offset"]) + k] = int(clip["span_offset"]) + k // span_length
    return spans


def _encode(vae, images: np.ndarray, batch: int) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(255)  # (n, 3, S, S)
    return encode_frames(vae, x, chunk=batch).float().cpu().numpy().astype(np.float16)


def cache_latents(root, vae, batch: int = 16,
                  on_progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Encode every shard of a preprocessed folder (skips shards an earlier run finished).

    Args:
        root: ``train preprocess``'s OUT_DIR.
        vae: the (frozen) ``AutoencoderKL`` training will use.
        batch: frames per VAE call.
        on_progress: called as ``on_progress(done, total, shard)`` after each shard.

    Returns:
        the cache folder.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetNotFoundError(f"no {MANIFEST} in {str(root)!r}: give the OUT_DIR of `train preprocess`")
    manifest = json.loads(path.read_text())
    span_length = int(manifest["settings"].get("span_length", 16))
    fingerprint = vae_fingerprint(vae)
    out = cache_dir(root, fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / CACHE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {
        "fingerprint": fingerprint, "dtype": "float16", "shards": []}
    shards = [s["name"] for s in manifest["shards"]]
    for stale in out.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    was_training = vae.training
    vae.eval()
    try:
        for done, shard in enumerate(shards, 1):
            if shard not in state["shards"]:
                crops = np.load(root / SHARDS / shard / "crops.npy", mmap_mode="r")
                mu = np.load(root / SHARDS / shard / "mu.npy", mmap_mode="r")
                spans = _frame_spans(manifest, shard, len(crops), span_length)
                tmp = out / f".tmp-{shard}"
                tmp.mkdir()
                parts = {name: [] for name in NAMES}
                for start in range(0, len(crops), batch):
                    chunk = np.asarray(crops[start:start + batch])
                    parts["latents"].append(_encode(vae, chunk, batch))
                    parts["masked_latents"].append(_encode(vae, _masked_crops(chunk, mu, spans[start:start + batch]),
                                                           batch))
                for name in NAMES:
                    np.save(tmp / f"{name}.npy", np.concatenate(parts[name]))
                os.replace(tmp, out / shard)
                state["shards"].append(shard)
                state["latent_shape"] = list(parts["latents"][0].shape[1:])
                _write_json(state_path, state)
            if on_progress is not None:
                on_progress(done, len(shards), shard)
    finally:
        vae.train(was_training)
    return out


def open_cache(root, fingerprint: str, shards) -> Path:
    """The cache folder for this VAE, checked to hold every shard (else: what command to run)."""
    folder = cache_dir(root, fingerprint)
    state_path = folder / CACHE_FILE
    done = set(json.loads(state_path.read_text())["shards"]) if state_path.is_file() else set()
    missing = sorted(set(shards) - done)
    if missing:
        raise DatasetNotFoundError(
            f"no complete latent cache for this VAE (fingerprint {fingerprint}) in {str(Path(root) / CACHE)!r} "
            f"({len(missing)} shard(s) missing): run `python -m stabledub_core train cache-latents {root}` with the "
            "same --init/--vae as training, or train without --latent-cache")
    return folder
