"""Offline metrics of a reaction reward model: ranking (AUROC) and calibration (ECE, reliability bins)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative
    (ties count half), computed from ranks (Mann–Whitney U)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs at least one positive and one negative label")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_predicted: float
    observed_rate: float


def reliability_bins(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width probability bins with their mean prediction and observed positive rate (empty bins omitted)."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(labels, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        if members.any():
            out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), int(members.sum()),
                                      float(p[members].mean()), float(y[members].mean())))
    return out


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE: Σ_b (n_b / n)·|mean predicted_b − observed rate_b| over equal-width bins."""
    found = reliability_bins(probabilities, labels, bins)
    n = sum(b.count for b in found)
    return float(sum(b.count / n * abs(b.mean_predicted - b.observed_rate) for b in found))
