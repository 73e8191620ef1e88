"""The fast training path computes the same thing as the plain one.

Fast: chosen and rejected in one padded forward, logits only from the first response
position, log-softmax only at the targets, log π_0 from the cache, eager attention,
micro-batched gradient accumulation, and (optionally) bf16 autocast with the frozen
weights stored in bf16. Plain: fp32, one unpadded sequence at a time, a full-vocabulary
log-softmax, π_0 recomputed with the adapter off.
"""

import pytest
import torch

from corll.feedback import PreferencePair
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.losses import dpo_loss
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.simulate import RunDir, run_simulation
from tests.conftest import tiny_config

PAIRS = [
    PreferencePair("write a review", "a fine and lovely film", "A DULL FILM!"),
    PreferencePair("say hi", "hello there", "HELLO."),
    PreferencePair("a longer prompt, to vary the padding", "ok", "NOT OK at all, no"),
]
BETA = 0.1


def trained_looking_policy(precision: str) -> Policy:
    """A tiny policy whose adapter is moved away from zero, so π ≠ π_0 and every LoRA weight has a gradient."""
    torch.manual_seed(0)
    policy = load_policy("tiny", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=8), precision=precision)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return policy


def plain_logprob(policy: Policy, prompt: str, response: str) -> torch.Tensor:
    prompt_ids = policy.prompt_ids(prompt)
    response_ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
    logits = policy.model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0]
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)[len(prompt_ids) - 1 :]
    return logp.gather(-1, torch.tensor(response_ids)[:, None]).sum()


def plain_loss_and_gradient(policy: Policy) -> tuple[float, torch.Tensor]:
    total = torch.zeros(())
    for pair in PAIRS:
        with torch.no_grad(), policy.model.disable_adapter():
            ref_chosen, ref_rejected = (plain_logprob(policy, pair.prompt, y) for y in (pair.chosen, pair.rejected))
        chosen, rejected = (plain_logprob(policy, pair.prompt, y) for y in (pair.chosen, pair.rejected))
        total = total + dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=BETA) / len(PAIRS)
    total.backward()
    return total.item(), gradient(policy)


def gradient(policy: Policy) -> torch.Tensor:
    grad = torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])
    policy.model.zero_grad()
    return grad


def fast_loss_and_gradient(policy: Policy) -> tuple[float, torch.Tensor]:
    learner = DPOLearner(policy, DPOConfig(beta=BETA, micro_batch_pairs=2))
    loss = learner.accumulate_gradients(PAIRS)["loss"]
    return loss, gradient(policy)


def test_fast_fp32_dpo_step_equals_the_plain_computation():
    plain_loss, plain_grad = plain_loss_and_gradient(trained_looking_policy("fp32"))
    fast_loss, fast_grad = fast_loss_and_gradient(trained_looking_policy("fp32"))
    assert plain_loss != pytest.approx(0.6931, abs=1e-3)  # π ≠ π_0, so the check is not trivial
    assert fast_loss == pytest.approx(plain_loss, abs=1e-5)
    assert torch.allclose(fast_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_bf16_dpo_step_stays_within_tolerance_of_plain_fp32():
    plain_loss, plain_grad = plain_loss_and_gradient(trained_looking_policy("fp32"))
    fast_loss, fast_grad = fast_loss_and_gradient(trained_looking_policy("bf16"))
    # Stated tolerances: loss within 0.01 (absolute), gradient cosine > 0.99, norm within 5%. (A far larger
    # adapter, LoRA weights ~0.3, saturates the tiny model's attention and bf16 then loses the q/k gradients.)
    assert abs(fast_loss - plain_loss) < 0.01
    assert torch.nn.functional.cosine_similarity(fast_grad, plain_grad, dim=0) > 0.99
    assert fast_grad.norm() == pytest.approx(plain_grad.norm().item(), rel=0.05)


def test_bf16_frozen_weights_are_stored_in_bf16_and_trainable_ones_in_fp32():
    policy = trained_looking_policy("bf16")
    dtypes = {name: p.dtype for name, p in policy.model.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n, p in policy.model.named_parameters() if p.requires_grad)
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32  # looked up, not multiplied
    # the head it was tied to has its own bf16 copy of the same values, so decoding casts nothing per step
    head, embedding = policy.model.get_output_embeddings().weight, policy.model.get_input_embeddings().weight
    assert head.dtype == torch.bfloat16 and head is not embedding and not head.requires_grad
    assert torch.equal(head, embedding.detach().to(torch.bfloat16))


def test_bf16_learning_curve_on_synthetic_follows_the_fp32_curve(tmp_path):
    curves = {}
    for precision in ("fp32", "bf16"):
        config = tiny_config(algorithms=["corll"], rounds=20, precision=precision, eval_prompts=32, eval_samples=4)
        run_simulation(config, tmp_path / precision)
        curves[precision] = [r["reward"] for r in RunDir(tmp_path / precision).read_metrics()]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert fp32[0] == pytest.approx(bf16[0], abs=0.02)  # same starting policy, evaluated in each precision
    assert bf16[-1] > bf16[0] + 0.05 and fp32[-1] > fp32[0] + 0.05, curves
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05, curves
