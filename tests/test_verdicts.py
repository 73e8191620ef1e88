"""Verdicts follow from the numbers: Holm's correction, the minimum detectable effect, the rule, the page."""

import json
from pathlib import Path

import pytest

from corll.experiment import load_experiment
from corll.stats import holm, minimum_detectable_effect, seeds_needed
from corll.verdicts import load_claims, verdict, write_results


def write_run(root, arm: str, seed: int, records: list[dict], hardware: dict | None = None) -> None:
    """One run's metrics, where an experiment keeps them: root/<arm>/seed-<i>/metrics.jsonl (and the machine it
    ran on in config.json, when given)."""
    folder = root / arm / f"seed-{seed}"
    folder.mkdir(parents=True)
    if hardware:
        (folder / "config.json").write_text(json.dumps({"hardware": hardware}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"algorithm": arm, "seed": seed, **r}) + "\n"
                                                  for r in records))


def write_runs(root, finals: dict[str, list[float]]) -> None:
    """Two evaluations per run (rounds 0 and 2): R* 0.1, then the arm's final value."""
    for arm, values in finals.items():
        for seed, final in enumerate(values):
            write_run(root, arm, seed, [{"round": r, "feedback": 8 * r, "queries": 8 * r,
                                         "reward": 0.1 if r == 0 else final, "kl": 0.0} for r in (0, 2)])


def test_holm_adjusts_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3·0.01, max(0.03, 2·0.02), max(0.04, 1·0.04)
    assert holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"b": 0.03, "c": 0.04, "a": 0.04})
    assert holm({"a": 0.5, "b": 0.6}) == pytest.approx({"a": 1.0, "b": 1.0})  # capped at 1, monotone


def test_holm_counts_planned_hypotheses_not_yet_tested():
    # a family of 5 with 3 tested: multipliers 5, 4, 3 -> 0.05, max(0.05, 0.08), max(0.08, 0.12)
    assert holm({"a": 0.04, "b": 0.01, "c": 0.02}, family=5) == pytest.approx({"b": 0.05, "c": 0.08, "a": 0.12})
    # a verdict given early is never withdrawn: a later, larger p-value cannot raise an adjusted one
    early = holm({"b": 0.01, "c": 0.02}, family=3)
    assert all(holm({"b": 0.01, "c": 0.02, "d": 0.9}, family=3)[k] <= early[k] for k in early)
    with pytest.raises(ValueError, match="family of 2"):
        holm({"a": 0.1, "b": 0.2, "c": 0.3}, family=2)


def test_minimum_detectable_effect_of_a_paired_t_test():
    # n = 8, sd = 1: exact from the noncentral t (tests/test_stats.py checks it by simulation); the
    # shortcut (t_.975,7 + t_.8,7) / sqrt(8) = 1.1528 is 0.3% smaller
    assert minimum_detectable_effect(1.0, 8) == pytest.approx(1.1560, abs=1e-3)
    assert minimum_detectable_effect(1.0, 8, alpha=0.01) > minimum_detectable_effect(1.0, 8)
    assert seeds_needed(1.0, minimum_detectable_effect(1.0, 8) + 1e-9) == 8


@pytest.mark.parametrize(("low", "high", "p", "direction", "paper", "expected"), [
    (0.1, 0.3, 0.01, 1, 0.0, "reproduced"),
    (0.1, 0.3, 0.2, 1, 0.0, "inconclusive"),  # the corrected test does not reject
    (-0.3, -0.1, 0.01, 1, 0.0, "not reproduced"),  # the interval excludes every positive effect
    (-0.1, 0.05, 0.5, 1, 0.1, "not reproduced"),  # ... and the paper's effect of 0.1
    (-0.1, 0.2, 0.5, 1, 0.1, "inconclusive"),
    (-0.3, -0.1, 0.01, -1, 0.0, "reproduced"),  # a claim that the arm is lower
])
def test_the_verdict_rule(low, high, p, direction, paper, expected):
    entry = {"effect": (low + high) / 2, "low": low, "high": high, "p_adjusted": p, "direction": direction,
             "mde": 0.25}
    assert verdict(entry, 0.05, paper).startswith(expected)


