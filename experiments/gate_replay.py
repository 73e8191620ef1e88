"""Does the learner's gate promote the candidates that would make users edit less? An offline check on a
simulated deployment's own log.

    .venv/bin/python experiments/gate_replay.py --results results/deployment-early/deployment-results.json --edits 16

For each simulated user of a `experiments/deployment.py` run, their first `--edits` drafts (as the learning
server logged them), each with the simulated user's edit of it, go into a fresh store and the learner
(`corll learn`'s defaults) trains and gates a candidate from the base model. Then the question a real
deployment cannot ask: the simulated user edits fresh drafts from both versions for their next `--prompts`
requests (`--samples` each, the same seeds for both versions, the deployment's length and temperature).
Reported per user: the gate's measures (held-out margin gain, the user's habitual edits in each version's
drafts), its decision, and the true edit cost per draft of the serving version (the base model) and of the
candidate, with the paired difference. A gate measure is useful when it tells the candidates that lower
this cost from those that do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from corll.feedback import word_edit_distance
from corll.hardware import detect, set_threads
from corll.service.learn import LearnConfig, learn_once
from corll.learners.dpo import DPOConfig
from corll.service.candidate import use_version
from corll.policy import LoraSettings, SamplingConfig, load_policy
from corll.stats import paired_comparison
from corll.store import Principal, Store
from corll.tasks.prelude import EMAIL_SOURCES, load_documents, prompt_for
from corll.users.preferences import revise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deployment import USERS  # noqa: E402


def request(user: str, t: int) -> list[dict]:
    """The deployment's t-th request of this user."""
    documents = load_documents(USERS[user])
    return [{"role": "user", "content": prompt_for("email", EMAIL_SOURCES[USERS[user]], documents[t % len(documents)])}]


def true_costs(policy, user: str, prompts: list, samples: int, seed: int) -> list[int]:
    """The simulated user's edit cost of each fresh draft (prompt-major)."""
    torch.manual_seed(seed)
    drafts = policy.sample(prompts, samples)
    return [word_edit_distance(y, revise(USERS[user], y)) for ys in drafts for y in ys]


def replay(user: str, rows: list[dict], settings: dict, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="corll-gate-replay-"))
    store = Store(f"sqlite:///{work / 'corll.db'}")
    who = Principal("acme", user)
    for row in rows[: args.edits]:
        interaction = store.record_interaction(who, request(user, row["t"]), row["draft"], policy_version_id=None,
                                               sampling={}, response_logprob=None)
        store.add_feedback(who, interaction, edit=row["kept"])
    config = LearnConfig(model=settings["model"], adapters_dir=work / "adapters", min_edits=2, precision="fp32",
                         epochs=args.epochs, dpo=DPOConfig(lr=args.lr, sft_weight=args.sft_weight))
    (decision,) = learn_once(store, config)  # every changed draft of the first `--edits` is a preference
    policy = load_policy(settings["model"], lora=LoraSettings(), precision="fp32",
                         sampling=SamplingConfig(temperature=0.7, max_new_tokens=settings["max_tokens"]))
    base = policy.trainable_state()
    prompts = [request(user, t) for t in range(args.edits, args.edits + args.prompts)]
    costs = {}
    for name, version in (("serving", None), ("candidate", store.version(decision.version_id))):
        use_version(policy, version, base)
        costs[name] = true_costs(policy, user, prompts, args.samples, seed=args.seed)
    difference = paired_comparison(costs["serving"], costs["candidate"]).difference
    return {"user": user, "decision": decision.decision, "reason": decision.reason,
            "margin_gain": decision.metrics["margin_gain"], "edit_logprob_gain": decision.metrics["edit_logprob_gain"],
            "habit_cost": decision.metrics["habit_cost"], "habits": decision.metrics["habits"],
            "kl": decision.metrics["candidate"]["kl"],
            "true_cost": {k: statistics.fmean(v) for k, v in costs.items()},
            "true_costs": costs,  # per draft, prompt-major: which drafts move the mean
            "lowered_by": {"mean": difference.mean, "low": difference.low, "high": difference.high},
            "sample": decision.metrics["sample"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/deployment-early/deployment-results.json"))
    parser.add_argument("--edits", type=int, default=16, help="each user's first drafts and edits given to the learner")
    parser.add_argument("--prompts", type=int, default=12, help="the user's next requests, for the true cost")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--users", default=",".join(USERS))
    parser.add_argument("--seed", type=int, default=0)
    learner = LearnConfig(model="", adapters_dir=Path())
    parser.add_argument("--lr", type=float, default=learner.dpo.lr, help="the learner's Adam learning rate")
    parser.add_argument("--epochs", type=int, default=learner.epochs, help="the learner's passes over the edits")
    parser.add_argument("--sft-weight", type=float, default=learner.dpo.sft_weight,
                        help="weight of the supervised term on the user's edit")
    parser.add_argument("--out", type=Path, default=Path("docs/gate-replay"))
    args = parser.parse_args()
    set_threads(1)
    earlier = json.loads(args.results.read_text())
    found = []
    for user in args.users.split(","):
        # the logged drafts, each edited by today's simulated user (as the fresh drafts below are)
        rows = [r | {"kept": revise(USERS[user], r["draft"])} for r in earlier["learning"]["rows"] if r["user"] == user]
        if sum(r["kept"] != r["draft"] for r in rows[: args.edits]) < 2:
            print(f"{user}: fewer than 2 edited drafts among the first {args.edits}; no candidate", flush=True)
            continue
        found.append(replay(user, rows, earlier["settings"], args))
        print(json.dumps(found[-1]), flush=True)
    hw = detect()
    lines = [f"**{hw.cpu} ({hw.capability}), 1 thread**; {earlier['settings']['model']}, candidates from each user's "
             f"first {args.edits} logged edits ({args.results}), learning rate {args.lr:g}, {args.epochs} epochs, "
             f"supervised weight {args.sft_weight:g}; true cost on their next {args.prompts} requests × "
             f"{args.samples} drafts, the same seeds for both versions.", "",
             "| user | gate | held-out margin gain (nats) | habitual edits, candidate − serving (tokens per draft) | "
             "true cost per draft: serving → candidate | lowered by [95% CI] |", "|---|---|---|---|---|---|"]
    for r in found:
        d, c, low = r["habit_cost"], r["true_cost"], r["lowered_by"]
        lines.append(f"| {r['user']} | {r['decision']} | {r['margin_gain']:+.2f} | {d['candidate'] - d['serving']:+.2f} "
                     f"| {c['serving']:.2f} → {c['candidate']:.2f} | {low['mean']:+.2f} [{low['low']:+.2f}, "
                     f"{low['high']:+.2f}] |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + "-table.md").write_text("\n".join(lines) + "\n")
    args.out.with_name(args.out.name + ".json").write_text(json.dumps({"settings": vars(args) | {"results": str(args.results),
                                                                                    "out": str(args.out)},
                                                         "users": found}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
