"""A simulated deployment: users draft emails through the running server and edit them, with and without
the learner — do their edits shrink with nobody running a command?

    .venv/bin/python experiments/deployment.py --drafts 40 --out docs/deployment

Each simulated user has one latent preference (the rule editors of the learning-from-user-edits
tasks: a greeting, a closing, bullet points, ...) and writes emails from their own kind of notes.
Each user, in their own thread, asks for a draft with the official `openai` client, edits it to their
taste (an unchanged draft is sent as accepted), sends the edit with the corll SDK, and thinks for a
moment before the next one. The same traffic runs twice on fresh databases: against `corll serve`
and against `corll serve --learn`; draft t of user u is requested with the same seed in both, so
the two arms differ only by what the learner promoted. Without a learner a draft does not depend on
when it is asked for (a seeded request gives the same text alone or inside a batch), so the users of
the static server do not pause; on the learning server they pause `--think` seconds between drafts,
as people do, which is the time the learner has. Reported per user and overall: words edited
per draft over time with promotions marked, cumulative edit cost in both arms, the paired difference
(per draft, and over the last third of each user's drafts) with its t interval, and the learner's
decisions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

import corll
from corll.feedback import word_edit_distance
from corll.hardware import detect
from corll.store import Principal, Store, is_blank
from corll.tasks.prelude import EMAIL_SOURCES, load_documents, prompt_for
from corll.users.preferences import DESCRIPTIONS, revise

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the load benchmark's server starter
from deployment_compare import summarise_run  # noqa: E402
from service_load import start_server  # noqa: E402

# each user: (their preference family, the notes they write emails from)
USERS = {"ana": ("forum-notes", "forum-notes"), "ben": ("tweet-notes", "tweet-notes"),
         "cleo": ("paper-notes", "paper-notes"), "dev": ("review-notes", "review-notes")}


def user_session(url: str, key: str, model: str, user: str, number: int, preference: str, source: str, drafts: int,
                 think: float, max_tokens: int, traffic_seed: int, rows: list[dict], lock: threading.Lock) -> None:
    """One user's drafts, edits and pauses; one row per draft. The traffic seed picks where in the user's
    notes the session starts and the sampling seeds of their drafts (`number` tells users apart), so runs
    with different traffic seeds are independent repetitions."""
    documents = load_documents(source)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2, timeout=600)
    with corll.Client(url, key) as sdk:
        for t in range(drafts):
            prompt = prompt_for("email", EMAIL_SOURCES[source], documents[(t + 17 * traffic_seed) % len(documents)])
            completion = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                temperature=0.7, seed=100_000 * traffic_seed + 1000 * number + t)
            draft = completion.choices[0].message.content
            kept = revise(preference, draft)
            nothing = is_blank(kept)  # an empty draft the user's rules add nothing to: no edit can say so
            if nothing:
                sdk.react(completion.id, "dislike")
            else:
                sdk.edit(completion.id, kept)
            with lock:
                rows.append({"user": user, "t": t, "id": completion.id, "cost": word_edit_distance(draft, kept),
                             "draft": draft, "kept": kept, "kept_nothing": nothing})
            time.sleep(think)


def run_arm(name: str, args, work: Path, users: dict[str, tuple[str, str]] = USERS,
            learn_options: str | None = None) -> dict:
    """The whole traffic against one server (with `learn_options`, a learning one: `serve --learn`); rows
    carry the version that wrote each draft. `args`: model, drafts, think, max_tokens, min_edits, seed."""
    db = f"sqlite:///{work / name / 'corll.db'}"
    (work / name).mkdir(parents=True)
    store = Store(db)
    keys = {user: store.create_api_key("acme", user) for user in users}
    options = ["--precision", "auto", "--threads", "1"]
    if learn_options is not None:
        options += ["--learn", "--learn-min-edits", str(args.min_edits), "--adapters", str(work / name / "adapters"),
                    "--learn-options", learn_options]
    server, url = start_server(db, *options, model=args.model)
    rows: list[dict] = []
    lock = threading.Lock()
    started = time.perf_counter()
    try:
        think = args.think if learn_options is not None else 0.0
        failed: list[Exception] = []

        def session(*session_args) -> None:
            try:
                user_session(*session_args)
            except Exception as exc:  # noqa: BLE001 - a user's session that dies fails the arm (raised below)
                failed.append(exc)

        threads = [threading.Thread(target=session, args=(url, keys[u], args.model, u, i, preference, source,
                                                          args.drafts, think, args.max_tokens, args.seed, rows, lock))
                   for i, (u, (preference, source)) in enumerate(users.items())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failed:  # its rows are not complete: no unit is written from them
            raise RuntimeError(f"{len(failed)} user session(s) of arm {name} failed; the first: {failed[0]!r}") \
                from failed[0]
    finally:
        server.terminate()
        server.wait(timeout=120)
    wall = time.perf_counter() - started
    for row in rows:
        row["version"] = store.get_interaction(Principal("acme", row["user"]), row["id"]).policy_version_id
    decisions = [{"user": d.user, "version": d.version_id, "decision": d.decision, "reason": d.reason,
                  "seen_through": d.seen_through, "margin_gain": d.metrics.get("margin_gain"),
                  "edit_logprob_gain": d.metrics.get("edit_logprob_gain"),
                  "edit_to_decision_s": d.metrics.get("edit_to_decision_s"),
                  "at": d.created_at.isoformat()} for d in store.decisions()]
    return {"rows": sorted(rows, key=lambda r: (r["user"], r["t"])), "decisions": decisions, "wall_s": wall}


def plot(results: dict, drafts: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(USERS), figsize=(4 * len(USERS), 3.4), sharey=True)
    for ax, user in zip(axes, USERS):
        for arm, style in (("static", "-"), ("learning", "-")):
            costs = [r["cost"] for r in results[arm]["rows"] if r["user"] == user]
            smooth = [statistics.fmean(costs[max(0, i - 4): i + 1]) for i in range(len(costs))]
            ax.plot(range(len(costs)), smooth, style, label={"static": "serve", "learning": "serve --learn"}[arm])
        first_use = {}
        for r in results["learning"]["rows"]:
            if r["user"] == user and r["version"] is not None:
                first_use.setdefault(r["version"], r["t"])
        for i, t in enumerate(sorted(first_use.values())):
            ax.axvline(t, color="green", linestyle=":", label="promoted version first serves" if i == 0 else None)
        ax.set_title(f"{user}: {USERS[user][0]}")
        ax.set_xlabel("draft")
    axes[0].set_ylabel("words edited per draft (mean of last 5)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(results: dict, summary: dict, args) -> str:
    hw = detect()
    decisions = results["learning"]["decisions"]
    lines = [f"**{hw.cpu} ({hw.capability}, {'native' if hw.native_bf16 else 'no native'} bf16), {hw.cpus} CPUs**; "
             f"model {args.model}; server 1 thread, learner 1 thread (`serve --learn`), clients on the same CPUs.", "",
             f"{len(USERS)} users × {args.drafts} drafts (traffic seed {args.seed}), {args.max_tokens} tokens at "
             f"temperature 0.7; on the learning "
             f"server each user pauses {args.think:g} s between drafts (the static server's drafts do not depend on "
             f"timing); learner: a candidate after {args.min_edits} new edits, "
             f"gate {'with `' + args.learn_options + '`' if args.learn_options else 'as by default'}. Wall time: {results['static']['wall_s'] / 60:.1f} min without, "
             f"{results['learning']['wall_s'] / 60:.1f} min with learning.", "",
             "| user | preference | words edited, `serve` | words edited, `serve --learn` | promoted | rejected |",
             "|---|---|---|---|---|---|"]
    for user, (preference, _) in USERS.items():
        mine = [d for d in decisions if d["user"] == user]
        lines.append(f"| {user} | {DESCRIPTIONS[preference]} | {summary['per_user'][user]['total']['static']} | "
                     f"{summary['per_user'][user]['total']['learning']} | {sum(d['decision'] == 'promoted' for d in mine)} | "
                     f"{sum(d['decision'] == 'rejected' for d in mine)} |")
    lines.append(f"| **all** | | **{summary['total']['static']}** | **{summary['total']['learning']}** | "
                 f"{sum(d['decision'] == 'promoted' for d in decisions)} | "
                 f"{sum(d['decision'] == 'rejected' for d in decisions)} |")
    for key, label in (("all", "every draft"), ("last_third", "the last third of each user's drafts")):
        s = summary[key]
        lines += ["", f"Words edited per draft, `serve` − `serve --learn`, paired by user and draft over {label}: "
                  f"**{s['mean']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}]** (95% t interval, n = {s['n']}, "
                  f"paired t-test p = {s['p']:.3g})."]
    lines += ["", "Decisions of the learner:", "", "| user | version | decision | reason |", "|---|---|---|---|"]
    lines += [f"| {d['user']} | {d['version']} | {d['decision']} | {d['reason']} |" for d in decisions]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--drafts", type=int, default=40, help="drafts per user")
    parser.add_argument("--think", type=float, default=40.0,
                        help="seconds a user of the learning server pauses between drafts (reading and fixing one)")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="draft length cap; at 64 most emails are cut before their sign-off, which some users edit")
    parser.add_argument("--min-edits", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="traffic seed: which notes each user starts from and "
                        "the sampling seeds of their drafts; repeat the run with other seeds")
    parser.add_argument("--learn-options", default="", help="settings for the learner, as `corll learn` takes them")
    parser.add_argument("--out", type=Path, default=Path("docs/deployment"))
    parser.add_argument("--static-from", type=Path, help="reuse the static arm of an earlier results JSON with the "
                        "same model, drafts and max tokens (its drafts do not depend on timing)")
    parser.add_argument("--static-only", action="store_true", help="run only the static arm and write it to "
                        "OUT-results.json, for a later --static-from (it may run on a busy machine: its drafts do not "
                        "depend on timing)")
    args = parser.parse_args()
    if args.static_only and args.static_from:
        parser.error("--static-only runs the static arm that --static-from would reuse; give one of them")
    work = Path(tempfile.mkdtemp(prefix="corll-deployment-"))
    results = {}
    if args.static_from:
        earlier = json.loads(args.static_from.read_text())
        same = {k: earlier["settings"][k] for k in ("model", "drafts", "max_tokens")}
        same["seed"] = earlier["settings"].get("seed", 0)  # runs before --seed existed used traffic seed 0
        if same != {"model": args.model, "drafts": args.drafts, "max_tokens": args.max_tokens, "seed": args.seed}:
            parser.error(f"--static-from {args.static_from} was run with {same}")
        results["static"] = earlier["static"]
        for row in results["static"]["rows"]:  # today's users and edit measure, on the earlier drafts
            row["kept"] = revise(USERS[row["user"]][0], row["draft"])
            row["cost"] = word_edit_distance(row["draft"], row["kept"])
    arms = ["static"] if args.static_only else [a for a in ("static", "learning") if a not in results]
    for arm in arms:
        print(f"{arm}: {len(USERS)} users × {args.drafts} drafts …", flush=True)
        results[arm] = run_arm(arm, args, work, learn_options=args.learn_options if arm == "learning" else None)
        print(f"{arm}: {sum(r['cost'] for r in results[arm]['rows'])} words edited in "
              f"{results[arm]['wall_s'] / 60:.1f} min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args) | {"out": str(args.out)}, **results}
    if not args.static_only:
        results["summary"] = summarise_run(results)
        plot(results, args.drafts, args.out.with_name(args.out.name + "-curves.png"))
        Path(f"{args.out}-table.md").write_text(render(results, results["summary"], args))
        print(render(results, results["summary"], args))
    Path(f"{args.out}-results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
