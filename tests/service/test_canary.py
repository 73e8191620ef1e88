import random

import pytest

from corll.server.app import resolve_model
from corll.service.canary import CanarySettings, judge, watch
from corll.service.learn import learn_once
from corll.service.versions import version_rows
from corll.stats import sign_evidence
from corll.store import ConflictError, Store
from corll.store.schema import CanaryLook
from tests.service.edits import ALICE, BOB, log_edits
from tests.service.test_learn import config

ALPHA = 0.05


def simulate(p_win: float, p_tie: float, seeds: int, budget: int) -> dict[str, int]:
    """Canaries whose candidate draft costs fewer words than the control's with probability p_win (and as many
    with p_tie), looked at after every pair, as the learner looks after every poll."""
    outcomes = {"promoted": 0, "rejected": 0}
    for seed in range(seeds):
        rng = random.Random(seed)
        candidate, control = [], []
        for _ in range(budget):
            u = rng.random()
            cost = rng.randint(0, 20)
            control.append(cost)
            candidate.append(cost - 1 if u < p_win else cost if u < p_win + p_tie else cost + 1)
            verdict = judge(candidate, control, ALPHA, budget)
            if verdict.decision is not None:
                outcomes[verdict.decision] += 1
                break
    return outcomes


def test_the_evidence_for_better_is_a_mixture_likelihood_ratio():
    assert sign_evidence(0, 0) == 1.0
    assert sign_evidence(10, 0) == pytest.approx(2 * (1 - 0.5 ** 11) / 11 * 2 ** 10)  # ∫ 2 p^10 dp over (1/2, 1]
    assert sign_evidence(10, 2) > sign_evidence(9, 2) and sign_evidence(2, 10) < 1


@pytest.mark.parametrize(("p_win", "p_tie"), [(0.4, 0.2), (0.3, 0.4), (0.2, 0.2)])
def test_a_candidate_no_better_is_promoted_at_most_alpha_of_the_time_however_often_one_looks(p_win, p_tie):
    """Equal (p_win = p_loss) or worse candidates, 4000 canaries each looked at after every one of 100 pairs:
    the share promoted stays at or below α (plus three Monte Carlo standard errors)."""
    seeds = 4000
    promoted = simulate(p_win, p_tie, seeds, budget=100)["promoted"]
    assert promoted / seeds <= ALPHA + 3 * (ALPHA * (1 - ALPHA) / seeds) ** 0.5, promoted


def test_a_better_candidate_is_promoted_and_a_worse_one_rejected_early():
    better = simulate(0.7, 0.1, 300, budget=60)
    assert better["promoted"] >= 0.8 * 300, better
    worse = simulate(0.1, 0.1, 300, budget=60)
    assert worse["promoted"] == 0 and worse["rejected"] == 300


def test_a_look_keeps_going_promotes_rejects_or_runs_out_of_budget():
    assert judge([1, 2], [3, 4], ALPHA, budget=40).decision is None
    assert judge([0] * 8, [5] * 8, ALPHA, budget=40).decision == "promoted"
    assert judge([5] * 8, [0] * 8, ALPHA, budget=40).decision == "rejected"
    out_of_budget = judge([1, 2, 3, 4], [1, 2, 3, 4], ALPHA, budget=4)
    assert out_of_budget.decision == "rejected" and "budget of 4" in out_of_budget.reason
    assert out_of_budget.look.ties == 4


def test_canary_settings_name_their_problem():
    with pytest.raises(ValueError, match="share"):
        CanarySettings(share=1.0)
    with pytest.raises(ValueError, match="alpha"):
        CanarySettings(share=0.5, alpha=0)


@pytest.fixture
def store(store_url):
    return Store(store_url)


def open_canary(store: Store, who=ALICE, share: float = 0.5, budget: int = 40):
    control = store.decide(who.tenant, who.user, decision="promoted", reason="first", seen_through=0,
                           adapter_path=f"/nowhere/{who.user}/1", parent_id=None, details={}, metrics={})
    opened = store.decide(who.tenant, who.user, decision="canary", reason="passed the offline gate", seen_through=1,
                          adapter_path=f"/nowhere/{who.user}/2", parent_id=control.version_id, details={}, metrics={},
                          canary=dict(share=share, alpha=ALPHA, budget=budget, control_id=control.version_id))
    return control.version_id, opened.version_id


def edited(store: Store, who, version: int, draft: str, edit: str) -> None:
    interaction = store.record_interaction(who, [{"role": "user", "content": "Write."}], draft,
                                           policy_version_id=version, sampling={}, response_logprob=None)
    store.add_feedback(who, interaction, edit=edit)


