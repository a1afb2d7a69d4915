"""Cancellation end to end: a client that leaves cancels its run and the model under it; nothing leaks.

Reliability notes 1.6 (LD-02, LD-03, LD-04): 200 mid-stream disconnects, 200 clients gone before the
first byte, a stalled reader dropped by the send timeout, and a real llama.cpp model that stops
generating within a token or two of the disconnect.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rillflow.nodes.llm_local import LocalModel
from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests import flowfuncs
from tests.live_server import LiveServer, serving

TICK = """\
version: 1
name: tick
inputs:
  question: {type: string}
  count: {type: integer, default: 300}
outputs:
  answer: ${model.text}
nodes:
  model: {type: python, function: "tests.flowfuncs:ticker", stream: true, args: {question: "${inputs.question}", count: "${inputs.count}"}}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
        settings = ServeSettings(cache=False, trace=False, max_active=300, max_queued=300,
                                 limits=KeyLimits(requests_per_minute=100_000, max_streams=1_000))
        with serving({"tick.yaml": TICK}, settings, tmp=tmp_path_factory.mktemp("cancel")) as server:
            yield server


def settle(live: LiveServer, baseline: int, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while (flowfuncs.TICKER["running"] or live.task_count() > baseline or live.rill.gate.shedder.active) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_200_clients_leaving_mid_stream_stop_their_runs_and_leak_no_task(live: LiveServer) -> None:
    live.warm("/api/flows/tick/runs", {"inputs": {"question": "go", "count": 1}, "stream": True})
    baseline = live.task_count()
    produced_before = flowfuncs.TICKER["produced"]
    needed = 0

    async def one(client: httpx.AsyncClient) -> int:
        seen = 0
        async with client.stream("POST", f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "go"}, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                seen += line.startswith("event: chunk")
                if seen == 10:
                    break  # leaving the block closes the connection mid-stream
        return seen

    async def batch() -> int:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            return sum(await asyncio.gather(*(one(client) for _ in range(50))))

    for _ in range(4):  # 200 disconnects, 50 at a time
        needed += asyncio.run(batch())
    settle(live, baseline)
    assert needed == 2000
    assert flowfuncs.TICKER["running"] == 0, "a model kept generating for a client that left"
    extra = flowfuncs.TICKER["produced"] - produced_before - needed
    assert extra <= 200 * 5, f"{extra / 200:.1f} tokens per stream were produced after the client left"
    assert live.task_count() <= baseline, "tasks leaked"
    assert live.rill.gate.shedder.active == 0 and live.rill.gate.shedder.queued == 0


def test_200_clients_gone_before_the_first_byte_release_every_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
    settings = ServeSettings(cache=False, trace=False, max_active=4, max_queued=0,
                             limits=KeyLimits(requests_per_minute=100_000, max_streams=1))
    body = b'{"inputs": {"question": "go", "count": 5}, "stream": true}'
    request = (b"POST /api/flows/tick/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with serving({"tick.yaml": TICK}, settings, tmp=tmp_path) as live:
        live.warm("/api/flows/tick/runs", {"inputs": {"question": "go", "count": 1}, "stream": True})
        baseline = live.task_count()
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", live.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            sock.sendall(request)
            sock.close()
        settle(live, baseline)
        assert live.rill.gate.shedder.active == 0
        # max_streams is 1 for this (anonymous) client: one leaked hold would make this a 429.
        answer = httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "go", "count": 3}}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert flowfuncs.TICKER["running"] == 0
        assert live.task_count() <= baseline


BIG = """\
version: 1
name: big
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: python, function: "tests.flowfuncs:ticker", stream: true, args: {question: "${inputs.question}", count: 100000, delay: 0.001, pad: 16000}}
"""


def test_a_stalled_reader_is_dropped_after_the_send_timeout_and_its_run_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
    settings = ServeSettings(cache=False, trace=False, send_timeout=1.0, limits=KeyLimits(requests_per_minute=1000))
    body = b'{"inputs": {"question": "go"}, "stream": true}'
    request = (b"POST /api/flows/big/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with serving({"big.yaml": BIG}, settings, tmp=tmp_path) as live:
        sock = socket.create_connection(("127.0.0.1", live.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")  # then never read again: the server's sends back up
        deadline = time.monotonic() + 10
        while not flowfuncs.TICKER["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flowfuncs.TICKER["running"] == 1, "the run started"
        deadline = time.monotonic() + 60
        while flowfuncs.TICKER["running"] and time.monotonic() < deadline:
            time.sleep(0.1)
        produced = flowfuncs.TICKER["produced"]
        time.sleep(0.5)
        assert flowfuncs.TICKER["running"] == 0, "the run went on for a reader that stopped reading"
        assert flowfuncs.TICKER["produced"] == produced
        assert live.rill.gate.shedder.active == 0
        sock.close()


GEMMA = """\
version: 1
name: story
inputs:
  question: {type: string}
outputs:
  answer: ${answer.text}
models:
  small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 512, temperature: 0, n_threads: 2}
nodes:
  answer: {type: llm, model: small, prompt: "Write a very long story about ${inputs.question}.", max_tokens: 300}
"""


@pytest.fixture
def counted_tokens(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count the tokens llama.cpp hands to the node, and when, by wrapping the real model's token loop."""
    seen: dict[str, Any] = {"times": [], "running": 0}
    real = LocalModel._run_tokens

    def counting(self: LocalModel, prompt_ids: Any, params: Any, stop: threading.Event, send: Any) -> Any:
        def counted(kind: str, value: Any) -> None:
            if kind == "text":
                seen["times"].append(time.monotonic())
            send(kind, value)

        seen["running"] += 1
        try:
            return real(self, prompt_ids, params, stop, counted)
        finally:
            seen["running"] -= 1

    monkeypatch.setattr(LocalModel, "_run_tokens", counting)
    return seen


def test_a_real_model_stops_generating_when_its_client_disconnects(tmp_path: Path, counted_tokens: dict[str, Any]) -> None:
    settings = ServeSettings(cache=False, trace=False)
    with serving({"story.yaml": GEMMA}, settings, tmp=tmp_path) as live:
        with httpx.stream("POST", f"{live.url}/api/flows/story/runs", json={"inputs": {"question": "a lighthouse"}, "stream": True},
                          timeout=120) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("event: chunk")
                if chunks == 5:
                    break
        left = time.monotonic()
        deadline = left + 10
        while counted_tokens["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counted_tokens["running"] == 0, "llama.cpp kept generating after the client left"
        after = [t for t in counted_tokens["times"] if t > left]
        assert len(after) <= 2, f"{len(after)} tokens were generated after the disconnect"
        assert len(counted_tokens["times"]) < 60, "generation stopped long before max_tokens"
