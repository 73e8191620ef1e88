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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from corll.store.database import WRITE, lock_users, make_engine, upgrade
from corll.store.records import ConflictError, FeedbackRecord, KeyInfo, NotFoundError, Principal, StoreError, is_blank
from corll.store.learning import LearningLog
from corll.store.rows import make_active, servable
from corll.store.schema import (
    REACTIONS,
    ApiKey,
    Canary,
    CanaryLook,
    Decision,
    FeedbackEvent,
    ForgetLog,
    IdempotencyKey,
    Interaction,
    PolicyVersion,
    aware,
    utcnow,
)

DEFAULT_URL = "sqlite:///corll.db"
MAX_EDIT_CHARS = 32_000


def database_url(url: str | None = None) -> str:
    """The given URL, else $CORLL_DATABASE_URL, else a SQLite file `corll.db` here. A bare path means SQLite."""
    url = url or os.environ.get("CORLL_DATABASE_URL") or DEFAULT_URL
    return url if "://" in url else f"sqlite:///{Path(url)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store(LearningLog):
    """The feedback log (this module) and the learner's half of it (`store.learning`)."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self.engine.execution_options(**{WRITE: True}), expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction that writes: everything it reads and writes is one serializable step with respect
        to other writers of the same user (on SQLite it holds the database's write lock from its first
        statement; on PostgreSQL the methods lock the users they touch, see `_lock_users`)."""
        with self._writes.begin() as session:
            yield session

    # --- API keys -------------------------------------------------------------------------------
    def create_api_key(self, tenant: str, user: str, *, admin: bool = False, expires_at: datetime | None = None) -> str:
        """A new key for (tenant, user); only its hash is stored, so it is shown once."""
        if not tenant.strip() or not user.strip():
            raise StoreError("tenant and user must be non-empty")
        key = "corll-" + secrets.token_urlsafe(32)
        with self.transaction() as s:
            s.add(ApiKey(key_hash=hash_key(key), tenant=tenant, user=user, admin=admin, prefix=key[:12],
                         expires_at=expires_at))
        return key

    def authenticate(self, key: str) -> Principal | None:
        """The key's principal; None for an unknown, revoked or expired key."""
        with self.sessions() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
            if row is None or row.revoked_at is not None or (row.expires_at is not None
                                                             and aware(row.expires_at) <= utcnow()):
                return None
            return Principal(row.tenant, row.user, row.admin, key_id=row.id)

    def list_api_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        with self.sessions() as s:
            query = select(ApiKey).order_by(ApiKey.id)
            if tenant is not None:
                query = query.where(ApiKey.tenant == tenant)
            return [KeyInfo(k.id, k.prefix, k.tenant, k.user, k.admin, k.created_at, k.expires_at, k.revoked_at)
                    for k in s.scalars(query)]

    def revoke_api_key(self, key_id: int) -> KeyInfo:
        """Revoke a key at once (kept, marked, for the record)."""
        with self.transaction() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFoundError(f"no API key {key_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return KeyInfo(row.id, row.prefix, row.tenant, row.user, row.admin, row.created_at, row.expires_at,
                           row.revoked_at)

    # --- interactions and feedback --------------------------------------------------------------
    def record_interaction(self, who: Principal, messages: list, response: str, *, policy_version_id: int | None,
                           sampling: dict, response_logprob: float | None) -> str:
        interaction_id = f"chatcmpl-{uuid.uuid4().hex}"
        return self.record_interactions(who, messages, [(interaction_id, response, response_logprob)],
                                        policy_version_id=policy_version_id, sampling=sampling)[0]

    def record_interactions(self, who: Principal, messages: list, responses: list[tuple[str, str, float | None]], *,
                            policy_version_id: int | None, sampling: dict) -> list[str]:
        """Several responses to one prompt (a completion's choices) as (id, text, log π), all or none. A user
        forgotten while their completion was decoding is not logged (NotFoundError): forgetting is final."""
        with self.transaction() as s:
            lock_users(s, who.tenant, [who.user])
            if who.key_id is not None and s.get(ApiKey, who.key_id) is None:
                raise NotFoundError(f"user {who.user!r} of tenant {who.tenant!r} was forgotten; nothing was logged")
            for interaction_id, response, logprob in responses:
                s.add(Interaction(id=interaction_id, tenant=who.tenant, user=who.user, messages=messages,
                                  response=response, policy_version_id=policy_version_id, sampling=sampling,
                                  response_logprob=logprob))
        return [r[0] for r in responses]

    def add_feedback(self, who: Principal, interaction_id: str, *, edit: str | None = None,
                     reaction: str | None = None, idempotency: tuple[str, str, Callable[[int], dict]] | None = None
                     ) -> int | dict:
        """Attach an edit or a reaction to an interaction the caller may act on (their own, or any of the
        tenant's for an admin), recording its author; returns the event id.

        With `idempotency` = (key, request hash, answer(event id)), the answer is stored in the same
        transaction as the event: a retry with the same key and request returns that stored answer
        and writes nothing; the same key with a different request raises ConflictError."""
        if (edit is None) == (reaction is None):
            raise StoreError("give exactly one of 'edit' or 'reaction'")
        if edit is not None:
            if is_blank(edit):
                raise StoreError("'edit' is empty or invisible (only spaces or zero-width characters): send the "
                                 "text the user kept")
            if len(edit) > MAX_EDIT_CHARS:
                raise StoreError(f"'edit' has {len(edit)} characters; the limit is {MAX_EDIT_CHARS}")
        if reaction is not None and reaction not in REACTIONS:
            raise StoreError(f"unknown reaction {reaction!r}: use one of {', '.join(REACTIONS)}")
        if idempotency is not None and (earlier := self._replay(who, *idempotency[:2])) is not None:
            return earlier
        try:
            with self.transaction() as s:
                owner = s.scalar(select(Interaction.user).where(Interaction.id == interaction_id,
                                                                Interaction.tenant == who.tenant))
                lock_users(s, who.tenant, [who.user] + ([owner] if owner is not None else []))
                interaction = s.get(Interaction, interaction_id, populate_existing=True)
                if interaction is None or not who.may_act_on(interaction):
                    raise NotFoundError(f"no completion {interaction_id!r}")
                row = FeedbackEvent(interaction_id=interaction_id, kind="edit" if edit is not None else "reaction",
                                    edit=edit, reaction=reaction, author=who.user)
                s.add(row)
                s.flush()
                if idempotency is None:
                    return row.id
                key, request_hash, answer = idempotency
                response = answer(row.id)
                s.add(IdempotencyKey(scope=_scope(who), key=key, request_hash=request_hash, response=response))
                return response
        except IntegrityError:  # the same key committed concurrently: answer as its retry would
            if idempotency is not None and (earlier := self._replay(who, *idempotency[:2])) is not None:
                return earlier
            raise

    def _replay(self, who: Principal, key: str, request_hash: str) -> dict | None:
        with self.sessions() as s:
            row = s.get(IdempotencyKey, (_scope(who), key))
            if row is None:
                return None
            if row.request_hash != request_hash:
                raise ConflictError(f"the Idempotency-Key {key!r} was used for a different request")
            return row.response

    def get_interaction(self, who: Principal, interaction_id: str) -> Interaction:
        with self.sessions() as s:
            row = s.scalar(select(Interaction).options(selectinload(Interaction.feedback))
                           .where(Interaction.id == interaction_id, Interaction.tenant == who.tenant))
            if row is None:
                raise NotFoundError(f"no completion {interaction_id!r}")
            return row

    def list_interactions(self, tenant: str, *, user: str | None = None, limit: int = 50,
                          before: str | None = None) -> list[Interaction]:
        """Newest first, `limit` at a time; `before` is the last id of the previous page; only `user`'s if given."""
        with self.sessions() as s:
            query = select(Interaction).options(selectinload(Interaction.feedback)).where(Interaction.tenant == tenant)
            if user is not None:
                query = query.where(Interaction.user == user)
            if before is not None:
                anchor = s.scalar(select(Interaction).where(Interaction.id == before, Interaction.tenant == tenant,
                                                            *([Interaction.user == user] if user is not None else [])))
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
                                   i.response, i.policy_version_id, e.author) for e, i in s.execute(query)]

    # --- policy versions ------------------------------------------------------------------------
    def add_policy_version(self, tenant: str, user: str | None, adapter_path: str | None, *,
                           parent_id: int | None = None, details: dict | None = None, activate: bool = True) -> int:
        with self.transaction() as s:
            row = PolicyVersion(tenant=tenant, user=user, adapter_path=adapter_path, parent_id=parent_id,
                                details=details or {}, active=False)
            s.add(row)
            s.flush()
            if activate:
                make_active(s, row)
            return row.id

    def activate(self, version_id: int) -> PolicyVersion:
        """Make this version the one that serves its (tenant, user): rollback is activating an older one."""
        with self.transaction() as s:
            row = servable(s, version_id)
            make_active(s, row)
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

    def versions(self, tenant: str | None = None, *, active: bool = False) -> list[PolicyVersion]:
        """Policy versions in id order; with `active`, only those serving now (one per lineage at most)."""
        if not active:
            return self._rows(PolicyVersion, tenant)
        with self.sessions() as s:
            query = select(PolicyVersion).where(PolicyVersion.active.is_(True)).order_by(PolicyVersion.id)
            return list(s.scalars(query if tenant is None else query.where(PolicyVersion.tenant == tenant)))

    def _rows(self, table: type[PolicyVersion] | type[Decision], tenant: str | None) -> list:
        """A table's rows in id order, optionally one tenant's."""
        with self.sessions() as s:
            query = select(table).order_by(table.id)
            if tenant is not None:
                query = query.where(table.tenant == tenant)
            return list(s.scalars(query))

    def forget_user(self, tenant: str, user: str) -> dict:
        """Delete a user's interactions, the feedback on them and the feedback they wrote, their keys and
        idempotency records; retire every policy version trained on their feedback (their own adapters,
        shared versions whose training data included it, and every version trained on top of those),
        activating the nearest untouched ancestor where an active one is retired. One transaction that
        feedback and logging for the user cannot interleave with (they wait, then find nothing: 404); the
        adapters' files are the caller's to delete (`removed["adapter_paths"]`). Returns what was removed;
        a user the tenant never had is NotFoundError, and nothing is written."""
        with self.transaction() as s:
            lock_users(s, tenant, [user], exclusive=True)
            if not _known(s, tenant, user):
                raise NotFoundError(f"no user {user!r} in tenant {tenant!r}")
            mine = select(Interaction.id).where(Interaction.tenant == tenant, Interaction.user == user)
            events = list(s.scalars(select(FeedbackEvent.id).join(Interaction).where(
                Interaction.tenant == tenant, or_(Interaction.user == user, FeedbackEvent.author == user))))
            first_event = min(events, default=None)
            retired: dict[int, PolicyVersion] = {}
            for v in s.scalars(select(PolicyVersion).where(PolicyVersion.tenant == tenant).order_by(PolicyVersion.id)):
                if _trained_on(v, user, first_event) or v.parent_id in retired:
                    retired[v.id] = v
            for v in retired.values():
                if v.active:
                    ancestor = v.parent_id
                    while ancestor is not None and ancestor in retired:
                        ancestor = retired[ancestor].parent_id
                    v.active = False
                    if ancestor is not None:
                        make_active(s, s.get(PolicyVersion, ancestor))
                v.retired_at, v.retired_reason = utcnow(), f"trained on feedback of forgotten user {user!r}"
            removed = {"feedback_events": len(events),
                       "interactions": s.scalar(select(func.count()).select_from(mine.subquery())),
                       "api_keys": s.scalar(select(func.count()).select_from(ApiKey).where(
                           ApiKey.tenant == tenant, ApiKey.user == user)),
                       "retired_versions": sorted(retired),
                       "adapter_paths": sorted(v.adapter_path for v in retired.values() if v.adapter_path)}
            s.execute(delete(FeedbackEvent).where(FeedbackEvent.id.in_(events)))
            s.execute(delete(Interaction).where(Interaction.id.in_(mine)))
            s.execute(delete(ApiKey).where(ApiKey.tenant == tenant, ApiKey.user == user))
            s.execute(delete(IdempotencyKey).where(IdempotencyKey.scope == f"{tenant}/{user}"))
            s.execute(delete(Decision).where(Decision.tenant == tenant, Decision.user == user))
            theirs = select(Canary.id).where(Canary.tenant == tenant, Canary.user == user)
            s.execute(delete(CanaryLook).where(CanaryLook.canary_id.in_(theirs)))
            s.execute(delete(Canary).where(Canary.tenant == tenant, Canary.user == user))
            s.add(ForgetLog(tenant=tenant, user=user, removed=removed))
            return removed

    def version(self, version_id: int) -> PolicyVersion:
        with self.sessions() as s:
            row = s.get(PolicyVersion, version_id)
            if row is None:
                raise NotFoundError(f"no policy version {version_id}")
            return row

    def version_tenant(self, version_id: int) -> str | None:
        """The tenant a version belongs to (None: no such version)."""
        with self.sessions() as s:
            return s.scalar(select(PolicyVersion.tenant).where(PolicyVersion.id == version_id))

    def rollback(self, version_id: int, *, tenant: str | None = None, user: str | None = None) -> PolicyVersion:
        """Serve an earlier version again, or the base model (version 0, for `tenant` and optionally `user`),
        and record the rollback as a decision that has seen all of the lineage's feedback so far, so the
        learner waits for new feedback before it trains that lineage again."""
        with self.transaction() as s:
            if version_id == 0:
                if tenant is None:
                    raise StoreError("rolling back to the base model (version 0) needs a tenant")
                # a version without an adapter is the base model; activating it keeps the history intact
                row = PolicyVersion(tenant=tenant, user=user, adapter_path=None, details={"rollback_to": "base"})
                s.add(row)
                s.flush()
            else:
                row = servable(s, version_id)
            make_active(s, row)
            s.add(Decision(tenant=row.tenant, user=row.user, version_id=row.id, parent_id=None, decision="rollback",
                           reason="rolled back by hand", seen_through=_newest_event(s, row.tenant, row.user),
                           metrics={}))
            return row



