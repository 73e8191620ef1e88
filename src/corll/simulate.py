"""Simulation runs: learners against simulated users, with evaluation, checkpoints and resume.

A run folder holds `config.json` (the resolved configuration), `metrics.jsonl`
(one record per evaluation, the same fields for every algorithm), `summary.json`,
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from corll.feedback import word_edit_distance
from corll.learners import (
    ALGORITHMS,
    EDIT_ALGORITHMS,
    REACTION_ALGORITHMS,
    RLOO,
    RLUF,
    CoRLL,
    DPOConfig,
    DPOLearner,
    Dueling,
    KTOConfig,
    KTOFromReactions,
    KTOLearner,
    RoundLog,
    parse_weights,
)
from corll.learners.edits import (CostAgent, EarlyEnsemble, FloorAgent, LateEnsemble, OracleAgent, PreferenceAgent,
                                  SFTAgent, SFTLearner, told)
from corll.learners.rluf import weighted_reward
from corll.learners.dpo import StepStats
from corll.losses import DPO_LOSS_TYPES
from corll.monitor import monitor_records
from corll.policy import PRECISIONS, LoraSettings, Policy, SamplingConfig, load_policy, resolve_model
from corll.tasks import Task, load_task, resolve_task
from corll.users import EDITORS, DuelingLabeller, ExpertEditor, LLMEditor, LocalEditor


class ConfigError(ValueError):
    """An impossible setting, named by its option."""


@dataclass
class SimulationConfig:
    """Everything a run depends on. Paper values (seed 002) are noted where ours differ."""

    task: str = "positive-review"
    model: str = "smollm2-135m-instruct"
    algorithms: list[str] = field(default_factory=lambda: ["corll", "dueling"])
    rounds: int = 30
    seed: int = 0
    k: int = 2  # argmax samples; paper IMDB 9, 7B runs 1
    batch_size: int = 8  # N preferences per DPO step; paper 64
    user: str = "local"  # local: revises the draft (small edits); expert: the paper's expert-based editor; llm: prompted π_0
    l: int = 4  # expert candidates per edit; paper IMDB 25, 7B runs 5
    alpha: float | None = None  # None: minimal improvement; paper ablation 0.6
    noise_free: bool = False
    epsilon: float = 0.0
    weights: str = "love=1,help=0.5,safe=0.5"  # RLUF objectives (reaction tasks); k is its n samples per prompt
    beta: float = 0.1
    lr: float = 2e-4  # paper 1e-5 full fine-tuning; LoRA on 135M needs more (5e-4 over-optimizes in 30 rounds)
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    warmup_rounds: int = 0
    temperature: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 32
    precision: str = "bf16"  # bf16 autocast: ~2x faster training on CPUs with native bf16
    full_finetune: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    init_adapter: str | None = None
    eval_every: int = 5
    eval_prompts: int = 16
    eval_samples: int = 2
    checkpoint_every: int = 5
    offline_edits: int = 0  # seed 003's protocol: learn from this many logged edits of π_0's drafts first

    def validate(self) -> None:
        """Reject impossible settings before any model loads, naming the option."""
        checks = [
            (self.rounds >= 1, "--rounds must be >= 1"),
            (self.k >= 1, "--k must be >= 1"),
            (self.batch_size >= 1, "--batch-size (N) must be >= 1"),
            (self.l >= 1, "--l must be >= 1"),
            (self.beta > 0, "--beta must be > 0"),
            (self.lr > 0, "--lr must be > 0"),
            (0.0 <= self.epsilon <= 1.0, "--epsilon must be in [0, 1]"),
            (self.alpha is None or 0.0 < self.alpha <= 1.0, "--alpha must be in (0, 1]"),
            (0.0 <= self.label_smoothing < 0.5, "--label-smoothing must be in [0, 0.5)"),
            (self.loss_type in DPO_LOSS_TYPES, f"--loss must be one of {', '.join(DPO_LOSS_TYPES)}"),
            (self.temperature > 0, "--temperature must be > 0"),
            (self.top_k >= 1, "--top-k must be >= 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
            (self.eval_every >= 1, "--eval-every must be >= 1"),
            (self.eval_prompts >= 1, "--eval-prompts must be >= 1"),
            (self.eval_samples >= 1, "--eval-samples must be >= 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be >= 1"),
            (self.warmup_rounds >= 0, "--warmup-rounds must be >= 0"),
            (self.offline_edits >= 0, "--offline-edits must be >= 0"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (bool(self.algorithms), "--algorithm: give at least one"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.user not in EDITORS:
            raise ConfigError(f"unknown user {self.user!r}: use one of {', '.join(EDITORS)}")
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise ConfigError(f"unknown algorithm {name!r}: use one of {', '.join(ALGORITHMS)}")
        if "rluf" in self.algorithms:
            try:
                parse_weights(self.weights)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError("--algorithm: each algorithm may be given once")
        if self.full_finetune and self.init_adapter:
            raise ConfigError("--init-adapter needs LoRA; it cannot be combined with --full-finetune")
        try:
            resolve_model(self.model)
            resolve_task(self.task)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


# --- building blocks ---------------------------------------------------------------------------


def build_policy(config: SimulationConfig) -> Policy:
    lora = None if config.full_finetune else LoraSettings(r=config.lora_r, alpha=config.lora_alpha)
    sampling = SamplingConfig(config.temperature, config.top_k, config.max_new_tokens)
    return load_policy(config.model, lora=lora, init_adapter=config.init_adapter, sampling=sampling,
                       precision=config.precision, seed=config.seed)


Algorithm = (CoRLL | Dueling | RLUF | RLOO | KTOFromReactions | SFTAgent | CostAgent | EarlyEnsemble | LateEnsemble
             | FloorAgent | OracleAgent)


def objective_reward(task: Task, config: SimulationConfig):
    """Σ w·objective for the RLUF learners, from --weights."""
    try:
        return weighted_reward(task.objectives, parse_weights(config.weights))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_algorithm(name: str, config: SimulationConfig, policy: Policy, task: Task) -> Algorithm:
    if name in REACTION_ALGORITHMS and (task.react is None or task.objectives is None):
        raise ConfigError(f"--algorithm {name} needs a reaction task (assistant-reactions, synthetic-reactions), "
                          f"not {task.name!r}")
    if name == "rloo":
        return RLOO(policy, objective_reward(task, config), n=max(config.k, 2), batch_size=config.batch_size,
                    lr=config.lr, beta=config.beta)
    if name == "kto":
        learner = KTOLearner(policy, KTOConfig(beta=config.beta, lr=config.lr))
        return KTOFromReactions(policy, learner, task.react, batch_size=config.batch_size)
    learner = DPOLearner(policy, DPOConfig(beta=config.beta, lr=config.lr, loss_type=config.loss_type,
                                           label_smoothing=config.label_smoothing,
                                           warmup_steps=config.warmup_rounds))
    if name in EDIT_ALGORITHMS:
        if config.user == "local" and task.local_edit is None:
            raise ConfigError(f"task {task.name!r} defines no local edit: use --user expert")
        editor = build_editor(config, policy, task)
        return build_edit_learner(name, config, policy, learner, editor)
    if name == "rluf":
        reward = objective_reward(task, config)
        return RLUF(policy, learner, reward, n=max(config.k, 2), batch_size=config.batch_size)
    return Dueling(policy, learner, DuelingLabeller(task), batch_size=config.batch_size)


def build_editor(config: SimulationConfig, policy: Policy, task: Task):
    if config.user == "local":
        return LocalEditor(task)
    if config.user == "llm":
        try:
            return LLMEditor(task, policy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return ExpertEditor(task, l=config.l, alpha=config.alpha, noise_free=config.noise_free, epsilon=config.epsilon)


LATE_MEMBERS = ("preference", "sft", "cost")  # the late ensemble's learners, in the bandit's arm order


def build_edit_learner(name: str, config: SimulationConfig, policy: Policy, learner: DPOLearner,
                       editor) -> Algorithm:
    """CoRLL and the seed-003 learners over the same editor: sft, cost, ensemble-early, ensemble-late."""
    if name == "corll":
        return CoRLL(policy, learner, editor, k=config.k, batch_size=config.batch_size)
    if name == "floor":
        return FloorAgent(policy, editor, batch_size=config.batch_size)
    if name == "oracle":
        if editor.task.describe_user is None:
            raise ConfigError(f"--algorithm oracle needs a task that describes its users' preferences "
                              f"(prelude-summarize, prelude-email, their -shift variants), not {editor.task.name!r}")
        return OracleAgent(policy, editor, batch_size=config.batch_size, describe_user=editor.task.describe_user)
    if name == "sft":
        return SFTAgent(policy, SFTLearner(policy, config.lr), editor, batch_size=config.batch_size)
    if name == "cost":
        return CostAgent(policy, learner, editor, k=max(config.k, 2), batch_size=config.batch_size)
    if name == "ensemble-early":
        return EarlyEnsemble(policy, learner, editor, k=config.k, batch_size=config.batch_size)
    # ensemble-late: three learners on separate adapters over the same base weights' copies
    members = []
    for member in LATE_MEMBERS:
        own = policy if member == "preference" else build_policy(config)
        dpo = learner if member == "preference" else DPOLearner(own, learner.config)
        members.append(PreferenceAgent(own, dpo, k=config.k) if member == "preference" else
                       SFTAgent(own, SFTLearner(own, config.lr), None) if member == "sft" else
                       CostAgent(own, dpo, None, k=max(config.k, 2)))
    return LateEnsemble(members, editor, batch_size=config.batch_size)


def learner_of(algorithm: Algorithm):
    """What holds an algorithm's training state beyond the policy's weights (optimizers, models, bandits)."""
    return algorithm if hasattr(algorithm, "state_dict") else algorithm.learner


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
    """Mean R* of the policy's samples on held-out prompts, and a Monte-Carlo KL(π‖π_0).

    Sampling uses its own fixed seed inside a forked RNG, so evaluation neither
    disturbs nor depends on the training randomness: curves compare like with like.
    `system_for` gives each prompt a system message (the oracle agent answers that way).
    """
    prompts = task.test_prompts[: config.eval_prompts]
    asked = prompts if system_for is None else told(prompts, system_for)
    with torch.random.fork_rng():
        torch.manual_seed(10_000 + config.seed)
        samples = policy.sample(asked, config.eval_samples)
    xs = [x for x in prompts for _ in range(config.eval_samples)]
    ys = [y for s in samples for y in s]
    rewards = task.reward(xs, ys)
    kl = (policy.logprobs(xs, ys) - policy.logprobs(xs, ys, reference=True)).mean().item()
    extra = task.metrics(xs, ys) if task.metrics is not None else {}
    return {"reward": statistics.fmean(rewards),
            "reward_sem": statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0,
            "kl": kl, **extra}


@dataclass
class Interval:
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

    def add(self, log: RoundLog, stats: StepStats | None) -> None:
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
            self.edit_distance += word_edit_distance(e.draft, e.text)
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
                "no_edit_share": mean(self.unedited, self.shown)}


# --- run folder ----------------------------------------------------------------------------------


class RunDir:
    """The files of one run; every write is atomic (temporary file, then rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def checkpoint(self, algorithm: str) -> Path:
        return self.path / "checkpoints" / f"{algorithm}.pt"

    def write_text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def write_json(self, path: Path, value) -> None:
        self.write_text(path, json.dumps(value, indent=2) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def write_metrics(self, records: list[dict]) -> None:
        self.write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def append_metric(self, record: dict) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_checkpoint(self, algorithm: str, state: dict) -> None:
        path = self.checkpoint(algorithm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)


class RunExistsError(FileExistsError):
    """The output folder already holds a run and --resume was not given."""


def prepare_run_dir(out: Path, config: SimulationConfig, resume: bool) -> tuple[RunDir, SimulationConfig]:
    """Create the run folder, or reopen it to resume with the configuration it was started with."""
    run = RunDir(out)
    if run.config_file.exists():
        if not resume:
            raise RunExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        saved = SimulationConfig(**json.loads(run.config_file.read_text()))
        saved.validate()
        return run, saved
    out.mkdir(parents=True, exist_ok=True)
    run.write_json(run.config_file, dataclasses.asdict(config))
    return run, config


ProgressFn = Callable[[str, int, dict | None], None]


def offline_phase(algorithm: Algorithm, task: Task, policy: Policy, stream: PromptStream, n: int,
                  batch_size: int) -> int:
    """Seed 003's offline phase: π_0 drafts for the next n prompts, edited by the users behind the log
    (`task.offline_edit`: in the shift setting, users with other preferences than the online ones); the
    agent learns from them batch by batch as it would online. Returns how many drafts were edited."""
    if not hasattr(algorithm, "learn") or task.local_edit is None:
        raise ConfigError(f"--offline-edits needs an edit learner ({', '.join(EDIT_ALGORITHMS)}) and a task "
                          f"with a local editor, not {task.name!r}")
    editor = LocalEditor(dataclasses.replace(task, local_edit=task.offline_edit or task.local_edit))
    edited = 0
    for start in range(0, n, batch_size):
        prompts = stream(min(batch_size, n - start))
        drafts = [s[0] for s in policy.sample(prompts, 1, use_reference=True)]
        edits = editor.edit(prompts, drafts)
        edited += sum(e is not None for e in edits)
        algorithm.learn(prompts, drafts, edits)
    return edited


def run_algorithm(name: str, config: SimulationConfig, run: RunDir, progress: ProgressFn) -> dict:
    """Train one algorithm from its seed (or last checkpoint) to `config.rounds`; return its summary."""
    torch.manual_seed(config.seed)
    policy = build_policy(config)
    task = load_task(config.task, policy)
    algorithm = build_algorithm(name, config, policy, task)
    stream = PromptStream(task.train_prompts, config.seed)
    state = {"round": 0, "feedback": 0, "queries": 0, "interval": Interval(), "wall_time": 0.0, "cost_total": 0,
             "kept_total": 0, "shown_total": 0, "offline_edited": 0}

    checkpoint = run.checkpoint(name)
    records = [r for r in run.read_metrics() if r["algorithm"] != name]
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        policy.load_trainable_state(saved["trainable"])
        learner_of(algorithm).load_state_dict(saved["learner"])
        torch.set_rng_state(saved["rng"])
        stream.cursor = saved["cursor"]
        state = {**state, **saved["state"], "interval": Interval(**saved["state"]["interval"])}
        records += [r for r in run.read_metrics() if r["algorithm"] == name and r["round"] <= state["round"]]
    elif config.offline_edits:
        started = time.perf_counter()
        state["offline_edited"] = offline_phase(algorithm, task, policy, stream, config.offline_edits,
                                                config.batch_size)
        state["wall_time"] += time.perf_counter() - started
    run.write_metrics(records)

    system_for = algorithm.describe_user if isinstance(algorithm, OracleAgent) else None

    def evaluated() -> Policy:
        """The policy evaluated and saved: for the late ensemble the member its bandit trusts most."""
        return algorithm.favourite() if isinstance(algorithm, LateEnsemble) else policy

    def record_eval() -> dict:
        record = {"algorithm": name, "seed": config.seed, "round": state["round"], "feedback": state["feedback"],
                  "queries": state["queries"], **evaluate(evaluated(), task, config, system_for),
                  **state["interval"].record(),
                  "cumulative_cost": state["cost_total"], "wall_time": round(state["wall_time"], 2)}
        run.append_metric(record)
        state["interval"] = Interval()
        return record

    last = record_eval() if state["round"] == 0 else None
    progress(name, state["round"], last)
    while state["round"] < config.rounds:
        started = time.perf_counter()
        log, stats = algorithm.round(stream)
        state["round"] += 1
        state["feedback"] += log.feedback
        state["queries"] += log.queries
        state["interval"].add(log, stats)
        state["cost_total"] += sum(log.costs)
        state["kept_total"] += sum(c == 0 for c in log.costs)
        state["shown_total"] += len(log.costs)
        state["wall_time"] += time.perf_counter() - started
        if state["round"] % config.eval_every == 0 or state["round"] == config.rounds:
            last = record_eval()
        if state["round"] % config.checkpoint_every == 0 or state["round"] == config.rounds:
            run.save_checkpoint(name, {
                "trainable": policy.trainable_state(), "learner": learner_of(algorithm).state_dict(),
                "rng": torch.get_rng_state(), "cursor": stream.cursor,
                "state": {**state, "interval": dataclasses.asdict(state["interval"])},
            })
        progress(name, state["round"], last)
    if hasattr(policy.model, "save_pretrained") and not config.full_finetune:
        evaluated().model.save_pretrained(run.path / "policies" / name)
    ours = [r for r in run.read_metrics() if r["algorithm"] == name]
    summary = {"rounds": state["round"], "feedback": state["feedback"], "queries": state["queries"],
               "reward_initial": ours[0]["reward"], "reward_final": ours[-1]["reward"], "kl_final": ours[-1]["kl"],
               "wall_time": round(state["wall_time"], 1)}
    if config.offline_edits:
        summary |= {"offline_edits": config.offline_edits, "offline_edited": state["offline_edited"],
                    "cumulative_cost": state["cost_total"], "episodes": state["shown_total"],
                    # CoRLL asks until it has N preferences per step, so it shows more responses per round
                    # than one-batch agents: compare agents per episode (shown response)
                    "cost_per_episode": state["cost_total"] / max(1, state["shown_total"]),
                    "no_edit_share": state["kept_total"] / max(1, state["shown_total"])}
    if isinstance(algorithm, LateEnsemble):  # whom the bandit let answer, episode by episode
        summary["chosen"] = [LATE_MEMBERS[i] for i in algorithm.chosen]
    if task.objectives is not None:  # reaction tasks: watch for reward hacking (seed 004)
        summary["monitor_flags"] = monitor_records(ours)
    return summary


def run_simulation(config: SimulationConfig, out: Path, *, resume: bool = False,
                   progress: ProgressFn = lambda *_: None) -> dict:
    """Run every algorithm of `config` into `out`; returns the summary (also written to summary.json)."""
    config.validate()
    run, config = prepare_run_dir(out, config, resume)
    summary_file = run.path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    for name in config.algorithms:
        if summary.get(name, {}).get("rounds") == config.rounds:
            progress(name, config.rounds, None)
            continue
        summary[name] = run_algorithm(name, config, run, progress)
        run.write_json(summary_file, summary)
    from corll.report import plot_curves

    plot_curves([run.path], run.path / "curves.png")
    return summary

