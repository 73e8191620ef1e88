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
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corll.config import ConfigError, SimulationConfig
from corll.run_dir import RunDir, computed_settings
from corll.simulate import build_policy, run_simulation
from corll.stats import Interval, paired_comparison, t_interval
from corll.tasks import load_task

EXPERIMENT_KEYS = {"name", "description", "seeds", "base", "arms", "baseline", "figures", "regret_samples", "out",
                   "shared"}
METRICS = {
    "reward": "held-out mean R*",
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
            config.validate()
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
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".running.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


RunProgress = Callable[[str, int, int, int, dict | None, str], None]  # arm, seed, done, total rounds, record, doing


def run_experiment(experiment: Experiment, progress: RunProgress = lambda *_: None) -> dict:
    """Run every missing or unfinished run, then rebuild the aggregate; returns the aggregate."""
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
    return aggregate(experiment)


# --- regret ---------------------------------------------------------------------------------------


def best_of_expert(experiment: Experiment) -> dict[str, float]:
    """R*(y*) per held-out prompt, estimated by the best of M expert samples; computed once per task.

    Paper eq. 1 defines regret against the best response y*; we measure it on the
    held-out prompts the curves are evaluated on, so regret(t) = mean R*(y*) − R*(π_t).
    """
    cache = experiment.out / "best-of-expert.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    for config in experiment.arms.values():
        key = _regret_key(experiment, config)
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


def _regret_key(experiment: Experiment, config: SimulationConfig) -> str:
    """What R*(y*) depends on: the task, the model, the held-out prompts, the length cap and M."""
    return f"{config.task}|{config.model}|{config.eval_prompts}|{config.max_new_tokens}|{experiment.regret_samples}"


def regret_reference(experiment: Experiment, config: SimulationConfig) -> float | None:
    cache = experiment.out / "best-of-expert.json"
    if not experiment.regret_samples or not cache.exists():
        return None
    return json.loads(cache.read_text()).get(_regret_key(experiment, config))


# --- aggregate ------------------------------------------------------------------------------------


def arm_records(experiment: Experiment) -> dict[str, dict[int, list[dict]]]:
    """arm -> seed -> that run's evaluation records (with regret added when it can be computed)."""
    found: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for arm, seed, config, folder in experiment.runs():
        records = RunDir(folder).read_metrics()
        if not records:
            continue
        best = regret_reference(experiment, config)
        if best is not None:
            records = [{**r, "regret": best - r["reward"]} for r in records]
        found[arm][seed] = records
    return found


def _interval_dict(interval: Interval) -> dict:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n}


def aggregate(experiment: Experiment) -> dict:
    """Per arm and evaluation round: t intervals over seeds; final R*; paired differences to the baseline."""
    records = arm_records(experiment)
    result: dict = {"name": experiment.name, "seeds": experiment.seeds, "arms": {}}
    costs: dict[str, dict[int, float]] = {}  # arm -> seed -> cumulative cost, for the protocol's arms
    for arm, by_seed in records.items():
        finished = finished_runs(by_seed, experiment.arms[arm])
        entry = {"curve": curve(finished or by_seed), "finished_seeds": sorted(finished)}
        if finished:
            entry["final_reward"] = _interval_dict(t_interval([recs[-1]["reward"] for recs in finished.values()]))
            entry["gain"] = _interval_dict(t_interval([recs[-1]["reward"] - recs[0]["reward"]
                                                       for recs in finished.values()]))
            config = experiment.arms[arm]
            if config.offline_edits:
                costs[arm] = cost_over_episodes(config, finished)
                entry["cumulative_cost"] = _interval_dict(t_interval(list(costs[arm].values())))
            by_source = cost_per_episode_by_source(finished)
            if by_source:
                entry["cost_per_episode_by_source"] = {source: _interval_dict(t_interval(values))
                                                       for source, values in by_source.items()}
            regrets = [statistics.fmean(r["regret"] for r in recs) for recs in finished.values() if "regret" in recs[0]]
            if regrets:
                entry["mean_regret"] = _interval_dict(t_interval(regrets))
        result["arms"][arm] = entry
    if experiment.baseline in records:
        result["paired"] = paired_to_baseline(experiment, records)
        if experiment.baseline in costs:
            result["paired_cost"] = paired_cost_to_baseline(experiment.baseline, costs)
    RunDir(experiment.out).write_json(experiment.out / "aggregate.json", result)
    for name, figure in experiment.figures.items():
        plot_figure(result, figure, experiment.out / f"{name}.png", title=name)
    RunDir(experiment.out).write_text(experiment.out / "results.md", results_markdown(experiment, result))
    return result


