"""Serving under load: concurrent SSE chats against `rill serve` in its own process (reliability LD-01, LD-02).

    python bench/serve.py                    # N = 10, 50, 200 streams, then 200 disconnects; ~1 min
    python bench/serve.py --quick            # N = 10, 50, then 50 disconnects; ~25 s
    python bench/serve.py --sizes 10,50,200

Two servers, each a real process on loopback, so that no client shares a GIL with them: `python -m
rillflow.runtime.cli serve` (no cache, no traces, limits out of the way) and, as the baseline, a bare
uvicorn + sse-starlette app streaming the same events from an inline generator (``bare_app`` below).
The clients are httpx in this process; rounds alternate between the two servers, so machine noise hits
both alike.

LD-01: N concurrent streaming chats to completion against a `scripted` model at a fixed rate (60 tokens,
20 ms apart = 50 tokens/s, the first at once). Per N: errors, TTFT (client side, request sent -> first
`chunk` event), inter-token gap p99, wall time, serving overhead against the model's own timing (first
token at 0 s, stream (60 - 1) x 20 ms = 1.18 s long), server RSS and CPU.
LD-02: K clients leave after 10 chunks of a counting `python` model (``ticker`` below) -> runs cancelled,
tokens generated after the clients left, time until no generator runs, server asyncio tasks.

The servers import this file as the module ``serve`` (its folder on PYTHONPATH,
RILL_PYTHON_ALLOW=serve:ticker,serve:probe): ``ticker`` and ``probe`` run inside `rill serve`, and
``probe``, a flow of its own, reads the ticker's counters and the server loop's task count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import httpx

TOKENS = 60
DELAY = 0.020  # seconds between the scripted model's tokens
MODEL_TTFT = 0.0  # the scripted model's own time to first token (first_delay: 0)
MODEL_STREAM = (TOKENS - 1) * DELAY  # and how long its stream lasts, first token to last
LEAVE_AFTER = 10  # LD-02: chunks a client reads before it disconnects
TERMINAL = ("run_finished", "run_failed")
HERE = Path(__file__).resolve().parent

CHAT = f"""version: 1
name: chat
inputs:
  question: {{type: string}}
outputs:
  answer: ${{model.text}}
nodes:
  model: {{type: scripted, tokens: [{", ".join(f'"t{i} "' for i in range(TOKENS))}], delay: {int(DELAY * 1000)}ms, first_delay: 0ms}}
"""
TICK = f"""version: 1
name: tick
inputs:
  question: {{type: string}}
outputs:
  answer: ${{model.text}}
nodes:
  model: {{type: python, function: "serve:ticker", stream: true, args: {{question: "${{inputs.question}}", count: 300, delay: {DELAY}}}}}
"""
PROBE = """version: 1
name: probe
outputs:
  state: ${probe.value}
nodes:
  probe: {type: python, function: "serve:probe"}
