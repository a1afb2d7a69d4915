"""Traces of real runs: one span per attempt matching the events, totals on the root, cache and guardrail
marks, GenAI attribute names on model calls, sampling, and a recorder that can never fail a run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.trace import RecorderStats
from rillflow.runtime.trace_model import RunTrace
from rillflow.runtime.trace_store import TraceStore
from tests.fault_server import FaultServer
from tests.helpers import flow, run_flow


class Sink:
    """Collects traces as a store would receive them (for the recorder's own logic)."""

    def __init__(self) -> None:
        self.traces: list[RunTrace] = []

    def submit(self, trace: RunTrace) -> None:
        self.traces.append(trace)


RETRY_THEN_FALLBACK = """
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "primary", fail_attempts: [1, 2], retry: {attempts: 2, backoff: 1ms}, fallback: b}
  b: {type: scripted, text: "from the fallback answer", delay: 1ms}
"""


async def test_one_span_per_attempt_matching_the_events() -> None:
    sink = Sink()
    result = await run_flow(flow(RETRY_THEN_FALLBACK), trace=sink)
    (trace,) = sink.traces
    started = [(e.node, e.data["attempt"]) for e in result.events if e.type == "node_started"]
    assert [(s.node, s.attempt) for s in trace.spans] == started == [("a", 1), ("a", 2), ("b", 1)]
    a1, a2, b = trace.spans
    assert a1.status == a2.status == "error" and a1.attributes["error.type"] == "server"
    assert a1.attributes["rill.retry.delay_s"] is not None and "rill.retry.delay_s" not in a2.attributes
    assert a2.attributes["rill.fallback.to"] == "b"
    assert b.status == "ok" and b.outputs == {"text": "from the fallback answer"}
    assert 0 <= b.attributes["rill.ttft_ms"] <= b.attributes["rill.duration_ms"]  # counted from the attempt's own start
    assert b.attributes["gen_ai.usage.output_tokens"] == 4
    for span in trace.spans:
        assert span.end is not None and span.start <= span.end <= trace.duration_ms / 1000
    assert trace.status == "ok" and trace.outputs == {"answer": "from the fallback answer"}
    assert trace.output_tokens == 4 and trace.ttft_ms is not None and trace.ttft_ms <= trace.duration_ms


async def test_skipped_failed_and_cancelled_nodes_all_get_a_span() -> None:
    sink = Sink()
    plan = flow("""
outputs: {answer: "${slow.text}", maybe: "${never.text}", b: "${bad.text}"}
nodes:
  bad: {type: scripted, text: "x", first_delay: 20ms, fail_attempts: [1], error: bad_request}
  never: {type: scripted, text: "y", when: "false"}
  slow: {type: scripted, text: "z", hang: true}
""")
    result = await run_flow(plan, trace=sink)
    assert result.status == "failed"
    spans = {s.node: s for s in sink.traces[0].spans}
    assert spans["bad"].status == "error" and spans["bad"].attributes["error.type"] == "bad_request"
    assert spans["never"].status == "skipped" and "condition" in spans["never"].attributes["rill.skip.reason"]
    assert spans["slow"].status == "cancelled"
    assert sink.traces[0].status == "failed" and sink.traces[0].error_kind == "bad_request"


async def test_guardrail_verdicts_and_retractions_mark_the_span() -> None:
    sink = Sink()
    plan = flow("""
inputs: {q: {type: string}}
outputs: {safe: "${g.text}"}
nodes:
  g: {type: guardrail, text: "${inputs.q}", checks: [pii_redact]}
""")
    await run_flow(plan, {"q": "write to ana@example.com"}, trace=sink)
    (span,) = sink.traces[0].spans
    assert span.attributes["rill.guardrail.verdicts"][0]["check"] == "pii_redact"


async def test_cache_hits_are_marked_on_spans_and_counted_on_the_root(tmp_path: Path) -> None:
    store = SqliteCache(tmp_path / "c.db")
    sink = Sink()
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "cached words here", cache: 10m}
""")
    try:
        await run_flow(plan, cache=store, trace=sink)
        await run_flow(plan, cache=store, trace=sink)
    finally:
        await store.flush()
        store.close()
    first, second = sink.traces
    assert first.cache_hits == 0 and second.cache_hits == 1
    (span,) = second.spans
    assert span.attributes["rill.cache.hit"] is True and span.attributes["rill.cache.tier"] == "exact"
    assert span.attempt == 1 and span.status == "ok"


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


async def test_model_spans_use_the_genai_names_and_match_the_requests_the_server_counted(faults: FaultServer) -> None:
    sink = Sink()
    plan = flow(f"""
models: {{remote: {{provider: openai, base_url: "{faults.base_url}", model: "fail2:500", api_key: "${{env.K}}",
                    price_per_mtok: {{input: 1.0, output: 2.0}}}}}}
