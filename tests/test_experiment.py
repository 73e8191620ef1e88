import json

import pytest
from typer.testing import CliRunner

from corll.cli import app
from corll.experiment import ExperimentError, load_experiment, run_experiment
from corll.experiment_results import aggregate
from corll.run_dir import RunDir, prepare_run_dir
from tests.conftest import interrupt_at

EXPERIMENT = """
name: tiny-grid
seeds: [0, 1]
base: {task: synthetic, model: tiny, precision: fp32, rounds: 4, k: 2, batch_size: 4, lr: 0.01,
       max_new_tokens: 8, eval_every: 2, eval_prompts: 4, eval_samples: 1, checkpoint_every: 2, user: expert, l: 3}
arms:
  corll: {algorithms: [corll]}
  dueling: {algorithms: [dueling]}
baseline: dueling
figures:
  main: {arms: [corll, dueling], metrics: [reward, regret]}
regret_samples: 4
"""


def write(tmp_path, text=EXPERIMENT):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_experiment_runs_the_grid_aggregates_and_skips_finished_runs(tmp_path):
    experiment = load_experiment(write(tmp_path), tmp_path / "out")
    seen = []
    run_experiment(experiment, lambda arm, seed, done, total, record, doing: doing or seen.append((arm, seed, done)))
    result = aggregate(experiment)
    folders = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").glob("*/seed-*"))
    assert folders == ["corll/seed-0", "corll/seed-1", "dueling/seed-0", "dueling/seed-1"]
    assert [s[:2] for s in seen if s[2] == 0] == [("corll", 0), ("dueling", 0), ("corll", 1), ("dueling", 1)]
    corll = result["arms"]["corll"]
    assert corll["finished_seeds"] == [0, 1]
    finals = [RunDir(tmp_path / "out" / "corll" / f"seed-{s}").read_metrics()[-1]["reward"] for s in (0, 1)]
    assert corll["final_reward"]["mean"] == pytest.approx(sum(finals) / 2)
    assert corll["final_reward"]["low"] < corll["final_reward"]["mean"] < corll["final_reward"]["high"]
    best = json.loads((tmp_path / "out" / "best-of-expert.json").read_text())
    assert [p["regret"]["mean"] for p in corll["curve"]] == pytest.approx(
        [list(best.values())[0] - p["reward"]["mean"] for p in corll["curve"]])
    paired = result["paired"]["corll"]
    assert [(row["round"], row["pairs"]) for row in paired] == [(0, 2), (2, 2), (4, 2)]  # both seeds, every round
    assert paired[0]["difference"]["mean"] == pytest.approx(0.0)  # both arms start from the same policy
    assert (tmp_path / "out" / "main.png").stat().st_size > 0
    page = (tmp_path / "out" / "results.md").read_text()
    assert "| corll | 2/2 |" in page and "| arm | round | feedback | seeds | difference | p |" in page
    assert page.count("| corll | 4 | 16 | 2 | ") == 1  # the paired row at round 4 says its two seed pairs

    seen.clear()
    run_experiment(experiment, lambda arm, seed, done, total, record, doing: doing or seen.append((arm, seed, done)))
    assert seen == [("corll", 0, 4), ("dueling", 0, 4), ("corll", 1, 4), ("dueling", 1, 4)]  # nothing re-run


def run_until(experiment, arm: str, seed: int, done: int) -> None:
    """Run the grid and kill it as `arm`'s run at `seed` is about to report round `done`."""
    interrupt_at(lambda progress: run_experiment(experiment, progress), arm, seed, done)


def test_an_interrupted_run_resumes_and_a_changed_setting_is_refused(tmp_path):
    experiment = load_experiment(write(tmp_path), tmp_path / "out")
    run_until(experiment, "dueling", 0, 3)
    starts = []
    run_experiment(experiment, lambda arm, seed, done, total, record, doing: starts.append((arm, seed, done)))
    assert ("dueling", 0, 2) in starts and ("dueling", 0, 0) not in starts  # resumed from its checkpoint
    changed = load_experiment(write(tmp_path, EXPERIMENT.replace("lr: 0.01", "lr: 0.02")), tmp_path / "out")
    with pytest.raises(ExperimentError, match="different settings \\(lr\\)"):
        run_experiment(changed)


