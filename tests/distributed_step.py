"""One DPO step under `accelerate launch` (run by tests/test_distributed.py).

Every process is handed the same pairs and takes its share of them (`DPOLearner.step`); DDP averages the
gradients, so the update must equal a single-process step on all of them.
"""

import sys

import torch

from corll.feedback import PreferencePair
from corll.learners.dpo import DPOConfig, DPOLearner, make_accelerator
from corll.policy import load_policy

# two steps over two processes: five pairs (shares of three and two, weighted back to the mean over five),
# then one pair (the second process's share is empty and joins the averaging with nothing)
PAIRS = [PreferencePair(f"prompt {i}", chosen=f"good answer {i}", rejected=f"BAD #{i}!") for i in range(5)]
BATCHES = [PAIRS, PAIRS[:1]]


def step(batches, accelerator=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The adapter after a DPO step on each batch, and each step's reported loss."""
    torch.manual_seed(0)
    policy = load_policy("tiny", precision="fp32")
    learner = DPOLearner(policy, DPOConfig(lr=1e-2, micro_batch_pairs=2), accelerator)
    losses = [learner.step(batch).loss for batch in batches]
    return policy.trainable_state(), losses


if __name__ == "__main__":
    accelerator = make_accelerator()
    state, losses = step(BATCHES, accelerator)
    if accelerator.is_main_process:
        torch.save({"world": accelerator.num_processes, "state": state, "losses": losses}, sys.argv[1])
    # leave the group together: a process exiting while gloo still holds the other's connection aborts it
    # at exit ("terminate called without an active exception")
    accelerator.wait_for_everyone()
    accelerator.end_training()
