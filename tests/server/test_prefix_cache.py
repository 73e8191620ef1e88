"""Prompts' cached beginnings: per user and adapter, the last token always computed, least recently used
dropped first (a beginning after what extends it), a forgotten user's blocks gone, and the same answers."""

import pytest
import torch

from corll.server.engine import PolicyEngine
from corll.server.prefix_cache import PrefixCache
from corll.server.protocol import GenerationRequest, ServedModel


def kv_of(start: int, end: int) -> torch.Tensor:  # [layers, 2, heads, block, dim]: the positions, as values
    return torch.arange(start, end, dtype=torch.float32).view(1, 1, 1, -1, 1).expand(2, 2, 1, -1, 3)


def test_a_prompt_finds_its_cached_full_blocks_but_never_its_last_token():
    cache = PrefixCache(budget=1 << 20, block=4)
    ids = list(range(10))
    assert cache.find(("a/u", None), ids) == []
    cache.add(("a/u", None), ids, [], kv_of)  # blocks 0-3 and 4-7; 8-9 are not a full block
    assert [b.tokens for b in cache.find(("a/u", None), ids)] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert len(cache.find(("a/u", None), list(range(8)))) == 1  # token 7 is the last: computed, not cached
    assert cache.find(("a/v", None), ids) == [] and cache.find(("a/u", "v3"), ids) == []  # other scopes
    assert cache.find(("a/u", None), [0, 1, 2, 9, 4, 5, 6, 7, 8]) == []
    cache.add(("a/short", None), [1, 2, 3, 4], [], kv_of)  # no full block before its last token: no scope kept
    assert ("a/short", None) not in cache.roots
    past, mask = cache.past([cache.find(("a/u", None), ids), [], cache.find(("a/u", None), list(range(6)))])
    assert past.shape == (2, 2, 3, 1, 8, 3) and mask.tolist() == [[1] * 8, [0] * 8, [0] * 4 + [1] * 4]
    assert past[0, 0, 0, 0, :, 0].tolist() == list(range(8)) and past[0, 0, 2, 0, 4:, 0].tolist() == [0, 1, 2, 3]
    assert cache.tokens_reused == 4 + 8 + 8 + 4


def test_beyond_the_budget_the_least_recently_used_goes_first_and_what_extends_it_with_it():
    block_bytes = kv_of(0, 4).numel() * 4
    cache = PrefixCache(budget=3 * block_bytes, block=4)
    cache.add(("a/u", None), list(range(9)), [], kv_of)  # two blocks
    cache.add(("a/v", None), list(range(5)), [], kv_of)  # one: the budget is full
    cache.find(("a/u", None), list(range(9)))  # u's blocks are the more recent now
    cache.add(("a/w", None), list(range(5)), [], kv_of)  # over: v's block, the least recently used, goes
    assert cache.find(("a/v", None), list(range(5))) == [] and len(cache.find(("a/u", None), list(range(9)))) == 2
    cache.add(("a/x", None), list(range(5)), [], kv_of)  # over: w's block goes
    cache.add(("a/y", None), list(range(5)), [], kv_of)  # over: u's, and its second block before its first
    assert len(cache.find(("a/u", None), list(range(9)))) == 1 and cache.bytes == 3 * block_bytes
    assert cache.find(("a/w", None), list(range(5))) == [] and len(cache.find(("a/x", None), list(range(5)))) == 1
    cache.forget("a/u")
    assert cache.find(("a/u", None), list(range(9))) == [] and cache.bytes == 2 * block_bytes
    assert ("a/u", None) not in cache.roots


BASE = ServedModel(None, None)


def ask(engine, system, user="acme/u", seed=7):
    ids = engine.prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": "Go on."}])
    return engine.submit(GenerationRequest(ids, BASE, seed=seed, max_tokens=12, user=user, logprobs=True)).result()[0]


def test_the_engine_answers_the_same_from_a_cached_beginning_and_only_for_the_same_user():
    system = "You are a careful assistant who writes short, friendly answers. " * 3
    engine = PolicyEngine("tiny", precision="fp32")
    fresh = PolicyEngine("tiny", precision="fp32", prefix_cache_mib=0)
    first = ask(engine, system)
    assert engine.prefixes.tokens_reused == 0 and engine.prefixes.bytes > 0
    again = ask(engine, system)
    reused = engine.prefixes.tokens_reused
    assert reused >= 16  # the system prompt's blocks were not computed again
    alone = ask(fresh, system)
    assert again.text == first.text == alone.text
    assert again.logprob == pytest.approx(alone.logprob, abs=1e-4)
    ask(engine, system, user="acme/other")
    assert engine.prefixes.tokens_reused == reused  # another user's prompt never uses this user's blocks
    engine.forget("acme/u")
    assert {s[0] for s in engine.prefixes.roots} == {"acme/other"}
    assert engine.health()["prefix_cache_bytes"] == engine.prefixes.bytes > 0
    assert fresh.prefixes.bytes == 0
