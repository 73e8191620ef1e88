"""What the feedback log hands out and refuses with: the caller (Principal), key and feedback records, the
store's errors, and the check that a text has something visible in it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime

from corll.store.schema import Interaction, PolicyVersion

class StoreError(ValueError):
    """A request the store refuses: it names the problem; nothing was written."""


class NotFoundError(StoreError):
    """No such interaction for this tenant (another tenant's ids are not revealed)."""


class LearnerBusyError(StoreError):
    """Another learner holds the database's learner lock."""


class ConflictError(StoreError):
    """An idempotency key reused for a different request."""


INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # Unicode categories a reader cannot see


def is_blank(text: str) -> bool:
    """Whether nothing of `text` is visible: only whitespace, control and format characters (zero-width
    spaces and joiners, direction marks)."""
    return all(c.isspace() or unicodedata.category(c) in INVISIBLE for c in text)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and user an API key is bound to; an admin acts for the whole tenant."""

    tenant: str
    user: str
    admin: bool = False
    # the API key the caller authenticated with: forgetting the user deletes it, so work that outlives
    # the request's start (a completion still decoding) can tell that its user was forgotten meanwhile
    key_id: int | None = field(default=None, compare=False)

    def may_act_on(self, interaction: Interaction) -> bool:
        """Feedback on a completion comes from the user who received it, or from the tenant's admin."""
        return interaction.tenant == self.tenant and (self.admin or interaction.user == self.user)


@dataclass(frozen=True)
class KeyInfo:
    """What `corll keys list` shows of a key (never the key itself)."""

    id: int
    prefix: str | None
    tenant: str
    user: str
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class FeedbackRecord:
    """A feedback event together with the interaction it is about (for training and export)."""

    event_id: int
    kind: str
    edit: str | None
    reaction: str | None
    created_at: datetime
    interaction_id: str
    tenant: str
    user: str
    messages: list
    response: str
    policy_version_id: int | None
    author: str | None = None  # whose key sent it (None: logged before authors were recorded)


@dataclass(frozen=True)
class EditEvent:
    """An edit event without its texts: enough to tell whose lineage waits, and since when."""

    event_id: int
    tenant: str
    user: str
    author: str | None
    created_at: datetime


@dataclass(frozen=True)
class Drafters:
    """Who drafts for a user (`Store.drafters`): their active version (None: the base model) and an open
    canary's candidate with the share of their drafts it takes."""

    active: PolicyVersion | None
    candidate: PolicyVersion | None
    share: float

    def pick(self, draw: float) -> PolicyVersion | None:
        """The version that drafts one request, for `draw` uniform on [0, 1): the candidate for its share."""
        return self.candidate if self.candidate is not None and draw < self.share else self.active
