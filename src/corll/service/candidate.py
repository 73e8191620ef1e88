"""Learning from the feedback log: new edits become CoRLL updates and a new policy version.

An edit event on an interaction is the coactive preference ȳ ≻ y: the text the
user kept over the response they were shown (the coactive-learning paper). Reactions are kept in the
store for the reward-model work and are not trained on here. Each run starts
from the active version's adapter (π_0 stays the base model), takes one DPO step
per N preferences for `epochs` passes, saves the adapter, and records a version
that the server picks up at its next request.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from corll.feedback import PreferencePair
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.service.lineages import logged_pair
from corll.policy import LoraSettings, Policy, load_policy
from corll.store import FeedbackRecord, Store
from corll.store.schema import PolicyVersion


@dataclass
class TrainingSettings:
    """How a candidate version is trained from logged preferences, by `corll train` and by the learner:
    from which model, into which folder, and the DPO passes over the data."""

    model: str
    adapters_dir: Path
    epochs: int = 2
    batch_size: int = 8
    dpo: DPOConfig = field(default_factory=DPOConfig)
    precision: str = "auto"
    seed: int = 0


@dataclass
class LogTrainingConfig(TrainingSettings):
    tenant: str | None = None  # None: every tenant
    since_version: int | None = None  # None: after the active version's data; 0: all feedback
    per_user: bool = False
    min_feedback: int = 8  # a user (or tenant) with fewer new preferences is left for a later run


@dataclass
class Signals:
    """What a batch of feedback events yields for preference learning."""

    pairs: list[PreferencePair] = field(default_factory=list)
    unchanged_edits: int = 0  # an edit equal to the response says nothing: counted, not trained on
    reactions: int = 0
    last_event: int = 0


def signals_from(records: list[FeedbackRecord]) -> Signals:
    signals = Signals()
    for r in records:
        signals.last_event = max(signals.last_event, r.event_id)
        if r.kind == "reaction":
            signals.reactions += 1
        elif r.edit.strip() == r.response.strip():
            signals.unchanged_edits += 1
        else:
            signals.pairs.append(logged_pair(r))
    return signals


@dataclass(frozen=True)
class TrainedVersion:
    version_id: int
    tenant: str
    user: str | None
    pairs: int
    unchanged_edits: int
    final_loss: float


def _first_event(store: Store, tenant: str, user: str | None, since_version: int | None) -> int:
    """Feedback after this event id is new: the given version's high-water mark (0: the base model,
    trained on nothing, so all feedback), else the active version's."""
    if since_version == 0:
        return 0
    version = store.version(since_version) if since_version is not None else store.active_version(tenant, user)
    if version is None or version.tenant != tenant:
        return 0
    return int(version.details.get("trained_through_event", 0))


StepProgress = Callable[[str, int, int, float], None]  # who, steps done, steps in all, last loss


def train_from_log(store: Store, config: LogTrainingConfig, log=lambda _: None,
                   progress: StepProgress = lambda *_: None) -> list[TrainedVersion]:
    """Train one new version per tenant (or per user with `per_user`) that has enough new preferences;
    `progress` hears of every DPO step."""
    tenants = sorted({r.tenant for r in store.feedback(kind="edit")}) if config.tenant is None else [config.tenant]
    trained = []
    for tenant in tenants:
        if config.per_user:
            logged = store.feedback(tenant=tenant)  # read once; each user's new part is filtered from it
            marks = {user: _first_event(store, tenant, user, config.since_version)
                     for user in sorted({r.user for r in logged if r.kind == "edit"})}
            # a user's adapter learns from their own feedback only (not an admin's edits of their drafts)
            groups = [(user, [r for r in logged if r.user == user and r.author in (None, user) and r.event_id > mark])
                      for user, mark in marks.items()]
        else:
            groups = [(None, store.feedback(tenant=tenant, after_event=_first_event(
                store, tenant, None, config.since_version)))]
        for user, records in groups:
            signals = signals_from(records)
            who = f"{tenant}/{user or 'shared'}"
            if len(signals.pairs) < config.min_feedback:
                log(f"{who}: {len(signals.pairs)} new preferences (< {config.min_feedback}); not trained")
                continue
            # whose feedback this version learns from (forgetting a user retires the versions that list them)
            users = sorted({r.user for r in records} | {r.author for r in records if r.author})
            trained.append(_train_version(store, config, tenant, user, signals, users, log, progress))
    return trained


def use_version(policy: Policy, version: PolicyVersion | None, base_state: dict[str, torch.Tensor]) -> None:
    """Put a stored version's adapter weights into the policy (see `load_adapter`)."""
    load_adapter(policy, version.adapter_path if version is not None else None, base_state)


def load_adapter(policy: Policy, folder: str | None, base_state: dict[str, torch.Tensor]) -> None:
    """Put an adapter folder's weights into the policy; the base model (no folder) is `base_state`, the
    fresh adapter that leaves the model unchanged."""
    if not folder:
        policy.load_trainable_state(base_state)
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(policy.model, load_file(Path(folder) / "adapter_model.safetensors"))


def dpo_epochs(policy: Policy, pairs: list[PreferencePair], dpo: DPOConfig, *, epochs: int, batch_size: int,
               step_done: Callable[[int, int, float], None] = lambda *_: None) -> float:
    """`epochs` shuffled passes of DPO steps over `pairs` (the global torch seed fixes the order);
    `step_done(done, steps, loss)` hears of every step. Returns the last step's loss."""
    learner = DPOLearner(policy, dpo)
    loss = float("nan")
    steps, done = epochs * math.ceil(len(pairs) / batch_size), 0
    step_done(done, steps, loss)
    for _ in range(epochs):
        order = torch.randperm(len(pairs)).tolist()
        for start in range(0, len(order), batch_size):
            loss = learner.step([pairs[i] for i in order[start : start + batch_size]]).loss
            done += 1
            step_done(done, steps, loss)
    return loss


def _train_version(store: Store, config: LogTrainingConfig, tenant: str, user: str | None, signals: Signals,
                   users: list[str], log, progress: StepProgress) -> TrainedVersion:
    torch.manual_seed(config.seed)
    policy = load_policy(config.model, lora=LoraSettings(), precision=config.precision, seed=config.seed)
    parent = store.active_version(tenant, user)
    if parent is not None and parent.adapter_path:
        use_version(policy, parent, {})
    who = f"{tenant}/{user or 'shared'}"
    loss = dpo_epochs(policy, signals.pairs, config.dpo, epochs=config.epochs, batch_size=config.batch_size,
                      step_done=lambda done, steps, loss: progress(who, done, steps, loss))
    log(f"{who}: {config.epochs} epochs, final loss {loss:.4f}")
    folder = (config.adapters_dir / tenant / (user or "shared") / uuid.uuid4().hex).resolve()
    policy.model.save_pretrained(folder)
    details = {"trained_through_event": signals.last_event, "pairs": len(signals.pairs),
               "users": users,
               "unchanged_edits": signals.unchanged_edits, "epochs": config.epochs, "final_loss": loss,
               "lr": config.dpo.lr, "beta": config.dpo.beta, "model": config.model}
    version_id = store.add_policy_version(tenant, user, str(folder), parent_id=parent.id if parent else None,
                                          details=details)
    return TrainedVersion(version_id, tenant, user, len(signals.pairs), signals.unchanged_edits, loss)
