"""Several simulated-deployment runs side by side: per run, per user, pooled, and corrected for the number
of tests — the comparison tables of the early deployment runs (`results/deployment-early/README.md`), generated from the runs' results files.

    .venv/bin/python experiments/deployment_compare.py --run 0=results/deployment-early/deployment-results.json \
        --run 1=results/deployment-early/deployment-seed1-results.json --pool 0,1 --out docs/deployment-runs

Each `--run LABEL=PATH` is one results JSON of `experiments/deployment.py`. Effects are words edited per
draft, `serve` − `serve --learn`, paired by user and draft (positive: the learning server's users edited
less), over all drafts and over the last third of each user's drafts. Holm's correction runs over every
per-run test on the page (two per run). The minimum detectable effect is at 80% power from the run's
own paired SD.

Runs listed in `--pool` must have independent traffic (different `--seed`s). Two pooled estimates are
given: per draft (every draft a pair, which overstates the precision: a user's drafts share the versions
that wrote them), and per user and run (each user's mean difference in a run is one observation) — the
honest one, with few observations.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats as scipy_stats

from corll.stats import paired_comparison, t_interval
from corll.stats import holm, minimum_detectable_effect

WINDOWS = ("all", "last_third")
BEGIN, END = "<!-- deployment_compare.py: begin -->", "<!-- deployment_compare.py: end -->"


def late(drafts: int) -> int:
    """The first draft index of the last third of a user's drafts (as `deployment.py` reports it)."""
    return drafts - drafts // 3


def costs(run: dict) -> dict[str, dict[tuple[str, int], int]]:
    """Words edited per (user, draft) in each arm; the two arms must hold the same drafts."""
    out = {arm: {(r["user"], r["t"]): r["cost"] for r in run[arm]["rows"]} for arm in ("static", "learning")}
    if out["static"].keys() != out["learning"].keys():
        raise ValueError("the two arms of a run must hold the same users and drafts")
    return out


def effect(static: list[float], learning: list[float]) -> dict:
    """Mean paired difference, its 95% t interval, p, and the minimum detectable effect at 80% power."""
    comparison = paired_comparison(static, learning)
    differences = [s - x for s, x in zip(static, learning)]
    sd = statistics.stdev(differences) if len(differences) > 1 else float("nan")
    d = comparison.difference
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n, "p": comparison.p_value,
            "mde": minimum_detectable_effect(sd, len(differences))}


def window(pairs: list[tuple[str, int]], name: str, drafts: int) -> list[tuple[str, int]]:
    return pairs if name == "all" else [p for p in pairs if p[1] >= late(drafts)]


def summarise_run(run: dict) -> dict:
    """One run: totals, the two paired effects, and per user the same plus when learning reached them."""
    drafts = run["settings"]["drafts"]
    cost = costs(run)
    pairs = sorted(cost["static"])
    users = sorted({u for u, _ in pairs})
    decisions = run["learning"]["decisions"]
    out = {"settings": run["settings"], "wall_min": run["learning"]["wall_s"] / 60,
           "total": {arm: sum(cost[arm].values()) for arm in cost},
           "promoted": sum(d["decision"] == "promoted" for d in decisions),
           "rejected": sum(d["decision"] == "rejected" for d in decisions), "per_user": {}}
    for name in WINDOWS:
        chosen = window(pairs, name, drafts)
        out[name] = effect([cost["static"][p] for p in chosen], [cost["learning"][p] for p in chosen])
    for user in users:
        mine = [p for p in pairs if p[0] == user]
        learned = [r["t"] for r in run["learning"]["rows"] if r["user"] == user and r["version"] is not None]
        theirs = [d for d in decisions if d["user"] == user]
        out["per_user"][user] = {
            "total": {arm: sum(cost[arm][p] for p in mine) for arm in cost},
            **{name: effect([cost["static"][p] for p in window(mine, name, drafts)],
                            [cost["learning"][p] for p in window(mine, name, drafts)]) for name in WINDOWS},
            "first_learned_draft": min(learned) if learned else None,
            "promoted": sum(d["decision"] == "promoted" for d in theirs),
            "rejections": [d["reason"] for d in theirs if d["decision"] == "rejected"]}
    return out


