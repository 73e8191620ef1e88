"""Simulation runs: learners against simulated users, with evaluation, checkpoints and resume.

A run folder (`run_dir.py`) holds `config.json` (the resolved configuration), `metrics.jsonl`
(one record per evaluation, the same fields for every algorithm), `summary.json`,
`comparisons.json` (each algorithm against the first, paired over the held-out prompts),
`curves.png`, `checkpoints/<algorithm>.pt` (resume state) and `policies/<algorithm>/`
(the final adapter). Every source of randomness is torch's global generator,
seeded per algorithm and saved in checkpoints, so a resumed run replays exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from corll.config import ConfigError, SimulationConfig
from corll.learners import registry
from corll.learners.base import EditLearner, Learner
from corll.learners.corll import pick, scored_candidates
from corll.learners.dpo import StepStats
from corll.learners.edits import told
from corll.learners.rounds import RoundLog
from corll.monitor import degeneration_thresholds, monitor_records
from corll.objectives import distinct_n, looping, repeated_phrase_rate
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.processes import die_with_parent
from corll.run_dir import RunDir, prepare_run_dir
from corll.tasks import Task, load_task
from corll.users import LocalEditor


# --- building blocks ---------------------------------------------------------------------------


def build_policy(config: SimulationConfig) -> Policy:
    lora = None if config.full_finetune else LoraSettings(r=config.lora_r, alpha=config.lora_alpha)
    sampling = SamplingConfig(config.temperature, config.top_k, config.max_new_tokens)
    return load_policy(config.model, lora=lora, init_adapter=config.init_adapter, sampling=sampling,
                       precision=config.precision, seed=config.seed)


def build_learner(name: str, config: SimulationConfig, policy: Policy, task: Task) -> Learner:
    """The learner registered under `name`, built for this run."""
    return registry.build(name, config, policy, task, lambda: build_policy(config))


class PromptStream:
    """Training prompts in a seeded random order, reshuffled each epoch; `cursor` is its whole state."""

    def __init__(self, prompts: list[str], seed: int, cursor: int = 0) -> None:
        self.prompts, self.seed, self.cursor = prompts, seed, cursor

    def __call__(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.cursor, len(self.prompts))
            order = torch.randperm(len(self.prompts), generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(self.prompts[int(order[i])])
            self.cursor += 1
        return out


def evaluate(policy: Policy, task: Task, config: SimulationConfig,
             system_for: Callable[[str], str] | None = None) -> dict[str, float]:
    """Mean R* of the policy's samples on held-out prompts (and per prompt), a Monte-Carlo KL(π‖π_0),
    and the samples' diversity and looping, which the reward-hacking monitor watches.

    Sampling uses its own fixed seed inside a forked RNG, so evaluation neither
    disturbs nor depends on the training randomness: curves compare like with like, and
    every algorithm of a run is evaluated on the same prompts with the same random numbers.
    `system_for` gives each prompt a system message (the oracle agent answers that way).
    """
    prompts = task.test_prompts[: config.eval_prompts]
    asked = prompts if system_for is None else told(prompts, system_for)
    with torch.random.fork_rng():
        torch.manual_seed(10_000 + config.seed)
        if system_for is None:  # log π of the samples comes with them
            samples, logps = policy.sample_scored(prompts, config.eval_samples)
        else:
            samples, logps = policy.sample(asked, config.eval_samples), None
    xs = [x for x in prompts for _ in range(config.eval_samples)]
    ys = [y for s in samples for y in s]
    rewards = task.reward(xs, ys)
    logps = policy.logprobs(xs, ys) if logps is None else logps.flatten()
    kl = (logps - policy.logprobs(xs, ys, reference=True)).mean().item()
    k = config.eval_samples
    degeneration = {"distinct_2": distinct_n(ys), "looping": looping(ys), "repetition": repeated_phrase_rate(ys)}
    extra = task.metrics(xs, ys) if task.metrics is not None else {}
    if config.eval_argmax and system_for is None:
        extra["reward_argmax"] = argmax_reward(policy, task, xs, config)
    return {"reward": statistics.fmean(rewards),
            "reward_sem": statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0,
            # per held-out prompt, in order: two policies evaluated alike compare prompt by prompt
            "reward_by_prompt": [statistics.fmean(rewards[i * k:(i + 1) * k]) for i in range(len(prompts))],
            "kl": kl, **degeneration, **extra}


def argmax_reward(policy: Policy, task: Task, prompts: list[str], config: SimulationConfig) -> float:
    """Mean R* of the argmax of k samples by implicit reward, one per prompt given: the policy decoded as
    CoRLL decodes what it shows its users (the coactive-learning paper's measure), beside plain samples.
    Its own fixed seed, so arms compare on common random numbers."""
    with torch.random.fork_rng():
        torch.manual_seed(20_000 + config.seed)
        samples, implicit = scored_candidates(policy, prompts, config.k, config.beta)
    return statistics.fmean(task.reward(prompts, pick(samples, implicit)))


@dataclass
class FeedbackTally:
    """Feedback statistics accumulated between two evaluations."""

    pairs: int = 0
    mislabeled: int = 0
    edit_distance: float = 0.0
    edits: int = 0
    alpha_hat: float = 0.0
    alpha_count: int = 0
    skipped: int = 0
    loss: float = 0.0
    steps: int = 0
    labelled: int = 0
    loves: int = 0
    cost: int = 0
    shown: int = 0
    unedited: int = 0
    shown_reward: float = 0.0  # R* of the responses users were shown (the paper's own measure)
    shown_rewarded: int = 0
    rank_spearman: float = 0.0  # agreement of the implicit-reward ranking of k samples with R*
    argmax_gain: float = 0.0  # R* of the argmax − mean R* of the k samples (what the argmax buys)
    ranked: int = 0

    def add(self, log: RoundLog, stats: StepStats | None, shown_rewards: list[float],
            candidate_rewards: list[list[float]] = ()) -> None:
        self.shown_reward += sum(shown_rewards)
        self.shown_rewarded += len(shown_rewards)
        for (_, _, implicit), true in zip(log.candidates, candidate_rewards):
            self.rank_spearman += rank_agreement(implicit, true)
            self.argmax_gain += true[max(range(len(implicit)), key=implicit.__getitem__)] - statistics.fmean(true)
            self.ranked += 1
        self.pairs += len(log.pairs)
        self.cost += sum(log.costs)
        self.shown += len(log.costs)
        self.unedited += sum(c == 0 for c in log.costs)
        self.labelled += log.labelled
        self.loves += log.reactions
        self.mislabeled += sum(p.mislabeled for p in log.pairs)
        self.skipped += log.skipped
        for e in log.edits:
            self.edits += 1
            self.edit_distance += e.changed()
            if e.alpha_hat is not None and math.isfinite(e.alpha_hat):
                self.alpha_hat += e.alpha_hat
                self.alpha_count += 1
        if stats is not None:
            self.loss += stats.loss
            self.steps += 1

    def record(self) -> dict[str, float | None]:
        mean = lambda total, n: total / n if n else None  # noqa: E731
        return {"mislabel_rate": mean(self.mislabeled, self.pairs),
                "edit_distance": mean(self.edit_distance, self.edits),
                "alpha_hat": mean(self.alpha_hat, self.alpha_count),
                "skipped": self.skipped, "loss": mean(self.loss, self.steps),
                "love_rate_observed": mean(self.loves, self.labelled),
                "edit_cost": mean(self.cost, self.shown), "cost_sum": self.cost,
                "no_edit_share": mean(self.unedited, self.shown),
                "shown_reward": mean(self.shown_reward, self.shown_rewarded),
                "rank_spearman": mean(self.rank_spearman, self.ranked),
                "argmax_gain": mean(self.argmax_gain, self.ranked)}


def candidate_rewards(task: Task, log: RoundLog) -> list[list[float]]:
    """R* of each prompt's k candidates (only when the learner logged them)."""
    if not log.candidates:
        return []
    k = len(log.candidates[0][1])
    flat = task.reward([x for x, ys, _ in log.candidates for _ in ys], [y for _, ys, _ in log.candidates for y in ys])
    return [flat[i * k:(i + 1) * k] for i in range(len(log.candidates))]


TIE = 1e-3  # implicit rewards closer than this are ties: float rounding, not a ranking


def rank_agreement(implicit: Sequence[float], true: Sequence[float]) -> float:
    """Spearman correlation of two scorings of the same samples; 0 where either is constant. A fresh
    adapter's implicit rewards are 0 up to float rounding (log π read off sampling vs log π_0 from a
    forward pass), so its ranking carries no information and counts as none."""
    from scipy.stats import spearmanr

    if max(implicit) - min(implicit) < TIE or len(set(true)) < 2:
        return 0.0
    return float(spearmanr(implicit, true).statistic)


# algorithm, rounds done, the latest evaluation record (None: none new), and what it is doing now
ProgressFn = Callable[[str, int, dict | None, str], None]


def shown_rewards(task: Task, log: RoundLog) -> list[float]:
    """R* of the responses shown this round: the labeller's own values where it computed them."""
    if log.shown_rewards is not None:
        return log.shown_rewards
    return task.reward(*map(list, zip(*log.shown))) if log.shown else []


def offline_phase(learner: EditLearner, task: Task, policy: Policy, stream: PromptStream, n: int,
                  batch_size: int) -> int:
    """The offline phase of learning from user edits: π_0 drafts for the next n prompts, edited by the users behind the log
    (`task.offline_edit`: in the shift setting, users with other preferences than the online ones); the
    learner learns from them batch by batch as it would online. Returns how many drafts were edited."""
    if task.local_edit is None:
        raise ConfigError(f"--offline-edits needs a task with a local editor, not {task.name!r}")
    editor = LocalEditor(dataclasses.replace(task, local_edit=task.offline_edit or task.local_edit))
    edited = 0
    for start in range(0, n, batch_size):
        prompts = stream(min(batch_size, n - start))
        drafts = [s[0] for s in policy.sample(prompts, 1, use_reference=True)]
        edits = editor.edit(prompts, drafts)
        edited += sum(e is not None for e in edits)
        learner.learn(prompts, drafts, edits)
    return edited


def run_algorithm(name: str, config: SimulationConfig, run: RunDir, progress: ProgressFn) -> dict:
    """Train one algorithm from its seed (or last checkpoint) to `config.rounds`; return its summary."""
    torch.manual_seed(config.seed)
    policy = build_policy(config)
    task = load_task(config.task, policy)
    learner = build_learner(name, config, policy, task)
    stream = PromptStream(task.train_prompts, config.seed)
    state = {"round": 0, "feedback": 0, "queries": 0, "interval": FeedbackTally(), "wall_time": 0.0, "eval_time": 0.0,
             "cost_total": 0,
             "kept_total": 0, "shown_total": 0, "offline_edited": 0, "cost_by_source": {}, "shown_by_source": {}}

    checkpoint = run.checkpoint(name)
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False, map_location="cpu")
        policy.load_trainable_state(saved["trainable"])
        learner.load_state_dict(saved["learner"])
        torch.set_rng_state(saved["rng"])
        if "cuda_rng" in saved and torch.cuda.is_available():  # sampling on a GPU draws from its generator
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        stream.cursor = saved["cursor"]
        state = {**state, **saved["state"], "interval": FeedbackTally(**saved["state"]["interval"])}
    run.keep_metrics(name, state["round"] if checkpoint.exists() else -1)
    if not checkpoint.exists() and config.offline_edits:
        started = time.perf_counter()
        state["offline_edited"] = offline_phase(learner, task, policy, stream, config.offline_edits,
                                                config.batch_size)
        state["wall_time"] += time.perf_counter() - started

    def record_eval() -> dict:
        started = time.perf_counter()
        shown = learner.shown()
        measured = evaluate(shown.policy, task, config, shown.system_for)
        state["eval_time"] += time.perf_counter() - started
        # wall_time: training rounds; eval_time: evaluations; both cumulative, so the last record is a run's cost
        record = {"algorithm": name, "seed": config.seed, "round": state["round"], "feedback": state["feedback"],
                  "queries": state["queries"], **measured, **state["interval"].record(),
                  "cumulative_cost": state["cost_total"], "wall_time": round(state["wall_time"], 2),
                  "eval_time": round(state["eval_time"], 2)}
        if task.source_of is not None:  # per source (PRELUDE: per group of users): cost and responses shown
            record |= {"cost_by_source": dict(state["cost_by_source"]),
                       "shown_by_source": dict(state["shown_by_source"])}
        run.append_metric(record)
        state["interval"] = FeedbackTally()
        return record

    evaluating = (f"evaluating on {config.eval_prompts} held-out prompts × {config.eval_samples} "
                  f"sample{'s' if config.eval_samples > 1 else ''}")
    if state["round"] == 0:
        progress(name, 0, None, evaluating)
    progress(name, state["round"], record_eval() if state["round"] == 0 else None, "")
    while state["round"] < config.rounds:
        progress(name, state["round"], None, f"round {state['round'] + 1}: drafting, feedback, update")
        started = time.perf_counter()
        log, stats = learner.round(stream)
        state["round"] += 1
        state["feedback"] += log.feedback
        state["queries"] += log.queries
        state["interval"].add(log, stats, shown_rewards(task, log),
                              candidate_rewards(task, log))
        state["cost_total"] += sum(log.costs)
        state["kept_total"] += sum(c == 0 for c in log.costs)
        state["shown_total"] += len(log.costs)
        if task.source_of is not None:
            for (x, _), cost in zip(log.shown, log.costs):
                source = task.source_of(x)
                state["cost_by_source"][source] = state["cost_by_source"].get(source, 0) + cost
                state["shown_by_source"][source] = state["shown_by_source"].get(source, 0) + 1
        state["wall_time"] += time.perf_counter() - started
        record = None  # only a new evaluation is reported: a progress log then says each result once
        if state["round"] % config.eval_every == 0 or state["round"] == config.rounds:
            progress(name, state["round"], None, evaluating)
            record = record_eval()
        if state["round"] % config.checkpoint_every == 0 or state["round"] == config.rounds:
            run.save_checkpoint(name, {
                "trainable": policy.trainable_state(), "learner": learner.state_dict(),
                "rng": torch.get_rng_state(), "cursor": stream.cursor,
                **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                "state": {**state, "interval": dataclasses.asdict(state["interval"])},
            })
        progress(name, state["round"], record, "")
    if hasattr(policy.model, "save_pretrained") and not config.full_finetune:
        learner.shown().policy.model.save_pretrained(run.path / "policies" / name)
    ours = [r for r in run.read_metrics() if r["algorithm"] == name]
    summary = {"rounds": state["round"], "feedback": state["feedback"], "queries": state["queries"],
               "reward_initial": ours[0]["reward"], "reward_final": ours[-1]["reward"], "kl_final": ours[-1]["kl"],
               "wall_time": round(state["wall_time"], 1), "eval_time": round(state["eval_time"], 1)}
    if config.offline_edits:
        summary |= {"offline_edits": config.offline_edits, "offline_edited": state["offline_edited"],
                    "cumulative_cost": state["cost_total"], "episodes": state["shown_total"],
                    # CoRLL asks until it has N preferences per step, so it shows more responses per round
                    # than one-batch agents: compare agents per episode (shown response)
                    "cost_per_episode": state["cost_total"] / max(1, state["shown_total"]),
                    "no_edit_share": state["kept_total"] / max(1, state["shown_total"])}
    summary |= learner.summary()
    # Watch every run for reward hacking: reaction tasks with the objectives' rules, every task for
    # degeneration (a win bought with loops, collapsed diversity or a policy far from π_0)
    summary["monitor_flags"] = monitor_records(ours, None if task.objectives is not None else degeneration_thresholds())
    return summary


