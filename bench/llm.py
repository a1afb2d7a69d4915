"""LLM node benchmarks on the packaged Gemma 3 270M (llama.cpp, CPU): prints figures, asserts nothing.

    python bench/llm.py [--rounds 5] [--tokens 64]

L1  tokens/s and time to first token of a one-node flow vs llama-cpp-python called directly with
    the same prompt tokens and settings (target: >= 0.97x tokens/s, first-token overhead < 5 ms).
L2  KV-cache reuse of a stable prompt prefix: a ~500-token system prompt, then a different question
    per run; first-token time with the prefix kept vs with the cache cleared before each run.
L3  prompt-lookup speculative decoding (LlamaPromptLookupDecoding) on an answer that quotes its
    context: tokens/s with prompt_lookup 0 vs 10.
Each comparison alternates the two sides round by round and reports medians (the host is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.prepare import prepare
from rillflow.runtime.scheduler import run

SYSTEM = ("You are the support assistant of rillflow, a workflow orchestrator for retrieval-augmented generation. "
          "Answer from the context only, cite sources as [n], say so when the context has no answer. ") * 12
CONTEXT = ("[1] rillflow runs flows declared in YAML files. Each node starts as soon as its inputs are ready, and model "
           "tokens stream through downstream nodes to the caller. Timeouts, retries and fallbacks are declared per node. ") * 3


def plan_for(max_tokens: int, lookup: int = 0, system: str = "") -> Any:
    sys_line = f"    system: {system!r}\n" if system else ""
    return load_flow_text(f"""version: 1
name: bench
inputs: {{q: {{type: string}}}}
outputs: {{answer: "${{answer.text}}", usage: "${{answer.usage}}"}}
models:
  m: {{provider: llama_cpp, model: gemma3-270m, n_ctx: 2048, temperature: 0, n_threads: 2, prompt_lookup: {lookup}}}
nodes:
  answer:
    type: llm
    model: m
    prompt: "${{inputs.q}}"
    max_tokens: {max_tokens}
{sys_line}""")


async def flow_once(plan: Any, question: str) -> tuple[float, float, int]:
    """(first-token seconds, tokens/s after the first, tokens) of one run, timed from the run's start."""
    start = time.perf_counter()
    first = last = None
    usage: dict[str, Any] = {}
    async for event in run(plan, {"q": question}):
        if event.type == "chunk":
            first = first or time.perf_counter()
            last = time.perf_counter()
        elif event.type == "run_finished":
            usage = event.data["outputs"]["usage"]
    assert first is not None and last is not None
    tokens = int(usage["output_tokens"])
    return first - start, (tokens - 1) / max(last - first, 1e-9), tokens


def direct_once(model: Any, prompt_ids: list[int], max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = last = None
    n = 0
    for _ in model.llm.create_completion(prompt_ids, max_tokens=max_tokens, temperature=0, stream=True):
        first = first or time.perf_counter()
        last = time.perf_counter()
        n += 1
    assert first is not None and last is not None
    return first - start, (n - 1) / max(last - first, 1e-9), n


def model_of(plan: Any) -> Any:
    return plan.nodes["answer"].node._backend


async def l1(rounds: int, tokens: int) -> None:
    plan = plan_for(tokens)
    await prepare(plan)
    model = model_of(plan)
    question = "Explain what a workflow orchestrator does."
    ids = model.tokenize(model.render([{"role": "user", "content": question}]), chat=True)
    flow_r, direct_r = [], []
    for _ in range(rounds):
        model.llm.reset()  # no prefix reuse on either side: both evaluate the whole prompt
        direct_r.append(await asyncio.to_thread(direct_once, model, ids, tokens))
        model.llm.reset()
        flow_r.append(await flow_once(plan, question))
    ttft_f, ttft_d = (statistics.median(r[0] for r in x) for x in (flow_r, direct_r))
    tps_f, tps_d = (statistics.median(r[1] for r in x) for x in (flow_r, direct_r))
    print(f"L1 direct: first token {ttft_d * 1000:7.1f} ms, {tps_d:6.1f} tokens/s ({direct_r[0][2]} tokens)")
    print(f"L1 flow  : first token {ttft_f * 1000:7.1f} ms, {tps_f:6.1f} tokens/s ({flow_r[0][2]} tokens)")
    print(f"L1 ratio : {tps_f / tps_d:.3f}x tokens/s, first-token overhead {(ttft_f - ttft_d) * 1000:+.2f} ms")


async def l2(rounds: int) -> None:
    plan = plan_for(8, system=SYSTEM)
    await prepare(plan)
    model = model_of(plan)
    kept, cleared = [], []
    for i in range(rounds):
        await flow_once(plan, f"Warm-up question {i}?")  # the prefix is now in the KV cache
        kept.append((await flow_once(plan, f"What does node number {i} do?"))[0])
        model.llm.reset()
        cleared.append((await flow_once(plan, f"What does node number {i + 100} do?"))[0])
    n = len(model.tokenize(model.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]), chat=True))
    k, c = statistics.median(kept), statistics.median(cleared)
    print(f"L2 stable prefix ({n} prompt tokens): first token {k * 1000:.1f} ms with KV reuse vs {c * 1000:.1f} ms without ({c / k:.1f}x)")


async def l3(rounds: int, tokens: int) -> None:
    plans = {0: plan_for(tokens, 0), 10: plan_for(tokens, 10)}
    for plan in plans.values():
        await prepare(plan)
    question = f"Context:\n{CONTEXT}\nCopy the context above word for word.\n\n{CONTEXT[:80]}"
    rates: dict[int, list[float]] = {0: [], 10: []}
    for _ in range(rounds):
        for lookup, plan in plans.items():
            model_of(plan).llm.reset()
            rates[lookup].append((await flow_once(plan, question))[1])
    off, on = statistics.median(rates[0]), statistics.median(rates[10])
    print(f"L3 quoting answer: {off:.1f} tokens/s plain vs {on:.1f} tokens/s with prompt lookup ({on / off:.2f}x)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    await l1(args.rounds, args.tokens)
    await l2(args.rounds)
    await l3(args.rounds, args.tokens)


if __name__ == "__main__":
    asyncio.run(main())
