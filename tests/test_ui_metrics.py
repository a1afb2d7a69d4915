"""/metrics: run metrics read from the event stream, HTTP and admission, watched counters, GPU over NVML."""

from __future__ import annotations

import os
import sys
import time
import types
from typing import Any

import pytest

from rillflow.runtime.events import Event
from rillflow.ui import gpu
from rillflow.ui.metrics import Metrics
from tests.helpers import flow, run_flow


def run_events(*specs: tuple[str, str | None, float, dict[str, Any]]) -> list[Event]:
    """(type, node, ts, data) -> the Events of one run, numbered as the scheduler numbers them."""
    return [Event(type_, "r1", seq, ts, node, data) for seq, (type_, node, ts, data) in enumerate(specs)]  # type: ignore[arg-type]


def feed(metrics: Metrics, events: list[Event], flow_name: str = "qa") -> None:
    listener = metrics.listener(flow_name)
    for event in events:
        listener(event)


def value(metrics: Metrics, sample: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample, labels)


STARTED = ("run_started", None, 0.0, {"flow": "qa", "inputs": ["question"], "started_at": "2025-01-01T00:00:00Z"})
OK = ("run_finished", None, 1.0, {"status": "ok", "outputs": {}})


def test_node_latency_is_observed_per_node_with_its_status():
    m = Metrics(gpu=False)
    feed(m, run_events(
        STARTED,
        ("node_started", "answer", 0.01, {"node_type": "llm", "attempt": 1, "queue_ms": 2.0}),
        ("node_finished", "answer", 0.2, {"duration_ms": 120.0, "attempts": 1, "ttft_ms": 40.0}),
        ("node_started", "docs", 0.01, {"node_type": "retrieve", "attempt": 1, "queue_ms": 0.0}),
        ("cache_hit", "docs", 0.02, {"tier": "exact", "age_s": 3.0}),
        ("node_finished", "docs", 0.03, {"duration_ms": 3.0, "attempts": 0, "cached": "exact"}),
        ("node_started", "tool", 0.1, {"node_type": "python", "attempt": 1, "queue_ms": 0.0}),
        ("node_failed", "tool", 0.4, {"error": {"kind": "internal", "message": "boom"}, "attempts": 1}),
        ("node_started", "draft", 0.1, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0}),
        ("node_fallback", "draft", 0.3, {"to": "answer", "error": {"kind": "timeout", "message": "slow"}, "attempts": 1}),
        ("node_finished", "draft", 0.6, {"via": "answer"}),
        OK,
    ))
    count = "rill_node_duration_seconds_count"
    total = "rill_node_duration_seconds_sum"
    assert value(m, count, flow="qa", node="answer", node_type="llm", status="ok") == 1
    assert value(m, total, flow="qa", node="answer", node_type="llm", status="ok") == pytest.approx(0.12)
    assert value(m, total, flow="qa", node="docs", node_type="retrieve", status="cached") == pytest.approx(0.003)
    # node_failed and stand-ins carry no duration_ms: measured from the node's first node_started
    assert value(m, total, flow="qa", node="tool", node_type="python", status="failed") == pytest.approx(0.3)
    assert value(m, total, flow="qa", node="draft", node_type="llm", status="fallback") == pytest.approx(0.5)
    assert value(m, "rill_node_duration_seconds_count", flow="qa", node="answer", node_type="llm", status="failed") is None
    assert value(m, "rill_node_ttft_seconds_sum", flow="qa", node="answer") == pytest.approx(0.04)
    assert value(m, "rill_node_queue_wait_seconds_count", flow="qa") == 4
    assert value(m, "rill_node_queue_wait_seconds_sum", flow="qa") == pytest.approx(0.002)


