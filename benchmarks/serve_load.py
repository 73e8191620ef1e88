"""Serving throughput and latency: continuous batching across adapters vs one request at a time.

    .venv/bin/python benchmarks/serve_load.py --seconds 60 --out results/serve-load/serve-table.md

Two `corll serve` processes on the same model, measured in one run: the batching
engine (`--max-batch 32`) and the serialized server (`--max-batch 1`: each
request runs alone, as the server did before it batched). Closed-loop clients
using the official `openai` client (AsyncOpenAI) ask for drafts at 1, 8 and 32
concurrent clients for `--seconds` each; then 32 clients of whom 8 are routed to
8 different per-user LoRA adapters. Reported: completion tokens/s (of requests
finished within the window), p50/p99 latency, errors, and the first streamed
token's latency at 1 client beside the full completion's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from corll.hardware import detect
from corll.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import start_server  # noqa: E402

PROMPTS = ["Write a tagline for a bakery.", "Describe a rainy morning.", "Give one tip for a job interview.",
           "Summarize why sleep matters.", "Write a short thank-you note.", "Name a good first pet and say why."]
LEVELS = ((1, 0), (8, 0), (32, 0), (32, 8))  # (clients, how many of them have their own adapter)
ADAPTER_USERS = 8


def make_adapters(model: str, db: str, folder: Path, users: int) -> None:
    """`users` per-user policy versions with distinct random LoRA weights (so each routes to its own)."""
    import torch

    from corll.policy import LoraSettings, load_policy

    policy = load_policy(model, lora=LoraSettings(), precision="fp32", seed=0)
    store = Store(db)
    for u in range(users):
        torch.manual_seed(u)
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.02)
        path = folder / f"adapter-{u}"
        policy.model.save_pretrained(str(path))
        store.add_policy_version("bench", f"user{u}", str(path))
    store.engine.dispose()


async def client_loop(url: str, key: str, worker: int, stop_at: float, max_tokens: int, done: list[dict]) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    n = 0
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            reply = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPTS[(worker + n) % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=1.0)
            done.append({"end": time.perf_counter(), "latency": time.perf_counter() - started,
                         "tokens": reply.usage.completion_tokens})
        except openai.APIError as exc:
            done.append({"end": time.perf_counter(), "error": str(exc)[:200]})
        n += 1
    await client.close()


def level(url: str, keys: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    done: list[dict] = []

    async def run() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(url, keys[w], w, stop_at, max_tokens, done) for w in range(clients)))

    started = time.perf_counter()
    asyncio.run(run())
    window = [d for d in done if d["end"] <= started + seconds]  # requests finished inside the window
    ok = [d for d in window if "error" not in d]
    latencies = sorted(d["latency"] for d in ok)
    return {"clients": clients, "requests": len(ok), "errors": sum("error" in d for d in done),
            "tokens_per_s": sum(d["tokens"] for d in ok) / seconds,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None}


def first_token(url: str, key: str, requests: int, max_tokens: int) -> dict:
    """At one client: time to the first streamed content, and to the end of the stream."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    firsts, fulls = [], []
    for i in range(requests):
        started, first = time.perf_counter(), None
        for chunk in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is not None:  # an empty completion has no first token to time
            firsts.append(first)
            fulls.append(time.perf_counter() - started)
    return {"first_token_p50_s": statistics.median(firsts), "completion_p50_s": statistics.median(fulls)}


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seconds", type=float, default=60.0, help="Load per level and server.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="Server threads (default: every CPU).")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    MODEL = args.model
    work = Path(tempfile.mkdtemp(prefix="corll-serve-"))
    results: dict = {"machine": machine(), "model": args.model, "max_tokens": args.max_tokens,
                     "seconds": args.seconds, "servers": {}}
    try:
        db = f"sqlite:///{work / 'corll.db'}"
        store = Store(db)
        keys = [store.create_api_key("bench", f"user{u}") for u in range(ADAPTER_USERS + max(c for c, _ in LEVELS))]
        store.engine.dispose()
        options = ["--threads", str(args.threads)] if args.threads else []
        for name, batch in (("serialized", 1), ("batching", 32)):
            results["servers"][name] = run_server(db, work, name, batch, options, keys, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def run_server(db: str, work: Path, name: str, batch: int, options: list[str], keys: list[str], args) -> dict:
    rows, adapters_made = [], (work / "adapter-0").exists()
    process, url = start_server(db, "--max-batch", str(batch), *options, model=args.model)
    try:
        first_token(url, keys[-1], 2, args.max_tokens)  # warm-up
        for clients, adapted in LEVELS:
            if adapted and not adapters_made:
                process.kill()
                make_adapters(args.model, db, work, ADAPTER_USERS)
                adapters_made = True
                process, url = start_server(db, "--max-batch", str(batch), *options, model=args.model)
            # clients with adapters are users 0..adapted-1; the rest use the base model (users 8..)
            chosen = keys[:adapted] + keys[ADAPTER_USERS:ADAPTER_USERS + clients - adapted]
            print(f"{name}: {clients} clients ({adapted} adapters)", file=sys.stderr)
            rows.append({**level(url, chosen, clients, args.seconds, args.max_tokens), "adapters": adapted})
        latency = first_token(url, keys[-1], 10, args.max_tokens * 2)
    finally:
        process.kill()
        process.wait()
    return {"levels": rows, **latency}


def machine() -> str:
    hw = detect()
    return f"{hw.cpu} ({hw.capability}, {'native' if hw.native_bf16 else 'no native'} bf16), {hw.cpus} CPUs"


def render(results: dict) -> str:
    serial, batched = results["servers"]["serialized"], results["servers"]["batching"]
    lines = [f"**{results['machine']}**; server and clients share these CPUs.", "",
             f"Model {results['model']}, {results['max_tokens']} completion tokens per request at temperature 1, "
             f"closed-loop clients (official `openai` client), {results['seconds']:.0f} s per level.", "",
             "| clients | adapters | serialized tok/s | batching tok/s | ratio | serialized p50 / p99 s | "
             "batching p50 / p99 s | errors |", "|---|---|---|---|---|---|---|---|"]
    for s, b in zip(serial["levels"], batched["levels"]):
        lines.append(f"| {s['clients']} | {s['adapters']} | {s['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
                     f"×{b['tokens_per_s'] / s['tokens_per_s']:.2f} | {fmt(s['p50_s'])} / {fmt(s['p99_s'])} | "
                     f"{fmt(b['p50_s'])} / {fmt(b['p99_s'])} | {s['errors'] + b['errors']} |")
    lines += ["", f"Streaming at 1 client ({2 * results['max_tokens']} tokens): first token p50 "
              f"{batched['first_token_p50_s']:.3f} s, whole completion p50 {batched['completion_p50_s']:.3f} s "
              f"(ratio {batched['first_token_p50_s'] / batched['completion_p50_s']:.2f}); serialized server: "
              f"{serial['first_token_p50_s']:.3f} s of {serial['completion_p50_s']:.3f} s."]
    return "\n".join(lines) + "\n"


def fmt(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


MODEL = "smollm2-135m-instruct"

if __name__ == "__main__":
    main()
