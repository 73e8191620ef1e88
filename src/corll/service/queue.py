"""Which lineages have edits waiting, in the order the learner trains them, read incrementally.

A worker keeps its queue between polls. Its first poll reads every edit event's id and owner once (no
texts) and each lineage's watermark (`lineages.watermarks`); after that a poll reads only the events newer
than the newest it has read, a range of the primary key, so its cost follows the new edits and not the
log's age. A lineage is due when at least `min_edits` edits wait past its watermark and some arrived after
it was last found short (an edit that left the draft unchanged counts here, not in training). Due lineages
are served oldest waiting edit first, so nobody waits behind a busy user.

The queue is this worker's view: another worker may decide a lineage meanwhile, and a forget removes
events. So before training, the learner re-reads the lineage from the log under its lease, and `resync`
brings the queue's view of that lineage back to the log's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from corll.service.lineages import Lineage, owners, watermark, watermarks
from corll.store import EditEvent, Store


@dataclass
class Waiting:
    """One lineage's edits past its watermark, oldest first."""

    watermark: int = 0
    events: list[EditEvent] = field(default_factory=list)
    looked_through: int = 0  # the newest event when the lineage was last found short of enough edits


class EditQueue:
    def __init__(self, store: Store, *, min_edits: int, shared: bool, tenant: str | None = None) -> None:
        self.store, self.min_edits, self.shared, self.tenant = store, min_edits, shared, tenant
        self.read_through = 0  # the newest event this queue has read
        self.lineages: dict[Lineage, Waiting] = {}
        self._marks: dict[Lineage, int] | None = None  # the watermarks read at the first poll

    def poll(self) -> int:
        """Read the edits logged since the last poll; returns how many."""
        if self._marks is None:
            self._marks = watermarks(self.store, self.tenant)
        new = self.store.edit_events(after=self.read_through, tenant=self.tenant)
        for event in new:
            for lineage in owners(event, self.shared):
                waiting = self.lineages.get(lineage)
                if waiting is None:
                    waiting = self.lineages[lineage] = Waiting(self._marks.get(lineage, 0))
                if event.event_id > waiting.watermark:
                    waiting.events.append(event)
        if new:
            self.read_through = new[-1].event_id
        return len(new)

    def due(self) -> list[Lineage]:
        """Lineages with enough waiting edits, oldest waiting edit first."""
        ready = [(w.events[0].event_id, str(lineage), lineage) for lineage, w in self.lineages.items()
                 if len(w.events) >= self.min_edits and w.events[-1].event_id > w.looked_through]
        return [lineage for *_, lineage in sorted(ready)]

    def waiting(self, lineage: Lineage) -> list[EditEvent]:
        return self.lineages[lineage].events if lineage in self.lineages else []

    def resync(self, lineage: Lineage, *, short_through: int | None = None) -> None:
        """Re-read the lineage's watermark and waiting edits from the log (after a decision, by this worker
        or another, or a forget). `short_through`: the lineage was found short of enough edits through
        that event, so it is due again only when a newer edit arrives."""
        mark = watermark(self.store, lineage)
        events = self.store.edit_events(after=mark, tenant=lineage.tenant, user=lineage.user)
        events = [e for e in events if e.event_id <= self.read_through]  # newer ones come with the next poll
        previous = self.lineages.get(lineage, Waiting())
        self.lineages[lineage] = Waiting(mark, events, short_through if short_through is not None
                                         else previous.looked_through)


def edit_to_decision(store: Store, last: int = 1000) -> dict[str, float] | None:
    """Seconds from the edit that made a lineage due to the learner's decision on it, over the newest
    `last` decisions: the median, the 95th percentile (nearest rank) and the count; None before any."""
    waits = sorted(d.metrics["edit_to_decision_s"] for d in store.recent_decisions(last)
                   if "edit_to_decision_s" in (d.metrics or {}))
    if not waits:
        return None
    def rank(q: float) -> float:
        return waits[max(0, math.ceil(q * len(waits)) - 1)]

    return {"p50": rank(0.5), "p95": rank(0.95), "decisions": len(waits)}