outputs: {{answer: "${{ask.text}}"}}
nodes:
  ask: {{type: llm, model: remote, prompt: "capital of France?", max_tokens: 16, seed: 3, retry: {{attempts: 3, backoff: 1ms}}}}
""", K="key-for-tests")
    result = await run_flow(plan, trace=sink)
    assert result.ok
    spans = sink.traces[0].spans
    assert len(spans) == faults.counts["fail2:500"] == 3
    ok = spans[-1].attributes
    assert ok["gen_ai.operation.name"] == "chat" and ok["gen_ai.provider.name"] == "openai"
    assert ok["gen_ai.request.model"] == "fail2:500" and ok["gen_ai.request.max_tokens"] == 16 and ok["gen_ai.request.seed"] == 3
    assert ok["gen_ai.response.finish_reasons"] == ["stop"]
    assert ok["gen_ai.usage.output_tokens"] > 0 and ok["rill.cost_usd"] > 0
    assert sink.traces[0].cost == pytest.approx(ok["rill.cost_usd"])


async def test_sampling_keeps_failed_runs_and_drops_successful_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_TRACE_SAMPLE", "0")
    sink = Sink()
    await run_flow(flow('outputs: {a: "${x.text}"}\nnodes:\n  x: {type: scripted, text: ok}\n'), trace=sink)
    await run_flow(flow('outputs: {a: "${x.text}"}\nnodes:\n  x: {type: scripted, text: ok, fail_attempts: [1]}\n'), trace=sink)
    assert [t.status for t in sink.traces] == ["failed"]


async def test_a_broken_trace_sink_never_fails_the_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def submit(self, trace: RunTrace) -> None:
            raise OSError("disk full")

    before = RecorderStats.errors
    with caplog.at_level(logging.WARNING, logger="rillflow.trace"):
        result = await run_flow(flow('outputs: {a: "${x.text}"}\nnodes:\n  x: {type: scripted, text: fine}\n'), trace=Broken())
    assert result.ok and result.outputs == {"a": "fine"}
    assert RecorderStats.errors == before + 1 and "trace" in caplog.text


async def test_secrets_from_inputs_env_and_errors_never_reach_the_store(tmp_path: Path, faults: FaultServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    env_secret = "envsecret-7f3a9c2e51"
    pasted = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    monkeypatch.setenv("SERVICE_TOKEN", "tok-" + "9d8c7b6a5f4e3d2c")
    store = TraceStore(tmp_path / "traces.db")
    plan = flow(f"""
models: {{remote: {{provider: openai, base_url: "{faults.base_url}", model: "401", api_key: "${{env.KEY}}"}}}}
inputs: {{q: {{type: string}}}}
outputs: {{answer: "${{ask.text}}"}}
nodes:
  p: {{type: prompt, template: "key {{{{ k }}}} / {{{{ q }}}}", vars: {{k: "${{env.KEY}}", q: "${{inputs.q}}"}}}}
  ask: {{type: llm, model: remote, prompt: "${{p.text}}", max_tokens: 8}}
""", KEY=env_secret)
    result = await run_flow(plan, {"q": f"my key is {pasted}, mail ana@example.com, token tok-9d8c7b6a5f4e3d2c"}, trace=store)
    assert result.status == "failed" and result.error is not None and result.error["kind"] == "auth"
    assert store.flush()
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("traces.db"))
    for secret in (env_secret, pasted, "tok-9d8c7b6a5f4e3d2c", "ana@example.com"):
        assert secret.encode() not in raw, secret
    run: dict[str, Any] | None = TraceStore(tmp_path / "traces.db").get_run(result.events[0].run_id)
    assert run is not None and run["status"] == "failed" and [s["node"] for s in run["spans"]] == ["p", "ask"]


async def test_a_real_run_reaches_an_otlp_collector_with_one_span_per_attempt(tmp_path: Path) -> None:
    from rillflow.runtime.trace_otlp import OtlpExporter
    from tests.test_trace_otlp import Collector

    collector = Collector()
    collector.thread.start()
    exporter = OtlpExporter(endpoint=collector.url)
    store = TraceStore(tmp_path / "traces.db", exporter=exporter)
    try:
        result = await run_flow(flow(RETRY_THEN_FALLBACK), trace=store)
        assert store.flush()
        exporter.flush(5)
        spans = collector.spans()
        names = sorted(s.name for s in spans)
        assert names == ["invoke_workflow t", "scripted a", "scripted a", "scripted b"]
        root = next(s for s in spans if s.name.startswith("invoke_workflow"))
        assert all(s.trace_id == root.trace_id for s in spans)
        assert all(s.parent_span_id == root.span_id for s in spans if s is not root)
        stored = store.get_run(result.events[0].run_id)
        assert stored is not None and root.trace_id.hex() == stored["trace_id"]
    finally:
        store.close()
        collector.server.shutdown()
        collector.server.server_close()
