"""Runtime overhead: rillflow against a hand-written asyncio DAG doing the same work.

    python bench/runtime.py            # all scenarios, prints a table
    python bench/runtime.py --quick    # fewer repetitions

S1: a chain of N trivial nodes -> median microseconds per node per run (N = 10, 50, 200).
S2: eight 50 ms branches and a join -> wall milliseconds.
S3: 2,000 chunks through one downstream streaming node -> microseconds per chunk, time to first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["RILL_PYTHON_ALLOW"] = "benchfuncs.*"

from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.plan import Plan
from rillflow.runtime.scheduler import run

HEADER = "version: 1\nname: bench\n"


def chain_flow(n: int) -> Plan:
    lines = [f'outputs: {{last: "${{n{n - 1}.value}}"}}', "nodes:", "  n0: {type: static, value: 0}"]
    lines += [f'  n{i}: {{type: static, value: "${{n{i - 1}.value}}"}}' for i in range(1, n)]
    return load_flow_text(HEADER + "\n".join(lines) + "\n")


def branches_flow() -> Plan:
    lines = ['outputs: {all: "${join.value}"}', "nodes:"]
    lines += [f'  b{i}: {{type: python, function: "benchfuncs:nap", args: {{seconds: 0.05, label: b{i}}}}}' for i in range(8)]
    lines.append("  join: {type: static, value: [" + ", ".join(f'"${{b{i}.value}}"' for i in range(8)) + "]}")
    return load_flow_text(HEADER + "\n".join(lines) + "\n")


def stream_flow(chunks: int) -> Plan:
    tokens = ", ".join(f'"t{i} "' for i in range(chunks))
    return load_flow_text(HEADER + f"""outputs: {{answer: "${{relay.text}}"}}
nodes:
  model: {{type: scripted, tokens: [{tokens}]}}
  relay: {{type: python, function: "benchfuncs:passthrough", stream: true, stream_args: [text], args: {{text: "${{model.text}}"}}}}
""")


async def drain(plan: Plan) -> float | None:
    """Run to the end; return seconds to the first chunk event (None when nothing streamed)."""
    t0 = time.perf_counter()
    first = None
    async for event in run(plan, {}):
        if first is None and event.type == "chunk":
            first = time.perf_counter() - t0
    return first


# -- the hand-written baselines: the least code that does the same work ----------------------
async def hand_chain(n: int) -> object:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(n)]

    async def node(i: int) -> None:
        value = 0 if i == 0 else await futures[i - 1]
        futures[i].set_result(value)

    tasks = [loop.create_task(node(i)) for i in range(n)]
    await asyncio.gather(*tasks)
    return futures[-1].result()


async def hand_branches() -> list[str]:
    async def nap(label: str) -> str:
        await asyncio.sleep(0.05)
        return label

    return list(await asyncio.gather(*(nap(f"b{i}") for i in range(8))))


async def hand_stream(chunks: int) -> float:
    async def model() -> AsyncIterator[str]:
        for i in range(chunks):
            yield f"t{i} "

    async def relay(source: AsyncIterator[str]) -> AsyncIterator[str]:
        async for c in source:
            yield c

    t0 = time.perf_counter()
    first = None
    async for _ in relay(model()):
        if first is None:
            first = time.perf_counter() - t0
    return first or 0.0


# -- measurement -----------------------------------------------------------------------------
async def timed(coro_factory, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await coro_factory()
        samples.append(time.perf_counter() - t0)
    return samples


async def main(quick: bool) -> None:
    rep = 50 if quick else 300
    rows: list[tuple[str, str, str, str]] = []
    for n in (10, 50, 200):
        plan = chain_flow(n)
        await timed(lambda plan=plan: drain(plan), 20)  # warm up
        ours = statistics.median(await timed(lambda plan=plan: drain(plan), rep)) / n * 1e6
        hand = statistics.median(await timed(lambda n=n: hand_chain(n), rep)) / n * 1e6
        rows.append((f"S1 chain of {n} trivial nodes", f"{ours:.1f} us/node", f"{hand:.1f} us/node", f"{ours / hand:.1f}x"))

    plan = branches_flow()
    await drain(plan)
    ours = statistics.median(await timed(lambda: drain(plan), 10 if quick else 30)) * 1e3
    hand = statistics.median(await timed(hand_branches, 10 if quick else 30)) * 1e3
    rows.append(("S2 eight 50 ms branches + join", f"{ours:.1f} ms", f"{hand:.1f} ms", f"+{ours - hand:.1f} ms"))

    chunks = 2000
    plan = stream_flow(chunks)
    await drain(plan)
    firsts: list[float] = []
    totals: list[float] = []
    for _ in range(10 if quick else 30):
        t0 = time.perf_counter()
        firsts.append(await drain(plan) or 0.0)
        totals.append(time.perf_counter() - t0)
    hand_totals: list[float] = []
    hand_firsts: list[float] = []
    for _ in range(10 if quick else 30):
        t0 = time.perf_counter()
        hand_firsts.append(await hand_stream(chunks))
        hand_totals.append(time.perf_counter() - t0)
    ours_chunk = statistics.median(totals) / chunks * 1e6
    hand_chunk = statistics.median(hand_totals) / chunks * 1e6
    rows.append(("S3 2,000 chunks through 1 streaming node", f"{ours_chunk:.2f} us/chunk", f"{hand_chunk:.2f} us/chunk", f"{ours_chunk / hand_chunk:.1f}x"))
    # the best run is the cost with the least interference from the rest of the machine (timeit's advice)
    rows.append(("S3 same, best of the runs", f"{min(totals) / chunks * 1e6:.2f} us/chunk", f"{min(hand_totals) / chunks * 1e6:.2f} us/chunk", ""))
    rows.append(("S3 time to first chunk", f"{statistics.median(firsts) * 1e3:.3f} ms", f"{statistics.median(hand_firsts) * 1e3:.3f} ms", ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{width}}  {'rillflow':>16}  {'hand-written':>16}  ratio")
    for name, ours_s, hand_s, ratio in rows:
        print(f"{name:<{width}}  {ours_s:>16}  {hand_s:>16}  {ratio}")
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    asyncio.run(main(parser.parse_args().quick))
