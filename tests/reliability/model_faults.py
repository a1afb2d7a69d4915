"""Group 1 of the reliability suite: faults at every model call (reliability notes section 2 (d),
FT-01 to FT-10 and FT-20).

A real OpenAI-compatible server on loopback (tests/fault_server.py) fails on request. Every fault
kind is injected at every position of a real flow, run with a real SQLite trace store and a real SQLite
cache store:

    primary   the llm node that has a fallback (FT-01..FT-10)
    fallback  the stand-in itself, after the primary failed with a 400 (FT-20: both fail)
    map       the calls of a `map` llm node (two items, one at a time, on_item_fail: skip)
    repair    the re-ask of a structured-output node whose first answer was not JSON

For every cell (fault x position) it checks: the outcome the documented policy gives (EXPECTED, one
row per cell, derived from docs/runtime.md and docs/nodes/llm.md); exactly one terminal event; that
the model calls the trace recorded equal the requests the server counted, for every model; that only
whole successes reached the cache; that no asyncio task outlived the run; that the text a client
assembles from chunk and retract events is the final answer; and that the fallback started within
the node's deadline plus 250 ms of the failing attempt's start.

Where the catalogue and the documented design differ, the table follows the docs and says so: a 401
falls back like any other failure (docs/runtime.md `fallback`; FT-04 asks for no fallback), and the
node deadline covers one attempt (docs/runtime.md `timeout`; FT-05 asks for all attempts together).
"""

from __future__ import annotations

import asyncio
import gc
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rillflow.nodes.llm_remote import close_clients
from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.events import TERMINAL, Event
from rillflow.runtime.sync import RunResult, collect
from rillflow.runtime.trace_store import TraceStore
from tests.fault_server import FaultServer
from tests.reliability.figures import Figure, ratio

GROUP = "1 model faults"
DEADLINE_S = 1.0  # each node attempt's deadline (timeout: 1s); a hang costs one per attempt
MARGIN_S = 0.25  # time to fallback may exceed the deadline by at most this
ATTEMPTS = 3
REPAIRS = 1  # repair_attempts of the structured node
ITEMS = ["capital of France?", "capital of Spain?"]  # the map node's items, run one at a time
APOLOGY = "Sorry, no model can answer right now."

#: fault kind -> the FaultServer behaviour that injects it (a model name; see tests/fault_server.py)
FAULTS: dict[str, str] = {
    "500": "500",
    "500 twice, then ok": "fail2:500",
    "429 Retry-After 1 s": "fail1:429:1",
    "429 Retry-After 600 s": "429:600",
    "400": "400",
    "401": "401",
    "hang": "hang",
    "malformed chunk": "malformed:3",
    "stream dies after 3 tokens": "die:3",
    "no finish reason": "nofinish:3",
    "finish_reason length": "length",
}


@dataclass(frozen=True)
class Expect:
    """What the documented policy gives for one cell."""

    outcome: str  # the policy outcome in words
    status: str  # how the run ends: ok | responded | failed
    by: str | None  # the node whose answer the run ended with (None: the on_fail answer, or map items all null)
    calls: int  # requests the server sees for the faulty node's model
    kind: str | None  # the error kind of every failure the faulty node reports (None: it never failed)
    stored: tuple[str, ...] = ()  # nodes whose whole success is cached (one entry each); nothing else is

    @property
    def falls_back(self) -> bool:
        return self.by == "spare" or self.status == "responded"


def _e(outcome: str, status: str, by: str | None, calls: int, kind: str | None, stored: tuple[str, ...] = ()) -> Expect:
    return Expect(outcome, status, by, calls, kind, stored)


