"""The GPU path: a policy is made on this process's GPU where CUDA is available, and scoring, sampling, the DPO
step, a resumed simulation and the serving engine compute there, giving what the CPU gives.

They need a CUDA GPU, so they are deselected by default and run with `scripts/test.sh -m cuda`. On such a machine
the rest of the suite computes on the GPU too (every policy is made where `compute_device` says)."""

import pytest
import torch

from corll.feedback import PreferencePair
from corll.hardware import choose_precision, compute_device
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.policy import LoraSettings, SamplingConfig, load_policy
from corll.simulate import RunDir, run_simulation
from tests.conftest import interrupt_at, tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS, RESPONSES = ["abc", "hello there", "abc"], ["def", "world!", "xyz zy"]


def tiny(device: str):
    return load_policy("tiny", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=12), precision="fp32",
                       device=device)


def test_a_policy_is_made_on_the_gpu_and_auto_precision_is_bf16_there():
    assert compute_device() == "cuda:0"
    assert load_policy("tiny", precision="fp32").device.type == "cuda"
    assert choose_precision("auto").precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_the_gpu_scores_as_the_cpu_does_and_samples_come_with_their_log_probabilities():
    cpu, gpu = tiny("cpu"), tiny("cuda")
    for reference in (False, True):
        on_gpu = gpu.logprobs(PROMPTS, RESPONSES, reference=reference)
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), cpu.logprobs(PROMPTS, RESPONSES, reference=reference), atol=1e-4)
    samples, logps = gpu.sample_scored(PROMPTS[:2], 3)
    assert [len(s) for s in samples] == [3, 3] and logps.device.type == "cuda"
    xs = [x for x in PROMPTS[:2] for _ in range(3)]
    assert torch.allclose(logps.flatten(), gpu.logprobs(xs, [y for s in samples for y in s]), atol=1e-3)


def test_a_dpo_step_on_the_gpu_gives_the_cpu_step_loss_and_raises_the_margin_alike():
    pairs = [PreferencePair(x, chosen, rejected) for x, chosen, rejected in
             zip(PROMPTS, RESPONSES, ["fed", "dlrow", "zyx"])]
    after = {}
    for device in ("cpu", "cuda"):
        policy = tiny(device)
        learner = DPOLearner(policy, DPOConfig(lr=1e-2))
        first = learner.step(pairs)
        second = learner.step(pairs)
        assert second.margin > first.margin  # it learned on this device
        after[device] = (first.loss, policy.logprobs(PROMPTS, RESPONSES).cpu())
    assert after["cuda"][0] == pytest.approx(after["cpu"][0], abs=1e-5)
    assert torch.allclose(after["cuda"][1], after["cpu"][1], atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_simulation_interrupted_on_the_gpu_resumes_from_its_checkpoint(tmp_path, precision):
    config = tiny_config(algorithms=["corll"], rounds=4, eval_every=2, checkpoint_every=2, precision=precision)
    interrupt_at(lambda progress: run_simulation(config, tmp_path, progress=progress), "corll", 3)
    saved = torch.load(RunDir(tmp_path).checkpoint("corll"), weights_only=False, map_location="cpu")
    assert saved["state"]["round"] == 2 and "cuda_rng" in saved  # the GPU's generator is saved beside the CPU's
    summary = run_simulation(config, tmp_path, resume=True)["corll"]
    records = RunDir(tmp_path).read_metrics()
    assert [r["round"] for r in records] == [0, 2, 4] and summary["rounds"] == 4
    assert summary["reward_final"] > summary["reward_initial"]  # the synthetic task's reward went up on the GPU


def test_the_serving_engine_decodes_on_the_gpu():
    from corll.server.engine import PolicyEngine
    from corll.server.protocol import GenerationRequest, ServedModel

    engine = PolicyEngine("tiny", precision="fp32", batch_wait=0.2)
    assert engine.policy.device.type == "cuda"
    ids = engine.prompt_ids([{"role": "user", "content": "Count."}])
    choices = engine.submit(GenerationRequest(ids, ServedModel(None, None), n=3, seed=5, max_tokens=16,
                                              logprobs=True, top_logprobs=2)).result()
    assert len({c.text for c in choices}) == 3 and all(c.finish_reason == "length" for c in choices)
    for c in choices:
        assert sum(t.logprob for t in c.logprobs) == pytest.approx(c.logprob, abs=1e-3)
    again = engine.submit(GenerationRequest(ids, ServedModel(None, None), n=3, seed=5, max_tokens=16)).result()
    assert [c.text for c in again] == [c.text for c in choices]  # a seed draws the same text on the GPU too
