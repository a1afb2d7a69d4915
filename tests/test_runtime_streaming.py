"""Streaming through the graph, concurrency, cancellation and the event contract."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from rillflow.runtime.errors import NodeError
from rillflow.runtime.inputs import InputError
from rillflow.runtime.scheduler import run
from tests.helpers import flow, run_flow, types

pytestmark = pytest.mark.usefixtures("allow_test_functions")

TWO_STAGE = """
outputs: {answer: "${bracketed.text}"}
nodes:
  model: {type: scripted, text: "alpha beta gamma delta", delay: 50ms}
  shouted: {type: python, function: "tests.runtime_funcs:shout", stream: true, stream_args: [text], args: {text: "${model.text}"}}
  bracketed: {type: python, function: "tests.runtime_funcs:bracket", stream: true, stream_args: [text], args: {text: "${shouted.text}"}}
"""


async def test_chunks_stream_through_two_downstream_nodes_before_the_producer_finishes():
    plan = flow(TWO_STAGE)
    assert {(e.source, e.target) for e in plan.stream_edges} == {("model", "shouted"), ("shouted", "bracketed"), ("bracketed", "outputs")}
    arrivals: list[tuple[float, str]] = []
    finished_at: dict[str, float] = {}
    t0 = time.perf_counter()
    async for event in run(plan, {}):
        now = time.perf_counter() - t0
        if event.type == "chunk":
            arrivals.append((now, event.data["text"]))
        elif event.type == "node_finished":
            finished_at[event.node] = now
    assert [text for _, text in arrivals] == ["[ALPHA ]", "[BETA ]", "[GAMMA ]", "[DELTA]"]
    # the first chunk went through both consumers while the producer still had ~150 ms to go
    assert arrivals[0][0] < finished_at["model"] - 0.1
    assert arrivals[0][0] < 0.04


async def test_one_stream_feeds_several_consumers_and_the_caller():
    plan = flow("""
outputs: {raw: "${model.text}", loud: "${loud.text}", marked: "${marked.text}"}
nodes:
  model: {type: scripted, text: "a b c", delay: 20ms}
  loud: {type: python, function: "tests.runtime_funcs:shout", stream: true, stream_args: [text], args: {text: "${model.text}"}}
  marked: {type: python, function: "tests.runtime_funcs:bracket", stream: true, stream_args: [text], args: {text: "${model.text}"}}
""")
    result = await run_flow(plan)
    by_output: dict[str, list[str]] = {}
    for e in result.events:
        if e.type == "chunk":
            by_output.setdefault(e.data["output"], []).append(e.data["text"])
    assert by_output == {"raw": ["a ", "b ", "c"], "loud": ["A ", "B ", "C"], "marked": ["[a ]", "[b ]", "[c]"]}
    assert result.outputs == {"raw": "a b c", "loud": "A B C", "marked": "[a ][b ][c]"}


async def test_a_whole_value_consumer_waits_for_the_full_text():
    plan = flow("""
outputs: {v: "${up.value}"}
nodes:
  model: {type: scripted, text: "one two", delay: 10ms}
  up: {type: python, function: "tests.runtime_funcs:upper", thread: false, args: {text: "${model.text}"}}
""")
    assert not plan.nodes["up"].stream_deps
    result = await run_flow(plan)
    assert result.outputs == {"v": "ONE TWO"}


async def test_independent_branches_run_concurrently():
    branches = "\n".join(
        f'  b{i}: {{type: python, function: "tests.runtime_funcs:nap", args: {{seconds: 0.1, label: "b{i}"}}}}' for i in range(8)
    )
    joined = ", ".join(f'"${{b{i}.value}}"' for i in range(8))
    plan = flow(f"outputs: {{all: \"${{join.value}}\"}}\nnodes:\n{branches}\n  join: {{type: static, value: [{joined}]}}\n")
    t0 = time.perf_counter()
    result = await run_flow(plan)
    assert result.outputs == {"all": [f"b{i}" for i in range(8)]}
    assert time.perf_counter() - t0 < 0.3  # eight 100 ms branches, not 800 ms


async def test_flow_concurrency_limit_bounds_running_nodes():
    branches = "\n".join(f'  b{i}: {{type: python, function: "tests.runtime_funcs:nap", args: {{seconds: 0.1, label: x}}}}' for i in range(4))
    joined = ", ".join(f'"${{b{i}.value}}"' for i in range(4))
    plan = flow(f"concurrency: 2\noutputs: {{all: \"${{join.value}}\"}}\nnodes:\n{branches}\n  join: {{type: static, value: [{joined}]}}\n")
    t0 = time.perf_counter()
    await run_flow(plan)
    assert time.perf_counter() - t0 >= 0.2  # two waves of two


async def test_blocking_function_runs_in_a_thread_and_never_stalls_the_loop():
    plan = flow("""
