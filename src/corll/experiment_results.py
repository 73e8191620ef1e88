"""An experiment's results from whatever runs exist: regret against the expert, the aggregate over seeds
with intervals and paired comparisons against the baseline, its figures and its results page."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from corll.config import SimulationConfig
from corll.run_dir import RunDir
from corll.stats import Interval, paired_comparison, t_interval
from corll.experiment import AXES, METRICS, Experiment, Figure, regret_key


def regret_reference(experiment: Experiment, config: SimulationConfig) -> float | None:
    cache = experiment.out / "best-of-expert.json"
    if not experiment.regret_samples or not cache.exists():
        return None
    return json.loads(cache.read_text()).get(regret_key(experiment, config))


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