def test_a_retry_neither_restarts_the_node_clock_nor_counts_its_zero_queue_wait():
    m = Metrics(gpu=False)
    feed(m, run_events(
        STARTED,
        ("node_started", "tool", 0.1, {"node_type": "python", "attempt": 1, "queue_ms": 5.0}),
        ("node_retry", "tool", 0.2, {"attempt": 1, "error": {"kind": "server", "message": "503"}, "delay": 0.1, "duration_ms": 100.0}),
        ("node_started", "tool", 0.3, {"node_type": "python", "attempt": 2, "queue_ms": 0.0}),
        ("node_failed", "tool", 0.5, {"error": {"kind": "server", "message": "503"}, "attempts": 2}),
        ("run_failed", None, 0.5, {"error": {"kind": "server", "message": "503", "node": "tool"}}),
    ))
    assert value(m, "rill_node_duration_seconds_sum", flow="qa", node="tool", node_type="python", status="failed") == pytest.approx(0.4)
    assert value(m, "rill_node_queue_wait_seconds_count", flow="qa") == 1


def test_run_ttft_counts_the_first_chunk_only():
    m = Metrics(gpu=False)
    chunk = {"output": "answer", "text": "x"}
    feed(m, run_events(STARTED, ("chunk", "answer", 0.25, chunk), ("chunk", "answer", 0.5, chunk), ("chunk", "answer", 0.9, chunk), OK))
    assert value(m, "rill_run_ttft_seconds_count", flow="qa") == 1
    assert value(m, "rill_run_ttft_seconds_sum", flow="qa") == 0.25
    assert value(m, "rill_run_duration_seconds_sum", flow="qa") == 1.0
    assert value(m, "rill_runs_total", flow="qa", status="ok", error_kind="") == 1


def test_each_run_gets_its_own_first_chunk():
    m = Metrics(gpu=False)
    chunk = {"output": "answer", "text": "x"}
    for ttft in (0.1, 0.3):
        feed(m, run_events(STARTED, ("chunk", "answer", ttft, chunk), ("chunk", "answer", 0.95, chunk), OK))
    assert value(m, "rill_run_ttft_seconds_count", flow="qa") == 2
    assert value(m, "rill_run_ttft_seconds_sum", flow="qa") == pytest.approx(0.4)


def test_tokens_and_cost_are_summed_over_nodes_and_failed_attempts():
    m = Metrics(gpu=False)
    usage = {"input_tokens": 100, "output_tokens": 20, "model": "gpt-x", "cost": 0.25}
    feed(m, run_events(
        STARTED,
        ("node_started", "a", 0.0, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0}),
        ("node_retry", "a", 0.1, {"attempt": 1, "error": {"kind": "server", "message": "x"}, "delay": 0.0, "duration_ms": 1.0, "usage": usage}),
        ("node_finished", "a", 0.2, {"duration_ms": 200.0, "attempts": 2, "usage": usage}),
        ("node_started", "b", 0.0, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0}),
        ("node_finished", "b", 0.2, {"duration_ms": 200.0, "attempts": 1,
                                     "usage": {"input_tokens": 7, "output_tokens": 3, "model": None, "cost": None}}),
        OK,
    ))
    assert value(m, "rill_tokens_total", flow="qa", model="gpt-x", direction="input") == 200
    assert value(m, "rill_tokens_total", flow="qa", model="gpt-x", direction="output") == 40
    assert value(m, "rill_cost_usd_total", flow="qa", model="gpt-x") == pytest.approx(0.5)
    assert value(m, "rill_tokens_total", flow="qa", model="unknown", direction="output") == 3
    assert value(m, "rill_cost_usd_total", flow="qa", model="unknown") is None


def test_cache_hit_rate_is_hits_over_lookups():
    m = Metrics(gpu=False)
    for tier in ("exact", None, "semantic", None):
        events = [STARTED, ("node_started", "answer", 0.0, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0})]
        if tier is not None:
            events.append(("cache_hit", "answer", 0.01, {"tier": tier, "age_s": 1.0}))
        events += [("node_finished", "answer", 0.02, {"duration_ms": 20.0, "attempts": 1, **({"cached": tier} if tier else {})}),
                   ("node_started", "prompt", 0.0, {"node_type": "prompt", "attempt": 1, "queue_ms": 0.0}),
                   ("node_finished", "prompt", 0.0, {"duration_ms": 0.1, "attempts": 1}), OK]
        feed(m, run_events(*events))
    assert value(m, "rill_cache_lookups_total", flow="qa", node="answer") == 4
    assert value(m, "rill_cache_hits_total", flow="qa", node="answer", tier="exact") == 1
    assert value(m, "rill_cache_hits_total", flow="qa", node="answer", tier="semantic") == 1
    assert value(m, "rill_cache_lookups_total", flow="qa", node="prompt") is None  # prompts are not cached


