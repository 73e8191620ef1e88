"""`corll reward-model train|eval` from simulation and from the store; the assistant-reactions task builds."""

from typer.testing import CliRunner

from corll.cli import app
from corll.reward_model import RewardModel
from corll.store import Principal, Store

runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(output.split())


def test_train_and_eval_on_simulated_reactions(tmp_path):
    out = tmp_path / "rm.pt"
    trained = runner.invoke(app, ["reward-model", "train", "--task", "synthetic-reactions", "--model", "tiny",
                                  "--per-prompt", "4", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    assert RewardModel.load(out) is not None
    evaluated = runner.invoke(app, ["reward-model", "eval", str(out), "--task", "synthetic-reactions", "--model",
                                    "tiny", "--per-prompt", "16", "--plot", str(tmp_path / "rel.png")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "AUROC" in evaluated.output and (tmp_path / "rel.png").stat().st_size > 0


def test_train_from_the_store_and_refusals(tmp_path):
    db = f"sqlite:///{tmp_path / 'log.db'}"
    store = Store(db)
    who = Principal("acme", "u")
    for i in range(30):
        good = i % 3 == 0
        cid = store.record_interaction(who, [{"role": "user", "content": f"Name a cat {i}."}],
                                       "Mochi, a sweet name!" if good else "No.", policy_version_id=None,
                                       sampling={}, response_logprob=None)
        if good:
            store.add_feedback(who, cid, reaction="love")
    out = tmp_path / "rm.pt"
    result = runner.invoke(app, ["reward-model", "train", "--db", db, "--out", str(out)])
    assert result.exit_code == 0 and "30 responses (10 loves)" in flat(result.output), result.output
    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    empty.record_interaction(who, [{"role": "user", "content": "x"}], "y", policy_version_id=None, sampling={},
                             response_logprob=None)
    refused = runner.invoke(app, ["reward-model", "train", "--db", empty.url, "--out", str(tmp_path / "x.pt")])
    assert refused.exit_code == 2 and "both reactions and silences" in flat(refused.output)
    assert not (tmp_path / "x.pt").exists()
    (tmp_path / "junk.pt").write_text("junk")
    bad = runner.invoke(app, ["reward-model", "eval", str(tmp_path / "junk.pt"), "--db", db])
    assert bad.exit_code == 2 and "not a corll reward model" in flat(bad.output)
    wrong = runner.invoke(app, ["reward-model", "train", "--task", "synthetic", "--model", "tiny",
                                "--out", str(tmp_path / "y.pt")])
    assert wrong.exit_code == 2 and "has no reaction users" in flat(wrong.output)


def test_assistant_reactions_task_builds_and_scores_on_the_tiny_model(tmp_path, monkeypatch, policy):
    monkeypatch.setenv("CORLL_CACHE", str(tmp_path / "cache"))
    from corll.tasks import load_task

    task = load_task("assistant-reactions", policy)
    xs = task.test_prompts[:3]
    good = ["Here is how: " + x for x in xs]
    assert all(0 < p < 1 for p in task.reward(xs, good))
    assert set(task.objectives) == {"love", "help", "safe"}
    assert {"help", "safe", "love_model", "distinct_2", "repetition"} <= set(task.metrics(xs, good))
    assert list((tmp_path / "cache" / "reward-models").glob("*.pt"))  # the P[Love] model was trained and cached
