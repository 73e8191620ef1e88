"""Seed 004 on SmolLM2-135M-Instruct and `assistant-reactions`: every number of docs/reactions.md.

    .venv/bin/python experiments/reactions.py [--out runs/reactions] [--figures docs/figures]

Stages, each saved to OUT/<stage>.json and skipped when that file exists (so an interrupted
study resumes; the RLUF runs resume from their checkpoints):

1. reward-model — P[Love] trained on the task's logged reactions to π_0 (the task trains and
   caches it on first use), and the same training on the other feature sets; held-out AUROC and
   ECE on fresh π_0 answers to the test requests, against drawn reactions and against the
   panel's true love probability; a reliability plot.
2. rluf-*, rloo-* — online RLUF (best-vs-worst of n DPO) at a balanced and a love-only
   weighting, and RLOO at the balanced one, with the reward-hacking monitor's flags.
3. kto, kto-low-lr — KTO trained offline on exactly the reaction log the reward model was
   trained on (equal feedback), at RLUF's learning rate and at a fifth of it, evaluated like
   the RLUF runs.
4. variants — offline mean P[Love] vs simulated online love rate over policy variants
   (π_0 under different system prompts, and the trained policies): Pearson r.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr

from corll.learners import KTOConfig, KTOLearner
from corll.learners.kto import Reaction
from corll.metrics import auroc, expected_calibration_error, reliability_bins
from corll.reward_model import (FEATURE_SETS, RewardModel, RewardModelConfig, plot_reliability, reward_features,
                                 train_reward_model)
from corll.simulate import SimulationConfig, build_policy, evaluate, run_simulation
from corll.tasks import load_task
from corll.tasks.reactions import cached_reward_model_path, read_reaction_log, reaction_log_path

BASE = SimulationConfig(task="assistant-reactions", rounds=10, batch_size=8, k=4, lr=5e-4, beta=0.1,
                        max_new_tokens=32, eval_every=5, eval_prompts=30, eval_samples=2, checkpoint_every=5)
WEIGHTS = {"balanced": "love=5,help=1,safe=1", "love-only": "love=1"}
# run name -> (update, weighting, settings beyond BASE): the two weightings with RLUF's DPO update, RLOO at
# the balanced one, and both weightings again optimized harder (4× the learning rate, twice the rounds)
STRONG = {"lr": 2e-3, "rounds": 20, "eval_every": 10, "checkpoint_every": 5}
RUNS = {"rluf-balanced": ("rluf", "balanced", {}), "rluf-love-only": ("rluf", "love-only", {}),
        "rloo-balanced": ("rloo", "balanced", {}),
        "rluf-balanced-strong": ("rluf", "balanced", STRONG), "rluf-love-only-strong": ("rluf", "love-only", STRONG)}
HELD_OUT_SAMPLES = 8  # π_0 answers per test request for the reward model's held-out evaluation
REACTION_DRAWS = 20  # reactions drawn per held-out answer: a low-noise estimate of AUROC on reactions
VARIANT_SAMPLES = 3
SYSTEM_PROMPTS = {
    "plain": None,
    "warm": "You are a warm, upbeat assistant. Answer helpfully and kindly.",
    "emoji": "Answer enthusiastically and add a fitting emoji.",
    "closing": "Answer helpfully and end with a friendly closing such as 'Hope this helps!'",
    "terse": "Answer in as few words as possible.",
    "off-topic": "Ignore the question and talk about the weather instead.",
    "rude": "You are a grumpy assistant. Answer curtly and sound annoyed.",
}
EXAMPLE_PROMPTS = 4


def stage(out: Path, name: str, compute) -> dict:
    path = out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"== {name}", file=sys.stderr)
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def draws(probabilities: list[float], times: int, seed: int) -> tuple[list[float], list[int]]:
    """Each answer's probability repeated `times`, with one Bernoulli reaction per copy."""
    rng = random.Random(seed)
    ps = [p for p in probabilities for _ in range(times)]
    return ps, [int(rng.random() < p) for p in ps]


