"""Fuzz the service from its own OpenAPI spec (schemathesis) and with hard strings on both backends:
whatever arrives, no 5xx, and a refused request stores nothing."""

import json
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from corll.server.app import create_app
from corll.server.engine import PolicyEngine
from corll.store import Store

_folder = Path(tempfile.mkdtemp(prefix="corll-fuzz-"))
STORE = Store(f"sqlite:///{_folder / 'fuzz.db'}")
KEY = STORE.create_api_key("acme", "fuzzer")
APP = create_app(STORE, PolicyEngine("tiny", default_max_tokens=4, max_tokens_limit=4))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case):
    for headers in ({"Authorization": f"Bearer {KEY}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (response.status_code, response.text[:300])


# Strings schemathesis does not generate by default: lone surrogates (sent as JSON escapes), NUL,
# other control characters, astral-plane and combining characters, very long text.
HARD_TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=60),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "x\x00y", "\u202e\u0301\U0001f600", "\ufeff", "\x7f\x1b[31m"]),
    st.text(st.characters(codec=None, exclude_categories=()), min_size=31_990, max_size=32_010),
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hard_case_app(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'corll.db'}"
    else:
        from sqlalchemy import create_engine, text

        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    store = Store(url)
    key = store.create_api_key("acme", "fuzzer")
    client = TestClient(create_app(store, PolicyEngine("tiny", default_max_tokens=2, max_tokens_limit=2)))
    completion = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).json()
    client.admin_key = store.create_api_key("acme", "ops", admin=True)
    yield client, store, key, completion["id"]
    client.close()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=HARD_TEXT, where=st.sampled_from(["edit", "message", "stop", "idempotency", "model", "completion_id",
                                              "version", "before", "user"]))
def test_hard_strings_never_cause_a_5xx_and_a_refusal_stores_nothing(hard_case_app, text, where):
    client, store, key, completion_id = hard_case_app
    before = (len(store.feedback()), len(store.list_interactions("acme", limit=200)))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if where in ("edit", "completion_id"):
        body = {"completion_id": completion_id, "edit": text} if where == "edit" else {"completion_id": text,
                                                                                        "reaction": "like"}
        response = client.post("/v1/feedback", headers=headers, content=json.dumps(body))
    elif where in ("before", "user"):  # percent-encoded bytes, lone surrogates included, as a client may send them
        raw = quote(text.encode("utf-8", "surrogatepass"), safe="")
        if where == "before":
            response = client.get(f"/v1/interactions?before={raw}", headers=headers)
        else:
            response = client.delete(f"/v1/users/{raw}", headers={"Authorization": f"Bearer {client.admin_key}"})
    elif where == "idempotency":
        header = text.encode("utf-8", "surrogatepass")[:255]  # raw bytes, as a client may send them
        if not header.strip() or any(c in header for c in b"\r\n\x00"):
            return  # not a sendable header value
        response = client.post("/v1/feedback", headers={**headers, "Idempotency-Key": header},
                               content=json.dumps({"completion_id": completion_id, "reaction": "like"}))
    else:
        model = {"model": text, "version": f"tiny:v{text}"}.get(where, "tiny")
        body = {"model": model,
                "messages": [{"role": "user", "content": text if where == "message" else "hi"}],
                **({"stop": text} if where == "stop" else {})}
        response = client.post("/v1/chat/completions", headers=headers, content=json.dumps(body))
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
        assert (len(store.feedback()), len(store.list_interactions("acme", limit=200))) == before


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), [
    ("post", "/v1/chat/completions", {**CHAT, "model": "tiny:v²"}, 404, "does not exist"),
    ("post", "/v1/chat/completions", {**CHAT, "model": "tiny:v①"}, 404, "does not exist"),
    ("post", "/v1/chat/completions", {**CHAT, "model": "tiny:v9223372036854775808"}, 404, "does not exist"),
    ("post", "/v1/chat/completions", {**CHAT, "model": f"tiny:v{2**31}"}, 404, "does not exist"),
    ("post", "/v1/rollback", {"version": 2**64}, 400, "version"),
    ("post", "/v1/rollback", {"version": 2**63 - 1}, 400, "version"),
    ("post", "/v1/rollback", {"version": "3"}, 400, "version"),
    ("get", "/v1/interactions?before=%00", None, 400, "before"),
    ("delete", "/v1/users/%00", None, 400, "user"),
    ("delete", "/v1/users/ghost", None, 404, "no user 'ghost'"),
    ("post", "/v1/chat/completions", {**CHAT, "n": "2"}, 400, "n"),
    ("post", "/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("post", "/v1/chat/completions", {**CHAT, "logprobs": "yes"}, 400, "logprobs"),
    ("post", "/v1/chat/completions", {**CHAT, "temperature": "0.5"}, 400, "temperature"),
    ("post", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": []}]}, 400, "empty list"),
    ("post", "/v1/feedback", {"completion_id": "ID", "edit": "\u200b\u200d \u2060"}, 400, "invisible"),
    ("post", "/v1/feedback", {"completion_id": "ID", "reaction": "love", "choice": "1"}, 400, "choice"),
])
def test_hostile_shapes_get_a_4xx_naming_the_problem_on_both_backends(hard_case_app, method, path, body, status,
                                                                         needle):
    client, store, _, completion_id = hard_case_app
    before = (len(store.feedback()), len(store.list_interactions("acme", limit=200)), len(store.versions("acme")))
    if body is not None and body.get("completion_id") == "ID":
        body = {**body, "completion_id": completion_id}
    headers = {"Authorization": f"Bearer {client.admin_key}"}
    response = client.request(method.upper(), path, headers=headers, json=body)
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert needle in response.json()["error"]["message"]
    assert (len(store.feedback()), len(store.list_interactions("acme", limit=200)), len(store.versions("acme"))) \
        == before