def test_a_canary_serves_its_share_of_its_users_requests_and_nobody_elses(store):
    control, candidate = open_canary(store, share=0.3)
    assert store.version(candidate).active is False and store.active_version("acme", "alice").id == control
    random.seed(0)
    served = [resolve_model(store, "tiny", ALICE, "tiny").version_id for _ in range(400)]
    assert set(served) == {control, candidate} and 0.22 < served.count(candidate) / 400 < 0.38
    assert {resolve_model(store, "tiny", BOB, "tiny").version_id for _ in range(50)} == {None}
    assert [r.status for r in version_rows(store, "acme")] == ["active", "canary"]


def test_a_shared_canary_drafts_for_users_without_their_own_version_and_each_request_reads_twice(store):
    from types import SimpleNamespace

    from sqlalchemy import event

    shared_control, shared = open_canary(store, SimpleNamespace(tenant="acme", user=None), share=1.0)
    reads = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: reads.append(args[2]))
    drafters = store.drafters("acme", "alice")
    assert sum(r.lstrip().upper().startswith("SELECT") for r in reads) == 2  # every completion request asks: the active versions, then the open canaries
    assert (drafters.active.id, drafters.candidate.id, drafters.pick(0.99).id) == (shared_control, shared, shared)
    own_control, own = open_canary(store, ALICE, share=0.25)
    alice = store.drafters("acme", "alice")  # her own lineage now: her canary, never the tenant's
    assert (alice.active.id, alice.candidate.id, alice.pick(0.2).id, alice.pick(0.3).id) == (own_control, own, own,
                                                                                            own_control)
    assert store.drafters("acme", "bob").candidate.id == shared and store.drafters("other", "x").pick(0.0) is None
    assert store.open_canaries() == 2


def test_each_look_is_stored_and_a_verdict_promotes_in_its_transaction(store):
    control, candidate = open_canary(store)
    for _ in range(3):
        edited(store, ALICE, candidate, "a fine draft", "a fine draft")  # kept as drafted: 0 words
        edited(store, ALICE, control, "a poor rough draft", "a fine draft")  # 2 words changed
    edited(store, BOB, candidate, "not alice's", "bob's")  # another user's edits do not count
    (canary,) = store.canaries(open_only=True)
    assert watch(store, canary) is None  # 3 wins: evidence 3.75, short of 20
    (canary,) = store.canaries(open_only=True)
    assert [(look.candidate, look.control, look.wins, look.losses) for look in canary.looks] == [(3, 3, 3, 0)]
    assert watch(store, canary) is None and len(store.canaries()[0].looks) == 1  # nothing new: no new look
    assert "fewer words in 3" in version_rows(store, "acme")[1].reason
    for _ in range(4):  # 7 wins: evidence 31.9 ≥ 1/α
        edited(store, ALICE, candidate, "a fine draft", "a fine draft")
        edited(store, ALICE, control, "a poor rough draft", "a fine draft")
    closed = watch(store, store.canaries(open_only=True)[0])
    assert closed.decision == "promoted" and closed.seen_through == 1 and closed.metrics["canary"]["wins"] == 7
    assert store.active_version("acme", "alice").id == candidate and store.canaries(open_only=True) == []
    with pytest.raises(ConflictError):
        store.close_canary(store.canaries()[0].id, CanaryLook(candidate=0, control=0, wins=0, losses=0, ties=0,
                                                              better=1, worse=1), "rejected", "again")


def test_a_candidate_activated_by_hand_closes_its_canary_as_promoted(store):
    control, candidate = open_canary(store)
    store.activate(candidate)
    closed = watch(store, store.canaries(open_only=True)[0])
    assert (closed.decision, closed.reason) == ("promoted", "canary: activated by hand before a verdict")
    assert store.active_version("acme", "alice").id == candidate and store.canaries(open_only=True) == []


def test_forgetting_a_user_removes_their_canary(store):
    open_canary(store)
    store.forget_user("acme", "alice")
    assert store.canaries() == [] and store.drafters("acme", "alice").candidate is None


