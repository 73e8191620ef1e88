"""Learning while serving: candidates trained from the log, the gate, watermarks, crash safety, rollback."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from corll.cli import app as cli
from corll.service.learn import LearnConfig, gate, learn_once
from corll.service.supervise import free_port
from corll.monitor import degeneration_thresholds
from corll.learners.dpo import DPOConfig
from corll.monitor import MonitorThresholds
from corll.store import Principal, Store
from tests.service.edits import ALICE, BOB, PROMPTS, log_edits

def config(tmp_path: Path, **overrides) -> LearnConfig:
    settings = dict(model="tiny", adapters_dir=tmp_path / "adapters", min_edits=6, holdout=0.25, replay=4, epochs=3,
                    batch_size=4, dpo=DPOConfig(lr=5e-3), precision="fp32",
                    monitor=MonitorThresholds(kl_limit=50.0, distinct_drop=1.0, repetition_rise=1.1,
                                              looping_rise=1.1))
    settings.update(overrides)
    return LearnConfig(**settings)


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'corll.db'}")


def test_the_gate_weighs_held_out_gains_habitual_edits_and_the_monitor():
    cfg = LearnConfig(model="tiny", adapters_dir=Path("."), margin=0.1, win_rate=0.6, cost_slack=0.5)
    assert gate(torch.tensor([0.5, 0.4, -0.1]), 0.0, [], cfg)[0] == "promoted"  # mean 0.27 > 0.1, rises on 67%
    assert gate(torch.tensor([0.05, 0.05, 0.05]), -1.0, [], cfg) == (
        "rejected", "held-out edit margin +0.050 nats, rises on 100% of 3; habitual edits -1.0 tokens per draft "
                    "(margin needs > +0.100)")
    assert "needs to rise on >= 60%" in gate(torch.tensor([2.0, -0.1, -0.1]), 0.0, [], cfg)[1]  # on one edit only
    # the margin rose, but the user would change more in the candidate's own drafts by habit
    decision, reason = gate(torch.tensor([1.0, 1.0]), 0.75, [], cfg)
    assert decision == "rejected" and reason.endswith("(may be at most +0.5)")
    assert gate(torch.tensor([1.0, 1.0]), 0.5, [], cfg)[0] == "promoted"  # within the slack
    decision, reason = gate(torch.tensor([1.0, 1.0]), 0.0, ["KL to π_0 is 30.0 nats (> 20.0)"], cfg)
    assert (decision, reason) == ("rejected", "monitor: KL to π_0 is 30.0 nats (> 20.0)")


def test_a_user_with_enough_edits_gets_a_promoted_version_trained_on_their_own_edits(store, tmp_path):
    events = log_edits(store, ALICE, 8)
    log_edits(store, BOB, 3, start=20)  # too few for Bob
    made = learn_once(store, config(tmp_path))
    assert [(d.tenant, d.user, d.decision) for d in made] == [("acme", "alice", "promoted")]
    d = made[0]
    assert d.metrics["margin_gain"] > 0 and d.metrics["held_out"] == 2
    # alice's habits, from her edits: she deletes the whole draft and writes "yes yes yes", every time
    assert d.metrics["habits"] == {"deleted": ["hello there , friend"], "inserted": ["yes yes yes"]}
    cost = d.metrics["habit_cost"]  # what she would change by habit in each version's own drafts
    assert f"habitual edits {cost['candidate'] - cost['serving']:+.1f} tokens per draft" in d.reason
    # every sample (the gate's drafts, the monitor's) is as long as the drafts she saw, at most
    from corll.policy import load_policy
    tokenizer = load_policy("tiny").tokenizer
    assert len(tokenizer(d.metrics["sample"], add_special_tokens=False)["input_ids"]) <= \
        len(tokenizer("hello there, friend", add_special_tokens=False)["input_ids"])
    # the margin's rise splits into how the edits' and the drafts' own likelihoods moved
    assert d.metrics["margin_gain"] == pytest.approx(d.metrics["edit_logprob_gain"] - d.metrics["draft_logprob_gain"],
                                                     abs=1e-4)
    version = store.version(d.version_id)
    assert version.active and version.user == "alice" and Path(version.adapter_path, "adapter_model.safetensors").exists()
    # the newest quarter is held out: trained through the 6th event, the 7th and 8th judged the candidate
    assert version.details["new_events"] == events[:6] and version.details["held_out_events"] == events[6:]
    assert version.details["trained_through_event"] == events[5] and d.seen_through == events[7]
    assert version.details["users"] == ["alice"]
    assert store.active_version("acme", "alice").id == d.version_id
    assert store.active_version("acme", "bob") is None  # Bob is still served the base model
    assert learn_once(store, config(tmp_path)) == []  # nothing new: no candidate


def test_every_preference_enters_a_lineage_once_and_none_is_skipped(store, tmp_path):
    events = log_edits(store, ALICE, 8)
    first = learn_once(store, config(tmp_path))[0]
    events += log_edits(store, ALICE, 5, start=8)
    assert learn_once(store, config(tmp_path)) == []  # 5 new < 6
    events += log_edits(store, ALICE, 1, start=13)
    second = learn_once(store, config(tmp_path))[0]
    assert second.decision == "promoted" and second.parent_id == first.version_id
    v1, v2 = store.version(first.version_id), store.version(second.version_id)
    # the first candidate's held-out edits are trained into the second; no event is trained twice as new
    assert v1.details["new_events"] + v2.details["new_events"] == events[: len(v1.details["new_events"]) +
                                                                         len(v2.details["new_events"])]
    assert v2.details["new_events"][0] == v1.details["held_out_events"][0]
    assert v2.details["held_out_events"] == events[-len(v2.details["held_out_events"]):]
    assert set(v2.details["replayed_events"]) <= set(v1.details["new_events"])  # replay is counted apart


def test_a_candidate_worse_on_the_held_out_edits_is_rejected_and_kept(store, tmp_path):
    # the user's older edits prefer "zzzz"; their newest ones undo exactly that: the candidate learns the old taste
    log_edits(store, ALICE, 6, draft="hello there, friend", edit="zzzz zzzz zzzz")
    log_edits(store, ALICE, 2, start=6, draft="zzzz zzzz zzzz", edit="hello there, friend")
    made = learn_once(store, config(tmp_path, holdout=0.25))
    assert [d.decision for d in made] == ["rejected"]
    assert made[0].metrics["margin_gain"] < 0 and "held-out edit margin" in made[0].reason
    version = store.version(made[0].version_id)
    assert not version.active and Path(version.adapter_path).exists()  # kept, with the reason, never served
    assert store.active_version("acme", "alice") is None


def test_the_gate_and_the_monitor_judge_the_same_fresh_drafts_for_the_held_out_prompts(store, tmp_path):
    from corll.service.learn import observe
    from corll.service.lineages import preferences
    from corll.objectives import distinct_n, looping, repeated_phrase_rate
    from corll.policy import SamplingConfig, load_policy

    log_edits(store, ALICE, 2)
    held_out = preferences(store.feedback(tenant="acme"))
    assert all(p.pair.chosen_ends for p in held_out)  # the user's kept text is whole: learned with its end
    policy = load_policy("tiny", seed=0, sampling=SamplingConfig(max_new_tokens=6))
    prompts = [p.pair.prompt for p in held_out]
    torch.manual_seed(7)
    texts, logps = policy.sample_scored(prompts, 3)
    by_hand = [y for ys in texts for y in ys]  # 3 drafts per held-out prompt, prompt-major
    observation, drafts = observe(policy, held_out, config(tmp_path, draft_samples=3), seed=7)
    assert drafts == by_hand  # the same seed: the candidate and the serving version draw common random numbers
    kl = logps.flatten() - policy.logprobs([x for x in prompts for _ in range(3)], by_hand, reference=True)
    assert observation["kl"] == pytest.approx(float(kl.mean()), abs=1e-5)
    assert observation["distinct_2"] == distinct_n(by_hand)
    assert observation["repetition"] == repeated_phrase_rate(by_hand)
    assert observation["looping"] == looping(by_hand)


def test_a_candidate_whose_drafts_would_not_cost_the_user_less_is_rejected(store, tmp_path):
    log_edits(store, ALICE, 8)
    made = learn_once(store, config(tmp_path, cost_slack=-100.0))  # demand 100 tokens fewer habitual edits
    assert made[0].decision == "rejected" and made[0].reason.endswith("(may be at most -100.0)")
    assert made[0].metrics["margin_gain"] > 0  # better on the margin, still refused
    assert store.active_version("acme", "alice") is None


def test_the_monitor_rejects_a_candidate_that_drifts_too_far_from_the_base_model(store, tmp_path):
    log_edits(store, ALICE, 8)
    made = learn_once(store, config(tmp_path, monitor=MonitorThresholds(kl_limit=1e-3)))
    assert made[0].decision == "rejected" and made[0].reason.startswith("monitor: KL to π_0")
    assert made[0].metrics["margin_gain"] > 0  # better on the held-out edits, still refused


@pytest.mark.slow
def test_on_the_real_model_a_consistent_user_is_promoted_and_a_collapsing_candidate_is_rejected(tmp_path):
    draft = "Sure! Here is a short note about the topic. It is very interesting and I hope you like it."
    outcomes = {}
    for lr in (3e-4, 0.05):  # the learner's default rate, and one that collapses the policy
        store = Store(f"sqlite:///{tmp_path / f'{lr}.db'}")
        log_edits(store, ALICE, 8, draft=draft, edit="Here is a short note.")
        made = learn_once(store, config(tmp_path / str(lr), model="smollm2-135m-instruct", dpo=DPOConfig(lr=lr),
                                        epochs=4, monitor=degeneration_thresholds(),
                                        cost_slack=LearnConfig.cost_slack))  # every default criterion
        outcomes[lr] = made[0]
    assert outcomes[3e-4].decision == "promoted", outcomes[3e-4].reason
    assert outcomes[3e-4].metrics["margin_gain"] > 1.0
    # the user's habits: the opening and the padding they delete every time
    assert outcomes[3e-4].metrics["habits"] == {"deleted": ["It is very interesting and I hope you like it .",
                                                            "Sure !", "about the topic"], "inserted": []}
    cost = outcomes[3e-4].metrics["habit_cost"]  # its own drafts keep less of what the user deletes
    assert cost["candidate"] <= cost["serving"], cost
    # collapsed: the monitor flags it (KL to π₀, looping or distinct-2, whichever the collapse shows)
    assert outcomes[0.05].decision == "rejected" and outcomes[0.05].reason.startswith("monitor: "), \
        outcomes[0.05].reason
    assert outcomes[0.05].metrics["monitor_flags"]


def test_rollback_wins_until_new_feedback_arrives(store, tmp_path):
    log_edits(store, ALICE, 8)
    promoted = learn_once(store, config(tmp_path))[0]
    db = store.url
    result = CliRunner().invoke(cli, ["rollback", "0", "--tenant", "acme", "--user", "alice", "--db", db])
    assert result.exit_code == 0, result.output
    assert store.active_version("acme", "alice").adapter_path is None
    log_edits(store, ALICE, 5, start=8)
    assert learn_once(store, config(tmp_path)) == []  # the rolled-back data (and 5 new edits) do not re-promote
    log_edits(store, ALICE, 1, start=13)
    again = learn_once(store, config(tmp_path))[0]
    assert again.version_id != promoted.version_id
    assert again.parent_id is None or store.version(again.parent_id).adapter_path is None  # from the base model
    decisions = [d.decision for d in store.decisions("acme")]
    assert decisions == ["promoted", "rollback", again.decision]
    shown = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["versions", "--db", db]).output
    assert "rolled back to the base model" in shown and "promoted" in shown
    status = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["status", "--db", db]).output
    assert "alice" in status and again.decision in status
    assert "edit to decision over the last 2 decisions" in status  # the rollback was no learner's decision


def learner_process(db: str, adapters: Path, *, once: bool = True) -> subprocess.Popen:
    """`corll learn --once` (or a worker that keeps polling) in its own process (the settings of `config`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "corll", "learn", *(["--once"] if once else []), "--model", "tiny", "--db", db,
         "--adapters", str(adapters),
         "--min-edits", "6", "--replay", "4", "--epochs", "20", "--batch-size", "1", "--lr", "5e-3",
         "--precision", "fp32", "--kl-limit", "1000", "--nice", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_learner_killed_while_training_resumes_to_the_same_decisions(tmp_path):
    for name in ("killed", "whole"):
        (tmp_path / name).mkdir()
    store = Store(f"sqlite:///{tmp_path / 'killed' / 'corll.db'}")
    log_edits(store, ALICE, 8)
    log_edits(store, BOB, 8, start=10, edit="no no no")
    store.engine.dispose()
    shutil.copy(tmp_path / "killed" / "corll.db", tmp_path / "whole" / "corll.db")

    killed = learner_process(f"sqlite:///{tmp_path / 'killed' / 'corll.db'}", tmp_path / "killed" / "adapters")
    deadline = time.monotonic() + 120
    while not any("acme/bob: DPO step" in w.state for w in store.worker_states()):  # Alice decided, Bob mid-training
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read() if killed.stdout else ""
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert [d.user for d in store.decisions()] == ["alice"]  # Bob's candidate left nothing in the log
    assert [v.user for v in store.versions()] == ["alice"]
    resumed = learner_process(store.url, tmp_path / "killed" / "adapters")
    whole = learner_process(f"sqlite:///{tmp_path / 'whole' / 'corll.db'}", tmp_path / "whole" / "adapters")
    for process in (resumed, whole):
        assert process.wait(timeout=300) == 0, process.stdout.read()

    def outcome(db: Path) -> tuple[list[tuple], list[float]]:
        s = Store(f"sqlite:///{db}")
        rows = [(d, s.version(d.version_id).details) for d in s.decisions()]
        return ([(d.user, d.decision, d.seen_through, details["new_events"]) for d, details in rows],
                [x for d, details in rows for x in (d.metrics["margin_gain"], details["final_loss"])])

    (killed_decisions, killed_numbers), (whole_decisions, whole_numbers) = (
        outcome(tmp_path / "killed" / "corll.db"), outcome(tmp_path / "whole" / "corll.db"))
    assert killed_decisions == whole_decisions and len(whole_decisions) == 2
    # A CPU resumes bit for bit; CUDA kernels are not bit-reproducible, so there the numbers agree to a few percent.
    tolerance = {"rel": 0.05} if torch.cuda.is_available() else {"abs": 1e-5}
    assert killed_numbers == pytest.approx(whole_numbers, **tolerance)
    leftovers = [p for p in (tmp_path / "killed" / "adapters").rglob("*.partial")]
    assert leftovers == []


def test_serve_with_learn_promotes_a_users_version_after_their_edits_with_no_command(tmp_path):
    import httpx
    import openai

    import corll

    db = f"sqlite:///{tmp_path / 'corll.db'}"
    key = Store(db).create_api_key("acme", "alice")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "corll", "serve", "--model", "tiny", "--db", db, "--port", str(port), "--learn",
         "--learn-min-edits", "6", "--adapters", str(tmp_path / "adapters"), "--precision", "fp32", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            try:
                httpx.get(f"{url}/metrics")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        with corll.Client(url, key) as sdk:
            for i in range(8):
                draft = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=8)
                sdk.edit(draft.id, "yes yes yes")
        store = Store(db)
        while not store.decisions():  # the learner notices, trains, gates: nobody runs a command
            assert server.poll() is None and time.monotonic() < deadline + 120, server.stdout.read()
            time.sleep(0.5)
        decision = store.decisions()[0]
        assert decision.decision == "promoted", decision.reason
        after = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi."}],
                                               max_tokens=4)
        assert store.get_interaction(Principal("acme", "alice"), after.id).policy_version_id == decision.version_id
        metrics = httpx.get(f"{url}/metrics").text
        assert 'corll_learner_decisions_total{decision="promoted"} 1.0' in metrics
        waited = decision.metrics["edit_to_decision_s"]  # from alice's 8th edit (the learner's 6th: due) to here
        assert 0 < waited < 240 and f'corll_edit_to_decision_seconds{{quantile="0.5"}} {waited}' in metrics
        assert "corll_learner_queue_lineages " in metrics and 'corll_learner_worker_training{lineage=' in metrics
    finally:
        server.terminate()
        server.wait(timeout=60)
    learners = subprocess.run(["pgrep", "-f", f"corll learn .*{tmp_path}"], capture_output=True, text=True)
    assert learners.stdout.strip() == ""  # the learner stopped with the server


