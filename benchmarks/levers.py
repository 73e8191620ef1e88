"""Each speed lever of corll's CoRLL loop, switched off and on, in one process run.

    .venv/bin/python benchmarks/levers.py --repeats 2 --out results/levers/levers-avx2-table.md  # one table per kind of CPU

Workload: SmolLM2-135M-Instruct, LoRA r=8, 8 positive-review prompts, k=4 samples
of up to 64 new tokens, 8 preference pairs (each prompt's first sample over its
second), in the precision `auto` picks on this machine. For every lever the "off"
and "on" variants alternate, `--repeats` times each, so machine noise hits both
alike; the table reports the mean seconds of the phase the lever acts on and the
speed-up (off / on). The levers are cumulative in the shipped code; here each is
switched off alone, everything else left on. Levers that only exist where bf16 is
native are measured only there.

The thread levers run in fresh processes (OpenMP reads its wait policy once, at
start-up): one sampling job with 1 or 2 threads, busy-waiting (OMP_WAIT_POLICY=ACTIVE),
OpenMP's own policy (no OMP_WAIT_POLICY: a brief spin before sleeping, what `corll serve`
runs) or passive threads (corll's default for jobs), on an idle machine and beside a
one-thread process that keeps one core busy; `--spin-counts` adds OpenMP spins of other
lengths (GOMP_SPINCOUNT, the iterations a waiting thread spins before it sleeps), in
search of a middle ground between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import corll.learners.dpo as dpo_module
import corll.policy as policy_module
from corll.feedback import PreferencePair
from corll.hardware import available_cpus, choose_precision, detect
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.memo import Memo
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.batches import EncodedBatch
from corll.tasks import load_task
from corll.tasks.dpo_expert import EXPERT_BETA, ExpertReward
from corll.users.expert_editor import ExpertEditor

K, N, NEW_TOKENS = 4, 8, 64
EXPERT_CANDIDATES = 4  # l, as in the headline experiment


def full_vocabulary_logprobs(model, batch) -> torch.Tensor:
    """The textbook computation: whole rows, logits and an fp32 log-softmax at every position."""
    batch = whole_rows(batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return (token * batch.response_mask[:, 1:]).sum(-1)


def whole_rows(batch) -> EncodedBatch:
    """A shared-prompt batch as whole prompt+response rows (each row pays for its prompt)."""
    prompts = [row[mask.bool()].tolist() for row, mask in zip(batch.prompt_ids, batch.prompt_mask)]
    rows = []
    for r, p in enumerate(batch.row_prompt.tolist()):
        response = batch.response_ids[r][batch.response_mask[r].bool()].tolist()
        rows.append((prompts[p], response))
    width = max(len(p) + len(y) for p, y in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, y) in enumerate(rows):
        start = width - len(p) - len(y)
        ids[i, start:] = torch.tensor(p + y)
        attention[i, start:] = 1
        response_mask[i, start + len(p):] = True
    return EncodedBatch(ids, attention, response_mask)


SEQUENCE_LOGPROBS = policy_module.sequence_logprobs  # the shipped function, before any lever patches it


def whole_row_logprobs(model, batch) -> torch.Tensor:
    return SEQUENCE_LOGPROBS(model, whole_rows(batch))


def separate_forwards(model, batch) -> torch.Tensor:
    """Chosen and rejected (the two halves of the rows) in two forward passes."""
    batch = whole_rows(batch)
    half = batch.input_ids.shape[0] // 2
    parts = [EncodedBatch(batch.input_ids[s], batch.attention_mask[s], batch.response_mask[s])
             for s in (slice(0, half), slice(half, None))]
    return torch.cat([SEQUENCE_LOGPROBS(model, part) for part in parts])


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


THREAD_JOB = """
import sys, time, torch
from corll.policy import LoraSettings, SamplingConfig, load_policy
from corll.tasks import load_task
from corll.tasks.dpo_expert import EXPERT_BETA, ExpertReward
from corll.users.expert_editor import ExpertEditor
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
p = load_policy("smollm2-135m-instruct", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=32))
prompts = load_task("positive-review", p).train_prompts[:8]
p.sample(prompts[:2], 2)
start = time.perf_counter()
p.sample(prompts, 2)
print(time.perf_counter() - start)
"""
BURNER = "import torch, time\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True: a @ a\n"


def thread_job(threads: int, wait: dict[str, str], busy: bool) -> float:
    """Seconds of the sampling job on `threads` threads under the wait settings `wait` (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT; none: OpenMP's own policy)."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    burner = subprocess.Popen([sys.executable, "-c", BURNER]) if busy else None
    try:
        out = subprocess.run([sys.executable, "-c", THREAD_JOB, str(threads)], env=env | wait, check=True,
                             capture_output=True, text=True)
    finally:
        if burner:
            burner.kill()
            burner.wait()
    return float(out.stdout.strip().splitlines()[-1])


def wait_name(wait: dict[str, str]) -> str:
    """A thread row's words for its wait settings, as the docs' tables name them."""
    if "GOMP_SPINCOUNT" in wait:
        return f"a spin of {int(wait['GOMP_SPINCOUNT']):,} iterations (GOMP_SPINCOUNT)"
    if "OMP_WAIT_POLICY" in wait:
        return f"{wait['OMP_WAIT_POLICY'].lower()} waiting"
    return "OpenMP's own waiting (a brief spin)"


def thread_rows(repeats: int, spin_counts: list[int]) -> list[str]:
    """Sampling seconds (8 prompts × 2 samples of 32 tokens) per thread setting, idle and busy; the settings
    alternate within each repeat, so a drift in the machine's speed hits them alike."""
    settings = [(1, {"OMP_WAIT_POLICY": "PASSIVE"}), (2, {"OMP_WAIT_POLICY": "ACTIVE"}), (2, {}),
                (2, {"OMP_WAIT_POLICY": "PASSIVE"}), *((2, {"GOMP_SPINCOUNT": str(n)}) for n in spin_counts)]
    rows = []
    for busy in (False, True):
        seconds = [[] for _ in settings]
        for _ in range(repeats):
            for times, (threads, wait) in zip(seconds, settings):
                times.append(thread_job(threads, wait, busy))
        where = "a busy machine (one core taken)" if busy else "an idle machine"
        one = statistics.fmean(seconds[0])
        for times, (threads, wait) in zip(seconds, settings):
            mean = statistics.fmean(times)
            rows.append(f"| {threads} thread{'s' if threads > 1 else ''}, {wait_name(wait)}, on {where} "
                        f"| sample | {one:.2f} | {mean:.2f} | ×{one / mean:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one DPO step")
    parser.add_argument("--skip-threads", action="store_true", help="leave out the thread levers")
    parser.add_argument("--spin-counts", default="", help="thread rows with these GOMP_SPINCOUNT values too, "
                        "comma-separated, e.g. 1000,10000")
    parser.add_argument("--phase", action="append", help="only the levers of this phase (repeatable), e.g. update")
    parser.add_argument("--only", help="only the levers whose name contains this text, e.g. oneDNN")
    args = parser.parse_args()
    torch.set_num_threads(available_cpus())
    precision = choose_precision("auto").precision

    def policy(precision: str) -> Policy:
        torch.manual_seed(0)
        return load_policy("smollm2-135m-instruct", lora=LoraSettings(),
                           sampling=SamplingConfig(max_new_tokens=NEW_TOKENS), precision=precision)

    fast = policy(precision)
    prompts = load_task("positive-review", fast).train_prompts[:N]
    torch.manual_seed(0)
    samples = fast.sample(prompts, K)
    flat_x = [x for x in prompts for _ in range(K)]
    flat_y = [y for ys in samples for y in ys]
    pairs = [PreferencePair(x, ys[0], ys[1]) for x, ys in zip(prompts, samples)]
    learners = {id(fast): DPOLearner(fast, DPOConfig())}

    def update(p: Policy, **config) -> Callable[[], object]:
        key = (id(p), tuple(sorted(config.items())))
        if key not in learners:
            learners[key] = DPOLearner(p, DPOConfig(**config))
        return lambda: learners[key].step(pairs)

    def with_patch(fn, obj, name, value):
        def run():
            with patched(obj, name, value):
                fn()
        return run

    def sample_per_prompt() -> None:
        for x in prompts:
            fast.sample([x], K)

    def unpacked() -> Policy:
        """The same policy with every matmul through the default GEMM (MKL), for the prepacked-kernel lever."""
        os.environ["CORLL_PACKED_KERNELS"] = "0"
        try:
            return policy(precision)
        finally:
            del os.environ["CORLL_PACKED_KERNELS"]

    plain = unpacked()

    def score_cold_with(p: Policy) -> Callable[[], object]:
        def run() -> None:
            p._reference_cache.clear()
            p.implicit_reward(flat_x, flat_y, 0.1)
        return run

    def sample_then_forward() -> None:
        out = fast.sample(prompts, K)
        fast.logprobs([x for x in prompts for _ in range(K)], [y for ys in out for y in ys])

    def expert_edits(remembered: bool) -> Callable[[], object]:
        """The paper's simulated user judging the drafts (`samples`' first of each prompt, their log π_0
        already known from the argmax) and R* of the drafts shown: with R* remembered per response and π_0
        shared with the learner, or (off) each call scoring afresh under the expert's own π_0 cache."""
        task = load_task("positive-review-dpo", fast)
        expert, drafts = task.reward.expert, [ys[0] for ys in samples]
        fast.logprobs(prompts, drafts, reference=True)

        def run() -> None:
            if remembered:
                reward = ExpertReward(expert, EXPERT_BETA)
                expert._reference_cache = fast._reference_cache
                user = dataclasses.replace(task, reward=reward, expert=reward.sample)
            else:
                expert._reference_cache = Memo(policy_module.REFERENCE_CACHE_SIZE)
                user = dataclasses.replace(task, expert=expert.sample,
                                           reward=lambda xs, ys: expert.implicit_reward(xs, ys, EXPERT_BETA).tolist())
            ExpertEditor(user, l=EXPERT_CANDIDATES).edit(prompts, drafts)
            user.reward(prompts, drafts)
        return run

    levers = [
        ("one batched `generate` for all prompts × k (vs a call per prompt)", "sample",
         sample_per_prompt, lambda: fast.sample(prompts, K)),
        ("each prompt prefilled once, its cache copied per sample (vs the prompt repeated k times)", "sample",
         with_patch(lambda: fast.sample(prompts, K), policy_module, "prefill_cache", lambda *a: None),
         lambda: fast.sample(prompts, K)),
        ("log π of the samples read off generate's logits (vs a second forward)", "sample + log π",
         sample_then_forward, lambda: fast.sample_scored(prompts, K)),
        ("each prompt run once for its k samples (vs whole rows)", "score for the argmax",
         with_patch(score_cold_with(fast), policy_module, "sequence_logprobs", whole_row_logprobs), score_cold_with(fast)),
        ("each pair's prompt run once for chosen and rejected (vs whole rows)", "update",
         with_patch(update(fast), dpo_module, "sequence_logprobs", whole_row_logprobs), update(fast)),
        ("micro-batches of 4 pairs (vs 2)", "update", update(fast, micro_batch_pairs=2), update(fast)),
        ("logits from the first response position, log-softmax at the targets (vs full vocabulary everywhere)",
         "update", with_patch(update(fast), dpo_module, "sequence_logprobs", full_vocabulary_logprobs), update(fast)),
        ("chosen and rejected in one forward (vs two)", "update",
         with_patch(update(fast), dpo_module, "sequence_logprobs", separate_forwards), update(fast)),
        ("eager attention in the training step (vs fused SDPA)", "update",
         with_patch(update(fast), fast, "training_attention", contextlib.nullcontext), update(fast)),
        ("log π₀ cached per (x, y) (vs recomputed)", "score for the argmax",
         score_cold_with(fast), lambda: fast.implicit_reward(flat_x, flat_y, 0.1)),
        ("frozen weights through oneDNN's prepacked kernels when no gradient is taken (vs MKL's GEMM)", "sample",
         lambda: plain.sample(prompts, K), lambda: fast.sample(prompts, K)),
        ("frozen weights through oneDNN's prepacked kernels when no gradient is taken (vs MKL's GEMM)",
         "score for the argmax", score_cold_with(plain), score_cold_with(fast)),
        ("the expert's R* once per response: candidates scored while sampled, π₀ shared with the learner "
         "(vs scored afresh)", "expert's edits + R* shown", expert_edits(False), expert_edits(True)),
    ]
    if detect().native_bf16:  # the bf16 levers: only where bf16 is the fast choice
        fp32 = policy("fp32")
        autocast_only = policy("fp32")
        autocast_only.precision = "bf16"  # autocast, but frozen weights left in fp32 and cast at every op
        levers += [
            ("bf16 autocast (vs fp32)", "update", update(fp32), update(fast)),
            ("frozen weights stored in bf16 (vs cast at every op under autocast)", "sample",
             lambda: autocast_only.sample(prompts, K), lambda: fast.sample(prompts, K)),
            ("frozen weights stored in bf16 (vs cast at every op under autocast)", "update",
             update(autocast_only), update(fast)),
        ]
    if args.phase:
        levers = [lever for lever in levers if lever[1] in args.phase]
    if args.only:
        levers = [lever for lever in levers if args.only in lever[0]]
    for _, phase, off, on in levers:  # warm-up: a learner's first step pays one-off costs (optimizer state)
        if phase == "update":
            off(), on()
    rows = []
    for name, phase, off, on in levers:
        times = {"off": [], "on": []}
        for _ in range(args.repeats):
            times["off"].append(timed(off))
            times["on"].append(timed(on))
        off_s, on_s = statistics.fmean(times["off"]), statistics.fmean(times["on"])
        rows.append(f"| {name} | {phase} | {off_s:.2f} | {on_s:.2f} | ×{off_s / on_s:.2f} |")
        print(rows[-1], flush=True)
    spin_counts = [int(n) for n in args.spin_counts.split(",") if n]
    thread_table = [] if args.skip_threads else thread_rows(args.repeats, spin_counts)
    hw = detect()
    table = "\n".join([
        f"**{hw.cpu}** ({hw.capability}, {'native' if hw.native_bf16 else 'no native'} bf16), "
        f"{torch.get_num_threads()} threads, {precision}.",
        "",
        f"Workload: SmolLM2-135M-Instruct, LoRA r=8, {N} prompts × k={K} samples of ≤{NEW_TOKENS} tokens, "
        f"{N} pairs per DPO step; mean of {args.repeats} alternating repeats per variant.",
        "",
        *(["| lever | phase | off s | on s | speed-up |", "|---|---|---|---|---|", *rows] if rows
          else ["(Thread rows only: no lever matched `--only` and `--phase`.)"]), "",
        *([] if not thread_table else [
            "Threads (8 prompts × 2 samples of ≤32 tokens, each setting in a fresh process; 'off' is one "
            "passive thread on the same machine state):", "",
            "| setting | phase | 1 thread s | this setting s | speed-up |", "|---|---|---|---|---|",
            *thread_table, ""]),
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
