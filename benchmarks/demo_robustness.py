"""How often the main job shows what it exists to show: the demo (`scripts/demo.sh`, exactly as a new
user runs it, set-up included) at several seeds, and per seed whether CoRLL ends ahead of dueling at
equal feedback with a paired interval that excludes 0.

    .venv/bin/python benchmarks/demo_robustness.py --seeds 0,1,2,3,4

Each seed is one demo run into `results/demo-robustness/<cpu>/seed-<s>/` (metrics, configs, summaries
and comparisons are kept; weights and checkpoints are not). A finished seed is not run again and an
interrupted one resumes from its checkpoint, so the benchmark can be stopped and restarted; a resumed
seed's wall time is not reported. Writes `table.md`, `results.json` and `robustness.png` beside the
runs, headed by the CPU they ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corll.hardware import detect, machine_tag  # noqa: E402
from corll.report import comparison_rows, summary_rows  # noqa: E402


def run_seed(folder: Path, seed: int, precision: str) -> float | None:
    """Run the demo at `seed` into `folder` (resuming it if it was interrupted); its wall time in seconds,
    None when it resumed (the time of a part says nothing about the whole)."""
    resuming = (folder / "config.json").exists()
    command = ["bash", str(ROOT / "scripts" / "demo.sh"), "--seed", str(seed), "--out", str(folder),
               "--precision", precision]
    started = time.perf_counter()
    subprocess.run(command + (["--resume"] if resuming else []), check=True, cwd=ROOT)
    return None if resuming else round(time.perf_counter() - started, 1)


def finished(folder: Path) -> bool:
    summary = folder / "summary.json"
    return (folder / "comparisons.json").exists() and summary.exists() and \
        {"corll", "dueling"} <= json.loads(summary.read_text()).keys()


def seed_row(folder: Path, seed: int, wall: float | None) -> dict:
    rows = {row["label"]: row for row in summary_rows([folder])}
    [compared] = [c for c in comparison_rows([folder]) if c["label"] == "corll − dueling"]
    summary = json.loads((folder / "summary.json").read_text())
    return {"seed": seed, "wall_s": wall, "gain_corll": rows["corll"]["gain"][0], "gain_dueling": rows["dueling"]["gain"][0],
            "kl_corll": rows["corll"]["kl"], "kl_dueling": rows["dueling"]["kl"],
            "difference": compared["difference"], "low": compared["low"], "high": compared["high"],
            "p_value": compared["p_value"], "prompts": compared["n"], "feedback": compared["feedback"],
            "holds": compared["low"] > 0,
            "monitor_flags": {name: summary[name].get("monitor_flags", []) for name in ("corll", "dueling")}}


def render(hardware: dict, precision: str, rows: list[dict], over_seeds: dict | None) -> str:
    holds = sum(r["holds"] for r in rows)
    lines = [f"# The demo's claim over seeds — {hardware['cpu']} ({hardware['capability']}, "
             f"native bf16: {'yes' if hardware['native_bf16'] else 'no'}, {hardware['cpus']} CPUs), {precision}", "",
             "Each row is one run of `scripts/demo.sh --seed S` (48 preferences per algorithm). The claim holds at a "
             "seed when CoRLL's final held-out R* minus dueling's, paired over the held-out prompts (same prompts, "
             "same sampling seed), has a 95% interval above 0.", "",
             "| seed | wall | feedback (CoRLL vs dueling) | ΔR* CoRLL | ΔR* dueling | CoRLL − dueling [95% CI] | p "
             "| holds | KL CoRLL / dueling | monitor flags |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] is not None else "resumed"
        flags = "; ".join(f"{n}: {f}" for n, fs in r["monitor_flags"].items() for f in fs) or "none"
        lines.append(f"| {r['seed']} | {wall} | {r['feedback'][0]:.0f} vs {r['feedback'][1]:.0f} | "
                     f"{r['gain_corll']:+.3f} | {r['gain_dueling']:+.3f} | {r['difference']:+.3f} "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p_value']:.2g} | {'yes' if r['holds'] else 'no'} | "
                     f"{r['kl_corll']:.1f} / {r['kl_dueling']:.1f} | {flags} |")
    lines += ["", f"**The claim held at {holds} of {len(rows)} seeds.**"]
    if over_seeds:
        lines.append(f"Over seeds (paired by seed, n = {over_seeds['n']}): CoRLL − dueling "
                     f"{over_seeds['difference']:+.3f} [{over_seeds['low']:+.3f}, {over_seeds['high']:+.3f}], "
                     f"p = {over_seeds['p_value']:.2g}.")
    walls = [r["wall_s"] for r in rows if r["wall_s"] is not None]
    if walls:
        lines.append(f"Wall time per demo (set-up already done): median "
                     f"{statistics.median(walls) / 60:.1f} min, longest {max(walls) / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    seeds = [r["seed"] for r in rows]
    means = [r["difference"] for r in rows]
    errors = [[m - r["low"] for m, r in zip(means, rows)], [r["high"] - m for m, r in zip(means, rows)]]
    ax.errorbar(seeds, means, yerr=errors, fmt="o", capsize=4)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(seeds)
    ax.set_xlabel("seed")
    ax.set_ylabel("CoRLL − dueling, held-out R*")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo-robustness",
                        help="results folder; a subfolder per kind of CPU (and precision, when not auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the demo's --precision (auto: what a new user gets)")
    args = parser.parse_args()
    hardware = detect().as_dict()
    out = args.out / (machine_tag(hardware["cpu"], hardware["capability"])
                      + ("" if args.precision == "auto" else f"-{args.precision}"))
    out.mkdir(parents=True, exist_ok=True)
    walls_file = out / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        folder = out / f"seed-{seed}"
        if not finished(folder):
            print(f"demo at seed {seed} -> {folder}", flush=True)
            walls[str(seed)] = run_seed(folder, seed, args.precision)
            walls_file.write_text(json.dumps(walls, indent=2) + "\n")
    rows = [seed_row(out / f"seed-{s}", s, walls.get(str(s))) for s in seeds]
    folders = [out / f"seed-{s}" for s in seeds]
    precision = json.loads((folders[0] / "config.json").read_text())["hardware"]["precision"]
    over_seeds = next((c for c in comparison_rows(folders) if c["label"] == "corll − dueling"), None) \
        if len(seeds) > 1 else None
    (out / "results.json").write_text(json.dumps({"hardware": hardware, "precision": precision, "seeds": rows,
                                                  "over_seeds": over_seeds},
                                                 indent=2) + "\n")
    table = render(hardware, precision, rows, over_seeds)
    (out / "table.md").write_text(table)
    plot(rows, out / "robustness.png", f"{hardware['cpu']} ({hardware['capability']}), {precision}: the claim "
                                       f"held at {sum(r['holds'] for r in rows)} of {len(rows)} seeds")
    print(table)


if __name__ == "__main__":
    main()