def test_the_page_and_json_come_from_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # experiment files name their folders relative to where commands run
    (tmp_path / "exp.yaml").write_text(
        "name: toy\nout: runs/toy\nseeds: [0, 1, 2, 3]\nbase: {task: synthetic, model: tiny, rounds: 2}\n"
        "arms:\n  a: {algorithms: [corll]}\n  b: {algorithms: [dueling]}\n  c: {algorithms: [corll], k: 3}\n"
        "baseline: b\n")
    (tmp_path / "claims.yaml").write_text(
        "title: Toy\nclaims:\n"
        "  - {id: big, statement: a beats b, experiment: exp.yaml, arm: a, baseline: b, primary: true}\n"
        "  - {id: noisy, statement: c beats b, experiment: exp.yaml, arm: c, baseline: b}\n"
        "  - {id: learns, statement: a learns, experiment: exp.yaml, arm: a, measure: gain}\n")
    write_runs(tmp_path / "runs" / "toy",
               {"a": [0.5, 0.52, 0.49, 0.51], "b": [0.2, 0.21, 0.19, 0.2], "c": [0.9, -0.5, 0.6, -0.1]})
    page, data = write_results(tmp_path / "claims.yaml", tmp_path / "docs")
    result = {c["id"]: c for c in json.loads(data.read_text())["claims"]}
    assert result["big"]["effect"] == pytest.approx(0.305) and result["big"]["verdict"] == "reproduced"
    assert result["big"]["p_adjusted"] == result["big"]["p"]  # the primary test is not corrected
    assert result["noisy"]["verdict"].startswith("inconclusive (minimum detectable effect")
    assert result["learns"]["effect"] == pytest.approx(0.405) and result["learns"]["seeds"] == [0, 1, 2, 3]
    # two secondary claims: Holm multiplies the smaller p by 2
    smaller = min(result["noisy"]["p"], result["learns"]["p"])
    assert min(result["noisy"]["p_adjusted"], result["learns"]["p_adjusted"]) == pytest.approx(2 * smaller)
    text = page.read_text()
    assert "| a beats b |" in text and "reproduced" in text and "Sizing the primary test" in text
    assert "hours of training rounds so far" in text  # no run has written its summary
    for arm, algorithm in {"a": "corll", "b": "dueling", "c": "corll"}.items():
        for seed in range(4):
            summary = tmp_path / "runs" / "toy" / arm / f"seed-{seed}" / "summary.json"
            summary.write_text(json.dumps({algorithm: {"rounds": 2}}))
    page, data = write_results(tmp_path / "claims.yaml", tmp_path / "docs")
    assert "hours of training rounds (evaluations" in page.read_text()
    assert json.loads(data.read_text())["compute"]["toy"]["complete"] is True


def test_a_claim_with_fewer_than_two_seed_pairs_is_not_yet_tested_rather_than_judged():
    from corll.verdicts import verdict

    entry = {"effect": None, "seeds": [0], "direction": 1}
    assert verdict(entry, 0.05, 0.1) == ("inconclusive (minimum detectable effect not estimable: 1 finished seed "
                                         "pair(s); a paired test needs at least 2)")


