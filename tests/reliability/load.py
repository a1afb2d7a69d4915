"""Group 5, load (reliability notes §2(e): LD-01, LD-02, LD-04, LD-07, LD-08, LD-09, LD-13).

Every scenario serves on loopback with real sockets and returns one Figure:

- ``concurrent_chats``: 10, 50 and 200 streaming chats at once against `rill serve` in its own process (a
  scripted model, 60 tokens 20 ms apart): every chat gets all its chunks and exactly one terminal event.
- ``disconnects``: 200 clients leave mid-stream: every run is cancelled, no generator keeps running,
  and the server's asyncio task count is back to its baseline.
- ``slow_readers``: clients that stop reading mid-stream (a tiny receive window, never read again) are
  dropped after the send timeout and their runs cancelled, while other chats complete; the producer
  is held back by the stalled socket, so the memory a stalled stream holds stays bounded.
- ``rejections``: bursts over a key's rate limit, a key's stream cap and the server's global cap: every
  rejection is a 429 or 503 with an integer ``Retry-After``, the rejected run nothing, the admitted complete.
- ``soak``: a steady mix of chats (one in ten leaving early) for 60 s (CI) or 600 s (benchmark), sampling
  the server's task count, open file descriptors and RSS: counts back to baseline, RSS flat.

The process-level scenarios reuse the `rill serve` harness of bench/serve.py (its ``ticker`` and ``probe``
run inside the server and report its counters and task count over HTTP); the others use the in-process
``LiveServer`` of tests/live_server.py, whose loop, settings and stand-in model a test can reach directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.serve import CHAT, LEAVE_AFTER, PROBE, TICK, TOKENS, Chat, ServerProcess, chat, leave, pct, spawned
from rillflow.ui import protocol
from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests import flowfuncs
from tests.live_server import LiveServer, serving
from tests.reliability.figures import Figure, ratio
from tests.test_ui_limits_http import write_keys

GROUP = "5 load"
SCENARIOS = ("concurrent chats", "disconnects", "slow readers", "rejections", "soak")


@dataclass(frozen=True)
class Sizes:
    chats: tuple[int, ...] = (10, 50, 200)  # concurrent streams, one size after the other
    rounds: int = 1  # of each size
    disconnects: int = 200
    slow_readers: int = 5
    bystanders: int = 10  # chats that run while the slow readers stall
    send_timeout: float = 2.0
    burst: int = 40  # requests per rejection burst
    soak_s: float = 60
    soak_clients: int = 20
    sample_s: float = 2


CI = Sizes()
BENCH = Sizes(rounds=3, slow_readers=20, bystanders=50, burst=200, soak_s=600, sample_s=10)


def measure(bench: bool = False) -> list[Figure]:
    """Every scenario of the group, at the CI sizes or (``bench``) the report's."""
    sizes = BENCH if bench else CI
    with tempfile.TemporaryDirectory(prefix="rill-load-") as tmp:
        root = Path(tmp)
        figures = [slow_readers(root / "slow", sizes), rejections(root / "reject", sizes)]
        with rill_serve(root / "serve") as server:
            figures += [concurrent_chats(server, sizes), disconnects(server, sizes), soak(server, sizes)]
    return figures


# -- `rill serve` in its own process --------------------------------------------------------------------
@contextlib.contextmanager
def rill_serve(folder: Path) -> Iterator[ServerProcess]:
    """`rill serve` with bench/serve.py's chat, tick and probe flows, limits out of the way; warmed by one chat
    (the first stream creates per-loop helpers that would otherwise look like a leak)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("chat.yaml", CHAT), ("tick.yaml", TICK), ("probe.yaml", PROBE)):
        (folder / name).write_text(text, encoding="utf-8")
    args = ["rillflow.runtime.cli", "serve", str(folder), "--no-cache", "--no-trace", "--rpm", "1000000", "--max-streams", "100000",
            "--max-active", "1000", "--max-queued", "1000"]
    with spawned("rill serve", args, "/api/flows/chat/runs", folder / "rill.log") as server:
        asyncio.run(_chats(server.url + server.chat_path, 2))
        yield server


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle(server: ServerProcess, tasks: int, files: int, seconds: float = 10) -> dict[str, int]:
    """Wait (bounded) until no model runs and tasks and fds are down to ``tasks`` and ``files``; the state then."""
    deadline = time.monotonic() + seconds
    while True:
        state = {**server.state(), "fds": fds(server.pid)}
        settled = not state["running"] and state["tasks"] <= tasks and state["fds"] <= files
        if settled or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def baseline(server: ServerProcess) -> dict[str, int]:
    """The idle server's state: wait until nothing runs and the fds stop shrinking (closing connections)."""
    state = idle(server, 10**6, 10**6)
    for _ in range(20):
        again = {**server.state(), "fds": fds(server.pid)}
        if again["fds"] >= state["fds"] and again["tasks"] >= state["tasks"]:
            break
        state = again
        time.sleep(0.1)
    return state


