"""Pieces of queries and writes that both halves of the store use: which versions may serve, making one
serve its lineage, and which edits are a user's own."""

from __future__ import annotations

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from corll.store.records import NotFoundError, StoreError
from corll.store.schema import FeedbackEvent, Interaction, PolicyVersion


def servable(s: Session, version_id: int) -> PolicyVersion:
    """A version that exists and is not retired, so it may serve again."""
    row = s.get(PolicyVersion, version_id)
    if row is None:
        raise NotFoundError(f"no policy version {version_id}")
    if row.retired_at is not None:
        raise StoreError(f"policy version {version_id} is retired ({row.retired_reason}) and cannot serve")
    return row


def own_edits(user: str) -> tuple:
    """Edits on a user's lineage: on their completions, written by them (or before authors were kept)."""
    return Interaction.user == user, or_(FeedbackEvent.author.is_(None), FeedbackEvent.author == user)


def make_active(s: Session, row: PolicyVersion) -> None:
    """Make this version the one that serves its lineage (the others of the lineage stop)."""
    owner = PolicyVersion.user.is_(None) if row.user is None else PolicyVersion.user == row.user
    s.execute(update(PolicyVersion).where(PolicyVersion.tenant == row.tenant, owner).values(active=False))
    row.active = True
