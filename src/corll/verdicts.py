"""Claims of a paper and the verdicts the experiments support: one page and one JSON file from one code path.

A claims file names, for each claim, the experiment and arms that test it, the measure
and the paper's direction — or, for what runs of an experiment cannot measure (a reward
model's AUROC, a correlation across policy variants), a `source` file written by a study
script and the `key` of the claim's inputs there: per-seed values (kind `seeds`, tested
like an experiment's runs) or paired observations (kind `correlation`: Pearson r, Fisher's
interval, the smallest r detectable over that many pairs). One claim is primary (tested at α = 0.05 alone); the rest
are secondary and their p-values are Holm-corrected together across the page, over every secondary
claim planned (one whose runs have not finished counts as p = 1, so no verdict is withdrawn later). Every
verdict follows from its numbers by the same rule:

- "reproduced": the (corrected) test rejects and the 95% interval excludes 0 in the
  paper's direction;
- "not reproduced": the interval excludes the paper's effect (every effect at least
  `paper_effect` in the paper's direction);
- "inconclusive (minimum detectable effect X)" otherwise, X being the effect a paired
  t-test over these seeds would detect with 80% power at the claim's α;
- "inconclusive (minimum detectable effect not estimable …)" while fewer than 2 seed pairs have
  finished: there is no test, and no interval or minimum detectable effect, to judge by. A claim
  may name a measured claim whose paired SD stands in for its own (`design_sd`, a pilot's SD):
  the verdict then states the effect its planned seeds would detect if that SD held, marked
  "planned" (`mde_basis` in the JSON) — the sizing the design promises, not a measurement;
- "inconclusive (…; interim: k of n planned seed pairs finished)" while fewer than the experiment's
  planned seeds have finished: the numbers are shown, but judging before the planned sample is
  complete and stopping when a test happens to reject would inflate the error rate it promises.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corll.compute import compute_cost, cost_line
from corll.experiment import Experiment, load_experiment
from corll.experiment_results import arm_records, finished_runs
from corll.stats import (ALPHA, POWER, correlation_mde, holm, minimum_detectable_effect, paired_comparison,
                         pearson_interval, seeds_needed)


MEASURES = {
    "reward": "final held-out R*",
    "shown_reward": "mean R* of the responses shown in training",
    "gain": "held-out R* gain (final − initial)",
    "rank_spearman": "mean Spearman(implicit reward, R*) over the run",
    "cost_per_episode": "online edit cost per shown response (tokens)",
    "auroc": "held-out AUROC on drawn reactions, minus the baseline's",
    "pearson_r": "Pearson r over policy variants",
    # a fixed policy against π₀ on the held-out prompts: the "seeds" column counts prompts
    "prompt_positivity": "positive-review reward of held-out samples, paired over held-out prompts",
}
PER_METRIC = {"gain": "held-out {} gain (final − initial)", "final": "final held-out {}"}  # e.g. gain:help
METRIC_NAMES = {"reward_argmax": "R* of the argmax of k samples", "distinct_2": "distinct-2"}  # else the key


def measure_label(measure: str) -> str:
    kind, _, metric = measure.partition(":")
    if metric and kind in PER_METRIC:
        return PER_METRIC[kind].format(METRIC_NAMES.get(metric, metric))
    return MEASURES[measure]


def known_measure(measure: str) -> bool:
    kind, _, metric = measure.partition(":")
    return measure in MEASURES or (kind in PER_METRIC and metric.isidentifier())


class ClaimsError(ValueError):
    """The claims file is malformed or names an experiment or arm that does not exist."""


@dataclass
class Claim:
    id: str
    statement: str
    experiment: str | None = None
    arm: str = ""
    baseline: str | None = None  # None: the arm's own gain over its starting policy
    source: str | None = None  # instead of an experiment: a study's JSON file, the claim's inputs under `key`
    key: str | None = None
    measure: str = "reward"
    direction: int = 1  # the paper's direction: +1 arm > baseline, -1 arm < baseline
    paper_effect: float = 0.0  # the smallest effect (in the paper's direction) the claim asserts
    primary: bool = False
    design_sd: str | None = None  # before runs finish: the claim whose measured paired SD sizes this one


@dataclass
class Claims:
    title: str
    setup: str
    claims: list[Claim] = field(default_factory=list)
    page: str = "results"  # the page's name: <page>.md and <page>.json
    sections: list[str] = field(default_factory=list)  # markdown files a study writes, appended to the page
    notes: str = ""  # what the numbers say, in words: under the verdict table


def load_claims(path: Path) -> Claims:
    try:
        raw = yaml.safe_load(path.read_text())
        claims = [Claim(**c) for c in raw["claims"]]
        result = Claims(raw["title"], raw.get("setup", ""), claims, raw.get("page", "results"),
                        [str(s) for s in raw.get("sections") or []], str(raw.get("notes") or ""))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ClaimsError(f"{path}: {exc}") from exc
    if not result.page.replace("-", "").isalnum():
        raise ClaimsError(f"{path}: page {result.page!r} must be a plain name (letters, digits, hyphens)")
    if sum(c.primary for c in claims) != 1:
        raise ClaimsError(f"{path}: exactly one claim must be primary")
    for c in claims:
        if not known_measure(c.measure):
            raise ClaimsError(f"{path}: claim {c.id}: unknown measure {c.measure!r} ({', '.join(MEASURES)}, "
                              f"or {' / '.join(PER_METRIC)}:<metric>)")
        if (c.experiment is None) == (c.source is None) or (c.source is not None and not c.key):
            raise ClaimsError(f"{path}: claim {c.id}: give either 'experiment' (with 'arm') or 'source' with 'key'")
        if c.design_sd is not None and c.design_sd not in {other.id for other in claims if other is not c}:
            raise ClaimsError(f"{path}: claim {c.id}: design_sd names {c.design_sd!r}, not another claim of this file")
    return result


def run_value(records: list[dict], measure: str) -> float | None:
    """One run's value of a measure."""
    if measure == "reward":
        return records[-1]["reward"]
    if measure == "gain":
        return records[-1]["reward"] - records[0]["reward"]
    if measure == "cost_per_episode":  # per shown response, since CoRLL shows more responses per round
        return records[-1]["cumulative_cost"] / records[-1]["queries"] if records[-1]["queries"] else None
    kind, _, metric = measure.partition(":")
    if kind in PER_METRIC and metric:
        last, first = records[-1].get(metric), records[0].get(metric)
        if last is None or (kind == "gain" and first is None):
            return None
        return last - first if kind == "gain" else last
    values = [r[measure] for r in records[1:] if r.get(measure) is not None]
    return statistics.fmean(values) if values else None