outputs: {slept: "${blocker.value}", stream: "${model.text}"}
nodes:
  blocker: {type: python, function: "tests.runtime_funcs:block", args: {seconds: 0.3}}
  model: {type: scripted, text: "t1 t2 t3 t4 t5", delay: 20ms}
""")
    result = await run_flow(plan)
    chunk_ts = [e.ts for e in result.events if e.type == "chunk"]
    assert result.outputs["slept"] == "slept"
    assert chunk_ts[-1] < 0.25  # the stream finished while the blocking call was still sleeping


async def test_template_input_is_rendered_literally_never_evaluated():
    plan = flow("""
inputs: {question: {type: string}}
outputs: {text: "${p.text}"}
nodes:
  p: {type: prompt, template: "Q: {{ q }}", vars: {q: "${inputs.question}"}}
""")
    payload = "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__.__mro__ }}"
    result = await run_flow(plan, {"question": payload})
    assert result.outputs == {"text": f"Q: {payload}"}
    assert "49" not in result.outputs["text"]


async def test_events_are_ordered_with_exactly_one_terminal_event():
    for body in (TWO_STAGE, "outputs: {a: \"${x.text}\"}\nnodes:\n  x: {type: scripted, text: boom, fail_attempts: [1]}\n"):
        result = await run_flow(flow(body))
        assert [e.seq for e in result.events] == list(range(len(result.events)))
        assert [e.ts for e in result.events] == sorted(e.ts for e in result.events)
        terminal = [e for e in result.events if e.terminal]
        assert len(terminal) == 1 and terminal[0] is result.events[-1]
        assert result.events[0].type == "run_started"
        assert len({e.run_id for e in result.events}) == 1
        for event in result.events:
            json.loads(event.to_json())


async def test_node_chunks_come_before_its_node_finished_event():
    result = await run_flow(flow(TWO_STAGE))
    kinds = [(e.type, e.node) for e in result.events]
    last_chunk = max(i for i, (t, _) in enumerate(kinds) if t == "chunk")
    assert last_chunk < kinds.index(("node_finished", "bracketed"))


async def test_errors_carry_kind_and_safe_message_with_secrets_redacted():
    plan = flow("""
outputs: {v: "${a.value}"}
nodes:
  a: {type: python, function: "tests.runtime_funcs:leak_secret", args: {secret: "${env.TEST_TOKEN}"}}
""", TEST_TOKEN="hunter2-canary-0042")
    result = await run_flow(plan)
    assert result.error["kind"] == "internal"
    assert "RuntimeError" in result.error["message"]
    dumped = "\n".join(e.to_json() for e in result.events)
    assert "hunter2-canary-0042" not in dumped and "Traceback" not in dumped
    assert "https://user:[SECRET]@api.example" in dumped  # the env value, then the whole password-in-URL credential


async def test_cancelling_mid_stream_cancels_nodes_and_leaves_no_tasks():
    plan = flow("""
outputs: {answer: "${loud.text}"}
nodes:
  model: {type: scripted, text: "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", delay: 50ms}
  loud: {type: python, function: "tests.runtime_funcs:shout", stream: true, stream_args: [text], args: {text: "${model.text}"}}
