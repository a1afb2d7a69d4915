"""The llm node on a real local model: the packaged Gemma 3 270M GGUF through llama-cpp-python."""

from __future__ import annotations

import asyncio
import time

import pytest

from rillflow.nodes.llm import LlmNode
from rillflow.nodes.llm_local import StopScanner
from rillflow.runtime.scheduler import run
from tests.helpers import flow, run_flow, types

MODEL = "models:\n  small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 1024, temperature: 0, n_threads: 2}\n"


def llm_flow(extra: str = "", *, max_tokens: int = 24, prompt: str = "${inputs.q}", models: str = MODEL) -> object:
    return flow(f"""
inputs: {{q: {{type: string}}}}
outputs: {{answer: "${{answer.text}}", usage: "${{answer.usage}}", finish: "${{answer.finish_reason}}"}}
{models}
nodes:
  answer: {{type: llm, model: small, prompt: "{prompt}", max_tokens: {max_tokens}{extra}}}
""")


def backend(plan: object) -> object:
    node = plan.nodes["answer"].node  # type: ignore[attr-defined]
    assert isinstance(node, LlmNode)
    return node._backend


async def test_answer_streams_in_many_chunks_with_exact_token_counts():
    plan = llm_flow(max_tokens=20)
    result = await run_flow(plan, {"q": "The capital of France is"})
    assert result.ok, result.error
    chunks = [e.data["text"] for e in result.events if e.type == "chunk" and e.data["output"] == "answer"]
    assert len(chunks) >= 5
    assert "".join(chunks) == result.outputs["answer"]
    usage = result.outputs["usage"]
    model = backend(plan)
    prompt_ids = model.tokenize(model.render([{"role": "user", "content": "The capital of France is"}]), chat=True)
    assert usage["input_tokens"] == len(prompt_ids)
    assert result.outputs["finish"] in ("length", "stop")
    if result.outputs["finish"] == "length":
        assert usage["output_tokens"] == 20
    assert usage["model"] == "small" and usage["estimated"] is False
    finished = next(e for e in result.events if e.type == "node_finished")
    assert finished.data["usage"]["output_tokens"] == usage["output_tokens"]


async def test_greedy_answer_matches_llama_cpp_python_itself():
    """Our token loop must produce what the library produces for the same prompt and settings."""
    plan = llm_flow(max_tokens=16)
    result = await run_flow(plan, {"q": "Name a fruit."})
    model = backend(plan)
    prompt = model.render([{"role": "user", "content": "Name a fruit."}])
    direct = model.llm.create_completion(model.tokenize(prompt, chat=True), max_tokens=16, temperature=0)
    assert result.outputs["answer"] == direct["choices"][0]["text"]


async def test_stop_string_ends_the_answer_and_never_reaches_the_stream():
    free = await run_flow(llm_flow(max_tokens=24), {"q": "The capital of France is"})
    words = free.outputs["answer"].split()
    assert len(words) >= 4
    stop = words[3]
    plan = llm_flow(f", stop: [\"{stop}\"]", max_tokens=24)
    result = await run_flow(plan, {"q": "The capital of France is"})
    assert result.outputs["finish"] == "stop"
    assert stop not in result.outputs["answer"]
    assert free.outputs["answer"].startswith(result.outputs["answer"])
    streamed = "".join(e.data["text"] for e in result.events if e.type == "chunk")
    assert stop not in streamed


def test_stop_scanner_holds_back_partial_matches():
    scanner = StopScanner(["END"])
    assert scanner.feed("abc E") == ("abc ", False)
    assert scanner.feed("N") == ("", False)
    assert scanner.feed("Dx") == ("", True)
    scanner = StopScanner(["END"])
    assert scanner.feed("abE") == ("ab", False)
    assert scanner.feed("x") == ("Ex", False)
    assert scanner.flush("") == ""


async def test_cancelling_stops_generation_within_a_token_or_two():
    plan = llm_flow(max_tokens=400)
    events = run(plan, {"q": "Write a long story about a dragon."})
    chunks = 0
    async for event in events:
        if event.type == "chunk":
            chunks += 1
            if chunks == 3:
                break
    started = time.perf_counter()
    await events.aclose()  # type: ignore[attr-defined]
    waited = time.perf_counter() - started
    model = backend(plan)
    assert model._thread_lock.acquire(blocking=False), "the worker thread still holds the model after the run closed"
    model._thread_lock.release()
    assert waited < 0.5, f"closing took {waited:.2f}s: generation did not stop promptly"


async def test_concurrent_runs_queue_for_one_model_and_report_the_wait():
    plan_a, plan_b = llm_flow(max_tokens=12), llm_flow(max_tokens=12)
    ra, rb = await asyncio.gather(run_flow(plan_a, {"q": "Hello"}), run_flow(plan_b, {"q": "Hi"}))
    assert ra.ok and rb.ok
    assert backend(plan_a) is backend(plan_b), "two flows naming the same model must share one loaded model"
    queued = [e for r in (ra, rb) for e in r.events if e.type == "model_queued"]
    assert len(queued) == 1 and queued[0].data["wait_ms"] > 5
    waits = sorted(r.outputs["usage"]["queue_ms"] for r in (ra, rb))
    assert waits[0] < 5 < waits[1]


async def test_structured_output_is_parsed_and_valid_with_a_grammar():
    schema = '{type: object, properties: {city: {type: string, maxLength: 40}}, required: [city]}'
    plan = flow(f"""
inputs: {{q: {{type: string}}}}
outputs: {{data: "${{answer.json}}", text: "${{answer.text}}"}}
{MODEL}
nodes:
  answer: {{type: llm, model: small, prompt: "${{inputs.q}}", max_tokens: 60, json_schema: {schema}}}
""")
    result = await run_flow(plan, {"q": "Which city is the capital of France? Answer in JSON."})
    assert result.ok, result.error
    assert isinstance(result.outputs["data"], dict) and isinstance(result.outputs["data"]["city"], str)
    assert "chunk" not in types(result), "a structured answer is validated whole, never streamed"


async def test_gpu_layers_on_a_cpu_build_is_a_clear_start_up_error():
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build supports GPU offload")
    models = "models:\n  small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 512, n_gpu_layers: -1}\n"
    result = await run_flow(llm_flow(models=models), {"q": "hi"})
    assert result.status == "failed" and result.error["kind"] == "config"
    assert "-DGGML_CUDA=on" in result.error["message"] and "node" not in types(result)[1:]


async def test_missing_model_file_fails_before_any_node_starts(tmp_path):
    models = f"models:\n  small: {{provider: llama_cpp, path: {tmp_path}/nope.gguf}}\n"
    result = await run_flow(llm_flow(models=models), {"q": "hi"})
    assert types(result) == ["run_started", "run_failed"]
    assert "nope.gguf does not exist" in result.error["message"]
