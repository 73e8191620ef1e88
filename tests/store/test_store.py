"""The feedback log on SQLite and on a real PostgreSQL server."""

import pytest
from sqlalchemy import inspect

from corll.store import NotFoundError, Principal, Store, StoreError

ALICE = Principal("acme", "alice")
BOB = Principal("acme", "bob")
MALLORY = Principal("evil", "mallory")
CHAT = [{"role": "user", "content": "Write a tagline."}]


def interaction(store, who=ALICE, response="A fine product."):
    return store.record_interaction(who, CHAT, response, policy_version_id=None, sampling={"temperature": 1.0},
                                    response_logprob=-12.5)


def test_schema_comes_from_the_migrations(store_url):
    store = Store(store_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"interactions", "feedback_events", "policy_versions", "api_keys", "alembic_version"} <= tables
    Store(store_url)  # opening again is a no-op upgrade


def test_interactions_and_several_feedback_events_round_trip(store_url):
    store = Store(store_url)
    cid = interaction(store)
    first = store.add_feedback(ALICE, cid, edit="A truly fine product.")
    with pytest.raises(NotFoundError):  # same tenant, another user: not theirs to judge
        store.add_feedback(BOB, cid, reaction="love")
    second = store.add_feedback(Principal("acme", "ops", admin=True), cid, reaction="love")  # the tenant's admin
    row = store.get_interaction(ALICE, cid)
    assert row.messages == CHAT and row.response == "A fine product." and row.response_logprob == -12.5
    assert [(f.id, f.kind, f.edit, f.reaction) for f in row.feedback] == [
        (first, "edit", "A truly fine product.", None), (second, "reaction", None, "love")]
    records = store.feedback()
    assert [r.event_id for r in records] == [first, second] and records[0].messages == CHAT
    assert [r.author for r in records] == ["alice", "ops"]
    assert [r.event_id for r in store.feedback(after_event=first)] == [second]
    assert [r.event_id for r in store.feedback(kind="edit")] == [first]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"edit": "   "}, "'edit' is empty"),
    ({"edit": "x" * 40_000}, "limit is 32000"),
    ({"reaction": "meh"}, "unknown reaction 'meh'"),
    ({}, "exactly one"),
    ({"edit": "a", "reaction": "love"}, "exactly one"),
])
def test_bad_feedback_is_refused_and_nothing_is_written(store_url, kwargs, message):
    store = Store(store_url)
    cid = interaction(store)
    with pytest.raises(StoreError, match=message):
        store.add_feedback(ALICE, cid, **kwargs)
    assert store.feedback() == []


def test_tenants_cannot_see_or_touch_each_others_interactions(store_url):
    store = Store(store_url)
    cid = interaction(store)
    mine = interaction(store, MALLORY)
    with pytest.raises(NotFoundError, match="no completion"):
        store.add_feedback(MALLORY, cid, reaction="dislike")
    with pytest.raises(NotFoundError):
        store.get_interaction(MALLORY, cid)
    with pytest.raises(NotFoundError):
        store.add_feedback(ALICE, "chatcmpl-does-not-exist", reaction="love")
    assert [r.id for r in store.list_interactions("evil")] == [mine]
    assert store.feedback() == []


def test_pages_are_newest_first_and_complete(store_url):
    store = Store(store_url)
    ids = [interaction(store, response=f"r{i}") for i in range(5)]
    first = store.list_interactions("acme", limit=2)
    second = store.list_interactions("acme", limit=2, before=first[-1].id)
    third = store.list_interactions("acme", limit=2, before=second[-1].id)
    assert [r.id for r in first + second + third] == ids[::-1]


def test_api_keys_are_hashed_and_bound_to_tenant_and_user(store_url):
    store = Store(store_url)
    key = store.create_api_key("acme", "alice")
    assert store.authenticate(key) == ALICE and store.authenticate(key + "x") is None
    with store.sessions() as s:
        from corll.store.schema import ApiKey

        assert key not in [row.key_hash for row in s.query(ApiKey)]


def test_versions_activate_per_user_and_roll_back(store_url):
    store = Store(store_url)
    shared = store.add_policy_version("acme", None, "/adapters/1")
    alice_v = store.add_policy_version("acme", "alice", "/adapters/2", parent_id=shared)
    newer = store.add_policy_version("acme", None, "/adapters/3", parent_id=shared)
    assert store.active_version("acme", "alice").id == alice_v  # her own adapter
    assert store.active_version("acme", "bob").id == newer  # the shared one
    store.activate(shared)  # rollback
    assert store.active_version("acme", "bob").id == shared
    assert store.active_version("acme", "alice").id == alice_v
    assert store.active_version("other", "x") is None
    with pytest.raises(NotFoundError):
        store.activate(999)


def test_forget_wins_every_race_with_feedback_and_logging_and_leaves_nothing(store_url):
    """8 clients post edits and a completion is logged for alice while she is forgotten: forget succeeds
    every time, the racing writes are refused as not found, and nothing of hers remains."""
    import threading
    import time

    store = Store(store_url)
    bob_key = store.create_api_key("acme", "bob")
    bob_interaction = interaction(store, store.authenticate(bob_key))
    for attempt in range(3):
        alice = store.authenticate(store.create_api_key("acme", "alice"))
        ids = [interaction(store, alice) for _ in range(8)]
        failures, refused, stored = [], [], []

        def keep_writing(write) -> None:
            while True:
                try:
                    write()
                    stored.append(1)
                except NotFoundError:
                    refused.append(1)
                    return
                except Exception as exc:  # noqa: BLE001 - any other outcome is the bug
                    failures.append(exc)
                    return

        writers = [threading.Thread(target=keep_writing, args=(lambda i=i: store.add_feedback(alice, ids[i], edit=f"kept {i}"),))
                   for i in range(8)]
        writers.append(threading.Thread(target=keep_writing, args=(lambda: interaction(store, alice),)))
        for thread in writers:
            thread.start()
        time.sleep(0.3)
        removed = store.forget_user("acme", "alice")
        for thread in writers:
            thread.join(timeout=60)
        assert not failures, failures
        assert len(refused) == 9 and removed["interactions"] >= 8 and removed["api_keys"] == 1
        assert store.list_interactions("acme", user="alice") == []
        assert {r.user for r in store.feedback(tenant="acme")} <= {"bob"}
        assert [k.user for k in store.list_api_keys("acme")] == ["bob"]
    assert store.get_interaction(Principal("acme", "bob"), bob_interaction).id == bob_interaction


def test_forgetting_a_user_the_tenant_never_had_is_not_found_and_writes_nothing(store_url):
    store = Store(store_url)
    with pytest.raises(NotFoundError, match="no user 'ghost'"):
        store.forget_user("acme", "ghost")
    from sqlalchemy import func, select

    from corll.store.schema import ForgetLog
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ForgetLog)) == 0
