"""Learners are found by name: a new one is its own file plus one registration, nothing in the simulation loop."""

import json

from typer.testing import CliRunner

from corll.cli import app
from corll.learners.registry import LEARNERS, LearnerSpec, Setup, register


def greedy_corll(setup: Setup):
    """A learner defined outside corll: CoRLL that shows a single sample (k = 1)."""
    from corll.learners.corll import CoRLL

    return CoRLL(setup.policy, setup.dpo(), setup.editor(), k=1, batch_size=setup.config.batch_size)


def test_a_registered_learner_runs_and_is_listed(tmp_path):
    register(LearnerSpec("corll-k1", "CoRLL without the argmax", "edits", greedy_corll, ("user",)))
    try:
        runner = CliRunner()
        listing = runner.invoke(app, ["learners"])
        assert listing.exit_code == 0 and "corll-k1" in listing.output
        out = tmp_path / "run"
        result = runner.invoke(app, ["simulate", "--task", "synthetic", "--model", "tiny", "--algorithm", "corll-k1",
                                     "--rounds", "2", "--eval-every", "1", "--max-new-tokens", "6",
                                     "--batch-size", "2", "--eval-prompts", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [(r["algorithm"], r["round"], r["feedback"]) for r in records] == [
            ("corll-k1", 0, 0), ("corll-k1", 1, 2), ("corll-k1", 2, 4)]
    finally:
        LEARNERS.pop("corll-k1")


def test_every_learner_says_what_it_learns_from_and_unknown_ones_are_named(tmp_path):
    assert all(spec.summary and spec.feedback in ("edits", "reactions", "true reward") for spec in LEARNERS.values())
    result = CliRunner().invoke(app, ["simulate", "--algorithm", "nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown algorithm 'nope'" in result.output


def test_tasks_lists_every_built_in_task_with_a_description():
    from corll.tasks import TASK_NAMES

    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["tasks"])
    assert result.exit_code == 0
    assert all(name in result.output for name in TASK_NAMES)
