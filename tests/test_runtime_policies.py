"""Per-node policies: retry, timeout, fallback, on_fail, when + merge, map."""

from __future__ import annotations

import time

import pytest

from tests.helpers import flow, run_flow, types

pytestmark = pytest.mark.usefixtures("allow_test_functions")


async def test_retry_then_succeed_emits_one_retry_event():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "hi there", fail_attempts: [1], error: server, retry: {attempts: 3, backoff: 10ms}}
""")
    result = await run_flow(plan)
    assert result.status == "ok" and result.outputs == {"answer": "hi there"}
    retry = [e for e in result.events if e.type == "node_retry"]
    assert len(retry) == 1 and retry[0].data["error"]["kind"] == "server" and retry[0].data["attempt"] == 1
    assert [e.data["attempts"] for e in result.events if e.type == "node_finished"] == [2]


async def test_retry_then_fallback_when_attempts_run_out():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "primary", fail_attempts: [1, 2], retry: {attempts: 2, backoff: 5ms}, fallback: b}
  b: {type: scripted, text: "from the fallback"}
""")
    result = await run_flow(plan)
    assert result.outputs == {"answer": "from the fallback"}
    assert types(result, "a") == ["node_started", "node_retry", "node_started", "node_fallback", "node_finished"]
    fb = next(e for e in result.events if e.type == "node_fallback")
    assert fb.data["to"] == "b" and fb.data["attempts"] == 2


async def test_retry_skips_error_kinds_not_listed():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "x", fail_attempts: [1], error: auth, retry: {attempts: 3, backoff: 5ms}}
""")
    result = await run_flow(plan)
    assert result.status == "failed" and result.error["kind"] == "auth"
    assert "node_retry" not in types(result)


async def test_retry_honours_retry_after():
    plan = flow("""
outputs: {v: "${a.value}"}
nodes:
  a: {type: python, function: "tests.runtime_funcs:rate_limited", args: {key: ra1, retry_after: 0.3}, retry: {attempts: 2, backoff: 1ms}}
""")
    t0 = time.perf_counter()
    result = await run_flow(plan)
    assert result.outputs == {"v": "ok after 2 calls"}
    assert time.perf_counter() - t0 >= 0.3
    assert next(e for e in result.events if e.type == "node_retry").data["delay"] >= 0.3


async def test_timeout_on_first_chunk_falls_back_within_deadline():
    plan = flow("""
outputs: {answer: "${slow.text}"}
nodes:
  slow: {type: scripted, text: "too late", first_delay: 5s, timeout: {first_chunk: 100ms, total: 10s}, fallback: quick}
  quick: {type: scripted, text: "quick answer"}
""")
    t0 = time.perf_counter()
    result = await run_flow(plan)
    elapsed = time.perf_counter() - t0
    assert result.outputs == {"answer": "quick answer"}
    fb = next(e for e in result.events if e.type == "node_fallback")
    assert fb.data["error"] == {"kind": "timeout", "message": "node 'slow' produced no first chunk within 0.1s"}
    assert elapsed < 0.1 + 0.25


async def test_total_timeout_after_first_chunk_names_the_total():
    plan = flow("""
outputs: {answer: "${slow.text}"}
nodes:
  slow: {type: scripted, tokens: ["a", "b", "c"], delay: 1s, timeout: {first_chunk: 1s, total: 150ms}}
""")
    result = await run_flow(plan)
    assert result.status == "failed"
    assert result.error["message"].startswith("node 'slow' did not finish within 0.15s")
    assert "after streaming 1 chunks" in result.error["message"]


async def test_streaming_node_falls_back_after_streaming_nothing_and_caller_gets_fallback_chunks():
    plan = flow("""
outputs: {answer: "${main.text}"}
nodes:
  main: {type: scripted, text: "never seen", fail_attempts: [1], fail_after: 0, fallback: spare}
  spare: {type: scripted, text: "spare words here", delay: 5ms}
