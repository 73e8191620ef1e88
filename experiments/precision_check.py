"""Does CoRLL learn in bf16 as it does in fp32? One DPO step's loss and LoRA gradient, and the argmax's
choices, computed in both precisions on the same real inputs.

    .venv/bin/python experiments/precision_check.py --adapter results/demo-robustness/<cpu>/seed-0/policies/corll

SmolLM2-135M-Instruct with a trained CoRLL adapter (a demo run's; a fresh adapter would make every
implicit reward 0 and every argmax a tie; adapters are not committed, `benchmarks/demo_robustness.py` makes
them) loaded into an fp32 and a bf16 policy. Inputs: real edit pairs (the adapter's fp32 drafts for 16
training prompts, those the demo's local editor changed) and k = 4
fp32 samples for each of 40 held-out prompts. Reported: the DPO loss in each precision, the relative
error and cosine of the bf16 LoRA gradient against fp32's, and how often the bf16 argmax of the implicit
reward β·(log π − log π_0) picks a different sample than fp32's (and whether those are near-ties).
Writes `results.json` and `table.md` under `results/precision-check/<cpu>/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corll.hardware import detect, machine_tag  # noqa: E402
from corll.learners.dpo import DPOConfig, DPOLearner  # noqa: E402
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy  # noqa: E402
from corll.tasks import load_task  # noqa: E402
from corll.users import LocalEditor  # noqa: E402

BETA, K = 0.1, 4


def trained(precision: str, adapter: Path) -> Policy:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.manual_seed(0)
    policy = load_policy("smollm2-135m-instruct", lora=LoraSettings(r=8, alpha=16),
                         sampling=SamplingConfig(max_new_tokens=32), precision=precision, seed=0)
    set_peft_model_state_dict(policy.model, load_file(str(adapter / "adapter_model.safetensors")))
    return policy


def gradient(policy: Policy, pairs) -> tuple[float, torch.Tensor]:
    learner = DPOLearner(policy, DPOConfig(beta=BETA, lr=6e-4))
    totals = learner.accumulate_gradients(pairs)
    grad = torch.cat([p.grad.detach().flatten().double() for p in policy.trainable_parameters()])
    return totals["loss"], grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="a trained CoRLL adapter (peft folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "precision-check")
    args = parser.parse_args()
    hardware = detect().as_dict()
    fp32, bf16 = trained("fp32", args.adapter), trained("bf16", args.adapter)
    task = load_task("positive-review", fp32)
    prompts = task.train_prompts[:16]
    torch.manual_seed(1)
    drafts = [s[0] for s in fp32.sample(prompts, 1)]
    edits = LocalEditor(task).edit(prompts, drafts)
    pairs = [e.to_pair(x) for x, e in zip(prompts, edits) if e is not None]
    loss32, grad32 = gradient(fp32, pairs)
    loss16, grad16 = gradient(bf16, pairs)
    relative = float((grad16 - grad32).norm() / grad32.norm())
    cosine = float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0))

    held_out = task.test_prompts[:40]
    torch.manual_seed(2)
    samples = fp32.sample(held_out, K)
    xs = [x for x in held_out for _ in range(K)]
    ys = [y for s in samples for y in s]
    rewards = {name: p.implicit_reward(xs, ys, BETA).view(len(held_out), K).double()
               for name, p in (("fp32", fp32), ("bf16", bf16))}
    picks = {name: r.argmax(1) for name, r in rewards.items()}
    differ = (picks["fp32"] != picks["bf16"]).nonzero().flatten().tolist()
    top2 = rewards["fp32"].topk(2, dim=1).values
    gaps = (top2[:, 0] - top2[:, 1])
    adapter = args.adapter.resolve()
    result = {"hardware": hardware, "adapter": str(adapter.relative_to(ROOT) if ROOT in adapter.parents else adapter),
              "pairs": len(pairs),
              "dpo_loss": {"fp32": loss32, "bf16": loss16}, "gradient_relative_error": relative,
              "gradient_cosine": cosine, "argmax_prompts": len(held_out), "argmax_differs": len(differ),
              "implicit_reward_error_mean": float((rewards["bf16"] - rewards["fp32"]).abs().mean()),
              "fp32_top_gap_median": float(gaps.median()),
              "differing_top_gaps": [float(gaps[i]) for i in differ]}
    out = args.out / machine_tag(hardware["cpu"], hardware["capability"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join([
        f"# bf16 against fp32 on the same inputs — {hardware['cpu']} ({hardware['capability']})", "",
        f"Trained CoRLL adapter `{result['adapter']}`; {len(pairs)} real edit pairs; {len(held_out)} held-out prompts "
        f"× k = {K} fp32 samples.", "",
        "| measure | value |", "|---|---|",
        f"| DPO loss, fp32 / bf16 | {loss32:.4f} / {loss16:.4f} |",
        f"| LoRA gradient, bf16 relative error against fp32 | {relative:.1%} |",
        f"| LoRA gradient cosine | {cosine:.4f} |",
        f"| implicit reward, mean absolute bf16 − fp32 difference | {result['implicit_reward_error_mean']:.4f} |",
        f"| argmax of k picks another sample in bf16 | {len(differ)} of {len(held_out)} prompts |",
        f"| fp32's gap between its best and second-best sample (median) | {result['fp32_top_gap_median']:.4f} |",
        f"| that gap where the picks differ | {', '.join(f'{g:.4f}' for g in result['differing_top_gaps']) or '—'} |",
    ]) + "\n"
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
