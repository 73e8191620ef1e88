"""Learning from reactions on SmolLM2-135M-Instruct: the reward-model and offline–online evidence of docs/reactions.md.

    .venv/bin/python experiments/reactions.py [--out results/reactions] [--seeds 0,1,2]

The RLUF runs are an experiment of their own (`corll experiment experiments/reactions-rluf.yaml`);
this script measures what the runs cannot, and writes `OUT/study.json`, which
`corll verdicts experiments/claims-reactions.yaml` reads beside the runs. Stages, each saved to
OUT/<stage>.json and skipped when present (an interrupted study resumes):

1. rm-seed-<s> — an independent reaction log per seed (π₀'s answers to the 89 training requests,
   8 each, and the simulated panel's reactions), and two P[Love] models trained on it: the
   well-specified one (an MLP on the five text features the users' tastes are built from) and a
   misspecified one (logistic regression on MiniLM embeddings of request and answer, weight decay
   chosen by 4-fold cross-validation). Both are evaluated on one fixed set of fresh π₀ answers to
   the 30 held-out requests against drawn reactions and against the panel's true love probability.
2. variants — policy variants: π₀ under system prompts, and the finished RLUF runs of
   results/reactions-rluf. Each answers every held-out request 4 times; its online love rate is
   drawn from IMPRESSIONS simulated impressions (a random answer, a random panel user, one
   reaction), beside the expected rate; its offline score is the mean P[Love] under the
   *evaluation* reward models — those of seeds other than 0, whose logs no variant was trained
   against (the RLUF runs optimize the task's model, trained on seed 0's log).
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
from scipy.stats import pearsonr

from corll.classification import auroc, expected_calibration_error, reliability_bins
from corll.reward_model import (RewardModel, RewardModelConfig, cross_validated, plot_reliability, reward_features,
                                 train_reward_model)
from corll.simulate import SimulationConfig, build_policy
from corll.stats import pearson_interval, wilson_interval
from corll.tasks import load_task
from corll.tasks.reactions import cached_reaction_log, split_requests

BASE = SimulationConfig(task="assistant-reactions", model="smollm2-135m-instruct", max_new_tokens=32)
RLUF_RESULTS = Path("results/reactions-rluf")
WELL_SPECIFIED = RewardModelConfig(features="text")
MISSPECIFIED = RewardModelConfig(features="embeddings", hidden=0)
HELD_OUT_SAMPLES = 8  # π₀ answers per held-out request for the reward models' evaluation
REACTION_DRAWS = 20  # reactions drawn per held-out answer: a low-noise AUROC on reactions
VARIANT_SAMPLES = 4
PAPER_AUROC = 0.85  # the paper's offline AUROC of its P[Love] model
IMPRESSIONS = 1000  # drawn reactions per variant: about 40 loves at π₀'s rate, what a small A/B arm sees
SYSTEM_PROMPTS = {
    "plain": None,
    "warm": "You are a warm, upbeat assistant. Answer helpfully and kindly.",
    "emoji": "Answer enthusiastically and add a fitting emoji.",
    "closing": "Answer helpfully and end with a friendly closing such as 'Hope this helps!'",
    "terse": "Answer in as few words as possible.",
    "off-topic": "Ignore the question and talk about the weather instead.",
    "rude": "You are a grumpy assistant. Answer curtly and sound annoyed.",
    "expert": "You are a precise expert. Give concrete, specific steps and facts.",
    "cheerful": "You are cheerful and encouraging. Use lots of positive words!",
    "formal": "Answer in a formal, neutral, impersonal tone.",
    "long": "Give a detailed, thorough answer with several points.",
    "question": "Answer with a question back to the user before helping.",
    "sad": "You are a gloomy assistant who finds everything a bit depressing.",
    "list": "Answer as a short bulleted list.",
    # added to narrow the offline-online interval over variants no reward model was trained against;
    # each varies what a user may care about (tone, length, emoji, closing, relevance) another way
    "one-line": "Answer in one short sentence.",
    "two-paragraphs": "Answer in two full paragraphs.",
    "many-emoji": "Use several emojis in your answer.",
    "plain-text": "Answer in plain text, without emoji or exclamation marks.",
    "thanks": "Answer, then close with 'Thanks for asking!'",
    "cheers": "Answer helpfully and sign off with 'Cheers!'",
    "more-help": "End your answer by offering more help, for example 'Let me know if you need anything else!'",
    "enthusiastic": "Be extremely enthusiastic and excited in your answer!",
    "apologetic": "Apologize a lot while answering.",
    "worried": "Sound worried and cautious, and warn about everything that could go wrong.",
    "neutral": "Answer factually, without any emotion.",
    "pirate": "Answer like a pirate.",
    "poem": "Answer in the form of a short poem.",
    "child": "Explain it as if to a five-year-old.",
    "sarcastic": "Answer sarcastically.",
    "compliment": "Start by complimenting the user on their great question.",
    "restate": "First restate the question, then answer it.",
    "recipe": "Whatever the question, share a cookie recipe instead.",
    "decline": "Politely decline to answer.",
    "steps": "Answer with numbered steps.",
    "one-liner-why": "Give the answer in one line, then one line of explanation.",
    "coach": "Answer like a motivational coach who encourages the user.",
    "tired": "You are exhausted and answer with minimal effort.",
    "warm-emoji-closing": "Answer warmly, add an emoji, and end with a friendly closing line.",
    "angry": "You are angry at the user for asking.",
    "hopeful": "Answer with hope and optimism about how things will turn out.",
}


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


def sample_answers(policy, prompts: list[str], per_prompt: int, seed: int, system: str | None = None):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = policy.sample(prompts, per_prompt, system=system)
    return [x for x in prompts for _ in range(per_prompt)], [y for s in samples for y in s], samples


def held_out_set(policy, task) -> dict:
    """Fresh π₀ answers to the held-out requests, their true love probability and drawn reactions."""
    xs, ys, _ = sample_answers(policy, task.test_prompts, HELD_OUT_SAMPLES, seed=2024)
    truth = task.reward(xs, ys)
    rng = random.Random(5)
    labels = [[int(rng.random() < p) for _ in range(REACTION_DRAWS)] for p in truth]
    return {"prompts": xs, "responses": ys, "truth": truth, "labels": labels}


def reward_models(out: Path, policy, task, train: list[str], seed: int) -> tuple[dict[str, RewardModel], dict]:
    """Both P[Love] models on seed `seed`'s log, trained once and kept in OUT/models (retrained, identically,
    where a fresh clone lacks the weights), and the settings each was trained with."""
    xs, ys, labels = cached_reaction_log(policy, train, task.react, seed)
    models, settings = {}, {}
    for name, config in (("well-specified", WELL_SPECIFIED), ("misspecified", MISSPECIFIED)):
        path = out / "models" / f"rm-seed-{seed}-{name}.pt"
        config = dataclasses.replace(config, seed=seed)
        if path.exists():
            models[name] = RewardModel.load(path)
            config = dataclasses.replace(config, **RewardModel.details(path)["config"])
        else:
            features = reward_features(xs, ys, config.features)
            if config.hidden == 0:
                config = cross_validated(features, labels, config)
            models[name] = train_reward_model(features, labels, config)
            models[name].save(path, details={"config": {"weight_decay": config.weight_decay}})
        settings[name] = {"features": config.features, "hidden": config.hidden, "weight_decay": config.weight_decay}
    return models, {"answers": len(labels), "loves": sum(labels), "settings": settings}


def repeated(values: list[float]) -> list[float]:
    """One value per drawn reaction: each held-out answer's, REACTION_DRAWS times."""
    return [v for v in values for _ in range(REACTION_DRAWS)]


