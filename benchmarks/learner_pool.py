"""Learner workers on one PostgreSQL database: 1 worker against 2, the same edits, in one run.

    .venv/bin/python benchmarks/learner_pool.py --users 40 --edits 8 --out results/learner-pool

`corll learn` workers of one thread each are started on an empty log and wait, polling every 0.5 s, as
a deployed pool does; then `--users` simulated users send `--edits` edits each, one user after another,
as fast as the store logs them; the run ends when every user has a decision. First one worker, then two
on a fresh log. Reported: the wall time from the first edit to the last decision, its ratio (2 workers
against 1), and the time from the edit that made each user due to their decision (p50, p95). PostgreSQL: see `bench_common.postgres`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import postgres, publish

from corll.hardware import detect
from corll.store import Principal, Store

PROMPTS = [f"Write a short note about topic {i}." for i in range(200)]


def fresh_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def log_edits(url: str, users: int, edits: int) -> None:
    """Every user's edits, one user after another, as the server logs them."""
    store = Store(url)
    for u in range(users):
        who = Principal("bench", f"user{u}")
        for i in range(edits):
            messages = [{"role": "user", "content": PROMPTS[(u * edits + i) % len(PROMPTS)]}]
            interaction = store.record_interaction(who, messages, "hello there, friend", policy_version_id=None,
                                                   sampling={}, response_logprob=None)
            store.add_feedback(who, interaction, edit=f"note {u} " * 3)
    store.engine.dispose()


def worker(url: str, adapters: Path, model: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "corll", "learn", "--poll", "0.5", "--model", model, "--db", url, "--adapters",
             str(adapters), "--min-edits", "8", "--epochs", "2", "--threads", "1", "--nice", "0",
             "--precision", "fp32"], stdout=out, stderr=subprocess.STDOUT)


def run(url: str, workers: int, args, work: Path) -> dict:
    """Workers started and idle on an empty log; then the edits; until every user has a decision."""
    fresh_database(url)
    store = Store(url)
    processes = [worker(url, work / f"adapters-{workers}", args.model, work / f"worker-{workers}-{w}.log")
                 for w in range(workers)]
    try:
        while len(store.worker_states()) < workers:  # each reports idle after its first (empty) poll
            assert all(p.poll() is None for p in processes), (work / f"worker-{workers}-0.log").read_text()[-2000:]
            time.sleep(0.2)
        started = time.time()
        log_edits(url, args.users, args.edits)
        while len(decided := store.decisions()) < args.users:
            assert all(p.poll() is None for p in processes), (work / f"worker-{workers}-0.log").read_text()[-2000:]
            time.sleep(0.2)
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait()
    waits = sorted(d.metrics["edit_to_decision_s"] for d in decided)
    finished = max(d.created_at.timestamp() for d in decided)
    store.engine.dispose()
    return {"workers": workers, "decisions": len(decided), "wall_s": finished - started,
            "edit_to_decision_p50_s": statistics.median(waits),
            "edit_to_decision_p95_s": waits[min(len(waits) - 1, int(0.95 * len(waits)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--edits", type=int, default=8, help="Edits per user (the learner's --min-edits is 8).")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corll-pool-"))
    try:
        with postgres() as url:
            rows = [run(url, n, args, work) for n in (1, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hardware = detect()
    one, two = rows
    lines = [f"**{hardware.cpu} ({hardware.capability}, {'native' if hardware.native_bf16 else 'no native'} bf16), "
             f"{hardware.cpus} CPUs**; PostgreSQL on the same machine.", "",
             f"{args.users} users × {args.edits} edits, one user after another, model {args.model}, waiting workers of "
             "one thread (`corll learn --poll 0.5 --threads 1 --epochs 2`).", "",
             "| workers | decisions | first edit → last decision s | edit → decision p50 s | p95 s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['decisions']} | {r['wall_s']:.1f} | {r['edit_to_decision_p50_s']:.1f} | "
              f"{r['edit_to_decision_p95_s']:.1f} |" for r in rows]
    lines += ["", f"2 workers take ×{two['wall_s'] / one['wall_s']:.2f} the time of 1 (target ≤ 0.6)."]
    table = "\n".join(lines) + "\n"
    publish(table, args.out, hardware, {"users": args.users, "edits": args.edits, "model": args.model,
                                        "rows": rows}, tag=args.model)


if __name__ == "__main__":
    main()
