"""The service end to end: a real uvicorn server on loopback, the tiny model, SQLite."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from typer.testing import CliRunner

import corll
from corll.cli import app as cli
from corll.server.app import create_app
from corll.server.errors import MAX_BODY_BYTES
from corll.server.engine import PolicyEngine
from corll.store import Store


class LiveServer:
    def __init__(self, store: Store, engine: PolicyEngine) -> None:
        config = uvicorn.Config(create_app(store, engine), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def service(tmp_path):
    db = f"sqlite:///{tmp_path / 'corll.db'}"
    store = Store(db)
    engine = PolicyEngine("tiny", default_max_tokens=16)
    server = LiveServer(store, engine)
    keys = {"alice": store.create_api_key("acme", "alice"), "bob": store.create_api_key("acme", "bob"),
            "mallory": store.create_api_key("evil", "mallory")}
    yield server, store, keys, db
    server.stop()


def openai_client(server, key):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def ask(server, key, text="Say something nice.", **kwargs):
    return openai_client(server, key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=12, **kwargs)


def test_openai_client_gets_logged_completions_and_the_sdk_posts_feedback(service):
    server, store, keys, _ = service
    completion = ask(server, keys["alice"], seed=3)
    text = completion.choices[0].message.content
    assert completion.id.startswith("chatcmpl-") and isinstance(text, str)
    logged = store.get_interaction(store.authenticate(keys["alice"]), completion.id)
    assert logged.response == text and logged.user == "alice" and logged.sampling["max_new_tokens"] == 12
    with corll.Client(server.url, keys["alice"]) as client:
        assert client.edit(completion.id, text + " Truly.")["kind"] == "edit"
        assert client.react(completion.id, "love")["kind"] == "reaction"
        page = client.interactions()
    assert [f["kind"] for f in page["data"][0]["feedback"]] == ["edit", "reaction"]

    async def async_side(user):
        async with corll.AsyncClient(server.url + "/v1", keys[user]) as client:
            return await client.react(completion.id, "like")

    assert asyncio.run(async_side("alice"))["kind"] == "reaction"
    with pytest.raises(corll.FeedbackError) as caught:  # bob, of the same tenant, did not receive it
        asyncio.run(async_side("bob"))
    assert caught.value.status == 404


def test_streaming_gives_the_same_text_as_logged(service):
    server, store, keys, _ = service
    stream = ask(server, keys["alice"], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert store.get_interaction(store.authenticate(keys["alice"]), chunks[0].id).response == text


def test_other_tenants_get_404_and_cannot_list_or_attach(service):
    server, store, keys, _ = service
    completion = ask(server, keys["alice"])
    with corll.Client(server.url, keys["mallory"]) as mallory:
        with pytest.raises(corll.FeedbackError) as caught:
            mallory.react(completion.id, "dislike")
        assert caught.value.status == 404
        assert mallory.interactions()["data"] == []
    assert store.feedback() == []


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"completion_id": "chatcmpl-nope", "reaction": "love"}, 404, "no completion"),
    ({"completion_id": "ID", "edit": ""}, 400, "'edit' is empty"),
    ({"completion_id": "ID", "edit": "x" * 40_000}, 400, "edit"),
    ({"completion_id": "ID", "reaction": "meh"}, 400, "reaction"),
    ({"completion_id": "ID"}, 400, "exactly one"),
    ({"completion_id": "ID", "edit": 5}, 400, "edit"),
    ({"completion_id": "ID", "reaction": "love", "extra": 1}, 400, "extra"),
    ({"completion_id": "ID", "edit": "bad \ud800 text"}, 400, "surrogate"),
    ({"completion_id": "ID", "edit": "nul \x00 inside"}, 400, "NUL"),
    ({"completion_id": "ID", "reaction": "love", "choice": 1}, 404, "no completion"),
])
def test_bad_feedback_gets_4xx_naming_the_problem_and_nothing_is_stored(service, body, status, needle):
    server, store, keys, _ = service
    completion = ask(server, keys["alice"])
    body = {k: (completion.id if v == "ID" else v) for k, v in body.items()}
    response = httpx.post(f"{server.url}/v1/feedback", content=json.dumps(body),  # ASCII: "\ud800" as an escape
                          headers={"Authorization": f"Bearer {keys['alice']}", "Content-Type": "application/json"})
    assert response.status_code == status and needle in response.text
    problem = response.json()["error"]  # OpenAI's error shape, with the field named where there is one
    assert set(problem) == {"message", "type", "param", "code"} and problem["type"] == "invalid_request_error"
    assert store.feedback() == []


def test_auth_json_and_size_errors(service):
    server, store, keys, _ = service
    url = f"{server.url}/v1/feedback"
    auth = {"Authorization": f"Bearer {keys['alice']}"}
    assert httpx.post(url, json={"completion_id": "x", "reaction": "love"}).status_code == 401
    wrong = httpx.post(url, json={"completion_id": "x", "reaction": "love"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "invalid API key" in wrong.text
    malformed = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and "json" in malformed.text.lower()
    huge = httpx.post(url, content=b"x" * (MAX_BODY_BYTES + 1), headers=auth)
    assert huge.status_code == 413
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers=auth,
                      json={"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]})
    assert chat.status_code == 400 and "last message must have role 'user'" in chat.text
    assert store.feedback() == [] and store.list_interactions("acme") == []
    for response, status in ((httpx.get(f"{server.url}/v1/nothing-here", headers=auth), 404),
                             (httpx.get(f"{server.url}/v1/feedback", headers=auth), 405)):
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    assert "/v1/feedback" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for page in ("/docs", "/redoc"):  # they would load their assets from a CDN
        assert httpx.get(f"{server.url}{page}").status_code == 404


def test_train_makes_a_version_the_server_serves_next_and_rollback_restores(service, tmp_path):
    server, store, keys, db = service
    for i in range(4):
        completion = ask(server, keys["alice"], text=f"Describe item {i}.", seed=i)
        corll.Client(server.url, keys["alice"]).edit(completion.id, "lovely lovely lovely")
    before = ask(server, keys["alice"], text="Describe item 9.", seed=42)
    assert before.system_fingerprint == "corll-policy-0"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--model", "tiny", "--db", db, "--adapters", str(tmp_path / "adapters"),
                                 "--min-feedback", "4", "--epochs", "3", "--batch-size", "4", "--lr", "0.05"])
    assert result.exit_code == 0, result.output
    [version] = store.versions("acme")
    assert version.active and version.details["pairs"] == 4
    after = ask(server, keys["alice"], text="Describe item 9.", seed=42)
    assert after.system_fingerprint == f"corll-policy-{version.id}"  # picked up without a restart
    assert store.get_interaction(store.authenticate(keys["alice"]), after.id).policy_version_id == version.id
    # Nothing new since this version: no new version.
    train = ["train", "--model", "tiny", "--db", db, "--adapters", str(tmp_path / "adapters"), "--min-feedback", "4",
             "--batch-size", "4"]
    again = runner.invoke(cli, train)
    assert "no new version" in again.output and len(store.versions("acme")) == 1
    # New edits make version 2 (its parent is version 1); --since-version 0 would retrain on everything.
    for i in range(4):
        completion = ask(server, keys["alice"], text=f"Describe thing {i}.", seed=i)
        corll.Client(server.url, keys["alice"]).edit(completion.id, "wonderful wonderful")
    assert runner.invoke(cli, train).exit_code == 0
    second = store.versions("acme")[-1]
    assert second.parent_id == version.id and second.details["pairs"] == 4 and second.active
    assert ask(server, keys["alice"]).system_fingerprint == f"corll-policy-{second.id}"
    # Rollback is one command, and the server follows at its next request.
    rolled = runner.invoke(cli, ["rollback", str(version.id), "--db", db])
    assert rolled.exit_code == 0, rolled.output
    assert ask(server, keys["alice"]).system_fingerprint == f"corll-policy-{version.id}"
    base = runner.invoke(cli, ["rollback", "0", "--tenant", "acme", "--db", db])
    assert base.exit_code == 0 and "base model" in base.output
    assert ask(server, keys["alice"]).system_fingerprint == f"corll-policy-{store.versions('acme')[-1].id}"
    assert store.active_version("acme", "alice").adapter_path is None  # served by the base model again
    assert runner.invoke(cli, ["rollback", "0", "--db", db]).exit_code == 2  # whose? --tenant is required
    assert runner.invoke(cli, ["rollback", str(version.id), "--db", db]).exit_code == 0
    everything = runner.invoke(cli, [*train, "--since-version", "0", "--epochs", "1"])
    assert everything.exit_code == 0 and store.versions("acme")[-1].details["pairs"] == 8


def test_per_user_training_routes_each_user_to_their_adapter(service, tmp_path):
    server, store, keys, db = service
    for i in range(4):
        completion = ask(server, keys["alice"], text=f"Item {i}.", seed=i)
        corll.Client(server.url, keys["alice"]).edit(completion.id, "alice style text")
    result = CliRunner().invoke(cli, ["train", "--model", "tiny", "--db", db, "--adapters", str(tmp_path / "a"),
                                      "--per-user", "--min-feedback", "4", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    [version] = store.versions("acme")
    assert version.user == "alice"
    assert ask(server, keys["alice"]).system_fingerprint == f"corll-policy-{version.id}"
    assert ask(server, keys["bob"]).system_fingerprint == "corll-policy-0"
    result = CliRunner().invoke(cli, ["rollback", "999", "--db", db])
    assert result.exit_code == 2 and "no policy version 999" in result.output


def test_a_database_outage_answers_503_and_loses_nothing_acknowledged(service):
    server, store, keys, _ = service
    from sqlalchemy import create_engine

    completion = ask(server, keys["alice"])
    acknowledged = corll.Client(server.url, keys["alice"]).react(completion.id, "love")
    working = store.engine
    store.sessions.configure(bind=create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none",
                                                connect_args={"connect_timeout": 1}))
    try:
        response = httpx.post(f"{server.url}/v1/feedback", json={"completion_id": completion.id, "reaction": "like"},
                              headers={"Authorization": f"Bearer {keys['alice']}"})
        assert response.status_code == 503 and "nothing was recorded" in response.text
        assert httpx.get(f"{server.url}/healthz").status_code == 503
    finally:
        store.sessions.configure(bind=working)
    assert [r.event_id for r in store.feedback()] == [acknowledged["id"]]


def test_temperature_zero_is_greedy_and_repeatable(service):
    server, _, keys, _ = service
    first, second = (ask(server, keys["alice"], temperature=0).choices[0].message.content for _ in range(2))
    assert first == second


def test_metrics_are_prometheus_text_and_count_what_happened(service):
    from prometheus_client.parser import text_string_to_metric_families

    server, _, keys, _ = service

    def samples():
        text = httpx.get(f"{server.url}/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    completion = ask(server, keys["alice"])
    corll.Client(server.url, keys["alice"]).edit(completion.id, "kept")
    after = samples()
    chat = ("corll_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    assert after[chat] == before.get(chat, 0) + 1
    assert after[("corll_feedback_accepted_total", (("kind", "edit"),))] == 1
    assert after[("corll_completion_tokens_total", ())] >= before.get(("corll_completion_tokens_total", ()), 0)
    assert ("corll_engine_running_sequences", ()) in after
    assert after[("corll_request_seconds_count", (("route", "/v1/chat/completions"),))] >= 1
    assert after[("corll_learner_decisions_total", (("decision", "promoted"),))] == 0
    store = service[1]
    store.rollback(0, tenant="acme", user="alice")
    assert samples()[("corll_learner_decisions_total", (("decision", "rollback"),))] == 1


def test_an_abandoned_completion_stops_decoding_and_is_not_logged(tmp_path):
    """A client that gives up on a non-streaming completion frees its rows: nothing is decoded past the
    disconnect (within the server's half-second look) and nothing is logged."""
    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    engine = slow_engine()
    server = LiveServer(store, engine)
    try:
        key = store.create_api_key("acme", "alice")
        body = {"model": "tiny", "n": 8, "max_tokens": 400, "temperature": 1.0,
                "messages": [{"role": "user", "content": "Tell a long story."}]}
        headers = {"Authorization": f"Bearer {key}"}
        started = time.perf_counter()
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        whole = time.perf_counter() - started  # the time the same request takes when the client waits
        assert len(store.list_interactions("acme")) == 8 and whole > 2.0, whole
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=0.2)
        left = time.perf_counter()
        while engine.running and time.perf_counter() - left < whole:
            time.sleep(0.01)
        freed = time.perf_counter() - left
        assert engine.running == 0 and freed < min(1.5, whole / 2), (freed, whole)
        time.sleep(0.5)
        assert len(store.list_interactions("acme")) == 8  # the abandoned request logged nothing
    finally:
        server.stop()


