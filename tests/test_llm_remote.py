"""The llm node on OpenAI-compatible servers: a real `python -m llama_cpp.server` serving the packaged
Gemma model on loopback, and a real misbehaving server (tests/fault_server.py) for the faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest

from rillflow.nodes.llm_remote import close_clients
from rillflow.nodes.model_files import gguf_path
from rillflow.runtime.scheduler import run
from tests.fault_server import FaultServer
from tests.helpers import flow, run_flow, types


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    model = gguf_path("gemma3-270m", None, ".")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--n_threads", "2", "--chat_format", "gemma"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/models", timeout=1).close()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("llama_cpp.server exited at start-up") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start within 60 s")


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    proc, base = start_llama_server()
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_clients()  # each test has its own loop: close its pooled connections with it


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def remote_flow(base_url: str, model: str = "gemma", extra: str = "", nodes: str = "", answer_extra: str = "") -> object:
    return flow(f"""
inputs: {{q: {{type: string}}}}
outputs: {{answer: "${{answer.text}}", usage: "${{answer.usage}}", finish: "${{answer.finish_reason}}"}}
models:
  remote: {{provider: openai, base_url: "{base_url}", model: "{model}", temperature: 0, request_timeout: 5s,
           price_per_mtok: {{input: 0.5, output: 1.5}}{extra}}}
  backup: {{provider: llama_cpp, model: gemma3-270m, n_ctx: 512, temperature: 0}}
