"""Training losses as pure tensor functions, each checked against hand-computed values in the tests.

Inputs are per-sequence log-probabilities (sums over response tokens, see
`policy.sequence_logprobs`); outputs are per-example losses, so callers choose
how to reduce them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corll.config import DPO_LOSS_TYPES


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


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl_reference: torch.Tensor,
             *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) for unpaired binary feedback, per example.

    With r = log π(y|x) − log π_0(y|x) and z_0 a (detached, non-negative) estimate of
    KL(π‖π_0): a desirable y scores v = λ_D·σ(β(r − z_0)), an undesirable one
    v = λ_U·σ(β(z_0 − r)); the loss is λ_y − v. Reactions are rare and one-sided
    (a "love" or nothing), which is the setting KTO was made for: no pairs needed.
    """
    r = policy_logps - ref_logps
    z0 = kl_reference.detach().clamp(min=0)
    desirable = desirable.bool()
    value = torch.where(desirable, desirable_weight * torch.sigmoid(beta * (r - z0)),
                        undesirable_weight * torch.sigmoid(beta * (z0 - r)))
    weight = torch.where(desirable, torch.full_like(r, desirable_weight), torch.full_like(r, undesirable_weight))
    return weight - value


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, *, positive_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy per example, positives weighted by `positive_weight` — for a reward model of
    rare reactions, set it to (negatives / positives) so both classes carry equal total weight."""
    labels = labels.float()
    return -(positive_weight * labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per example: −α_t (1 − p_t)^γ log p_t. Down-weights the easy,
    plentiful negatives of an imbalanced reaction log; γ = 0 and α = 0.5 give BCE / 2."""
    labels = labels.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    log_pt = labels * log_p + (1 - labels) * log_not_p
    alpha_t = labels * alpha + (1 - labels) * (1 - alpha)
    return -alpha_t * (1 - log_pt.exp()) ** gamma * log_pt
