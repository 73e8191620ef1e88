"""`GET /metrics` in Prometheus' text format: what the service is doing, for dashboards and alerts.

One registry per app (several apps in one process, as in tests, do not share counts). Route
labels are the route templates, never raw paths, so their number stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.responses import Response

from corll.service.queue import edit_to_decision
from corll.store import Store
from corll.store.schema import DECISIONS, aware


class LearnerMetrics:
    """The learners' work, read from the log at each scrape: they are other processes (or machines), and
    the log is where their work is recorded whole. Decisions by kind; the queue (lineages with enough
    waiting edits, as the most recently reporting worker saw it at its last poll); each worker's lineage;
    the time from the edit that made a lineage due to its decision, over the newest 1000 decisions."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        counts = self.store.decision_counts()
        family = CounterMetricFamily("corll_learner_decisions", "Learner decisions: candidates promoted or rejected "
                                     "by the gate, rollbacks by hand", labels=["decision"])
        for decision in DECISIONS:
            family.add_metric([decision], counts.get(decision, 0))
        yield family
        yield CounterMetricFamily("corll_learner_training_runs", "Candidates trained by the learner",
                                  value=counts.get("promoted", 0) + counts.get("rejected", 0))
        yield GaugeMetricFamily("corll_canaries_open", "Candidates drafting a share of their lineage's drafts "
                                "until the edits decide", value=self.store.open_canaries())
        workers = self.store.worker_states()
        reported = [w for w in workers if w.queue is not None]
        if reported:
            newest = max(reported, key=lambda w: aware(w.updated_at))
            yield GaugeMetricFamily("corll_learner_queue_lineages", "Lineages with enough waiting edits at a "
                                    "learner's last poll", value=newest.queue)
        training = GaugeMetricFamily("corll_learner_worker_training", "1 while a learner worker trains a lineage "
                                     "(labelled with it), 0 while it waits", labels=["worker", "lineage"])
        for w in workers:
            training.add_metric([w.name, w.lineage or ""], 1 if w.lineage else 0)
        yield training
        if (waits := edit_to_decision(self.store)) is not None:
            family = GaugeMetricFamily("corll_edit_to_decision_seconds", "Seconds from the edit that made a "
                                       "lineage due to the learner's decision, newest 1000 decisions",
                                       labels=["quantile"])
            family.add_metric(["0.5"], waits["p50"])
            family.add_metric(["0.95"], waits["p95"])
            yield family


class ServiceMetrics:
    def __init__(self, store: Store, engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("corll_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("corll_request_seconds", "Time to answer (to the last byte's start for streams)",
                                 ["route"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.feedback = Counter("corll_feedback_accepted", "Feedback requests accepted (a replayed retry counts again)",
                                ["kind"], registry=self.registry)
        self.completion_tokens = Counter("corll_completion_tokens", "Tokens generated for logged completions",
                                         registry=self.registry)
        Gauge("corll_engine_running_sequences", "Sequences in the decoding batch now",
              registry=self.registry).set_function(lambda: engine.running)
        Gauge("corll_users_with_own_active_version", "Users served by a per-user policy version",
              registry=self.registry).set_function(lambda: sum(
                  1 for v in store.versions() if v.active and v.user is not None))
        self.registry.register(LearnerMetrics(store))

    def observe(self, scope: dict, status: int, seconds: float) -> None:
        template = getattr(scope.get("route"), "path", "unmatched")
        self.requests.labels(template, str(status)).inc()
        self.latency.labels(template).observe(seconds)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every HTTP request. A plain ASGI middleware, not Starlette's `BaseHTTPMiddleware`:
    that one hands the app a `receive` that never reports the client's disconnect, so an abandoned
    non-streaming completion would decode to its end and be logged."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)