@pytest.mark.parametrize("candidate_is", ["better", "worse"])
def test_a_gate_passed_candidate_goes_to_the_canary_and_the_users_edits_decide(tmp_path, candidate_is):
    """End to end on the tiny model: the learner sends the candidate to a canary, its user's live edits
    under both versions decide; the edits made meanwhile train the next candidate."""
    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    settings = config(tmp_path, canary=CanarySettings(share=0.5, budget=12))
    log_edits(store, ALICE, 8)
    (opened,) = learn_once(store, settings)
    assert opened.decision == "canary", opened.reason
    assert store.active_version("acme", "alice") is None  # the base model serves until the edits decide
    cheap, costly = ("yes yes", "hello there, friend")  # one word changed, or three
    for _ in range(12):
        edited(store, ALICE, opened.version_id, cheap if candidate_is == "better" else costly, "yes yes yes")
        edited(store, ALICE, None, costly if candidate_is == "better" else cheap, "yes yes yes")
    closed, following = learn_once(store, settings)  # the verdict, then a candidate from the canary's 24 edits
    assert (closed.decision, closed.version_id) == ({"better": "promoted", "worse": "rejected"}[candidate_is],
                                                    opened.version_id)
    serving = store.active_version("acme", "alice")
    assert (serving.id if serving else None) == (opened.version_id if candidate_is == "better" else None)
    assert following.version_id != opened.version_id and following.parent_id == (serving.id if serving else None)
    # the canary's 24 edits and those its parent did not train on: the 2 it held out, or all 8 (the base model)
    details = store.version(following.version_id).details
    assert len(details["new_events"]) + len(details["held_out_events"]) == (26 if candidate_is == "better" else 32)


def test_corll_learn_takes_the_canary_settings_and_versions_and_status_show_it(tmp_path):
    from typer.testing import CliRunner

    from corll.cli import app as cli

    db = f"sqlite:///{tmp_path / 'corll.db'}"
    log_edits(Store(db), ALICE, 8)
    runner = CliRunner(env={"COLUMNS": "250"})
    learned = runner.invoke(cli, ["learn", "--once", "--model", "tiny", "--db", db, "--adapters", str(tmp_path / "a"),
                                  "--min-edits", "6", "--epochs", "3", "--lr", "5e-3", "--kl-limit", "50",
                                  "--precision", "fp32", "--nice", "0", "--canary-share", "0.25"])
    assert learned.exit_code == 0, learned.output
    assert "tried live on 25% of their drafts" in learned.output
    (decision,) = Store(db).decisions()
    assert decision.decision == "canary", decision.reason  # the gate passed it: the tiny model learns the edit
    shown = runner.invoke(cli, ["versions", "--db", db]).output
    assert "canary" in shown and "no edited drafts yet" in shown
    bad = runner.invoke(cli, ["learn", "--once", "--db", db, "--canary-share", "1.5"])
    assert bad.exit_code == 2 and "canary-share" in bad.output


def test_metrics_count_open_canaries_and_their_verdicts(store):
    from types import SimpleNamespace

    from corll.server.metrics import ServiceMetrics

    def scrape() -> str:
        return ServiceMetrics(store, SimpleNamespace(running=0)).exposition().body.decode()

    open_canary(store)
    assert "corll_canaries_open 1.0" in scrape() and 'corll_learner_decisions_total{decision="canary"} 1.0' in scrape()
    store.activate(store.canaries()[0].version_id)
    watch(store, store.canaries(open_only=True)[0])
    assert "corll_canaries_open 0.0" in scrape() and 'corll_learner_decisions_total{decision="promoted"} 2.0' in scrape()


def test_a_pass_looks_at_the_canaries_after_each_training_not_only_at_its_start(tmp_path, monkeypatch):
    """Edits reaching a canary while the learner trains other users' candidates get their verdict after
    that training, within the same pass, before the next user's training."""
    import corll.service.learn as learn
    from corll.store import Principal

    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    control, candidate = open_canary(store)
    carol = Principal("acme", "carol")
    log_edits(store, BOB, 8)
    log_edits(store, carol, 8)
    trained = []
    train = learn.learn_lineage

    def training(store_, work, *args, **kwargs):
        trained.append(work.lineage.user)
        if len(trained) == 1:  # while the first candidate trains, alice's canary drafts are edited
            for _ in range(7):
                edited(store, ALICE, candidate, "a fine draft", "a fine draft")
                edited(store, ALICE, control, "a poor rough draft", "a fine draft")
        return train(store_, work, *args, **kwargs)

    monkeypatch.setattr(learn, "learn_lineage", training)
    made = learn_once(store, config(tmp_path))
    assert [(d.user, d.decision) for d in made][1] == ("alice", "promoted")  # right after the first training
    assert trained == ["bob", "carol"] and made[0].user == "bob" and made[2].user == "carol"
