"""Trustworthy feedback on a real server: authors, admin keys, own-log listing, idempotent retries, key
revocation and expiry, hard Unicode — on SQLite and PostgreSQL."""

import json
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from typer.testing import CliRunner

import corll
from corll.cli import app as cli
from corll.server.engine import PolicyEngine
from corll.store import Store
from tests.server.test_app import LiveServer, openai_client


@pytest.fixture
def deployment(store_url):
    url = store_url
    store = Store(url)
    server = LiveServer(store, PolicyEngine("tiny", default_max_tokens=8))
    keys = {"alice": store.create_api_key("acme", "alice"), "carol": store.create_api_key("acme", "carol"),
            "admin": store.create_api_key("acme", "ops", admin=True)}
    yield server, store, keys, url
    server.stop()


def post(server, key, body, **headers):
    return httpx.post(f"{server.url}/v1/feedback", content=json.dumps(body),
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})


def draft(server, key, text="Write a line."):
    return openai_client(server, key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=8, seed=1)


def test_feedback_belongs_to_its_author_and_only_the_owner_or_an_admin_may_send_it(deployment):
    server, store, keys, _ = deployment
    mine = draft(server, keys["alice"])
    refused = post(server, keys["carol"], {"completion_id": mine.id, "edit": "carol's words"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert post(server, keys["alice"], {"completion_id": mine.id, "edit": "alice's words"}).status_code == 200
    assert post(server, keys["admin"], {"completion_id": mine.id, "reaction": "like"}).status_code == 200
    assert [(r.author, r.user) for r in store.feedback()] == [("alice", "alice"), ("ops", "alice")]
    draft(server, keys["carol"], "Carol asks.")
    with corll.Client(server.url, keys["carol"]) as carol:
        assert [i["user"] for i in carol.interactions()["data"]] == ["carol"]  # her own log only
    with corll.Client(server.url, keys["admin"]) as admin:
        assert sorted(i["user"] for i in admin.interactions()["data"]) == ["alice", "carol"]


def test_an_idempotent_retry_returns_the_first_answer_and_a_changed_body_is_409(deployment):
    server, store, keys, _ = deployment
    c = draft(server, keys["alice"])
    body = {"completion_id": c.id, "edit": "kept text ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"}
    first = post(server, keys["alice"], body, **{"Idempotency-Key": "k-1"})
    again = post(server, keys["alice"], body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    changed = post(server, keys["alice"], {**body, "edit": "something else"}, **{"Idempotency-Key": "k-1"})
    assert changed.status_code == 409 and changed.json()["error"]["param"] == "Idempotency-Key"
    assert [r.edit for r in store.feedback()] == [body["edit"]]  # stored once, losslessly


def test_the_sdk_retries_a_lost_answer_without_doubling_the_event(deployment):
    server, store, keys, _ = deployment
    c = draft(server, keys["alice"])
    calls = []

    def lose_the_first_answer(request: httpx.Request) -> httpx.Response:
        real = httpx.post(str(request.url), content=request.content, headers=dict(request.headers))
        calls.append(request.headers["Idempotency-Key"])
        if len(calls) == 1:  # the server committed, the connection died before the answer arrived
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(real.status_code, content=real.content, headers=real.headers)

    client = corll.Client(server.url, keys["alice"])
    client.http = httpx.Client(base_url=server.url, headers=client.http.headers,
                               transport=httpx.MockTransport(lose_the_first_answer))
    answer = client.edit(c.id, "edited once")
    assert len(calls) == 2 and calls[0] == calls[1] and answer["kind"] == "edit"
    assert len(store.feedback()) == 1


def test_revoked_and_expired_keys_answer_401_at_once(deployment):
    server, store, keys, url = deployment
    soon = store.create_api_key("acme", "dave", expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    gone = store.create_api_key("acme", "erin", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert draft(server, soon).id
    with pytest.raises(openai.AuthenticationError):
        draft(server, gone)
    runner = CliRunner()
    listed = runner.invoke(cli, ["keys", "list", "--db", url])
    assert listed.exit_code == 0 and "expired" in listed.output and soon not in listed.output
    dave = next(k for k in store.list_api_keys("acme") if k.user == "dave")
    assert runner.invoke(cli, ["keys", "revoke", str(dave.id), "--db", url]).exit_code == 0
    with pytest.raises(openai.AuthenticationError) as caught:
        draft(server, soon)
    assert caught.value.code == "invalid_api_key"
    created = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--user", "fay", "--admin", "--expires",
                                  "30d", "--db", url])
    assert created.exit_code == 0 and store.authenticate(created.output.strip()).admin
    assert runner.invoke(cli, ["keys", "create", "--tenant", "a", "--user", "b", "--expires", "soonish",
                               "--db", url]).exit_code == 2


@pytest.mark.parametrize("text", ["lone \ud800 surrogate", "nul \x00 inside"])
def test_unstorable_text_is_400_naming_the_field_on_both_backends(deployment, text):
    server, store, keys, _ = deployment
    c = draft(server, keys["alice"])
    response = post(server, keys["alice"], {"completion_id": c.id, "edit": text})
    assert response.status_code == 400 and response.json()["error"]["param"] == "edit"
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['alice']}",
                                                                     "Content-Type": "application/json"},
                      content=json.dumps({"model": "tiny", "messages": [{"role": "user", "content": text}]}))
    assert chat.status_code == 400 and "messages.0.content" in chat.json()["error"]["param"]
    assert store.feedback() == [] and len(store.list_interactions("acme")) == 1