def drawn(held: dict) -> list[int]:
    """The held-out set's drawn reactions, in the order `repeated` lays out each answer's values."""
    return [v for row in held["labels"] for v in row]


def rm_stage(out: Path, policy, task, train: list[str], held: dict, seed: int) -> dict:
    """Seed `seed`'s log, both reward models trained on it, and their held-out scores."""
    models, log = reward_models(out, policy, task, train, seed)
    reactions = drawn(held)
    result = {"seed": seed, "log": {"answers": log["answers"], "loves": log["loves"]}, "models": {},
              "oracle_auroc": auroc(repeated(held["truth"]), reactions),  # ranking by the true probability: the ceiling
              "true_love_rate": statistics.fmean(held["truth"])}
    for name, model in models.items():
        predicted = model.predict(held["prompts"], held["responses"])
        predicted_rep = repeated(predicted)
        bins = [dataclasses.asdict(b) for b in reliability_bins(predicted_rep, reactions, 10)]
        if name == "well-specified" and seed == 0:
            plot_reliability(bins, out / "reactions-reliability.png", f"P[Love], {len(predicted)} held-out answers")
        result["models"][name] = {
            **log["settings"][name], "auroc": auroc(predicted_rep, reactions),
            "ece": expected_calibration_error(predicted_rep, reactions, 10),
            "mean_prediction": statistics.fmean(predicted), "bins": bins,
            "pearson_vs_true_probability": pearsonr(predicted, held["truth"]).statistic}
    return result