def test_an_edit_cost_claim_is_judged_per_shown_response_on_its_own_page(tmp_path, monkeypatch):
    """Lower is better (direction −1); the cost is per shown response; the page is named by the claims file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(
        "name: toy-edits\nout: runs/toy\nseeds: [0, 1, 2]\nbase: {task: synthetic-personal, model: tiny, rounds: 2, "
        "offline_edits: 4}\narms:\n  floor: {algorithms: [floor]}\n  pref: {algorithms: [corll]}\nbaseline: floor\n")
    (tmp_path / "claims.yaml").write_text(
        "title: Toy edits\npage: edits\nclaims:\n"
        "  - {id: cheaper, statement: pref is cheaper, experiment: exp.yaml, arm: pref, baseline: floor, "
        "measure: cost_per_episode, direction: -1, primary: true}\n")
    # (cumulative cost, responses shown) per seed; pref shows more responses (it asks until it has N pairs)
    runs = {"floor": [(32, 16), (30, 16), (34, 16)], "pref": [(20, 20), (22, 20), (18, 20)]}
    for arm, values in runs.items():
        for seed, (cost, shown) in enumerate(values):
            write_run(tmp_path / "runs" / "toy", arm, seed, [
                {"round": r, "feedback": 8 * r, "queries": shown * r // 2, "cumulative_cost": cost * r // 2,
                 "reward": -1.0, "kl": 0.0} for r in (0, 2)])
    page, data = write_results(tmp_path / "claims.yaml", tmp_path / "docs")
    assert (page.name, data.name) == ("edits.md", "edits.json")
    (claim,) = json.loads(data.read_text())["claims"]
    # per seed: 20/20 − 32/16 = −1.0, 22/20 − 30/16 = −0.775, 18/20 − 34/16 = −1.225
    assert claim["effect"] == pytest.approx(-1.0) and claim["verdict"] == "reproduced"
    assert claim["values"]["floor"] == {"0": 2.0, "1": 1.875, "2": 2.125}
    text = page.read_text()
    assert "online edit cost per shown response" in text
    # the per-seed values behind the verdict, on the page: 32/16, 30/16, 34/16 and 20/20, 22/20, 18/20
    assert "| arm | seed 0 | seed 1 | seed 2 |" in text
    assert "| floor | 2.000 | 1.875 | 2.125 |" in text and "| pref | 1.000 | 1.100 | 0.900 |" in text


def test_a_claim_is_interim_until_the_planned_seeds_have_finished():
    """No optional stopping: a test that rejects on 2 of 8 planned seeds is shown, not yet a verdict."""
    entry = {"effect": 1.2, "low": 0.2, "high": 2.2, "p_adjusted": 0.04, "direction": 1, "mde": 1.1,
             "seeds": [0, 1], "planned_seeds": 8}
    assert verdict(entry, 0.05, 0.0) == ("inconclusive (minimum detectable effect 1.100; interim: 2 of 8 planned "
                                         "seed pairs finished)")
    assert verdict({**entry, "seeds": list(range(8))}, 0.05, 0.0) == "reproduced"


def test_claims_measured_by_a_study_file_and_per_metric_measures(tmp_path, monkeypatch):
    """A study's per-seed values are tested like runs; a correlation gets r, Fisher's interval and its own MDE;
    `gain:<metric>` reads any recorded metric; the study's markdown is appended to the page."""
    import math

    from scipy.stats import pearsonr

    from corll.verdicts import correlation_mde, run_value

    monkeypatch.chdir(tmp_path)
    x = [0.01, 0.02, 0.03, 0.05, 0.08, 0.13, 0.21]
    y = [0.02, 0.015, 0.04, 0.05, 0.07, 0.15, 0.2]
    (tmp_path / "study.json").write_text(json.dumps({
        "auc": {"kind": "seeds", "values": {"0": 0.74, "1": 0.76, "2": 0.75}, "baseline_values": {"0": 0.5, "1": 0.5, "2": 0.5}},
        "r": {"kind": "correlation", "labels": list("abcdefg"), "x": x, "y": y, "seeds": [1, 2]}}))
    (tmp_path / "study.md").write_text("## Study tables\n\n| a | b |\n")
    (tmp_path / "claims.yaml").write_text(
        "title: Study\npage: study\nsections: [study.md, missing.md]\nnotes: What it means.\nclaims:\n"
        "  - {id: auc, statement: ranks, source: study.json, key: auc, measure: auroc, primary: true}\n"
        "  - {id: r, statement: predicts, source: study.json, key: r, measure: pearson_r}\n"
        "  - {id: later, statement: not yet, source: absent.json, key: auc, measure: auroc}\n")
    page, data = write_results(tmp_path / "claims.yaml", tmp_path / "docs")
    result = {c["id"]: c for c in json.loads(data.read_text())["claims"]}
    assert result["auc"]["effect"] == pytest.approx(0.25) and result["auc"]["verdict"] == "reproduced"
    r = pearsonr(x, y).statistic
    half = 1.959964 / math.sqrt(len(x) - 3)
    assert result["r"]["effect"] == pytest.approx(r)
    assert result["r"]["low"] == pytest.approx(math.tanh(math.atanh(r) - half))
    # two secondary claims planned, one still untested: Holm over both, so α/2 and twice the p-value
    assert result["r"]["mde"] == pytest.approx(correlation_mde(7, 0.05 / 2))
    assert result["r"]["p_adjusted"] == pytest.approx(min(1.0, 2 * result["r"]["p"]))
    assert result["later"]["verdict"].startswith("inconclusive (minimum detectable effect not estimable")
    text = page.read_text()
    assert "## Study tables" in text and "missing.md: not written yet" in text and "7 variants" in text
    assert text.index("| ranks |") < text.index("What it means.") < text.index("## Study tables")
    # Fisher's z: 80% power at α = 0.05 over 7 pairs needs r ≥ tanh((1.960 + 0.842) / 2) = 0.885
    assert correlation_mde(7) == pytest.approx(math.tanh((1.959964 + 0.841621) / 2), abs=1e-4)
    records = [{"round": 0, "reward": 0.1, "help": 0.30}, {"round": 12, "reward": 0.2, "help": 0.25}]
    assert run_value(records, "gain:help") == pytest.approx(-0.05) and run_value(records, "final:help") == 0.25
    assert run_value(records, "gain:absent") is None


