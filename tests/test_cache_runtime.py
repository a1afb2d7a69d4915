"""Caching through the runtime: keys, modes, stream replay, what is never stored, tenants, corrupt entries,
the semantic and offline tiers, and resume. Stores are real (SQLite files); models are real where a
model feature is tested (Gemma through llama.cpp, the embedder, an OpenAI-compatible server)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.caching import RunCache
from rillflow.runtime.sync import RunResult
from tests import flowfuncs
from tests.fault_server import FaultServer
from tests.helpers import flow, run_flow


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteCache]:
    cache = SqliteCache(tmp_path / "cache.db")
    yield cache
    await cache.flush()
    cache.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    from tests.redis_server import RedisServer

    with RedisServer() as server:  # fails (never skips) when redis-server is not installed
        yield server.url


@pytest.fixture(autouse=True)
def _fresh_counters(allow_test_functions: None) -> Iterator[None]:
    flowfuncs.CALLS.clear()
    flowfuncs.FAIL.clear()
    yield
    flowfuncs.FAIL.clear()


def counted_flow(cache: str = "cache: 10m", extra: str = "") -> Any:
    return flow(f"""
inputs:
  q: {{type: string, default: hello}}
outputs:
  answer: ${{b.text}}
nodes:
  a: {{type: python, function: "tests.flowfuncs:counted", args: {{name: a, value: "${{inputs.q}}"}}, {cache}}}
  b: {{type: scripted, text: "${{a.value}} streamed in words", {cache}}}
{extra}""")


def chunks(result: RunResult) -> list[str]:
    return [e.data["text"] for e in result.events if e.type == "chunk"]


def event(result: RunResult, type_: str, node: str) -> dict[str, Any]:
    found = [e.data for e in result.events if e.type == type_ and e.node == node]
    assert found, f"no {type_} event for {node}: {[(e.type, e.node) for e in result.events]}"
    return found[-1]


async def test_a_second_run_replays_every_node_from_the_cache_as_a_stream(store: SqliteCache) -> None:
    plan = counted_flow()
    first = await run_flow(plan, {"q": "hi"}, cache=store)
    second = await run_flow(plan, {"q": "hi"}, cache=store)
    assert first.ok and second.ok
    assert flowfuncs.CALLS == {"a": 1}  # the python node ran once
    assert second.outputs == first.outputs == {"answer": "a:hi streamed in words"}
    assert chunks(second) == chunks(first) == ["a:hi ", "streamed ", "in ", "words"]  # same chunk boundaries
    assert event(second, "cache_hit", "b")["tier"] == "exact"
    assert event(second, "node_finished", "b")["cached"] == "exact"
    assert event(second, "node_finished", "b")["attempts"] == 0
    assert not [e for e in first.events if e.type == "cache_hit"]
    stats = {row["node"]: row for row in await _stats(store)}
    assert (stats["a"]["hits"], stats["a"]["misses"], stats["a"]["writes"]) == (1, 1, 1)


async def test_other_inputs_are_another_key(store: SqliteCache) -> None:
    plan = counted_flow()
    await run_flow(plan, {"q": "one"}, cache=store)
    await run_flow(plan, {"q": "two"}, cache=store)
    assert flowfuncs.CALLS == {"a": 2}


async def test_without_a_store_nothing_is_cached(store: SqliteCache) -> None:
    plan = counted_flow()
    await run_flow(plan, {"q": "x"})
    await run_flow(plan, {"q": "x"})
    assert flowfuncs.CALLS == {"a": 2}


@pytest.mark.parametrize(("mode", "calls", "hit_on_third"), [
    ("read_write", 1, True),
    ("read", 3, False),      # never writes: every run is a miss
    ("refresh", 3, True),    # never reads, always writes: a read_write run afterwards hits
    ("off", 3, False),
])
async def test_cache_modes(store: SqliteCache, mode: str, calls: int, hit_on_third: bool) -> None:
    plan = counted_flow(f"cache: {{ttl: 10m, mode: {mode}}}")
    for _ in range(3):
        await run_flow(plan, {"q": "m"}, cache=store)
    assert {"a": calls} == flowfuncs.CALLS
    reader = counted_flow("cache: {ttl: 10m, mode: read}")
    result = await run_flow(reader, {"q": "m"}, cache=store)
    assert any(e.type == "cache_hit" and e.node == "a" for e in result.events) is hit_on_third


async def test_an_expired_entry_is_a_miss(store: SqliteCache) -> None:
    plan = counted_flow("cache: {ttl: 50ms}")
    await run_flow(plan, {"q": "t"}, cache=store)
    import asyncio

    await asyncio.sleep(0.1)
    await run_flow(plan, {"q": "t"}, cache=store)
    assert flowfuncs.CALLS == {"a": 2}


async def test_flow_defaults_cache_the_costly_node_types_only(store: SqliteCache) -> None:
    plan = flow("""