def variant_row(policy, task, models: dict[int, dict[str, RewardModel]], seed: int, system: str | None) -> dict:
    xs, ys, samples = sample_answers(policy, task.test_prompts, VARIANT_SAMPLES, seed, system)
    truth = task.reward(xs, ys)
    rng = random.Random(seed)
    shown = [rng.randrange(len(ys)) for _ in range(IMPRESSIONS)]
    loves = sum(rng.random() < truth[i] for i in shown)
    low, high = wilson_interval(loves, IMPRESSIONS)
    offline = {str(s): {name: statistics.fmean(rm.predict(xs, ys)) for name, rm in pair.items()}
               for s, pair in models.items()}
    extra = task.metrics(xs, ys)
    return {"expected_love_rate": statistics.fmean(truth), "impressions": IMPRESSIONS, "loves": loves,
            "drawn_love_rate": loves / IMPRESSIONS, "drawn_low": low, "drawn_high": high, "offline": offline,
            "help": extra["help"], "distinct_2": extra["distinct_2"], "answers": len(ys),
            "examples": [{"request": x, "response": s[0]} for x, s in zip(task.test_prompts[:3], samples)]}


def same_models(models: dict[str, RewardModel], held: dict, rm: dict) -> None:
    """Stops unless these reward models score the held-out answers as the stored stage says. Where a clone
    lacks the weights they are retrained on a log sampled again, and another CPU's arithmetic may sample
    other answers: variants scored then would be scored by other models than those scored before."""
    for name, model in models.items():
        found = auroc(repeated(model.predict(held["prompts"], held["responses"])), drawn(held))
        if abs(found - rm["models"][name]["auroc"]) > 1e-6:
            raise SystemExit(f"the {name} reward model of log seed {rm['seed']} scores the held-out answers at "
                             f"AUROC {found:.6f}, not the stored {rm['models'][name]['auroc']:.6f}: its log was "
                             "sampled differently here; run the study afresh into a new --out")