PARTIAL = "streamed 3 chunks: no retry, retract"
#: position -> fault kind -> expected outcome. Retry 3 attempts on timeout, rate_limit, server,
#: connection, protocol (the default `on`); never after chunks were streamed; Retry-After <= 60 s waited.
EXPECTED: dict[str, dict[str, Expect]] = {
    "primary": {
        "500": _e("retried 3x, then fallback", "ok", "spare", 3, "server", ("spare",)),
        "500 twice, then ok": _e("retried, third attempt answers", "ok", "answer", 3, "server", ("answer",)),
        "429 Retry-After 1 s": _e("waited >= 1 s, second attempt answers", "ok", "answer", 2, "rate_limit", ("answer",)),
        "429 Retry-After 600 s": _e("no wait, no retry, fallback at once", "ok", "spare", 1, "rate_limit", ("spare",)),
        "400": _e("no retry, fallback", "ok", "spare", 1, "bad_request", ("spare",)),
        "401": _e("no retry, fallback (docs; FT-04 wants none)", "ok", "spare", 1, "auth", ("spare",)),
        "hang": _e("cut at the 1 s deadline, retried 3x, fallback", "ok", "spare", 3, "timeout", ("spare",)),
        "malformed chunk": _e(f"{PARTIAL}, fallback", "ok", "spare", 1, "protocol", ("spare",)),
        "stream dies after 3 tokens": _e(f"{PARTIAL}, fallback", "ok", "spare", 1, "protocol", ("spare",)),
        "no finish reason": _e(f"{PARTIAL}, fallback", "ok", "spare", 1, "protocol", ("spare",)),
        "finish_reason length": _e("answer kept, finish_reason length, not cached", "ok", "answer", 1, None),
    },
    "fallback": {  # the primary failed with a 400; the stand-in meets the fault; its on_fail responds
        "500": _e("stand-in retried 3x, then on_fail respond", "responded", None, 3, "server"),
        "500 twice, then ok": _e("stand-in retried, third attempt answers", "ok", "spare", 3, "server", ("spare",)),
        "429 Retry-After 1 s": _e("stand-in waited >= 1 s, then answers", "ok", "spare", 2, "rate_limit", ("spare",)),
        "429 Retry-After 600 s": _e("no wait, on_fail respond", "responded", None, 1, "rate_limit"),
        "400": _e("no retry, on_fail respond", "responded", None, 1, "bad_request"),
        "401": _e("no retry, on_fail respond", "responded", None, 1, "auth"),
        "hang": _e("cut at the deadline 3x, on_fail respond", "responded", None, 3, "timeout"),
        "malformed chunk": _e(f"{PARTIAL}, on_fail respond", "responded", None, 1, "protocol"),
        "stream dies after 3 tokens": _e(f"{PARTIAL}, on_fail respond", "responded", None, 1, "protocol"),
        "no finish reason": _e(f"{PARTIAL}, on_fail respond", "responded", None, 1, "protocol"),
        "finish_reason length": _e("stand-in's cut answer kept, not cached", "ok", "spare", 1, None),
    },
    "map": {  # per item: the same policy; a map item streams to nobody, so a broken stream is retried
        "500": _e("each item retried 3x, then null", "ok", None, 6, "server"),
        "500 twice, then ok": _e("first item retried, both answer", "ok", "answer", 4, "server"),
        "429 Retry-After 1 s": _e("first item waited >= 1 s, both answer", "ok", "answer", 3, "rate_limit"),
        "429 Retry-After 600 s": _e("no wait, no retry, items null", "ok", None, 2, "rate_limit"),
        "400": _e("no retry, items null", "ok", None, 2, "bad_request"),
        "401": _e("no retry, items null", "ok", None, 2, "auth"),
        "hang": _e("each attempt cut at the deadline, 3x per item, null", "ok", None, 6, "timeout"),
        "malformed chunk": _e("retried 3x per item, null", "ok", None, 6, "protocol"),
        "stream dies after 3 tokens": _e("retried 3x per item, null", "ok", None, 6, "protocol"),
        "no finish reason": _e("retried 3x per item, null", "ok", None, 6, "protocol"),
        "finish_reason length": _e("cut answers kept", "ok", "answer", 2, None),
    },
    "repair": {  # the first answer is not JSON; the re-ask meets the fault; a retry starts the node over
        "500": _e("re-ask fails, node retried 3x, fallback", "ok", "spare", 4, "server", ("spare",)),
        "500 twice, then ok": _e("re-ask fails, node retried, third attempt answers", "ok", "answer", 4, "server", ("answer",)),
        "429 Retry-After 1 s": _e("re-ask rate limited, waited >= 1 s, then answers", "ok", "answer", 3, "rate_limit", ("answer",)),
        "429 Retry-After 600 s": _e("re-ask rate limited, no wait, fallback", "ok", "spare", 2, "rate_limit", ("spare",)),
        "400": _e("no retry, fallback", "ok", "spare", 2, "bad_request", ("spare",)),
        "401": _e("no retry, fallback", "ok", "spare", 2, "auth", ("spare",)),
        "hang": _e("re-ask cut at the deadline, retried 3x, fallback", "ok", "spare", 4, "timeout", ("spare",)),
        "malformed chunk": _e("nothing streamed (json_schema): retried 3x, fallback", "ok", "spare", 4, "protocol", ("spare",)),
        "stream dies after 3 tokens": _e("nothing streamed (json_schema): retried 3x, fallback", "ok", "spare", 4, "protocol", ("spare",)),
        "no finish reason": _e("nothing streamed (json_schema): retried 3x, fallback", "ok", "spare", 4, "protocol", ("spare",)),
        "finish_reason length": _e("re-ask still not JSON: invalid_output, fallback", "ok", "spare", 2, "invalid_output", ("spare",)),
    },
}
POSITIONS = tuple(EXPECTED)