""")
    result = await run_flow(plan)
    chunks = [e.data["text"] for e in result.events if e.type == "chunk"]
    assert chunks == ["spare ", "words ", "here"]
    assert result.outputs == {"answer": "spare words here"}


async def test_stream_that_fails_midway_is_not_retried_or_replaced():
    plan = flow("""
outputs: {answer: "${main.text}"}
nodes:
  main: {type: scripted, text: "one two three", fail_attempts: [1], fail_after: 2, retry: {attempts: 3, backoff: 1ms}, fallback: spare}
  spare: {type: scripted, text: "spare"}
""")
    result = await run_flow(plan)
    assert "node_retry" not in types(result)
    assert result.outputs == {"answer": "spare"} or result.status == "failed"
    fb = [e for e in result.events if e.type == "node_fallback"]
    assert fb and "after streaming 2 chunks" in fb[0].data["error"]["message"]


async def test_fallback_chain_runs_each_stand_in_in_turn():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "a", fail_attempts: [1], fallback: b}
  b: {type: scripted, text: "b", fail_attempts: [1], fallback: c}
  c: {type: scripted, text: "c works"}
""")
    result = await run_flow(plan)
    assert result.outputs == {"answer": "c works"}
    assert [e.node for e in result.events if e.type == "node_fallback"] == ["a", "b"]


async def test_on_fail_respond_ends_run_with_message():
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "x", fail_attempts: [1], on_fail: {respond: "Sorry, try again later."}}
""")
    result = await run_flow(plan)
    assert result.status == "responded"
    assert result.outputs == {"answer": "Sorry, try again later."}
    assert types(result)[-1] == "run_finished"


async def test_on_fail_skip_propagates_to_dependants_and_output_is_none():
    plan = flow("""
outputs: {answer: "${b.value}"}
nodes:
  a: {type: scripted, text: "x", fail_attempts: [1], on_fail: skip}
  b: {type: static, value: "${a.text}"}
""")
    result = await run_flow(plan)
    assert result.status == "ok" and result.outputs == {"answer": None}
    assert [e.node for e in result.events if e.type == "node_skipped"] == ["a", "b"]


async def test_defaults_apply_to_every_node():
    plan = flow("""
defaults: {retry: {attempts: 2, backoff: 1ms}}
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "fine", fail_attempts: [1]}
""")
    result = await run_flow(plan)
    assert result.outputs == {"answer": "fine"} and types(result).count("node_retry") == 1


async def test_when_skips_a_branch_and_merge_takes_the_other():
    plan = flow("""
inputs: {kind: {type: string}}
outputs: {answer: "${simple.text ?? complex.text}"}
nodes:
  simple: {type: scripted, text: "short answer", when: "inputs.kind == 'simple'"}
  complex: {type: scripted, text: "long considered answer", when: "inputs.kind != 'simple'"}
""")
    simple = await run_flow(plan, {"kind": "simple"})
    assert simple.outputs == {"answer": "short answer"}
    complex_ = await run_flow(plan, {"kind": "hard"})
    assert complex_.outputs == {"answer": "long considered answer"}
    assert [e.data["text"] for e in complex_.events if e.type == "chunk"] == ["long ", "considered ", "answer"]
    skipped = next(e for e in complex_.events if e.type == "node_skipped")
    assert skipped.node == "simple" and "condition is false" in skipped.data["reason"]


async def test_when_reads_upstream_outputs_and_skips_propagate():
    plan = flow("""
outputs: {final: "${after.value ?? other.value}"}
nodes:
  route: {type: static, value: {branch: b}}
  gated: {type: static, value: "gated ran", when: "route.value.branch == 'a'"}
  after: {type: static, value: "${gated.value}"}
  other: {type: static, value: "other ran", when: "route.value.branch == 'b'"}
""")
    result = await run_flow(plan)
    assert result.outputs == {"final": "other ran"}
    assert {e.node for e in result.events if e.type == "node_skipped"} == {"gated", "after"}


async def test_map_runs_items_concurrently_with_progress_and_ordered_results():
    plan = flow("""