def measure_source_claim(claim: Claim, data: dict) -> dict:
    """A claim measured by a study: per-seed values against a baseline's, or Pearson r over pairs."""
    if claim.key not in data:
        raise ClaimsError(f"claim {claim.id}: {claim.source} has no entry {claim.key!r}")
    found = data[claim.key]
    entry = {"id": claim.id, "statement": claim.statement, "experiment": claim.source, "arms": [claim.key],
             "measure": claim.measure, "direction": claim.direction, "primary": claim.primary,
             "kind": found["kind"], "feedback_per_arm": found.get("feedback_per_arm", "–")}
    if found["kind"] == "correlation":
        x, y = found["x"], found["y"]
        entry |= {"seeds": found["seeds"], "planned_seeds": len(found["seeds"]), "n": len(x),
                  "labels": found["labels"], "x": x, "y": y, "sd": None}
        if len(x) < 4:
            return {**entry, "effect": None, "low": None, "high": None, "p": None}
        r = pearson_interval(x, y)
        return {**entry, "effect": r.r, "low": r.low, "high": r.high, "p": r.p_value}
    mine, theirs = found["values"], found["baseline_values"]
    seeds = sorted(set(mine) & set(theirs), key=int)
    entry |= {"seeds": [int(s) for s in seeds], "planned_seeds": found.get("planned_seeds", len(seeds))}
    if len(seeds) < 2:
        return {**entry, "effect": None, "low": None, "high": None, "p": None, "sd": None}
    comparison = paired_comparison([mine[s] for s in seeds], [theirs[s] for s in seeds])
    return {**entry, "effect": comparison.difference.mean, "low": comparison.difference.low,
            "high": comparison.difference.high, "p": comparison.p_value,
            "sd": statistics.stdev(mine[s] - theirs[s] for s in seeds)}


