"""Prometheus metrics of ``rill serve``: HTTP, admission, runs read from the event stream, GPU, and watched counters.

Every name starts with ``rill_``, times are in seconds and labels stay low-cardinality: a route is its
template (``/api/flows/{name}/runs``), never the raw path; flows, nodes, models and error kinds come
from the served flows, never from requests. Runs are measured from their events (rillflow.runtime.events)
through ``Metrics.listener(flow)``, so the numbers agree with what the CLI, the trace and the chat show.

Cache hit rate is ``rate(rill_cache_hits_total) / rate(rill_cache_lookups_total)``: a ``cache_hit``
event counts a lookup and a hit; a ``node_finished`` of an ``llm``, ``retrieve`` or ``python`` node that
was not served from the cache counts a lookup (a miss). The events carry no miss of their own, so the
server tells each run's listener which nodes it looks up (``cached``): none when it has no cache.

Each Metrics owns its registry: tests and embedders build many apps in one process, and the global
default registry would refuse the second.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rillflow.runtime.events import Event
from rillflow.ui.gpu import nvml_collector

log = logging.getLogger("rillflow.metrics")

# LLM serving spans milliseconds (a cache hit, a route) to a minute (a long local generation).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
HTTP_BUCKETS = (0.001, 0.0025, *DURATION_BUCKETS)  # /health and /metrics answer well under 5 ms
# Time to first token: where the user feels latency, so the buckets are finest under a second.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHED_TYPES = frozenset({"llm", "retrieve", "python"})  # node types whose results the cache keeps
APIS = ("runs", "openai")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")  # the sample names a family owns


class Metrics:
    """The metrics of one app, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, gpu: bool = True) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter("rill_http_requests", "HTTP requests by route template.", ["route", "method", "status"], registry=registry)
        self.http_duration = Histogram("rill_http_request_duration_seconds", "HTTP request time (streams: until the last byte).",
                                       ["route", "method"], buckets=HTTP_BUCKETS, registry=registry)
        self.runs = Counter("rill_runs", "Finished runs; error_kind is empty unless status is failed.", ["flow", "status", "error_kind"], registry=registry)
        self.run_duration = Histogram("rill_run_duration_seconds", "Run time, start to terminal event.", ["flow"],
                                      buckets=DURATION_BUCKETS, registry=registry)
        self.run_ttft = Histogram("rill_run_ttft_seconds", "Run start to its first streamed chunk.", ["flow"], buckets=TTFT_BUCKETS, registry=registry)
        self.node_duration = Histogram("rill_node_duration_seconds", "Node time over all attempts; status ok, cached, fallback or failed.",
                                       ["flow", "node", "node_type", "status"], buckets=DURATION_BUCKETS, registry=registry)
        self.node_ttft = Histogram("rill_node_ttft_seconds", "Node start to its first chunk.", ["flow", "node"], buckets=TTFT_BUCKETS, registry=registry)
        self.tokens = Counter("rill_tokens", "Model tokens, failed attempts included.", ["flow", "model", "direction"], registry=registry)
        self.cost = Counter("rill_cost_usd", "Model cost in US dollars, as the node reports it.", ["flow", "model"], registry=registry)
        self.cache_lookups = Counter("rill_cache_lookups", "Cache lookups (hits + misses of cached node types).", ["flow", "node"], registry=registry)
        self.cache_hits = Counter("rill_cache_hits", "Cache hits by tier; hit rate = hits / lookups.", ["flow", "node", "tier"], registry=registry)
        self.errors = Counter("rill_errors", "Errors by kind; where is retry, node, fallback or run.", ["flow", "kind", "where"], registry=registry)
        self.active_streams = Gauge("rill_active_streams", "Streams open now.", ["api"], registry=registry)
        self.rejections = Counter("rill_admission_rejections", "Requests refused by admission control.", ["kind", "status"], registry=registry)
        self.admission_wait = Histogram("rill_queue_wait_seconds", "Time a request waited for a global slot.", buckets=WAIT_BUCKETS, registry=registry)
        self.model_wait = Histogram("rill_model_queue_wait_seconds", "Time a node waited for a shared local model.", ["flow", "model"],
                                    buckets=WAIT_BUCKETS, registry=registry)
        self.node_wait = Histogram("rill_node_queue_wait_seconds", "Time a ready node waited for a concurrency slot.", ["flow"],
                                   buckets=WAIT_BUCKETS, registry=registry)
        for api in APIS:  # a series at 0 from the start, so dashboards and alerts see "none" rather than "no data"
            self.active_streams.labels(api)
        # Watched names must not shadow these: two families of one name make Prometheus reject the whole scrape.
        self._watched = _Watched({f.name + suffix for f in registry.collect() for suffix in _SUFFIXES})
        registry.register(self._watched)
        if gpu:
            collector = nvml_collector()
            if collector is not None:
                registry.register(collector)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request; ``route`` is the route template, never the raw path (one series per URL otherwise)."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    def listener(self, flow: str, cached: frozenset[str] | None = None) -> Callable[[Event], None]:
        """A listener for ONE run of ``flow``: pass it to ``rillflow.runtime.scheduler.run(listeners=(...))``.

        ``cached``: the nodes whose results this run looks up in a cache (a server without a cache: none);
        None counts every llm, retrieve and python node as a lookup."""
        return _RunListener(self, flow, cached)

    def stream_opened(self, api: str) -> None:
        self.active_streams.labels(api).inc()

    def stream_closed(self, api: str) -> None:
        self.active_streams.labels(api).dec()

    def rejected(self, kind: str, status: int) -> None:
        """An admission rejection: rate_limit, token_rate, budget, streams, overloaded, auth, too_large, invalid."""
        self.rejections.labels(kind, str(status)).inc()

    def queue_wait(self, seconds: float) -> None:
        """Time a request waited in the load-shedding queue for a global slot."""
        self.admission_wait.observe(seconds)

    def watch(self, name: str, read: Callable[[], Mapping[str, float]]) -> None:
        """Expose ``read()`` as gauges ``rill_<name>_<key>``, read at scrape time; calling again replaces it."""
        self._watched.reads[name] = read

    def render(self) -> tuple[bytes, str]:
        """The /metrics body and its content type. Synchronous: NVML and watched reads run in the caller."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _RunListener:
    """Turns one run's events into observations. Runs on the event loop, inside ``Run.emit``, per event."""

    __slots__ = ("_cached", "_flow", "_m", "_seen_chunk", "_started", "_types")

    def __init__(self, metrics: Metrics, flow: str, cached: frozenset[str] | None = None) -> None:
        self._m = metrics
        self._flow = flow
        self._cached = cached
        self._seen_chunk = False
        self._types: dict[str, str] = {}  # node -> node_type, from node_started (later events do not repeat it)
        self._started: dict[str, float] = {}  # node -> ts of its first attempt, for durations events do not carry

    def __call__(self, event: Event) -> None:
        if event.type == "chunk":
            # The per-chunk path: a run streams thousands of chunks and only the first one is measured.
            if self._seen_chunk:
                return
            self._seen_chunk = True
            self._m.run_ttft.labels(self._flow).observe(event.ts)
            return
        handler = _HANDLERS.get(event.type)
        if handler is None:
            return
        try:
            handler(self, event)
        # Run.emit calls listeners bare: a raise here would break the run itself. Metrics lose one point instead.
        except Exception:
            log.warning("metrics: could not record %s event of flow %r", event.type, self._flow, exc_info=True)

    def _node_started(self, event: Event) -> None:
        data = event.data
        node = str(event.node)
        if data.get("attempt", 1) == 1:  # retries report queue_ms 0 and must not restart the node's clock
            self._types[node] = str(data.get("node_type", ""))
            self._started[node] = event.ts
            self._m.node_wait.labels(self._flow).observe(data.get("queue_ms", 0.0) / 1000)

    def _node_finished(self, event: Event) -> None:
        data = event.data
        node = str(event.node)
        node_type = self._types.get(node, "")
        cached = data.get("cached")
        status = "cached" if cached else "fallback" if "via" in data else "ok"
        self._node_time(event, node, node_type, status)
        if "ttft_ms" in data:
            self._m.node_ttft.labels(self._flow, node).observe(data["ttft_ms"] / 1000)
        looked_up = node in self._cached if self._cached is not None else node_type in CACHED_TYPES
        if not cached and looked_up:  # a hit counted its lookup at its cache_hit event
            self._m.cache_lookups.labels(self._flow, node).inc()
        self._usage(data.get("usage"))

    def _node_failed(self, event: Event) -> None:
        node = str(event.node)
        self._node_time(event, node, self._types.get(node, ""), "failed")
        self._error(event, "node")

    def _node_time(self, event: Event, node: str, node_type: str, status: str) -> None:
        # duration_ms is the scheduler's own clock; offline answers, stand-ins and failures carry none.
        ms = event.data.get("duration_ms")
        seconds = ms / 1000 if ms is not None else event.ts - self._started.get(node, event.ts)
        self._m.node_duration.labels(self._flow, node, node_type, status).observe(seconds)

    def _node_retry(self, event: Event) -> None:
        self._error(event, "retry")
        self._usage(event.data.get("usage"))  # a failed call may still have cost tokens

    def _node_fallback(self, event: Event) -> None:
        self._error(event, "fallback")

    def _cache_hit(self, event: Event) -> None:
        node = str(event.node)
        self._m.cache_lookups.labels(self._flow, node).inc()
        self._m.cache_hits.labels(self._flow, node, str(event.data.get("tier", ""))).inc()

    def _model_queued(self, event: Event) -> None:
        model = str(event.data.get("model") or "unknown")
        self._m.model_wait.labels(self._flow, model).observe(event.data.get("wait_ms", 0.0) / 1000)

    def _run_finished(self, event: Event) -> None:
        self._m.runs.labels(self._flow, str(event.data.get("status", "ok")), "").inc()
        self._end(event)

    def _run_failed(self, event: Event) -> None:
        self._m.runs.labels(self._flow, "failed", _kind(event)).inc()
        self._error(event, "run")
        self._end(event)

    def _end(self, event: Event) -> None:
        self._m.run_duration.labels(self._flow).observe(event.ts)
        self._types.clear()  # a listener someone keeps after its run holds no per-node state
        self._started.clear()

    def _error(self, event: Event, where: str) -> None:
        self._m.errors.labels(self._flow, _kind(event), where).inc()

    def _usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        model = str(usage.get("model") or "unknown")
        for direction in ("input", "output"):
            count = usage.get(f"{direction}_tokens") or 0
            if count:
                self._m.tokens.labels(self._flow, model, direction).inc(count)
        cost = usage.get("cost")
        if cost:
            self._m.cost.labels(self._flow, model).inc(cost)


