"""The feedback log's tables (SQLAlchemy 2).

An interaction is one served completion: who asked (tenant, user), the messages,
the response, which policy version wrote it with which sampling settings, and the
response's log-probability under that policy. Feedback events hang off an
interaction — an edit (the text the user kept) or a reaction (love, like,
dislike) — and there may be several per interaction. Policy versions record each
trained adapter; the active one per (tenant, user) — or per tenant for the
shared policy (user NULL) — serves new requests.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

REACTIONS = ("love", "like", "dislike")
FEEDBACK_KINDS = ("edit", "reaction")
DECISIONS = ("promoted", "rejected", "rollback", "canary")
CANARY_STATES = ("open", "promoted", "rejected")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(moment: datetime) -> datetime:
    """A stored time in UTC: SQLite hands back naive datetimes, which were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key, stored as its SHA-256 hash, bound to one tenant and one user. An admin key may
    read its tenant's whole log and act on any of its completions; a key stops working when it
    expires or is revoked."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    prefix: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the key's first characters, to tell keys apart
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PolicyVersion(Base):
    __tablename__ = "policy_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(128), nullable=True)  # NULL: the tenant's shared policy
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # NULL: the base model (version 0)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict] = mapped_column(JSON, default=dict)  # training settings and metrics
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # never served again
    retired_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Interaction(Base):
    __tablename__ = "interactions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(128))
    messages: Mapped[list] = mapped_column(JSON)
    response: Mapped[str] = mapped_column(Text)
    policy_version_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    sampling: Mapped[dict] = mapped_column(JSON, default=dict)
    response_logprob: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    feedback: Mapped[list[FeedbackEvent]] = relationship(back_populates="interaction", order_by="FeedbackEvent.id")

    __table_args__ = (Index("ix_interactions_tenant_created", "tenant", "created_at"),
                      Index("ix_interactions_tenant_user", "tenant", "user"))


class FeedbackEvent(Base):
    __tablename__ = "feedback_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    edit: Mapped[str | None] = mapped_column(Text, nullable=True)
    reaction: Mapped[str | None] = mapped_column(String(16), nullable=True)
    author: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the user whose key sent it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    interaction: Mapped[Interaction] = relationship(back_populates="feedback")


class IdempotencyKey(Base):
    """The first answer to a write sent with an `Idempotency-Key`: a retry gets it back, stores nothing."""

    __tablename__ = "idempotency_keys"
    scope: Mapped[str] = mapped_column(String(260), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Decision(Base):
    """What happened to a lineage's policy: a candidate promoted or rejected by the learner's gate (with
    the held-out metrics and the reason), or a rollback by hand. `seen_through` is the newest feedback
    event the decision took into account: the learner trains again only after edits newer than that, so
    a rolled-back user is not re-promoted from the same data."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(128), nullable=True)  # NULL: the tenant's shared policy
    version_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    decision: Mapped[str] = mapped_column(String(16))  # one of DECISIONS
    reason: Mapped[str] = mapped_column(Text)
    seen_through: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_decisions_lineage", "tenant", "user"),)


class Canary(Base):
    """A candidate that passed the offline gate, serving `share` of its lineage's drafts until the edits on
    them say whether it is better than the version it would replace (`control_id`; None: the base
    model). Opened by a "canary" decision, closed by a "promoted" or "rejected" one."""

    __tablename__ = "canaries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(128), nullable=True)  # NULL: the tenant's shared policy
    version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"))
    control_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    share: Mapped[float] = mapped_column(Float)
    alpha: Mapped[float] = mapped_column(Float)  # the chance of promoting a candidate that is not better
    budget: Mapped[int] = mapped_column(Integer)  # edited candidate drafts before it gives up
    seen_through: Mapped[int] = mapped_column(Integer)  # the gate's decision's: the closing one repeats it
    state: Mapped[str] = mapped_column(String(16), default="open")  # one of CANARY_STATES
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    looks: Mapped[list[CanaryLook]] = relationship(back_populates="canary", order_by="CanaryLook.id",
                                                   cascade="all, delete-orphan")

    __table_args__ = (Index("ix_canaries_lineage", "tenant", "user", "state"),)


class CanaryLook(Base):
    """One look at a canary's evidence: the edited drafts under each version so far, the pairs in which the
    candidate's draft cost its user fewer, more or as many edited words, and both e-values."""

    __tablename__ = "canary_looks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    canary_id: Mapped[int] = mapped_column(ForeignKey("canaries.id"), index=True)
    candidate: Mapped[int] = mapped_column(Integer)
    control: Mapped[int] = mapped_column(Integer)
    wins: Mapped[int] = mapped_column(Integer)
    losses: Mapped[int] = mapped_column(Integer)
    ties: Mapped[int] = mapped_column(Integer)
    better: Mapped[float] = mapped_column(Float)
    worse: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    canary: Mapped[Canary] = relationship(back_populates="looks")


class WorkerState(Base):
    """What a background worker (a learner) is doing now, for `corll status` and `/metrics`: in words, the
    lineage it trains (None: idle), and how many lineages it saw waiting at its last poll."""

    __tablename__ = "worker_states"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    lineage: Mapped[str | None] = mapped_column(String(260), nullable=True)
    queue: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ForgetLog(Base):
    """What forgetting a user removed (counts and version ids), kept as the record that it happened."""

    __tablename__ = "forget_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(128))
    removed: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
