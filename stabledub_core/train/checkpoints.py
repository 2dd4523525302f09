"""Resumable training checkpoints: folders written atomically, the last K kept, ``--resume latest|PATH``.

A run's folder::

    OUTPUT_DIR/train_config.json         the training options (``train.config``)
    OUTPUT_DIR/model_config.json         the StableDubConfig being trained
    OUTPUT_DIR/train_log.csv, loss.png   the log and its curve (``train.logs``)
    OUTPUT_DIR/checkpoints/checkpoint-00000200/
        model.safetensors                every weight of the model (Accelerate ``save_state``)
        optimizer.bin, scheduler/ema     optimizer, LR schedule and EMA states (registered objects)
        random_states_<rank>.pkl         every process's RNG states
        ema.safetensors                  the EMA weights by name (for ``train export``), when EMA is on
        trainer_state.json               step (the data position: the order is a function of the step), epoch

A checkpoint is written to ``.tmp-checkpoint-…`` and renamed once complete, so a crash (even SIGKILL) during the
write leaves the previous checkpoints intact and no folder that looks complete; stale temporary folders are removed
by the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from stabledub_core.errors import CheckpointError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"checkpoint-{step:08d}"


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _NAME.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_resume(output_dir, resume: str) -> Path:
    """The checkpoint folder ``--resume`` names: ``latest`` (the run's newest) or a path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {str(Path(output_dir) / CHECKPOINTS)!r}; "
                                  "start without --resume")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint folder (no {STATE_FILE}); give "
                              "`latest` or a folder like OUTPUT_DIR/checkpoints/checkpoint-00000200")
    return path


def read_state(path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def temporary_dir(output_dir, step: int) -> Path:
    final = checkpoint_dir(output_dir, step)
    return final.with_name(f".tmp-{final.name}")


def write_state(folder: Path, state: dict) -> None:
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))


def commit(output_dir, step: int, keep: int) -> Path:
    """Rename the finished temporary folder of ``step`` into place and drop all but the last ``keep`` (0: all)."""
    tmp, final = temporary_dir(output_dir, step), checkpoint_dir(output_dir, step)
    if final.exists():  # a resumed run writing the step it resumed from again
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def clean_temporary(output_dir) -> None:
    """Remove temporary folders left by a crash during a checkpoint write."""
    root = Path(output_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
