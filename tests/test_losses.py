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