def test_a_claim_names_either_an_experiment_or_a_study(tmp_path):
    from corll.verdicts import ClaimsError, load_claims

    for claim in ("{id: a, statement: s, experiment: e.yaml, source: s.json, key: k, arm: a, primary: true}",
                  "{id: a, statement: s, source: s.json, primary: true}",
                  "{id: a, statement: s, experiment: e.yaml, arm: a, measure: 'gain:', primary: true}"):
        (tmp_path / "c.yaml").write_text(f"title: T\nclaims:\n  - {claim}\n")
        with pytest.raises(ClaimsError):
            load_claims(tmp_path / "c.yaml")


def test_a_claim_without_runs_states_what_its_planned_seeds_would_detect_under_a_pilots_sd(tmp_path, monkeypatch):
    """Before its runs finish, a claim sized by another claim's measured SD says the design's MDE, marked planned."""
    import statistics

    from corll.verdicts import ClaimsError, load_claims

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pilot.yaml").write_text(
        "name: pilot\nout: runs/pilot\nseeds: [0, 1, 2]\nbase: {task: synthetic, model: tiny, rounds: 2}\n"
        "arms:\n  a: {algorithms: [corll]}\n  b: {algorithms: [dueling]}\nbaseline: b\n")
    (tmp_path / "later.yaml").write_text(
        "name: later\nout: runs/later\nseeds: [0, 1, 2, 3, 4, 5, 6, 7]\nbase: {task: synthetic, model: tiny, rounds: 2}\n"
        "arms:\n  k1: {algorithms: [corll], k: 1}\n  k3: {algorithms: [corll], k: 3}\nbaseline: k1\n")
    (tmp_path / "claims.yaml").write_text(
        "title: Toy\nclaims:\n"
        "  - {id: big, statement: a beats b, experiment: pilot.yaml, arm: a, baseline: b, primary: true}\n"
        "  - {id: k, statement: k3 beats k1, experiment: later.yaml, arm: k3, baseline: k1, design_sd: big}\n"
        "  - {id: other, statement: k3 learns, experiment: later.yaml, arm: k3, measure: gain}\n")
    write_runs(tmp_path / "runs" / "pilot", {"a": [0.5, 0.6, 0.4], "b": [0.2, 0.2, 0.2]})
    page, data = write_results(tmp_path / "claims.yaml", tmp_path / "docs")
    result = {c["id"]: c for c in json.loads(data.read_text())["claims"]}
    sd = statistics.stdev([0.3, 0.4, 0.2])
    # two secondary claims planned: the design is judged at Holm's strictest step, α/2, over 8 seeds
    assert result["k"]["mde"] == pytest.approx(minimum_detectable_effect(sd, 8, 0.025))
    assert result["k"]["mde_basis"] == "planned" and result["k"]["effect"] is None
    assert result["big"]["mde_basis"] == "measured"
    assert result["k"]["verdict"] == (f"inconclusive (minimum detectable effect {result['k']['mde']:.3f}, planned: "
                                      f"8 seeds if the paired SD of `big` ({sd:.3f}) holds; 0 finished seed pair(s))")
    # no stand-in named: nothing is claimed
    assert "not estimable" in result["other"]["verdict"] and result["other"]["mde_basis"] is None
    assert f"{result['k']['mde']:.3f} (planned)" in page.read_text()

    (tmp_path / "bad.yaml").write_text(
        "title: T\nclaims:\n  - {id: a, statement: s, experiment: e.yaml, arm: a, primary: true, design_sd: nope}\n")
    with pytest.raises(ClaimsError, match="design_sd names 'nope'"):
        load_claims(tmp_path / "bad.yaml")