def pool(runs: dict[str, dict]) -> dict:
    """Independent runs together: per draft (overstates precision) and per user and run (the honest unit)."""
    seeds = [run["settings"].get("seed", 0) for run in runs.values()]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"pooled runs must have different traffic seeds, got {seeds}")
    cost_of = {label: costs(run) for label, run in runs.items()}
    out = {}
    for name in WINDOWS:
        static, learning, clusters = [], [], []
        for label, run in runs.items():
            cost = cost_of[label]
            chosen = window(sorted(cost["static"]), name, run["settings"]["drafts"])
            static += [cost["static"][p] for p in chosen]
            learning += [cost["learning"][p] for p in chosen]
            for user in sorted({u for u, _ in chosen}):
                mine = [p for p in chosen if p[0] == user]
                clusters.append(statistics.fmean(cost["static"][p] - cost["learning"][p] for p in mine))
        by_cluster = t_interval(clusters)
        out[name] = {"per_draft": effect(static, learning),
                     "per_user_and_run": {"mean": by_cluster.mean, "low": by_cluster.low, "high": by_cluster.high,
                                          "n": by_cluster.n, "p": paired_comparison(clusters, [0.0] * len(clusters)).p_value}}
    out["total"] = {arm: sum(sum(cost[arm].values()) for cost in cost_of.values()) for arm in ("static", "learning")}
    return out


def promotions(runs: dict[str, dict]) -> dict:
    """What the gate saw of each promoted version beside what it then did: words it saved its user per draft it
    served (static − learning on those drafts). The rank correlation says whether the gate's held-out margin
    predicts a version's worth; it is exploratory (chosen after the runs), not one of the page's tests."""
    table = []
    for label, run in runs.items():
        static = costs(run)["static"]
        saved: dict[tuple[str, int], list[int]] = {}
        for r in run["learning"]["rows"]:
            if r["version"] is not None:
                saved.setdefault((r["user"], r["version"]), []).append(static[(r["user"], r["t"])] - r["cost"])
        table += [{"run": label, "user": d["user"], "version": d["version"], "margin_gain": d["margin_gain"],
                   "drafts_served": len(saved[d["user"], d["version"]]),
                   "saved_per_draft": statistics.fmean(saved[d["user"], d["version"]])}
                  for d in run["learning"]["decisions"] if d["decision"] == "promoted" and saved.get((d["user"], d["version"]))]
    out = {"versions": table}
    if len(table) >= 3:
        rho = scipy_stats.spearmanr([v["margin_gain"] for v in table], [v["saved_per_draft"] for v in table])
        out["spearman"] = {"rho": float(rho.statistic), "p": float(rho.pvalue), "n": len(table)}
    return out


def compare(runs: dict[str, dict], pooled: list[str]) -> dict:
    """Every run summarised, Holm-adjusted p over all per-run tests, the pooled estimates and the promotions."""
    summaries = {label: summarise_run(run) for label, run in runs.items()}
    adjusted = holm({(label, name): s[name]["p"] for label, s in summaries.items() for name in WINDOWS})
    for (label, name), p in adjusted.items():
        summaries[label][name]["p_holm"] = p
    return {"runs": summaries, "tests": len(adjusted),
            "pooled": {"runs": pooled, **pool({label: runs[label] for label in pooled})} if pooled else None,
            "promotions": promotions(runs)}


def cell(e: dict, bold: bool = False) -> str:
    text = f"{e['mean']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]"
    return f"**{text}**" if bold else text


def significant(e: dict) -> bool:
    return e.get("p_holm", e["p"]) < 0.05 and e["low"] > 0


