import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import corll.learners.dpo as dpo_module
from corll.learners import NonFiniteLossError
from corll.simulate import RunDir, run_simulation
from tests.conftest import interrupt_at, tiny_config, without_time


def rewards(out, algorithm):
    return [r["reward"] for r in RunDir(out).read_metrics() if r["algorithm"] == algorithm]


@pytest.mark.parametrize(("algorithm", "user"), [("corll", "expert"), ("corll", "local"), ("dueling", "local")])
def test_learning_raises_held_out_true_reward(tmp_path, algorithm, user):
    summary = run_simulation(tiny_config(algorithms=[algorithm], user=user, rounds=20), tmp_path / "run")
    curve = rewards(tmp_path / "run", algorithm)
    assert summary[algorithm]["feedback"] == 20 * 8
    # The untrained tiny model writes ~22% lowercase characters; learning must add at least 5 points.
    assert curve[-1] > curve[0] + 0.05, curve


def test_same_seed_gives_same_metrics_and_different_seed_does_not(tmp_path):
    short = dict(rounds=4, eval_every=2, checkpoint_every=2)  # long enough to train between evaluations
    run_simulation(tiny_config(**short), tmp_path / "a")
    run_simulation(tiny_config(**short), tmp_path / "b")
    run_simulation(tiny_config(seed=1, **short), tmp_path / "c")
    a, b, c = (without_time(RunDir(tmp_path / n).read_metrics()) for n in "abc")
    assert a == b
    assert [r["reward"] for r in a] != [r["reward"] for r in c]


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    config = tiny_config(algorithms=["corll"], rounds=10)
    run_simulation(config, tmp_path / "full")

    interrupt_at(lambda progress: run_simulation(config, tmp_path / "cut", progress=progress), "corll", 7)
    assert torch.load(RunDir(tmp_path / "cut").checkpoint("corll"), weights_only=False)["state"]["round"] == 5
    seen = []
    run_simulation(config, tmp_path / "cut", resume=True, progress=lambda n, d, r, doing: seen.append(d))
    assert seen[0] == 5  # continued from the checkpoint, not from scratch
    full, cut = (without_time(RunDir(tmp_path / n).read_metrics()) for n in ("full", "cut"))
    assert cut == full
    # A finished run is not re-run.
    seen.clear()
    run_simulation(config, tmp_path / "cut", resume=True, progress=lambda n, d, r, doing: seen.append(d))
    assert seen == [10]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss, real_step = dpo_module.dpo_loss, dpo_module.DPOLearner.step
    steps = {"n": 0}

    def counted_step(self, pairs):
        steps["n"] += 1
        return real_step(self, pairs)

    def poisoned(*args, **kwargs):  # from the 7th optimizer step on, the loss is NaN
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if steps["n"] >= 7 else loss

    monkeypatch.setattr(dpo_module.DPOLearner, "step", counted_step)
    monkeypatch.setattr(dpo_module, "dpo_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="nan"):
        run_simulation(tiny_config(algorithms=["corll"], rounds=10), out)
    saved = torch.load(RunDir(out).checkpoint("corll"), weights_only=False)
    assert saved["state"]["round"] == 5
    assert all(torch.isfinite(v).all() for v in saved["trainable"].values())
    assert [r["round"] for r in RunDir(out).read_metrics()] == [0, 5]
    assert json.loads((out / "config.json").read_text())["rounds"] == 10


def test_algorithms_trained_in_parallel_processes_give_the_same_results(tmp_path):
    """--jobs 2: each algorithm in its own process, progress relayed, one metrics file, same numbers."""
    from corll.simulate import worker_threads

    config = tiny_config(algorithms=["corll", "dueling"], rounds=4, eval_every=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(2))  # the same thread count as each worker: the same float sums
    try:
        run_simulation(config, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    seen = []
    run_simulation(config, tmp_path / "two", jobs=2, progress=lambda name, done, record, doing: seen.append((name, done)))
    key = lambda r: (r["algorithm"], r["round"])  # noqa: E731 - parallel runs interleave their records
    one, two = (sorted(without_time(RunDir(tmp_path / n).read_metrics()), key=key) for n in ("one", "two"))
    assert [key(r) for r in two] == [(a, r) for a in ("corll", "dueling") for r in (0, 2, 4)]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for field in a:
            assert a[field] == b[field], field
    assert {("corll", 4), ("dueling", 4)} <= set(seen)  # the workers' progress reached this process
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert set(summary) == {"corll", "dueling"}
    # config.json records the threads each algorithm trained with, which the numbers depend on
    assert json.loads((tmp_path / "two" / "config.json").read_text())["hardware"]["threads"] == worker_threads(2)


def test_rank_agreement_is_a_spearman_correlation_and_zero_for_a_constant_ranking():
    from corll.simulate import rank_agreement

    assert rank_agreement([1.0, 2.0, 3.0], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert rank_agreement([0.1, 0.5, 0.3, 0.2], [1.0, 4.0, 3.0, 2.0]) == pytest.approx(1.0)
    assert rank_agreement([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) == 0.0  # a fresh adapter ranks nothing
    assert rank_agreement([1e-5, -2e-5, 0.0], [1.0, 2.0, 3.0]) == 0.0  # ... up to float rounding


def test_corll_logs_how_its_argmax_ranking_agrees_with_the_true_reward(tmp_path):
    run_simulation(tiny_config(algorithms=["corll"], user="expert", rounds=8, k=3, eval_every=1,
                               rank_agreement=True), tmp_path / "run")
    records = [r for r in RunDir(tmp_path / "run").read_metrics() if r["round"] > 0]
    # Round 1 ranks with a fresh adapter: every implicit reward is 0, the argmax is a random pick.
    assert records[0]["rank_spearman"] == 0.0
    assert all(-1.0 <= r["rank_spearman"] <= 1.0 for r in records)
    assert any(r["rank_spearman"] != 0.0 for r in records[1:])  # once trained, the ranking says something
    # Learning on the lowercase reward makes the argmax pick above-average samples on average.
    assert sum(r["argmax_gain"] for r in records[4:]) > 0


def test_progress_says_what_a_run_is_doing_between_records(tmp_path):
    heard = []
    summary = run_simulation(tiny_config(algorithms=["corll"], rounds=2, eval_every=2, checkpoint_every=2),
                             tmp_path / "run",
                             progress=lambda name, done, record, doing: heard.append((done, record is not None, doing)))
    evaluating = "evaluating on 16 held-out prompts × 2 samples"
    assert heard == [(0, False, evaluating), (0, True, ""), (0, False, "round 1: drafting, feedback, update"),
                     (1, False, ""), (1, False, "round 2: drafting, feedback, update"), (2, False, evaluating),
                     (2, True, "")]
    # each record carries the time spent evaluating so far, the summary the run's total
    timings = [r["eval_time"] for r in RunDir(tmp_path / "run").read_metrics()]
    assert len(timings) == 2 and 0 < timings[0] < timings[1]
    assert summary["corll"]["eval_time"] == pytest.approx(timings[-1], abs=0.06)


def test_dueling_reports_the_reward_of_what_it_showed_without_asking_the_task_again(tmp_path):
    from corll.learners.rounds import RoundLog
    from corll.simulate import shown_rewards
    from corll.tasks import Task

    calls = []
    task = Task("t", [], [], lambda xs, ys: calls.append(len(ys)) or [float(len(y)) for y in ys])
    assert shown_rewards(task, RoundLog(shown=[("x", "ab"), ("x", "c")], shown_rewards=[2.0, 1.0])) == [2.0, 1.0]
    assert calls == []  # the labeller's values are used
    assert shown_rewards(task, RoundLog(shown=[("x", "ab"), ("x", "c")])) == [2.0, 1.0] and calls == [2]
    # and a dueling run's shown_reward equals R* of the pairs it showed, as before
    run_simulation(tiny_config(algorithms=["dueling"], rounds=2, eval_every=2, checkpoint_every=2), tmp_path / "d")
    record = RunDir(tmp_path / "d").read_metrics()[-1]
    assert record["shown_reward"] is not None and 0.0 <= record["shown_reward"] <= 1.0


def test_algorithms_are_compared_prompt_by_prompt_on_the_same_held_out_samples(tmp_path):
    config = tiny_config(algorithms=["corll", "dueling"], rounds=2, eval_every=2, eval_samples=3)
    summary = run_simulation(config, tmp_path / "run")
    finals = {r["algorithm"]: r for r in RunDir(tmp_path / "run").read_metrics() if r["round"] == 2}
    for record in finals.values():
        assert len(record["reward_by_prompt"]) == config.eval_prompts
        assert sum(record["reward_by_prompt"]) / config.eval_prompts == pytest.approx(record["reward"])
    [compared] = json.loads((tmp_path / "run" / "comparisons.json").read_text())
    differences = [a - b for a, b in zip(finals["corll"]["reward_by_prompt"], finals["dueling"]["reward_by_prompt"])]
    assert compared["label"] == "corll − dueling" and compared["unit"] == "held-out prompts"
    assert compared["n"] == config.eval_prompts
    assert compared["difference"] == pytest.approx(sum(differences) / len(differences))
    assert compared["low"] < compared["difference"] < compared["high"]
    # every run is watched for reward hacking, whatever its task
    for name in ("corll", "dueling"):
        assert isinstance(summary[name]["monitor_flags"], list)
        assert {"distinct_2", "looping", "repetition"} <= finals[name].keys()


def test_the_argmax_measure_scores_the_sample_the_implicit_reward_ranks_first():
    """R* of the argmax of k samples: the sample whose β·(log π − log π₀) is highest, per prompt, not the best in
    R* (the policy cannot see R*) and not the first drawn."""
    from types import SimpleNamespace

    from corll.config import SimulationConfig
    from corll.simulate import argmax_reward

    samples = {"a": ["short", "a longer one", "mid one"], "b": ["xx", "yyyyyy", "zzzz"]}
    log_pi = {"short": -1.0, "a longer one": -3.0, "mid one": -2.0, "xx": -5.0, "yyyyyy": -6.0, "zzzz": -1.0}

    class Stub:
        def sample_scored(self, prompts, k):
            assert k == 3
            return [samples[x] for x in prompts], torch.tensor([[log_pi[y] for y in samples[x]] for x in prompts])

        def logprobs(self, prompts, responses, reference=False):
            assert reference
            return torch.full((len(responses),), -2.0)

    task = SimpleNamespace(reward=lambda xs, ys: [float(len(y)) for y in ys])
    config = SimulationConfig(k=3, beta=0.1)
    assert argmax_reward(Stub(), task, ["a", "b"], config) == (len("short") + len("zzzz")) / 2


def test_a_run_that_asks_for_it_logs_the_argmax_measure_beside_plain_samples(tmp_path):
    run_simulation(tiny_config(algorithms=["corll"], rounds=2, eval_every=2, k=3, eval_argmax=True), tmp_path / "run")
    records = RunDir(tmp_path / "run").read_metrics()
    assert len(records) == 2 and all(isinstance(r["reward_argmax"], float) for r in records)
    assert records[0]["reward_argmax"] != records[0]["reward"]  # other responses: the argmax of 3, not samples


def test_a_worker_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """A parent killed outright runs no clean-up: without the request to the kernel its busy worker would go
    on for minutes, writing into the run folder a rerun resumes."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        from corll.processes import die_with_parent
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                                   initargs=(os.getpid(),))
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 300)  # busy, as a worker training an algorithm is
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
