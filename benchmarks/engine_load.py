"""corll's engine without HTTP: what it decodes when nothing else shares the CPUs, in fp32 and in bf16.

    .venv/bin/python benchmarks/engine_load.py --adapters 0,8 --seconds 15 --out results/engine-load

The serving benchmark (`serve_load.py`) measures the engine behind `corll serve`, sharing the CPUs with the
HTTP layer and the clients. This one calls the engine in-process: `--clients` threads each submit a request,
wait for its answer and submit the next, every request for a user drawn uniformly (base-model users, or users
with their own adapter of random weights, one user per adapter or as many base-model users as clients), with
`serve_load.py`'s prompts and length. Both precisions' engines
live in one process and alternate level by level, so machine noise hits both alike. Reported per level:
completion tokens/s and the engine's own account of its work (rows per decoding step, the prefills' share of
its time). The gap to `serve_load.py`'s figures is what serving over HTTP on the same CPUs costs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from serve_load import PROMPTS, make_adapters, work_summary

from bench_common import write_table
from corll.hardware import detect, set_threads
from corll.server.engine import PolicyEngine
from corll.server.protocol import GenerationRequest, ServedModel

PRECISIONS = ("fp32", "bf16")


def level(engine: PolicyEngine, models: list[ServedModel], clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` closed-loop threads for `seconds`: completion tokens/s and the engine's work meanwhile."""
    prompts = [engine.prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]
    tokens, stop_at = [0], time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            user = rng.randrange(len(models))
            request = GenerationRequest(rng.choice(prompts), models[user], max_tokens=max_tokens, user=f"bench/u{user}")
            choice = engine.submit(request).result()[0]
            if time.perf_counter() <= stop_at:
                tokens[0] += choice.tokens

    before, started = dict(engine.health()["work"]), time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started  # the window and its last requests' ends
    return {"tokens_per_s": tokens[0] / seconds, "work": work_summary(before, engine.health()["work"], elapsed)}


def render(results: dict) -> str:
    lines = [f"**{results['machine']}**, {results['threads']} compute threads; the engine in-process, "
             f"{results['clients']} closed-loop client threads, {results['max_tokens']} completion tokens per "
             f"request, {results['seconds']:.0f} s per level and precision, the precisions alternating.", "",
             "| adapters | precision | tokens/s | rows per step | prefills/s | rows per prefill | prefills' share "
             "of the engine's time |", "|---|---|---|---|---|---|---|"]
    for row in results["levels"]:
        w = row["work"]
        lines.append(f"| {row['adapters']} | {row['precision']} | {row['tokens_per_s']:.1f} | {w['rows_per_step']:.1f} "
                     f"| {w['prefills_per_s']:.1f} | {w['rows_per_prefill']:.1f} | {w['prefill_share']:.0%} |")
    by = {(r["adapters"], r["precision"]): r["tokens_per_s"] for r in results["levels"]}
    ratios = [f"{a} adapters ×{by[(a, 'bf16')] / by[(a, 'fp32')]:.2f}" for a in sorted({r["adapters"] for r in
                                                                                       results["levels"]})]
    return "\n".join(lines + ["", "bf16 against fp32: " + "; ".join(ratios) + "."]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapters", default="0,8", help="Levels: distinct users' adapters in the traffic.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="Compute threads (default: every CPU, as `corll serve`).")
    parser.add_argument("--out", type=Path, help="Folder for <cpu>-table.md and .json.")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    hardware = detect()
    levels = [int(a) for a in args.adapters.split(",")]
    paths = make_adapters(args.model, Path(tempfile.mkdtemp(prefix="corll-engine-")), max(levels))
    engines = {p: PolicyEngine(args.model, precision=p, max_loaded_adapters=max(max(levels), 1)) for p in PRECISIONS}
    results = {"machine": f"{hardware.cpu} ({hardware.capability})", "threads": threads, "clients": args.clients,
               "seconds": args.seconds, "max_tokens": args.max_tokens, "levels": []}
    for adapters in levels:
        # as serve_load.py's users: one per adapter, or as many base-model users as clients
        models = [ServedModel(i + 1, path) for i, path in enumerate(paths[:adapters])] or \
            [ServedModel(None, None)] * args.clients
        for precision, engine in engines.items():
            level(engine, models, args.clients, 5, args.max_tokens)  # warm-up: adapters read, kernels primed
            row = {"adapters": adapters, "precision": precision,
                   **level(engine, models, args.clients, args.seconds, args.max_tokens)}
            results["levels"].append(row)
            print(row, file=sys.stderr, flush=True)
    table = render(results)
    print(table)
    if args.out:
        write_table(args.out, hardware, table, results)


if __name__ == "__main__":
    main()