def reward_model_stage(policy, task, figures: Path) -> dict:
    """The task's P[Love] model, and the same training on the two other feature sets, on fresh held-out answers."""
    train_xs, train_ys, train_labels = read_reaction_log(reaction_log_path(policy))
    prompts = task.test_prompts
    with torch.random.fork_rng():
        torch.manual_seed(2024)
        samples = policy.sample(prompts, HELD_OUT_SAMPLES, use_reference=True)
    xs = [x for x in prompts for _ in range(HELD_OUT_SAMPLES)]
    ys = [y for s in samples for y in s]
    truth = task.reward(xs, ys)  # the panel's love probability (a random user reacts to each answer)
    repeated, labels = draws(truth, REACTION_DRAWS, seed=5)
    one_draw = labels[::REACTION_DRAWS]
    feature_sets = {}
    for kind in FEATURE_SETS:
        rm = (RewardModel.load(cached_reward_model_path(policy, kind)) if kind == RewardModelConfig().features else
              train_reward_model(reward_features(train_xs, train_ys, kind), train_labels, RewardModelConfig(features=kind)))
        predicted = rm.predict(xs, ys)
        predicted_rep = [p for p in predicted for _ in range(REACTION_DRAWS)]
        feature_sets[kind] = {
            "auroc": auroc(predicted_rep, labels), "ece": expected_calibration_error(predicted_rep, labels, 10),
            "auroc_one_draw": auroc(predicted, one_draw) if 0 < sum(one_draw) < len(one_draw) else None,
            "mean_prediction": statistics.fmean(predicted),
            "pearson_vs_true_probability": pearsonr(predicted, truth).statistic,
            "spearman_vs_true_probability": spearmanr(predicted, truth).statistic}
        if kind == RewardModelConfig().features:
            bins = [dataclasses.asdict(b) for b in reliability_bins(predicted_rep, labels, 10)]
            plot_reliability(bins, figures / "reactions-reliability.png", f"P[Love], {len(ys)} held-out answers")
    return {
        "train_log": {"answers": len(train_labels), "loves": sum(train_labels),
                      "base_rate": sum(train_labels) / len(train_labels)},
        "held_out_answers": len(ys), "reaction_draws": REACTION_DRAWS, "loves_one_draw": sum(one_draw),
        "true_love_rate": statistics.fmean(truth),
        "oracle_auroc": auroc(repeated, labels),  # ranking by the true probability: the ceiling
        "features": RewardModelConfig().features, "feature_sets": feature_sets, "bins": bins,
        **feature_sets[RewardModelConfig().features],
    }


def rluf_stage(out: Path, base: SimulationConfig, name: str) -> dict:
    algorithm, weighting, settings = RUNS[name]
    config = dataclasses.replace(base, algorithms=[algorithm], weights=WEIGHTS[weighting], **settings)
    summary = run_simulation(config, out / name, resume=(out / name).exists())
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {"algorithm": algorithm, "weights": WEIGHTS[weighting], "summary": summary[algorithm], "curve": records,
            "adapter": str(out / name / "policies" / algorithm)}


