"""The run API of `rill serve` on a real uvicorn on loopback: flows, SSE and JSON runs, traces, feedback,
health, metrics and the edge limits (413/422/400 before any model call)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests import flowfuncs
from tests.live_server import LiveServer, serving
from tests.sse_client import events

CHAT = """\
version: 1
name: chat
description: A scripted chat.
inputs:
  question: {type: string, max_length: 500}
  history: {type: chat_history, default: []}
outputs:
  answer: ${answer.text}
  sources: ${sources.value}
nodes:
  sources: {type: static, value: [{marker: 1, source: docs/a.md, title: A}]}
  answer: {type: scripted, text: "You asked: ${inputs.question} and more words follow here", delay: 5ms}
"""

TICK = """\
version: 1
name: tick
inputs:
  question: {type: string, max_length: 500}
  count: {type: integer, default: 40}
outputs:
  answer: ${model.text}
nodes:
  model: {type: python, function: "tests.flowfuncs:ticker", stream: true, args: {question: "${inputs.question}", count: "${inputs.count}"}}
"""

FAIL = """\
version: 1
name: broken
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: scripted, text: "never", fail_attempts: [1], error: server}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
        mp.setenv("RILL_STATE_DIR", str(tmp / "state"))
        settings = ServeSettings(cache=False, trace=True, max_body_bytes=20_000, max_input_chars=5_000,
                                 limits=KeyLimits(requests_per_minute=10_000, max_streams=50))
        with serving({"chat.yaml": CHAT, "tick.yaml": TICK, "broken.yaml": FAIL}, settings, tmp=tmp) as server:
            yield server


def test_flows_are_listed_with_inputs_chat_mapping_and_graph(live: LiveServer) -> None:
    body = httpx.get(f"{live.url}/api/flows").json()
    flows = {f["name"]: f for f in body["flows"]}
    assert set(flows) == {"chat", "tick", "broken"}
    chat = flows["chat"]
    assert chat["inputs"]["question"] == {"type": "string", "description": None, "required": True, "default": None, "max_length": 500}
    assert chat["chat"] == {"message": "question", "history": "history", "answer": "answer", "sources": "sources"}
    assert {n["id"] for n in chat["graph"]["nodes"]} == {"sources", "answer"}


