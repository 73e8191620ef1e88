"""The store's half that the learner uses: reading the edits a worker waits for, recording its decisions
and canaries, leases and locks, and what each worker reports. `Store` inherits it; the methods run on
the store's engine and sessions, one transaction each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from corll.store.database import LEARNER, hold_learner_lock, hold_lineage_lease
from corll.store.records import (ConflictError, Drafters, EditEvent, FeedbackRecord, LearnerBusyError, NotFoundError,
                                  StoreError)
from corll.store.rows import make_active, own_edits, servable
from corll.store.schema import (Canary, CanaryLook, Decision, FeedbackEvent, Interaction, PolicyVersion, WorkerState,
                                utcnow)


class LearningLog:
    """Mixed into `Store`, which provides these three."""

    engine: Engine
    sessions: sessionmaker
    transaction: Callable[[], AbstractContextManager[Session]]  # a transaction that writes

    # --- what a worker reads ----------------------------------------------------------------------
    def edit_events(self, *, after: int = 0, tenant: str | None = None, user: str | None = None) -> list[EditEvent]:
        """Edit events after an event id, oldest first, without their texts; with `user`, those on the user's
        lineage (edits they wrote on their own completions). A range of the primary key: a reader that
        remembers the newest event it has read pays for the new ones, however old the log."""
        with self.sessions() as s:
            query = (select(FeedbackEvent.id, Interaction.tenant, Interaction.user, FeedbackEvent.author,
                            FeedbackEvent.created_at).join(Interaction)
                     .where(FeedbackEvent.id > after, FeedbackEvent.kind == "edit").order_by(FeedbackEvent.id))
            if tenant is not None:
                query = query.where(Interaction.tenant == tenant)
            if user is not None:
                query = query.where(*own_edits(user))
            return [EditEvent(*row) for row in s.execute(query)]

    def lineage_edits(self, tenant: str, user: str | None, *, after: int, older: int) -> list[FeedbackRecord]:
        """A lineage's edits with their texts, oldest first: those after an event id, and the `older` newest
        edits at or before it that changed their draft. `user` None: the tenant's shared lineage (all its
        edits); else the user's own (`edit_events`). Through the (tenant, user) index: one user's history,
        not the log's."""
        def query(*where):
            q = (select(FeedbackEvent, Interaction).join(Interaction)
                 .where(FeedbackEvent.kind == "edit", Interaction.tenant == tenant, *where))
            return q if user is None else q.where(*own_edits(user))

        with self.sessions() as s:
            rows = list(s.execute(query(FeedbackEvent.id > after).order_by(FeedbackEvent.id)))
            if older > 0:
                earlier = s.execute(query(FeedbackEvent.id <= after, FeedbackEvent.edit != Interaction.response)
                                    .order_by(FeedbackEvent.id.desc()).limit(older))
                rows = list(earlier)[::-1] + rows
            return [FeedbackRecord(e.id, e.kind, e.edit, e.reaction, e.created_at, i.id, i.tenant, i.user, i.messages,
                                   i.response, i.policy_version_id, e.author) for e, i in rows]

    # --- the learner's decisions -----------------------------------------------------------------
    def decide(self, tenant: str, user: str | None, *, decision: str, reason: str, seen_through: int,
               adapter_path: str, parent_id: int | None, details: dict, metrics: dict,
               canary: dict | None = None) -> Decision:
        """Record a trained candidate and the gate's decision in one transaction: the candidate's version
        (active at once when promoted, kept inactive when rejected or sent to a canary) and the decision
        row; for a "canary", the open canary too (`canary`: its share, alpha, budget and control_id, the
        version it is measured against). A crash before the commit leaves none of them."""
        if decision not in ("promoted", "rejected", "canary"):
            raise StoreError(f"a candidate is promoted, rejected or sent to a canary, not {decision!r}")
        if (decision == "canary") != (canary is not None):
            raise StoreError("a canary decision, and only one, opens a canary with its settings")
        with self.transaction() as s:
            decided = s.scalar(select(func.max(Decision.seen_through)).where(
                Decision.tenant == tenant, Decision.user.is_(None) if user is None else Decision.user == user))
            if decided is not None and decided >= seen_through:  # a lapsed lease: these edits are decided already
                raise ConflictError(f"the edits of {tenant}/{user or '(shared)'} through event {seen_through} are "
                                    "decided already")
            row = PolicyVersion(tenant=tenant, user=user, adapter_path=adapter_path, parent_id=parent_id,
                                details=details, active=False)
            s.add(row)
            s.flush()
            if decision == "promoted":
                make_active(s, row)
            made = Decision(tenant=tenant, user=user, version_id=row.id, parent_id=parent_id, decision=decision,
                            reason=reason, seen_through=seen_through, metrics=metrics)
            s.add(made)
            if canary is not None:
                s.add(Canary(tenant=tenant, user=user, version_id=row.id, seen_through=seen_through, state="open",
                             **canary))
            s.flush()
            return made

    # --- canaries --------------------------------------------------------------------------------
    def canaries(self, tenant: str | None = None, *, open_only: bool = False) -> list[Canary]:
        """Canaries with their looks, oldest first."""
        with self.sessions() as s:
            query = select(Canary).options(selectinload(Canary.looks)).order_by(Canary.id)
            if tenant is not None:
                query = query.where(Canary.tenant == tenant)
            if open_only:
                query = query.where(Canary.state == "open")
            return list(s.scalars(query))

    def drafters(self, tenant: str, user: str) -> Drafters:
        """Who drafts for this user: their active version (their own, else the tenant's shared one) and the
        open canary that may take a share of their drafts: their own lineage's, else, while they have no
        version of their own, the tenant's shared one (a retired candidate's canary takes nothing). Two
        queries, because every completion request asks."""
        with self.sessions() as s:
            actives = {v.user: v for v in s.scalars(select(PolicyVersion).where(
                PolicyVersion.tenant == tenant, PolicyVersion.active.is_(True),
                or_(PolicyVersion.user == user, PolicyVersion.user.is_(None))))}
            trials = {c.user: (c.share, v) for c, v in s.execute(
                select(Canary, PolicyVersion).join(PolicyVersion, PolicyVersion.id == Canary.version_id).where(
                    Canary.tenant == tenant, Canary.state == "open", PolicyVersion.retired_at.is_(None),
                    or_(Canary.user == user, Canary.user.is_(None))))}
            share, candidate = trials.get(user) or (trials.get(None) if user not in actives else None) or (0.0, None)
            return Drafters(actives.get(user) or actives.get(None), candidate, share)

    def open_canaries(self) -> int:
        """How many canaries are open (for /metrics: a count, not the canaries and their looks)."""
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(Canary).where(Canary.state == "open"))

    def canary_edits(self, canary_id: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(draft, edit) of each edited draft since the canary opened, in edit order: the candidate's, and
        the control's (the version it would replace). Only the lineage's edits count: a user's own on a
        user's canary, any of the tenant's on a shared one."""
        with self.sessions() as s:
            canary = s.get(Canary, canary_id)
            if canary is None:
                raise NotFoundError(f"no canary {canary_id}")

            def arm(version_id: int | None) -> list[tuple[str, str]]:
                query = (select(Interaction.response, FeedbackEvent.edit).join(Interaction)
                         .where(FeedbackEvent.kind == "edit", Interaction.tenant == canary.tenant,
                                Interaction.created_at >= canary.created_at,
                                Interaction.policy_version_id.is_(None) if version_id is None
                                else Interaction.policy_version_id == version_id)
                         .order_by(FeedbackEvent.id))
                if canary.user is not None:
                    query = query.where(*own_edits(canary.user))
                return [tuple(row) for row in s.execute(query)]

            return arm(canary.version_id), arm(canary.control_id)

    def add_look(self, canary_id: int, look: CanaryLook) -> None:
        with self.transaction() as s:
            look.canary_id = canary_id
            s.add(look)

    def close_canary(self, canary_id: int, look: CanaryLook, decision: str, reason: str) -> Decision:
        """The canary's last look and verdict in one transaction: the look, the canary closed, a decision
        row (with the gate's `seen_through`, so the edits made during the canary train the next candidate),
        and for "promoted" the candidate serving its lineage. A canary closed already is ConflictError."""
        if decision not in ("promoted", "rejected"):
            raise StoreError(f"a canary ends promoted or rejected, not {decision!r}")
        with self.transaction() as s:
            canary = s.get(Canary, canary_id, with_for_update=True)
            if canary is None or canary.state != "open":
                raise ConflictError(f"canary {canary_id} is not open")
            look.canary_id = canary_id
            s.add(look)
            canary.state, canary.reason, canary.closed_at = decision, reason, utcnow()
            version = s.get(PolicyVersion, canary.version_id)
            if decision == "promoted":
                make_active(s, servable(s, version.id))
            made = Decision(tenant=canary.tenant, user=canary.user, version_id=version.id, parent_id=version.parent_id,
                            decision=decision, reason=reason, seen_through=canary.seen_through,
                            metrics={"canary": {"drafts": look.candidate, "control_drafts": look.control,
                                                "wins": look.wins, "losses": look.losses, "ties": look.ties,
                                                "better": look.better, "worse": look.worse}})
            s.add(made)
            s.flush()
            return made

    def decisions(self, tenant: str | None = None) -> list[Decision]:
        return self._rows(Decision, tenant)

    def seen_through(self, tenant: str, user: str | None) -> int:
        """The newest feedback event a decision on this lineage (user, or the shared policy) has seen."""
        with self.sessions() as s:
            return s.scalar(select(func.coalesce(func.max(Decision.seen_through), 0)).where(
                Decision.tenant == tenant, Decision.user.is_(None) if user is None else Decision.user == user))

    def decided_through(self, tenant: str | None = None) -> dict[tuple[str, str | None], int]:
        """Per lineage (tenant, user; user None for the shared one) the newest event a decision has seen."""
        with self.sessions() as s:
            query = select(Decision.tenant, Decision.user, func.max(Decision.seen_through)).group_by(
                Decision.tenant, Decision.user)
            if tenant is not None:
                query = query.where(Decision.tenant == tenant)
            return {(t, u): n for t, u, n in s.execute(query)}

    def recent_decisions(self, limit: int) -> list[Decision]:
        """The newest decisions, newest first."""
        with self.sessions() as s:
            return list(s.scalars(select(Decision).order_by(Decision.id.desc()).limit(limit)))

    def decision_counts(self) -> dict[str, int]:
        """How many decisions of each kind the log holds."""
        with self.sessions() as s:
            return dict(s.execute(select(Decision.decision, func.count()).group_by(Decision.decision)).all())

    @contextmanager
    def learner_lock(self) -> Iterator[None]:
        """Hold the database's learner lock while the block runs. On SQLite one learner per database, so two
        never train the same lineage at once: a second `corll learn`, even `--once`, gets LearnerBusyError.
        On PostgreSQL any number of workers, each lineage leased to one at a time (`lineage_lease`)."""
        with hold_learner_lock(self.engine) as held:
            if not held:
                raise LearnerBusyError(f"another learner is running on this database{self._learner_pid()}; on "
                                       "SQLite one learner trains every lineage (stop it first, or let `corll "
                                       "serve --learn` run it; on PostgreSQL several workers can share the work)")
            yield

    @contextmanager
    def lineage_lease(self, tenant: str, user: str | None) -> Iterator[bool]:
        """Whether this worker holds the lineage's lease (then until the block ends); see `hold_lineage_lease`."""
        with hold_lineage_lease(self.engine, tenant, user) as held:
            yield held

    def worker_name(self) -> str:
        """This learner's name in worker_states: the learner on SQLite (one per database), one per worker
        process on PostgreSQL."""
        if self.engine.dialect.name != "postgresql":
            return LEARNER
        import socket

        return f"{LEARNER} {socket.gethostname()}:{os.getpid()}"

    def _learner_pid(self) -> str:
        with self.sessions() as s:
            row = s.get(WorkerState, LEARNER)
            return f" (pid {row.pid}: {row.state})" if row is not None else ""

    def adapter_path_in_use(self, path: str) -> bool:
        """Whether a policy version already names this adapter folder (a version's folder is its own)."""
        with self.sessions() as s:
            return s.scalar(select(PolicyVersion.id).where(PolicyVersion.adapter_path == path).limit(1)) is not None

    def set_worker_state(self, name: str, state: str, *, lineage: str | None = None, queue: int | None = None) -> None:
        """Report what a worker does: in words, the lineage it trains (None: none), and the queue it saw
        (None: keep the last count)."""
        with self.transaction() as s:
            known = s.get(WorkerState, name)
            s.merge(WorkerState(name=name, state=state, pid=os.getpid(), updated_at=utcnow(), lineage=lineage,
                                queue=queue if queue is not None or known is None else known.queue))

    def worker_states(self) -> list[WorkerState]:
        with self.sessions() as s:
            return list(s.scalars(select(WorkerState).order_by(WorkerState.name)))