def kto_stage(out: Path, base: SimulationConfig, task, name: str, lr: float) -> dict:
    """KTO on the same logged reactions the reward model saw: one epoch, batches of 16."""
    policy = build_policy(base)
    xs, ys, labels = read_reaction_log(reaction_log_path(policy))
    examples = [Reaction(x, y, bool(v)) for x, y, v in zip(xs, ys, labels)]
    random.Random(0).shuffle(examples)
    learner = KTOLearner(policy, KTOConfig(beta=base.beta, lr=lr))
    before = evaluate(policy, task, base)
    for start in range(0, len(examples), 16):
        learner.step(examples[start:start + 16])
    after = evaluate(policy, task, base)
    adapter = out / f"{name}-adapter"
    policy.model.save_pretrained(adapter)
    return {"lr": lr, "feedback": len(examples), "loves": sum(labels), "steps": -(-len(examples) // 16),
            "before": before, "after": after, "adapter": str(adapter)}


def variant_row(policy, task, rm: RewardModel, system: str | None, seed: int) -> dict:
    prompts = task.test_prompts
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = policy.sample(prompts, VARIANT_SAMPLES, system=system)
    xs = [x for x in prompts for _ in range(VARIANT_SAMPLES)]
    ys = [y for s in samples for y in s]
    truth = task.reward(xs, ys)
    _, drawn = draws(truth, 1, seed=seed)
    return {"offline_p_love": statistics.fmean(rm.predict(xs, ys)), "online_love_rate": statistics.fmean(truth),
            "drawn_love_rate": statistics.fmean(drawn), "answers": len(ys),
            "examples": [{"request": x, "response": s[0]} for x, s in zip(prompts[:EXAMPLE_PROMPTS], samples)]}


def variants_stage(policy, base: SimulationConfig, task, adapters: dict[str, str], figures: Path) -> dict:
    rm = RewardModel.load(cached_reward_model_path(policy))
    rows = {f"π_0 {name}": variant_row(policy, task, rm, system, seed=300 + i)
            for i, (name, system) in enumerate(SYSTEM_PROMPTS.items())}
    for i, (name, adapter) in enumerate(adapters.items()):
        trained = build_policy(dataclasses.replace(base, init_adapter=adapter))
        rows[name] = variant_row(trained, task, rm, None, seed=400 + i)
    offline = [r["offline_p_love"] for r in rows.values()]
    online = [r["online_love_rate"] for r in rows.values()]
    drawn = [r["drawn_love_rate"] for r in rows.values()]
    plot_variants(rows, figures / "reactions-offline-online.png")
    return {"variants": rows, "pearson_r": pearsonr(offline, online).statistic,
            "pearson_r_drawn": pearsonr(offline, drawn).statistic,
            "spearman_rho": spearmanr(offline, online).statistic}


def plot_variants(rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, r in rows.items():
        ax.scatter(r["offline_p_love"], r["online_love_rate"])
        ax.annotate(name, (r["offline_p_love"], r["online_love_rate"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")  # the prompted variants sit within a point of each other; trained ones far away
    ax.set_yscale("log")
    ax.set_xlabel("offline: mean P[Love] of the reward model")
    ax.set_ylabel("online: simulated love rate")
    ax.set_title("Offline reward model vs online behaviour, per policy variant")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_rluf(runs: dict[str, dict], kto: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("reward", "true love rate"), ("love_model", "P[Love] (reward model)"), ("help", "helpfulness"),
               ("distinct_2", "distinct-2")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    for label, run in runs.items():
        rounds = [r["round"] for r in run["curve"]]
        for ax, (key, _) in zip(axes, metrics):
            ax.plot(rounds, [r[key] for r in run["curve"]], marker="o", label=label)
    for ax, (key, title) in zip(axes, metrics):
        ax.axhline(kto["after"][key], color="grey", linestyle="--", label="KTO (same log)")
        ax.set_title(title)
        ax.set_xlabel("round")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reactions"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--model", default=BASE.model, help="smollm2-135m-instruct, or tiny for a smoke run")
    parser.add_argument("--rounds", type=int, default=BASE.rounds, help="RLUF rounds per weighting")
    args = parser.parse_args()
    base = dataclasses.replace(BASE, model=args.model, rounds=args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    policy = build_policy(base)
    task = load_task(base.task, policy)  # trains and caches P[Love] on first use
    results = {"reward_model": stage(args.out, "reward-model", lambda: reward_model_stage(policy, task, args.figures))}
    runs = {name: stage(args.out, name, lambda name=name: rluf_stage(args.out, base, name)) for name in RUNS}
    kto = stage(args.out, "kto", lambda: kto_stage(args.out, base, task, "kto", base.lr))
    plot_rluf(runs, kto, args.figures / "reactions-rluf.png")
    adapters = {name: runs[name]["adapter"] for name in RUNS if name.startswith("rluf")}
    adapters["KTO"] = kto["adapter"]
    # KTO again with a fifth of the learning rate: at RLUF's rate its 45 steps drifted far from π_0
    kto_low = stage(args.out, "kto-low-lr", lambda: kto_stage(args.out, base, task, "kto-low-lr", base.lr / 5))
    results |= {"rluf": runs, "kto": kto, "kto_low_lr": kto_low,
                "variants": stage(args.out, "variants", lambda: variants_stage(policy, base, task, adapters,
                                                                           args.figures))}
    (args.out / "reactions.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({"auroc": results["reward_model"]["auroc"], "ece": results["reward_model"]["ece"],
                      "r": results["variants"]["pearson_r"]}, indent=1))


if __name__ == "__main__":
    main()
