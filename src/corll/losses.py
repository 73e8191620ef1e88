"""Training losses as pure tensor functions, each checked against hand-computed values in the tests.

Inputs are per-sequence log-probabilities (sums over response tokens, see
`policy.sequence_logprobs`); outputs are per-example losses, so callers choose
how to reduce them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_margin(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor) -> torch.Tensor:
    """h = (log π(ȳ) − log π_0(ȳ)) − (log π(y) − log π_0(y)): the implicit-reward gap divided by β."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> torch.Tensor:
    """DPO and its noise-robust variants, per example.

    sigmoid: −log σ(β·h) (Rafailov et al. 2023); with `label_smoothing` ε it becomes
    conservative DPO, −(1−ε)·log σ(β·h) − ε·log σ(−β·h), for preferences that are
    wrong with probability ε. ipo: (h − 1/(2β))² (Azar et al. 2023), which does not
    push the margin to infinity on deterministic preferences.
    """
    h = dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss type {loss_type!r}: use one of {', '.join(DPO_LOSS_TYPES)}")


def sft_nll(target_logprobs: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of a supervised target per token: −log π(ȳ|x) / |ȳ|."""
    return -target_logprobs / target_lengths.clamp(min=1)