def slow_engine() -> PolicyEngine:
    """The tiny model decoding at a real model's pace and never ending early (no end-of-text token), so a
    request outlives what a test does meanwhile."""
    engine = PolicyEngine("tiny", default_max_tokens=16, max_tokens_limit=400)
    forward = engine._forward

    def slow_forward(*args):
        time.sleep(0.005)
        return forward(*args)

    engine._forward, engine.eos = slow_forward, set()
    return engine


def test_a_completion_still_streaming_when_its_user_is_forgotten_is_not_logged(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    server = LiveServer(store, slow_engine())
    keys = {"alice": store.create_api_key("acme", "alice")}
    admin = store.create_api_key("acme", "ops", admin=True)
    body = {"model": "tiny", "stream": True, "max_tokens": 400, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell a long story."}]}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {keys['alice']}"}) as response:
        for line in filter(None, response.iter_lines()):
            events.append(line)
            if len(events) == 3:  # decoding has begun: forget her now
                forgotten = httpx.delete(f"{server.url}/v1/users/alice", headers={"Authorization": f"Bearer {admin}"})
                assert forgotten.status_code == 200, forgotten.text
    assert "was forgotten" in events[-1] and "[DONE]" not in "".join(events)
    assert store.list_interactions("acme", user="alice") == []
    with corll.Client(server.url, admin) as client:
        assert client.interactions()["data"] == []
    server.stop()