def test_versions_me_and_rollback_over_http_respect_keys_and_tenants(tmp_path):
    import httpx

    from corll.server.engine import PolicyEngine
    from tests.server.test_app import LiveServer

    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    keys = {"alice": store.create_api_key("acme", "alice"), "bob": store.create_api_key("acme", "bob"),
            "admin": store.create_api_key("acme", "root", admin=True), "evil": store.create_api_key("evil", "eve", admin=True)}
    mine = store.decide("acme", "alice", decision="promoted", reason="held-out edit margin +1.0 nats", seen_through=0,
                        adapter_path=str(tmp_path / "a"), parent_id=None, details={"pairs": 3}, metrics={"margin_gain": 1.0})
    server = LiveServer(store, PolicyEngine("tiny", default_max_tokens=8))
    try:
        def call(who, method, path, **kwargs):
            return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {keys[who]}"}, **kwargs)

        assert call("alice", "GET", "/v1/me").json() == {"tenant": "acme", "user": "alice", "admin": False,
                                                          "model": "tiny"}
        seen = call("alice", "GET", "/v1/versions").json()["data"]
        assert [(v["id"], v["status"], v["decision"]) for v in seen] == [(mine.version_id, "active", "promoted")]
        assert call("bob", "GET", "/v1/versions").json()["data"] == []  # another user's versions are not shown
        assert len(call("admin", "GET", "/v1/versions").json()["data"]) == 1
        before = len(store.versions())
        refused = call("alice", "POST", "/v1/rollback", json={"version": 0, "user": "alice"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
        hidden = call("evil", "POST", "/v1/rollback", json={"version": mine.version_id})
        assert hidden.status_code == 404  # another tenant's version is not revealed
        assert call("admin", "POST", "/v1/rollback", json={"version": -1}).status_code == 400
        assert len(store.versions()) == before and len(store.decisions()) == 1  # no refusal wrote anything
        done = call("admin", "POST", "/v1/rollback", json={"version": 0, "user": "alice"}).json()
        assert done["base_model"] and store.active_version("acme", "alice").adapter_path is None
        page = httpx.get(server.url + "/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(server.url + "/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert httpx.get(server.url + "/ui/..%2Fapp.py").status_code == 404
    finally:
        server.stop()


def start_learning_server(tmp_path, db: str) -> tuple[subprocess.Popen, str]:
    """`corll serve --learn` on the tiny model, answering once it listens."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "corll", "serve", "--model", "tiny", "--db", db, "--port", str(port), "--learn",
         "--learn-min-edits", "6", "--adapters", str(tmp_path / "adapters"), "--precision", "fp32", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
        try:
            httpx.get(f"{url}/healthz")
            return server, url
        except httpx.TransportError:
            time.sleep(0.2)


def wait_for(condition, seconds: float, server: subprocess.Popen):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert server.poll() is None and time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def test_a_learner_killed_beside_the_server_is_restarted_reported_and_decides_and_a_second_learner_refuses(tmp_path):
    import httpx

    db = f"sqlite:///{tmp_path / 'corll.db'}"
    store = Store(db)
    server, url = start_learning_server(tmp_path, db)
    try:
        first = wait_for(lambda: httpx.get(f"{url}/healthz").json()["learner"]["pid"], 60, server)
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "ok" and health["learner"]["restarts"] == 0
        wait_for(lambda: [w for w in store.worker_states() if w.pid == first], 60, server)  # it holds its lock
        # a second learner on the same database refuses to start, naming the reason: no version is made twice
        refused = CliRunner().invoke(cli, ["learn", "--once", "--model", "tiny", "--db", db,
                                           "--adapters", str(tmp_path / "other")])
        assert refused.exit_code == 2 and "another learner is running on this database" in refused.output
        subprocess.run(["kill", "-9", str(first)], check=True)
        learner = wait_for(lambda: (h := httpx.get(f"{url}/healthz").json()["learner"])["restarts"] == 1 and h["pid"]
                           and h, 30, server)
        assert learner["pid"] != first and learner["last_exit"] == "killed by SIGKILL"
        assert any("killed by SIGKILL" in w.state or w.pid == learner["pid"] for w in store.worker_states())
        log_edits(store, ALICE, 8)  # the new learner resumes from the log and decides
        decision = wait_for(lambda: store.decisions(), 120, server)[0]
        assert decision.user == "alice" and len(store.versions("acme")) == 1
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_sqlite_has_one_learner_and_postgresql_leases_each_lineage_to_one_worker(store_url):
    from corll.store import LearnerBusyError

    first, second = Store(store_url), Store(store_url)
    if store_url.startswith("sqlite"):
        with first.learner_lock():
            with pytest.raises(LearnerBusyError, match="another learner is running on this database"):
                with second.learner_lock():
                    pass
        with second.learner_lock():  # released with the block
            pass
        return
    with first.learner_lock(), second.learner_lock():  # any number of workers on PostgreSQL
        with first.lineage_lease("acme", "alice") as mine:
            with second.lineage_lease("acme", "alice") as theirs, second.lineage_lease("acme", None) as shared:
                assert mine and not theirs and shared  # a lineage to one worker; another lineage is free
        with second.lineage_lease("acme", "alice") as theirs:  # released with the block
            assert theirs
    assert first.worker_name().startswith("learner ") and first.worker_name().endswith(f":{os.getpid()}")  # per process


def test_two_workers_share_the_lineages_and_a_killed_one_loses_nothing_and_doubles_nothing(postgres_url, tmp_path):
    """PostgreSQL, two `corll learn` workers: one is SIGKILLed while training a lineage the other had to leave
    to it; the lease ends with the dead worker's connection, the next pass of a worker takes the lineage up,
    and every lineage gets exactly one decision for its batch of edits."""
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    store = Store(postgres_url)
    users = [Principal("acme", f"user{i}") for i in range(4)]
    for i, who in enumerate(users):
        log_edits(store, who, 8, start=10 * i, edit=f"edit {i} " * 3)
    victim = learner_process(postgres_url, tmp_path / "adapters", once=False)
    deadline = time.monotonic() + 120
    while not any(": DPO step" in w.state for w in store.worker_states()):  # the victim is training a lineage
        assert victim.poll() is None and time.monotonic() < deadline, victim.stdout.read() if victim.stdout else ""
        time.sleep(0.05)
    survivor = learner_process(postgres_url, tmp_path / "adapters")  # starts beside it, while it trains
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=300) == 0, survivor.stdout.read()
    rest = learner_process(postgres_url, tmp_path / "adapters")  # nothing left to do: nothing doubled
    assert rest.wait(timeout=300) == 0
    decided = sorted(d.user for d in store.decisions())
    assert decided == sorted(u.user for u in users)  # each lineage exactly once, none lost
    assert len({d.seen_through for d in store.decisions()}) == len(users)


def test_a_version_folder_is_never_one_a_stored_version_names(tmp_path):
    from corll.service.learn import version_folder

    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    folder = tmp_path / "adapters" / "acme" / "alice"
    assert version_folder(store, folder, "through-8") == (folder, "through-8")
    store.decide("acme", "alice", decision="promoted", reason="r", seen_through=8,
                 adapter_path=str((folder / "through-8").resolve()), parent_id=None, details={}, metrics={})
    assert version_folder(store, folder, "through-8") == (folder, "through-8-2")


def test_a_decision_on_edits_already_decided_is_refused_whole(store, tmp_path):
    """What keeps a worker whose lease lapsed from deciding a batch of edits twice."""
    from corll.store import ConflictError

    settings = dict(reason="r", adapter_path=str(tmp_path / "a"), parent_id=None, details={}, metrics={})
    store.decide("acme", "alice", decision="promoted", seen_through=8, **settings)
    for seen in (8, 5):
        with pytest.raises(ConflictError, match="decided already"):
            store.decide("acme", "alice", decision="rejected", seen_through=seen, **settings)
    assert [(d.decision, d.seen_through) for d in store.decisions()] == [("promoted", 8)]
    assert len(store.versions()) == 1  # the refused candidate left no version either
    store.decide("acme", "bob", decision="rejected", seen_through=8, **settings)  # another lineage: its own data
    store.decide("acme", "alice", decision="rejected", seen_through=9, **settings)  # newer edits: decided anew