async def _chats(url: str, n: int) -> list[Chat]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return list(await asyncio.gather(*(chat(client, url) for _ in range(n))))


def _chat_problem(c: Chat) -> str:
    return f"error={c.error} terminal events={c.terminals} chunks={len(c.chunks)}/{TOKENS}"


# -- LD-01 ---------------------------------------------------------------------------------------------
def concurrent_chats(server: ServerProcess, sizes: Sizes) -> Figure:
    """N streaming chats at once, for each N: all chunks, exactly one terminal event, no error; TTFT by N."""
    failures: list[str] = []
    passed = total = 0
    latency = []
    for n in sizes.chats:
        chats: list[Chat] = []
        for _ in range(sizes.rounds):
            chats += asyncio.run(_chats(server.url + server.chat_path, n))
        good = [c for c in chats if c.ok]
        passed, total = passed + len(good), total + len(chats)
        failures += [f"{n} at once: {_chat_problem(c)}" for c in chats if not c.ok][:5]
        ttft = [c.chunks[0] - c.sent for c in good]
        latency.append(f"{n}: {pct(ttft, 50):.2f}/{pct(ttft, 99):.2f}")
    what = (f"chats at {'/'.join(map(str, sizes.chats))} concurrent streams (x{sizes.rounds}) got {TOKENS} chunks and exactly one "
            f"terminal event, {total - passed} errors; TTFT p50/p99 s {', '.join(latency)}")
    return ratio(GROUP, "concurrent chats", passed, total, what, failures)


# -- LD-02 ---------------------------------------------------------------------------------------------
def disconnects(server: ServerProcess, sizes: Sizes) -> Figure:
    """K clients leave after a few chunks: K runs cancelled, no generator left running, tasks and fds back."""
    k = sizes.disconnects
    before = baseline(server)

    async def all_leave() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=k + 10)) as client:
            return list(await asyncio.gather(*(leave(client, f"{server.url}/api/flows/tick/runs") for _ in range(k))))

    results = asyncio.run(all_leave())
    left = max(t for _, t in results)
    after = idle(server, before["tasks"], before["fds"])
    settled = time.monotonic() - left  # an upper bound: includes the probes' own round trips
    read = sum(seen for seen, _ in results)
    cancelled = after["cancelled"] - before["cancelled"]
    extra = (after["produced"] - before["produced"] - read) / k
    failures = [f"{k - sum(seen == LEAVE_AFTER for seen, _ in results)} clients did not read {LEAVE_AFTER} chunks"] \
        if read != k * LEAVE_AFTER else []
    if after["running"]:
        failures.append(f"{after['running']} model generators still running {settled:.1f} s after the last client left")
    leaked = after["tasks"] - before["tasks"]
    if leaked > 0 or after["fds"] > before["fds"]:
        failures.append(f"leaked {leaked} asyncio tasks and {after['fds'] - before['fds']} fds")
    what = (f"runs cancelled after {k} mid-stream disconnects; {after['running']} generators running, tasks "
            f"{before['tasks']}->{after['tasks']}, fds {before['fds']}->{after['fds']} {settled:.1f} s later; "
            f"{extra:.1f} tokens per stream made after the client left")
    return ratio(GROUP, "disconnects", cancelled, k, what, failures)


# -- LD-04 ---------------------------------------------------------------------------------------------
FLOOD = """\
version: 1
name: flood
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: python, function: "tests.flowfuncs:ticker", stream: true, args: {question: "${inputs.question}", count: 100000, delay: 0.001, pad: 4000}}
"""
PAD_BYTES = 4_000


@contextlib.contextmanager
def python_allowed() -> Iterator[None]:
    """Let flows call tests/flowfuncs.py (the allow list is the operator's; restored afterwards)."""
    old = os.environ.get("RILL_PYTHON_ALLOW")
    os.environ["RILL_PYTHON_ALLOW"] = "tests.flowfuncs.*"
    try:
        yield
    finally:
        if old is None:
            del os.environ["RILL_PYTHON_ALLOW"]
        else:
            os.environ["RILL_PYTHON_ALLOW"] = old


