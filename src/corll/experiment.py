"""Experiments: a grid of simulation runs (arms × seeds) from one YAML file, run resumably, aggregated.

    name: corll-vs-dueling
    seeds: [0, 1, 2]
    base: {task: positive-review, user: expert, rounds: 12}      # SimulationConfig fields
    arms:                                                        # each arm: one algorithm + overrides
      corll: {algorithms: [corll]}
      dueling: {algorithms: [dueling]}
    baseline: dueling                                            # paired comparisons against this arm
    figures:                                                     # one PNG per figure
      fig1: {arms: [corll, dueling], metrics: [reward, regret]}
    regret_samples: 16                                           # best of M expert samples estimate R*(y*)
    shared: {corll: experiments/other.yaml#corll}                # an arm whose runs another experiment has

Every run gets its own folder `<out>/<arm>/seed-<s>/` (a normal `corll simulate`
run folder). Runs go seed by seed, so a partly finished experiment already has
every arm at the first seeds; a finished run is never re-run and an interrupted
one resumes from its checkpoint. The aggregate (`aggregate.json`, figures,
`results.md`) is rebuilt from whatever runs exist.

A `shared` arm is another experiment's arm with exactly the same settings (checked): its runs live in
that experiment's folders, are run once for both, and count toward the other experiment's compute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corll.config import ConfigError, SimulationConfig
from corll.learners.registry import check
from corll.files import try_file_lock
from corll.run_dir import RunDir, computed_settings
from corll.simulate import build_policy, run_simulation
from corll.tasks import load_task

EXPERIMENT_KEYS = {"name", "description", "seeds", "base", "arms", "baseline", "figures", "regret_samples", "out",
                   "shared"}
METRICS = {
    "reward": "held-out mean R*",
    "reward_argmax": "held-out mean R* of the argmax of k samples",
    "shown_reward": "mean R* of the responses shown in training",
    "regret": "held-out regret R*(y*) − R*(y)",
    "kl": "KL(π‖π_0) estimate",
    "mislabel_rate": "realised mislabel rate",
    "alpha_hat": "realised feedback strength α̂",
    "edit_distance": "edit size (tokens changed)",
    "edit_cost": "edit cost per response (words)",
    "cumulative_cost": "cumulative online edit cost (words)",
    "no_edit_share": "share of responses kept unedited",
    "rank_spearman": "Spearman(implicit reward, R*) over the k samples",
    "argmax_gain": "R* of the argmax − mean R* of the k samples",
    "love_model": "mean P[Love] of the reward model",
    "help": "helpfulness (reaction tasks: checklist)",
    "distinct_2": "distinct-2 of held-out responses",
    "repetition": "share of responses repeating a phrase",
}


class ExperimentError(ValueError):
    """The experiment file is missing, malformed, or describes impossible runs."""


AXES = {"feedback": "preferences used (feedback)", "queries": "episodes (responses shown)"}


@dataclass
class Figure:
    arms: list[str]
    metrics: list[str] = field(default_factory=lambda: ["reward"])
    x: str = "feedback"  # cost curves run over episodes: agents that skip unedited responses learn from fewer


@dataclass
class Experiment:
    name: str
    seeds: list[int]
    arms: dict[str, SimulationConfig]
    out: Path
    baseline: str | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    regret_samples: int = 0
    description: str = ""
    shared: dict[str, Path] = field(default_factory=dict)  # arm -> the folder of another experiment's arm

    def runs(self) -> list[tuple[str, int, SimulationConfig, Path]]:
        """(arm, seed, config, folder) in the order they run: seed by seed, arms in file order."""
        return [(arm, seed, dataclasses.replace(config, seed=seed),
                 self.shared.get(arm, self.out / arm) / f"seed-{seed}")
                for seed in self.seeds for arm, config in self.arms.items()]


def shared_arms(raw: object, arms: dict[str, SimulationConfig]) -> dict[str, Path]:
    """`shared: {arm: other.yaml#their-arm}` -> arm -> the other arm's folder, once its settings are
    checked to be this arm's, field for field (the runs are then the same computation)."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ExperimentError("'shared' must map arm names to 'experiment.yaml#arm'")
    folders = {}
    for arm, source in raw.items():
        if arm not in arms:
            raise ExperimentError(f"shared arm {arm!r} is not one of the arms ({', '.join(arms)})")
        path, _, theirs = str(source).partition("#")
        other = load_experiment(Path(path))
        if theirs not in other.arms:
            raise ExperimentError(f"shared arm {arm!r}: {path} has no arm {theirs!r} ({', '.join(other.arms)})")
        mine, their_config = dataclasses.asdict(arms[arm]), dataclasses.asdict(other.arms[theirs])
        differ = sorted(k for k in mine if mine[k] != their_config[k])
        if differ:
            raise ExperimentError(f"shared arm {arm!r} differs from {path}#{theirs} in {', '.join(differ)}: "
                                  "only identical settings can share runs")
        folders[str(arm)] = other.shared.get(theirs, other.out / theirs)
    return folders


