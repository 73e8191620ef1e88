"""One decoding step of the served model, alone: how long it takes by batch width and precision, and how much
of it is the linear products.

    .venv/bin/python benchmarks/decode_step.py --rows 1,4,16,30 --repeats 3 --profile --out results/decode-step

The serving engine's throughput (`engine_load.py`, `serve_load.py`) mixes decoding steps with prefills and
the scheduler's own work. This isolates the step: `--rows` prompts are prefilled into corll's KV cache
(`kv_rows.RowsCache`, as the engine keeps it) and then `--steps` steps decode one token per row, through the
model as `load_frozen` prepares it for serving (prepacked products; bf16 throughout in bf16). Both precisions'
models live in one process and alternate, `--repeats` times per width, so machine noise hits both alike; the
table gives each the median step time, the step's rate counting only the linear products' operations (two per
weight per row: how near the step runs to the machine's matmul speed), and with `--profile` the share of the
steps' wall time spent inside the products (torch's profiler over one more pass of steps).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_common import publish
from corll.batches import left_pad
from corll.hardware import detect, set_threads
from corll.kv_rows import RowsCache
from corll.policy import Policy, load_frozen

PRECISIONS = ("fp32", "bf16")
PRODUCTS = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear")


def linear_flops_per_row(policy: Policy) -> int:
    """Two operations per weight of every linear layer: what one row's token costs in products."""
    return sum(2 * m.in_features * m.out_features for m in policy.model.modules() if isinstance(m, torch.nn.Linear))


@torch.no_grad()
def decode(policy: Policy, rows: int, steps: int, around: contextlib.AbstractContextManager | None = None
           ) -> list[float]:
    """Seconds of each of `steps` decoding steps for `rows` rows, the steps (not the prefill) run inside
    `around`."""
    model = policy.model
    prompts = [policy.prompt_ids(f"Request {i}: write a short note about tea number {i}.") for i in range(rows)]
    ids, mask = left_pad(prompts, policy.tokenizer.pad_token_id)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = RowsCache(rows)
    with policy.autocast():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        token, position, times = out.logits[:, -1].argmax(-1, keepdim=True), positions[:, -1:], []
        with around or contextlib.nullcontext():
            for _ in range(steps):
                mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
                position = position + 1
                started = time.perf_counter()
                out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - started)
    return times


def product_share(policy: Policy, rows: int, steps: int) -> float:
    """The share of decoding steps' wall time spent inside the linear products (torch's profiler; the rest is
    the other operations and the Python between them)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    times = decode(policy, rows, steps, around=prof)
    products_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS)
    return products_us / (sum(times) * 1e6)


def render(results: dict) -> str:
    lines = [f"**{results['machine']}**, {results['threads']} threads; {results['model']}, one decoding step "
             f"(median of {results['steps']} steps × {results['repeats']} alternating repeats per width and "
             "precision), on corll's KV cache.", "",
             "| rows | precision | step ms | step GFLOP/s (the products' operations) "
             "| products' share of the step's wall time |",
             "|---|---|---|---|---|"]
    for row in results["levels"]:
        share = f"{row['product_share']:.0%}" if row["product_share"] is not None else "–"
        lines.append(f"| {row['rows']} | {row['precision']} | {row['step_ms']:.1f} | {row['gflops']:.1f} | {share} |")
    by = {(r["rows"], r["precision"]): r["step_ms"] for r in results["levels"]}
    ratios = [f"{n} row{'s' * (n != 1)} ×{by[(n, 'fp32')] / by[(n, 'bf16')]:.2f}" for n in results["rows"]]
    return "\n".join(lines + ["", "bf16 speed-up over fp32 (fp32 step time / bf16's): " + "; ".join(ratios)
                              + "."]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", default="1,4,16,30", help="Batch widths, comma-separated.")
    parser.add_argument("--steps", type=int, default=40, help="Decoding steps timed per repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="Compute threads (default: every CPU, as `corll serve`).")
    parser.add_argument("--profile", action="store_true", help="Also measure the products' share of a step.")
    parser.add_argument("--out", type=Path, help="Folder for <cpu>-table.md and .json.")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    hardware = detect()
    widths = [int(r) for r in args.rows.split(",")]
    results = {"machine": f"{hardware.cpu} ({hardware.capability})", "threads": threads, "model": args.model,
               "steps": args.steps, "repeats": args.repeats, "rows": widths, "levels": []}
    policies = {p: load_frozen(args.model, precision=p) for p in PRECISIONS}
    flops = linear_flops_per_row(policies["fp32"])
    for rows in widths:
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.repeats):
            for precision in PRECISIONS:
                times[precision] += decode(policies[precision], rows, args.steps)
        for precision in PRECISIONS:
            step = statistics.median(times[precision])
            share = product_share(policies[precision], rows, min(args.steps, 10)) if args.profile else None
            row = {"rows": rows, "precision": precision, "step_ms": step * 1000, "gflops": flops * rows / step / 1e9,
                   "product_share": share}
            results["levels"].append(row)
            print(row, file=sys.stderr, flush=True)
    publish(render(results), args.out, hardware, results)


if __name__ == "__main__":
    main()