nodes:
  answer: {{type: llm, model: remote, prompt: "${{inputs.q}}", max_tokens: 16{answer_extra}}}
{nodes}""")


async def test_structured_output_is_constrained_by_a_real_llama_cpp_server(llama_server):
    schema = '{type: object, properties: {city: {type: string, maxLength: 40}}, required: [city], additionalProperties: false}'
    plan = remote_flow(llama_server, extra=", structured_output: json_object",
                       answer_extra=f", json_schema: {schema}, repair_attempts: 0")
    result = await run_flow(plan, {"q": "Name the capital of France as JSON."})
    assert result.ok, result.error
    assert set(json.loads(result.outputs["answer"])) == {"city"}
    assert not [e for e in result.events if e.type == "guardrail_flagged"], "the server's grammar made repairs unnecessary"


def test_response_format_speaks_each_servers_dialect():
    from rillflow.nodes.llm_remote import response_format

    schema = {"type": "object"}
    assert response_format("json_schema", schema) == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert response_format("json_object", schema) == {"type": "json_object", "schema": schema}
    assert response_format("json_schema", None) == {"type": "json_object"}


async def test_streams_from_a_real_llama_cpp_server_with_usage_and_cost(llama_server):
    result = await run_flow(remote_flow(llama_server), {"q": "The capital of France is"})
    assert result.ok, result.error
    chunks = [e.data["text"] for e in result.events if e.type == "chunk"]
    assert len(chunks) >= 3 and "".join(chunks) == result.outputs["answer"]
    usage = result.outputs["usage"]
    assert usage["output_tokens"] >= 3 and usage["input_tokens"] > 0
    assert usage["estimated"] is True, "llama_cpp.server sends no usage when streaming: counts are estimates and say so"
    assert usage["cost"] == pytest.approx((usage["input_tokens"] * 0.5 + usage["output_tokens"] * 1.5) / 1e6)


async def test_server_killed_mid_stream_fails_over_to_the_fallback():
    proc, base = start_llama_server()
    try:
        plan = remote_flow(base, answer_extra=", fallback: spare", nodes="  spare: {type: llm, model: backup, prompt: \"${inputs.q}\", max_tokens: 8}\n")
        events = []
        async for event in run(plan, {"q": "Write a very long story about a dragon."}):
            events.append(event)
            if event.type == "chunk" and event.node == "answer" and proc.poll() is None:
                proc.kill()
        kinds = [e.type for e in events]
        assert kinds[-1] == "run_finished", events[-1]
        fallback = next(e for e in events if e.type == "node_fallback")
        assert fallback.data["to"] == "spare" and fallback.data["error"]["kind"] in ("connection", "protocol")
        retract = next(e for e in events if e.type == "retract")
        assert retract.node == "answer" and retract.data["chars"] > 0
        assert any(e.type == "chunk" and e.node == "spare" for e in events)
    finally:
        proc.kill()
        proc.wait(10)


async def test_exact_usage_when_the_server_sends_it(faults):
    result = await run_flow(remote_flow(faults.base_url, "ok"), {"q": "x"})
    assert result.outputs["answer"] == "Paris is the capital of France."
    assert result.outputs["usage"]["input_tokens"] == 11 and result.outputs["usage"]["output_tokens"] == 7
    assert result.outputs["usage"]["estimated"] is False


async def test_retry_after_is_honoured_then_the_call_succeeds(faults):
    plan = remote_flow(faults.base_url, "fail1:429:1", answer_extra=", retry: {attempts: 2, backoff: 0.01s}")
    started = time.monotonic()
    result = await run_flow(plan, {"q": "x"})
    assert result.ok and faults.counts["fail1:429:1"] == 2
    retry = next(e for e in result.events if e.type == "node_retry")
    assert retry.data["error"]["kind"] == "rate_limit" and retry.data["delay"] >= 1.0
    assert time.monotonic() - started >= 1.0


async def test_a_long_retry_after_is_not_waited_for(faults):
    plan = remote_flow(faults.base_url, "429:600", answer_extra=", retry: {attempts: 3}")
    started = time.monotonic()
    result = await run_flow(plan, {"q": "x"})
    assert result.status == "failed" and result.error["kind"] == "rate_limit"
    assert faults.counts["429:600"] == 1 and time.monotonic() - started < 5


@pytest.mark.parametrize(("model", "kind", "attempts", "fragment"), [
    ("500", "server", 2, "HTTP 500"),
    ("401", "auth", 1, "check its api_key"),
    ("400", "bad_request", 1, "HTTP 400"),
    ("malformed:3", "protocol", 1, "malformed stream chunk after 3 chunks"),
    ("nofinish:3", "protocol", 1, "without a finish reason after 3 chunks"),
    # A dropped connection is indistinguishable from a close-delimited end of body: no finish reason.
    ("die:2", "protocol", 1, "without a finish reason after 2 chunks"),
])
async def test_provider_faults_map_to_clear_errors(faults, model, kind, attempts, fragment):
    before = faults.counts[model]
    plan = remote_flow(faults.base_url, model, answer_extra=", retry: {attempts: 2, backoff: 0.01s}")
    result = await run_flow(plan, {"q": "x"})
    assert result.status == "failed"
    assert result.error["kind"] == kind and fragment in result.error["message"]
    assert faults.counts[model] - before == attempts, "attempts the server saw must equal the runtime's attempts"
    assert "Traceback" not in result.error["message"] and "injected" not in result.error["message"]


async def test_length_finish_is_reported_not_hidden(faults):
    result = await run_flow(remote_flow(faults.base_url, "length"), {"q": "x"})
    assert result.ok and result.outputs["finish"] == "length"


async def test_a_hanging_server_is_cut_by_the_node_deadline(faults):
    plan = remote_flow(faults.base_url, "hang", answer_extra=", timeout: 0.5s, retry: {attempts: 1}")
    started = time.monotonic()
    result = await run_flow(plan, {"q": "x"})
    assert result.error["kind"] == "timeout" and time.monotonic() - started < 2


async def test_structured_output_repairs_then_fails_over(faults):
    schema = "{type: object, properties: {city: {type: string}}, required: [city]}"
    plan = remote_flow(faults.base_url, "ok", answer_extra=f", json_schema: {schema}, repair_attempts: 2, fallback: canned",
                       nodes=f"  canned: {{type: llm, model: backup, prompt: \"${{inputs.q}}\", max_tokens: 40, json_schema: {schema}}}\n")
    before = faults.counts["ok"]
    result = await run_flow(plan, {"q": "x"})
    assert result.ok, result.error
    assert faults.counts["ok"] - before == 3, "one answer plus two repair attempts"
    repairs = [e for e in result.events if e.type == "guardrail_flagged" and e.data["check"] == "json_schema"]
    assert len(repairs) == 3
    failed_over = next(e for e in result.events if e.type == "node_fallback")
    assert failed_over.data["error"]["kind"] == "invalid_output"
    assert "node_finished" in types(result, "canned")