def test_only_nodes_the_server_looks_up_in_a_cache_count_lookups():
    m = Metrics(gpu=False)
    finished = [STARTED, ("node_started", "answer", 0.0, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0}),
                ("node_finished", "answer", 0.02, {"duration_ms": 20.0, "attempts": 1}), OK]
    for cached in (frozenset(), frozenset({"answer"})):
        listener = m.listener("qa", cached)
        for event in run_events(*finished):
            listener(event)
    assert value(m, "rill_cache_lookups_total", flow="qa", node="answer") == 1, "a server without a cache looks nothing up"


def test_errors_are_counted_by_kind_and_where():
    m = Metrics(gpu=False)
    feed(m, run_events(
        STARTED,
        ("node_started", "a", 0.0, {"node_type": "llm", "attempt": 1, "queue_ms": 0.0}),
        ("node_retry", "a", 0.1, {"attempt": 1, "error": {"kind": "rate_limit", "message": "429"}, "delay": 0.1, "duration_ms": 1.0}),
        ("node_retry", "a", 0.3, {"attempt": 2, "error": {"kind": "rate_limit", "message": "429"}, "delay": 0.1, "duration_ms": 1.0}),
        ("node_fallback", "a", 0.5, {"to": "b", "error": {"kind": "timeout", "message": "slow"}, "attempts": 3}),
        ("node_failed", "b", 0.6, {"error": {"kind": "server", "message": "500"}, "attempts": 1}),
        ("run_failed", None, 0.7, {"error": {"kind": "server", "message": "500", "node": "b"}}),
    ))
    assert value(m, "rill_errors_total", flow="qa", kind="rate_limit", where="retry") == 2
    assert value(m, "rill_errors_total", flow="qa", kind="timeout", where="fallback") == 1
    assert value(m, "rill_errors_total", flow="qa", kind="server", where="node") == 1
    assert value(m, "rill_errors_total", flow="qa", kind="server", where="run") == 1
    assert value(m, "rill_runs_total", flow="qa", status="failed", error_kind="server") == 1
    assert value(m, "rill_run_duration_seconds_sum", flow="qa") == pytest.approx(0.7)


def test_model_queue_wait_is_observed_per_model():
    m = Metrics(gpu=False)
    feed(m, run_events(STARTED, ("model_queued", "a", 0.5, {"model": "gemma-3-270m", "wait_ms": 450.0}), OK))
    assert value(m, "rill_model_queue_wait_seconds_sum", flow="qa", model="gemma-3-270m") == pytest.approx(0.45)


def test_a_malformed_event_costs_a_data_point_never_the_run(caplog: pytest.LogCaptureFixture):
    m = Metrics(gpu=False)
    feed(m, run_events(STARTED, ("node_finished", "a", 0.1, {"duration_ms": "soon", "attempts": 1}), OK))
    assert value(m, "rill_runs_total", flow="qa", status="ok", error_kind="") == 1
    assert "could not record node_finished" in caplog.text


def test_active_streams_go_up_and_down_and_start_at_zero():
    m = Metrics(gpu=False)
    assert value(m, "rill_active_streams", api="runs") == 0
    assert value(m, "rill_active_streams", api="openai") == 0
    m.stream_opened("runs")
    m.stream_opened("runs")
    m.stream_opened("openai")
    m.stream_closed("runs")
    assert value(m, "rill_active_streams", api="runs") == 1
    assert value(m, "rill_active_streams", api="openai") == 1


def test_request_metrics_are_labelled_by_route_template():
    m = Metrics(gpu=False)
    m.request("/api/flows/{name}/runs", "POST", 200, 0.2)
    m.request("/api/flows/{name}/runs", "POST", 200, 0.4)
    m.request("/api/flows/{name}/runs", "POST", 429, 0.001)
    assert value(m, "rill_http_requests_total", route="/api/flows/{name}/runs", method="POST", status="200") == 2
    assert value(m, "rill_http_requests_total", route="/api/flows/{name}/runs", method="POST", status="429") == 1
    assert value(m, "rill_http_request_duration_seconds_count", route="/api/flows/{name}/runs", method="POST") == 3
    assert value(m, "rill_http_request_duration_seconds_sum", route="/api/flows/{name}/runs", method="POST") == pytest.approx(0.601)


