"""Each speed lever of corll's CoRLL loop, switched off and on, in one process run.

    .venv/bin/python benchmarks/levers.py --repeats 2 --out docs/levers-table.md

Workload: SmolLM2-135M-Instruct, LoRA r=8, 8 positive-review prompts, k=4 samples
of up to 64 new tokens, 8 preference pairs (each prompt's first sample over its
second). For every lever the "off" and "on" variants alternate, `--repeats` times
each, so machine noise hits both alike; the table reports the mean seconds of the
phase the lever acts on and the speed-up (off / on). The levers are cumulative in
the shipped code; here each is switched off alone, everything else left on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import corll.learners.dpo as dpo_module
from corll.feedback import PreferencePair
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.policy import EncodedBatch, LoraSettings, Policy, SamplingConfig, load_policy, sequence_logprobs
from corll.tasks import load_task

K, N, NEW_TOKENS = 4, 8, 64


def full_vocabulary_logprobs(model, batch: EncodedBatch) -> torch.Tensor:
    """The textbook computation: logits and an fp32 log-softmax at every position."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return (token * batch.response_mask[:, 1:]).sum(-1)


def separate_forwards(model, batch: EncodedBatch) -> torch.Tensor:
    """Chosen and rejected (the two halves of the batch) in two forward passes."""
    half = batch.input_ids.shape[0] // 2
    parts = [EncodedBatch(batch.input_ids[s], batch.attention_mask[s], batch.response_mask[s])
             for s in (slice(0, half), slice(half, None))]
    return torch.cat([sequence_logprobs(model, part) for part in parts])


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one DPO step")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    def policy(precision: str) -> Policy:
        torch.manual_seed(0)
        return load_policy("smollm2-135m-instruct", lora=LoraSettings(),
                           sampling=SamplingConfig(max_new_tokens=NEW_TOKENS), precision=precision)

    fast, fp32 = policy("bf16"), policy("fp32")
    autocast_only = policy("fp32")
    autocast_only.precision = "bf16"  # autocast, but frozen weights left in fp32 and cast at every op
    prompts = load_task("positive-review", fast).train_prompts[:N]
    torch.manual_seed(0)
    samples = fast.sample(prompts, K)
    flat_x = [x for x in prompts for _ in range(K)]
    flat_y = [y for ys in samples for y in ys]
    pairs = [PreferencePair(x, ys[0], ys[1]) for x, ys in zip(prompts, samples)]
    learners = {id(p): DPOLearner(p, DPOConfig()) for p in (fast, fp32, autocast_only)}

    def update(p: Policy) -> Callable[[], object]:
        return lambda: learners[id(p)].step(pairs)

    def sample_per_prompt(p: Policy) -> None:
        for x in prompts:
            p.sample([x], K)

    def score_cold(p: Policy) -> None:
        p._reference_cache.clear()
        p.implicit_reward(flat_x, flat_y, 0.1)

    def with_patch(fn, obj, name, value):
        def run():
            with patched(obj, name, value):
                fn()
        return run

    levers = [
        ("one batched `generate` for all prompts × k (vs a call per prompt)", "sample",
         lambda: sample_per_prompt(fast), lambda: fast.sample(prompts, K)),
        ("bf16 autocast (vs fp32)", "update", update(fp32), update(fast)),
        ("frozen weights stored in bf16 (vs cast at every op under autocast)", "sample",
         lambda: autocast_only.sample(prompts, K), lambda: fast.sample(prompts, K)),
        ("frozen weights stored in bf16 (vs cast at every op under autocast)", "update",
         update(autocast_only), update(fast)),
        ("eager attention in the training step (vs fused SDPA)", "update",
         with_patch(update(fast), fast, "training_attention", contextlib.nullcontext), update(fast)),
        ("logits from the first response position, log-softmax at the targets (vs full vocabulary everywhere)",
         "update", with_patch(update(fast), dpo_module, "sequence_logprobs", full_vocabulary_logprobs), update(fast)),
        ("chosen and rejected in one forward (vs two)", "update",
         with_patch(update(fast), dpo_module, "sequence_logprobs", separate_forwards), update(fast)),
        ("log π₀ cached per (x, y) (vs recomputed)", "score for the argmax",
         lambda: score_cold(fast), lambda: fast.implicit_reward(flat_x, flat_y, 0.1)),
    ]
    for p in (fast, fp32, autocast_only):  # warm-up: a first step pays one-off costs (optimizer state, kernels)
        update(p)()
    rows = []
    for name, phase, off, on in levers:
        times = {"off": [], "on": []}
        for _ in range(args.repeats):
            times["off"].append(timed(off))
            times["on"].append(timed(on))
        off_s, on_s = statistics.fmean(times["off"]), statistics.fmean(times["on"])
        rows.append(f"| {name} | {phase} | {off_s:.2f} | {on_s:.2f} | ×{off_s / on_s:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join([
        f"Workload: SmolLM2-135M-Instruct, LoRA r=8, {N} prompts × k={K} samples of ≤{NEW_TOKENS} tokens, "
        f"{N} pairs per DPO step; mean of {args.repeats} alternating repeats per variant.",
        "",
        "| lever | phase | off s | on s | speed-up |",
        "|---|---|---|---|---|",
        *rows, "",
    ])
    print(table)
    if args.out:
        args.out.write_text(table)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            update(fast)()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