defaults: {cache: 10m}
outputs: {answer: "${p.text}"}
nodes:
  a: {type: python, function: "tests.flowfuncs:counted", args: {name: a}}
  p: {type: prompt, template: "{{ v }}", vars: {v: "${a.value}"}}
""")
    assert plan.nodes["a"].cache is not None and plan.nodes["p"].cache is None
    await run_flow(plan, cache=store)
    await run_flow(plan, cache=store)
    assert flowfuncs.CALLS == {"a": 1}


# -- what is never stored -------------------------------------------------------------------------
async def test_a_failed_node_is_never_cached(store: SqliteCache) -> None:
    plan = counted_flow()
    flowfuncs.FAIL.add("a")
    failed = await run_flow(plan, {"q": "f"}, cache=store)
    assert failed.status == "failed"
    flowfuncs.FAIL.clear()
    ok = await run_flow(plan, {"q": "f"}, cache=store)
    assert ok.ok and flowfuncs.CALLS == {"a": 2}
    assert not any(e.type == "cache_hit" and e.node == "a" for e in ok.events)


async def test_a_stream_that_died_midway_is_never_cached(store: SqliteCache) -> None:
    plan = flow("""
outputs: {answer: "${b.text}"}
nodes:
  b: {type: scripted, text: "one two three four", fail_attempts: [1], fail_after: 2, cache: 10m}
""")
    first = await run_flow(plan, cache=store)
    assert first.status == "failed"
    await store.flush()
    assert sum(row["entries"] for row in await _stats(store)) == 0


async def test_a_guardrail_flagged_result_is_never_cached(store: SqliteCache) -> None:
    plan = flow("""
inputs: {q: {type: string}}
outputs: {safe: "${g.text}"}
nodes:
  g: {type: guardrail, text: "${inputs.q}", checks: [pii_redact], cache: 10m}
""")
    flagged = await run_flow(plan, {"q": "mail me at ana@example.com"}, cache=store)
    again = await run_flow(plan, {"q": "mail me at ana@example.com"}, cache=store)
    assert flagged.outputs == again.outputs and "[EMAIL]" in again.outputs["safe"]
    assert not any(e.type == "cache_hit" for e in again.events)
    assert any(e.type == "guardrail_flagged" for e in again.events)  # the verdict is there every time
    clean = await run_flow(plan, {"q": "nothing personal here"}, cache=store)
    clean_again = await run_flow(plan, {"q": "nothing personal here"}, cache=store)
    assert clean.ok and any(e.type == "cache_hit" for e in clean_again.events)


async def test_a_tenant_never_hits_another_tenants_entry(store: SqliteCache) -> None:
    plan = counted_flow()
    await run_flow(plan, {"q": "t"}, cache=store, tenant="acme")
    other = await run_flow(plan, {"q": "t"}, cache=store, tenant="globex")
    same = await run_flow(plan, {"q": "t"}, cache=store, tenant="acme")
    assert flowfuncs.CALLS == {"a": 2}
    assert not any(e.type == "cache_hit" for e in other.events)
    assert any(e.type == "cache_hit" for e in same.events)


async def test_a_corrupt_entry_is_a_miss_and_a_warning_never_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.db"
    store = SqliteCache(path)
    plan = counted_flow()
    await run_flow(plan, {"q": "c"}, cache=store)
    await store.flush()
    store.close()
    with sqlite3.connect(path) as db:  # flip the payload under its checksum
        db.execute("UPDATE entries SET doc = replace(doc, 'a:c', 'a:X')")
    store = SqliteCache(path)
    try:
        with caplog.at_level(logging.WARNING, logger="rillflow.cache"):
            result = await run_flow(plan, {"q": "c"}, cache=store)
        assert result.ok and result.outputs == {"answer": "a:c streamed in words"}
        assert flowfuncs.CALLS == {"a": 2}
        assert "checksum" in caplog.text
    finally:
        await store.flush()
        store.close()


async def test_a_store_that_cannot_write_slows_runs_never_fails_them(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    store = SqliteCache(folder / "cache.db")
    folder.chmod(0o500)
    (folder / "cache.db").chmod(0o400)
    try:
        plan = counted_flow()
        for _ in range(2):
            assert (await run_flow(plan, {"q": "r"}, cache=store)).ok
    finally:
        folder.chmod(0o700)
        await store.flush()
        store.close()


# -- resume -------------------------------------------------------------------------------------------
async def test_resume_reuses_what_ran_and_runs_only_the_failed_part(store: SqliteCache) -> None:
    plan = flow("""