inputs: {numbers: {type: list}}
outputs: {squares: "${sq.value}"}
nodes:
  sq:
    type: python
    function: "tests.runtime_funcs:square_or_fail"
    thread: false
    args: {n: "${item}"}
    map: {over: "${inputs.numbers}", concurrency: 2}
""")
    result = await run_flow(plan, {"numbers": [1, 2, 4, 5]})
    assert result.outputs == {"squares": [1, 4, 16, 25]}
    progress = [e.data for e in result.events if e.type == "node_progress"]
    assert [p["message"] for p in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert sorted(p["index"] for p in progress) == [0, 1, 2, 3]


async def test_map_with_one_item_failing_fails_the_node_by_default():
    plan = flow("""
inputs: {numbers: {type: list}}
outputs: {squares: "${sq.value}"}
nodes:
  sq: {type: python, function: "tests.runtime_funcs:square_or_fail", thread: false, args: {n: "${item}"}, map: {over: "${inputs.numbers}"}}
""")
    result = await run_flow(plan, {"numbers": [1, 2, 3, 4]})
    assert result.status == "failed"
    assert result.error == {"kind": "invalid_output", "message": "item 2: three is not allowed", "node": "sq"}


async def test_map_with_on_item_fail_skip_keeps_the_other_items():
    plan = flow("""
inputs: {numbers: {type: list}}
outputs: {squares: "${sq.value}"}
nodes:
  sq: {type: python, function: "tests.runtime_funcs:square_or_fail", thread: false, args: {n: "${item}"}, map: {over: "${inputs.numbers}", on_item_fail: skip}}
""")
    result = await run_flow(plan, {"numbers": [1, 3, 4]})
    assert result.outputs == {"squares": [1, None, 16]}
    failed_item = next(e.data for e in result.events if e.type == "node_progress" and "error" in e.data)
    assert failed_item["index"] == 1 and failed_item["error"]["kind"] == "invalid_output"


async def test_when_can_read_fields_of_a_skipped_node():
    plan = flow("""
inputs: {long: {type: boolean}}
outputs: {answer: "${final.value}"}
nodes:
  short: {type: static, value: {text: brief}, when: "not inputs.long"}
  long: {type: static, value: {text: detailed}, when: "inputs.long"}
  final: {type: static, value: "chosen", when: "short.value or long.value"}
""")
    result = await run_flow(plan, {"long": True})
    assert result.status == "ok" and result.outputs == {"answer": "chosen"}


async def test_node_failing_before_it_starts_falls_back_and_streams_to_its_consumers():
    # regression: the stand-in pushed into streams the failed node never opened (KeyError)
    plan = flow("""
inputs: {q: {type: string}}
outputs: {answer: "${loud.text}"}
nodes:
  main: {type: scripted, text: never, when: "inputs.q.nope.deeper", fallback: spare}
  spare: {type: scripted, text: "spare words"}
  loud: {type: python, function: "tests.runtime_funcs:shout", stream: true, stream_args: [text], args: {text: "${main.text}"}}
""")
    result = await run_flow(plan, {"q": "hi"})
    assert result.outputs == {"answer": "SPARE WORDS"}
    assert next(e for e in result.events if e.type == "node_fallback").data["error"]["kind"] == "config"


async def test_a_stream_reader_of_a_node_skipped_before_it_started_is_skipped_too() -> None:
    # Was `internal: KeyError`: the skipped producer never opened its stream.
    plan = flow("""
inputs: {go: {type: boolean, default: false}}
outputs: {answer: "${checked.text}"}
nodes:
  answer: {type: scripted, text: "hello there. bye.", when: inputs.go}
  checked: {type: guardrail, text: "${answer.text}", checks: [pii_redact]}
""")
    skipped = await run_flow(plan, {"go": False})
    assert skipped.ok, skipped.error
    assert [(e.type, e.node) for e in skipped.events if e.type == "node_skipped"] == [("node_skipped", "answer"), ("node_skipped", "checked")]
    ran = await run_flow(plan, {"go": True})
    assert ran.ok and ran.outputs["answer"] == "hello there. bye."