# -- the flows -----------------------------------------------------------------------------------
def _model(name: str, base_url: str, model: str) -> str:
    return f'  {name}: {{provider: openai, base_url: "{base_url}", model: "{model}", temperature: 0, request_timeout: 5s}}\n'


def _flow(position: str, name: str, base_url: str, models: dict[str, str]) -> str:
    """The flow of one cell; ``models`` maps node -> FaultServer model name."""
    policies = f"timeout: {DEADLINE_S:g}s, retry: {{attempts: {ATTEMPTS}, backoff: 10ms, max_backoff: 50ms}}"
    schema = "{type: object, properties: {city: {type: string}}, required: [city]}"
    structured = f", json_schema: {schema}, repair_attempts: {REPAIRS}" if position == "repair" else ""
    head = f"version: 1\nname: {name}\ninputs: {{q: {{type: string}}}}\nmodels:\n"
    head += "".join(_model(f"m_{node}", base_url, model) for node, model in models.items())
    if position == "map":
        return head + f"""outputs: {{answer: "${{answer.text}}", finish: "${{answer.finish_reason}}"}}
nodes:
  answer: {{type: llm, model: m_answer, prompt: "${{item}}", max_tokens: 16, {policies},
           map: {{over: {ITEMS}, concurrency: 1, on_item_fail: skip}}}}
"""
    return head + f"""outputs: {{answer: "${{answer.text}}", finish: "${{answer.finish_reason}}"}}
nodes:
  answer: {{type: llm, model: m_answer, prompt: "${{inputs.q}}", max_tokens: 16, {policies}, cache: 10m, fallback: spare{structured}}}
  spare: {{type: llm, model: m_spare, prompt: "${{inputs.q}}", max_tokens: 16, {policies}, cache: 10m{structured},
          on_fail: {{respond: "{APOLOGY}"}}}}
"""


def _models(position: str, fault: str, tag: str) -> dict[str, str]:
    """node -> FaultServer model: the fault at the position, well-behaved models elsewhere."""
    behaviour = FAULTS[fault]
    if position == "primary":
        return {"answer": f"{behaviour}#{tag}-answer", "spare": f"ok#{tag}-spare"}
    if position == "fallback":
        return {"answer": f"400#{tag}-answer", "spare": f"{behaviour}#{tag}-spare"}
    if position == "map":
        return {"answer": f"{behaviour}#{tag}-answer"}
    # repair: the first answer is prose (not JSON); the re-ask meets the fault; a recovery answers JSON
    script = {"fail2:500": "500>500>json", "fail1:429:1": "429:1>json"}.get(behaviour, behaviour)
    return {"answer": f"ok>{script}#{tag}-answer", "spare": f"json#{tag}-spare"}


def fault_node(position: str) -> str:
    return "spare" if position == "fallback" else "answer"


# -- one cell ------------------------------------------------------------------------------------
@dataclass
class Cell:
    position: str
    fault: str
    failures: dict[str, list[str]] = field(default_factory=dict)  # check -> what fell short
    calls: int = 0  # requests the server counted, all models of the cell
    stored: int = 0  # cache entries written
    leaked: int = 0  # asyncio tasks that outlived the run
    to_fallback_s: float | None = None  # failing attempt's start -> the stand-in's start

    def fail(self, check: str, message: str) -> None:
        self.failures.setdefault(check, []).append(f"{self.position}/{self.fault}: {message}")