def curve(by_seed: dict[int, list[dict]]) -> list[dict]:
    """Per evaluation round, a t interval over the seeds given for every metric. `aggregate` passes the
    finished runs (or, while none has finished, the runs going), so every point of a curve averages the same
    seeds: a run still going would otherwise pull the early points toward its seed alone."""
    points = []
    for rnd in sorted({r["round"] for recs in by_seed.values() for r in recs}):
        at = [r for recs in by_seed.values() for r in recs if r["round"] == rnd]
        point = {"round": rnd, "feedback": statistics.fmean(r["feedback"] for r in at),
                 "queries": statistics.fmean(r["queries"] for r in at), "seeds": len(at)}
        for metric in METRICS:
            values = [r[metric] for r in at if r.get(metric) is not None]
            if values:
                point[metric] = _interval_dict(t_interval(values))
        points.append(point)
    return points


def finished_runs(by_seed: dict[int, list[dict]], config: SimulationConfig) -> dict[int, list[dict]]:
    """The seeds whose run reached its last round (a run still going is left out of finals and curves)."""
    return {seed: recs for seed, recs in by_seed.items() if recs[-1]["round"] == config.rounds}


def cost_over_episodes(config: SimulationConfig, finished: dict[int, list[dict]]) -> dict[int, float]:
    """seed -> cumulative online edit cost over T = rounds × N episodes (the user-edits paper's measure).

    CoRLL shows more responses per round (it asks until it has N preferences), so the cost is
    taken per episode and scaled to the same T for every agent."""
    episodes = config.rounds * config.batch_size
    return {seed: recs[-1]["cumulative_cost"] / recs[-1]["queries"] * episodes for seed, recs in finished.items()}


def cost_per_episode_by_source(finished: dict[int, list[dict]]) -> dict[str, list[float]]:
    """source -> per seed, the online edit cost per response shown to that source's users (PRELUDE's
    per-user view: which learner serves which users best)."""
    out: dict[str, list[float]] = defaultdict(list)
    for recs in finished.values():
        last = recs[-1]
        for source, shown in sorted(last.get("shown_by_source", {}).items()):
            out[source].append(last["cost_by_source"].get(source, 0) / max(1, shown))
    return dict(out)


def paired_cost_to_baseline(baseline: str, costs: dict[str, dict[int, float]]) -> dict:
    """For each arm: its cumulative cost − the baseline's, paired by seed (the same prompts and offline log)."""
    paired = {}
    for arm, by_seed in costs.items():
        seeds = sorted(set(by_seed) & set(costs[baseline]))
        if arm != baseline and len(seeds) >= 2:
            comparison = paired_comparison([by_seed[s] for s in seeds], [costs[baseline][s] for s in seeds])
            paired[arm] = {"seeds": seeds, "difference": _interval_dict(comparison.difference),
                           "p_value": comparison.p_value}
    return paired


def paired_to_baseline(experiment: Experiment, records: dict[str, dict[int, list[dict]]]) -> dict:
    """For each arm: arm − baseline held-out R* at every round both reached, paired by seed (`pairs`: how
    many seeds reached that round in both, which differs between rounds while runs are going)."""
    base = records[experiment.baseline]
    paired = {}
    for arm, by_seed in records.items():
        if arm == experiment.baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        rows = []
        rounds = sorted({r["round"] for s in seeds for r in by_seed[s]} & {r["round"] for s in seeds for r in base[s]})
        for rnd in rounds:
            pairs = [(a["reward"], b["reward"]) for s in seeds
                     for a in by_seed[s] if a["round"] == rnd for b in base[s] if b["round"] == rnd]
            if len(pairs) < 2:  # one pair has no spread: no interval, no test
                continue
            comparison = paired_comparison([a for a, _ in pairs], [b for _, b in pairs])
            feedback = statistics.fmean(r["feedback"] for s in seeds for r in by_seed[s] if r["round"] == rnd)
            rows.append({"round": rnd, "feedback": feedback, "pairs": len(pairs),
                         "difference": _interval_dict(comparison.difference), "p_value": comparison.p_value})
        paired[arm] = rows
    return paired