def load_experiment(path: Path, out: Path | None = None) -> Experiment:
    """Read and check an experiment file; every problem is reported with the key it concerns."""
    if not path.is_file():
        raise ExperimentError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping with 'name' and 'arms' at the top level")
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")
    for key in ("name", "arms"):
        if key not in raw:
            raise ExperimentError(f"{path}: missing '{key}'")
    seeds = raw.get("seeds", [0, 1, 2])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)) or len(set(seeds)) != len(seeds):
        raise ExperimentError(f"{path}: 'seeds' must be a non-empty list of distinct integers")
    base = raw.get("base") or {}
    if not isinstance(raw["arms"], dict) or not raw["arms"]:
        raise ExperimentError(f"{path}: 'arms' must map arm names to settings")
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    arms = {}
    for arm, overrides in raw["arms"].items():
        settings = {**base, **(overrides or {})}
        bad = set(settings) - fields
        if bad:
            raise ExperimentError(f"arm {arm!r}: unknown setting(s) {', '.join(sorted(bad))}")
        if "seed" in settings:
            raise ExperimentError(f"arm {arm!r}: set seeds with the top-level 'seeds' list, not 'seed'")
        config = SimulationConfig(**settings)
        if len(config.algorithms) != 1:
            raise ExperimentError(f"arm {arm!r}: give exactly one algorithm (algorithms: [corll] or [dueling])")
        try:
            check(config)
        except ConfigError as exc:
            raise ExperimentError(f"arm {arm!r}: {exc}") from exc
        arms[str(arm)] = config
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in arms:
        raise ExperimentError(f"baseline {baseline!r} is not one of the arms ({', '.join(arms)})")
    figures = {}
    for name, spec in (raw.get("figures") or {}).items():
        unknown = set(spec) - {f.name for f in dataclasses.fields(Figure)} if isinstance(spec, dict) else set()
        if unknown:
            raise ExperimentError(f"figure {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
        figure = Figure(**spec) if isinstance(spec, dict) and "arms" in spec else None
        if figure is None or not figure.arms:
            raise ExperimentError(f"figure {name!r}: give 'arms' (and optionally 'metrics', 'x')")
        if figure.x not in AXES:
            raise ExperimentError(f"figure {name!r}: x must be one of {', '.join(AXES)}, not {figure.x!r}")
        for arm in figure.arms:
            if arm not in arms:
                raise ExperimentError(f"figure {name!r}: unknown arm {arm!r}")
        for metric in figure.metrics:
            if metric not in METRICS:
                raise ExperimentError(f"figure {name!r}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        figures[str(name)] = figure
    regret_samples = raw.get("regret_samples", 0)
    if not isinstance(regret_samples, int) or regret_samples < 0:
        raise ExperimentError("'regret_samples' must be a non-negative integer")
    target = out or Path(raw.get("out") or Path("runs") / "experiments" / str(raw["name"]))
    return Experiment(name=str(raw["name"]), seeds=seeds, arms=arms, out=target, baseline=baseline,
                      figures=figures, regret_samples=regret_samples, description=str(raw.get("description", "")),
                      shared=shared_arms(raw.get("shared"), arms))


def subset(experiment: Experiment, seeds: str | None = None, arms: str | None = None) -> Experiment:
    """The same experiment restricted to some of its seeds ('0,2') and arms ('floor,oracle'), so that
    several processes or machines sharing its folder can split the runs; all must be the file's own."""
    chosen_seeds = experiment.seeds
    if seeds is not None:
        try:
            chosen_seeds = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise ExperimentError(f"--seeds takes comma-separated integers such as '0,1', not {seeds!r}") from None
        strangers = [str(s) for s in chosen_seeds if s not in experiment.seeds]
        if strangers:
            raise ExperimentError(f"--seeds {', '.join(strangers)} not in the experiment's seeds {experiment.seeds}")
    chosen_arms = list(experiment.arms)
    if arms is not None:
        chosen_arms = [a.strip() for a in arms.split(",")]
        strangers = [a for a in chosen_arms if a not in experiment.arms]
        if strangers:
            raise ExperimentError(f"--arms {', '.join(strangers)} not in the experiment's arms "
                                  f"({', '.join(experiment.arms)})")
    return dataclasses.replace(experiment, seeds=[s for s in experiment.seeds if s in chosen_seeds],
                               arms={a: c for a, c in experiment.arms.items() if a in chosen_arms})


def run_is_finished(folder: Path, config: SimulationConfig) -> bool:
    summary = folder / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get(config.algorithms[0], {}).get("rounds") == config.rounds


def check_folder_matches(folder: Path, config: SimulationConfig) -> None:
    """A run folder left by an earlier version of the experiment file must not be silently reused."""
    saved_file = RunDir(folder).config_file
    if not saved_file.exists():
        return
    saved, wanted = computed_settings(json.loads(saved_file.read_text())), dataclasses.asdict(config)
    if wanted["precision"] == "auto":  # `auto` here may resolve differently from where the run started
        saved["precision"] = "auto"
    defaults = dataclasses.asdict(SimulationConfig())  # a setting added later reads as its default
    changed = sorted(k for k in wanted if saved.get(k, defaults[k]) != wanted[k])
    if changed:
        raise ExperimentError(f"{folder} holds a run with different settings ({', '.join(changed)}): "
                              "delete that folder or choose another output folder")


@contextlib.contextmanager
def claimed(folder: Path) -> Iterator[bool]:
    """Hold a run's claim while it trains (an OS file lock, released if the process dies): processes that
    share one experiment folder, e.g. two one-thread `corll experiment` commands, each skip the runs the
    other is training, so starting the same command twice splits the work."""
    folder.mkdir(parents=True, exist_ok=True)
    with try_file_lock(folder / ".running.lock") as held:
        yield held


RunProgress = Callable[[str, int, int, int, dict | None, str], None]  # arm, seed, done, total rounds, record, doing


def run_experiment(experiment: Experiment, progress: RunProgress = lambda *_: None) -> None:
    """Run every missing or unfinished run (and the expert's best-of-M, for regret); the aggregate is
    `experiment_results.aggregate`, rebuilt from whatever runs exist."""
    experiment.out.mkdir(parents=True, exist_ok=True)
    runs = experiment.runs()
    for _, _, config, folder in runs:
        check_folder_matches(folder, config)
    for arm, seed, config, folder in runs:
        with claimed(folder) as mine:
            if not mine:
                progress(arm, seed, 0, config.rounds, None, "running in another process")
                continue
            if run_is_finished(folder, config):
                progress(arm, seed, config.rounds, config.rounds, None, "")
                continue
            resume = RunDir(folder).config_file.exists()
            run_simulation(config, folder, resume=resume, progress=lambda _name, done, record, doing: progress(
                arm, seed, done, config.rounds, record, doing))
    if experiment.regret_samples:
        best_of_expert(experiment)


def best_of_expert(experiment: Experiment) -> dict[str, float]:
    """R*(y*) per held-out prompt, estimated by the best of M expert samples; computed once per task.

    Paper eq. 1 defines regret against the best response y*; we measure it on the
    held-out prompts the curves are evaluated on, so regret(t) = mean R*(y*) − R*(π_t).
    """
    cache = experiment.out / "best-of-expert.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    for config in experiment.arms.values():
        key = regret_key(experiment, config)
        if key in known:
            continue
        import torch

        torch.manual_seed(0)
        policy = build_policy(config)
        task = load_task(config.task, policy)
        prompts = task.test_prompts[: config.eval_prompts]
        best = []
        for prompt in prompts:
            candidates = task.expert([prompt], experiment.regret_samples)[0]
            best.append(max(task.reward([prompt] * len(candidates), candidates)))
        known[key] = statistics.fmean(best)
        RunDir(experiment.out).write_json(cache, known)
    return known


def regret_key(experiment: Experiment, config: SimulationConfig) -> str:
    """What R*(y*) depends on: the task, the model, the held-out prompts, the length cap and M."""
    return f"{config.task}|{config.model}|{config.eval_prompts}|{config.max_new_tokens}|{experiment.regret_samples}"
