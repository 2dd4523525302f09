"""Training logs: a CSV row per logged step, an optional TensorBoard run, and a PNG loss curve.

``OUTPUT_DIR/train_log.csv`` has the columns ``step, epoch, loss, <the stage's loss terms>, lr, exposure_rate,
samples_per_s, elapsed_s``. A resumed run first drops the rows after the checkpoint's step, so the file reads as one
uninterrupted run. ``loss.png`` is redrawn at each checkpoint and at the end (matplotlib, Agg backend).
"""

from __future__ import annotations

import csv
from pathlib import Path

LOG_FILE = "train_log.csv"
CURVE_FILE = "loss.png"


class TrainLog:
    """Appends rows to ``OUTPUT_DIR/train_log.csv`` (main process only).

    Args:
        output_dir: the run's folder.
        resume_step: the step training continues from; rows after it are removed (None: a new log).
    """

    def __init__(self, output_dir, resume_step: int | None = None):
        self.path = Path(output_dir) / LOG_FILE
        self.columns: list[str] | None = None
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            rows = read_log(self.path)
            kept = [row for row in rows if int(row["step"]) <= resume_step]
            if rows:
                self.columns = list(rows[0])
                self._rewrite(kept)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def write(self, row: dict) -> None:
        new = not self.path.is_file()
        if self.columns is None:
            self.columns = list(row)
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.columns})


def read_log(path) -> list[dict]:
    """The rows of a ``train_log.csv``."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def plot_losses(log_path, png_path, title: str = "") -> Path | None:
    """Draw the loss columns of a log against the step into ``png_path`` (None when the log is empty)."""
    import matplotlib  # local: the training extra; ComfyUI installs do not need it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read_log(log_path)
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    names = [c for c in rows[0] if c == "loss" or c.startswith("loss_")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name in names:
        ax.plot(steps, [float(r[name]) for r in rows], label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png_path)
    return Path(png_path)
