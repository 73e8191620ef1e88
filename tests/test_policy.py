import math

import pytest
import torch

from corll.feedback import PreferencePair
from corll.learners import DPOConfig, DPOLearner
from corll.losses import dpo_margin
from corll.policy import load_policy
from corll.batches import encode_responses, sequence_logprobs

PROMPTS = ["hello", "a much longer prompt here", "x"]
RESPONSES = ["abc def", "z", "the quick brown fox"]


def per_token_reference(policy, prompt, response):
    """log π(y|x) by a plain loop over the response tokens of one unpadded sequence."""
    prompt_ids = policy.prompt_ids(prompt)
    response_ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + response_ids], device=policy.device)
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0]
    total = 0.0
    for j, token in enumerate(response_ids):
        total += torch.log_softmax(logits[len(prompt_ids) + j - 1], -1)[token].item()
    return total


def perturb_lora(policy):
    """Give the adapter non-zero weights so the policy differs from the reference."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_logprobs_match_a_per_token_loop(policy):
    perturb_lora(policy)
    batched = policy.logprobs(PROMPTS, RESPONSES)
    loop = torch.tensor([per_token_reference(policy, x, y) for x, y in zip(PROMPTS, RESPONSES)])
    assert torch.allclose(batched.cpu(), loop, atol=1e-4)


def test_logprobs_identical_under_left_and_right_padding(policy):
    perturb_lora(policy)
    prompt_ids = [policy.prompt_ids(x) for x in PROMPTS]
    with torch.no_grad():
        left, right = (sequence_logprobs(policy.model, encode_responses(policy.tokenizer, prompt_ids, RESPONSES, side)
                                         .to(policy.device)) for side in ("left", "right"))
    assert torch.allclose(left, right, atol=1e-4)


def test_only_response_tokens_are_scored_and_no_special_token_is_doubled(policy):
    batch = policy.encode(PROMPTS, RESPONSES)
    tok = policy.tokenizer
    for row, response in enumerate(RESPONSES):
        scored = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        assert scored == tok(response, add_special_tokens=False)["input_ids"]
        assert tok.eos_token_id not in scored
        prompt = batch.row_prompt[row]
        ids = batch.prompt_ids[prompt][batch.prompt_mask[prompt].bool()].tolist()
        assert ids == policy.prompt_ids(PROMPTS[row])
        assert ids.count(tok.bos_token_id) == 2  # the system-less template: one user and one assistant header
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_a_whole_text_is_scored_with_its_end(policy):
    """A user's kept text is whole: its log-probability adds log π(EOS | x, y), by hand from the logits
    after y; the reference cache keeps the two apart; DPO's margin counts the chosen text's end."""
    perturb_lora(policy)
    eos = policy.tokenizer.eos_token_id
    whole = policy.logprobs(PROMPTS, RESPONSES, ends=[True] * 3)
    for row, (x, y) in enumerate(zip(PROMPTS, RESPONSES)):
        ids = policy.prompt_ids(x) + policy.tokenizer(y, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = policy.model(input_ids=torch.tensor([ids], device=policy.device)).logits
            stop = torch.log_softmax(logits[0, -1], -1)[eos].item()
        assert whole[row].item() == pytest.approx(per_token_reference(policy, x, y) + stop, abs=1e-4)
    prefix = policy.logprobs(PROMPTS, RESPONSES, reference=True)
    ended = policy.logprobs(PROMPTS, RESPONSES, reference=True, ends=[True] * 3)
    assert (ended < prefix).all()  # stopping has a probability below 1, and the cache did not mix them up

    # DPO on a pair whose chosen text is whole: its margin includes the chosen's end, the rejected's not
    pair = PreferencePair("hello", "abc def", "abc def the quick brown fox", chosen_ends=True)
    learner = DPOLearner(policy, DPOConfig(beta=0.1))
    totals = learner.accumulate_gradients([pair])
    chosen = [pair.prompt], [pair.chosen]
    rejected = [pair.prompt], [pair.rejected]
    by_hand = 0.1 * ((policy.logprobs(*chosen, ends=[True]) - policy.logprobs(*chosen, reference=True, ends=[True]))
                     - (policy.logprobs(*rejected) - policy.logprobs(*rejected, reference=True)))
    assert totals["margin"] == pytest.approx(by_hand.item(), abs=1e-5)


def test_a_prompt_shared_by_several_rows_is_encoded_once_and_scores_like_separate_rows(policy):
    """k samples (or chosen and rejected) continue one prompt: it is run once, with the same values and
    the same gradients as running every row whole."""
    perturb_lora(policy)
    prompts = ["hello", "a much longer prompt here", "hello", "hello", "x"]
    responses = ["abc def", "z", "", "the quick brown fox", "q"]
    shared = policy.encode(prompts, responses)
    assert shared.prompt_ids.shape[0] == 3 and shared.row_prompt.tolist() == [0, 1, 0, 0, 2]
    whole = encode_responses(policy.tokenizer, [policy.prompt_ids(x) for x in prompts], responses).to(policy.device)
    values = {}
    for name, batch in (("shared", shared), ("whole", whole)):
        policy.model.zero_grad()
        logps = sequence_logprobs(policy.model, batch)
        (logps * torch.arange(1.0, 6.0, device=policy.device)).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])
        values[name] = (logps.detach().cpu(), grads)
    assert torch.allclose(values["shared"][0], values["whole"][0], atol=1e-4)
    assert values["shared"][0][2] == 0  # an empty response has log-probability 0
    loop = torch.tensor([per_token_reference(policy, x, y) for x, y in zip(prompts, responses)])
    assert torch.allclose(values["shared"][0], loop, atol=1e-4)
    shared_grad, whole_grad = values["shared"][1], values["whole"][1]
    assert (shared_grad - whole_grad).norm() < 1e-4 * whole_grad.norm()


def test_sampling_encodes_each_prompt_once_and_draws_what_generate_would(policy, monkeypatch):
    """Greedy decoding from the shared prompt cache gives the tokens of plain generate (prompts repeated k times)."""
    import corll.policy as policy_module

    perturb_lora(policy)
    policy.sampling.temperature = 0.0
    shared = policy.sample(PROMPTS, 2)
    calls = []
    monkeypatch.setattr(policy_module, "prefill_cache", lambda *args: calls.append(args) or None)
    plain = policy.sample(PROMPTS, 2)
    assert len(calls) == 1 and calls[0][1].shape[0] == len(PROMPTS)  # one row per prompt, not per sample
    assert shared == plain and all(len(s) == 2 for s in shared)


def test_reference_equals_policy_at_adapter_init_and_stays_fixed(policy):
    before = policy.logprobs(PROMPTS, RESPONSES, reference=True)
    assert torch.equal(policy.logprobs(PROMPTS, RESPONSES), before)
    assert policy.implicit_reward(PROMPTS, RESPONSES, beta=0.1).abs().max() == 0
    perturb_lora(policy)
    assert not torch.allclose(policy.logprobs(PROMPTS, RESPONSES), before)
    assert torch.equal(policy.logprobs(PROMPTS, RESPONSES, reference=True), before)
    expected = 0.1 * (policy.logprobs(PROMPTS, RESPONSES) - before)
    assert torch.allclose(policy.implicit_reward(PROMPTS, RESPONSES, beta=0.1), expected)


def test_one_dpo_step_raises_the_pair_margin(policy):
    pair = PreferencePair("say something", chosen="good words here", rejected="#!$% bad")
    learner = DPOLearner(policy, DPOConfig(lr=1e-2))

    def margin():
        x = [pair.prompt, pair.prompt]
        y = [pair.chosen, pair.rejected]
        lp, ref = policy.logprobs(x, y), policy.logprobs(x, y, reference=True)
        return dpo_margin(lp[0], lp[1], ref[0], ref[1]).item()

    assert margin() == 0.0
    stats = learner.step([pair])
    assert abs(stats.loss - 0.6931) < 1e-3
    assert margin() > 0.05


def test_the_supervised_term_adds_the_edits_per_token_nll_to_the_dpo_loss(policy):
    pair = PreferencePair("say something", chosen="good words here", rejected="#!$% bad")
    chosen_tokens = len(policy.tokenizer(pair.chosen, add_special_tokens=False)["input_ids"])
    nll = -policy.logprobs([pair.prompt], [pair.chosen]).item() / chosen_tokens
    stats = DPOLearner(policy, DPOConfig(lr=1e-2, sft_weight=0.5)).step([pair])
    assert stats.loss == pytest.approx(math.log(2) + 0.5 * nll, abs=1e-4)  # DPO is log 2 at the adapter's start


def test_resuming_from_an_adapter_makes_it_the_reference(policy, tmp_path):
    perturb_lora(policy)
    start = policy.logprobs(PROMPTS, RESPONSES)
    policy.model.save_pretrained(tmp_path / "adapter")
    resumed = load_policy("tiny", init_adapter=tmp_path / "adapter", precision="fp32")
    assert torch.allclose(resumed.logprobs(PROMPTS, RESPONSES, reference=True), start, atol=1e-5)
    DPOLearner(resumed, DPOConfig(lr=5e-2)).step([PreferencePair("p", "good", "bad")])
    assert not torch.allclose(resumed.logprobs(PROMPTS, RESPONSES), start, atol=1e-3)
    assert torch.allclose(resumed.logprobs(PROMPTS, RESPONSES, reference=True), start, atol=1e-5)


def test_full_finetuning_keeps_a_frozen_reference():
    policy = load_policy("tiny", lora=None, precision="fp32")
    before, reference = policy.logprobs(PROMPTS, RESPONSES), policy.logprobs(PROMPTS, RESPONSES, reference=True)
    assert torch.allclose(reference, before, atol=1e-5)  # the same weights (the reference through packed kernels)
    DPOLearner(policy, DPOConfig(lr=1e-2)).step([PreferencePair("p", "good", "bad")])
    assert not torch.allclose(policy.logprobs(PROMPTS, RESPONSES), before)
    assert torch.equal(policy.logprobs(PROMPTS, RESPONSES, reference=True), reference)


def test_policies_over_the_same_base_model_share_their_reference_values(policy, tmp_path):
    perturb_lora(policy)  # adapters differ; π_0 is the base model in both
    other = load_policy("tiny", seed=0, precision="fp32")
    assert other.share_reference(policy)
    values = other.logprobs(PROMPTS, RESPONSES, reference=True)
    assert len(policy._reference_cache) == len(PROMPTS)  # computed once, for both
    policy._reference_cache.clear()
    assert torch.allclose(values, policy.logprobs(PROMPTS, RESPONSES, reference=True), atol=1e-6)
    # not shared where π_0 differs: another base model, or a starting adapter as π_0
    assert not load_policy("tiny", seed=1, precision="fp32").share_reference(policy)
    policy.model.save_pretrained(tmp_path / "adapter")
    assert not load_policy("tiny", init_adapter=tmp_path / "adapter", precision="fp32").share_reference(policy)
    changed = load_policy("tiny", seed=0, precision="fp32")
    with torch.no_grad():
        next(p for n, p in changed.model.named_parameters() if "lora_" not in n and p.dim() == 2).add_(1e-3)
    assert not changed.share_reference(policy)


def test_sampling_gives_k_responses_per_prompt_and_replays_from_a_seed(policy):
    torch.manual_seed(3)
    first = policy.sample(PROMPTS, 3)
    torch.manual_seed(3)
    second = policy.sample(PROMPTS, 3)
    assert [len(s) for s in first] == [3, 3, 3]
    assert first == second
    assert len({y for s in first for y in s}) > 1


def test_a_local_model_directory_loads_the_same_weights(tmp_path):
    original = load_policy("tiny", lora=None, seed=3, precision="fp32")
    original.model.save_pretrained(tmp_path / "model")
    original.tokenizer.save_pretrained(tmp_path / "model")
    local = load_policy(str(tmp_path / "model"), precision="fp32")
    assert torch.allclose(local.logprobs(PROMPTS, RESPONSES), original.logprobs(PROMPTS, RESPONSES), atol=1e-5)


def test_an_unknown_model_lists_the_available_ones():
    import pytest

    with pytest.raises(ValueError, match="unknown model 'nope': use one of smollm2-135m-instruct, tiny"):
        load_policy("nope")


def test_sampled_log_probabilities_equal_a_forward_pass(policy):
    """log π of the samples read off generate's own logits equal `logprobs` (no second forward)."""
    perturb_lora(policy)
    policy.sampling.max_new_tokens = 10
    torch.manual_seed(4)
    samples, logps = policy.sample_scored(PROMPTS, 3)
    assert logps.shape == (3, 3) and [len(s) for s in samples] == [3, 3, 3]
    flat_x = [x for x in PROMPTS for _ in range(3)]
    forward = policy.logprobs(flat_x, [y for s in samples for y in s]).view(3, 3)
    assert torch.allclose(logps, forward, atol=1e-4), (logps, forward)
    torch.manual_seed(4)
    assert policy.sample(PROMPTS, 3) == samples  # the recorder does not change what is drawn


def test_in_bf16_sampled_log_probabilities_come_from_the_forward_pass_that_scores_the_reference():
    """A fresh adapter is π_0: in bf16 its implicit rewards of its own samples are exactly 0, not the
    difference in rounding between the cached decode and a forward pass (which the argmax would follow)."""
    policy = load_policy("tiny", precision="bf16", seed=0)
    policy.sampling.max_new_tokens = 10
    torch.manual_seed(4)
    samples, logps = policy.sample_scored(PROMPTS, 3)
    flat_x = [x for x in PROMPTS for _ in range(3)]
    flat_y = [y for s in samples for y in s]
    assert torch.equal(logps.flatten(), policy.logprobs(flat_x, flat_y))
    assert torch.equal(logps.flatten(), policy.logprobs(flat_x, flat_y, reference=True))