def test_admission_rejections_and_queue_wait():
    m = Metrics(gpu=False)
    m.rejected("rate_limit", 429)
    m.rejected("rate_limit", 429)
    m.rejected("overloaded", 503)
    m.queue_wait(0.05)
    assert value(m, "rill_admission_rejections_total", kind="rate_limit", status="429") == 2
    assert value(m, "rill_admission_rejections_total", kind="overloaded", status="503") == 1
    assert value(m, "rill_queue_wait_seconds_sum") == 0.05


def test_watch_exposes_gauges_read_at_scrape_time():
    m = Metrics(gpu=False)
    stats = {"dropped": 0, "errors": 1}
    m.watch("trace_store", lambda: stats)
    assert value(m, "rill_trace_store_dropped") == 0
    stats["dropped"] = 7
    assert value(m, "rill_trace_store_dropped") == 7
    assert value(m, "rill_trace_store_errors") == 1
    m.watch("cache", lambda: {"hit-rate": 0.5, "backend": "redis"})  # odd key sanitised; a non-number skipped
    body, content_type = m.render()
    assert b"rill_cache_hit_rate 0.5" in body and b"backend" not in body
    assert content_type.startswith("text/plain")


def test_a_failing_watch_callback_does_not_break_render():
    m = Metrics(gpu=False)

    def broken() -> dict[str, float]:
        raise OSError("database is locked")

    m.watch("trace_recorder", broken)
    m.watch("cache", lambda: {"entries": 3})
    m.request("/health", "GET", 200, 0.001)
    body, _ = m.render()
    assert b"rill_cache_entries 3.0" in body and b"rill_http_requests_total" in body
    assert b"rill_trace_recorder" not in body
    assert b'rill_watch_errors_total{name="trace_recorder"} 1.0' in body


def test_a_watched_name_never_shadows_a_metric_of_its_own():
    m = Metrics(gpu=False)
    m.watch("cache", lambda: {"hits": 3, "lookups_total": 4, "entries": 5})  # rill_cache_hits is the hit counter
    body, _ = m.render()
    assert b"rill_cache_hits 3" not in body and b"rill_cache_lookups_total 4" not in body
    assert b"rill_cache_entries 5.0" in body


def test_apps_in_one_process_keep_their_own_registries():
    first, second = Metrics(gpu=False), Metrics(gpu=False)
    first.rejected("auth", 401)
    assert value(second, "rill_admission_rejections_total", kind="auth", status="401") is None


async def test_a_real_run_with_a_retry_is_measured_through_the_listener():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "one two three", delay: 5ms, fail_attempts: [1], error: server, retry: {attempts: 2, backoff: 10ms}}
""")
    m = Metrics(gpu=False)
    result = await run_flow(plan, listeners=(m.listener("f"),))
    assert result.status == "ok"
    first_chunk = next(e for e in result.events if e.type == "chunk")
    assert value(m, "rill_runs_total", flow="f", status="ok", error_kind="") == 1
    assert value(m, "rill_errors_total", flow="f", kind="server", where="retry") == 1
    assert value(m, "rill_run_ttft_seconds_count", flow="f") == 1
    assert value(m, "rill_run_ttft_seconds_sum", flow="f") == first_chunk.ts
    assert value(m, "rill_run_duration_seconds_sum", flow="f") == result.events[-1].ts
    assert value(m, "rill_node_duration_seconds_count", flow="f", node="a", node_type="scripted", status="ok") == 1
    assert value(m, "rill_node_ttft_seconds_count", flow="f", node="a") == 1
    assert value(m, "rill_tokens_total", flow="f", model="scripted", direction="output") == 3
    assert value(m, "rill_node_queue_wait_seconds_count", flow="f") == 1  # attempt 2 is not a second wait


def test_listener_cost_per_chunk_event():
    """Printed, never asserted: a timed assertion would fail on a loaded CI machine, not on a slow listener."""
    m = Metrics(gpu=False)
    listener = m.listener("qa")
    chunk = Event("chunk", "r1", 1, 0.1, "answer", {"output": "answer", "text": "x"})
    listener(chunk)  # the first one is measured; the rest must be nearly free
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        listener(chunk)
    print(f"metrics listener: {(time.perf_counter() - t0) / n * 1e9:.0f} ns per chunk event")
    assert value(m, "rill_run_ttft_seconds_count", flow="qa") == 1


# -- GPU ----------------------------------------------------------------------------------------

class FakeNVMLError(Exception):
    pass


def fake_nvml(*, init_fails: bool = False, count_fails: bool = False) -> types.ModuleType:
    """Two devices: 0 healthy, 1 lost (every call on it raises); device 0's utilisation is 37%."""
    fake = types.ModuleType("pynvml")
    memory = types.SimpleNamespace(used=2 * 2**30, total=80 * 2**30, free=78 * 2**30)

    def init() -> None:
        if init_fails:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def count() -> int:
        if count_fails:
            raise FakeNVMLError("Driver Not Loaded")
        return 2

    def handle(index: int) -> int:
        if index == 1:
            raise FakeNVMLError("GPU is lost")
        return index

    fake.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    fake.nvmlInit = init  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = count  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: memory  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=10)  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def nvml_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_initialised", None)  # each test starts before nvmlInit, and leaves no trace


