"""The feedback log's operations. Every method is one transaction: it commits whole or not at all.

SQLite (a file, WAL mode) by default; PostgreSQL by URL, e.g.
`postgresql+psycopg://user@localhost:5432/corll` (or `CORLL_DATABASE_URL`).
Tenant isolation lives here, not in the web layer: every read and every feedback
write names the caller's tenant, and another tenant's interaction is reported as
not found, exactly like an id that does not exist.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from corll.store.schema import REACTIONS, ApiKey, FeedbackEvent, Interaction, PolicyVersion

DEFAULT_URL = "sqlite:///corll.db"
MAX_EDIT_CHARS = 32_000


class StoreError(ValueError):
    """A request the store refuses: it names the problem; nothing was written."""


class NotFoundError(StoreError):
    """No such interaction for this tenant (another tenant's ids are not revealed)."""


def database_url(url: str | None = None) -> str:
    """The given URL, else $CORLL_DATABASE_URL, else a SQLite file `corll.db` here. A bare path means SQLite."""
    url = url or os.environ.get("CORLL_DATABASE_URL") or DEFAULT_URL
    return url if "://" in url else f"sqlite:///{Path(url)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and user an API key is bound to."""

    tenant: str
    user: str


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


class Store:
    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    # --- API keys -------------------------------------------------------------------------------
    def create_api_key(self, tenant: str, user: str) -> str:
        """A new key for (tenant, user); only its hash is stored, so it is shown once."""
        if not tenant.strip() or not user.strip():
            raise StoreError("tenant and user must be non-empty")
        key = "corll-" + secrets.token_urlsafe(32)
        with self.transaction() as s:
            s.add(ApiKey(key_hash=hash_key(key), tenant=tenant, user=user))
        return key

    def authenticate(self, key: str) -> Principal | None:
        with self.sessions() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
            return Principal(row.tenant, row.user) if row else None

    # --- interactions and feedback --------------------------------------------------------------
    def record_interaction(self, who: Principal, messages: list, response: str, *, policy_version_id: int | None,
                           sampling: dict, response_logprob: float | None) -> str:
        interaction_id = f"chatcmpl-{uuid.uuid4().hex}"
        return self.record_interactions(who, messages, [(interaction_id, response, response_logprob)],
                                        policy_version_id=policy_version_id, sampling=sampling)[0]

    def record_interactions(self, who: Principal, messages: list, responses: list[tuple[str, str, float | None]], *,
                            policy_version_id: int | None, sampling: dict) -> list[str]:
        """Several responses to one prompt (a completion's choices) as (id, text, log π), all or none."""
        with self.transaction() as s:
            for interaction_id, response, logprob in responses:
                s.add(Interaction(id=interaction_id, tenant=who.tenant, user=who.user, messages=messages,
                                  response=response, policy_version_id=policy_version_id, sampling=sampling,
                                  response_logprob=logprob))
        return [r[0] for r in responses]

    def add_feedback(self, who: Principal, interaction_id: str, *, edit: str | None = None,
                     reaction: str | None = None) -> int:
        """Attach an edit or a reaction to one of this tenant's interactions; returns the event id."""
        if (edit is None) == (reaction is None):
            raise StoreError("give exactly one of 'edit' or 'reaction'")
        if edit is not None:
            if not edit.strip():
                raise StoreError("'edit' is empty: send the text the user kept")
            if len(edit) > MAX_EDIT_CHARS:
                raise StoreError(f"'edit' has {len(edit)} characters; the limit is {MAX_EDIT_CHARS}")
        if reaction is not None and reaction not in REACTIONS:
            raise StoreError(f"unknown reaction {reaction!r}: use one of {', '.join(REACTIONS)}")
        with self.transaction() as s:
            interaction = s.get(Interaction, interaction_id)
            if interaction is None or interaction.tenant != who.tenant:
                raise NotFoundError(f"no completion {interaction_id!r}")
            row = FeedbackEvent(interaction_id=interaction_id, kind="edit" if edit is not None else "reaction",
                                edit=edit, reaction=reaction)
            s.add(row)
            s.flush()
            return row.id

    def get_interaction(self, who: Principal, interaction_id: str) -> Interaction:
        with self.sessions() as s:
            row = s.scalar(select(Interaction).options(selectinload(Interaction.feedback))
                           .where(Interaction.id == interaction_id, Interaction.tenant == who.tenant))
            if row is None:
                raise NotFoundError(f"no completion {interaction_id!r}")
            return row

    def list_interactions(self, tenant: str, *, limit: int = 50, before: str | None = None) -> list[Interaction]:
        """Newest first, `limit` at a time; `before` is the last id of the previous page."""
        with self.sessions() as s:
            query = select(Interaction).options(selectinload(Interaction.feedback)).where(Interaction.tenant == tenant)
            if before is not None:
                anchor = s.scalar(select(Interaction).where(Interaction.id == before, Interaction.tenant == tenant))
                if anchor is None:
                    raise NotFoundError(f"no completion {before!r}")
                query = query.where((Interaction.created_at < anchor.created_at)
                                    | ((Interaction.created_at == anchor.created_at) & (Interaction.id < anchor.id)))
            query = query.order_by(Interaction.created_at.desc(), Interaction.id.desc()).limit(limit)
            return list(s.scalars(query))

    def all_interactions(self, tenant: str | None = None) -> list[Interaction]:
        """Every interaction with its feedback, oldest first (for training data and export)."""
        with self.sessions() as s:
            query = select(Interaction).options(selectinload(Interaction.feedback)).order_by(Interaction.created_at,
                                                                                            Interaction.id)
            if tenant is not None:
                query = query.where(Interaction.tenant == tenant)
            return list(s.scalars(query))

    def feedback(self, *, tenant: str | None = None, after_event: int = 0, kind: str | None = None) -> list[FeedbackRecord]:
        """Feedback events with their interactions, oldest first, optionally after an event id."""
        with self.sessions() as s:
            query = (select(FeedbackEvent, Interaction).join(Interaction)
                     .where(FeedbackEvent.id > after_event).order_by(FeedbackEvent.id))
            if tenant is not None:
                query = query.where(Interaction.tenant == tenant)
            if kind is not None:
                query = query.where(FeedbackEvent.kind == kind)
            return [FeedbackRecord(e.id, e.kind, e.edit, e.reaction, e.created_at, i.id, i.tenant, i.user, i.messages,
                                   i.response, i.policy_version_id) for e, i in s.execute(query)]

    # --- policy versions ------------------------------------------------------------------------
    def add_policy_version(self, tenant: str, user: str | None, adapter_path: str | None, *,
                           parent_id: int | None = None, details: dict | None = None, activate: bool = True) -> int:
        with self.transaction() as s:
            row = PolicyVersion(tenant=tenant, user=user, adapter_path=adapter_path, parent_id=parent_id,
                                details=details or {}, active=False)
            s.add(row)
            s.flush()
            if activate:
                _activate(s, row)
            return row.id

    def activate(self, version_id: int) -> PolicyVersion:
        """Make this version the one that serves its (tenant, user): rollback is activating an older one."""
        with self.transaction() as s:
            row = s.get(PolicyVersion, version_id)
            if row is None:
                raise NotFoundError(f"no policy version {version_id}")
            _activate(s, row)
            return row

    def active_version(self, tenant: str, user: str | None) -> PolicyVersion | None:
        """The user's own active version if they have one, else the tenant's shared one."""
        with self.sessions() as s:
            for who in ([user] if user is not None else []) + [None]:
                row = s.scalar(select(PolicyVersion).where(
                    PolicyVersion.tenant == tenant, PolicyVersion.active.is_(True),
                    PolicyVersion.user.is_(None) if who is None else PolicyVersion.user == who))
                if row is not None:
                    return row
            return None

    def versions(self, tenant: str | None = None) -> list[PolicyVersion]:
        with self.sessions() as s:
            query = select(PolicyVersion).order_by(PolicyVersion.id)
            if tenant is not None:
                query = query.where(PolicyVersion.tenant == tenant)
            return list(s.scalars(query))

    def version(self, version_id: int) -> PolicyVersion:
        with self.sessions() as s:
            row = s.get(PolicyVersion, version_id)
            if row is None:
                raise NotFoundError(f"no policy version {version_id}")
            return row


def _activate(s: Session, row: PolicyVersion) -> None:
    owner = PolicyVersion.user.is_(None) if row.user is None else PolicyVersion.user == row.user
    s.execute(update(PolicyVersion).where(PolicyVersion.tenant == row.tenant, owner).values(active=False))
    row.active = True


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