def arm_values(experiment: Experiment, records: dict[str, dict[int, list[dict]]], arm: str,
               measure: str) -> dict[int, float]:
    """seed -> the measure's value, over the arm's finished runs."""
    done = finished_runs(records.get(arm, {}), experiment.arms[arm])
    found = {seed: run_value(recs, measure) for seed, recs in done.items()}
    return {seed: v for seed, v in found.items() if v is not None}


def seed_tables(entries: list[dict], experiments: dict[str, Experiment]) -> list[str]:
    """Per experiment and measure its claims test: every arm's value at every planned seed, from the values the
    claims were tested on. The numbers behind each verdict, so that a note about a run need not copy them by
    hand (and cannot drift from them)."""
    tested: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for entry in entries:
        if "values" in entry:
            tested.setdefault((entry["experiment"], entry["measure"]), {}).update(entry["values"])
    lines: list[str] = []
    for (name, measure), values in tested.items():
        experiment = experiments[name]
        lines += [f"Per seed, {name}: {measure_label(measure)} of each finished run (– not finished yet):", "",
                  "| arm | " + " | ".join(f"seed {s}" for s in experiment.seeds) + " |",
                  "|---|" + "---|" * len(experiment.seeds)]
        for arm in (a for a in experiment.arms if a in values):  # the experiment's order, not the claims'
            lines.append(f"| {arm} | " + " | ".join(_num(values[arm].get(s), False) for s in experiment.seeds) + " |")
        lines.append("")
    return lines


def measure_claim(claim: Claim, experiment: Experiment) -> dict:
    """Per-seed values of the claim's measure (paired by seed with the baseline, if any) and the test."""
    for arm in filter(None, (claim.arm, claim.baseline)):
        if arm not in experiment.arms:
            raise ClaimsError(f"claim {claim.id}: {experiment.name} has no arm {arm!r}")
    records = arm_records(experiment)
    mine = arm_values(experiment, records, claim.arm, claim.measure)
    if claim.baseline is None:  # the arm's gain against its own start: a one-sample test of 0
        seeds = sorted(mine)
        theirs = {s: 0.0 for s in seeds}
    else:
        theirs = arm_values(experiment, records, claim.baseline, claim.measure)
        seeds = sorted(set(mine) & set(theirs))
    entry = {"id": claim.id, "statement": claim.statement, "experiment": experiment.name,
             "arms": [a for a in (claim.arm, claim.baseline) if a], "measure": claim.measure,
             "direction": claim.direction, "primary": claim.primary, "seeds": seeds,
             "values": {claim.arm: mine, **({claim.baseline: theirs} if claim.baseline else {})},
             "planned_seeds": len(experiment.seeds),
             "feedback_per_arm": experiment.arms[claim.arm].rounds * experiment.arms[claim.arm].batch_size}
    if len(seeds) < 2:
        return {**entry, "effect": None, "low": None, "high": None, "p": None, "sd": None}
    comparison = paired_comparison([mine[s] for s in seeds], [theirs[s] for s in seeds])
    differences = [mine[s] - theirs[s] for s in seeds]
    return {**entry, "effect": comparison.difference.mean, "low": comparison.difference.low,
            "high": comparison.difference.high, "p": comparison.p_value, "sd": statistics.stdev(differences)}


def verdict(entry: dict, alpha: float, paper_effect: float) -> str:
    """The rule of the module doc, applied to one measured claim."""
    if entry["effect"] is None and entry.get("kind") == "correlation":
        return f"inconclusive (minimum detectable effect not estimable: {entry['n']} pairs; r needs at least 4)"
    if entry["effect"] is None and entry.get("mde_basis") == "planned":
        return (f"inconclusive (minimum detectable effect {entry['mde']:.3f}, planned: {entry['planned_seeds']} seeds "
                f"if the paired SD of `{entry['design_sd']['claim']}` ({entry['design_sd']['sd']:.3f}) holds; "
                f"{len(entry['seeds'])} finished seed pair(s))")
    if entry["effect"] is None:
        return (f"inconclusive (minimum detectable effect not estimable: {len(entry['seeds'])} finished seed "
                "pair(s); a paired test needs at least 2)")
    if len(entry.get("seeds", ())) < entry.get("planned_seeds", 0):
        return (f"inconclusive (minimum detectable effect {entry['mde']:.3f}; interim: {len(entry['seeds'])} of "
                f"{entry['planned_seeds']} planned seed pairs finished)")
    d = entry["direction"]
    low, high = sorted((d * entry["low"], d * entry["high"]))  # in the paper's direction
    if entry["p_adjusted"] < alpha and low > 0:
        return "reproduced"
    if high < paper_effect or high <= 0:  # every effect the paper asserts lies outside the interval
        return "not reproduced"
    return f"inconclusive (minimum detectable effect {entry['mde']:.3f})"