HAS_DRIVER = os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(HAS_DRIVER, reason="an NVIDIA driver is present: NVML works here")
def test_nvml_collector_is_none_without_a_driver(nvml_state: None):
    assert gpu.nvml_collector() is None  # and quietly: filterwarnings=error turns any warning into a failure
    assert b"rill_gpu" not in Metrics().render()[0]


@pytest.mark.skipif(not HAS_DRIVER, reason="needs an NVIDIA GPU and driver")
def test_nvml_collector_reads_a_real_gpu(nvml_state: None):
    m = Metrics()
    assert value(m, "rill_gpu_memory_total_bytes", gpu="0") > 2**30
    assert 0 <= value(m, "rill_gpu_memory_used_bytes", gpu="0") <= value(m, "rill_gpu_memory_total_bytes", gpu="0")
    utilisation = value(m, "rill_gpu_utilization_ratio", gpu="0")
    assert utilisation is None or 0 <= utilisation <= 1  # None on MIG instances: NVML does not support it there


def test_nvml_collector_is_none_when_pynvml_is_missing_or_init_fails(monkeypatch: pytest.MonkeyPatch, nvml_state: None):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # None in sys.modules: import raises ImportError
    assert gpu.nvml_collector() is None
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_fails=True))
    assert gpu.nvml_collector() is None


def test_nvml_collector_skips_a_lost_device_and_reports_the_rest(monkeypatch: pytest.MonkeyPatch, nvml_state: None):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    m = Metrics()
    assert value(m, "rill_gpu_memory_used_bytes", gpu="0") == 2 * 2**30
    assert value(m, "rill_gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert value(m, "rill_gpu_utilization_ratio", gpu="0") == 0.37
    assert value(m, "rill_gpu_memory_total_bytes", gpu="1") is None
    body, _ = m.render()
    assert b'rill_gpu_utilization_ratio{gpu="0"} 0.37' in body


def test_utilisation_not_supported_still_reports_memory(monkeypatch: pytest.MonkeyPatch, nvml_state: None):
    fake = fake_nvml()

    def not_supported(handle: int) -> None:
        raise FakeNVMLError("Not Supported")  # MIG instances

    fake.nvmlDeviceGetUtilizationRates = not_supported  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = Metrics()
    assert value(m, "rill_gpu_memory_used_bytes", gpu="0") == 2 * 2**30
    assert value(m, "rill_gpu_utilization_ratio", gpu="0") is None


def test_an_nvml_error_at_scrape_time_leaves_the_rest_of_metrics(monkeypatch: pytest.MonkeyPatch, nvml_state: None):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count_fails=True))
    m = Metrics()
    m.stream_opened("runs")
    body, _ = m.render()
    assert b'rill_active_streams{api="runs"} 1.0' in body
    assert b"# TYPE rill_gpu_memory_used_bytes gauge" in body and b"rill_gpu_memory_used_bytes{" not in body