def stalled_reader(live: LiveServer) -> socket.socket:
    """A client that reads the status line of a flooding stream, then never reads again."""
    body = b'{"inputs": {"question": "go"}, "stream": true}'
    sock = socket.create_connection(("127.0.0.1", live.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"POST /api/flows/flood/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    head = sock.recv(64)
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"the flood stream did not start: {head!r}")
    return sock


def server_connections(port: int) -> int:
    """Connections the server side of ``port`` still holds (ESTABLISHED or CLOSE_WAIT in /proc/net/tcp)."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] in ("01", "08"))


def reset(sock: socket.socket) -> None:
    """Leave with an RST (a client that gives up), not a FIN that would wait for the buffered data."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(condition: Any, seconds: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def slow_readers(folder: Path, sizes: Sizes) -> Figure:
    """K stalled readers of a flooding stream while other chats run: runs cancelled, others unaffected, memory bounded.

    The runtime never holds a node back (DESIGN.md section 4: a run keeps its chunks, the producer never
    blocks), so a stalled stream holds what its run makes until the send timeout cancels it: rate x
    (time to fill the socket buffers + send_timeout). The check is that RSS grows by no more than that.
    """
    k, timeout = sizes.slow_readers, sizes.send_timeout
    settings = ServeSettings(cache=False, trace=False, send_timeout=timeout, max_active=k + sizes.bystanders + 8,
                             limits=KeyLimits(requests_per_minute=100_000, max_streams=1_000))
    with python_allowed(), serving({"flood.yaml": FLOOD, "chat.yaml": CHAT}, settings, tmp=folder) as live:
        here = ServerProcess("in-process", os.getpid(), live.url, "/api/flows/chat/runs")
        asyncio.run(_chats(live.url + here.chat_path, 2))
        tasks, rss, produced = live.task_count(), here.rss_mb(), flowfuncs.TICKER["produced"]
        socks = [stalled_reader(live) for _ in range(k)]
        started = time.monotonic()
        failures = [] if wait_for(lambda: flowfuncs.TICKER["running"] == k, 10) else [f"{flowfuncs.TICKER['running']}/{k} floods started"]
        chats = asyncio.run(_chats(live.url + here.chat_path, sizes.bystanders))
        beside = flowfuncs.TICKER["running"]  # the chats ran next to this many stalled streams
        peak = here.rss_mb()

        def stopped_sampling() -> bool:
            nonlocal peak
            peak = max(peak, here.rss_mb())
            return flowfuncs.TICKER["running"] == 0

        stopped = wait_for(stopped_sampling, timeout + 30, 0.05)
        dropped_s = time.monotonic() - started
        made = (flowfuncs.TICKER["produced"] - produced) * (PAD_BYTES + 8)
        # a cut stream's close() waits to flush to a reader that never reads: ui/protocol.py aborts it after LINGER s
        closing = time.monotonic()
        wait_for(lambda: server_connections(live.port) == 0, protocol.LINGER + 5, 0.05)
        lingering, closed_s = server_connections(live.port), time.monotonic() - closing
        for sock in socks:
            reset(sock)
        wait_for(lambda: live.task_count() <= tasks and not live.rill.gate.shedder.active and not server_connections(live.port), 10, 0.05)
        leaked, held, left_open = live.task_count() - tasks, live.rill.gate.shedder.active, server_connections(live.port)
    grew = peak - rss
    if not stopped:
        failures.append(f"{flowfuncs.TICKER['running']} stalled runs still running {dropped_s:.0f} s after they started")
    failures += [f"a chat beside the stalled streams: {_chat_problem(c)}" for c in chats if not c.ok][:5]
    if lingering:
        failures.append(f"{lingering}/{k} stalled readers' connections still open {closed_s:.0f} s after their runs were cancelled")
    if leaked > 0 or held or left_open:
        failures.append(f"after the clients left: {leaked} leaked tasks, {held} run slots held, {left_open} connections open")
    if grew > 1.5 * made / 2**20 + 16:  # the runtime keeps a run's chunks (its output); anything beyond that is a copy too many
        failures.append(f"memory not bounded by what the runs made: RSS +{grew:.0f} MB for {made / 2**20:.0f} MB of chunks")
    value = (f"{k - flowfuncs.TICKER['running']}/{k} runs of stalled readers cancelled by the {timeout:g} s send timeout (all "
             f"{dropped_s:.1f} s after they started); {sum(c.ok for c in chats)}/{len(chats)} other chats completed beside "
             f"{beside} stalled streams; {made / k / 2**20:.1f} MB made per stalled stream, RSS +{grew:.0f} MB; {k - lingering}/{k} "
             f"stalled connections closed {closed_s:.1f} s after their runs (bounded close), {left_open} open once the clients left")
    return Figure(GROUP, "slow readers", value, not failures, failures)


# -- LD-07, LD-08, LD-09 -----------------------------------------------------------------------------------
TICKS = """\
version: 1
name: ticks
inputs:
  question: {type: string}
  count: {type: integer, default: 40}
  delay: {type: number, default: 0.05}
outputs:
  answer: ${model.text}
nodes:
  model:
    type: python
    function: "tests.flowfuncs:ticker"
    stream: true
    args: {question: "${inputs.question}", count: "${inputs.count}", delay: "${inputs.delay}"}
"""
DEFAULT_COUNT = 40  # TICKS' default, what a /v1 chat (which sets only the message) runs


@dataclass
class Answer:
    status: int
    retry_after: str | None
    kind: str | None
    complete: bool  # admitted: a full answer (one terminal event, or [DONE] on /v1)
    count: int  # tokens the run would make when admitted


async def ask(client: httpx.AsyncClient, url: str, secret: str, v1: bool, stream: bool, count: int) -> Answer:
    """One request to the ticks flow on the rillflow API or on /v1; what came back."""
    headers = {"Authorization": f"Bearer {secret}"}
    if v1:
        path, body, count = "/v1/chat/completions", {"model": "ticks", "messages": [{"role": "user", "content": "x"}], "stream": stream}, DEFAULT_COUNT
    else:
        path, body = "/api/flows/ticks/runs", {"inputs": {"question": "x", "count": count}, "stream": stream}
    async with client.stream("POST", url + path, json=body, headers=headers) as response:
        text = (await response.aread()).decode()
    data = json.loads(text) if response.headers.get("content-type", "").startswith("application/json") else {}
    kind = None
    if response.status_code != 200:
        error = data.get("error", {})
        kind = error.get("kind") or error.get("type")  # /v1 answers in OpenAI's error shape
    if not stream:
        complete = response.status_code == 200 and ((v1 and bool(data.get("choices"))) or data.get("status") == "ok")
    elif v1:
        complete = text.count("data: [DONE]") == 1
    else:
        complete = text.count("event: run_finished") == 1 and "event: run_failed" not in text
    return Answer(response.status_code, response.headers.get("retry-after"), kind, complete, count)


def _check_burst(name: str, answers: list[Answer], admitted: int, status: int, kind: str, failures: list[str]) -> None:
    ok = [a for a in answers if a.status == 200]
    if len(ok) != admitted:
        failures.append(f"{name}: {len(ok)} admitted, expected {admitted}")
    failures += [f"{name}: an admitted run did not complete" for a in ok if not a.complete][:3]
    for a in answers:
        if a.status != 200 and (a.status, a.kind) != (status, kind):
            failures.append(f"{name}: answered {a.status} {a.kind}, expected {status} {kind}")


def rejections(folder: Path, sizes: Sizes) -> Figure:
    """Bursts over a key's rate limit, a key's stream cap and the global cap, half on /api, half on /v1."""
    folder.mkdir(parents=True, exist_ok=True)
    rpm, streams, active, n = 5, 2, 6, sizes.burst
    secrets = write_keys(folder / "keys.yaml", ("burst", None, f"{{requests_per_minute: {rpm}}}"),
                         ("two", None, f"{{max_streams: {streams}}}"), ("wide", None, ""))
    settings = ServeSettings(cache=False, trace=False, api_keys=folder / "keys.yaml", max_active=active, max_queued=0,
                             limits=KeyLimits(requests_per_minute=100_000, max_streams=1_000))
    failures: list[str] = []
    with python_allowed(), serving({"ticks.yaml": TICKS}, settings, tmp=folder) as live:

        async def burst(key: str, stream: bool, count: int) -> list[Answer]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n + 10)) as client:
                return list(await asyncio.gather(*(ask(client, live.url, secrets[key], i % 2 == 1, stream, count) for i in range(n))))

        produced = flowfuncs.TICKER["produced"]
        everything: list[Answer] = []
        for name, key, stream, count, expected, status, kind in (
                ("rate limit", "burst", False, 1, rpm, 429, "rate_limit"),
                ("stream cap", "two", True, DEFAULT_COUNT, streams, 429, "streams"),
                ("global cap", "wide", True, DEFAULT_COUNT, active, 503, "overloaded")):
            answers = asyncio.run(burst(key, stream, count))
            # a run's slot is released just after its last byte: let the next burst find every slot free
            wait_for(lambda: flowfuncs.TICKER["running"] == 0 and not live.rill.gate.shedder.active, 10)
            _check_burst(name, answers, expected, status, kind, failures)
            everything += answers
        made = flowfuncs.TICKER["produced"] - produced
    ran = sum(a.count for a in everything if a.status == 200)
    if made != ran:
        failures.append(f"the model made {made} tokens, the admitted runs {ran}: rejected requests ran")
    rejected = [a for a in everything if a.status != 200]
    without = [a for a in rejected if not re.fullmatch(r"[1-9][0-9]*", a.retry_after or "")]
    failures += [f"a {a.status} {a.kind} without an integer Retry-After: {a.retry_after!r}" for a in without][:5]
    admitted = [a for a in everything if a.status == 200]
    counts = {code: sum(a.status == code for a in rejected) for code in (429, 503)}
    what = (f"rejections carried an integer Retry-After (429: {counts[429]}, 503: {counts[503]}) in 3 bursts of {n} over a key's "
            f"rate limit, a key's stream cap and the global cap; {sum(a.complete for a in admitted)}/{len(admitted)} admitted runs "
            f"completed, {made - ran} tokens made for rejected requests")
    return ratio(GROUP, "rejections", len(rejected) - len(without), len(rejected), what, failures)