"""

# -- what runs inside the servers (imported there as `serve`) --------------------------------------
TICKER = {"produced": 0, "running": 0, "cancelled": 0}


async def ticker(question: str, count: int = 300, delay: float = DELAY) -> AsyncIterator[str]:
    """A model stand-in that counts the tokens it makes and the streams closed before their end."""
    TICKER["running"] += 1
    made = 0
    try:
        for i in range(count):
            await asyncio.sleep(delay)
            TICKER["produced"] += 1
            made += 1
            yield f"t{i} "
    finally:
        TICKER["running"] -= 1
        TICKER["cancelled"] += made < count


async def probe() -> dict[str, int]:
    """The ticker's counters and the server loop's asyncio task count (this probe's own run included)."""
    return {"tasks": len(asyncio.all_tasks()), **TICKER}


def bare_app() -> Any:
    """The baseline: uvicorn + sse-starlette with the model inline in the response's generator, sending
    the same events (run_started, 60 chunks, run_finished, same JSON shape) and nothing else."""
    import uuid

    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def event(kind: str, run_id: str, seq: int, ts: float, node: str | None, data: dict[str, Any]) -> ServerSentEvent:
        body = {"type": kind, "run_id": run_id, "seq": seq, "ts": round(ts, 6), "node": node, "data": data}
        return ServerSentEvent(data=json.dumps(body), event=kind, id=str(seq))

    async def events() -> AsyncIterator[ServerSentEvent]:
        run_id, t0 = uuid.uuid4().hex, time.monotonic()
        yield event("run_started", run_id, 0, 0.0, None, {"flow": "chat", "started_at": datetime.now(timezone.utc).isoformat()})
        for i in range(TOKENS):
            if i:
                await asyncio.sleep(DELAY)
            yield event("chunk", run_id, i + 1, time.monotonic() - t0, "model", {"output": "answer", "text": f"t{i} "})
        yield event("run_finished", run_id, TOKENS + 1, time.monotonic() - t0, None, {"status": "ok", "outputs": {}})

    async def chat(request: Request) -> Response:
        await request.body()
        return EventSourceResponse(events())

    async def ready(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/chat", chat, methods=["POST"]), Route("/readyz", ready)])


# -- the server processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    pid: int
    url: str
    chat_path: str

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads

    def waited_s(self) -> float:
        """Seconds the main thread (the event loop) sat runnable but got no CPU (the scheduler's own count)."""
        return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9

    def state(self) -> dict[str, int]:
        answer = httpx.post(f"{self.url}/api/flows/probe/runs", json={"inputs": {}}, timeout=30)
        answer.raise_for_status()
        return answer.json()["outputs"]["state"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def spawned(name: str, args: list[str], chat_path: str, log_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = {**os.environ, "RILL_PYTHON_ALLOW": "serve:ticker,serve:probe",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", *args, "--port", str(port), "--log-level", "warning"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        server = ServerProcess(name, process.pid, f"http://127.0.0.1:{port}", chat_path)
        try:
            wait_ready(server, process, log_path)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(server: ServerProcess, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{server.name} exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{server.name} was not ready within 60 s:\n{log.read_text()}")


@contextlib.contextmanager
def servers(folder: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    for name, text in (("chat.yaml", CHAT), ("tick.yaml", TICK), ("probe.yaml", PROBE)):
        (folder / name).write_text(text, encoding="utf-8")
    rill = ["rillflow.runtime.cli", "serve", str(folder), "--no-cache", "--no-trace", "--rpm", "1000000", "--max-streams", "100000",
            "--max-active", "1000", "--max-queued", "1000"]
    # rill serve runs uvicorn.Server inside its own asyncio.run: the plain asyncio loop, so the baseline gets it too.
    bare = ["uvicorn", "serve:bare_app", "--factory", "--loop", "asyncio"]
    with spawned("rill serve", rill, "/api/flows/chat/runs", folder / "rill.log") as ours, \
            spawned("bare", bare, "/chat", folder / "bare.log") as baseline:
        yield ours, baseline


# -- LD-01: chats to completion ----------------------------------------------------------------------
@dataclass
class Chat:
    """One client's view of one stream; times are time.time(), the wall clock the server's events use too."""

    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)
    terminals: int = 0
    error: str | None = None
    started_at: float = 0.0  # server wall time of run_started
    started_ts: float = 0.0  # and its event ts (seconds since the run started)
    first_ts: float = 0.0  # event ts of the first chunk
    last_data: str = ""  # the last chunk's JSON, parsed once at the end

    @property
    def ok(self) -> bool:
        return self.error is None and self.terminals == 1 and len(self.chunks) == TOKENS

    def server_wall(self, ts: float) -> float:
        return self.started_at + ts - self.started_ts


async def chat(client: httpx.AsyncClient, url: str) -> Chat:
    seen = Chat(sent=time.time())
    kind = ""
    try:
        async with client.stream("POST", url, json={"inputs": {"question": "hi"}, "stream": True}) as response:
            if response.status_code != 200:
                seen.error = f"HTTP {response.status_code}"
                return seen
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    if kind == "chunk":
                        seen.chunks.append(time.time())
                    elif kind in TERMINAL:
                        seen.terminals += 1
                        seen.error = seen.error or ("run_failed" if kind == "run_failed" else None)
                elif line.startswith("data: "):
                    note(seen, kind, line[6:])
    except httpx.HTTPError as exc:
        seen.error = type(exc).__name__
    return seen


def note(seen: Chat, kind: str, data: str) -> None:
    """Keep the few server timestamps the breakdown needs; parse only those events' JSON."""
    if kind == "run_started":
        event = json.loads(data)
        seen.started_at = datetime.fromisoformat(event["data"]["started_at"]).timestamp()
        seen.started_ts = event["ts"]
    elif kind == "chunk":
        if len(seen.chunks) == 1:
            seen.first_ts = json.loads(data)["ts"]
        seen.last_data = data


@dataclass
class Load:
    """Every round of N streams against one server."""

    server: ServerProcess
    n: int
    chats: list[Chat] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # before the first round, after the last
    server_cpu: float = 0.0
    server_wait: float = 0.0
    client_cpu: float = 0.0

    async def round(self) -> None:
        server = self.server
        if not self.rss:
            self.rss.append(server.rss_mb())
        s0, w0, c0 = server.cpu_s(), server.waited_s(), time.process_time()
        limits = httpx.Limits(max_connections=self.n + 10, max_keepalive_connections=self.n + 10)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            t0 = time.perf_counter()
            self.chats += await asyncio.gather(*(chat(client, server.url + server.chat_path) for _ in range(self.n)))
            self.walls.append(time.perf_counter() - t0)
        self.server_cpu += server.cpu_s() - s0
        self.server_wait += server.waited_s() - w0
        self.client_cpu += time.process_time() - c0
        self.rss[1:] = [server.rss_mb()]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def figures(load: Load) -> dict[str, Any]:
    good = [c for c in load.chats if c.ok]
    ttft = [c.chunks[0] - c.sent for c in good]
    gaps = [b - a for c in good for a, b in zip(c.chunks, c.chunks[1:], strict=False)]
    busy = sum(load.walls)
    last_ts = {id(c): json.loads(c.last_data)["ts"] for c in good}
    return {
        "errors": len(load.chats) - len(good), "total": len(load.chats),
        "ttft": [pct(ttft, p) for p in (50, 95, 99)], "gap99": pct(gaps, 99), "wall": statistics.median(load.walls),
        "extra_ttft": [pct([t - MODEL_TTFT for t in ttft], p) for p in (50, 95)],
        "extra_stream": [pct([c.chunks[-1] - c.chunks[0] - MODEL_STREAM for c in good], p) for p in (50, 95)],
        "cpu": load.server_cpu / busy, "wait": load.server_wait / busy, "client": load.client_cpu / busy,
        "cpu_per_chunk": load.server_cpu / max(1, sum(len(c.chunks) for c in load.chats)),
        # where the time goes, on the shared wall clock
        "admit": [c.started_at - c.sent for c in good],
        "runtime": [c.first_ts - c.started_ts for c in good],
        "deliver": [c.chunks[0] - c.server_wall(c.first_ts) for c in good],
        "stretch": [last_ts[id(c)] - c.first_ts - MODEL_STREAM for c in good],
        "deliver_last": [c.chunks[-1] - c.server_wall(last_ts[id(c)]) for c in good],
    }


async def alone(runs: int = 3) -> tuple[float, float]:
    """The scripted model through the runtime in this process, one run at a time, no HTTP: median seconds to the
    first chunk, and median excess of its stream over (tokens - 1) x delay (asyncio.sleep's own overshoot)."""
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.scheduler import run

    plan = load_flow_text(CHAT)
    firsts, stretches = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        chunks = [time.perf_counter() async for event in run(plan, {"question": "hi"}) if event.type == "chunk"]
        firsts.append(chunks[0] - t0)
        stretches.append(chunks[-1] - chunks[0] - MODEL_STREAM)
    return statistics.median(firsts), statistics.median(stretches)


# -- LD-02: clients leaving mid-stream -----------------------------------------------------------------
async def leave(client: httpx.AsyncClient, url: str) -> tuple[int, float]:
    seen = 0
    async with client.stream("POST", url, json={"inputs": {"question": "go"}, "stream": True}) as response:
        async for line in response.aiter_lines():
            seen += line == "event: chunk"
            if seen == LEAVE_AFTER:
                break  # leaving the block closes the connection mid-stream
    return seen, time.monotonic()


@dataclass
class Leave:
    k: int
    read: int
    before: dict[str, int]
    after: dict[str, int]
    fresh_tasks: int
    settled_s: float
    stopped: bool


async def disconnects(server: ServerProcess, k: int, fresh_tasks: int) -> Leave:
    before = await asyncio.to_thread(server.state)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=k + 10)) as client:
        results = await asyncio.gather(*(leave(client, f"{server.url}/api/flows/tick/runs") for _ in range(k)))
    last_left = max(t for _, t in results)
    deadline = last_left + 10
    after = await asyncio.to_thread(server.state)
    while after["running"] and time.monotonic() < deadline:
        after = await asyncio.to_thread(server.state)
    settled = time.monotonic() - last_left  # an upper bound: one probe round trip late at most
    stopped = after["running"] == 0
    while after["tasks"] > fresh_tasks + 1 and time.monotonic() < deadline:  # connections may still be closing
        await asyncio.sleep(0.05)
        after = await asyncio.to_thread(server.state)
    return Leave(k, sum(s for s, _ in results), before, after, fresh_tasks, settled, stopped)


# -- the table -------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


def load_row(load: Load, f: dict[str, Any]) -> str:
    label = f"{'rillflow' if load.server.name == 'rill serve' else 'bare'} {load.n} x{len(load.walls)}"
    errors, rss = f"{f['errors']}/{f['total']}", f"{load.rss[0]:.0f} > {load.rss[-1]:.0f}"
    gap, per_chunk = ms(f["gap99"]) + " ms", f"{f['cpu_per_chunk'] * 1e6:.0f} us"
    return (f"{label:<17}{errors:>8}{f['ttft'][0]:>9.3f}{f['ttft'][1]:>7.3f}{f['ttft'][2]:>7.3f}{gap:>9}{f['wall']:>7.2f}"
            f"{f['extra_ttft'][0]:>10.3f}{f['extra_ttft'][1]:>7.3f}{f['extra_stream'][0]:>12.3f}{f['extra_stream'][1]:>7.3f}"
            f"{rss:>14}{f['cpu']:>8.0%}{f['wait']:>6.0%}{f['client']:>8.0%}{per_chunk:>10}")


def leave_line(left: Leave) -> str:
    extra = left.after["produced"] - left.before["produced"] - left.read
    cancelled = left.after["cancelled"] - left.before["cancelled"]
    stopped = "no generator running" if left.stopped else f"{left.after['running']} generators STILL RUNNING"
    return (f"LD-02 rillflow, {left.k} clients leave after {LEAVE_AFTER} chunks: runs cancelled {cancelled}/{left.k}, "
            f"{extra / left.k:.1f} tokens per stream after leaving ({extra} in all); {stopped} {left.settled_s:.2f} s after the "
            f"last client left; server asyncio tasks {left.fresh_tasks} fresh, {left.before['tasks']} before, {left.after['tasks']} after")


def print_report(loads: list[Load], left: Leave, solo: tuple[float, float]) -> None:
    print(f"{'LD-01 streams':<17}{'errors':>8}{'TTFT p50':>9}{'p95':>7}{'p99 s':>7}{'gap p99':>9}{'wall s':>7}"
          f"{'+TTFT p50':>10}{'p95 s':>7}{'+stream p50':>12}{'p95 s':>7}{'RSS MB':>14}{'srv CPU':>8}{'wait':>6}{'cli CPU':>8}{'CPU/chunk':>10}")
    rows = [(load, figures(load)) for load in loads]
    for load, f in rows:
        print(load_row(load, f))
    print(leave_line(left))
    print("\nwhere the time goes, p50 / p95 ms (server event timestamps against the client's, one wall clock):")
    print(f"{'':<17}{'send>run start':>16}{'run>1st chunk':>15}{'chunk>client':>14}{'model stretch':>15}{'last chunk>client':>19}")
    for load, f in rows:
        label = f"{'rillflow' if load.server.name == 'rill serve' else 'bare'} {load.n}"
        cells = [f"{ms(pct(f[k], 50))} / {ms(pct(f[k], 95))}" for k in ("admit", "runtime", "deliver", "stretch", "deliver_last")]
        print(f"{label:<17}{cells[0]:>16}{cells[1]:>15}{cells[2]:>14}{cells[3]:>15}{cells[4]:>19}")
    print(f"{'model alone':<17}{'':>16}{ms(solo[0]):>15}{'':>14}{ms(solo[1]):>15}   (the runtime in this process, no HTTP)")
    print(f"\nservers in their own processes (uvicorn, 1 worker, asyncio loop); tasks probed over HTTP by a flow in rill serve; "
          f"model: {TOKENS} tokens, {DELAY * 1e3:.0f} ms apart\npython {sys.version.split()[0]}, {os.cpu_count()} cores, {date.today()}")


async def main(sizes: list[int], quick: bool) -> None:
    solo = await alone()
    with tempfile.TemporaryDirectory(prefix="rill-bench-serve-") as tmp, servers(Path(tmp)) as (rill, bare):
        fresh = await asyncio.to_thread(rill.state)  # before any stream: no sse-starlette shutdown watcher yet
        for server in (rill, bare):  # warm up: imports, first-use caches
            await Load(server, 5).round()
        loads: list[Load] = []
        for n in sizes:
            pair = [Load(rill, n), Load(bare, n)]
            for _ in range(max(1, 30 // n) if quick else max(2, 100 // n)):
                for load in pair:  # alternate, so the machine's noise falls on both alike
                    await load.round()
                    await asyncio.sleep(0.2)
            loads += pair
        left = await disconnects(rill, 50 if quick else 200, fresh["tasks"])
    print_report(loads, left, solo)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 10,50 and 50 disconnects (~25 s)")
    parser.add_argument("--sizes", help="comma-separated concurrent stream counts (default 10,50,200; 10,50 with --quick)")
    args = parser.parse_args()
    chosen = [int(s) for s in args.sizes.split(",")] if args.sizes else ([10, 50] if args.quick else [10, 50, 200])
    asyncio.run(main(chosen, args.quick))
