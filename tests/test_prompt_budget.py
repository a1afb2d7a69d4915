"""The prompt node's chat history, token budget and size cap (issue 4, item 8), and nodes/tokens.py.

Token counts are checked against the real Gemma 3 tokenizer (the packaged gemma3-270m, vocab only),
loaded here independently of the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rillflow.nodes.model_files import gguf_path
from rillflow.nodes.tokens import MESSAGE_OVERHEAD, PROMPT_OVERHEAD, estimate_tokens, token_counter
from rillflow.runtime.compiler import load_flow
from rillflow.runtime.errors import FlowError
from rillflow.runtime.spec import LlamaCppModel, OpenAIModel
from tests.helpers import flow, run_flow

DOCS = [f"Document {i}: " + " ".join(f"fact{i}_{j} about rillflow routing and budgets." for j in range(8)) for i in range(10)]
RAG_NODES = """
nodes:
  p:
    type: prompt
    messages:
      - {role: system, content: "Answer from the documents only."}
      - role: user
        content: "{% for d in docs %}[{{ loop.index }}] {{ d }}\\n{% endfor %}Question: {{ q }}"
    vars: {docs: "${inputs.docs}", q: "${inputs.q}"}
    history: ${inputs.history}
"""


def rag_flow(budget: str, models: str = "models: {small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 512}}\n") -> Any:
    return flow(f"""
inputs:
  q: {{type: string}}
  docs: {{type: list, default: []}}
  history: {{type: chat_history, default: []}}
outputs: {{text: "${{p.text}}", messages: "${{p.messages}}", tokens: "${{p.tokens}}", trimmed: "${{p.trimmed}}", dropped: "${{p.trimmed_history}}"}}
{models}{RAG_NODES}    budget: {budget}
""")


@pytest.fixture(scope="module")
def gemma() -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(gguf_path("gemma3-270m", None, ".")), vocab_only=True, verbose=False)


def gemma_tokens(gemma: Any, messages: list[dict[str, str]]) -> int:
    return PROMPT_OVERHEAD + sum(len(gemma.tokenize(m["content"].encode(), add_bos=False, special=True)) + MESSAGE_OVERHEAD for m in messages)


def history(turns: int) -> list[dict[str, str]]:
    out = []
    for i in range(turns):
        out += [{"role": "user", "content": f"Earlier question {i} about the weather in town {i}?"},
                {"role": "assistant", "content": f"Earlier answer {i}: it was sunny in town {i} all day long."}]
    return out


# -- tokens.py ------------------------------------------------------------------------------------
def test_estimate_is_characters_over_four_rounded_up() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_openai_models_and_missing_specs_count_by_estimate() -> None:
    remote = OpenAIModel(provider="openai", model="gpt-x")
    assert token_counter(remote, ".") is estimate_tokens
    assert token_counter(None, ".") is estimate_tokens


def test_llama_cpp_model_counts_with_its_own_shared_vocabulary(gemma: Any) -> None:
    spec = LlamaCppModel(provider="llama_cpp", model="gemma3-270m")
    count = token_counter(spec, ".")
    text = "Grüße aus Zürich: <start_of_turn> tokenizes as one special token."
    assert count(text) == len(gemma.tokenize(text.encode(), add_bos=False, special=True))
    assert count(text) != estimate_tokens(text)
    from rillflow.runtime.context import RESOURCES

    path = str(gguf_path("gemma3-270m", None, "."))
    assert RESOURCES.get(("llama-vocab", path), lambda: pytest.fail("the vocabulary was not shared")) is not None


# -- history --------------------------------------------------------------------------------------
async def test_history_goes_after_the_system_and_few_shot_turns_before_the_final_user_message() -> None:
    plan = flow("""
inputs: {q: {type: string}, history: {type: chat_history}}
outputs: {messages: "${p.messages}", text: "${p.text}"}
nodes:
  p:
    type: prompt
    messages:
      - {role: system, content: "Be brief."}
      - {role: user, content: "2+2?"}
      - {role: assistant, content: "4"}
      - {role: user, content: "{{ q }}"}
    vars: {q: "${inputs.q}"}
    history: ${inputs.history}
""")
    past = [{"role": "user", "content": "Hi {{ 7*7 }}"}, {"role": "assistant", "content": "Hello!"}]
    result = await run_flow(plan, {"q": "And 3+3?", "history": past})
    assert [(m["role"], m["content"]) for m in result.outputs["messages"]] == [
        ("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"),
        ("user", "Hi {{ 7*7 }}"), ("assistant", "Hello!"),  # history is data: never rendered
        ("user", "And 3+3?"),
    ]
    assert result.outputs["text"] == "Be brief.\n\n2+2?\n\n4\n\nHi {{ 7*7 }}\n\nHello!\n\nAnd 3+3?"


async def test_a_single_template_keeps_its_text_and_gets_history_in_messages() -> None:
    plan = flow("""
