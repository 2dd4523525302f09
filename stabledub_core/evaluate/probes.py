"""Linear probes: how much of a known quantity can be read from some features, measured out of sample.

The habit probe (``bench/habit_probe.py``) asks whether the lip-habit vectors ``v`` of the habit module tell the
avatars' habits apart. Samples come in groups (the clips of one avatar); every measure here leaves a whole group out
at a time, so a probe never scores a sample whose avatar it was fitted on.

- :func:`ridge_r2`: leave-one-group-out ridge regression from features to each target; the R^2 of the out-of-group
  predictions against the targets' overall mean (0: no better than the mean; negative: worse).
- :func:`centroid_accuracy`: leave-one-group-out nearest-centroid classification (e.g. the habit archetype).
- :func:`within_between_ratio`: mean distance between samples of the same group over the mean distance between
  samples of different groups (below 1: a group's samples lie closer to each other than to the others).
- :func:`relative_spread`: how much the raw (unstandardised) features vary at all, relative to their mean; no
  groups, no fitting.

The fitted probes standardise the features with the fitted fold's own mean and spread.
"""

from __future__ import annotations

import numpy as np

from stabledub_core.errors import InvalidInputError


def _check(features: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    g = np.asarray(groups)
    if x.ndim != 2 or g.shape != (len(x),):
        raise InvalidInputError(f"features must be (N, D) and groups (N,), got {x.shape} and {g.shape}")
    if len(np.unique(g)) < 3:
        raise InvalidInputError(f"a leave-one-group-out probe needs at least 3 groups, got {len(np.unique(g))}")
    return x, g


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def ridge_r2(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Out-of-group R^2 of a ridge regression from ``features`` to each column of ``targets``.

    Args:
        features: ``(N, D)`` one feature vector per sample.
        targets: ``(N, T)`` the quantities to read (or ``(N,)``).
        groups: ``(N,)`` group label per sample; each group is predicted by a probe fitted on the others.
        alpha: ridge penalty on the standardised features.

    Returns:
        ``(T,)`` R^2 per target (NaN for a target that does not vary).
    """
    x, g = _check(features, groups)
    y = np.asarray(targets, np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if len(y) != len(x):
        raise InvalidInputError(f"{len(x)} feature vectors but {len(y)} targets")
    predicted = np.empty_like(y)
    for group in np.unique(g):
        test = g == group
        xa, xb = _standardise(x[~test], x[test])
        y_mean = y[~test].mean(0)
        gram = xa.T @ xa + alpha * np.eye(x.shape[1])
        weights = np.linalg.solve(gram, xa.T @ (y[~test] - y_mean))  # (D, T)
        predicted[test] = xb @ weights + y_mean
    total = ((y - y.mean(0)) ** 2).sum(0)
    residual = ((y - predicted) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-12, 1.0 - residual / total, np.nan)


def centroid_accuracy(features: np.ndarray, labels, groups: np.ndarray) -> float:
    """Share of samples whose label the nearest class centroid of the other groups' samples gets right."""
    x, g = _check(features, groups)
    labels = np.asarray(labels)
    hits = []
    for group in np.unique(g):
        test = g == group
        xa, xb = _standardise(x[~test], x[test])
        classes = np.unique(labels[~test])
        centroids = np.stack([xa[labels[~test] == c].mean(0) for c in classes])  # (K, D)
        nearest = classes[((xb[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
        hits.extend(nearest == labels[test])
    return float(np.mean(hits))


def within_between_ratio(features: np.ndarray, groups: np.ndarray) -> float:
    """Mean Euclidean distance within groups over the mean distance between groups (features standardised)."""
    x, g = _check(features, groups)
    x, _ = _standardise(x, x)
    distance = np.sqrt(((x[:, None, :] - x[None]) ** 2).sum(-1))  # (N, N)
    same = g[:, None] == g[None]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    if not (same & off_diagonal).any():
        raise InvalidInputError("every group holds one sample: within-group distances need two or more per group")
    return float(distance[same & off_diagonal].mean() / distance[~same].mean())


def relative_spread(features: np.ndarray) -> float:
    """How much the (unstandardised) features vary over the samples: the norm of their per-dimension standard
    deviation over the norm of their mean (near 0: every sample gets nearly the same vector)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise InvalidInputError(f"features must be (N, D), got {x.shape}")
    return float(np.linalg.norm(x.std(0)) / max(np.linalg.norm(x.mean(0)), 1e-12))
