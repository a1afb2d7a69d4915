"""What tracing and caching add per node, through the whole runtime.

    python bench/observe.py            # prints a table
    python bench/observe.py --quick    # fewer repetitions

T1: a chain of 50 `static` nodes, with no trace, then traced into a real TraceStore (the recorder on the
    loop; redaction and SQLite writes happen on the store's thread and are not on the run's path):
    microseconds added per node. Target < 20 µs.
C1: a chain of 50 `python` nodes with `cache:`: the hit path (key, SQLite lookup, replay) against the
    same chain with no cache: microseconds per node. Target < 100 µs per node for SQLite.
C2: C1 with a Redis store on loopback, when `redis-server` is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ["RILL_PYTHON_ALLOW"] = "benchfuncs.*"

from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.plan import Plan
from rillflow.runtime.scheduler import run
from rillflow.runtime.trace_store import TraceStore

HEADER = "version: 1\nname: bench\n"
N = 50


def static_chain(n: int) -> Plan:
    lines = [f'outputs: {{last: "${{n{n - 1}.value}}"}}', "nodes:", "  n0: {type: static, value: 0}"]
    lines += [f'  n{i}: {{type: static, value: "${{n{i - 1}.value}}"}}' for i in range(1, n)]
    return load_flow_text(HEADER + "\n".join(lines) + "\n")


def python_chain(n: int, cache: str) -> Plan:
    lines = [f'outputs: {{last: "${{n{n - 1}.value}}"}}', "nodes:",
             f'  n0: {{type: python, function: "benchfuncs:label", args: {{text: a}}, thread: false{cache}}}']
    lines += [f'  n{i}: {{type: python, function: "benchfuncs:label", args: {{text: "${{n{i - 1}.value}}"}}, thread: false{cache}}}'
              for i in range(1, n)]
    return load_flow_text(HEADER + "\n".join(lines) + "\n")


async def timed(plan: Plan, reps: int, **options: Any) -> float:
    """Median seconds per run."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        async for event in run(plan, {}, **options):
            if event.terminal and event.type != "run_finished":
                raise SystemExit(f"run failed: {event.data}")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def bench_trace(reps: int, folder: Path) -> tuple[float, float]:
    plan = static_chain(N)
    store = TraceStore(folder / "traces.db")
    await timed(plan, 20)
    await timed(plan, 20, trace=store)
    bare = await timed(plan, reps)
    traced = await timed(plan, reps, trace=store)
    store.close()
    return bare / N * 1e6, traced / N * 1e6


async def bench_cache(reps: int, store: Any) -> tuple[float, float]:
    plain = python_chain(N, "")
    cached = python_chain(N, ", cache: 1h")
    await timed(plain, 10)
    await timed(cached, 2, cache=store)  # fill
    await store.flush()
    bare = await timed(plain, reps)
    hit = await timed(cached, reps, cache=store)
    return bare / N * 1e6, hit / N * 1e6


def start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


async def main(quick: bool) -> None:
    reps = 30 if quick else 150
    folder = Path(tempfile.mkdtemp(prefix="rill-bench-"))
    rows = []
    bare, traced = await bench_trace(reps, folder)
    rows.append(("T1 tracing, 50 static nodes", bare, traced, "< 20 µs added"))
    sqlite = SqliteCache(folder / "cache.db")
    bare, hit = await bench_cache(reps, sqlite)
    sqlite.close()
    rows.append(("C1 cache hit, SQLite, 50 python nodes", bare, hit, "< 100 µs per node"))
    redis = start_redis()
    if redis is not None:
        from rillflow.runtime.cache_redis import RedisCache

        proc, url = redis
        store = RedisCache(url)
        try:
            bare, hit = await bench_cache(max(10, reps // 3), store)
            rows.append(("C2 cache hit, Redis loopback, 50 python nodes", bare, hit, "(network round trip per node)"))
        finally:
            await store.aclose()
            proc.terminate()
    print(f"{'scenario':48} {'without':>12} {'with':>12} {'added':>10}  target")
    for name, without, with_, target in rows:
        print(f"{name:48} {without:9.1f} µs {with_:9.1f} µs {with_ - without:7.1f} µs  {target}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
