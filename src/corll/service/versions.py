"""Policy versions as people read them: what each is (active, rejected, retired, ...) and why — for
`corll versions`, `GET /v1/versions` and the browser page, from one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from corll.store import Store
from corll.store.schema import Canary


@dataclass(frozen=True)
class VersionRow:
    id: int
    tenant: str
    user: str | None  # None: the tenant's shared policy
    status: str  # active | canary | rejected | retired | base model | inactive
    parent: int | None
    preferences: int | None
    created_at: str
    decision: str | None  # promoted | rejected | canary (the learner's), None when trained or rolled back by hand
    reason: str  # the gate's reason, why it was retired, or how it came to be
    margin_gain: float | None  # the gate's held-out measure, where the learner judged it

    def as_dict(self) -> dict:
        return asdict(self)


def version_rows(store: Store, tenant: str | None = None, users: set[str | None] | None = None) -> list[VersionRow]:
    """Every version (of one tenant; of some users, None meaning the shared policy), oldest first."""
    decided = {d.version_id: d for d in store.decisions(tenant) if d.decision != "rollback"}  # the last one
    trying = {c.version_id: c for c in store.canaries(tenant, open_only=True)}
    rows = []
    for v in store.versions(tenant):
        if users is not None and v.user not in users:
            continue
        d = decided.get(v.id)
        if v.retired_at:
            status = "retired"
        elif v.active:
            status = "active"
        elif d is not None and d.decision == "rejected":
            status = "rejected"
        elif v.id in trying:
            status = "canary"
        else:
            status = "base model" if v.adapter_path is None else "inactive"
        reason = v.retired_reason or (d.reason if d else "rolled back to the base model"
                                      if v.details.get("rollback_to") == "base" else "trained by hand")
        if v.id in trying:
            reason = f"{reason}; {canary_progress(trying[v.id])}"
        rows.append(VersionRow(v.id, v.tenant, v.user, status, v.parent_id, v.details.get("pairs"),
                               v.created_at.isoformat(timespec="seconds"), d.decision if d else None, reason,
                               d.metrics.get("margin_gain") if d else None))
    return rows


def canary_progress(canary: Canary) -> str:
    """An open canary's evidence at its last look, in words."""
    if not canary.looks:
        return f"canary on {canary.share:.0%} of drafts: no edited drafts yet"
    look = canary.looks[-1]
    return (f"canary on {canary.share:.0%} of drafts, {look.candidate} of {canary.budget} edited: fewer words in "
            f"{look.wins}, more in {look.losses} pairs; evidence {look.better:.2f} for better, {look.worse:.2f} for "
            f"worse (decides at {1 / canary.alpha:g})")