def forget(store: Store, tenant: str, user: str) -> dict:
    """Forget a user everywhere: the log (see `Store.forget_user`), then the retired adapters' weights,
    which may encode their edits. Returns what was removed."""
    import shutil

    removed = store.forget_user(tenant, user)
    for path in removed["adapter_paths"]:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _trained_on(version: PolicyVersion, user: str, first_event: int | None) -> bool:
    """Whether a version's training data may include the user's feedback: their own adapter, a shared
    version that lists them, or (versions from before training recorded its users) a shared one
    trained through an event at or after the user's first."""
    if version.user is not None:
        return version.user == user
    users = version.details.get("users")
    if users is not None:
        return user in users
    return first_event is not None and version.details.get("trained_through_event", 0) >= first_event


def _known(s: Session, tenant: str, user: str) -> bool:
    """Whether the tenant has anything of the user: a key, an interaction, feedback they wrote, a version."""
    checks = (select(ApiKey.id).where(ApiKey.tenant == tenant, ApiKey.user == user),
              select(Interaction.id).where(Interaction.tenant == tenant, Interaction.user == user),
              select(FeedbackEvent.id).join(Interaction).where(Interaction.tenant == tenant,
                                                               FeedbackEvent.author == user),
              select(PolicyVersion.id).where(PolicyVersion.tenant == tenant, PolicyVersion.user == user))
    return any(s.scalar(query.limit(1)) is not None for query in checks)


def _scope(who: Principal) -> str:
    return f"{who.tenant}/{who.user}"


def _newest_event(s: Session, tenant: str, user: str | None) -> int:
    """The newest feedback event on the lineage's interactions (the user's own, or the whole tenant's)."""
    query = select(func.coalesce(func.max(FeedbackEvent.id), 0)).join(Interaction).where(Interaction.tenant == tenant)
    return s.scalar(query if user is None else query.where(Interaction.user == user))