@dataclass
class Stores:
    server: FaultServer
    cache: SqliteCache
    traces: TraceStore


async def run_cell(stores: Stores, position: str, fault: str, tag: str) -> Cell:
    """Run one cell's flow and check everything about it."""
    expect = EXPECTED[position][fault]
    models = _models(position, fault, tag)
    name = f"mf_{tag}".replace("-", "_")
    plan = load_flow_text(_flow(position, name, stores.server.base_url, models))
    cell = Cell(position, fault)
    before = asyncio.all_tasks()
    result = await collect(plan, {"q": "What is the capital of France?"}, cache=stores.cache, trace=stores.traces)
    await _check_tasks(cell, before)
    counts = {node: stores.server.counts[model] for node, model in models.items()}
    cell.calls = sum(counts.values())
    _check_terminal(cell, result)
    _check_outcome(cell, expect, result, counts[fault_node(position)])
    _check_visible_answer(cell, result, "answer" in plan.output_streams)
    _check_timing(cell, expect, result)
    await stores.cache.flush()
    _check_cache(cell, expect, stores.cache.stats(name))
    assert stores.traces.flush(), "the trace store did not write in time"
    _check_trace(cell, stores.traces.get_run(result.events[0].run_id), counts)
    return cell


async def _check_tasks(cell: Cell, before: set[asyncio.Task[Any]]) -> None:
    """No task of the run may outlive it. The one exception is Python's own clean-up of async generators
    left unclosed (the openai client leaves its SSE generators to the garbage collector): the loop closes
    them in short tasks, which must all have ended once a collection has run and the loop has turned."""
    new = asyncio.all_tasks() - before
    leaked = [t for t in new if type(t.get_coro()).__name__ != "async_generator_athrow"]
    gc.collect()
    for _ in range(100):  # at most ~1 s
        closing = [t for t in asyncio.all_tasks() - before if type(t.get_coro()).__name__ == "async_generator_athrow"]
        if not closing:
            break
        await asyncio.sleep(0.01)
    leaked += closing
    cell.leaked = len(leaked)
    if leaked:
        cell.fail("tasks", f"{len(leaked)} tasks outlived the run: {leaked}")


def _check_terminal(cell: Cell, result: RunResult) -> None:
    terminal = [e for e in result.events if e.type in TERMINAL]
    if len(terminal) != 1 or result.events[-1] is not terminal[0]:
        cell.fail("terminal", f"{len(terminal)} terminal events, last event {result.events[-1].type}")


def _fault_errors(result: RunResult, node: str) -> list[dict[str, Any]]:
    """Every error the node reported: retries, fallback, failure, skipped map items."""
    found = []
    for e in result.events:
        if (e.node == node and e.type in ("node_retry", "node_fallback", "node_failed")) or (e.type == "node_progress" and "error" in e.data):
            found.append(e.data["error"])
    return found


def _answered_by(result: RunResult, position: str) -> str | None:
    if result.status != "ok":
        return None
    if position == "map":
        answers = result.outputs["answer"]
        return "answer" if all(answers) else None if not any(answers) else "some items"
    fallback = next((e for e in result.events if e.type == "node_fallback" and e.node == "answer"), None)
    return "spare" if fallback is not None else "answer"


def _check_outcome(cell: Cell, expect: Expect, result: RunResult, calls: int) -> None:
    node = fault_node(cell.position)
    errors = _fault_errors(result, node)
    got = {"status": result.status, "by": _answered_by(result, cell.position), "calls": calls,
           "kinds": sorted({e["kind"] for e in errors})}
    want = {"status": expect.status, "by": expect.by, "calls": expect.calls, "kinds": [expect.kind] if expect.kind else []}
    for key, value in want.items():
        if got[key] != value:
            cell.fail("outcome", f"expected {expect.outcome!r}: {key} {got[key]!r}, want {value!r}")
    if result.status == "responded" and result.outputs["answer"] != APOLOGY:
        cell.fail("outcome", f"responded with {result.outputs['answer']!r}, not the on_fail answer")
    for error in errors + ([result.error] if result.error else []):
        if "injected" in error["message"] or "Traceback" in error["message"]:  # the provider's own text, a stack
            cell.fail("outcome", f"error message not user-safe: {error['message']!r}")