inputs: {q: {type: string}, history: {type: chat_history}}
outputs: {messages: "${p.messages}", text: "${p.text}"}
nodes:
  p: {type: prompt, template: "Q: {{ q }}", vars: {q: "${inputs.q}"}, history: "${inputs.history}"}
""")
    result = await run_flow(plan, {"q": "why?", "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert result.outputs["text"] == "Q: why?"
    assert [m["content"] for m in result.outputs["messages"]] == ["hi", "yo", "Q: why?"]


async def test_history_that_is_not_chat_messages_fails_the_node_with_the_item() -> None:
    plan = flow("""
outputs: {text: "${p.text}"}
nodes:
  h: {type: static, value: [{role: user, content: ok}, {role: robot, content: beep}]}
  p: {type: prompt, template: "x", history: "${h.value}"}
""")
    result = await run_flow(plan)
    assert result.error is not None and result.error["kind"] == "config"
    assert "history item 1 must be {role: system|user|assistant" in result.error["message"]


# -- the budget -----------------------------------------------------------------------------------
async def test_a_prompt_that_fits_is_untouched_and_counted_with_the_models_tokenizer(gemma: Any) -> None:
    plan = rag_flow("{model: small, reserve: 64}")
    result = await run_flow(plan, {"q": "What is rillflow?", "docs": DOCS[:2]})
    assert result.ok, result.error
    assert result.outputs["trimmed"] == 0 and result.outputs["dropped"] == 0
    assert "[2] Document 1" in result.outputs["text"]
    assert result.outputs["tokens"] == gemma_tokens(gemma, result.outputs["messages"])
    assert not [e for e in result.events if e.type == "node_progress" and e.node == "p"]


async def test_lowest_ranked_documents_are_dropped_until_the_prompt_fits(gemma: Any) -> None:
    plan = rag_flow("{model: small, reserve: 128, trim: docs}")  # 512 - 128 = 384 tokens for the prompt
    result = await run_flow(plan, {"q": "What is rillflow?", "docs": DOCS})
    assert result.ok, result.error
    kept = len(DOCS) - result.outputs["trimmed"]
    assert 0 < kept < len(DOCS)
    text = result.outputs["text"]
    assert all(f"[{i + 1}] {DOCS[i]}" in text for i in range(kept))  # the best-ranked ones, in order
    assert DOCS[kept] not in text
    assert gemma_tokens(gemma, result.outputs["messages"]) == result.outputs["tokens"] <= 384
    one_more = text.replace("Question:", f"[{kept + 1}] {DOCS[kept]}\nQuestion:")
    assert gemma_tokens(gemma, [*result.outputs["messages"][:-1], {"role": "user", "content": one_more}]) > 384
    progress = [e.data for e in result.events if e.type == "node_progress" and e.node == "p"]
    assert progress == [{"done": kept, "total": len(DOCS),
                         "message": f"trimmed to fit 384 tokens: dropped {len(DOCS) - kept} of {len(DOCS)} documents ({result.outputs['tokens']} tokens)"}]


async def test_history_is_dropped_oldest_first_and_kept_from_a_user_turn(gemma: Any) -> None:
    plan = rag_flow("{model: small, reserve: 128, trim: docs}")
    past = history(12)
    result = await run_flow(plan, {"q": "And today?", "docs": DOCS[:2], "history": past})
    assert result.ok, result.error
    assert result.outputs["trimmed"] == 0  # documents outrank old turns
    messages = result.outputs["messages"]
    kept = messages[1:-1]
    assert 0 < len(kept) < len(past) and kept == past[len(past) - len(kept):]  # the newest, contiguous
    assert kept[0]["role"] == "user"
    assert result.outputs["dropped"] == len(past) - len(kept)
    assert gemma_tokens(gemma, messages) == result.outputs["tokens"] <= 384
    earlier = past[len(past) - len(kept) - 2: len(past) - len(kept)]  # the turn before did not fit
    assert gemma_tokens(gemma, [messages[0], *earlier, *kept, messages[-1]]) > 384


async def test_a_prompt_that_cannot_fit_fails_as_bad_request_with_the_numbers() -> None:
    plan = rag_flow("{max_tokens: 300, reserve: 200, trim: docs}", models="")
    result = await run_flow(plan, {"q": "why? " * 200, "docs": DOCS[:3], "history": history(1)})
    assert result.error is not None and result.error["kind"] == "bad_request"
    message = result.error["message"]
    assert "even without all 3 documents of 'docs' and all 2 history messages" in message
    assert "the budget is 100 (300 context - 200 reserved for the answer)" in message
    needed = int(message.split("needs ")[1].split(" tokens")[0])
    assert needed > 100


async def test_an_openai_model_is_counted_by_estimate_within_max_tokens() -> None:
    models = "models: {big: {provider: openai, model: gpt-test, base_url: 'http://127.0.0.1:9/v1'}}\n"
    plan = rag_flow("{model: big, max_tokens: 100000}", models=models)
    result = await run_flow(plan, {"q": "What is rillflow?", "docs": DOCS[:1]})
    assert result.ok, result.error
    messages = result.outputs["messages"]
    assert result.outputs["tokens"] == PROMPT_OVERHEAD + sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages)


async def test_without_a_budget_the_outputs_are_only_text_and_messages() -> None:
    plan = flow('outputs: {t: "${p.text}"}\nnodes:\n  p: {type: prompt, template: hi}\n')
    assert set(plan.nodes["p"].outputs) == {"text", "messages"}
    with pytest.raises(FlowError, match=r"node 'p' has no output 'trimmed'"):
        flow('outputs: {t: "${p.trimmed}"}\nnodes:\n  p: {type: prompt, template: hi}\n')


# -- the size cap ---------------------------------------------------------------------------------
async def test_max_chars_caps_messages_with_history_and_names_the_size() -> None:
    plan = flow("""
