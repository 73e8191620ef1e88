"""Feedback service under load, and after a crash: events/s, latency percentiles, nothing lost.

    .venv/bin/python benchmarks/service_load.py --seconds 10 --out results/service-load/service-table.md

For each backend (SQLite file in WAL mode; PostgreSQL 15 on loopback, started
with scripts/postgres.sh) a real `corll serve` process (tiny model) takes
`POST /v1/feedback` from 1, 8 and 32 concurrent clients for `--seconds` each;
we report acknowledged events per second and p50/p99 latency. Then the crash
run: 8 clients post edits, the server is killed with SIGKILL mid-load, and every
event the server had acknowledged (HTTP 200 with an id) is looked up in the
store, text included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_common import postgres

from corll.service.supervise import free_port
from corll.store import Principal, Store

CONCURRENCY = (1, 8, 32)
INTERACTIONS = 200


def start_server(db: str, *options: str, model: str = "tiny") -> tuple[subprocess.Popen, str]:
    """A `corll serve` process on a free loopback port, once its health check answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "corll", "serve", "--model", model, "--db", db,
                                "--port", str(port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not start on {db}")


def seed(db: str) -> tuple[str, list[str]]:
    store = Store(db)
    key = store.create_api_key("bench", "user")
    who = Principal("bench", "user")
    ids = [store.record_interaction(who, [{"role": "user", "content": f"prompt {i}"}], f"response {i}",
                                    policy_version_id=None, sampling={}, response_logprob=None)
           for i in range(INTERACTIONS)]
    store.engine.dispose()
    return key, ids


async def client_loop(url: str, key: str, ids: list[str], stop_at: float, latencies: list[float],
                      acknowledged: list[tuple[int, str, str]], errors: list[str], worker: int) -> None:
    rng = random.Random(worker)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        n = 0
        while time.perf_counter() < stop_at:
            cid, text = rng.choice(ids), f"edit {worker}-{n}"
            n += 1
            started = time.perf_counter()
            try:
                response = await http.post("/v1/feedback", json={"completion_id": cid, "edit": text})
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                acknowledged.append((response.json()["id"], cid, text))
            else:
                errors.append(str(response.status_code))


async def load(url: str, key: str, ids: list[str], clients: int, seconds: float,
               kill_after: float | None = None, process: subprocess.Popen | None = None) -> dict:
    latencies: list[float] = []
    acknowledged: list[tuple[int, str, str]] = []
    errors: list[str] = []
    start = time.perf_counter()
    tasks = [asyncio.create_task(client_loop(url, key, ids, start + seconds, latencies, acknowledged, errors, w))
             for w in range(clients)]
    if kill_after is not None:
        await asyncio.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")  # noqa: E731
    return {"clients": clients, "events_per_s": len(latencies) / elapsed, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "acknowledged": acknowledged, "errors": len(errors)}


def run_backend(name: str, db: str, seconds: float) -> dict:
    key, ids = seed(db)
    process, url = start_server(db)
    rows = []
    try:
        for clients in CONCURRENCY:
            result = asyncio.run(load(url, key, ids, clients, seconds))
            rows.append({k: v for k, v in result.items() if k != "acknowledged"})
            print(f"{name} {clients:>2} clients: {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, "
                  f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}", flush=True)
    finally:
        process.kill()
        process.wait()
    # The crash run: SIGKILL after 2 s of an 8-client load; then count acknowledged events in the store.
    process, url = start_server(db)
    crash = asyncio.run(load(url, key, ids, 8, seconds=4, kill_after=2.0, process=process))
    process.wait()
    store = Store(db)
    stored = {r.event_id: (r.interaction_id, r.edit) for r in store.feedback(tenant="bench")}
    store.engine.dispose()
    missing = [a for a in crash["acknowledged"] if stored.get(a[0]) != (a[1], a[2])]
    crash_row = {"acknowledged": len(crash["acknowledged"]), "found": len(crash["acknowledged"]) - len(missing),
                 "lost": len(missing), "refused_or_failed_after_kill": crash["errors"]}
    print(f"{name} crash: {crash_row}", flush=True)
    return {"load": rows, "crash": crash_row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per concurrency level")
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here, and the numbers as .json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corll-load-"))
    work.chmod(0o777)
    results = {}
    try:
        results["sqlite"] = run_backend("sqlite", f"sqlite:///{work / 'load.db'}", args.seconds)
        with postgres() as pg:
            results["postgresql"] = run_backend("postgresql", pg, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, args.seconds)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def render(results: dict, seconds: float) -> str:
    lines = [f"Load: `POST /v1/feedback` (edits), {seconds:.0f} s per level, one `corll serve` process (uvicorn, "
             f"{os.cpu_count()} cores shared with the clients).", "",
             "| backend | clients | events/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for backend, result in results.items():
        for row in result["load"]:
            lines.append(f"| {backend} | {row['clients']} | {row['events_per_s']:.0f} | {row['p50_ms']:.1f} | "
                         f"{row['p99_ms']:.1f} | {row['errors']} |")
    lines += ["", "Crash: SIGKILL to the server 2 s into an 8-client load; then every acknowledged event looked up.", "",
              "| backend | acknowledged | found in the store | lost | requests that failed after the kill |",
              "|---|---|---|---|---|"]
    for backend, result in results.items():
        c = result["crash"]
        lines.append(f"| {backend} | {c['acknowledged']} | {c['found']} | {c['lost']} | "
                     f"{c['refused_or_failed_after_kill']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