def test_a_users_adapter_learns_from_their_own_edits_only(deployment, tmp_path):
    server, store, keys, url = deployment
    for i in range(6):
        c = draft(server, keys["alice"], f"Item {i}.")
        author = "alice" if i < 4 else "admin"  # the admin edits two of alice's drafts
        assert post(server, keys[author], {"completion_id": c.id, "edit": f"kept text {i}"}).status_code == 200
    result = CliRunner().invoke(cli, ["train", "--model", "tiny", "--db", url, "--adapters", str(tmp_path / "a"),
                                      "--per-user", "--min-feedback", "4", "--batch-size", "4", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    [version] = store.versions("acme")
    assert version.user == "alice" and version.details["pairs"] == 4


def test_forgetting_a_user_removes_their_data_and_retires_what_learned_from_it(deployment, tmp_path):
    server, store, keys, url = deployment
    runner = CliRunner()
    train = ["train", "--model", "tiny", "--db", url, "--adapters", str(tmp_path / "a"), "--min-feedback", "4",
             "--batch-size", "4", "--epochs", "1"]
    for user, texts in (("carol", "carol kept"), ("alice", "alice kept")):
        for i in range(4):
            c = draft(server, keys[user], f"{user} item {i}.")
            assert post(server, keys[user], {"completion_id": c.id, "edit": f"{texts} {i}"}).status_code == 200
    assert runner.invoke(cli, [*train, "--per-user"]).exit_code == 0  # alice's and carol's own adapters
    assert runner.invoke(cli, train).exit_code == 0  # a shared version from both users' edits
    versions = {(v.user or "shared"): v for v in store.versions("acme")}
    assert set(versions) == {"alice", "carol", "shared"} and versions["shared"].details["users"] == ["alice", "carol"]
    denied = httpx.delete(f"{server.url}/v1/users/carol", headers={"Authorization": f"Bearer {keys['alice']}"})
    assert denied.status_code == 403 and len(store.feedback()) == 8
    answer = httpx.delete(f"{server.url}/v1/users/carol", headers={"Authorization": f"Bearer {keys['admin']}"})
    assert answer.status_code == 200, answer.text
    removed = answer.json()
    assert removed["interactions"] == 4 and removed["feedback_events"] == 4 and removed["api_keys"] == 1
    assert removed["retired_versions"] == sorted([versions["carol"].id, versions["shared"].id])
    assert {r.user for r in store.feedback()} == {"alice"}  # alice's data stays
    assert not any((tmp_path / "a" / "acme" / "carol").rglob("*.safetensors"))  # the weights are gone too
    with pytest.raises(openai.AuthenticationError):
        draft(server, keys["carol"])  # her key is gone
    # the shared version is no longer served or listed, nor can it be pinned or rolled back to
    with corll.Client(server.url, keys["admin"]) as admin:
        assert {i["user"] for i in admin.interactions()["data"]} == {"alice"}
    assert draft(server, keys["admin"]).system_fingerprint == "corll-policy-0"
    ids = [m.id for m in openai_client(server, keys["admin"]).models.list()]
    assert f"tiny:v{versions['shared'].id}" not in ids
    assert runner.invoke(cli, ["rollback", str(versions["shared"].id), "--db", url]).exit_code != 0
    assert draft(server, keys["alice"]).system_fingerprint == f"corll-policy-{versions['alice'].id}"  # untouched


def test_the_sdks_retry_policy_backs_off_on_503_and_connection_errors_only():
    import httpx

    from corll.client import Delivery

    delivery = Delivery(retries=3)
    key = delivery.headers["Idempotency-Key"]
    busy = httpx.Response(503)
    pauses = [delivery.pause_after(busy), delivery.pause_after(httpx.ConnectError("down")), delivery.pause_after(busy),
              delivery.pause_after(busy)]
    assert pauses == [0.25, 0.5, 1.0, None]  # doubling, then the 4th outcome is the answer
    assert delivery.headers["Idempotency-Key"] == key  # one key for every try of the event
    assert Delivery(3).pause_after(httpx.Response(400)) is None  # a refusal is final at once
    assert Delivery(3).pause_after(httpx.Response(200)) is None