def run_simulation(config: SimulationConfig, out: Path, *, resume: bool = False,
                   progress: ProgressFn = lambda *_: None, jobs: int = 1) -> dict:
    """Run every algorithm of `config` into `out`; returns the summary (also written to summary.json).

    With `jobs` > 1 the algorithms train in that many processes at once, each with its share of
    the CPUs as threads: on a small CPU, two one-thread processes finish more work than one
    two-thread process (decoding does not scale with threads). The thread count is part of what a
    run replays from (it changes floating-point sums), so `jobs` changes results in the last digits.
    """
    registry.check(config)
    for name in config.algorithms:  # before any model loads
        if config.offline_edits and name not in registry.EDIT_ALGORITHMS:
            raise ConfigError(f"--offline-edits needs an edit learner ({', '.join(registry.EDIT_ALGORITHMS)}), "
                              f"not {name!r}")
    jobs = min(jobs, len(config.algorithms))
    run, config = prepare_run_dir(out, config, resume, worker_threads(jobs) if jobs > 1 else torch.get_num_threads())
    summary_file = run.path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    todo = [name for name in config.algorithms if summary.get(name, {}).get("rounds") != config.rounds]
    for name in config.algorithms:
        if name not in todo:
            progress(name, config.rounds, None, "")
    for name, result in run_algorithms(todo, config, run, progress, jobs):
        summary[name] = result
        run.write_json(summary_file, summary)
    from corll.report import comparison_rows, plot_curves

    if compared := comparison_rows([run.path]):
        run.write_json(run.path / "comparisons.json", compared)
    plot_curves([run.path], run.path / "curves.png")
    return summary