def _kind(event: Event) -> str:
    error = event.data.get("error")
    return str(error.get("kind", "unknown")) if isinstance(error, Mapping) else "unknown"


_HANDLERS: dict[str, Callable[[_RunListener, Event], None]] = {
    "node_started": _RunListener._node_started,
    "node_finished": _RunListener._node_finished,
    "node_failed": _RunListener._node_failed,
    "node_retry": _RunListener._node_retry,
    "node_fallback": _RunListener._node_fallback,
    "cache_hit": _RunListener._cache_hit,
    "model_queued": _RunListener._model_queued,
    "run_finished": _RunListener._run_finished,
    "run_failed": _RunListener._run_failed,
}


class _Watched(Collector):
    """Counters other parts keep (trace store, recorder, cache), turned into gauges at scrape time."""

    def __init__(self, reserved: set[str]) -> None:
        self._reserved = reserved | {"rill_watch_errors", "rill_watch_errors_total"}
        self.reads: dict[str, Callable[[], Mapping[str, float]]] = {}
        self._failures: dict[str, int] = {}

    def describe(self) -> Iterable[Metric]:
        return ()  # names depend on what the reads return: nothing to declare up front

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for name, read in list(self.reads.items()):  # a copy: watch() may run while a scrape does
            for key, value in self._read(name, read).items():
                metric = _INVALID.sub("_", f"rill_{name}_{key}")
                if metric in families or metric in self._reserved or not isinstance(value, (int, float)):
                    continue  # a name taken (by a metric above or another read), or a value that is not a number
                families[metric] = GaugeMetricFamily(metric, f"{key} of {name}, read at scrape time.", value=float(value))
        failures = CounterMetricFamily("rill_watch_errors", "Watched reads that raised, skipped from /metrics.", labels=["name"])
        for name, count in self._failures.items():
            failures.add_metric([name], count)
        return [*families.values(), failures]

    def _read(self, name: str, read: Callable[[], Mapping[str, float]]) -> Mapping[str, float]:
        try:
            return read()
        except Exception:
            # One broken part must not take /metrics down with it; the failure shows as a counter instead.
            self._failures[name] = self._failures.get(name, 0) + 1
            log.debug("metrics: reading %r failed", name, exc_info=True)
            return {}