def variants(out: Path, base: SimulationConfig, policy, task, train: list[str], held: dict,
             rms: dict[int, dict]) -> dict:
    """Every variant's row, each a stage of its own: a finished RLUF run joins when it appears."""
    models = {s: reward_models(out, policy, task, train, s)[0] for s in rms}
    for s, pair in models.items():
        same_models(pair, held, rms[s])
    rows = {f"π₀ {name}": stage(out, f"variant-prompt-{name}",
                                lambda i=i, system=system: variant_row(policy, task, models, 300 + i, system))
            for i, (name, system) in enumerate(SYSTEM_PROMPTS.items())}
    for i, adapter in enumerate(sorted(RLUF_RESULTS.glob("*/seed-*/policies/rluf"))):
        arm, run_seed = adapter.parts[-4], adapter.parts[-3]
        if not (adapter.parents[1] / "summary.json").exists():
            continue  # a run still going

        def row(adapter=adapter, i=i) -> dict:
            trained = build_policy(dataclasses.replace(base, init_adapter=str(adapter)))
            return variant_row(trained, task, models, 400 + i, None)

        rows[f"RLUF {arm} {run_seed}"] = stage(out, f"variant-rluf-{arm}-{run_seed}", row)
    return {"variants": rows, "evaluation_seeds": [s for s in rms if s != 0]}


def independent(name: str) -> bool:
    """A prompted π₀ variant: trained against no reward model at all. The RLUF policies optimized a model
    with the same features and recipe as the evaluation models, which makes them agree by construction."""
    return name.startswith("π₀")


def correlation(rows: dict, seeds: list[int], model: str, keep=lambda name: True) -> dict:
    """Offline mean P[Love] (averaged over the evaluation models) against the drawn online love rate, over
    the variants `keep` accepts."""
    names = [n for n in rows if keep(n)]
    offline = [statistics.fmean(rows[n]["offline"][str(s)][model] for s in seeds) for n in names]
    return {"kind": "correlation", "labels": names, "x": offline, "y": [rows[n]["drawn_love_rate"] for n in names],
            "y_expected": [rows[n]["expected_love_rate"] for n in names], "seeds": seeds}


def study(rms: dict[int, dict], found: dict) -> dict:
    """The per-claim inputs `corll verdicts` tests (see corll.verdicts: kind 'seeds' and 'correlation')."""
    seeds = sorted(rms)
    chance = {str(s): 0.5 for s in seeds}
    auroc_of = {name: {str(s): rms[s]["models"][name]["auroc"] for s in seeds}
                for name in ("well-specified", "misspecified")}
    feedback = rms[seeds[0]]["log"]["answers"]
    evaluation = found["evaluation_seeds"]
    return {
        "rm-auroc": {"kind": "seeds", "values": auroc_of["well-specified"], "baseline_values": chance,
                     "feedback_per_arm": feedback},
        "rm-auroc-misspecified": {"kind": "seeds", "values": auroc_of["misspecified"], "baseline_values": chance,
                                  "feedback_per_arm": feedback},
        "rm-auroc-paper": {"kind": "seeds", "values": auroc_of["well-specified"],
                           "baseline_values": {str(s): PAPER_AUROC for s in seeds}, "feedback_per_arm": feedback},
        "rm-specification-gap": {"kind": "seeds", "values": auroc_of["well-specified"],
                                 "baseline_values": auroc_of["misspecified"], "feedback_per_arm": feedback},
        "offline-online": correlation(found["variants"], evaluation, "well-specified", independent),
        "offline-online-misspecified": correlation(found["variants"], evaluation, "misspecified", independent),
    }


def fisher(x: list[float], y: list[float]) -> str:
    """r with its 95% interval (Fisher's z), as the page prints it."""
    if len(x) < 4:
        return "–"
    c = pearson_interval(x, y)
    return f"{c.r:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"


