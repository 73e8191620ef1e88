"""The serving engine without HTTP: continuous batching, per-request randomness, stop strings, cancellation."""

import asyncio
import time

import pytest
import torch

from corll.server.engine import PolicyEngine, _held_back
from corll.server.protocol import GenerationRequest, ServedModel
from tests.conftest import random_adapter

BASE = ServedModel(None, None)


@pytest.fixture(scope="module")
def engine():
    return PolicyEngine("tiny", batch_wait=0.2, precision="fp32")


def request(engine, text, **kwargs):
    kwargs.setdefault("max_tokens", 16)
    return GenerationRequest(engine.prompt_ids([{"role": "user", "content": text}]), BASE, **kwargs)


def test_a_seed_gives_the_same_text_alone_and_inside_a_batch_and_no_seed_gives_fresh_drafts(engine):
    alone = engine.submit(request(engine, "Say hello.", seed=11)).result()[0]
    crowd = [engine.submit(request(engine, "x" * i, seed=i)) for i in range(1, 7)]
    inside = engine.submit(request(engine, "Say hello.", seed=11))
    assert inside.result()[0].text == alone.text
    assert all(s.result()[0].finish_reason in ("length", "stop") for s in crowd)
    assert engine.peak >= 7  # they really shared a batch (batch_wait gathers them)
    unseeded = {engine.submit(request(engine, "Say hello.")).result()[0].text for _ in range(3)}
    assert len(unseeded) == 3


def test_requests_joining_and_leaving_a_running_batch_each_get_the_text_they_get_alone(engine, tmp_path):
    """Rows join while others decode and leave in another order than they came (the cache moves the last
    rows into the holes), newcomers through the same users' adapters as running rows: each request's seeded
    text is still its own."""
    models = [BASE] + [ServedModel(v, random_adapter(tmp_path / str(v), seed=v, std=0.3)) for v in (1, 2)]
    asks = [GenerationRequest(engine.prompt_ids([{"role": "user", "content": "w" * (1 + 3 * i)}]), models[i % 3],
                              seed=i, max_tokens=30 + 12 * i, user=f"acme/u{i}") for i in range(8)]
    alone = [engine.submit(a).result()[0].text for a in asks]
    engine.peak = 0
    streams = []
    for ask in asks:
        streams.append(engine.submit(ask))
        time.sleep(0.1)  # arrive while the others are decoding (an idle engine gathers for 0.2 s)
    assert [s.result()[0].text for s in streams] == alone
    assert engine.peak >= 4  # they overlapped


def test_logprob_of_a_choice_equals_a_forward_pass_and_n_choices_differ(engine):
    choices = engine.submit(request(engine, "Count.", n=3, seed=5, logprobs=True, top_logprobs=2)).result()
    assert len({c.text for c in choices}) == 3
    # max_tokens ends every choice here, so no EOS term: log π of the tokens themselves, token by token ...
    assert all(c.finish_reason == "length" for c in choices)
    for c in choices:
        assert sum(t.logprob for t in c.logprobs) == pytest.approx(c.logprob, abs=1e-4)
    # ... and equal to a forward pass over the text wherever the text is the tokens (no special token sampled).
    tokenizer = engine.policy.tokenizer
    plain = [c for c in choices if [tokenizer.decode([i]) for i in tokenizer(c.text, add_special_tokens=False)
                                    ["input_ids"]] == [t.token for t in c.logprobs]]
    assert plain
    scored = engine.policy.logprobs(["Count."] * len(plain), [c.text for c in plain])
    assert torch.allclose(torch.tensor([c.logprob for c in plain]), scored.cpu(), atol=1e-3)
    first = choices[0].logprobs[0]
    assert len(choices[0].logprobs) == 16 and len(first.top) == 2
    assert first.top[0][1] >= first.top[1][1] and first.top[0][1] >= first.logprob - 1e-6


def test_stop_strings_end_a_choice_before_the_stop_and_are_never_streamed(engine):
    free = engine.submit(request(engine, "Go.", seed=3, max_tokens=30)).result()[0].text
    stop = free[10:12]
    stopped = engine.submit(request(engine, "Go.", seed=3, max_tokens=30, stop=(stop,)))
    deltas = list(stopped)
    text = "".join(d.text for d in deltas)
    assert text == free[: free.index(stop)] and deltas[-1].finish_reason == "stop"
    assert _held_back("abc<en", ("<end>",)) == 3 and _held_back("abc", ("<end>",)) == 0


