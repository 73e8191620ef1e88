"""Tables and plots from any runs' metrics.jsonl files.

Runs whose configurations differ only in the seed are pooled (mean ± standard
deviation over seeds); otherwise each run's algorithms are shown separately,
labelled `run-folder:algorithm`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

IGNORED_FOR_POOLING = {"seed", "algorithms", "hardware"}  # hardware: where a run happened to start


def _config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json)")
    return {k: v for k, v in json.loads(file.read_text()).items() if k not in IGNORED_FOR_POOLING}


def load_series(paths: list[Path]) -> dict[str, dict[int, list[dict]]]:
    """label -> round -> the records of that round (one per seed)."""
    pooled = len({json.dumps(_config(p), sort_keys=True) for p in paths}) == 1
    series: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        metrics = path / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        for record in map(json.loads, filter(str.strip, lines)):
            label = record["algorithm"] if pooled else f"{path.name}:{record['algorithm']}"
            series[label][record["round"]].append(record)
    return series


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_curves(paths: list[Path], out: Path) -> Path:
    """Held-out R*, KL to π_0 and mislabel rate against the feedback used, one line per label."""
    series = load_series(paths)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("reward", "held-out mean R*"), ("kl", "KL(π‖π_0) estimate"), ("mislabel_rate", "mislabel rate")]
    for label, rounds in sorted(series.items()):
        ordered = [rounds[r] for r in sorted(rounds)]
        feedback = [statistics.fmean(rec["feedback"] for rec in recs) for recs in ordered]
        for ax, (key, _) in zip(axes, panels):
            points = [(x, [rec[key] for rec in recs if rec.get(key) is not None]) for x, recs in zip(feedback, ordered)]
            points = [(x, _mean_std(v)) for x, v in points if v]
            if not points:
                continue
            xs = [x for x, _ in points]
            mean = [m for _, (m, _) in points]
            std = [s for _, (_, s) in points]
            ax.plot(xs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("preferences used (feedback)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def summary_rows(paths: list[Path]) -> list[dict]:
    """Per label: seeds, feedback, R* before and after (mean ± std over seeds), final KL."""
    rows = []
    for label, rounds in sorted(load_series(paths).items()):
        first, last = rounds[min(rounds)], rounds[max(rounds)]
        before, after = _mean_std([r["reward"] for r in first]), _mean_std([r["reward"] for r in last])
        rows.append({"label": label, "seeds": len(last), "round": max(rounds), "gain": gain_interval(first, last),
                     "feedback": statistics.fmean(r["feedback"] for r in last),
                     "reward_before": before, "reward_after": after,
                     "kl": statistics.fmean(r["kl"] for r in last)})
    return rows


def gain_interval(first: list[dict], last: list[dict]) -> tuple[float, float, float]:
    """ΔR* (last − first evaluation) with a 95% interval: over seeds (t interval of each seed's gain)
    when there are several, else from the two evaluations' standard errors (a normal interval;
    conservative, since both evaluate the same prompts with the same sampling seed)."""
    from corll.stats import t_interval

    starts = {r["seed"]: r["reward"] for r in first}
    gains = [r["reward"] - starts[r["seed"]] for r in last if r["seed"] in starts]
    if len(gains) > 1:
        interval = t_interval(gains)
        return interval.mean, interval.low, interval.high
    a, b = first[0], last[0]
    half = 1.96 * math.hypot(a.get("reward_sem", 0.0), b.get("reward_sem", 0.0))
    gain = b["reward"] - a["reward"]
    return gain, gain - half, gain + half


def comparison_rows(paths: list[Path]) -> list[dict]:
    """Each algorithm of the runs' configuration against the first one named, at the last evaluation
    (equal rounds, so equal feedback up to the preferences a round could not gather): paired over seeds
    when there are several (each seed's difference of held-out R*), else over the held-out prompts of
    the one run (every algorithm is evaluated on the same prompts with the same sampling seed, so a
    prompt's difficulty cancels). Runs of different configurations are not compared."""
    from corll.stats import paired_comparison

    configs = {json.dumps(_config(p), sort_keys=True) for p in paths}
    if len(configs) != 1:
        return []
    order = json.loads((paths[0] / "config.json").read_text()).get("algorithms", [])
    series = load_series(paths)
    finals = {name: series[name][max(series[name])] for name in order if series.get(name)}
    if len(finals) < 2:
        return []
    first, *others = finals
    rows = []
    for other in others:
        a = {r["seed"]: r for r in finals[first]}
        b = {r["seed"]: r for r in finals[other]}
        seeds = sorted(a.keys() & b.keys())
        if len(seeds) > 1:
            unit, xs, ys = "seeds", [a[s]["reward"] for s in seeds], [b[s]["reward"] for s in seeds]
        elif seeds and a[seeds[0]].get("reward_by_prompt") and b[seeds[0]].get("reward_by_prompt"):
            unit, xs, ys = "held-out prompts", a[seeds[0]]["reward_by_prompt"], b[seeds[0]]["reward_by_prompt"]
        else:
            continue
        compared = paired_comparison(xs, ys)
        d = compared.difference
        rows.append({"label": f"{first} − {other}", "unit": unit, "n": d.n, "difference": float(d.mean),
                     "low": float(d.low), "high": float(d.high), "p_value": float(compared.p_value),
                     "feedback": [statistics.fmean(r["feedback"] for r in finals[name]) for name in (first, other)]})
    return rows


def comparison_table(rows: list[dict]) -> Table:
    table = Table(title="at equal feedback: held-out R* of one algorithm minus another's (paired)")
    for column in ("comparison", "feedback", "paired over", "difference [95% CI]", "p", "excludes 0"):
        table.add_column(column, justify="left" if column == "comparison" else "right")
    for row in rows:
        table.add_row(row["label"], " vs ".join(f"{f:.0f}" for f in row["feedback"]), f"{row['n']} {row['unit']}",
                      f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]", f"{row['p_value']:.2g}",
                      "yes" if row["low"] > 0 or row["high"] < 0 else "no")
    return table


def summary_table(paths: list[Path]) -> Table:
    table = Table(title="held-out true reward R*")
    for column in ("algorithm", "seeds", "rounds", "feedback", "R* before", "R* after", "ΔR* [95% CI]", "KL"):
        table.add_column(column, justify="left" if column == "algorithm" else "right")
    fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}" if ms[1] else f"{ms[0]:.3f}"  # noqa: E731
    for row in summary_rows(paths):
        table.add_row(row["label"], str(row["seeds"]), str(row["round"]), f"{row['feedback']:.0f}",
                      fmt(row["reward_before"]), fmt(row["reward_after"]),
                      "{:+.3f} [{:+.2f}, {:+.2f}]".format(*row["gain"]), f"{row['kl']:.2f}")
    return table