""")
    baseline = len(asyncio.all_tasks())
    seen: list[str] = []
    events = run(plan, {})
    async for event in events:
        seen.append(event.type)
        if event.type == "chunk":
            break
    await events.aclose()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == baseline
    assert "run_finished" not in seen


async def test_cancelling_the_consuming_task_cancels_the_run():
    plan = flow("outputs: {a: \"${x.text}\"}\nnodes:\n  x: {type: scripted, text: never, hang: true}\n")
    baseline = len(asyncio.all_tasks())
    terminal: list[str] = []

    async def consume() -> None:
        async for _ in run(plan, {}, listeners=(lambda e: terminal.append(e.type) if e.terminal else None,)):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(asyncio.all_tasks()) == baseline
    assert terminal == ["run_failed"]  # listeners (the trace) still see exactly one terminal event


async def test_invalid_inputs_are_refused_before_anything_runs():
    plan = flow("inputs: {q: {type: string, max_length: 5}}\noutputs: {a: \"${x.value}\"}\nnodes:\n  x: {type: static, value: \"${inputs.q}\"}\n")
    with pytest.raises(InputError, match="input 'q' is 9 long; the limit is 5"):
        async for _ in run(plan, {"q": "too long!"}):
            pass
    with pytest.raises(InputError, match="unknown input 'qq'; did you mean 'q'"):
        async for _ in run(plan, {"q": "ok", "qq": 1}):
            pass


async def test_python_node_outside_the_allowlist_fails_at_run_too(monkeypatch):
    plan = flow("outputs: {a: \"${x.value}\"}\nnodes:\n  x: {type: python, function: \"tests.runtime_funcs:upper\", args: {text: a}}\n")
    monkeypatch.setenv("RILL_PYTHON_ALLOW", "")
    result = await run_flow(plan)
    assert result.error["kind"] == "config" and "not allowed" in result.error["message"]


def test_node_error_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="unknown error kind 'oops'"):
        NodeError("oops", "x")


async def test_run_failed_event_names_the_node_and_types_are_complete():
    result = await run_flow(flow("outputs: {a: \"${x.text}\"}\nnodes:\n  x: {type: scripted, text: boom, fail_attempts: [1], error: bad_request}\n"))
    assert types(result) == ["run_started", "node_started", "node_failed", "run_failed"]
    assert result.error == {"kind": "bad_request", "message": "scripted failure on attempt 1", "node": "x"}


async def test_process_wide_limit_bounds_nodes_across_runs(monkeypatch):
    from rillflow.runtime import context

    monkeypatch.setattr(context, "MAX_PROCESS_NODES", 2)
    monkeypatch.setattr(context, "_process_limits", context.weakref.WeakKeyDictionary())
    plan = flow('outputs: {a: "${x.value}"}\nnodes:\n  x: {type: python, function: "tests.runtime_funcs:nap", args: {seconds: 0.1, label: x}}\n')
    t0 = time.perf_counter()
    results = await asyncio.gather(*(run_flow(plan) for _ in range(4)))
    assert all(r.outputs == {"a": "x"} for r in results)
    assert time.perf_counter() - t0 >= 0.2  # four runs, two nodes at a time in this process


async def test_builder_template_cannot_allocate_without_bound():
    plan = flow("""
outputs: {text: "${p.text}"}
nodes:
  p: {type: prompt, template: "{{ 'a' * 10**9 }}"}
""")
    result = await run_flow(plan)
    assert result.error["kind"] == "config" and "unsafe operation" in result.error["message"]


async def test_chunks_of_a_node_without_streaming_outputs_are_dropped_not_fatal():
    # regression: push() raised KeyError for a node that yields text but declares no stream
    from rillflow.nodes.base import Node, NodeConfig, Output, register

    @register("test_chatty")
    class Chatty(Node):
        class Config(NodeConfig):
            pass

        async def run(self, ctx, inputs):
            yield "stray chunk"
            yield Output(value=42)

    result = await run_flow(flow('outputs: {v: "${c.value}"}\nnodes:\n  c: {type: test_chatty}\n'))
    assert result.status == "ok" and result.outputs == {"v": 42}
    assert "chunk" not in types(result)
