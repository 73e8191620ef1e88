"""Runs on the real SmolLM2-135M-Instruct (converted once from the bundled GGUF). Slow: `-m slow`."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from corll.cli import app
from corll.losses import dpo_loss
from corll.policy import SamplingConfig, load_policy
from corll.batches import encode_responses, sequence_logprobs

pytestmark = pytest.mark.slow
PROMPTS = ["Continue this movie review: The film opens with", "Say hi."]
RESPONSES = ["a long shot of the sea, and it is lovely.", "Hi there!"]


@pytest.fixture(scope="module")
def smol():
    """fp32 weights on every CPU: the bf16 test switches to bf16 itself (autocast), the others compare at fp32
    tolerances; `auto` would load bf16 weights where the CPU computes bf16 natively."""
    torch.manual_seed(0)
    return load_policy("smollm2-135m-instruct", sampling=SamplingConfig(max_new_tokens=16), precision="fp32")


def test_bundled_model_uses_its_chat_template_and_samples(smol):
    ids = smol.prompt_ids(PROMPTS[0])
    text = smol.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    samples = smol.sample(PROMPTS, 2)
    assert [len(s) for s in samples] == [2, 2] and all(y.strip() for s in samples for y in s)


def test_real_model_logprobs_match_a_per_token_loop_and_ignore_padding_side(smol):
    prompt_ids = [smol.prompt_ids(x) for x in PROMPTS]
    with torch.no_grad():
        left = sequence_logprobs(smol.model, encode_responses(smol.tokenizer, prompt_ids, RESPONSES, "left"))
        right = sequence_logprobs(smol.model, encode_responses(smol.tokenizer, prompt_ids, RESPONSES, "right"))
        for row, (p, y) in enumerate(zip(prompt_ids, RESPONSES)):
            r = smol.tokenizer(y, add_special_tokens=False)["input_ids"]
            logits = smol.model(input_ids=torch.tensor([p + r])).logits[0]
            loop = sum(torch.log_softmax(logits[len(p) + j - 1], -1)[t].item() for j, t in enumerate(r))
            assert left[row].item() == pytest.approx(loop, abs=2e-3)
    assert torch.allclose(left, right, atol=2e-3)


def test_bf16_dpo_loss_and_gradients_stay_close_to_fp32(smol):
    prompts, responses = [PROMPTS[0]] * 2, ["a wonderful, moving film.", "a dull and tedious film."]
    ref = smol.logprobs(prompts, responses, reference=True)
    results = {}
    for precision in ("fp32", "bf16"):
        smol.precision = precision
        with smol.autocast():
            lp = sequence_logprobs(smol.model, smol.encode(prompts, responses))
        loss = dpo_loss(lp[0], lp[1], ref[0], ref[1], beta=0.1)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in smol.trainable_parameters()])
        results[precision] = (loss.item(), grads.clone())
        smol.model.zero_grad()
    smol.precision = "fp32"
    assert results["fp32"][0] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(results["bf16"][0] - results["fp32"][0]) < 0.01
    assert torch.nn.functional.cosine_similarity(results["fp32"][1], results["bf16"][1], dim=0) > 0.98


def test_positive_review_cli_run_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--task", "positive-review", "--rounds", "2", "--eval-every", "1",
                                      "--batch-size", "2", "--eval-prompts", "2", "--max-new-tokens", "12",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(-10 < r["reward"] < 0 for r in records)
    assert records[0]["reward"] == records[3]["reward"]  # both algorithms start from the same policy
