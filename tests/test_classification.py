import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from corll.classification import auroc, expected_calibration_error, reliability_bins


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.05).astype(int)  # rare positives, as reactions are
    labels[:2] = [1, 0]
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # rounded: many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc([0.1, 0.2], [0, 0])


def test_ece_and_bins_match_hand_computation():
    probabilities = [0.05, 0.05, 0.95, 0.95, 0.55]
    labels = [0, 1, 1, 1, 0]
    bins = reliability_bins(probabilities, labels, bins=10)
    assert [(b.count, b.mean_predicted, b.observed_rate) for b in bins] == [
        (2, pytest.approx(0.05), 0.5), (1, pytest.approx(0.55), 0.0), (2, pytest.approx(0.95), 1.0)]
    # (2·0.45 + 1·0.55 + 2·0.05) / 5 = 0.31
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.31)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