def study_markdown(rms: dict[int, dict], found: dict) -> str:
    """The study's tables for docs/reactions.md (appended by `corll verdicts`)."""
    lines = ["## The reward models, per independent log", "",
             f"Held-out: {HELD_OUT_SAMPLES} fresh π₀ answers to each of the 30 held-out requests, {REACTION_DRAWS} "
             "drawn reactions each; “ceiling” ranks by the true love probability (reactions are random draws, so "
             "no model ranks them perfectly).", "",
             "| log seed | loves / answers | well-specified AUROC | ECE | r with true P | misspecified AUROC "
             "| ECE | r with true P | weight decay (CV) | ceiling AUROC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s, rm in sorted(rms.items()):
        w, m = rm["models"]["well-specified"], rm["models"]["misspecified"]
        lines.append(f"| {s} | {rm['log']['loves']} / {rm['log']['answers']} | {w['auroc']:.3f} | {w['ece']:.3f} | "
                     f"{w['pearson_vs_true_probability']:+.2f} | {m['auroc']:.3f} | {m['ece']:.3f} | "
                     f"{m['pearson_vs_true_probability']:+.2f} | {m['weight_decay']:g} | {rm['oracle_auroc']:.3f} |")
    rows, seeds = found["variants"], found["evaluation_seeds"]
    lines += ["", "![reliability](reactions-reliability.png)", "",
              "## Offline P[Love] and online love rates, per policy variant", "",
              f"Each variant answers the 30 held-out requests {VARIANT_SAMPLES} times. Online: {IMPRESSIONS} drawn "
              "reactions (Wilson 95% interval) beside the expected rate; offline: mean P[Love] under the reward "
              f"models of log seeds {', '.join(map(str, seeds))}, which no variant was trained against.", "",
              "| variant | expected love rate | drawn love rate [95%] | offline P[Love], well-specified | "
              "offline, misspecified | helpfulness | distinct-2 |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        offline = {m: statistics.fmean(r["offline"][str(s)][m] for s in seeds) for m in ("well-specified", "misspecified")}
        lines.append(f"| {name} | {r['expected_love_rate']:.3f} | {r['drawn_love_rate']:.3f} [{r['drawn_low']:.3f}, "
                     f"{r['drawn_high']:.3f}] | {offline['well-specified']:.3f} | {offline['misspecified']:.3f} | "
                     f"{r['help']:.3f} | {r['distinct_2']:.3f} |")
    trained = [n for n in rows if not independent(n)]
    lines += ["", "Pearson r of offline mean P[Love] with the online love rate (95% interval, Fisher's z). The claims "
              "use the prompted π₀ variants alone, which no reward model was trained against. "
              + ("With the RLUF policies, which optimized a model of the same features and recipe, the agreement "
                 "is partly by construction." if trained else
                 "The RLUF policies' adapters are not kept with the results, so none of them is a variant here."), "",
              "| reward model | prompted π₀, vs drawn rate (the claim) | prompted π₀, vs expected rate "
              + ("| all variants, vs drawn rate |" if trained else "|"), "|---|---|---|" + ("---|" if trained else "")]
    for model in ("well-specified", "misspecified"):
        mine = correlation(rows, seeds, model, independent)
        row = f"| {model} | {fisher(mine['x'], mine['y'])} | {fisher(mine['x'], mine['y_expected'])} |"
        if trained:
            every = correlation(rows, seeds, model)
            row += f" {fisher(every['x'], every['y'])} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/reactions"))
    parser.add_argument("--seeds", default="0,1,2", help="independent reaction logs (0 is the task's own)")
    parser.add_argument("--model", default=BASE.model, help="smollm2-135m-instruct, or tiny for a smoke run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2 or 0 not in seeds:
        parser.error("--seeds needs seed 0 (the task's own log) and at least one evaluation seed")
    args.out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(BASE, model=args.model)
    policy = build_policy(base)
    task = load_task(base.task, policy)
    train, _ = split_requests()
    held = stage(args.out, "held-out", lambda: held_out_set(policy, task))
    rms = {s: stage(args.out, f"rm-seed-{s}", lambda s=s: rm_stage(args.out, policy, task, train, held, s))
           for s in seeds}
    found = variants(args.out, base, policy, task, train, held, rms)
    result = study(rms, found)
    (args.out / "study.json").write_text(json.dumps(result, indent=1))
    (args.out / "study.md").write_text(study_markdown(rms, found))
    print(json.dumps({k: v.get("values", v.get("x")) for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