def _check_visible_answer(cell: Cell, result: RunResult, streams: bool) -> None:
    """What a client assembles by the documented rule (concatenate chunks, drop what a retract withdraws)
    must be the run's answer: no partial text glued to a stand-in's or to the on_fail answer. (A map's
    lists and a json_schema answer do not stream: clients read them from run_finished.)"""
    if not streams or not result.ok:
        return
    text = ""
    for e in result.events:
        if e.type == "chunk" and e.data["output"] == "answer":
            text += e.data["text"]
        elif e.type == "retract":
            text = text[: max(0, len(text) - int(e.data.get("chars") or 0))]
    if text != result.outputs["answer"]:
        cell.fail("visible", f"client text {text!r} != answer {result.outputs['answer']!r}")


def _starts(result: RunResult, node: str) -> list[Event]:
    return [e for e in result.events if e.type == "node_started" and e.node == node]


def _check_timing(cell: Cell, expect: Expect, result: RunResult) -> None:
    if cell.fault == "429 Retry-After 1 s":
        retry = next((e for e in result.events if e.type == "node_retry"), None)
        waited = retry is not None and retry.data["delay"] >= 1.0
        if cell.position != "map" and retry is not None:  # the next attempt's start is an event
            later = [e for e in _starts(result, retry.node or "") if e.seq > retry.seq]
            waited = waited and bool(later) and later[0].ts - retry.ts >= 1.0
        if not waited:
            cell.fail("outcome", "a Retry-After of 1 s was not waited for")
    if cell.fault == "429 Retry-After 600 s" and any(e.type == "node_retry" for e in result.events):
        cell.fail("outcome", "a Retry-After of 600 s was retried")
    if cell.position == "map":
        return
    to = next((e for e in result.events if e.type == "node_fallback"), None)
    if to is None:
        return
    failing = [e for e in _starts(result, to.node or "") if e.seq < to.seq]
    stand_in = [e for e in _starts(result, to.data["to"]) if e.seq > to.seq]
    if not failing or not stand_in:
        return cell.fail("timing", "no start events around the fallback")
    cell.to_fallback_s = stand_in[0].ts - failing[-1].ts
    if cell.to_fallback_s > DEADLINE_S + MARGIN_S:
        cell.fail("timing", f"fallback started {cell.to_fallback_s * 1000:.0f} ms after the failing attempt's start")
    if not expect.falls_back and cell.position != "fallback":
        cell.fail("outcome", "fell back although the policy recovers")


def _check_cache(cell: Cell, expect: Expect, stats: list[dict[str, Any]]) -> None:
    entries = {row["node"]: row["entries"] for row in stats if row["entries"]}
    cell.stored = sum(entries.values())
    want = dict.fromkeys(expect.stored, 1)
    if entries != want:
        cell.fail("cache", f"cache entries {entries}, want {want} (only whole successes are stored)")


def _trace_calls(spans: list[dict[str, Any]], position: str) -> int:
    """Model calls the trace records for one node: a span per attempt, plus the item attempts of a map
    node (marked as node_retry events in its one span) and the re-asks of a structured node."""
    calls = len(spans) + (len(ITEMS) - 1 if position == "map" and spans else 0)
    return calls + sum(1 for span in spans for event in span["events"] if _another_call(event["name"], event["data"]))


def _another_call(name: str, data: dict[str, Any]) -> bool:
    if name == "node_retry":
        return "index" in data  # a map item's next attempt (other nodes' retries open spans)
    return name == "guardrail_flagged" and data.get("action") == "repair" and data.get("count", 0) <= REPAIRS  # a re-ask


def _check_trace(cell: Cell, run: dict[str, Any] | None, counts: dict[str, int]) -> None:
    if run is None:
        return cell.fail("spans", "the run is not in the trace store")
    for node, server in counts.items():
        traced = _trace_calls([s for s in run["spans"] if s["node"] == node], cell.position if node == "answer" else "")
        if traced != server:
            cell.fail("spans", f"node {node}: the trace records {traced} model calls, the server counted {server}")