# -- LD-13 ---------------------------------------------------------------------------------------------
def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Theil-Sen slope (median of pairwise slopes) of (seconds, MB) samples, in MB per minute: robust to a GC spike."""
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(samples) for b in samples[i + 1:] if b[0] > a[0]]
    return statistics.median(slopes) * 60 if slopes else float("nan")


@dataclass
class Soak:
    chats: int = 0
    left: int = 0
    errors: list[str] | None = None
    samples: list[tuple[float, int, int, float]] | None = None  # seconds, tasks, fds, RSS MB


async def _soak(server: ServerProcess, sizes: Sizes, seed: int = 5) -> Soak:
    rng = random.Random(seed)
    result = Soak(errors=[], samples=[])
    assert result.errors is not None and result.samples is not None
    errors, samples = result.errors, result.samples
    t0 = time.monotonic()
    stop = t0 + sizes.soak_s

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            try:
                if rng.random() < 0.1:
                    seen, _ = await leave(client, f"{server.url}/api/flows/tick/runs")
                    result.left += 1
                    if seen != LEAVE_AFTER:
                        errors.append(f"a leaving client read {seen} chunks")
                else:
                    c = await chat(client, server.url + server.chat_path)
                    result.chats += 1
                    if not c.ok:
                        errors.append(_chat_problem(c))
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    async def sampler() -> None:
        while time.monotonic() < stop:
            state = await asyncio.to_thread(server.state)
            samples.append((time.monotonic() - t0, state["tasks"], fds(server.pid), server.rss_mb()))
            await asyncio.sleep(sizes.sample_s)

    limits = httpx.Limits(max_connections=sizes.soak_clients + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(sampler(), *(client_loop(client) for _ in range(sizes.soak_clients)))
    return result


def soak(server: ServerProcess, sizes: Sizes) -> Figure:
    """A steady mix of chats for ``soak_s``: no error, task and fd counts back to baseline, RSS flat after warm-up."""
    asyncio.run(_chats(server.url + server.chat_path, max(sizes.chats)))  # a fresh server's heap still grows to its working size
    before = baseline(server)
    result = asyncio.run(_soak(server, sizes))
    after = idle(server, before["tasks"] + 2, before["fds"] + 2)
    assert result.errors is not None and result.samples is not None
    late = [(t, rss) for t, _, _, rss in result.samples if t >= sizes.soak_s / 2]
    slope = slope_mb_per_min(late)
    failures = result.errors[:5] + ([f"{len(result.errors)} errors in all"] if len(result.errors) > 5 else [])
    if after["tasks"] > before["tasks"] + 2 or after["fds"] > before["fds"] + 2:
        failures.append(f"not back to baseline: tasks {before['tasks']}->{after['tasks']}, fds {before['fds']}->{after['fds']}")
    if not slope < 1.0:
        failures.append(f"RSS grew {slope:.2f} MB/min over the second half: {[round(r, 1) for _, r in late]}")
    peak_tasks = max((s[1] for s in result.samples), default=0)
    value = (f"soak {sizes.soak_s:.0f} s, {sizes.soak_clients} clients: {result.chats} chats + {result.left} left early, "
             f"{len(result.errors)} errors, tasks {before['tasks']}->{after['tasks']} (peak {peak_tasks}), fds "
             f"{before['fds']}->{after['fds']}, RSS {result.samples[0][3] if result.samples else float('nan'):.0f}->"
             f"{late[-1][1] if late else float('nan'):.0f} MB, slope {slope:.2f} MB/min over the second half")
    return Figure(GROUP, "soak", value, not failures, failures)
