"""One DPO step under `accelerate launch` (run by tests/test_distributed.py).

Each process takes its share of the same four pairs; DDP averages the gradients,
so the update must equal a single-process step on all four.
"""

import sys

import torch

from corll.feedback import PreferencePair
from corll.learners.dpo import DPOConfig, DPOLearner, make_accelerator
from corll.policy import load_policy

PAIRS = [PreferencePair(f"prompt {i}", chosen=f"good answer {i}", rejected=f"BAD #{i}!") for i in range(4)]


def step(pairs, accelerator=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    policy = load_policy("tiny", precision="fp32")
    DPOLearner(policy, DPOConfig(lr=1e-2, micro_batch_pairs=2), accelerator).step(pairs)
    return policy.trainable_state()


if __name__ == "__main__":
    accelerator = make_accelerator()
    state = step(PAIRS[accelerator.process_index :: accelerator.num_processes], accelerator)
    if accelerator.is_main_process:
        torch.save({"world": accelerator.num_processes, "state": state}, sys.argv[1])