def test_a_run_still_going_is_left_out_of_the_curves_while_its_arm_has_a_finished_seed(tmp_path):
    experiment = load_experiment(write(tmp_path), tmp_path / "out")
    run_until(experiment, "corll", 1, 3)
    corll = aggregate(experiment)["arms"]["corll"]
    finished = RunDir(tmp_path / "out" / "corll" / "seed-0").read_metrics()
    going = RunDir(tmp_path / "out" / "corll" / "seed-1").read_metrics()
    assert [r["round"] for r in going] == [0, 2] and going[0]["reward"] != finished[0]["reward"]
    assert corll["finished_seeds"] == [0]
    assert [p["seeds"] for p in corll["curve"]] == [1, 1, 1]  # seed 1 (rounds 0 and 2 so far) is not averaged in
    assert [p["reward"]["mean"] for p in corll["curve"]] == pytest.approx([r["reward"] for r in finished])


def test_a_run_made_with_auto_precision_counts_as_the_precision_it_resolved_to(tmp_path):
    experiment = load_experiment(write(tmp_path), tmp_path / "out")
    run_experiment(experiment)
    config_file = tmp_path / "out" / "corll" / "seed-0" / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["precision"] == "fp32" and saved["hardware"]["precision"] == "fp32"
    # The same run, as recorded by a machine where `auto` resolved to fp32: the fp32 experiment keeps it.
    config_file.write_text(json.dumps({**saved, "precision": "auto"}))
    seen = []
    run_experiment(experiment, lambda arm, seed, done, total, record, doing: doing or seen.append((arm, seed, done)))
    assert ("corll", 0, 4) in seen and ("corll", 0, 0) not in seen  # finished, not re-run
    assert prepare_run_dir(config_file.parent, experiment.arms["corll"], resume=True, threads=1)[1].precision == "fp32"
    # Where `auto` resolved to bf16, the run computed something else: refused, naming the setting.
    config_file.write_text(json.dumps({**saved, "precision": "auto", "hardware": {**saved["hardware"], "precision": "bf16"}}))
    with pytest.raises(ExperimentError, match="different settings \\(precision\\)"):
        run_experiment(experiment)
    assert prepare_run_dir(config_file.parent, experiment.arms["corll"], resume=True, threads=1)[1].precision == "bf16"


