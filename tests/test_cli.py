import json

import pytest
from typer.testing import CliRunner

import corll.simulate
from corll.cli import app

runner = CliRunner()
FAST = ["--task", "synthetic", "--model", "tiny", "--precision", "fp32", "--rounds", "4", "--eval-every", "2", "--max-new-tokens", "8",
        "--batch-size", "4", "--eval-prompts", "4", "--lr", "0.03"]


def test_simulate_end_to_end_writes_all_outputs_and_report_reads_them(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["simulate", *FAST, "--algorithm", "corll", "--algorithm", "dueling",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (out / name).stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["algorithms"] == ["corll", "dueling"] and config["rounds"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["algorithm"], r["round"]) for r in records} == {(a, r) for a in ("corll", "dueling") for r in (0, 2, 4)}
    assert all({"algorithm", "seed", "round", "feedback", "reward"} <= r.keys() for r in records)
    assert "held-out true reward" in result.output and "corll" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corll"]["feedback"] == 16

    second = tmp_path / "second"
    assert runner.invoke(app, ["simulate", *FAST, "--seed", "1", "--out", str(second)]).exit_code == 0
    plot = tmp_path / "both.png"
    result = runner.invoke(app, ["report", str(out), str(second), "--out", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 0 and "2" in result.output  # two seeds pooled


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "nope"], "unknown task 'nope': use one of positive-review, synthetic"),
    (["--model", "gpt-17"], "unknown model 'gpt-17': use one of smollm2-135m-instruct, tiny"),
    (["--algorithm", "ppo"], "unknown algorithm 'ppo': use one of corll, dueling"),
    (["--k", "0"], "--k must be >= 1"),
    (["--beta", "0"], "--beta must be > 0"),
    (["--batch-size", "0"], "--batch-size (N) must be >= 1"),
    (["--l", "0"], "--l must be >= 1"),
    (["--epsilon", "1.5"], "--epsilon must be in [0, 1]"),
    (["--epsilon", "-0.1"], "--epsilon must be in [0, 1]"),
    (["--alpha", "0"], "--alpha must be in (0, 1]"),
    (["--alpha", "1.2"], "--alpha must be in (0, 1]"),
])
def test_bad_settings_are_rejected_before_any_model_loads(tmp_path, monkeypatch, args, message):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(corll.simulate, "load_policy", no_loading)
    out = tmp_path / "run"
    base = ["simulate", "--task", "synthetic", "--model", "tiny", "--out", str(out)]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_a_task_file_that_fails_to_import_names_the_file_and_the_reason(tmp_path):
    broken = tmp_path / "broken_task.py"
    broken.write_text("import not_a_module_anywhere\n")
    result = runner.invoke(app, ["simulate", "--task", f"{broken}:build", "--model", "tiny",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "broken_task.py" in text and "ModuleNotFoundError" in text and "not_a_module_anywhere" in text


def test_a_task_file_brings_its_own_task(tmp_path):
    task_file = tmp_path / "my_task.py"
    task_file.write_text(
        "from corll.tasks import Task\n"
        "def build(policy):\n"
        "    reward = lambda xs, ys: [float(y.count('z')) for y in ys]\n"
        "    expert = lambda xs, n: [['z' * (i + 1) for i in range(n)] for _ in xs]\n"
        "    return Task('zeds', ['p1', 'p2', 'p3'], ['q1', 'q2'], reward, expert)\n"
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *FAST, "--task", f"{task_file}:build", "--algorithm", "corll",
                                 "--out", str(tmp_path / "local")])
    assert result.exit_code == 2 and "defines no local edit: use --user expert" in " ".join(result.output.split())
    result = runner.invoke(app, ["simulate", *FAST, "--task", f"{task_file}:build", "--algorithm", "corll",
                                 "--user", "expert", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["corll"]["feedback"] == 16


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["simulate", *FAST, "--algorithm", "dueling", "--out", str(out)]).exit_code == 0
    before = (out / "metrics.jsonl").read_text()
    result = runner.invoke(app, ["simulate", *FAST, "--algorithm", "dueling", "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "metrics.jsonl").read_text() == before


def test_help_explains_options_with_paper_defaults():
    result = runner.invoke(app, ["simulate", "--help"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "paper: 9 IMDB" in text and "paper: 50" in text and "paper: 0.1" in text


def test_resume_refuses_options_that_differ_from_the_saved_run(tmp_path):
    out = tmp_path / "run"
    args = ["simulate", "--task", "synthetic", "--model", "tiny", "--algorithm", "corll", "--rounds", "2",
            "--eval-every", "1", "--batch-size", "2", "--eval-prompts", "2", "--max-new-tokens", "4",
            "--precision", "fp32", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (out / "metrics.jsonl").read_text()
    result = CliRunner().invoke(app, [*args, "--resume", "--lr", "0.5"])
    assert result.exit_code == 2 and "--lr (saved 0.0002, given 0.5)" in " ".join(result.output.split())
    assert (out / "metrics.jsonl").read_text() == before
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0  # the same options resume fine
