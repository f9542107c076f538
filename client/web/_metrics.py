"""``/metrics`` in Prometheus' text format: the gateway's traffic and the replica it reads.

Each app has a registry of its own (several gateways in one process, as in
tests, do not share counters). What the gateway sees itself is counted as it
happens: HTTP requests by route, method and status, with their durations;
query service latencies by endpoint; open event streams by kind and the
feeds (log follows) behind them. What the answering replica knows is asked
at each scrape (``client.status()``): its applied sequence, events applied,
dead letters, and its lag behind the end of the log, in events and in
milliseconds (the age of the oldest event it has not applied).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runstate.engine.errors import InvalidEvent, RunstateError

if TYPE_CHECKING:
    from runstate.client._client import Client
    from runstate.client._queries import Queries

__all__ = ["GatewayMetrics", "RequestMetrics", "TimedQueries", "metrics_page"]

#: query and request durations, in seconds: a read takes about a millisecond
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "runstate_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "runstate_http_request_duration_seconds",
            "Time to answer an HTTP request (to its first byte for event streams), by route.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.query_seconds = Histogram(
            "runstate_query_duration_seconds",
            "Time the query service took to answer, by endpoint.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.streams = Gauge(
            "runstate_sse_clients",
            "Open server-sent event streams, by kind (watch, events, logs, history).",
            ["kind"],
            registry=registry,
        )
        self.feeds = Gauge(
            "runstate_feeds",
            "Log follows open for event streams (one per subject watched).",
            registry=registry,
        )
        self.watchers = Gauge(
            "runstate_watchers",
            "Watches and event streams registered on those feeds.",
            registry=registry,
        )
        #: what the answering replica said at the last scrape (None: no answer)
        self.replica: dict[str, float] | None = None
        registry.register(_ReplicaCollector(self))
        # Each labelled child once: labels() takes a lock and checks its values every call.
        self._seconds: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    def answering(self, scope: Scope, seconds: float) -> None:
        """An HTTP request's answer starts, ``seconds`` after the request came."""
        key = (_route_of(scope), scope["method"])
        child = self._seconds.get(key)
        if child is None:
            child = self._seconds[key] = self.request_seconds.labels(*key)
        child.observe(seconds)

    def answered(self, scope: Scope, status: int) -> None:
        """An HTTP request was answered with ``status`` (500: it failed unanswered)."""
        key = (_route_of(scope), scope["method"], status)
        child = self._counts.get(key)
        if child is None:
            route, method, _ = key
            child = self._counts[key] = self.requests.labels(route, method, str(status))
        child.inc()


class _ReplicaCollector(Collector):
    """The answering replica's progress, as of the last scrape."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        replica = self._metrics.replica
        yield GaugeMetricFamily(
            "runstate_query_service_up",
            "1 when a query service answered this scrape, else 0.",
            value=0 if replica is None else 1,
        )
        if replica is None:
            return
        yield GaugeMetricFamily(
            "runstate_projector_applied_sequence",
            "The last stream sequence the answering replica has applied.",
            value=replica["applied"],
        )
        yield GaugeMetricFamily(
            "runstate_projector_lag_events",
            "Stream sequences between the end of the log and what the replica has applied.",
            value=replica["lag"],
        )
        yield GaugeMetricFamily(
            "runstate_projector_lag_milliseconds",
            "How long the oldest event the replica has not applied has waited (by its "
            "writer's clock; 0 when it has applied the whole log).",
            value=replica["lag_ms"],
        )
        yield CounterMetricFamily(
            "runstate_projector_events_applied",
            "Events the answering replica has applied since it started (rate(): per second).",
            value=replica["events_applied"],
        )
        yield CounterMetricFamily(
            "runstate_projector_dead_letters",
            "Commits the answering replica set aside as dead letters since it started.",
            value=replica["deadlettered"],
        )


class TimedQueries:
    """A ``Queries`` that times each request by endpoint (errors included)."""

    def __init__(self, inner: Queries, seconds: Histogram) -> None:
        self._inner = inner
        self._seconds = seconds

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        started = time.perf_counter()
        try:
            return await self._inner.request(endpoint, payload, timeout)
        finally:
            self._seconds.labels(endpoint).observe(time.perf_counter() - started)


class RequestMetrics:
    """ASGI middleware counting each HTTP request by its route's template and its status."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.answering(scope, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.answered(scope, status)


def _route_of(scope: Scope) -> str:
    """The template of the route that answered (``/api/v1/runs/{flow}/{run_id}``), so a
    label's values stay few; ``other`` for a path no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path).replace(":path", "") if path else "other"


async def metrics_page(request: Request) -> Response:
    """The metrics, after asking the answering replica where it is."""
    metrics: GatewayMetrics = request.app.state.metrics
    client: Client = request.app.state.client
    feeds = client.__dict__.get("_feeds", {})
    metrics.feeds.set(len(feeds))
    metrics.watchers.set(sum(len(feed.watches) for feed in feeds.values()))
    try:
        status = await client.status()
        end = await client.log.stream_last_sequence()
    except RunstateError:
        metrics.replica = None
    else:
        applied = int(status["applied"])
        metrics.replica = {
            "applied": applied,
            "lag": max(0, end - applied),
            "lag_ms": await _lag_millis(client, applied, end),
            "events_applied": int(status["events_applied"]),
            "deadlettered": int(status["deadlettered"]),
        }
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _lag_millis(client: Client, applied: int, end: int) -> float:
    """Milliseconds since the first commit after ``applied`` was written (0 when there is
    none): how far behind the present the replica's view is, which events alone do not
    say (a thousand events behind is a millisecond in a burst, a minute when idle).

    The commit's time is its first event's ``occurred_at``, the writer's clock; one
    that does not decode (it will be a dead letter) counts as written now."""
    if end <= applied:
        return 0.0
    try:
        async for commit in client.log.read(start=applied + 1, limit=1):
            if commit.events:
                written = commit.events[0].occurred_at
                return max(0.0, (datetime.now(UTC) - written).total_seconds() * 1000)
    except InvalidEvent:
        pass
    return 0.0
