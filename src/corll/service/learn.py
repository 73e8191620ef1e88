"""Learning while serving: each user's new edits become a candidate version, checked on their newest
edits before it may serve them — promoted or rejected with nobody running a command.

One pass (`learn_once`) visits every lineage — a user's own policy, and with `shared` each tenant's
shared one — oldest untrained edit first, so nobody waits behind a busy user. On PostgreSQL any number
of workers (`corll learn` on one machine or many) share the lineages: a worker trains a lineage only
while it holds its lease (a session advisory lock that PostgreSQL ends with the worker's connection, so a
worker that dies frees its lineage at once), and a decision on edits another worker has already decided
is refused in the decision's transaction. On SQLite one learner runs per database. A lineage with at
least `min_edits` preferences ȳ ≻ y newer than its last decision gets:

  1. its preferences newer than the active version's training data, oldest first; the newest
     `holdout` share of them is held out from training;
  2. a candidate: the active version's adapter (the base model where the user has none) plus DPO on
     the rest and on up to `replay` older preferences of the lineage, π_0 the base model (the
     coactive-learning update of `corll train`);
  3. the gate. Measure: on each held-out edit, how much the candidate raises
     log π(ȳ|x) − log π(y|x) over the version serving the user now (the DPO implicit-reward margin of
     the user's edit over the draft; the reference terms cancel between the two versions). Promote
     only if the mean gain is at least `margin` nats, the gain is positive on at least `win_rate` of
     the held-out edits, and only if each version's fresh drafts for the held-out prompts (the user's
     newest; the same seeds for both versions, as long as the drafts the user saw) show that the
     candidate's would cost the user no more, by the user's edit habits (`corll.service.edit_habits`: the spans
     their logged edits insert or delete again and again), and the reward-hacking monitor stays quiet on
     them (`monitor.degeneration_thresholds`: KL to π_0, looping and a collapse of distinct-2, against the serving version's
     drafts);
  4. one transaction that stores the candidate and the decision with its metrics and reason.

Watermarks make a crash harmless. A version's `trained_through_event` is the newest event trained
into its lineage; the held-out events are newer, so they join the next candidate's training data:
every preference is trained into a lineage once, none is skipped (replayed ones are counted apart).
A decision's `seen_through` (held-out events included) is where the next candidate starts counting
new edits; a rollback records one too, so a rolled-back user is not re-promoted from the same data.
A learner killed at any moment left at most an adapter folder no version points to; restarted, it
trains the same candidate again (the seed follows the data) and reaches the same decision.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from corll.service.edit_habits import EditHabits
from corll.learners.dpo import DPOConfig
from corll.service.lineages import Lineage, Preference, own_active, preferences, trained_through
from corll.service.queue import EditQueue
from corll.service.team import Assignment, Team
from corll.service.canary import CanarySettings, watch
from corll.service.candidate import TrainingSettings, dpo_epochs, use_version
from corll.monitor import HackingMonitor, MonitorThresholds, degeneration_thresholds
from corll.objectives import distinct_n, looping, repeated_phrase_rate
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.store import ConflictError, Store
from corll.store.schema import Decision, PolicyVersion, aware, utcnow


@dataclass
class LearnConfig(TrainingSettings):
    epochs: int = 4
    batch_size: int = 4
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(lr=3e-4))
    min_edits: int = 8  # new preferences before a candidate is trained: a few minutes of one person's edits
    holdout: float = 0.25  # newest share of the training-eligible preferences kept back for the gate (>= 1)
    replay: int = 16  # older preferences of the lineage revisited with the new ones
    shared: bool = False  # also learn each tenant's shared policy from all its users' edits
    margin: float = 0.0  # nats the held-out edit's margin over the draft must rise on average (strictly more)
    win_rate: float = 0.5  # share of held-out edits whose margin must rise
    # The margin can rise while the drafts get worse (the edit's own likelihood falls less than the draft's,
    # or a few tokens are learned into garbled text): each version also drafts for the held-out prompts, and
    # the candidate's drafts may cost the user at most `cost_slack` tokens per draft more, by their habits
    # (spans recurring in at least `habit_share` of their edits).
    draft_samples: int = 4  # per held-out prompt and version; the monitor watches the same drafts
    cost_slack: float = 0.0
    habit_share: float = 0.5
    monitor: MonitorThresholds = field(default_factory=degeneration_thresholds)
    canary: CanarySettings = field(default_factory=CanarySettings)  # off: the offline gate promotes alone


@dataclass(frozen=True)
class Pending:
    """What a lineage has waiting: the parent to train from, its preferences, and the split."""

    lineage: Lineage
    parent: PolicyVersion | None
    new: list[Preference]  # newer than the last decision
    train: list[Preference]  # newer than the parent's training data, minus the held-out ones
    held_out: list[Preference]
    replay: list[Preference]
    seen_through: int  # the newest edit read
    due: bool  # at least `min_edits` new preferences: a candidate is trained


Report = Callable[[str], None]


def pending(store: Store, lineage: Lineage, config: LearnConfig) -> Pending:
    """The lineage's candidate data, read from the log: its edits after the parent's training data and up
    to `replay` older ones."""
    parent = own_active(store, lineage)
    trained = trained_through(parent)
    start = max(trained, store.seen_through(lineage.tenant, lineage.user))
    records = store.lineage_edits(lineage.tenant, lineage.user, after=trained, older=config.replay)
    prefs = preferences(records)
    new = [p for p in prefs if p.event > start]
    eligible = [p for p in prefs if p.event > trained]
    hold = max(1, math.ceil(config.holdout * len(eligible)))
    older = [p for p in prefs if p.event <= trained]
    return Pending(lineage, parent, new, eligible[:-hold], eligible[-hold:],
                   older[-config.replay:] if config.replay else [],
                   max(start, records[-1].event_id if records else 0), len(new) >= config.min_edits)


def held_out_logprobs(policy: Policy, held_out: list[Preference]) -> torch.Tensor:
    """[edits, 2]: log π(ȳ|x) of each held-out edit ȳ and log π(y|x) of its draft y."""
    prompts = [p.pair.prompt for p in held_out]
    ends = [p.pair.chosen_ends for p in held_out]
    return torch.stack([policy.logprobs(prompts, [p.pair.chosen for p in held_out], ends=ends),
                        policy.logprobs(prompts, [p.pair.rejected for p in held_out])], dim=1)


def observe(policy: Policy, held_out: list[Preference], config: LearnConfig, seed: int) -> tuple[dict, list[str]]:
    """The policy's fresh drafts for the held-out prompts (`draft_samples` each; common random numbers: the
    same seed for the candidate and for the serving version) and the monitor's observation of them."""
    prompts = [p.pair.prompt for p in held_out]
    torch.manual_seed(seed)
    texts, logps = policy.sample_scored(prompts, config.draft_samples)
    drafts = [y for ys in texts for y in ys]
    xs = [x for x in prompts for _ in range(config.draft_samples)]
    kl = float((logps.flatten() - policy.logprobs(xs, drafts, reference=True)).mean())
    return ({"round": 0, "love": 0.0, "help": 0.0, "distinct_2": distinct_n(drafts),
             "repetition": repeated_phrase_rate(drafts), "looping": looping(drafts), "kl": kl}, drafts)