inputs: {q: {type: string}}
outputs: {answer: "${b.value}"}
nodes:
  a: {type: python, function: "tests.flowfuncs:counted", args: {name: a, value: "${inputs.q}"}}
  b: {type: python, function: "tests.flowfuncs:counted", args: {name: b, value: "${a.value}"}}
""")
    flowfuncs.FAIL.add("b")
    failed = await run_flow(plan, {"q": "r"}, cache=RunCache(store, checkpoint=True), run_id="first")
    assert failed.status == "failed" and flowfuncs.CALLS == {"a": 1, "b": 1}
    flowfuncs.FAIL.clear()
    resumed = await run_flow(plan, {"q": "r"}, cache=RunCache(store, checkpoint=True, resume="first"))
    assert resumed.ok and resumed.outputs == {"answer": "b:a:r"}
    assert flowfuncs.CALLS == {"a": 1, "b": 2}  # a was reused, only b ran again
    assert event(resumed, "cache_hit", "a")["tier"] == "resume"
    assert resumed.events[0].data["resumes"] == "first"


# -- real models ----------------------------------------------------------------------------------------
GEMMA = "models: {small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 512, temperature: 0, seed: 7}}\n"


async def test_a_local_model_answer_is_replayed_with_its_chunks(store: SqliteCache) -> None:
    plan = flow(GEMMA + """
inputs: {q: {type: string}}
outputs: {answer: "${ask.text}"}
nodes:
  ask: {type: llm, model: small, prompt: "${inputs.q}", max_tokens: 24, stop: ["(b)"], cache: 1h}
""")
    first = await run_flow(plan, {"q": "Name three colours."}, cache=store)
    second = await run_flow(plan, {"q": "Name three colours."}, cache=store)
    assert first.ok and second.ok and first.outputs == second.outputs
    assert chunks(first) == chunks(second) and len(chunks(second)) > 1
    assert event(second, "cache_hit", "ask")["tier"] == "exact"
    assert "usage" not in event(second, "node_finished", "ask")  # a hit spends no tokens


async def test_a_truncated_answer_is_never_cached(store: SqliteCache) -> None:
    plan = flow(GEMMA + """
outputs: {answer: "${ask.text}"}
nodes:
  ask: {type: llm, model: small, prompt: "Write a long story about a dragon.", max_tokens: 3, cache: 1h}
""")
    first = await run_flow(plan, cache=store)
    assert first.ok
    second = await run_flow(plan, cache=store)
    assert not any(e.type == "cache_hit" for e in second.events)


@pytest.mark.parametrize(("extra", "cached"), [("", False), (", unseeded: true", True)])
async def test_sampling_without_a_seed_is_cached_only_when_the_flow_says_so(store: SqliteCache, extra: str, cached: bool) -> None:
    plan = flow(f"""
models: {{small: {{provider: llama_cpp, model: gemma3-270m, n_ctx: 512, temperature: 0.8}}}}
outputs: {{answer: "${{ask.text}}", finish: "${{ask.finish_reason}}"}}
nodes:
  ask: {{type: llm, model: small, prompt: "Name three colours.", max_tokens: 32, stop: ["\\n", "."], cache: {{ttl: 1h{extra}}}}}
""")
    for _ in range(5):  # sampling: go on until an answer ends by itself (a truncated one is never stored)
        first = await run_flow(plan, cache=store)
        if first.outputs["finish"] == "stop":
            break
    assert first.outputs["finish"] == "stop"
    second = await run_flow(plan, cache=store)
    assert any(e.type == "cache_hit" for e in second.events) is cached


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def remote_flow(base_url: str, tiers: str) -> Any:
    return flow(f"""
models: {{remote: {{provider: openai, base_url: "{base_url}", model: ok, api_key: "${{env.K}}", temperature: 0}}}}
inputs: {{q: {{type: string}}}}
outputs: {{answer: "${{ask.text}}"}}
nodes:
  ask: {{type: llm, model: remote, prompt: "${{inputs.q}}", max_tokens: 16, cache: {{ttl: 1h, {tiers}}}}}