@pytest.mark.parametrize(("edit", "message"), [
    (("baseline: dueling", "baseline: nobody"), "baseline 'nobody' is not one of the arms"),
    (("user: expert", "user: expert, colour: red"), "unknown setting\\(s\\) colour"),
    (("algorithms: [corll]}", "algorithms: [corll, dueling]}"), "exactly one algorithm"),
    (("metrics: [reward, regret]", "metrics: [speed]"), "unknown metric 'speed'"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "distinct integers"),
    (("name: tiny-grid", "nam: tiny-grid"), "unknown key\\(s\\) nam"),
    (("lr: 0.01", "lr: -1"), "arm 'corll': --lr must be > 0"),
    (("arms:", "arms: ["), "not valid YAML"),
    (("metrics: [reward, regret]", "metrics: [reward], x: time"), "x must be one of feedback, queries"),
    (("metrics: [reward, regret]", "metric: [reward]"), "figure 'main': unknown key\\(s\\) metric"),
])
def test_bad_experiment_files_are_refused_with_the_key_named(tmp_path, edit, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, EXPERIMENT.replace(*edit)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_seeds_split_an_experiment_and_the_aggregate_joins_them(tmp_path):
    path, out = write(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(app, ["experiment", str(path), "--out", str(out), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed-*")) == ["corll/seed-1", "dueling/seed-1"]
    page = (out / "results.md").read_text()
    assert "| corll | 1/1 |" in page  # this process's share only
    assert "Paired by seed" not in page  # one seed pair: no test, so no table of tests
    for arm in ("corll", "dueling"):
        assert CliRunner().invoke(app, ["experiment", str(path), "--out", str(out), "--seeds", "0",
                                        "--arms", arm]).exit_code == 0
    result = CliRunner().invoke(app, ["experiment", str(path), "--out", str(out), "--aggregate-only"])
    assert result.exit_code == 0 and "4 runs (4 finished)" in " ".join(result.output.split())
    page = (out / "results.md").read_text()
    assert "| corll | 2/2 |" in page and "Paired by seed against `dueling`" in page


def test_a_run_another_process_is_training_is_skipped_and_taken_up_later(tmp_path):
    """Two `corll experiment` commands on one folder split the work: a claimed run is left to its owner."""
    import subprocess
    import sys

    experiment = load_experiment(write(tmp_path), tmp_path / "out")
    claimed = tmp_path / "out" / "corll" / "seed-0"
    claimed.mkdir(parents=True)
    holder = subprocess.Popen(  # another process holds the run's claim until its stdin closes
        [sys.executable, "-c", "import sys, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(claimed / ".running.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        seen = []
        run_experiment(experiment, lambda arm, seed, done, total, record, doing: seen.append((arm, seed, doing)))
        assert ("corll", 0, "running in another process") in seen
        assert not (claimed / "metrics.jsonl").exists()  # untouched by this process
        assert all(RunDir(tmp_path / "out" / arm / f"seed-{seed}").read_metrics()
                   for arm, seed in (("dueling", 0), ("corll", 1), ("dueling", 1)))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    run_experiment(experiment)  # the claim is gone with its process: this run is taken up
    result = aggregate(experiment)
    assert result["arms"]["corll"]["finished_seeds"] == [0, 1]


@pytest.mark.parametrize(("option", "message"), [
    (["--seeds", "3"], "--seeds 3 not in the experiment's seeds [0, 1]"),
    (["--seeds", "0;1"], "comma-separated integers"),
    (["--arms", "corll,kto"], "--arms kto not in the experiment's arms (corll, dueling)"),
])
def test_bad_seeds_or_arms_are_refused_and_nothing_runs(tmp_path, option, message):
    result = CliRunner().invoke(app, ["experiment", str(write(tmp_path)), "--out", str(tmp_path / "out"), *option])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_experiment_cli_reports_a_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["experiment", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def fake_run(folder, algorithm: str, rounds: int, wall_time: float, eval_time: float | None, finished: bool,
             cpu: str | None = None) -> None:
    """A run folder as a run leaves it: the last metrics record holds its totals; a summary once finished; the
    machine it ran on, when given."""
    folder.mkdir(parents=True)
    if cpu:
        (folder / "config.json").write_text(json.dumps({"hardware": {"cpu": cpu, "capability": "AVX2",
                                                                     "precision": "fp32", "threads": 1}}))
    timed = {} if eval_time is None else {"eval_time": eval_time}
    (folder / "metrics.jsonl").write_text(json.dumps({"algorithm": algorithm, "round": rounds, "reward": 0.0,
                                                      "wall_time": wall_time, **timed}) + "\n")
    if finished:
        (folder / "summary.json").write_text(json.dumps({algorithm: {"rounds": rounds}}))


def test_the_plan_estimates_what_is_left_from_each_arms_finished_runs_and_runs_nothing(tmp_path):
    from corll.compute import plan

    out = tmp_path / "out"
    fake_run(out / "corll" / "seed-0", "corll", 4, 3600.0, 1800.0, finished=True)
    fake_run(out / "corll" / "seed-1", "corll", 2, 1800.0, 900.0, finished=False)  # interrupted: not a measure
    fake_run(out / "dueling" / "seed-0", "dueling", 4, 1800.0, None, finished=True)  # from before eval timing
    corll, dueling = plan(load_experiment(write(tmp_path), out))
    assert (corll.finished, corll.left, corll.rounds_hours, corll.evaluation_hours) == (1, 1, 1.0, 0.5)
    assert corll.hours_left == pytest.approx(1.5)  # one run from scratch at the finished run's rate
    assert (dueling.finished, dueling.left, dueling.evaluation_hours, dueling.hours_left) == (1, 1, None, 0.5)

    result = CliRunner().invoke(app, ["experiment", str(write(tmp_path)), "--out", str(out), "--plan"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.startswith("│")}
    assert rows["corll"] == ["1/2", "1.00", "0.50", "1", "1.50"] and rows["dueling"] == ["1/2", "0.50", "–", "1", "0.50"]
    assert rows["total"][-2:] == ["2", "2.00"]
    said = " ".join(result.output.split())
    assert "count training rounds only" in said  # the dueling estimate says so
    assert "at the rate of runs on other CPUs than this" in said and "corll, dueling" in said
    assert not (out / "corll" / "seed-1" / "checkpoints").exists() and not (out / "aggregate.json").exists()
    both = CliRunner().invoke(app, ["experiment", str(write(tmp_path)), "--out", str(out), "--plan",
                                    "--aggregate-only"])
    assert both.exit_code == 2 and "give one of them" in both.output

    # a run finished on the asking kind of CPU gives the rate there; the other arm's rate comes from elsewhere
    fake_run(out / "dueling" / "seed-1", "dueling", 4, 900.0, 300.0, finished=True, cpu="Fast")
    corll, dueling = plan(load_experiment(write(tmp_path), out), here="Fast, AVX2")
    assert (dueling.finished, dueling.rounds_hours, dueling.evaluation_hours, dueling.rate_from_here) == (2, 0.25, 1 / 12, True)
    assert (corll.rounds_hours, corll.rate_from_here) == (1.0, False)


PROTOCOL_EXPERIMENT = """
name: tiny-protocol
seeds: [0, 1]
base: {task: synthetic-personal, model: tiny, precision: fp32, offline_edits: 8, rounds: 2, k: 2, batch_size: 4,
       lr: 0.01, max_new_tokens: 3, eval_every: 2, eval_prompts: 4, eval_samples: 1, checkpoint_every: 2}
arms:
  floor: {algorithms: [floor]}
  preference: {algorithms: [corll]}
baseline: floor
figures:
  online-cost: {arms: [floor, preference], metrics: [edit_cost, cumulative_cost], x: queries}
"""


def test_a_protocol_experiment_reports_cost_over_the_same_episodes_for_every_agent(tmp_path):
    experiment = load_experiment(write(tmp_path, PROTOCOL_EXPERIMENT), tmp_path / "out")
    run_experiment(experiment)
    result = aggregate(experiment)
    over_t = {}
    for arm in ("floor", "preference"):
        runs = [RunDir(tmp_path / "out" / arm / f"seed-{s}").read_metrics()[-1] for s in (0, 1)]
        over_t[arm] = [r["cumulative_cost"] / r["queries"] * 8 for r in runs]  # T = 2 rounds × 4
        assert result["arms"][arm]["cumulative_cost"]["mean"] == pytest.approx(sum(over_t[arm]) / 2)
    # paired by seed: the mean of the per-seed differences to the floor
    difference = [a - b for a, b in zip(over_t["preference"], over_t["floor"])]
    assert result["paired_cost"]["preference"]["difference"]["mean"] == pytest.approx(sum(difference) / 2)
    assert result["paired_cost"]["preference"]["seeds"] == [0, 1]
    page = (tmp_path / "out" / "results.md").read_text()
    assert "online cumulative cost" in page and "Cumulative online cost paired by seed against `floor`" in page
    # per source (here the two users): cost per shown response, averaged over seeds, in a table
    for arm in ("floor", "preference"):
        runs = [RunDir(tmp_path / "out" / arm / f"seed-{s}").read_metrics()[-1] for s in (0, 1)]
        for source in ("lower", "lower-or-digit"):
            per_seed = [r["cost_by_source"][source] / r["shown_by_source"][source] for r in runs]
            cell = result["arms"][arm]["cost_per_episode_by_source"][source]
            assert cell["mean"] == pytest.approx(sum(per_seed) / 2) and cell["n"] == 2
    assert "| arm | lower | lower-or-digit |" in page
    assert (tmp_path / "out" / "online-cost.png").stat().st_size > 0


def test_a_shared_arm_uses_the_other_experiments_runs_and_must_match_them(tmp_path, monkeypatch):
    from corll.experiment import subset

    monkeypatch.chdir(tmp_path)  # experiment files name other files relative to where commands run
    owner = load_experiment(write(tmp_path, EXPERIMENT.replace("name: tiny-grid", "name: tiny-grid\nout: runs/grid")))
    run_experiment(subset(owner, seeds="0", arms="corll"), lambda *_: None)
    borrower = EXPERIMENT.replace("name: tiny-grid", "name: borrower\nout: runs/borrower").replace(
        "seeds: [0, 1]", "seeds: [0]").replace("dueling: {algorithms: [dueling]}", "noisy: {algorithms: [corll], epsilon: 0.3}")
    borrower = borrower.replace("baseline: dueling", "baseline: noisy\nshared: {corll: exp.yaml#corll}")
    borrower = borrower.replace("[corll, dueling]", "[corll, noisy]")
    (tmp_path / "borrower.yaml").write_text(borrower)
    experiment = load_experiment(tmp_path / "borrower.yaml")
    assert [run[3].as_posix() for run in experiment.runs()] == ["runs/grid/corll/seed-0", "runs/borrower/noisy/seed-0"]
    seen = []
    run_experiment(experiment, lambda arm, seed, done, total, record, doing: doing or seen.append((arm, done)))
    result = aggregate(experiment)
    assert ("corll", 4) in seen and ("corll", 0) not in seen  # finished in the owner's folder: not re-run
    assert not (tmp_path / "runs/borrower/corll").exists() and (tmp_path / "runs/borrower/noisy/seed-0").is_dir()
    owned = RunDir(tmp_path / "runs/grid/corll/seed-0").read_metrics()[-1]["reward"]
    assert result["arms"]["corll"]["final_reward"]["mean"] == pytest.approx(owned)
    # only identical settings share runs; the differing fields are named
    (tmp_path / "borrower.yaml").write_text(borrower.replace("exp.yaml#corll", "exp.yaml#dueling"))
    with pytest.raises(ExperimentError, match="differs from exp.yaml#dueling in algorithms"):
        load_experiment(tmp_path / "borrower.yaml")
    (tmp_path / "borrower.yaml").write_text(borrower.replace("shared: {corll:", "shared: {nobody:"))
    with pytest.raises(ExperimentError, match="shared arm 'nobody' is not one of the arms"):
        load_experiment(tmp_path / "borrower.yaml")


def test_an_experiment_run_in_the_background_logs_each_run_and_its_evaluations(tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    write(tmp_path, EXPERIMENT.replace("name: tiny-grid", "name: tiny-grid\nout: grid").replace("seeds: [0, 1]", "seeds: [0]"))
    result = CliRunner().invoke(app, ["experiment", "exp.yaml", "--threads", "1"])  # output is not a terminal
    assert result.exit_code == 0, result.output
    for arm in ("corll", "dueling"):
        logged = re.findall(rf"^\d\d:\d\d:\d\d {arm} seed 0 (\d)/4 · R\* (-?\d\.\d{{3}})$", result.output, re.MULTILINE)
        recorded = [(str(r["round"]), f"{r['reward']:.3f}") for r in RunDir(tmp_path / "grid" / arm / "seed-0").read_metrics()]
        assert [line for line in logged if line in recorded] == recorded, result.output  # every evaluation, in order