def detectable_effect(entry: dict, stand_in: dict | None, planned_level: float) -> dict:
    """The claim's minimum detectable effect at 80% power: from its own runs' SD where they give one, else the
    planned design's (its planned seeds) under the SD of the claim named as `design_sd`, else none."""
    if entry.get("kind") == "correlation":
        mde = correlation_mde(entry["n"], entry["alpha"])
    elif entry["sd"] is not None:
        mde = minimum_detectable_effect(entry["sd"], len(entry["seeds"]), entry["alpha"])
    elif stand_in is not None and stand_in.get("sd") is not None:
        return {"mde": minimum_detectable_effect(stand_in["sd"], entry["planned_seeds"], planned_level),
                "mde_basis": "planned", "design_sd": {"claim": stand_in["id"], "sd": stand_in["sd"]}}
    else:
        mde = None
    return {"mde": mde, "mde_basis": None if mde is None else "measured"}


def judge(claims: Claims, experiments: dict[str, Experiment] | None = None) -> list[dict]:
    """Measure every claim, correct the secondary ones together (Holm), and give each its verdict.

    `experiments` (by the path claims name them with) are loaded here when the caller has not already."""
    experiments = {} if experiments is None else experiments
    entries = []
    for claim in claims.claims:
        if claim.source is not None:
            path = Path(claim.source)  # not written yet: no estimate, like an experiment with no finished runs
            data = (json.loads(path.read_text()) if path.exists()
                    else {claim.key: {"kind": "seeds", "values": {}, "baseline_values": {}}})
            entries.append(measure_source_claim(claim, data))
            continue
        if claim.experiment not in experiments:
            experiments[claim.experiment] = load_experiment(Path(claim.experiment))
        entries.append(measure_claim(claim, experiments[claim.experiment]))
    secondary = {e["id"]: e["p"] for e in entries if not e["primary"] and e["p"] is not None}
    family = max(sum(not claim.primary for claim in claims.claims), 1)  # every secondary claim planned
    adjusted = holm(secondary, family)
    by_id = {entry["id"]: entry for entry in entries}
    for claim, entry in zip(claims.claims, entries):
        entry["p_adjusted"] = entry["p"] if claim.primary else adjusted.get(claim.id)
        # The MDE at the level the claim is tested at: α for the primary, α/m (Holm's strictest step over the
        # planned family) otherwise; the same level sizes a design planned before its runs.
        entry["alpha"] = ALPHA if claim.primary else ALPHA / family
        entry.update(detectable_effect(entry, by_id.get(claim.design_sd), entry["alpha"]))
        entry["paper_effect"] = claim.paper_effect
        entry["interval"] = None if entry["effect"] is None else [entry["low"], entry["high"]]  # 95%, as a pair
        entry["verdict"] = verdict(entry, ALPHA, claim.paper_effect)
    return entries


