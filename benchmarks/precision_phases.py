"""Which precision is fastest for each phase of a CoRLL round, on this CPU: bf16 and fp32 side by side.

    .venv/bin/python benchmarks/precision_phases.py --repeats 3

Phases at the demo's shapes (SmolLM2-135M-Instruct, LoRA r=8, 32-token responses): drafting (4 prompts ×
k = 2 samples with their log-probabilities, what one `ask` of a round samples), evaluation sampling (40
held-out prompts × 4 samples), scoring (log π of 16 responses, no gradient) and the DPO step (4 pairs,
forward and backward through policy, π_0 cached), each at one and two threads. The two precisions'
policies live in one process and alternate, `--repeats` times each, so machine noise hits both alike.
Writes `table.md` and `results.json` under `results/precision-phases/<cpu>/`, headed by the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corll.feedback import PreferencePair  # noqa: E402
from corll.hardware import detect, machine_tag  # noqa: E402
from corll.learners.dpo import DPOConfig, DPOLearner  # noqa: E402
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy  # noqa: E402
from corll.tasks import load_task  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def make(precision: str) -> tuple[Policy, DPOLearner]:
    torch.manual_seed(0)
    policy = load_policy("smollm2-135m-instruct", lora=LoraSettings(r=8, alpha=16),
                         sampling=SamplingConfig(max_new_tokens=32), precision=precision, seed=0)
    return policy, DPOLearner(policy, DPOConfig(lr=6e-4))


def phases(policy: Policy, learner: DPOLearner, train: list[str], test: list[str],
           pairs: list[PreferencePair]) -> dict[str, Callable[[], object]]:
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    policy.logprobs(prompts, responses, reference=True)  # π_0 is cached in a run: the step does not pay for it
    return {"drafting (4 prompts × 2)": lambda: policy.sample_scored(train[:4], 2),
            "evaluation sampling (40 × 4)": lambda: policy.sample_scored(test[:40], 4),
            "scoring (16 responses)": lambda: policy.logprobs(prompts, responses),
            "DPO step (4 pairs)": lambda: learner.step(pairs)}


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "precision-phases")
    args = parser.parse_args()
    hardware = detect().as_dict()
    models = {p: make(p) for p in PRECISIONS}
    task = load_task("positive-review", models["fp32"][0])
    train, test = task.train_prompts, task.test_prompts
    with torch.no_grad():
        drafts = [s[0] for s in models["fp32"][0].sample(train[:4], 1)]
    pairs = [PreferencePair(x, y + " I loved it.", y) for x, y in zip(train[:4], drafts)]
    work = {p: phases(*models[p], train, test, pairs) for p in PRECISIONS}
    times: dict[str, dict[int, dict[str, list[float]]]] = {}
    for phase in work["fp32"]:
        times[phase] = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs = {p: [] for p in PRECISIONS}
            for p in PRECISIONS:
                work[p][phase]()  # warm-up (packing, caches)
            for _ in range(args.repeats):
                for p in PRECISIONS:
                    torch.manual_seed(1)
                    runs[p].append(timed(work[p][phase]))
            times[phase][threads] = runs
            print(phase, threads, {p: round(statistics.fmean(v), 3) for p, v in runs.items()}, flush=True)
    rows = []
    for phase, by_threads in times.items():
        for threads, runs in by_threads.items():
            fp32, bf16 = (statistics.fmean(runs[p]) for p in PRECISIONS)
            rows.append({"phase": phase, "threads": threads, "fp32_s": fp32, "bf16_s": bf16,
                         "bf16_speedup": fp32 / bf16, "fastest": "bf16" if bf16 < fp32 else "fp32"})
    out = args.out / machine_tag(hardware["cpu"], hardware["capability"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"hardware": hardware, "repeats": args.repeats, "rows": rows},
                                                 indent=2) + "\n")
    lines = [f"# Precision per phase — {hardware['cpu']} ({hardware['capability']}, native bf16: "
             f"{'yes' if hardware['native_bf16'] else 'no'})", "",
             f"Mean seconds over {args.repeats} alternating repeats; bf16 speed-up = fp32 time / bf16 time.", "",
             "| phase | threads | fp32 s | bf16 s | bf16 speed-up | fastest |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['threads']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | ×{r['bf16_speedup']:.2f} | "
              f"{r['fastest']} |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