def gate(gains: torch.Tensor, costlier: float, flags: list[str], config: LearnConfig) -> tuple[str, str]:
    """Promoted, rejected or sent to the online canary (`service.canary`), and why, from the held-out margin gains, how many more tokens per draft the user
    would change by habit in the candidate's drafts than in the serving version's, and the monitor's flags."""
    mean, wins = float(gains.mean()), float((gains > 0).float().mean())
    measured = (f"held-out edit margin {mean:+.3f} nats, rises on {wins:.0%} of {len(gains)}; "
                f"habitual edits {costlier:+.1f} tokens per draft")
    if flags:
        return "rejected", "monitor: " + "; ".join(flags)
    if not mean > config.margin:
        return "rejected", f"{measured} (margin needs > {config.margin:+.3f})"
    if wins < config.win_rate:
        return "rejected", f"{measured} (margin needs to rise on >= {config.win_rate:.0%})"
    if costlier > config.cost_slack:
        return "rejected", f"{measured} (may be at most {config.cost_slack:+.1f})"
    if config.canary.on:
        return "canary", (f"{measured}; passed the offline gate, now drafting {config.canary.share:.0%} of the "
                          "lineage's drafts until its users' edits decide")
    return "promoted", measured


def learn_lineage(store: Store, work: Pending, config: LearnConfig, report: Report,
                  worker: Worker) -> Decision | None:
    """Train, gate and record one candidate (see the module's steps 2-4); None if another worker decided the
    same edits first (this worker's lease lapsed)."""
    lineage, seed = work.lineage, config.seed + work.seen_through  # the seed follows the data: a rerun is identical
    torch.manual_seed(seed)
    policy = load_policy(config.model, lora=LoraSettings(), precision=config.precision, seed=seed)
    # every sample as long as the longest draft the user saw: a sign-off, or a loop, is judged where it would be
    length = max(len(policy.tokenizer(p.pair.rejected, add_special_tokens=False)["input_ids"]) for p in work.held_out)
    policy.sampling = SamplingConfig(max_new_tokens=length)
    habits = EditHabits.learn(((p.pair.rejected, p.pair.chosen) for p in work.replay + work.train + work.held_out),
                              share=config.habit_share)
    base = policy.trainable_state()
    serving = store.active_version(lineage.tenant, lineage.user)
    use_version(policy, serving, base)
    before = held_out_logprobs(policy, work.held_out)
    serving_observation, serving_drafts = observe(policy, work.held_out, config, seed)

    use_version(policy, work.parent, base)
    pairs = [p.pair for p in work.replay + work.train]
    torch.manual_seed(seed)
    loss = float("nan")
    if pairs:
        worker.team.assign(Assignment(seed, work.parent.adapter_path if work.parent else None, pairs))
        def step_done(done: int, steps: int, loss: float) -> None:
            if done:
                store.set_worker_state(worker.name, f"training {lineage}: DPO step {done}/{steps}, loss {loss:.4f}",
                                       lineage=str(lineage))

        loss = dpo_epochs(policy, pairs, config.dpo, epochs=config.epochs, batch_size=config.batch_size,
                          step_done=step_done)
    store.set_worker_state(worker.name, f"gating {lineage}", lineage=str(lineage))
    change = held_out_logprobs(policy, work.held_out) - before
    gains = change[:, 0] - change[:, 1]  # the rise of the edit's margin over the draft
    candidate_observation, candidate_drafts = observe(policy, work.held_out, config, seed)
    monitor = HackingMonitor(config.monitor)
    monitor.observe(serving_observation)
    flags = monitor.observe(candidate_observation)
    # what the user would change by habit, in tokens per draft
    serving_cost, candidate_cost = (statistics.fmean(map(habits.cost, d)) for d in (serving_drafts, candidate_drafts))
    decision, reason = gate(gains, candidate_cost - serving_cost, flags, config)

    folder = save_adapter(policy, *version_folder(store, config.adapters_dir / lineage.tenant / (lineage.user or "shared"),
                                                  f"through-{work.seen_through}"))
    details = {"trained_through_event": work.train[-1].event if work.train else trained_through(work.parent), "new_events": [p.event for p in work.train],
               "replayed_events": [p.event for p in work.replay], "held_out_events": [p.event for p in work.held_out],
               "pairs": len(pairs), "users": sorted({u for p in work.replay + work.train for u in p.users}),
               "epochs": config.epochs, "final_loss": loss, "lr": config.dpo.lr, "beta": config.dpo.beta,
               "model": config.model, "seed": seed, "learner": True}
    # how the edits' own likelihood moved: DPO can raise the margin while making the user's text less likely
    metrics = {"held_out": len(gains), "margin_gain": float(gains.mean()), "win_rate": float((gains > 0).float().mean()),
               "edit_logprob_gain": float(change[:, 0].mean()), "draft_logprob_gain": float(change[:, 1].mean()),
               "habit_cost": {"serving": serving_cost, "candidate": candidate_cost},
               "habits": {"deleted": [" ".join(s) for s in habits.deleted],
                          "inserted": [" ".join(s) for s in habits.inserted]},
               "serving_version": serving.id if serving else None, "serving": serving_observation,
               "candidate": candidate_observation, "monitor_flags": flags, "sample": candidate_drafts[0]}
    # how long the user waited: from the edit that made the lineage due to this decision
    metrics["edit_to_decision_s"] = (utcnow() - aware(work.new[config.min_edits - 1].at)).total_seconds()
    try:
        canary = (dict(share=config.canary.share, alpha=config.canary.alpha, budget=config.canary.budget,
                       control_id=serving.id if serving else None) if decision == "canary" else None)
        made = store.decide(lineage.tenant, lineage.user, decision=decision, reason=reason,
                            seen_through=work.seen_through, adapter_path=str(folder),
                            parent_id=work.parent.id if work.parent else None, details=details, metrics=metrics,
                            canary=canary)
    except ConflictError as exc:
        report(f"{lineage}: {exc}; this candidate is dropped")
        return None
    report(f"{lineage}: version {made.version_id} {decision} ({reason})")
    return made