def test_deltas_arrive_while_the_choice_is_still_being_generated(engine):
    stream = engine.submit(request(engine, "Talk.", temperature=0.0, max_tokens=200))  # greedy: no early EOS
    first = next(iter(stream))
    assert first.text and first.finish_reason is None and stream.finished == 0
    rest = list(stream)
    assert rest[-1].finish_reason == "length"


def test_a_steps_deltas_reach_an_event_loop_in_one_call_and_in_order(engine):
    """Each step hands its rows' deltas to the HTTP layer's loop at once (one wake-up, not one per row), and
    every stream still gets its own text whole and in order."""

    async def run() -> tuple[list[str], list[str], int]:
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counted(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted
        streams = [engine.submit(request(engine, f"Count {i}.", temperature=0.0, max_tokens=12), loop)
                   for i in range(4)]
        texts = []
        for stream in streams:
            texts.append("".join([d.text async for d in stream.deltas()]))
        return texts, [s.request for s in streams], calls

    texts, requests, calls = asyncio.run(run())
    alone = [engine.submit(r).result()[0].text for r in requests]  # greedy: the same text without a loop
    assert texts == alone and all(texts)
    assert calls <= 13  # one per step: 12 tokens in 4 rows would be 48 or more one at a time


def test_the_engine_counts_its_steps_prefills_and_their_time(engine):
    """/healthz's work: one prefill admits both choices (each gets its first token there), then every step
    advances both rows by one token."""
    before = dict(engine.health()["work"])
    choices = engine.submit(request(engine, "Talk.", n=2, temperature=0.0, max_tokens=6)).result()
    assert [c.finish_reason for c in choices] == ["length", "length"]  # greedy: no early EOS
    after = engine.health()["work"]
    done = {key: after[key] - before[key] for key in after}
    assert (done["prefills"], done["prefill_rows"], done["steps"], done["rows"]) == (1, 2, 5, 10)
    assert done["decode_s"] > 0 and done["prefill_s"] > 0 and done["sample_s"] > 0


def test_a_cancelled_request_leaves_the_batch(engine):
    greedy = {"temperature": 0.0, "max_tokens": 400}
    assert engine.submit(request(engine, "Talk.", **greedy)).result()[0].finish_reason == "length"  # no early EOS
    long = engine.submit(request(engine, "Talk.", **greedy))
    next(iter(long))
    long.cancel()
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.running == 0 and long.finished == 0  # dropped mid-way, not run to its 400 tokens
    after = engine.submit(request(engine, "Still there?", seed=4)).result()[0]
    assert after.finish_reason in ("length", "stop")  # the engine still serves


def test_the_engine_does_its_torch_work_on_its_scheduler_thread_and_close_ends_what_is_unfinished(monkeypatch):
    """Loading included, so no other thread holds OpenMP threads that would make the decoding thread's sleep
    between operations; closing fails the requests still unanswered and ends the thread."""
    import threading

    import corll.server.engine as engine_module
    from corll.server.protocol import EngineError

    where = []
    load = engine_module.load_frozen
    monkeypatch.setattr(engine_module, "load_frozen",
                        lambda *a, **k: where.append(threading.current_thread().name) or load(*a, **k))
    engine = PolicyEngine("tiny", precision="fp32", batch_wait=0.0, max_batch=1)
    assert where == ["corll-engine"]
    assert engine.submit(request(engine, "Hi", max_tokens=2)).result()[0].tokens >= 1
    long = engine.submit(request(engine, "Talk.", temperature=0.0, max_tokens=400))
    next(iter(long))  # decoding
    queued = engine.submit(request(engine, "Next.", max_tokens=4))  # waits: the batch holds one row
    time.sleep(0.05)
    engine.close()
    for stream in (long, queued):
        with pytest.raises(EngineError, match="closed"):
            stream.result()
    assert not engine._thread.is_alive()


def test_a_model_that_cannot_load_fails_the_constructor():
    with pytest.raises(Exception, match="no-such-model"):
        PolicyEngine("no-such-model", precision="fp32")


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_as_a_thousand_users_adapters_come_and_go(tmp_path):
    import shutil

    engine = PolicyEngine("tiny", precision="fp32", max_loaded_adapters=8)
    source = random_adapter(tmp_path / "source")
    prompt = engine.prompt_ids([{"role": "user", "content": "Hi"}])
    sizes = {}
    for user in range(1, 1001):
        folder = tmp_path / "adapters" / str(user)
        shutil.copytree(source, folder)
        choice = engine.submit(GenerationRequest(prompt, ServedModel(user, str(folder)), max_tokens=1,
                                                 user=f"acme/u{user}")).result()[0]
        assert choice.finish_reason in ("length", "stop")
        shutil.rmtree(folder)
        if user in (200, 1000):
            sizes[user] = rss_mb()
        assert len(engine.adapters.attached) <= 8
    assert sorted(engine.adapters.attached.values()) == list(range(1, 9))  # 8 slots, each held once
    assert sizes[1000] - sizes[200] < 30, sizes  # 800 more users' adapters came and went: no growth


def test_an_adapter_is_read_off_the_scheduler_thread_and_one_that_cannot_be_read_fails_alone(tmp_path, monkeypatch):
    import corll.server.adapters as adapters

    engine = PolicyEngine("tiny", precision="fp32")
    folder = random_adapter(tmp_path / "slow")
    read = adapters.read_adapter

    def slow_read(path):  # a slow disk: reading takes a second
        time.sleep(1.0)
        return read(path)

    monkeypatch.setattr(adapters, "read_adapter", slow_read)
    prompt = engine.prompt_ids([{"role": "user", "content": "Hi"}])
    adapter_users = [engine.submit(GenerationRequest(prompt, ServedModel(7, str(folder)), max_tokens=4, user="a/x"))]
    missing = engine.submit(GenerationRequest(prompt, ServedModel(8, str(tmp_path / "gone")), max_tokens=4,
                                              user="a/y"))
    started = time.monotonic()
    base = engine.submit(GenerationRequest(prompt, BASE, max_tokens=4, user="a/z")).result()[0]
    assert base.finish_reason in ("length", "stop") and time.monotonic() - started < 0.5  # not behind the read
    assert adapter_users[0].result()[0].finish_reason in ("length", "stop")
    assert "v7" in engine.adapters.attached
    with pytest.raises(Exception):
        missing.result()
    assert engine.submit(GenerationRequest(prompt, BASE, max_tokens=2)).result()[0].tokens >= 1  # still serving


def test_a_bf16_engine_computes_in_bf16_throughout_and_keeps_each_seed_and_log_prob(tmp_path):
    """Served in bf16, nothing stays fp32 (no per-step casts of the residual stream or the KV cache); a seed
    repeats its text, through a user's adapter too, and a choice's log-prob is the fp32 model's up to bf16
    rounding. (In bf16 a product's rounding may depend on the batch's shape, so unlike fp32 a seed's text alone
    and inside a batch may part after a near-tie.)"""
    engine = PolicyEngine("tiny", batch_wait=0.2, precision="bf16")
    assert {p.dtype for p in engine.policy.model.parameters()} == {torch.bfloat16}
    asks = [request(engine, "Say hello.", seed=11),
            GenerationRequest(engine.prompt_ids([{"role": "user", "content": "Say hello."}]),
                              ServedModel(3, random_adapter(tmp_path / "a", seed=3, std=0.3)), seed=11, max_tokens=16)]
    texts = [[engine.submit(a).result()[0].text for _ in range(2)] for a in asks]
    assert texts[0][0] == texts[0][1] and texts[1][0] == texts[1][1] and texts[0][0] != texts[1][0]
    exact = PolicyEngine("tiny", precision="fp32").policy
    choices = engine.submit(request(engine, "Count.", n=6, seed=5, logprobs=True)).result()
    tokenizer = engine.policy.tokenizer
    plain = [c for c in choices if [tokenizer.decode([i]) for i in tokenizer(c.text, add_special_tokens=False)
                                    ["input_ids"]] == [t.token for t in c.logprobs]]  # the text is the tokens
    assert plain and all(c.finish_reason == "length" for c in plain)
    scored = exact.logprobs(["Count."] * len(plain), [c.text for c in plain])
    assert torch.allclose(torch.tensor([c.logprob for c in plain]), scored.cpu(), atol=0.05)
