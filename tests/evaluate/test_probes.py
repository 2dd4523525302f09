"""Linear probes on features whose answer is known: out-of-group R^2, nearest-centroid accuracy, distance ratio."""

import numpy as np
import pytest

from stabledub_core.errors import InvalidInputError
from stabledub_core.evaluate.probes import centroid_accuracy, relative_spread, ridge_r2, within_between_ratio


@pytest.fixture
def grouped():
    """12 groups of 2 samples: per group two targets; features = a random linear map of them plus noise."""
    rng = np.random.default_rng(0)
    targets = np.repeat(rng.normal(size=(12, 2)), 2, axis=0)  # (24, 2), both samples of a group share them
    groups = np.repeat(np.arange(12), 2)
    features = targets @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(24, 6))
    return features, targets, groups, rng


def test_linearly_encoded_targets_are_read_out_of_group(grouped):
    features, targets, groups, _ = grouped
    assert np.all(ridge_r2(features, targets, groups, alpha=0.1) > 0.9)


def test_features_without_the_targets_score_no_better_than_the_mean(grouped):
    _, targets, groups, rng = grouped
    noise = rng.normal(size=(24, 6))
    assert np.all(ridge_r2(noise, targets, groups) < 0.2)
    # a constant target has no R^2
    assert np.isnan(ridge_r2(noise, np.ones(24), groups)[0])


def test_a_probe_never_sees_the_group_it_scores(grouped):
    # features that identify the group but carry no target: a probe fitted on the same group would score ~1
    _, targets, groups, _ = grouped
    one_hot = np.eye(12)[groups]
    assert ridge_r2(one_hot, targets, groups, alpha=1e-3).max() < 0.2


def test_separated_classes_are_recognised_and_mixed_ones_are_not():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array(["wide", "pucker", "mumbler"]), 6)
    groups = np.repeat(np.arange(9), 2)
    centres = {"wide": (5, 0), "pucker": (0, 5), "mumbler": (-5, -5)}
    separated = np.array([centres[a] for a in labels]) + 0.3 * rng.normal(size=(18, 2))
    assert centroid_accuracy(separated, labels, groups) == 1.0
    assert centroid_accuracy(rng.normal(size=(18, 2)), labels, groups) < 0.75


def test_the_distance_ratio_is_small_for_tight_groups_and_about_one_without_groups(grouped):
    features, _, groups, rng = grouped
    assert within_between_ratio(features, groups) < 0.2
    assert 0.8 < within_between_ratio(rng.normal(size=(24, 6)), groups) < 1.2


def test_the_relative_spread_is_the_spread_over_the_size_of_the_mean():
    assert relative_spread(np.ones((3, 4))) == 0
    # two samples at (1, 1) +- (0.1, 0): std (0.1, 0), mean (1, 1)
    assert relative_spread(np.array([[1.1, 1.0], [0.9, 1.0]])) == pytest.approx(0.1 / np.sqrt(2))


def test_bad_probe_inputs_are_clear_errors():
    with pytest.raises(InvalidInputError, match="at least 3 groups"):
        ridge_r2(np.ones((4, 2)), np.ones(4), np.array([0, 0, 1, 1]))
    with pytest.raises(InvalidInputError, match=r"\(N, D\)"):
        centroid_accuracy(np.ones(4), np.ones(4), np.arange(4))
    with pytest.raises(InvalidInputError, match="two or more per group"):
        within_between_ratio(np.ones((4, 2)), np.arange(4))
