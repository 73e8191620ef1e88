import json
from pathlib import Path

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
    # not a terminal: timestamped lines instead of bars, one per round and one per evaluation with its result
    import re
    for algorithm in ("corll", "dueling"):
        lines = re.findall(rf"^\d\d:\d\d:\d\d {algorithm} (\d)/4(.*)$", result.output, re.MULTILINE)
        assert {done for done, _ in lines} == {"0", "1", "2", "3", "4"}, result.output
        assert len(lines) == len(set(lines)), result.output  # nothing said twice
        for r in (r for r in records if r["algorithm"] == algorithm):
            assert (str(r["round"]), f" · R* {r['reward']:.3f} · feedback {r['feedback']}") in lines, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corll"]["feedback"] == 16

    again = runner.invoke(app, ["simulate", *FAST, "--algorithm", "corll", "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    assert "0/4" not in again.output and "0:00:0" not in again.output  # no empty progress bars left behind

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


def test_the_command_line_answers_without_loading_torch():
    """--help and the store's commands must be instant: torch, transformers and the server load in the
    commands that need them."""
    import subprocess
    import sys

    code = ("import sys, corll.cli, corll.service.lineages, corll.service.versions; heavy = [m for m in ('torch', 'transformers', 'peft', 'fastapi', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_serve_names_a_busy_port_before_loading_the_model(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", "tiny", "--port", str(port),
                                     "--db", f"sqlite:///{tmp_path / 'corll.db'}"])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in said(result) and "--port" in result.output
    assert "serving" not in result.output


def test_serve_checks_the_learners_options_before_it_starts(tmp_path):
    db = tmp_path / "corll.db"
    for options, problem in (("--margin lots", "Invalid value for '--margin'"), ("--bogus 1", "No such option: --bogus"),
                             ("--model other", "--model set by serve itself")):
        result = runner.invoke(app, ["serve", "--model", "tiny", "--port", "0", "--db", f"sqlite:///{db}", "--learn",
                                     "--learn-options", options])
        assert result.exit_code == 2 and f"--learn-options: {problem}" in said(result), result.output
        assert "serving" not in result.output and not db.exists()  # refused before anything was created


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_nothing_is_lost_or_silent_on_wrong_paths(tmp_path):
    # --resume on a folder that holds no run
    result = runner.invoke(app, ["simulate", *FAST, "--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2 and "holds no run" in said(result)
    assert not (tmp_path / "none" / "metrics.jsonl").exists()
    # a mistyped database is an error for commands that read the log, and is not created
    missing = tmp_path / "typo.db"
    for command in (["versions"], ["rollback", "1"], ["export", "--format", "sft", "--out", str(tmp_path / "x.jsonl")],
                    ["train", "--model", "tiny"]):
        result = runner.invoke(app, [*command, "--db", str(missing)])
        assert result.exit_code == 2 and f"{missing} does not exist" in said(result), (command, result.output)
        assert not missing.exists()
    # a task file without its factory
    task_file = tmp_path / "mytask.py"
    task_file.write_text("")
    result = runner.invoke(app, ["simulate", *FAST, "--task", str(task_file), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "names a file but not its factory" in said(result)
    # report on a run with nothing recorded writes no figure
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"task": "synthetic", "algorithms": ["corll"]}))
    (empty / "metrics.jsonl").write_text("")
    result = runner.invoke(app, ["report", str(empty), "--out", str(tmp_path / "r.png")])
    assert result.exit_code == 2 and "nothing to report yet" in said(result)
    assert not (tmp_path / "r.png").exists()


def test_a_task_whose_reward_is_not_batched_is_named_at_load(tmp_path):
    task_file = tmp_path / "mytask.py"
    task_file.write_text(
        "from corll.tasks import Task\n"
        "def factory(policy):\n"
        "    return Task('mine', ['a', 'b'], ['c', 'd'], reward=lambda x, y: len(y))\n")
    result = runner.invoke(app, ["simulate", *FAST, "--task", f"{task_file}:factory", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "its reward returned 2 for two responses" in said(result) and "one number per response" in said(result)


@pytest.mark.parametrize("user", ["local", "expert", "llm"])
def test_the_readme_example_task_runs_with_every_user(tmp_path, user):
    example = Path(__file__).parents[2] / "examples" / "polite_task.py"
    result = runner.invoke(app, ["simulate", *FAST, "--task", f"{example}:build", "--user", user, "--rounds", "1",
                                 "--eval-every", "1", "--algorithm", "corll", "--out", str(tmp_path / user)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / user / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1] and records[1]["feedback"] > 0
    assert all(0.0 <= r["reward"] <= 1.0 for r in records)
