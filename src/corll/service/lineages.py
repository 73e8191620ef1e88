"""Whose edits train which policy: a user's own lineage, or a tenant's shared one — and the edits as
preferences with their event ids. Free of torch, so that `corll status` answers at once."""

from __future__ import annotations

from dataclasses import dataclass

from datetime import datetime

from corll.feedback import PreferencePair
from corll.store import EditEvent, FeedbackRecord, Store
from corll.store.schema import PolicyVersion


@dataclass(frozen=True)
class Preference:
    event: int
    pair: PreferencePair
    users: tuple[str, ...]  # whose feedback it is: the completion's user and the edit's author
    at: datetime  # when the edit was logged


@dataclass(frozen=True)
class Lineage:
    """A policy that learns: one user's own (user set) or a tenant's shared one (user None)."""

    tenant: str
    user: str | None

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user or 'shared'}"


def logged_pair(record: FeedbackRecord) -> PreferencePair:
    """A logged edit as ȳ ≻ y. The user's text is whole, so it is learned with its end; the draft is the
    text as shown, which may have been cut at the token limit."""
    return PreferencePair(prompt=record.messages, chosen=record.edit, rejected=record.response, chosen_ends=True)


def preferences(records: list[FeedbackRecord]) -> list[Preference]:
    """Edits that changed the draft, as preferences ȳ ≻ y with their event ids (oldest first)."""
    return [Preference(r.event_id, logged_pair(r), tuple(sorted({r.user, r.author or r.user})), r.created_at)
            for r in records if r.kind == "edit" and r.edit.strip() != r.response.strip()]


def owners(event: FeedbackRecord | EditEvent, shared: bool) -> list[Lineage]:
    """The lineages an edit trains: its user's own (when they wrote it on their own completion), and with
    `shared` the tenant's."""
    found = [Lineage(event.tenant, event.user)] if event.author in (None, event.user) else []
    return found + [Lineage(event.tenant, None)] if shared else found


def trained_through(version: PolicyVersion | None) -> int:
    """The newest event trained into a version's lineage (0: the base model)."""
    return int(version.details.get("trained_through_event", 0)) if version is not None else 0


def own_active(store: Store, lineage: Lineage) -> PolicyVersion | None:
    """The version this lineage trains from: its own active one (a user without one starts from the base
    model, not from the shared policy, whose training data may include their edits)."""
    return next((v for v in store.versions(lineage.tenant, active=True) if v.user == lineage.user), None)


def watermark(store: Store, lineage: Lineage) -> int:
    """Where the lineage's new edits start: after its last decision, and after its active version's data."""
    return max(store.seen_through(lineage.tenant, lineage.user), trained_through(own_active(store, lineage)))


def watermarks(store: Store, tenant: str | None = None) -> dict[Lineage, int]:
    """`watermark` of every lineage with a decision or an active version, in two reads."""
    marks = {Lineage(t, u): n for (t, u), n in store.decided_through(tenant).items()}
    for version in store.versions(tenant, active=True):
        lineage = Lineage(version.tenant, version.user)
        marks[lineage] = max(marks.get(lineage, 0), trained_through(version))
    return marks