def plot_figure(result: dict, figure: Figure, out: Path, title: str) -> Path:
    """One panel per metric, one line per arm: mean over seeds with its 95% t interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figure.metrics), figsize=(5 * len(figure.metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], figure.metrics):
        for arm in figure.arms:
            points = [p for p in result["arms"].get(arm, {}).get("curve", []) if metric in p]
            if not points:
                continue
            xs = [p[figure.x] for p in points]
            ax.plot(xs, [p[metric]["mean"] for p in points], marker="o", markersize=3,
                    label=f"{arm} (n={max(p['seeds'] for p in points)})")
            ax.fill_between(xs, [p[metric]["low"] for p in points], [p[metric]["high"] for p in points], alpha=0.2)
        ax.set_title(METRICS[metric])
        ax.set_xlabel(AXES[figure.x])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}: mean over seeds, 95% t interval")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fmt(interval: dict | None) -> str:
    if not interval:
        return "–"
    if interval["n"] == 1:
        return f"{interval['mean']:+.3f} (1 seed)"
    return f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


def source_table(experiment: Experiment, result: dict) -> list[str]:
    """Arms × sources: online edit cost per shown response, mean [95% t interval] over seeds; the lowest mean
    of each source in bold (whether each learner wins for some users)."""
    arms = [a for a in experiment.arms if "cost_per_episode_by_source" in result["arms"].get(a, {})]
    if not arms:
        return []
    sources = sorted({s for a in arms for s in result["arms"][a]["cost_per_episode_by_source"]})
    cell = {(a, s): result["arms"][a]["cost_per_episode_by_source"].get(s) for a in arms for s in sources}
    best = {s: min((a for a in arms if cell[a, s]), key=lambda a: cell[a, s]["mean"]) for s in sources}
    lines = ["", "Online edit cost per shown response, by source (tokens; mean [95% t interval] over finished "
                 "seeds; the lowest mean of each source in bold):", "",
             "| arm | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for a in arms:
        values = []
        for s in sources:
            text = "–" if cell[a, s] is None else _fmt(cell[a, s]).replace("+", "")
            values.append(f"**{text}**" if best[s] == a else text)
        lines.append(f"| {a} | " + " | ".join(values) + " |")
    return lines


def results_markdown(experiment: Experiment, result: dict) -> str:
    """The tables of the results page for this experiment (figures are next to it)."""
    costs = any(config.offline_edits for config in experiment.arms.values())
    lines = [f"# {experiment.name}", "", experiment.description, "",
             "Final held-out R* per arm (mean and 95% t interval over finished seeds):", "",
             "| arm | seeds finished | feedback | R* final | ΔR* (final − initial) | mean regret |"
             + (" online cumulative cost (rounds × N episodes) |" if costs else ""),
             "|---|---|---|---|---|---|" + ("---|" if costs else "")]
    for arm in experiment.arms:
        entry = result["arms"].get(arm)
        if entry is None:
            lines.append(f"| {arm} | 0 | – | – | – | – |" + (" – |" if costs else ""))
            continue
        feedback = entry["curve"][-1]["feedback"] if entry["curve"] else 0
        lines.append(f"| {arm} | {len(entry['finished_seeds'])}/{len(experiment.seeds)} | {feedback:.0f} | "
                     f"{_fmt(entry.get('final_reward'))} | {_fmt(entry.get('gain'))} | {_fmt(entry.get('mean_regret'))} |"
                     + (f" {_fmt(entry.get('cumulative_cost'))} |" if costs else ""))
    paired = [(arm, row) for arm, rows in result.get("paired", {}).items()
              for row in rows[1:]]  # round 0 is the shared starting policy
    if paired:
        lines += ["", f"Paired by seed against `{experiment.baseline}` at equal feedback "
                      "(arm − baseline held-out R*, 95% t interval, paired t-test p):", "",
                  "| arm | round | feedback | seeds | difference | p |", "|---|---|---|---|---|---|"]
        lines += [f"| {arm} | {row['round']} | {row['feedback']:.0f} | {row['pairs']} | {_fmt(row['difference'])} "
                  f"| {row['p_value']:.3f} |" for arm, row in paired]
    if result.get("paired_cost"):
        lines += ["", f"Cumulative online cost paired by seed against `{experiment.baseline}` "
                      "(arm − baseline, tokens over the same episodes; 95% t interval, paired t-test p):", "",
                  "| arm | seeds | difference | p |", "|---|---|---|---|"]
        for arm, row in result["paired_cost"].items():
            lines.append(f"| {arm} | {len(row['seeds'])} | {_fmt(row['difference'])} | {row['p_value']:.3f} |")
    lines += source_table(experiment, result)
    lines += ["", *[f"![{name}]({name}.png)" for name in experiment.figures], ""]
    return "\n".join(lines)
