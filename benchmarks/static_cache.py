"""The static-KV-cache lever: HF `generate` with a static cache, its decode step compiled or not, against
corll's own sampling (a dynamic cache, each prompt prefilled once, frozen weights through prepacked kernels).

    .venv/bin/python benchmarks/static_cache.py --repeats 3

Workload: SmolLM2-135M-Instruct with a LoRA adapter, 8 positive-review prompts × k = 4 samples of 64 new
tokens, fp32, one thread. Reports decode steps per second over the 32 rows (a finished row is still
computed until every row has ended, so steps × rows is the work done). The compiled variant's first call
pays the compilation (torch.compile through `generate`'s compile config, enabled on CPU); it is reported
apart, so the gain over a run can be set against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from corll.hardware import detect
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.tasks import load_task

K, N, NEW_TOKENS = 4, 8, 64


def policy(packed: bool) -> Policy:
    os.environ["CORLL_PACKED_KERNELS"] = "1" if packed else "0"
    try:
        torch.manual_seed(0)
        return load_policy("smollm2-135m-instruct", lora=LoraSettings(),
                           sampling=SamplingConfig(max_new_tokens=NEW_TOKENS), precision="fp32")
    finally:
        del os.environ["CORLL_PACKED_KERNELS"]


def corll_sampling(p: Policy, prompts: list[str]) -> int:
    """corll's sampling; returns the decode steps it took."""
    return p._generate(prompts, K, None, False, None)[1].shape[1]


def static_generate(p: Policy, prompts: list[str], compiled: bool) -> int:
    """One batched `generate` over prompts × k with a static cache; returns the decode steps (always 64)."""
    from transformers import CompileConfig

    ids = [p.prompt_ids(x) for x in prompts]
    width, pad = max(map(len, ids)), p.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids]).repeat_interleave(K, 0)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids]).repeat_interleave(K, 0)
    config = None
    if compiled:
        config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
        config._compile_all_devices = True  # generate compiles only on accelerators unless told otherwise
    p.model.eval()
    with torch.no_grad():
        out = p.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, do_sample=True, top_k=50, pad_token_id=pad,
                               eos_token_id=p.tokenizer.eos_token_id, cache_implementation="static",
                               compile_config=config, disable_compile=not compiled)
    return out.shape[1] - width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = detect()
    print(f"{machine.cpu} ({machine.capability}, {'native' if machine.native_bf16 else 'no native'} bf16), "
          "1 thread, fp32")
    fast, plain = policy(packed=True), policy(packed=False)
    prompts = load_task("positive-review", fast).train_prompts[:N]
    variants = {
        "corll's sampling (dynamic cache, prompt prefilled once, prepacked kernels)": lambda: corll_sampling(fast, prompts),
        "generate, static cache, eager": lambda: static_generate(plain, prompts, compiled=False),
        "generate, static cache, decode step compiled": lambda: static_generate(plain, prompts, compiled=True),
    }
    print("| variant | first call s | later calls s (mean) | decode steps/s over 32 rows |")
    print("|---|---|---|---|")
    for name, run in variants.items():
        times, steps = [], 0
        for _ in range(args.repeats + 1):
            started = time.perf_counter()
            steps = run()
            times.append(time.perf_counter() - started)
        later = statistics.fmean(times[1:])
        print(f"| {name} | {times[0]:.1f} | {later:.1f} | {steps / later:.2f} |", flush=True)


if __name__ == "__main__":
    main()