# -- the matrix ----------------------------------------------------------------------------------
async def run_cells(positions: tuple[str, ...] = POSITIONS, repeats: int = 1, workdir: Path | None = None) -> list[Cell]:
    """Every fault kind at each position, ``repeats`` times, on one server and one pair of stores."""
    with tempfile.TemporaryDirectory() as tmp, FaultServer() as server:
        folder = workdir or Path(tmp)
        stores = Stores(server, SqliteCache(folder / "cache.db"), TraceStore(folder / "traces.db"))
        try:
            cells = []
            for repeat in range(repeats):
                for position in positions:
                    for i, fault in enumerate(FAULTS):
                        cells.append(await run_cell(stores, position, fault, f"{position}-{i}-{repeat}"))
            return cells
        finally:
            await close_clients()
            await stores.cache.flush()
            stores.cache.close()
            stores.traces.close()


def _count(cells: list[Cell], check: str) -> tuple[int, list[str]]:
    failures = [f for c in cells for f in c.failures.get(check, [])]
    return sum(1 for c in cells if check not in c.failures), failures


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _fallback_figure(cells: list[Cell]) -> Figure:
    timed = [c.to_fallback_s for c in cells if c.to_fallback_s is not None]
    hangs = [c.to_fallback_s - DEADLINE_S for c in cells if c.to_fallback_s is not None and c.fault == "hang"]
    others = [c.to_fallback_s for c in cells if c.to_fallback_s is not None and c.fault != "hang"]
    _, failures = _count(cells, "timing")
    if not hangs or not others:  # every position but map falls back on hangs and on other faults
        falls_back = any(c.position != "map" for c in cells)
        return Figure(GROUP, "time to fallback", f"{len(timed)} fallbacks timed", not falls_back and not failures,
                      failures + (["no hang and no other fault was timed to its fallback"] if falls_back else []))
    value = (f"time to fallback p99 {_p99(hangs) * 1000:.0f} ms past the {DEADLINE_S * 1000:.0f} ms deadline for hangs "
             f"(target <= {MARGIN_S * 1000:.0f}); p99 {_p99(others) * 1000:.0f} ms for the other {len(others)} fallbacks")
    return Figure(GROUP, "time to fallback", value, not failures, failures)


def figures(cells: list[Cell]) -> list[Figure]:
    """The group's figures from a run of the matrix."""
    n = len(cells)
    kinds = len({c.fault for c in cells})
    where = len({c.position for c in cells})
    outcome_ok, outcome_failures = _count(cells, "outcome")
    terminal_ok, terminal_failures = _count(cells, "terminal")
    spans_ok, spans_failures = _count(cells, "spans")
    visible_ok, visible_failures = _count(cells, "visible")
    _, cache_failures = _count(cells, "cache")
    _, task_failures = _count(cells, "tasks")
    wrong = sum(1 for c in cells if "cache" in c.failures)
    stored = sum(c.stored for c in cells)
    calls = sum(c.calls for c in cells)
    leaked = sum(c.leaked for c in cells)
    return [
        ratio(GROUP, "expected outcome", outcome_ok, n, f"fault cells ({kinds} fault kinds x {where} positions) got the documented outcome",
              outcome_failures),
        ratio(GROUP, "terminal events", terminal_ok, n, "fault runs ended with exactly one terminal event", terminal_failures),
        ratio(GROUP, "attempt spans", spans_ok, n, f"fault runs: model calls in the trace = requests the server counted ({calls} calls)",
              spans_failures),
        Figure(GROUP, "cache", f"{wrong} runs cached a failed, partial or truncated result; {stored} whole successes stored as documented",
               not cache_failures, cache_failures),
        Figure(GROUP, "leaked tasks", f"{leaked} leaked tasks after {n} fault runs", leaked == 0 and not task_failures, task_failures),
        ratio(GROUP, "client text", visible_ok, n, "fault runs: the text a client assembles (chunks minus retracts) is the answer",
              visible_failures),
        _fallback_figure(cells),
    ]


def measure(bench: bool = False) -> list[Figure]:
    """CI: every cell once. Bench: every cell 5 times, for the time-to-fallback percentiles."""
    return figures(asyncio.run(run_cells(repeats=5 if bench else 1)))
