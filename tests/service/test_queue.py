from datetime import datetime, timedelta, timezone

import pytest

from corll.service.lineages import Lineage
from corll.service.queue import EditQueue, edit_to_decision
from corll.store import Principal, Store
from corll.store.schema import aware
from tests.service.edits import ALICE, BOB, log_edits

CAROL = Principal("other", "carol")
ADMIN = Principal("acme", "root", admin=True)


@pytest.fixture
def store(store_url):
    return Store(store_url)


def decide(store: Store, who: Principal | None, tenant: str, seen_through: int, waited: float = 1.0):
    return store.decide(tenant, who.user if who else None, decision="rejected", reason="test", seen_through=seen_through,
                        adapter_path=f"/nowhere/{tenant}/{who.user if who else 'shared'}/{seen_through}", parent_id=None,
                        details={}, metrics={"edit_to_decision_s": waited})


def test_a_poll_reads_only_the_edits_logged_since_the_last_one(store):
    log_edits(store, ALICE, 3)
    queue = EditQueue(store, min_edits=2, shared=False)
    assert queue.poll() == 3
    assert queue.poll() == 0
    log_edits(store, BOB, 2)
    assert queue.poll() == 2
    assert [len(queue.waiting(Lineage("acme", u))) for u in ("alice", "bob")] == [3, 2]


def test_due_lineages_come_oldest_waiting_edit_first_and_a_short_one_waits(store):
    log_edits(store, BOB, 2)
    log_edits(store, ALICE, 3)
    log_edits(store, CAROL, 1)
    log_edits(store, BOB, 1)
    queue = EditQueue(store, min_edits=2, shared=False)
    queue.poll()
    assert queue.due() == [Lineage("acme", "bob"), Lineage("acme", "alice")]  # bob's first edit is older
    log_edits(store, CAROL, 1)
    queue.poll()
    assert queue.due()[-1] == Lineage("other", "carol")


def test_the_shared_lineage_takes_every_edit_and_a_users_own_only_theirs(store):
    bobs = store.record_interaction(BOB, [{"role": "user", "content": "hi"}], "draft", policy_version_id=None,
                                    sampling={}, response_logprob=None)
    store.add_feedback(ADMIN, bobs, edit="an admin's fix")  # on bob's completion, not bob's edit
    log_edits(store, ALICE, 1)
    queue = EditQueue(store, min_edits=1, shared=True)
    queue.poll()
    assert set(queue.lineages) == {Lineage("acme", None), Lineage("acme", "alice")}
    assert len(queue.waiting(Lineage("acme", None))) == 2


def test_a_worker_starts_from_the_watermarks_and_resyncs_after_a_decision(store):
    first = log_edits(store, ALICE, 4)
    decide(store, ALICE, "acme", first[2])
    queue = EditQueue(store, min_edits=2, shared=False)
    queue.poll()
    assert [e.event_id for e in queue.waiting(Lineage("acme", "alice"))] == [first[3]]  # decided ones are past
    more = log_edits(store, ALICE, 2, start=4)
    queue.poll()
    assert queue.due() == [Lineage("acme", "alice")]
    decide(store, ALICE, "acme", more[0])  # another worker decided through the first new edit
    queue.resync(Lineage("acme", "alice"))
    assert [e.event_id for e in queue.waiting(Lineage("acme", "alice"))] == [more[1]]
    assert queue.due() == []


def test_a_lineage_found_short_waits_for_a_newer_edit(store):
    events = log_edits(store, ALICE, 3)
    queue = EditQueue(store, min_edits=3, shared=False)
    queue.poll()
    queue.resync(Lineage("acme", "alice"), short_through=events[-1])  # e.g. an edit left its draft unchanged
    assert queue.due() == []
    log_edits(store, ALICE, 1, start=3)
    queue.poll()
    assert queue.due() == [Lineage("acme", "alice")]


def test_a_forgotten_users_edits_leave_the_queue_at_resync(store):
    log_edits(store, BOB, 3)
    queue = EditQueue(store, min_edits=2, shared=False)
    queue.poll()
    store.forget_user("acme", "bob")
    queue.resync(Lineage("acme", "bob"))
    assert queue.waiting(Lineage("acme", "bob")) == [] and queue.due() == []


def test_edit_to_decision_reports_the_median_and_the_95th_percentile(store):
    assert edit_to_decision(store) is None
    events = log_edits(store, ALICE, 20)
    for i, event in enumerate(events):
        decide(store, ALICE, "acme", event, waited=float(i + 1))
    assert edit_to_decision(store) == {"p50": 10.0, "p95": 19.0, "decisions": 20}
    assert edit_to_decision(store, last=4) == {"p50": 18.0, "p95": 20.0, "decisions": 4}


def test_a_worker_reports_its_lineage_and_keeps_its_queue_count_until_the_next_poll(store):
    store.set_worker_state("learner a", "training acme/alice", lineage="acme/alice", queue=3)
    store.set_worker_state("learner a", "training acme/alice: DPO step 1/4", lineage="acme/alice")
    (worker,) = store.worker_states()
    assert (worker.lineage, worker.queue) == ("acme/alice", 3)
    store.set_worker_state("learner a", "idle", queue=0)
    (worker,) = store.worker_states()
    assert (worker.lineage, worker.queue) == (None, 0)
    assert datetime.now(timezone.utc) - aware(worker.updated_at) < timedelta(minutes=1)
