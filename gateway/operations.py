"""What operators look at: /healthz, /readyz, /metrics (Prometheus), and log lines.

``/healthz`` says the process serves; ``/readyz`` that its log answers and its
projection is caught up (a load balancer sends it traffic then); ``/metrics`` reads
the worker's counters at scrape time, so serving traffic costs nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventlog import EventLogError

from .compaction import Compaction, CompactionCollector
from .registry import SessionRegistry

__all__ = ["JsonLogFormatter", "Metrics", "add_routes"]

# Timeouts
READY_TIMEOUT = 2.0  # s /readyz waits for the log's head
# Limits
READY_LAG = 1000  # records behind the head a worker may be and still take traffic

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _RegistryCollector(Collector):
    """The worker's numbers, read when Prometheus scrapes."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.tail_lag = 0  # records; refreshed by each /metrics request

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            runtime = self.registry.runtime
        except RuntimeError:
            return  # not started, or shut down
        yield GaugeMetricFamily(
            "sessionlog_open_sessions",
            "Open sessions in the log, on every worker.",
            value=len(runtime.projection.state.sessions),
        )
        yield GaugeMetricFamily(
            "sessionlog_streams", "Client streams held by this worker.", value=len(runtime.streams)
        )
        yield GaugeMetricFamily(
            "sessionlog_log_position",
            "Log position this worker has folded up to.",
            value=runtime.projection.position,
        )
        yield GaugeMetricFamily(
            "sessionlog_tail_lag_records",
            "Records between the log's head and this worker.",
            value=self.tail_lag,
        )
        yield CounterMetricFamily(
            "sessionlog_lineage_resets",
            "Times this worker found the log rolled back behind its fold and folded it again.",
            value=runtime.lineage.resets,
        )
        if runtime.lineage.last_recovery is not None:
            yield GaugeMetricFamily(
                "sessionlog_lineage_recovery_seconds",
                "How long the last fold again after a rollback took, to ready.",
                value=runtime.lineage.last_recovery,
            )
        stats = runtime.log.stats
        for name, value, text in (
            ("commits", stats.commits, "Transactions written to the log."),
            ("operations", stats.operations, "Appends, claims and releases written."),
            ("queries", stats.queries, "Reads and other round trips to the log's storage."),
            ("undecodable", stats.undecodable, "Log records skipped as undecodable."),
        ):
            yield CounterMetricFamily(f"sessionlog_log_{name}", text, value=value)


class Metrics:
    def __init__(self, registry: SessionRegistry) -> None:
        self.prometheus = CollectorRegistry()
        self.collector = _RegistryCollector(registry)
        self.prometheus.register(self.collector)
        self.prometheus.register(CompactionCollector(lambda: _compaction(registry)))
        self.delivery_latency = Histogram(
            "sessionlog_delivery_latency_seconds",
            "From a server message's append to its queueing by the worker holding the stream.",
            buckets=LATENCY_BUCKETS,
            registry=self.prometheus,
        )


def _compaction(registry: SessionRegistry) -> Compaction | None:
    try:
        return registry.runtime.housekeeping.compaction
    except RuntimeError:  # not started yet
        return None


REGISTRY = web.AppKey("ops_registry", SessionRegistry)
METRICS = web.AppKey("ops_metrics", Metrics)


async def _lag(registry: SessionRegistry) -> tuple[int, int]:
    """(head, folded position) of this worker's log."""
    runtime = registry.runtime
    position = runtime.projection.position  # before the head: the tail may fold past it
    async with asyncio.timeout(READY_TIMEOUT):
        head = await runtime.log.head()
    return head, position


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        head, position = await _lag(request.app[REGISTRY])
    except (RuntimeError, TimeoutError, EventLogError) as exc:
        return web.json_response({"ready": False, "reason": str(exc) or "log timeout"}, status=503)
    runtime = request.app[REGISTRY].runtime
    if head < position:  # the log was rolled back behind this worker's fold
        runtime.lineage.suspect()
    problems = runtime.problems
    ready = 0 <= head - position <= READY_LAG and not problems
    body = {"ready": ready, "head": head, "position": position}
    if problems:
        body["problems"] = dict(problems)
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    exported = request.app[METRICS]
    try:
        head, position = await _lag(request.app[REGISTRY])
        exported.collector.tail_lag = max(0, head - position)
    except (RuntimeError, TimeoutError, EventLogError):
        pass  # the gauges still say what this worker knows
    body = generate_latest(exported.prometheus)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application, registry: SessionRegistry, exported: Metrics) -> None:
    app[REGISTRY], app[METRICS] = registry, exported
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the session id when the call gave one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None)
        if session_id is not None:
            line["session_id"] = session_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()
