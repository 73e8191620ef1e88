import math

import pytest
import torch

from corll.losses import dpo_loss, dpo_margin, sft_nll

t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_dpo_sigmoid_matches_hand_computation():
    # h = (-1 - -1.5) - (-2 - -1.5) = 1.0 ; loss = -log σ(0.1) = log(1 + e^-0.1)
    loss = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-12)
    assert dpo_margin(t(-1.0), t(-2.0), t(-1.5), t(-1.5)).item() == pytest.approx(1.0)


def test_dpo_is_ln2_when_policy_equals_reference():
    logps = t(-3.0, -7.5), t(-4.0, -2.5)
    loss = dpo_loss(*logps, *logps, beta=0.1)
    assert torch.allclose(loss, torch.full_like(loss, math.log(2)))


def test_conservative_dpo_mixes_both_directions():
    eps = 0.2
    loss = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=eps)
    expected = (1 - eps) * math.log(1 + math.exp(-0.1)) + eps * math.log(1 + math.exp(0.1))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_is_squared_distance_to_half_inverse_beta():
    loss = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx((1.0 - 5.0) ** 2)


def test_sft_nll_is_per_token():
    assert sft_nll(t(-6.0, -1.0), torch.tensor([3, 0])).tolist() == [2.0, 1.0]


def test_unknown_loss_type_is_named():
    with pytest.raises(ValueError, match="unknown DPO loss type 'hinge'"):
        dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), loss_type="hinge")


def test_kto_loss_matches_hand_computation():
    from corll.losses import kto_loss

    # r = policy − ref: +1.0 (desirable) and −2.0 (undesirable); z0 = 0.5; β = 0.5; λ_D = 1, λ_U = 2
    loss = kto_loss(torch.tensor([-3.0, -6.0]), torch.tensor([-4.0, -4.0]), torch.tensor([1, 0]),
                    torch.tensor(0.5), beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = [1 - sig(0.5 * (1.0 - 0.5)), 2 - 2 * sig(0.5 * (0.5 + 2.0))]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    # A negative KL estimate is clamped to 0.
    clamped = kto_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1]), torch.tensor(-3.0), beta=0.5)
    assert clamped.item() == pytest.approx(0.5, abs=1e-6)


def test_imbalance_weighting_and_focal_loss_match_hand_computation():
    from corll.losses import focal_loss, weighted_bce

    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1, 0])
    # weighted: positive −3·log σ(0) = 3·log 2; negative −log σ(−2) = log(1 + e²)
    assert weighted_bce(logits, labels, positive_weight=3.0).tolist() == pytest.approx(
        [3 * math.log(2), math.log(1 + math.exp(2))], abs=1e-6)
    assert weighted_bce(logits, labels).tolist() != weighted_bce(logits, labels, positive_weight=3.0).tolist()
    # focal, γ=2, α=0.25: positive p_t = 0.5 -> 0.25·0.25·log 2; negative p_t = σ(−2)
    pt = 1 / (1 + math.exp(2))
    assert focal_loss(logits, labels, gamma=2.0, alpha=0.25).tolist() == pytest.approx(
        [0.25 * 0.25 * math.log(2), 0.75 * (1 - pt) ** 2 * -math.log(pt)], abs=1e-6)