def test_a_flooding_user_gets_429_beyond_their_share_and_does_not_stall_another_user(tmp_path):
    """One user sends 24 requests of n = 8 × 400 tokens at once; another user's latency stays within 3× of
    what it is alone (measured: 0.13 s → 30 s before users had shares of the batch). Not 1×: the flood's
    admitted rows share each decoding step with Bob's, and a step over 33 rows costs more than over one
    (here 2.0× one CI run's, 0.048 → 0.097 s); a stall is two orders of magnitude more."""
    import concurrent.futures
    import gc
    import statistics

    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    engine = PolicyEngine("tiny", default_max_tokens=16, max_tokens_limit=400)
    server = LiveServer(store, engine)
    keys = {u: store.create_api_key("acme", u) for u in ("flood", "bob")}

    def bob_latencies() -> list[float]:
        times = []
        for i in range(10):
            started = time.perf_counter()
            ask(server, keys["bob"], text=f"Say hello {i}.", seed=i)
            times.append(time.perf_counter() - started)
        return times

    def flood(i: int) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                          headers={"Authorization": f"Bearer {keys['flood']}"},
                          json={"model": "tiny", "n": 8, "max_tokens": 400, "seed": i,
                                "messages": [{"role": "user", "content": f"Tell a long story {i}."}]})

    try:
        bob_latencies()  # warm-up
        gc.collect()  # the suite's leftovers, collected now rather than in the middle of a measurement
        alone = statistics.median(bob_latencies())
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            flooding = [pool.submit(flood, i) for i in range(24)]
            deadline = time.monotonic() + 30  # the flood is queued and decoding (sooner or later on a busy machine)
            while engine.running == 0:
                assert time.monotonic() < deadline, "the flood never reached the engine"
                time.sleep(0.01)
            during = statistics.median(bob_latencies())
            answers = [f.result() for f in flooding]
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) == 24 - engine.limit.limit and all(a.headers["Retry-After"] == "1" for a in refused)
        assert all(a.status_code == 200 for a in answers if a.status_code != 429)
        assert refused[0].json()["error"]["type"] == "rate_limit_error"
        assert during <= 3 * alone, (alone, during)
    finally:
        server.stop()


def test_the_http_layer_imports_no_model_code():
    """The app speaks to its engine through `corll.server.protocol` alone: importing it loads no torch."""
    import subprocess
    import sys

    probe = "import sys, corll.server.app; print('torch' in sys.modules, 'corll.server.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