def _num(value: float | None, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def mde_cell(entry: dict) -> str:
    """The measured minimum detectable effect, or the planned design's (marked) before runs finish."""
    if entry.get("mde_basis") == "planned":
        return f"{entry['mde']:.3f} (planned)"
    return _num(entry["mde"], False)


def verdict_table(entries: list[dict]) -> str:
    lines = ["| claim | arms | measure | seeds | feedback/arm | effect [95% CI] | p | Holm p | MDE (80%) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        interval = "–" if e["effect"] is None else f"{e['effect']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
        holm_p = "primary" if e["primary"] else _num(e["p_adjusted"], False)
        if "kind" in e:  # a study's entry: named by its key; a correlation's sample is its pairs
            arms, seeds = f"`{e['arms'][0]}`", f"{e['n']} variants" if e["kind"] == "correlation" else len(e["seeds"])
        else:
            arms, seeds = " vs ".join(e["arms"]) if len(e["arms"]) > 1 else e["arms"][0] + " (gain)", len(e["seeds"])
        lines.append(f"| {e['statement']} | {arms}"
                     f" | {measure_label(e['measure'])} | {seeds} | {e['feedback_per_arm']} | {interval} | "
                     f"{_num(e['p'], False)} | {holm_p} | {mde_cell(e)} | {e['verdict']} |")
    return "\n".join(lines)


def sizing(entry: dict, effects: tuple[float, ...] = (0.05, 0.1, 0.2)) -> dict:
    """From the seeds so far: the paired SD and the seeds a powered test of each effect needs."""
    if entry["sd"] is None:
        return {}
    return {"sd": entry["sd"], "seeds": len(entry["seeds"]),
            "needed": {f"{e:g}": seeds_needed(entry["sd"], e, entry["alpha"]) for e in effects}}


def finite(value):
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def relinked(markdown: str, source: Path, page_dir: Path) -> str:
    """Markdown written in folder `source`, its relative links and images made to work from `page_dir`."""

    def fix(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        return f"{text}({os.path.relpath(source / target, page_dir)})"

    return re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", fix, markdown)


def write_results(claims_path: Path, out: Path, data: Path = Path("results/verdicts")) -> tuple[Path, Path]:
    """<out>/<page>.md, the page people read, and <data>/<page>.json, its numbers (the claims file's
    `page`, default results), from the claims file and whatever runs exist. Figures stay beside the
    runs that drew them (each experiment's folder) and the page links them there. Paths in claims and
    experiment files are relative to the working directory, the repository root."""

    from corll.experiment_results import aggregate, results_markdown

    claims = load_claims(claims_path)
    experiments = {name: load_experiment(Path(name))
                   for name in dict.fromkeys(c.experiment for c in claims.claims if c.experiment)}
    entries = judge(claims, experiments)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    sections, costs = [], {}
    for name, experiment in experiments.items():
        result = aggregate(experiment)
        costs[experiment.name] = compute_cost(experiment)
        table = results_markdown(experiment, result)
        for figure in experiment.figures:
            link = f"![{figure}]({figure}.png)"
            if not result["arms"]:
                table = table.replace(link, f"_{figure}: no runs yet._")
                continue
            where = os.path.relpath(experiment.out / f"{figure}.png", out)
            table = table.replace(link, f"![{figure}]({where})")
        cost = costs[experiment.name]
        table = table.replace(f"# {experiment.name}\n", f"## {experiment.name}\n\nConfig `{name}`; "
                              f"{cost_line(cost)}.\n", 1)
        sections.append(table)
    primary = next(e for e in entries if e["primary"])
    size = sizing(primary)
    report = {"title": claims.title, "alpha": ALPHA, "power": POWER, "claims": entries, "compute": costs,
              "primary_sizing": size}
    json_path = data / f"{claims.page}.json"
    json_path.write_text(json.dumps(finite(report), indent=2) + "\n")
    lines = [f"# {claims.title}", "", claims.setup.strip(), "", "## Verdicts", "",
             (f"One primary test (α = {ALPHA}); every other claim is secondary, its p-value Holm-corrected across "
             "this page over every claim planned, one not yet tested counting as p = 1. \"Reproduced\" needs the "
             "corrected test to reject and the 95% interval to exclude 0 in the paper's direction; \"not "
             "reproduced\" needs the interval to exclude the paper's effect; "
             "otherwise \"inconclusive\" with the minimum detectable effect (80% power, paired t over the seeds "
             "finished, at the claim's level), also while fewer than two seed pairs have finished (no estimate) and, "
             "marked interim, until the experiment's planned seeds have all finished. Generated by `corll verdicts` from "
             f"`{claims_path.as_posix()}`; the same numbers are in "
             f"[{json_path.name}]({os.path.relpath(json_path, out)})."), "",
             verdict_table(entries), "", *seed_tables(entries, {e.name: e for e in experiments.values()})]
    if claims.notes.strip():
        lines += [claims.notes.strip(), ""]
    if size:
        needed = ", ".join(f"{k}: {v if v is not None else '> 200'}" for k, v in size["needed"].items())
        lines += ["## Sizing the primary test", "",
                  (f"Paired SD of the primary measure over {size['seeds']} seeds: {size['sd']:.3f}. Seeds a paired "
                  f"t-test needs for 80% power at α = {ALPHA}, by true effect: {needed}."), ""]
    lines += sections
    for extra in claims.sections:
        path = Path(extra)
        lines += [relinked(path.read_text().strip(), path.parent, out) if path.exists()
                  else f"_{extra}: not written yet (run its study)._", ""]
    md_path = out / f"{claims.page}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path
