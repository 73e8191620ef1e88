"""What a learner's poll costs as the log grows: 10³, 10⁵ and 10⁶ edit events on PostgreSQL.

    .venv/bin/python benchmarks/learner_poll.py --out results/learner-poll

The log is filled in steps (bulk inserts, `--users` users, every user's edits decided so that nothing is
due), and at each size a learner worker's queue is measured: its first poll (each edit's id and owner read
once, and the watermarks), then `--polls` steady polls, each after one new edit logged through the store
as the server logs it (`learn_once` with the worker's queue: the new events read, nothing due). The
previous learner read every edit with its texts at each poll (`Store.feedback(kind="edit")`); that read is
timed once per size as the baseline, without the per-lineage queries that followed it. PostgreSQL:
see `bench_common.postgres`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from pathlib import Path

from sqlalchemy import func, insert, select

from bench_common import postgres, publish

from corll.hardware import detect
from corll.service.learn import LearnConfig, Worker, learn_once
from corll.service.queue import EditQueue
from corll.store import Principal, Store
from corll.store.schema import Decision, FeedbackEvent, Interaction

SIZES = (1_000, 100_000, 1_000_000)
CHUNK = 20_000


def fill(store: Store, total: int, users: int) -> None:
    """Bulk-insert edited completions until the log holds `total` edit events, then decide every user's
    edits so far (nothing is due: the polls measure reading, not training)."""
    with store.engine.begin() as connection:
        have = connection.scalar(select(func.count()).select_from(FeedbackEvent))
    while have < total:
        n = min(CHUNK, total - have)
        ids = [uuid.uuid4().hex for _ in range(n)]
        owners = [f"user{(have + i) % users}" for i in range(n)]
        with store.engine.begin() as connection:
            connection.execute(insert(Interaction), [
                {"id": i, "tenant": "bench", "user": u, "messages": [{"role": "user", "content": f"Note {k}."}],
                 "response": "hello there, friend", "sampling": {}} for k, (i, u) in enumerate(zip(ids, owners))])
            connection.execute(insert(FeedbackEvent), [
                {"interaction_id": i, "kind": "edit", "edit": "yes yes yes", "author": u} for i, u in zip(ids, owners)])
        have += n
    with store.engine.begin() as connection:
        newest = connection.execute(select(Interaction.user, func.max(FeedbackEvent.id)).join(FeedbackEvent)
                                    .group_by(Interaction.user)).all()
        connection.execute(insert(Decision), [
            {"tenant": "bench", "user": u, "decision": "rejected", "reason": "benchmark", "seen_through": n,
             "metrics": {}} for u, n in newest])


def measure(store: Store, args, rng: random.Random) -> dict:
    config = LearnConfig(model="tiny", adapters_dir=Path("unused"), min_edits=8)  # nothing is due: nothing trains
    worker = Worker("bench", EditQueue(store, min_edits=config.min_edits, shared=False))
    started = time.perf_counter()
    learn_once(store, config, worker=worker)
    first = time.perf_counter() - started
    polls = []
    for _ in range(args.polls):
        who = Principal("bench", f"user{rng.randrange(args.users)}")
        interaction = store.record_interaction(who, [{"role": "user", "content": "One more."}], "hello there, friend",
                                               policy_version_id=None, sampling={}, response_logprob=None)
        store.add_feedback(who, interaction, edit="yes yes yes")
        started = time.perf_counter()
        assert learn_once(store, config, worker=worker) == []
        polls.append(time.perf_counter() - started)
    started = time.perf_counter()
    everything = len(store.feedback(kind="edit"))
    full = time.perf_counter() - started
    return {"events": everything, "first_poll_s": first, "poll_ms_p50": 1000 * statistics.median(polls),
            "poll_ms_max": 1000 * max(polls), "full_read_s": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = random.Random(0)
    with postgres() as url:
        store = Store(url)
        rows = []
        for size in map(int, args.sizes.split(",")):
            fill(store, size, args.users)
            with store.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
            rows.append(measure(store, args, rng))
            print(rows[-1], flush=True)
        store.engine.dispose()
    hardware = detect()
    spread = max(r["poll_ms_p50"] for r in rows) / min(r["poll_ms_p50"] for r in rows)
    lines = [f"**{hardware.cpu} ({hardware.capability}), {hardware.cpus} CPUs**; PostgreSQL on the same machine.", "",
             f"{args.users} users, every edit decided; each steady poll follows one new edit (median and worst of "
             f"{args.polls}). Baseline: the previous learner's read of every edit at each poll.", "",
             "| edit events | first poll s | steady poll ms p50 | worst ms | previous poll's full read s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['events']:,} | {r['first_poll_s']:.2f} | {r['poll_ms_p50']:.1f} | {r['poll_ms_max']:.1f} | "
              f"{r['full_read_s']:.2f} |" for r in rows]
    lines += ["", f"The steady poll's median varies ×{spread:.2f} from the smallest log to the largest (target: "
              "flat within 20%, ×1.20)."]
    table = "\n".join(lines) + "\n"
    publish(table, args.out, hardware, {"users": args.users, "rows": rows})


if __name__ == "__main__":
    main()