inputs: {history: {type: chat_history}}
outputs: {m: "${p.messages}"}
nodes:
  p: {type: prompt, template: "short", history: "${inputs.history}", max_chars: 100}
""")
    ok = await run_flow(plan, {"history": [{"role": "user", "content": "x" * 90}]})
    assert ok.ok
    result = await run_flow(plan, {"history": [{"role": "user", "content": "x" * 96}]})
    assert result.error is not None and result.error["kind"] == "invalid_output"
    assert result.error["message"] == "prompt 'p' rendered 101 characters in 2 messages; the limit (max_chars) is 100"


async def test_max_chars_caps_a_single_template() -> None:
    plan = flow('outputs: {t: "${p.text}"}\nnodes:\n  p: {type: prompt, template: "{{ \'y\' * 50 }}", max_chars: 49}\n')
    result = await run_flow(plan)
    assert result.error is not None and result.error["message"] == "prompt 'p' rendered 50 characters; the limit (max_chars) is 49"


# -- template files -------------------------------------------------------------------------------
async def test_template_file_is_read_beside_the_flow_not_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "flows" / "qa"
    (home / "prompts").mkdir(parents=True)
    (home / "prompts" / "x.j2").write_text("From the flow's folder: {{ q }}", encoding="utf-8")
    elsewhere = tmp_path / "cwd"
    (elsewhere / "prompts").mkdir(parents=True)
    (elsewhere / "prompts" / "x.j2").write_text("From the working directory: {{ q }}", encoding="utf-8")
    (home / "qa.yaml").write_text("""\
version: 1
name: qa
inputs: {q: {type: string}}
outputs: {text: "${p.text}"}
nodes:
  p: {type: prompt, template_file: prompts/x.j2, vars: {q: "${inputs.q}"}}
""", encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    result = await run_flow(load_flow(Path("..") / "flows" / "qa" / "qa.yaml"), {"q": "hi"})
    assert result.outputs == {"text": "From the flow's folder: hi"}


# -- load-time checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(("budget", "models", "code", "fragment"), [
    ("{max_tokens: 500, trim: doc}", "", "E140", "budget.trim names 'doc', which is not in vars (vars: docs, q); did you mean 'docs'?"),
    ("{model: big}", "models: {big: {provider: openai, model: m}}\n", "E141", "model 'big' does not declare its context size"),
    ("{max_tokens: 300, reserve: 300}", "", "E142", "budget.reserve (300) leaves no room in a context of 300 tokens"),
    ("{model: small, reserve: 1024}", "models: {small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 1024}}\n", "E142", "context of 1024"),
    ("{model: smal}", "models: {small: {provider: llama_cpp, model: gemma3-270m}}\n", "E027", "unknown model 'smal'"),
    ("{reserve: 10}", "", "E060", "give 'model' (a key of the flow's models) or 'max_tokens'"),
])
def test_budget_mistakes_are_reported_at_load_time(budget: str, models: str, code: str, fragment: str) -> None:
    with pytest.raises(FlowError) as info:
        rag_flow(budget, models=models)
    found = [(d.code, d.message) for d in info.value.diagnostics]
    assert any(c == code and fragment in m for c, m in found), found
