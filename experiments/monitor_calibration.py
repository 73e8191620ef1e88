"""How often would the gate's monitor flag a candidate that is no different from the serving version?

    .venv/bin/python experiments/monitor_calibration.py results/deployment-early/deployment-results.json --out docs/monitor-calibration.md

The gate compares 8 drafts of each version (2 held-out prompts × 4 samples). Here both "versions" are
the base model: two groups of 8 drafts drawn at random from the same user's drafts of a deployment
run's static arm (different prompts and seeds, so the spread is wider than the gate's, which uses the
same prompts and seeds for both). For each rule the table gives the quantiles of the change and the
share of draws it flags: the false-alarm rate on a candidate that changed nothing.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from corll.hardware import detect
from corll.service.learn import gate_monitor
from corll.monitor import MonitorThresholds
from corll.objectives import distinct_n, looping, repeated_phrase_rate

REACTIONS, GATE = MonitorThresholds(), gate_monitor()
RULES = {  # measure, whether a rise (+1) or a fall (-1) is flagged, the threshold, and whether the gate checks it
    "repeated phrases (share of drafts)": (repeated_phrase_rate, +1, REACTIONS.repetition_rise, False),
    "looping (mean share of repeated trigrams)": (looping, +1, GATE.looping_rise, True),
    "distinct-2": (distinct_n, -1, GATE.collapse_drop, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a deployment results JSON (experiments/deployment.py)")
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--group", type=int, default=8, help="drafts per version, as the gate sees them")
    parser.add_argument("--out", type=Path, default=Path("docs/monitor-calibration.md"))
    args = parser.parse_args()
    by_user: dict[str, list[str]] = {}
    for row in json.loads(args.results.read_text())["static"]["rows"]:
        by_user.setdefault(row["user"], []).append(row["draft"])
    rng = random.Random(0)
    changes = {name: [] for name in RULES}
    for _ in range(args.draws):
        drafts = by_user[rng.choice(sorted(by_user))]
        serving, candidate = rng.sample(drafts, args.group), rng.sample(drafts, args.group)
        for name, (measure, sign, _, _) in RULES.items():
            changes[name].append(sign * (measure(candidate) - measure(serving)))
    hw = detect()
    lines = [f"**{hw.cpu}**; drafts from `{args.results.name}` (static arm: the base model), "
             f"{args.draws} draws of two groups of {args.group} drafts from one user.", "",
             "| rule (change in the flagged direction) | median | 99% | 99.9% | max | threshold | flagged |",
             "|---|---|---|---|---|---|---|"]
    for name, values in changes.items():
        values.sort()
        at = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        _, _, threshold, in_gate = RULES[name]
        flagged = sum(v >= threshold for v in values) / len(values)
        gate_rule = " (gate)" if in_gate else ""
        lines.append(f"| {name} | {at(0.5):+.3f} | {at(0.99):+.3f} | {at(0.999):+.3f} | {values[-1]:+.3f} | "
                     f"{threshold:.2f}{gate_rule} | {flagged:.1%} |")
    lines += ["", "(gate): a rule of `corll.service.learn.gate_monitor`. The repeated-phrase rule is the reactions monitor's; "
              "the gate records that share and no longer checks it."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
