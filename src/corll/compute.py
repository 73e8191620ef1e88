"""What an experiment's runs have cost and what the rest will: read from the runs' own records (the
cumulative time of training rounds and of evaluations in metrics.jsonl, the CPU in config.json), for the
results pages' compute lines and `corll experiment --plan`."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from corll.experiment import Experiment, run_is_finished
from corll.config import SimulationConfig
from corll.run_dir import RunDir


@dataclass
class RunCost:
    """What one run has spent so far, read from the last record of its metrics.jsonl: seconds of training
    rounds and of evaluations (None for runs written before evaluations were timed), and its CPU."""

    rounds: float
    evaluations: float | None
    cpu: str | None
    machine: str | None = None  # the kind of CPU alone ("model, capability"), to tell whose rate a run gives


def run_cost(folder: Path) -> RunCost | None:
    """None for a run that has not recorded anything yet."""
    records = RunDir(folder).read_metrics()
    if not records:
        return None
    evaluations = [r["eval_time"] for r in records if "eval_time" in r]
    config_file = RunDir(folder).config_file
    hardware = (json.loads(config_file.read_text()).get("hardware") or {}) if config_file.exists() else {}
    cpu = (f"{hardware.get('cpu')} ({hardware.get('capability')}, {hardware.get('precision')}, "
           f"{hardware.get('threads')} thread{'s' if hardware.get('threads') != 1 else ''})") if hardware else None
    return RunCost(max(r.get("wall_time", 0.0) for r in records), max(evaluations) if evaluations else None, cpu,
                   machine_kind(hardware.get("cpu"), hardware.get("capability")) if hardware else None)


def machine_kind(cpu: str | None, capability: str | None) -> str:
    """A kind of CPU as `plan` matches it: model and vector capability, not the run's precision or threads."""
    return f"{cpu}, {capability}"


@dataclass
class ArmPlan:
    """One arm's runs: how many are finished, what a finished one cost, and what the rest will cost at that rate."""

    arm: str
    planned: int
    finished: int
    rounds_hours: float | None  # per finished run, mean
    evaluation_hours: float | None  # per finished run that timed its evaluations, mean
    shared_with: Path | None  # the runs live in (and count toward) another experiment
    rate_from_here: bool = False  # the rate is that of runs on the machine asking (else of runs elsewhere)

    @property
    def left(self) -> int:
        return self.planned - self.finished

    @property
    def hours_left(self) -> float | None:
        """Core-hours for the unfinished runs (each from scratch: an interrupted run's progress is not
        subtracted), counting evaluations where they were timed."""
        if self.rounds_hours is None:
            return None
        return self.left * (self.rounds_hours + (self.evaluation_hours or 0.0))


def plan(experiment: Experiment, here: str | None = None) -> list[ArmPlan]:
    """Per arm, what is finished and an estimate of the core-hours the rest needs, from its own finished runs:
    what `--seeds/--arms` splits should be started, and how long they will take. Where some of an arm's runs
    finished on the kind of CPU `here` names (`machine_kind`), the rate is theirs: CPUs differ several-fold."""
    by_arm: dict[str, list[tuple[Path, SimulationConfig]]] = defaultdict(list)
    for arm, _, run_config, folder in experiment.runs():
        by_arm[arm].append((folder, run_config))
    plans = []
    for arm, runs in by_arm.items():
        costs = [run_cost(folder) for folder, run_config in runs if run_is_finished(folder, run_config)]
        finished = len(costs)
        local = [c for c in costs if here is not None and c.machine == here]
        costs = local or costs
        timed = [c.evaluations for c in costs if c.evaluations is not None]
        plans.append(ArmPlan(arm, len(runs), finished,
                             statistics.fmean(c.rounds for c in costs) / 3600 if costs else None,
                             statistics.fmean(timed) / 3600 if timed else None,
                             experiment.shared[arm].parent if arm in experiment.shared else None, bool(local)))
    return plans


def compute_cost(experiment: Experiment) -> dict:
    """Wall time summed over the experiment's own runs (not those it shares with another): training rounds,
    and evaluations where the runs timed them, in all and per CPU the runs ran on (from each run's
    config.json): machines differ several-fold in speed, so hours from two kinds do not add up to one rate."""
    per_cpu: dict[str, dict] = {}
    complete = True
    for arm, _, run_config, folder in experiment.runs():
        complete = complete and run_is_finished(folder, run_config)
        cost = run_cost(folder)
        if arm in experiment.shared or cost is None:
            continue  # shared runs: spent once, counted by the experiment that owns them
        cpu = per_cpu.setdefault(cost.cpu or "–", {"cpu": cost.cpu or "–", "runs": 0, "hours": 0.0,
                                                   "evaluation_hours": 0.0, "runs_timing_evaluations": 0})
        cpu["runs"] += 1
        cpu["hours"] += cost.rounds / 3600
        if cost.evaluations is not None:
            cpu["evaluation_hours"] += cost.evaluations / 3600
            cpu["runs_timing_evaluations"] += 1
    by_cpu = sorted(per_cpu.values(), key=lambda c: c["cpu"])
    totals = {key: sum(c[key] for c in by_cpu)
              for key in ("hours", "evaluation_hours", "runs", "runs_timing_evaluations")}
    return {**totals, "cpus": [c["cpu"] for c in by_cpu if c["cpu"] != "–"], "by_cpu": by_cpu, "complete": complete}


def _spent(cost: dict, so_far: str) -> str:
    if cost["runs_timing_evaluations"] == 0:
        return f"{cost['hours']:.1f} hours of training rounds{so_far} (evaluations not counted)"
    timed, runs = cost["runs_timing_evaluations"], cost["runs"]
    partly = "" if timed == runs else f" (evaluations timed by {timed} of {runs} runs; older runs did not time them)"
    return (f"{cost['hours']:.1f} hours of training rounds and {cost['evaluation_hours']:.1f} of evaluations"
            f"{so_far}{partly}")


def cost_line(cost: dict) -> str:
    """The compute sentence under an experiment's heading: one clause per CPU kind the runs ran on."""
    so_far = "" if cost["complete"] else " so far"
    if len(cost["by_cpu"]) <= 1:
        return f"{_spent(cost, so_far)} on {', '.join(cost['cpus']) or '–'}"
    clauses = [f"{_spent(c, '')} on {c['cpu']} ({c['runs']} run{'s' if c['runs'] != 1 else ''})"
               for c in cost["by_cpu"]]
    return "; ".join(clauses) + ("" if cost["complete"] else " (so far)")
