"""corll's engine without HTTP: what it decodes when nothing else shares the CPUs, in fp32 and in bf16.

    .venv/bin/python benchmarks/engine_load.py --adapters 0,8 --seconds 15 --out results/engine-load

The serving benchmark (`serve_load.py`) measures the engine behind `corll serve`, sharing the CPUs with the
HTTP layer and the clients. This one calls the engine in-process: `--clients` threads each submit a request,
wait for its answer and submit the next, every request for a user drawn uniformly (base-model users, or users
with their own adapter of random weights, one user per adapter or as many base-model users as clients), with
`serve_load.py`'s prompts and length. The precisions alternate level by level, so machine noise hits both
alike, each level on a fresh engine (one at a time, as in a server: its thread alone computes). Reported per
level: completion tokens/s in steady state (after a warm-up) and the engine's own account of its work (rows
per decoding step, the prefills' share of its time). The gap to `serve_load.py`'s figures is what serving
over HTTP on the same CPUs costs.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from serve_load import make_adapters, unique_prompt, warmed_up, work_summary

from bench_common import publish
from corll.hardware import detect, set_threads
from corll.server.engine import PolicyEngine
from corll.server.protocol import GenerationRequest, ServedModel

PRECISIONS = ("fp32", "bf16")
PROMPT_POOL = 4096  # unique prompts, templated before a level starts


def level(engine: PolicyEngine, models: list[ServedModel], clients: int, seconds: float, max_tokens: int,
          warmup: float = 5.0) -> dict:
    """`clients` closed-loop threads in steady state: the window opens after a warm-up (at least `warmup`
    seconds, and until every client has finished a request), and tokens/s are the tokens the engine generated
    inside it by its own count (one per decoded row and one per prefilled row), so a request that straddles
    the window counts for its part inside it."""
    # Templated before the load starts: the chat template is Python, and run in the clients it would take
    # the GIL from the engine's scheduler. Cycled: a prompt comes back only thousands of requests later.
    rng = random.Random(-1)
    prompts = itertools.cycle([engine.prompt_ids([{"role": "user", "content": unique_prompt(rng)}])
                               for _ in range(PROMPT_POOL)])
    stop, finished = threading.Event(), set()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            user = rng.randrange(len(models))
            request = GenerationRequest(next(prompts), models[user], max_tokens=max_tokens, user=f"bench/u{user}")
            engine.submit(request).result()
            finished.add(seed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    try:
        while not warmed_up(began, warmup, len(finished), clients, "corll"):
            time.sleep(0.05)
    except RuntimeError:
        stop.set()
        raise
    before, started = dict(engine.health()["work"]), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = dict(engine.health()["work"]), time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    generated = after["rows"] - before["rows"] + after["prefill_rows"] - before["prefill_rows"]
    return {"tokens_per_s": generated / elapsed, "work": work_summary(before, after, elapsed)}


def in_own_thread(work, *args):
    """`work(*args)` on a thread that then ends: the OpenMP threads its torch work started end with it, and do
    not slow the engine's thread (more OpenMP threads than CPUs make libgomp's workers sleep between operations)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work, *args).result()


def render(results: dict) -> str:
    lines = [f"**{results['machine']}**, {results['threads']} compute threads; the engine in-process, "
             f"{results['clients']} closed-loop client threads, {results['max_tokens']} completion tokens per "
             f"request, {results['seconds']:.0f} s per level and precision, the precisions alternating; tokens/s "
             + ("as the engine counted them inside the window, after a warm-up" if results.get("counting") == "engine"
                else "of the requests that finished inside a window that started every client at once (before "
                     "steady-state counting)") + ".", "",
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
    paths = in_own_thread(make_adapters, args.model, Path(tempfile.mkdtemp(prefix="corll-engine-")), max(levels))
    results = {"machine": f"{hardware.cpu} ({hardware.capability})", "threads": threads, "clients": args.clients,
               "seconds": args.seconds, "max_tokens": args.max_tokens, "counting": "engine", "levels": []}
    for adapters in levels:
        # as serve_load.py's users: one per adapter, or as many base-model users as clients
        models = [ServedModel(i + 1, path) for i, path in enumerate(paths[:adapters])] or \
            [ServedModel(None, None)] * args.clients
        for precision in PRECISIONS:  # one engine at a time, as in a server: its thread alone computes
            engine = PolicyEngine(args.model, precision=precision, max_loaded_adapters=max(adapters, 1))
            try:
                row = {"adapters": adapters, "precision": precision,
                       **level(engine, models, args.clients, args.seconds, args.max_tokens)}
            finally:
                engine.close()
            results["levels"].append(row)
            print(row, file=sys.stderr, flush=True)
    publish(render(results), args.out, hardware, results)


if __name__ == "__main__":
    main()
