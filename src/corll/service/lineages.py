"""Whose edits train which policy: a user's own lineage, or a tenant's shared one — and the edits as
preferences with their event ids. Free of torch, so that `corll status` answers at once."""

from __future__ import annotations

from dataclasses import dataclass

from corll.feedback import PreferencePair
from corll.store import FeedbackRecord


@dataclass(frozen=True)
class Preference:
    event: int
    pair: PreferencePair
    users: tuple[str, ...]  # whose feedback it is: the completion's user and the edit's author


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
    return [Preference(r.event_id, logged_pair(r),
                       tuple(sorted({r.user, r.author or r.user})))
            for r in records if r.kind == "edit" and r.edit.strip() != r.response.strip()]


def lineages(records: list[FeedbackRecord], shared: bool) -> dict[Lineage, list[FeedbackRecord]]:
    """Each lineage's edits: a user's own (edits they wrote on their own completions), and with `shared`
    the tenant's (all its edits)."""
    found: dict[Lineage, list[FeedbackRecord]] = {}
    for r in records:
        if r.kind != "edit":
            continue
        if r.author in (None, r.user):
            found.setdefault(Lineage(r.tenant, r.user), []).append(r)
        if shared:
            found.setdefault(Lineage(r.tenant, None), []).append(r)
    return found
