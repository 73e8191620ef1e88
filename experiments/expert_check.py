"""Is the DPO-trained expert an expert? Its held-out reviews against π₀'s, under the task's own reward.

    .venv/bin/python experiments/expert_check.py

`positive-review-dpo` defines R* through an expert π* (SmolLM2-135M with a DPO-trained adapter, trained once
from best-vs-worst pairs of π₀'s samples on the training prompts and cached). "R* rises" means "the reviews
got more positive" only if π* itself writes more positive reviews than π₀. This samples both on all 40
held-out prompts (never in π*'s training data) × 8 samples with the same random numbers, scores them with
`positive-review`'s reward (VADER positivity as a log-probability plus the fluency term) and with R*, and
writes the per-prompt means, paired over prompts, to `results/expert-check/study.json` (read by
`experiments/claims.yaml`) with a table beside it. The unit is the held-out prompt: one fixed expert, one
fixed π₀, compared on prompts neither was trained on.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corll.hardware import detect  # noqa: E402
from corll.policy import LoraSettings, SamplingConfig, load_policy  # noqa: E402
from corll.stats import paired_comparison  # noqa: E402
from corll.tasks import load_task  # noqa: E402

SAMPLES = 8
OUT = ROOT / "results" / "expert-check"


def per_prompt(scores: list[float], prompts: int) -> list[float]:
    return [statistics.fmean(scores[i * SAMPLES:(i + 1) * SAMPLES]) for i in range(prompts)]


def main() -> None:
    torch.manual_seed(0)
    # the experiments' settings: fp32, 24-token responses (experiments/paper-headline.yaml)
    policy = load_policy("smollm2-135m-instruct", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=24),
                         precision="fp32", seed=0)
    dpo_task = load_task("positive-review-dpo", policy)  # trains and caches π* on first use
    base_task = load_task("positive-review", policy)
    expert = dpo_task.reward.expert  # R* = β·log π*/π_0: the reward holds π*
    prompts = base_task.test_prompts
    xs = [x for x in prompts for _ in range(SAMPLES)]
    samples = {}
    for name, model, reference in (("pi0", policy, True), ("expert", expert, False)):
        with torch.random.fork_rng():
            torch.manual_seed(20_000)  # common random numbers: the same draws for both policies
            drawn = model.sample(prompts, SAMPLES, use_reference=reference)
        samples[name] = [y for ys in drawn for y in ys]
    positivity = {name: per_prompt(base_task.reward(xs, ys), len(prompts)) for name, ys in samples.items()}
    r_star = {name: per_prompt(dpo_task.reward(xs, ys), len(prompts)) for name, ys in samples.items()}
    study = {}
    for key, values, what in (("expert-positivity", positivity, "positive-review reward"),
                              ("expert-r-star", r_star, "R* (the expert's implicit reward)")):
        compared = paired_comparison(values["expert"], values["pi0"])
        study[key] = {"kind": "seeds", "unit": "held-out prompt", "measure": what,
                      "values": {str(i): v for i, v in enumerate(values["expert"])},
                      "baseline_values": {str(i): v for i, v in enumerate(values["pi0"])},
                      "feedback_per_arm": "–", "effect": compared.difference.mean,
                      "low": compared.difference.low, "high": compared.difference.high, "p": compared.p_value}
    hardware = detect().as_dict()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    lines = [f"# The DPO expert against π₀ on the 40 held-out prompts × {SAMPLES} samples — {hardware['cpu']} "
             f"({hardware['capability']}), fp32", "",
             "| measure | π₀ | expert | expert − π₀ [95% CI], paired over prompts | p |", "|---|---|---|---|---|"]
    for key, values in (("expert-positivity", positivity), ("expert-r-star", r_star)):
        s = study[key]
        lines.append(f"| {s['measure']} | {statistics.fmean(values['pi0']):+.3f} | "
                     f"{statistics.fmean(values['expert']):+.3f} | {s['effect']:+.3f} [{s['low']:+.3f}, "
                     f"{s['high']:+.3f}] | {s['p']:.2g} |")
    lines += ["", "An example held-out prompt and the first sample of each:", "", f"- prompt: {prompts[0]!r}",
              f"- π₀: {samples['pi0'][0]!r}", f"- expert: {samples['expert'][0]!r}"]
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