def test_the_compute_line_adds_evaluations_where_runs_timed_them(tmp_path):
    from corll.experiment import load_experiment
    from corll.compute import compute_cost, cost_line

    (tmp_path / "exp.yaml").write_text("name: toy\nseeds: [0, 1]\nbase: {task: synthetic, model: tiny, rounds: 2}\n"
                                       "arms:\n  a: {algorithms: [corll]}\n")
    experiment = load_experiment(tmp_path / "exp.yaml", tmp_path / "runs")
    # the last record holds a run's totals: 1800 s + 3600 s of rounds; only seed 1 timed its evaluations
    write_run(tmp_path / "runs", "a", 0, [{"round": 0, "wall_time": 0.0}, {"round": 2, "wall_time": 1800.0}])
    write_run(tmp_path / "runs", "a", 1, [{"round": 0, "wall_time": 0.0, "eval_time": 300.0},
                                          {"round": 2, "wall_time": 3600.0, "eval_time": 900.0}])
    cost = compute_cost(experiment)
    assert cost["hours"] == pytest.approx(1.5) and cost["evaluation_hours"] == pytest.approx(0.25)
    assert cost["runs"] == 2 and cost["runs_timing_evaluations"] == 1 and cost["complete"] is False
    assert cost_line(cost) == ("1.5 hours of training rounds and 0.2 of evaluations so far (evaluations timed by 1 "
                               "of 2 runs; older runs did not time them) on –")
    (tmp_path / "runs" / "a" / "seed-0").rename(tmp_path / "elsewhere")  # only the timed run is left
    assert cost_line(compute_cost(experiment)) == "1.0 hours of training rounds and 0.2 of evaluations so far on –"
    # runs on two kinds of CPU: each kind's hours apart, not one total over machines of different speeds
    write_run(tmp_path / "runs", "a", 0, [{"round": 0, "wall_time": 0.0}, {"round": 2, "wall_time": 720.0}],
              hardware={"cpu": "Fast", "capability": "AMX", "precision": "fp32", "threads": 1})
    cost = compute_cost(experiment)
    assert [(c["cpu"], c["runs"], c["hours"]) for c in cost["by_cpu"]] == [("Fast (AMX, fp32, 1 thread)", 1, 0.2),
                                                                           ("–", 1, 1.0)]
    assert cost["hours"] == pytest.approx(1.2) and cost["cpus"] == ["Fast (AMX, fp32, 1 thread)"]
    assert cost_line(cost) == ("0.2 hours of training rounds (evaluations not counted) on Fast (AMX, fp32, 1 thread) "
                               "(1 run); 1.0 hours of training rounds and 0.2 of evaluations on – (1 run) (so far)")


def test_every_committed_claim_names_arms_of_an_experiment_that_run_all_runs():
    """The committed claims files are what `corll verdicts` judges: a claim that names a missing experiment or arm
    would fail there only after hours of runs, and one whose experiment run-all.sh skips would never be measured."""
    root = Path(__file__).parent.parent
    run_all = (root / "experiments" / "run-all.sh").read_text()
    claims_files = sorted((root / "experiments").glob("claims*.yaml"))
    assert len(claims_files) == 3
    for path in claims_files:
        for claim in load_claims(path).claims:
            if claim.experiment is None:
                continue
            experiment = load_experiment(root / claim.experiment)
            assert {claim.arm, claim.baseline or claim.arm} <= set(experiment.arms), (path.name, claim.id)
            assert claim.experiment in run_all, (path.name, claim.id)