def test_a_run_streams_every_event_and_ends_with_exactly_one_terminal_event(live: LiveServer) -> None:
    with httpx.stream("POST", f"{live.url}/api/flows/chat/runs", json={"inputs": {"question": "why?"}},
                      headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        run_id = response.headers["x-rill-run-id"]
        got = events(response)
    types = [e["type"] for e in got]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert sum(t in ("run_finished", "run_failed") for t in types) == 1
    chunks = [e["data"]["text"] for e in got if e["type"] == "chunk"]
    assert len(chunks) > 5, "the answer streams word by word"
    assert "".join(chunks) == got[-1]["data"]["outputs"]["answer"] == "You asked: why? and more words follow here"
    assert {e["run_id"] for e in got} == {run_id}
    assert [e["seq"] for e in got] == list(range(len(got)))


def test_without_streaming_a_run_answers_once_with_outputs_and_usage(live: LiveServer) -> None:
    response = httpx.post(f"{live.url}/api/flows/chat/runs", json={"inputs": {"question": "hi"}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["outputs"]["sources"] == [{"marker": 1, "source": "docs/a.md", "title": "A"}]
    assert body["usage"]["output_tokens"] == 8  # one per streamed word
    assert body["run_id"] == response.headers["x-rill-run-id"]


def test_a_failed_run_is_a_clear_error_without_a_stack_trace(live: LiveServer) -> None:
    response = httpx.post(f"{live.url}/api/flows/broken/runs", json={"inputs": {"question": "hi"}})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["kind"] == "server" and "scripted failure" in error["message"]
    assert "Traceback" not in response.text
    with httpx.stream("POST", f"{live.url}/api/flows/broken/runs", json={"inputs": {"question": "hi"}, "stream": True}) as streamed:
        got = events(streamed)
    assert got[-1]["type"] == "run_failed" and got[-1]["data"]["error"]["kind"] == "server"


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"inputs": {"question": "x" * 501}}, 422, "question"),
    ({"inputs": {"nope": 1, "question": "a"}}, 422, "nope"),
    ({"inputs": {}}, 422, "question"),
    ({"inputs": {"question": "a"}, "extra": 1}, 422, "unknown field"),
    ({"inputs": ["question"]}, 422, "must be an object"),
    ({"inputs": {"question": "a", "count": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, 422, "nested"),
])
def test_bad_inputs_are_refused_before_any_model_call(live: LiveServer, body: dict[str, object], status: int, fragment: str) -> None:
    produced = flowfuncs.TICKER["produced"]
    response = httpx.post(f"{live.url}/api/flows/tick/runs", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert flowfuncs.TICKER["produced"] == produced


def test_malformed_oversized_and_unknown_requests_get_specific_errors(live: LiveServer) -> None:
    url = f"{live.url}/api/flows/chat/runs"
    bad_json = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    too_long = httpx.post(url, json={"inputs": {"question": "a", "history": [{"role": "user", "content": "x" * 6000}]}})
    assert too_long.status_code == 422 and "characters" in too_long.json()["error"]["message"]
    big = json.dumps({"inputs": {"question": "x" * 30_000}}).encode()
    assert httpx.post(url, content=big, headers={"Content-Type": "application/json"}).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds while the body streams in
        yield big[:10_000]
        yield big[10_000:]

    assert httpx.post(url, content=chunked(), headers={"Content-Type": "application/json"}).status_code == 413
    missing = httpx.post(f"{live.url}/api/flows/nope/runs", json={"inputs": {}})
    assert missing.status_code == 404 and "chat" in missing.json()["error"]["message"]
    assert httpx.get(f"{live.url}/api/nothing").status_code == 404


def test_the_trace_of_a_run_and_feedback_on_it(live: LiveServer) -> None:
    run_id = httpx.post(f"{live.url}/api/flows/chat/runs", json={"inputs": {"question": "trace me"}}).json()["run_id"]
    trace = httpx.get(f"{live.url}/api/runs/{run_id}").json()
    assert trace["run_id"] == run_id and trace["status"] == "ok"
    assert {s["node"] for s in trace["spans"]} >= {"answer", "sources"}
    answer = next(s for s in trace["spans"] if s["node"] == "answer")
    assert answer["attributes"]["gen_ai.usage.output_tokens"] == 9
    ok = httpx.post(f"{live.url}/api/runs/{run_id}/feedback", json={"score": -1, "comment": "too short"})
    assert ok.json() == {"ok": True}
    assert httpx.get(f"{live.url}/api/runs/{run_id}").json()["feedback"][0]["score"] == -1
    assert httpx.post(f"{live.url}/api/runs/{run_id}/feedback", json={"score": 5}).status_code == 422
    assert httpx.get(f"{live.url}/api/runs/{'0' * 32}").status_code == 404
    assert httpx.get(f"{live.url}/api/runs/{run_id[:8]}").status_code == 404, "prefixes would let a caller enumerate runs"


def test_health_readiness_and_metrics(live: LiveServer) -> None:
    httpx.post(f"{live.url}/api/flows/chat/runs", json={"inputs": {"question": "count me"}})
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{live.url}/readyz").json()["status"] == "ready"
    text = httpx.get(f"{live.url}/metrics").text
    assert 'rill_http_requests_total{method="POST",route="/api/flows/{name}/runs",status="200"}' in text
    assert 'rill_runs_total{' in text and 'flow="chat"' in text
    assert "rill_node_duration_seconds_bucket" in text
    assert "rill_trace_store_written" in text


def test_every_answer_carries_a_strict_content_security_policy(live: LiveServer) -> None:
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "img-src 'self' data:" in csp and "'unsafe-inline'" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{live.url}/api/flows").headers["content-security-policy"] == csp
    assert httpx.get(f"{live.url}/static/chat.js").status_code == 200


def test_disconnecting_mid_stream_stops_the_model_and_leaks_no_task(live: LiveServer) -> None:
    baseline = live.task_count()
    with httpx.stream("POST", f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "go", "count": 400}, "stream": True}) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("event: chunk")
            if seen == 5:
                break
        produced_at_leave = flowfuncs.TICKER["produced"]
    deadline = time.monotonic() + 5
    while (flowfuncs.TICKER["running"] or live.task_count() > baseline) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flowfuncs.TICKER["running"] == 0, "the model kept generating for nobody"
    assert flowfuncs.TICKER["produced"] - produced_at_leave <= 5
    assert live.task_count() <= baseline
    assert live.rill.gate.shedder.active == 0


def test_static_files_do_not_escape_their_folder(live: LiveServer, tmp_path: Path) -> None:
    assert httpx.get(f"{live.url}/static/../server.py").status_code == 404
    assert httpx.get(f"{live.url}/static/%2e%2e/server.py").status_code == 404


def test_a_run_stopped_by_its_client_is_still_traced_as_cancelled(live: LiveServer) -> None:
    """Regression: sse-starlette cancels inside an anyio scope, which cut the run's shutdown short before
    its terminal event, so stopped runs had no trace and no metrics."""
    with httpx.stream("POST", f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "stop me", "count": 400}, "stream": True}) as response:
        run_id = response.headers["x-rill-run-id"]
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("event: chunk")
            if seen == 3:
                break
    deadline = time.monotonic() + 5
    trace = httpx.get(f"{live.url}/api/runs/{run_id}")
    while trace.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
        trace = httpx.get(f"{live.url}/api/runs/{run_id}")
    assert trace.status_code == 200, "a stopped run must leave its trace"
    assert trace.json()["status"] == "cancelled"
    assert 'error_kind="cancelled",flow="tick",status="failed"' in httpx.get(f"{live.url}/metrics").text
