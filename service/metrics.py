"""The API's Prometheus metrics (prometheus-client), served at `GET /metrics`.

Labels are route templates, methods, statuses and outcomes: never a job id, a spec or a
user's name, so that what a scraper sees reveals no one's work. Each app has a registry of
its own (tests build many apps in one process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobqueue.states import JobStatus

# Requests take from a fraction of a millisecond (a cached prediction) to seconds (a plot).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ApiMetrics:
    def __init__(self, job_counts: Callable[[], dict[JobStatus, int]], streams: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tricklab_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tricklab_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "tricklab_predict_batch_size",
            "Images in each forward pass of a served model (requests batched together).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        model_cache = Counter(
            "tricklab_model_cache_lookups",
            "Lookups of a served model in memory: hit, or miss (then loaded from the store).",
            ["result"],
            registry=self.registry,
        )
        # A label lookup costs microseconds, on every request: the children are kept.
        self.cache_hits, self.cache_misses = model_cache.labels("hit"), model_cache.labels("miss")
        self._answered: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.model_loads = Histogram(
            "tricklab_model_load_seconds",
            "Time to read a model from the artifact store and check it, per load.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        streams_open = Gauge(
            "tricklab_event_streams_open",
            "Event streams (GET …/events) open now.",
            registry=self.registry,
        )
        streams_open.set_function(streams)
        self.registry.register(_JobsByStatus(job_counts))

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one answered request."""
        key = (route, method, str(status))
        children = self._answered.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(route, method))
            self._answered[key] = children
        children[0].inc()
        children[1].observe(seconds)


class _JobsByStatus(Collector):
    """Jobs per status, from the database at scrape time (one query): the queue depth."""

    def __init__(self, counts: Callable[[], dict[JobStatus, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tricklab_jobs", "Jobs in the database, by status.", labels=["status"]
        )
        counts = self.counts()
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status, 0))
        yield family


class Measured:
    """ASGI middleware counting every HTTP request and timing it, by route template (the
    path of the route that matched, `{job_id}` and all; "unmatched" for none)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            self.metrics.answered(template, scope["method"], status, seconds)
