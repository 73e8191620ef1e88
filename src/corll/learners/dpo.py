"""The pairwise preference learner A_pair: one Adam step of DPO on a batch of pairs.

CoRLL and the dueling baseline share it, so the two differ only in where their
preferences come from. The step goes through `accelerate`, so the same code runs
on one CPU, on 2 CPU processes (gloo) or on many GPUs with DDP.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from corll.feedback import PreferencePair
from corll.hardware import compute_device
from corll.config import DPOConfig
from corll.losses import dpo_loss, dpo_margin, sft_nll
from corll.policy import Policy
from corll.batches import sequence_logprobs


def make_accelerator(device: str | torch.device | None = None) -> Accelerator:
    """An Accelerator for `device` (default: where this process's models compute, `compute_device`). On a
    CPU it is told so (`cpu=True`): then a launch with several processes (`accelerate launch --multi_gpu
    --num_processes 2`) runs data-parallel over gloo instead of silently training each process alone, and
    a policy kept on the CPU of a GPU machine is not moved to the GPU behind its back."""
    return Accelerator(cpu=torch.device(device or compute_device()).type == "cpu")


class NonFiniteLossError(RuntimeError):
    """The loss or its gradient is NaN or infinite; the step was not applied."""


@dataclass(frozen=True)
class StepStats:
    loss: float
    margin: float
    accuracy: float
    grad_norm: float


class PolicyOptimizer:
    """Adam on the policy's trainable weights through `accelerate`, with linear warm-up, gradient
    clipping and a guard that refuses a non-finite step. Shared by the DPO and KTO learners."""

    def __init__(self, policy: Policy, lr: float, *, warmup_steps: int = 0, max_grad_norm: float = 10.0,
                 weight_decay: float = 0.0, accelerator: Accelerator | None = None) -> None:
        self.policy, self.max_grad_norm = policy, max_grad_norm
        self.accelerator = accelerator or make_accelerator(policy.device)
        params = policy.trainable_parameters()
        # Decoupled weight decay on a LoRA adapter pulls it toward zero, i.e. the policy toward π_0.
        optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
                     else torch.optim.Adam(params, lr=lr))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(policy.model, optimizer, scheduler)

    def backward(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            self.optimizer.zero_grad()
            raise NonFiniteLossError(f"{what} is {loss.item()}")
        self.accelerator.backward(loss)

    def apply(self, what: str) -> float:
        """Clip, step, zero the gradients; returns the gradient norm before clipping."""
        grad_norm = float(self.accelerator.clip_grad_norm_(self.policy.trainable_parameters(), self.max_grad_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad()
            raise NonFiniteLossError(f"{what} gradient norm is {grad_norm}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return grad_norm

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DPOLearner:
    def __init__(self, policy: Policy, config: DPOConfig, accelerator: Accelerator | None = None) -> None:
        self.policy = policy
        self.config = config
        self.optim = PolicyOptimizer(policy, config.lr, warmup_steps=config.warmup_steps,
                                     max_grad_norm=config.max_grad_norm, accelerator=accelerator)
        self.model = self.optim.model

    def step(self, pairs: Sequence[PreferencePair]) -> StepStats:
        """One optimizer step on these pairs. Under `accelerate launch` with several processes, each process
        is handed the same pairs and takes its share (every world-th pair): its loss is weighted so that the
        gradients the processes average are the gradient of the mean loss over all the pairs, as one process
        would compute it; a process whose share is empty still joins the averaging. The stats are the
        whole batch's."""
        if not pairs:
            raise ValueError("a DPO step needs at least one preference pair")
        accelerator = self.optim.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if world == 1:
            totals = self.accumulate_gradients(pairs)
            return StepStats(grad_norm=self.optim.apply("DPO"), **totals)
        mine = list(pairs[rank::world])
        if mine:
            totals = self.accumulate_gradients(mine, weight=world * len(mine) / len(pairs))
        else:  # nothing to add, but the averaging needs every process: a forward and backward weighted 0
            self.accumulate_gradients(pairs[:1], weight=0.0)
            totals = {"loss": 0.0, "margin": 0.0, "accuracy": 0.0}
        # each process's part of the batch's means (its weighted loss is world × its part of the mean loss)
        share = len(mine) / len(pairs)
        parts = torch.tensor([totals["loss"] / world, totals["margin"] * share, totals["accuracy"] * share],
                             device=accelerator.device)
        loss, margin, accuracy = accelerator.reduce(parts, reduction="sum").tolist()
        return StepStats(grad_norm=self.optim.apply("DPO"), loss=loss, margin=margin, accuracy=accuracy)

    def accumulate_gradients(self, pairs: Sequence[PreferencePair], weight: float = 1.0) -> dict[str, float]:
        """Backpropagate weight × the mean DPO loss over these pairs, in micro-batches of chosen and
        rejected together; log π_0 comes from the policy's cache. Returns loss, margin, accuracy."""
        if not pairs:
            raise ValueError("a DPO step needs at least one preference pair")
        cfg = self.config
        n = len(pairs)
        totals = {"loss": 0.0, "margin": 0.0, "accuracy": 0.0}
        self.model.train()
        starts = range(0, n, cfg.micro_batch_pairs)
        for start in starts:
            chunk = pairs[start : start + cfg.micro_batch_pairs]
            prompts = [p.prompt for p in chunk] * 2
            responses = [p.chosen for p in chunk] + [p.rejected for p in chunk]
            ends = [p.chosen_ends for p in chunk] + [False] * len(chunk)
            ref = self.policy.logprobs(prompts, responses, reference=True, ends=ends)
            batch = self.policy.encode(prompts, responses, ends)
            # across processes the gradients are averaged once, in the last micro-batch's forward and backward
            with (contextlib.nullcontext() if start == starts[-1] else self.optim.accelerator.no_sync(self.model)):
                with self.policy.training_attention(), self.policy.autocast():
                    logps = sequence_logprobs(self.model, batch)
                m = len(chunk)
                losses = dpo_loss(logps[:m], logps[m:], ref[:m], ref[m:], beta=cfg.beta,
                                  label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
                if cfg.sft_weight:
                    losses = losses + cfg.sft_weight * sft_nll(logps[:m], batch.response_mask[:m].sum(1))
                loss = weight * losses.sum() / n
                self.optim.backward(loss, f"DPO loss on a batch of {n} pairs")
            margins = dpo_margin(logps[:m], logps[m:], ref[:m], ref[m:]).detach()
            totals["loss"] += loss.item()
            totals["margin"] += cfg.beta * margins.sum().item() / n
            totals["accuracy"] += (margins > 0).float().sum().item() / n
        return totals

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)