def version_folder(store: Store, folder: Path, name: str) -> tuple[Path, str]:
    """Where a candidate's adapter goes: named after the data it saw, so a crashed attempt at the same data
    is replaced, but never a folder that a stored version already names (the same data can come round
    again, e.g. after a forget removed newer events), which gets a numbered sibling."""
    candidate, n = name, 1
    while store.adapter_path_in_use(str((folder / candidate).resolve())):
        n += 1
        candidate = f"{name}-{n}"
    return folder, candidate


def save_adapter(policy: Policy, folder: Path, name: str) -> Path:
    """Write the adapter under a temporary name and rename it into place, so a folder with the final
    name is always whole; a leftover from a crashed attempt at the same data is replaced."""
    final = (folder / name).resolve()
    partial = final.with_name(name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    policy.model.save_pretrained(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


@dataclass
class Worker:
    """A learner worker between passes: its name in the log, its queue, and the processes it trains with."""

    name: str
    queue: EditQueue
    team: Team = field(default_factory=Team)

    @classmethod
    def of(cls, store: Store, config: LearnConfig, team: Team | None = None) -> Worker:
        return cls(store.worker_name(), EditQueue(store, min_edits=config.min_edits, shared=config.shared),
                   team or Team())


def learn_once(store: Store, config: LearnConfig, report: Report = lambda _: None,
               worker: Worker | None = None) -> list[Decision]:
    """One pass over the lineages with enough new edits (the worker's `EditQueue`: read since its last pass,
    oldest waiting edit first), each under its lease: on PostgreSQL, lineages another worker holds are left
    to it. Returns the decisions this worker made."""
    worker = worker or Worker.of(store, config)
    queue = worker.queue
    queue.poll()
    made, testing = watch_canaries(store, report)
    for lineage in queue.due():
        if lineage in testing:  # its candidate is being tried live; the edits wait for the verdict
            continue
        with store.lineage_lease(lineage.tenant, lineage.user) as held:
            if not held:
                continue
            # read under the lease: another worker may have decided these edits meanwhile
            work = pending(store, lineage, config)
            if not work.due:
                queue.resync(lineage, short_through=work.seen_through)
                continue
            store.set_worker_state(worker.name, f"training {lineage}: {len(work.train)} new, {len(work.replay)} "
                                   f"replayed, {len(work.held_out)} held out", lineage=str(lineage),
                                   queue=len(queue.due()))
            if (decision := learn_lineage(store, work, config, report, worker)) is not None:
                made.append(decision)
            queue.resync(lineage)
        # a look at the canaries after each training, not once a pass: a pass may train every user's
        # candidate in turn, and a canary's verdict then waits one training instead of all of them
        verdicts, testing = watch_canaries(store, report)
        made += verdicts
    return made


def watch_canaries(store: Store, report: Report) -> tuple[list[Decision], set[Lineage]]:
    """A look at each open canary with new edits, under its lineage's lease; returns the verdicts reached
    and the lineages whose canary is still open (as far as this worker knows)."""
    made, testing = [], set()
    for canary in store.canaries(open_only=True):
        lineage = Lineage(canary.tenant, canary.user)
        testing.add(lineage)
        with store.lineage_lease(canary.tenant, canary.user) as held:
            if not held:
                continue
            try:
                closed = watch(store, canary)
            except ConflictError:  # another worker closed it first
                testing.discard(lineage)
                continue
            if closed is not None:
                report(f"{lineage}: version {closed.version_id} {closed.decision} ({closed.reason})")
                made.append(closed)
                testing.discard(lineage)
    return made, testing


def run_learner(store: Store, config: LearnConfig, *, poll: float, once: bool = False,
                report: Report = lambda _: None, stop: Callable[[], bool] = lambda: False,
                team: Team | None = None) -> None:
    """Learn, then wait `poll` seconds for new feedback, until `stop()` (or after one pass with `once`)."""
    import time

    worker = Worker.of(store, config, team)
    while True:
        learn_once(store, config, report, worker)
        store.set_worker_state(worker.name, f"idle: waiting for {config.min_edits} new edits per user",
                               queue=len(worker.queue.due()))
        if once:
            break
        deadline = time.monotonic() + poll
        while time.monotonic() < deadline and not stop():
            time.sleep(min(0.2, poll))
        if stop():
            break
    worker.team.stop()  # the learner's other processes, if any, stop with this one