""", K="test-key")


async def test_the_semantic_tier_answers_a_rephrased_question_and_says_how_close(store: SqliteCache, faults: FaultServer) -> None:
    plan = remote_flow(faults.base_url, "semantic: {threshold: 0.8}")
    await run_flow(plan, {"q": "What is the capital of France?"}, cache=store)
    before = faults.counts["ok"]
    close = await run_flow(plan, {"q": "what's the capital city of France?"}, cache=store)
    hit = event(close, "cache_hit", "ask")
    assert hit["tier"] == "semantic" and 0.8 <= hit["similarity"] < 1.0
    assert faults.counts["ok"] == before  # no model call
    far = await run_flow(plan, {"q": "How do I bake sourdough bread?"}, cache=store)
    assert not any(e.type == "cache_hit" for e in far.events) and faults.counts["ok"] == before + 1
    other_tenant = await run_flow(plan, {"q": "what's the capital city of France?"}, cache=store, tenant="acme")
    assert not any(e.type == "cache_hit" for e in other_tenant.events)


async def test_when_every_model_path_fails_the_closest_cached_answer_is_served_and_labelled(store: SqliteCache) -> None:
    with FaultServer() as server:
        plan = remote_flow(server.base_url, "offline: {threshold: 0.75}")
        first = await run_flow(plan, {"q": "What is the capital of France?"}, cache=store)
        assert first.ok
    # the server is gone: the call fails with kind connection, and no fallback is left
    down = await run_flow(plan, {"q": "Tell me the capital of France"}, cache=store)
    assert down.ok and down.outputs == first.outputs
    finished = down.events[-1].data
    assert finished["cached_answer"]["node"] == "ask" and finished["cached_answer"]["error"]["kind"] == "connection"
    assert event(down, "cache_hit", "ask")["tier"] == "offline"
    unrelated = await run_flow(plan, {"q": "How many legs does a spider have?"}, cache=store)
    assert unrelated.status == "failed" and unrelated.error is not None and unrelated.error["kind"] == "connection"


async def _stats(store: SqliteCache) -> list[dict[str, Any]]:
    import asyncio

    await store.flush()
    return await asyncio.to_thread(store.stats)


# -- retrieval: re-ingesting invalidates ---------------------------------------------------------------
async def test_reingesting_a_collection_turns_its_retrieval_entries_into_misses(tmp_path: Path, store: SqliteCache) -> None:
    from rillflow.nodes.embedder import load_embedder
    from rillflow.nodes.ingest import ingest
    from rillflow.nodes.vectorstore import open_collection
    from rillflow.runtime.spec import CollectionResource, QdrantLocal

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettle.md").write_text("# Kettles\n\nDescale the Zephyr kettle every four weeks.\n")
    embedder = load_embedder("all-MiniLM-L6-v2")
    collection = open_collection(CollectionResource(qdrant=QdrantLocal(path=str(tmp_path / "qdrant"))), label="docs",
                                 flow_dir=str(tmp_path), dim=embedder.dim, create=True)
    ingest([docs], collection, embedder, base=tmp_path)
    plan = flow(f"""
collections: {{docs: {{qdrant: {{path: "{tmp_path / 'qdrant'}"}}}}}}
inputs: {{q: {{type: string}}}}
outputs: {{context: "${{search.context}}"}}
nodes:
  search: {{type: retrieve, collection: docs, query: "${{inputs.q}}", cache: 10m}}
""")
    first = await run_flow(plan, {"q": "How often to descale?"}, cache=store)
    hit = await run_flow(plan, {"q": "How often to descale?"}, cache=store)
    assert any(e.type == "cache_hit" for e in hit.events)
    (docs / "kettle.md").write_text("# Kettles\n\nDescale the Zephyr kettle every two weeks in hard-water areas.\n")
    ingest([docs], collection, embedder, base=tmp_path)
    after = await run_flow(plan, {"q": "How often to descale?"}, cache=store)
    assert not any(e.type == "cache_hit" for e in after.events)
    assert "two weeks" in after.outputs["context"] and "four weeks" in first.outputs["context"]


# -- several workers sharing one Redis --------------------------------------------------------------------
async def test_two_workers_share_entries_through_redis(redis_url: str) -> None:
    from rillflow.runtime.cache_redis import RedisCache

    worker_a, worker_b = RedisCache(redis_url, prefix="t1:"), RedisCache(redis_url, prefix="t1:")
    try:
        plan = counted_flow()
        await run_flow(plan, {"q": "shared"}, cache=worker_a)
        await worker_a.flush()
        second = await run_flow(plan, {"q": "shared"}, cache=worker_b)
        assert flowfuncs.CALLS == {"a": 1}
        assert event(second, "cache_hit", "b")["tier"] == "exact"
        assert chunks(second) == ["a:shared ", "streamed ", "in ", "words"]
    finally:
        await worker_a.aclose()
        await worker_b.aclose()
