"""The pre-registered deployment study's analysis: the user as the unit, Holm over the planned arms, and a
verdict that waits for every unit."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "deployment_study.py"
spec = importlib.util.spec_from_file_location("deployment_study", SCRIPT)
deployment_study = importlib.util.module_from_spec(spec)
sys.modules["deployment_study"] = deployment_study  # its dataclass looks its module up by name
spec.loader.exec_module(deployment_study)

USERS = {f"u{i}": ["news", "forum-notes"] for i in range(6)}
ARMS = {"none": None, "learn": "--margin 0", "canary": "--canary-share 0.5"}


def study(tmp_path: Path, seeds=(0, 1)) -> "deployment_study.Study":
    plan = {"name": "s", "drafts": 6, "traffic_seeds": list(seeds), "users": USERS, "arms": ARMS, "baseline": "none"}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return deployment_study.Study.load(path, tmp_path / "results")


def write(s, seed: int, arm: str, cost, decisions=(), version=None, words=4) -> None:
    """A unit: every user's 6 drafts (of `words` words, kept as drafted) costing cost(user index, t) words;
    drafts 3-5 by `version`."""
    draft = " ".join(["word"] * words)
    rows = [{"user": u, "t": t, "cost": cost(i, t), "version": version if t >= 3 else None, "draft": draft,
             "kept": draft} for i, u in enumerate(USERS) for t in range(6)]
    path = s.unit_path(seed, arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "decisions": list(decisions), "wall_s": 1800.0, "machine": "cpu"}))


def test_the_plan_committed_for_the_study_names_its_arms_users_and_analysis():
    real = deployment_study.Study.load()
    assert real.plan["baseline"] == "none" and len(real.learning_arms) == 3
    assert len(real.plan["users"]) >= 12 and len(real.plan["traffic_seeds"]) >= 5
    families = {preference for preference, _ in real.plan["users"].values()}
    assert {"news", "forum", "encyclopedia", "abstract", "review"} <= families  # never used to choose a setting
    assert len(real.units()) == len(real.plan["arms"]) * len(real.plan["traffic_seeds"])


def test_the_effect_is_per_user_over_the_last_third_and_waits_for_every_unit(tmp_path):
    s = study(tmp_path)
    for seed in (0, 1):
        write(s, seed, "none", lambda i, t: 10)
        # the learning arm saves 2 + i/5 words on the last third (drafts 4, 5) and nothing before
        write(s, seed, "learn", lambda i, t: 10 - (2 + i / 5) * (t >= 4))
    report = deployment_study.analyse(s)
    learn = report["tests"]["learn"]
    assert (learn["users"], learn["seeds"]) == (6, 2)
    assert learn["mean"] == pytest.approx(2.5) and learn["users_better"] == 6
    assert learn["p"] < 1e-4 and learn["p_holm"] == pytest.approx(2 * learn["p"])  # a family of 2 learning arms
    assert report["tests"]["canary"] == {"users": 0, "seeds": 0}  # not run: p = 1 in Holm's family
    assert report["verdict"] == "inconclusive" and report["arms_meeting_target"] == ["learn"]
    for seed in (0, 1):
        write(s, seed, "canary", lambda i, t: 10)
    complete = deployment_study.analyse(s)
    assert complete["verdict"] == "reproduced" and complete["units_done"] == complete["units_planned"] == 6
    assert complete["core_hours"]["none"] == pytest.approx(2.0)  # two half-hour units on 2 cores


def test_one_user_carrying_the_effect_is_not_enough(tmp_path):
    s = study(tmp_path)
    for seed in (0, 1):
        write(s, seed, "none", lambda i, t: 10)
        write(s, seed, "learn", lambda i, t: 10 - 30 * (i == 0 and t >= 4))  # one user saves a lot
        write(s, seed, "canary", lambda i, t: 10)
    report = deployment_study.analyse(s)
    assert report["tests"]["learn"]["users_better"] == 1 and report["verdict"] == "inconclusive"


def test_a_canary_promotion_that_costs_its_user_more_is_counted(tmp_path):
    s = study(tmp_path, seeds=(0,))
    write(s, 0, "none", lambda i, t: 10)
    write(s, 0, "canary", lambda i, t: 12 if t >= 3 else 10, version=7,
          decisions=[{"user": "u0", "version": 7, "decision": "promoted", "reason": "canary: fewer words"}])
    (promotion,) = deployment_study.canary_promotions(s, s.done())
    assert promotion["costlier_than_10pct"] and promotion["words"] == 12 and promotion["baseline_words"] == 10


def test_the_canary_candidates_are_counted_as_promoted_rejected_or_undecided_with_the_drafts_they_wrote(tmp_path):
    s = study(tmp_path, seeds=(0,))
    write(s, 0, "none", lambda i, t: 10)
    write(s, 0, "canary", lambda i, t: 10, version=7, decisions=[
        {"user": "u0", "version": 7, "decision": "canary", "reason": "passed the offline gate"},
        {"user": "u1", "version": 8, "decision": "canary", "reason": "passed the offline gate"},
        {"user": "u1", "version": 8, "decision": "rejected", "reason": "canary: not shown better within its budget"},
        {"user": "u2", "version": 9, "decision": "rejected", "reason": "held-out edit margin -1 nats"}])
    outcomes = deployment_study.analyse(s)["canary_outcomes"]
    # u0's drafts 3-5 are version 7's: 3 of the arm's 36 drafts
    assert outcomes == {"canary": {"candidates": 2, "promoted": 0, "rejected": 1, "undecided": 1, "drafts": 36,
                                   "by_candidates": 3, "first_draft_median": 3}}  # version 8 drafted nothing
    assert "canary — 2 passed the offline gate and drafted for their user, 0 promoted and 1 rejected by the canary, " \
           "1 undecided when the session ended; they wrote 8% of the arm's drafts, the first of them at draft 3 of 6 (median)" in \
        deployment_study.render(s, deployment_study.analyse(s))


def test_the_page_is_generated_from_the_plan_and_the_runs(tmp_path):
    s = study(tmp_path, seeds=(0,))
    s.plan.update(question="Q?", model="m", max_tokens=8, think=1, analysis={"unit": "the user"})
    write(s, 0, "none", lambda i, t: 10)
    report = deployment_study.analyse(s)
    page = deployment_study.page(s, report, deployment_study.render(s, report))
    assert "Units run: **1 of 3**" in page and "| learn | not run yet |" in page and "unit: the user" in page
    assert "## Results so far" in page
    for arm in ("learn", "canary"):
        write(s, 0, arm, lambda i, t: 10)
    report = deployment_study.analyse(s)
    assert "## Results\n" in deployment_study.page(s, report, deployment_study.render(s, report))


def test_the_time_from_edit_to_decision_is_summarised_per_arm_where_units_logged_it(tmp_path):
    s = study(tmp_path, seeds=(0, 1))
    write(s, 0, "learn", lambda i, t: 10, decisions=[{"user": "u0", "version": 1, "decision": "rejected",
                                                       "edit_to_decision_s": 30.0},
                                                      {"user": "u1", "version": 2, "decision": "promoted",
                                                       "edit_to_decision_s": 90.0}])
    write(s, 1, "learn", lambda i, t: 10, decisions=[{"user": "u0", "version": 3, "decision": "rejected"}])  # older
    write(s, 0, "canary", lambda i, t: 10, decisions=[{"user": "u0", "version": 1, "decision": "rejected"}])
    waits = deployment_study.analyse(s)["edit_to_decision"]
    assert set(waits) == {"learn"} and waits["learn"]["decisions"] == 2 and waits["learn"]["p50"] == 60.0
    assert "learn median 60 s" in deployment_study.render(s, deployment_study.analyse(s))


def test_the_drafts_length_and_those_the_user_kept_nothing_of_are_shown_per_arm(tmp_path):
    s = study(tmp_path, seeds=(0,))
    write(s, 0, "none", lambda i, t: 5, words=9)
    write(s, 0, "learn", lambda i, t: 2, words=3)
    unit = json.loads(s.unit_path(0, "learn").read_text())
    unit["rows"][0]["kept"] = "\u200b "  # nothing visible kept (an early draft: the mean is over the last third)
    s.unit_path(0, "learn").write_text(json.dumps(unit))
    drafts = deployment_study.analyse(s)["drafts"]
    assert drafts == {"none": {"mean_words": 9.0, "kept_nothing": 0}, "learn": {"mean_words": 3.0, "kept_nothing": 1}}
    assert "mean length in words: learn 3.0, none 9.0; drafts the user kept nothing of: learn 1, none 0" in \
        deployment_study.render(s, deployment_study.analyse(s))


def test_an_arm_whose_user_session_dies_fails_rather_than_returning_a_user_short(tmp_path, monkeypatch):
    """A user's session that raises (say, an edit the server refused) must fail the unit: a unit with one
    user's last drafts missing would enter the analysis as if complete."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import deployment

    class Server:
        def terminate(self) -> None: ...

        def wait(self, timeout: float) -> None: ...

    def session(url, key, model, user, number, preference, source, drafts, think, max_tokens, seed, rows, lock):
        if user == "ben":
            raise RuntimeError("400: 'edit' is empty or invisible")
        with lock:
            rows.append({"user": user, "t": 0, "id": "x", "cost": 0, "draft": "d", "kept": "d"})

    monkeypatch.setattr(deployment, "start_server", lambda db, *options, model: (Server(), "http://127.0.0.1:9"))
    monkeypatch.setattr(deployment, "user_session", session)
    args = SimpleNamespace(model="tiny", drafts=1, think=0.0, max_tokens=8, min_edits=6, seed=0)
    with pytest.raises(RuntimeError, match="1 user session\\(s\\) of arm none failed.*empty or invisible"):
        deployment.run_arm("none", args, tmp_path)