def run_algorithms(names: list[str], config: SimulationConfig, run: RunDir, progress: ProgressFn,
                   jobs: int) -> Iterator[tuple[str, dict]]:
    """(name, summary) as each algorithm finishes: in this process, or in `jobs` worker processes
    whose progress is relayed here."""
    jobs = min(jobs, len(names))
    if jobs <= 1:
        for name in names:
            yield name, run_algorithm(name, config, run, progress)
        return
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue()
        relay = threading.Thread(target=_relay, args=(queue, progress), daemon=True)
        relay.start()
        threads = worker_threads(jobs)
        try:
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_run_in_worker, name, config, run.path, queue, threads): name
                           for name in names}
                for future in as_completed(futures):
                    yield futures[future], future.result()
        finally:
            queue.put(None)
            relay.join()


def _relay(queue, progress: ProgressFn) -> None:
    while (message := queue.get()) is not None:
        progress(*message)


def worker_threads(jobs: int) -> int:
    """Each worker's fixed share of the CPUs. Fixed, not handed over when a worker finishes: the thread
    count changes floating-point sums, and a run must replay exactly from its seed."""
    from corll.hardware import available_cpus

    return max(1, available_cpus() // jobs)


def _run_in_worker(name: str, config: SimulationConfig, path: Path, queue, threads: int) -> dict:
    """One algorithm in a worker process (it inherits the parent's OpenMP wait policy)."""
    from corll.models import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    return run_algorithm(name, config, RunDir(path), lambda *message: queue.put(message))