def render(report: dict, labels: dict[str, str]) -> str:
    runs = report["runs"]
    lines = [f"Words edited per draft, `serve` − `serve --learn`, paired by user and draft (positive: the learning "
             f"server's users edited less); 95% t intervals; Holm over the {report['tests']} per-run tests; bold: "
             "the corrected test rejects and the interval excludes 0. MDE: the minimum detectable effect at 80% "
             "power from the run's paired SD.", "",
             "| run | traffic seed | words edited: `serve` → `serve --learn` | all drafts | p (Holm) | MDE | "
             "last third | p (Holm) | MDE | promoted / rejected | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in runs.items():
        a, z = s["all"], s["last_third"]
        change = (s["total"]["learning"] - s["total"]["static"]) / s["total"]["static"]
        lines.append(f"| {labels.get(label, label)} | {s['settings'].get('seed', 0)} | {s['total']['static']} → "
                     f"{s['total']['learning']} ({change:+.0%}) | {cell(a, significant(a))} (n = {a['n']}) | "
                     f"{a['p']:.2g} ({a['p_holm']:.2g}) | {a['mde']:.2f} | {cell(z, significant(z))} (n = {z['n']}) | "
                     f"{z['p']:.2g} ({z['p_holm']:.2g}) | {z['mde']:.2f} | {s['promoted']} / {s['rejected']} | "
                     f"{s['wall_min']:.1f} min |")
    if report["pooled"]:
        p = report["pooled"]
        lines += ["", f"Runs {', '.join(p['runs'])} pooled ({p['total']['static']} → {p['total']['learning']} words):", "",
                  "| window | per draft (overstates precision) | p | per user and run | p |", "|---|---|---|---|---|"]
        for name in WINDOWS:
            d, c = p[name]["per_draft"], p[name]["per_user_and_run"]
            lines.append(f"| {name.replace('_', ' ')} | {cell(d)} (n = {d['n']}) | {d['p']:.2g} | {cell(c)} "
                         f"(n = {c['n']}) | {c['p']:.2g} |")
    for label, s in runs.items():
        lines += ["", f"Run {labels.get(label, label)}, per user:", "",
                  "| user | words edited | all drafts, p | last third, p | first draft a learned version wrote | "
                  "promoted | rejected because |", "|---|---|---|---|---|---|---|"]
        for user, u in s["per_user"].items():
            first = u["first_learned_draft"]
            lines.append(f"| {user} | {u['total']['static']} → {u['total']['learning']} | {cell(u['all'])}, "
                         f"{u['all']['p']:.2g} | {cell(u['last_third'])}, {u['last_third']['p']:.2g} | "
                         f"{'never' if first is None else first} | {u['promoted']} | "
                         f"{'; '.join(u['rejections']) or '—'} |")
    versions = report["promotions"]["versions"]
    if versions:
        lines += ["", "Every promoted version: the gate's held-out margin gain beside the words it then saved its user "
                  "per draft it served (`serve` − `serve --learn` on those drafts):", "",
                  "| run | user | version | held-out margin gain (nats) | drafts served | words saved per draft |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {labels.get(v['run'], v['run'])} | {v['user']} | {v['version']} | {v['margin_gain']:+.1f} | "
                  f"{v['drafts_served']} | {v['saved_per_draft']:+.2f} |"
                  for v in sorted(versions, key=lambda v: v["margin_gain"])]
        if rho := report["promotions"].get("spearman"):
            lines += ["", f"Spearman ρ = {rho['rho']:+.2f} (p = {rho['p']:.2g}, n = {rho['n']} versions); exploratory, "
                      "not among the page's tests, and versions of one user share that user's preference."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH",
                        help="a results JSON of experiments/deployment.py under a label; repeat for each run")
    parser.add_argument("--pool", default="", help="comma-separated labels of runs with independent traffic to pool")
    parser.add_argument("--describe", action="append", default=[], metavar="LABEL=TEXT",
                        help="how a run is named in the tables (default: its label)")
    parser.add_argument("--out", type=Path, default=Path("docs/deployment-runs"))
    parser.add_argument("--into", type=Path, help="also write the tables into this page, between the lines "
                        f"{BEGIN!r} and {END!r}")
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"--run {item!r}: expected LABEL=PATH")
        runs[label] = json.loads(Path(path).read_text())
    pooled = [label for label in args.pool.split(",") if label]
    if unknown := [label for label in pooled if label not in runs]:
        parser.error(f"--pool names runs that are not given with --run: {', '.join(unknown)}")
    labels = dict(item.partition("=")[::2] for item in args.describe)
    page = args.into.read_text() if args.into else None
    if page is not None and (page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END)):
        parser.error(f"--into {args.into} needs one line {BEGIN!r} before one line {END!r}")
    report = compare(runs, pooled)
    text = render(report, labels)
    if page is not None:
        head, rest = page.split(BEGIN)
        args.into.write_text(f"{head}{BEGIN}\n{text}{END}{rest.split(END)[1]}")
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
