import pytest
import torch

from corll.policy import LoraSettings, SamplingConfig, load_policy
from corll.simulate import SimulationConfig


@pytest.fixture
def policy():
    """A fresh tiny LoRA policy (random 2-layer Llama, character tokenizer)."""
    torch.manual_seed(0)
    return load_policy("tiny", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=12))


def tiny_config(**overrides) -> SimulationConfig:
    """A fast simulation on the tiny model and the synthetic task."""
    settings = dict(task="synthetic", model="tiny", precision="fp32", rounds=10, k=4, l=8, batch_size=8, lr=1e-2,
                    max_new_tokens=16, eval_every=5, eval_prompts=16, eval_samples=2, checkpoint_every=5)
    settings.update(overrides)
    return SimulationConfig(**settings)
