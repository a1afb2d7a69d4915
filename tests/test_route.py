"""The route node (issue 4, item 10): conditions, the embedding classifier, its events, and branches
chosen downstream with `when` and merged with `??`. Scripted nodes stand in for the models; the
classifier runs on the real packaged embedder (loaded once per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rillflow.nodes.embedder import Embedder
from rillflow.runtime.compiler import load_flow
from rillflow.runtime.errors import FlowError
from rillflow.runtime.prepare import prepare
from tests.helpers import flow, run_flow, types

ROOT = Path(__file__).resolve().parents[1]

CONDITIONS = """
inputs: {n_docs: {type: integer}, question: {type: string}}
outputs: {answer: "${small.text ?? large.text ?? none_found.text}", branch: "${route.branch}"}
nodes:
  route:
    type: route
    conditions:
      - {when: "n_docs == 0", branch: nothing}
      - {when: "question | length > 80 or n_docs > 5", branch: complex}
    vars: {n_docs: "${inputs.n_docs}", question: "${inputs.question}"}
    default: simple
  small: {type: scripted, when: "route.branch == 'simple'", text: "small: ${inputs.question}"}
  large: {type: scripted, when: "route.branch == 'complex'", text: "large: ${inputs.question}"}
  none_found: {type: scripted, when: "route.branch == 'nothing'", text: "I found nothing."}
"""

CLASSIFIER = """
inputs: {question: {type: string}}
outputs: {answer: "${small.text ?? large.text}", branch: "${route.branch}", scores: "${route.scores}"}
nodes:
  route:
    type: route
    text: ${inputs.question}
    examples:
      simple:
        - What time is it?
        - What is the capital of France?
        - How many days are in a week?
        - Who wrote Hamlet?
        - Wie spät ist es?
        - Was ist die Hauptstadt von Frankreich?
        - Wie viele Tage hat eine Woche?
        - Wer hat Hamlet geschrieben?
      complex:
        - Compare the economic policies of Keynes and Hayek and explain their impact on modern central banking.
        - Explain step by step how to design a fault-tolerant distributed database with strong consistency.
        - Analyse the trade-offs between microservices and a monolith for a team of five engineers.
        - Write a detailed plan to migrate a legacy payroll system to the cloud, including risks and costs.
        - Vergleiche die Wirtschaftspolitik von Keynes und Hayek und erkläre ihre Auswirkungen auf die Zentralbanken.
        - Erkläre Schritt für Schritt, wie man eine fehlertolerante verteilte Datenbank entwirft.
        - Analysiere die Vor- und Nachteile von Microservices gegenüber einem Monolithen für ein kleines Team.
        - Schreibe einen detaillierten Plan für die Migration eines alten Lohnsystems in die Cloud mit Risiken und Kosten.
    threshold: THRESHOLD
    default: complex
  small: {type: scripted, when: "route.branch == 'simple'", text: "small model"}
  large: {type: scripted, when: "route.branch == 'complex'", text: "large model"}
"""


def classifier(threshold: float = 0.05) -> Any:
    return flow(CLASSIFIER.replace("THRESHOLD", str(threshold)))


def chosen(result: Any) -> dict[str, Any]:
    events = [e for e in result.events if e.type == "route_chosen"]
    assert len(events) == 1 and events[0].node == "route"
    return dict(events[0].data)


# -- conditions -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_docs", "question", "branch", "reason"), [
    (0, "hi", "nothing", "condition 1 is true: n_docs == 0"),
    (9, "hi", "complex", "condition 2 is true: question | length > 80 or n_docs > 5"),
    (2, "why " * 30, "complex", "condition 2 is true: question | length > 80 or n_docs > 5"),
    (0, "why " * 30, "nothing", "condition 1 is true: n_docs == 0"),  # the first true condition wins
    (2, "hi", "simple", "no condition is true: default"),
])
async def test_conditions_choose_the_first_true_branch_else_the_default(n_docs: int, question: str, branch: str, reason: str) -> None:
    result = await run_flow(flow(CONDITIONS), {"n_docs": n_docs, "question": question})
    assert result.ok, result.error
    assert result.outputs["branch"] == branch
    assert chosen(result) == {"branch": branch, "reason": reason, "scores": {}}


async def test_downstream_when_skips_the_other_branches_and_the_merge_takes_the_one_that_ran() -> None:
    plan = flow(CONDITIONS)
    simple = await run_flow(plan, {"n_docs": 2, "question": "hi"})
    assert simple.outputs["answer"] == "small: hi"
    assert {e.node for e in simple.events if e.type == "node_skipped"} == {"large", "none_found"}
    assert "node_finished" in types(simple, "small") and "node_started" not in types(simple, "large")
    nothing = await run_flow(plan, {"n_docs": 0, "question": "hi"})
    assert nothing.outputs["answer"] == "I found nothing."
    assert {e.node for e in nothing.events if e.type == "node_skipped"} == {"small", "large"}


async def test_the_decision_comes_before_any_branch_starts() -> None:
    result = await run_flow(flow(CONDITIONS), {"n_docs": 9, "question": "hi"})
    kinds = [(e.type, e.node) for e in result.events]
    assert kinds.index(("route_chosen", "route")) < kinds.index(("node_finished", "route")) < kinds.index(("node_started", "large"))


async def test_a_condition_that_fails_names_itself() -> None:
    plan = flow("""
inputs: {doc: {type: object}}
outputs: {b: "${route.branch}"}
nodes:
  route:
    type: route
    conditions: [{when: "doc.score > 0.5", branch: good}]
    vars: {doc: "${inputs.doc}"}
    default: bad
""")
    assert (await run_flow(plan, {"doc": {"score": 0.9}})).outputs == {"b": "good"}
    result = await run_flow(plan, {"doc": {"title": "no score"}})
    assert result.error is not None and result.error["kind"] == "config"
    assert result.error["message"].startswith("route 'route': condition 1 (doc.score > 0.5) failed: UndefinedError")


# -- the classifier -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routed() -> Any:
    return classifier()


@pytest.mark.parametrize(("question", "branch"), [
    ("What is the largest planet?", "simple"),
    ("Who painted the Mona Lisa?", "simple"),
    ("How many legs does a spider have?", "simple"),
    ("Welcher Planet ist der größte?", "simple"),
    ("Wer hat die Mona Lisa gemalt?", "simple"),
    ("Quelle est la capitale de l'Italie ?", "simple"),
    ("Explain the causes of the 2008 financial crisis and evaluate the regulatory responses that followed.", "complex"),
    ("Design a caching strategy for a global e-commerce site and discuss the consistency trade-offs.", "complex"),
    ("Erkläre die Ursachen der Finanzkrise 2008 und bewerte die regulatorischen Reaktionen darauf.", "complex"),
    ("Entwirf eine Caching-Strategie für einen weltweiten Onlineshop und diskutiere die Konsistenz.", "complex"),
    ("Expliquez en détail les avantages et inconvénients de l'énergie nucléaire pour la transition énergétique.", "complex"),
])
async def test_classifier_sends_simple_questions_to_the_small_model_and_complex_ones_to_the_large(routed: Any, question: str, branch: str) -> None:
    result = await run_flow(routed, {"question": question})
    assert result.ok, result.error
    assert result.outputs["branch"] == branch
    assert result.outputs["answer"] == ("small model" if branch == "simple" else "large model")
    other = "large" if branch == "simple" else "small"
    assert "node_skipped" in types(result, other)


async def test_route_event_carries_the_branch_scores_and_nearest_examples(routed: Any) -> None:
    result = await run_flow(routed, {"question": "Wer hat die Mona Lisa gemalt?"})
    data = chosen(result)
    scores = data["scores"]
    assert set(scores) == {"simple", "complex"} and scores == result.outputs["scores"]
    assert data["branch"] == "simple" and scores["simple"] > scores["complex"]
    assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert data["reason"].startswith(f"closest to simple ({scores['simple']:.2f}, next complex {scores['complex']:.2f}); nearest examples: '")
    assert "(simple 0." in data["reason"]
    json.dumps(data)  # the event goes over SSE and into traces as JSON


async def test_below_the_threshold_the_default_branch_is_taken_and_said_so() -> None:
    result = await run_flow(classifier(threshold=0.95), {"question": "Who painted the Mona Lisa?"})
    data = chosen(result)
    assert data["branch"] == "complex" and result.outputs["answer"] == "large model"
    assert data["reason"].startswith("no branch reached the threshold 0.95 (best: simple ")
    assert max(data["scores"].values()) < 0.95


async def test_empty_text_takes_the_default_without_embedding(routed: Any) -> None:
    result = await run_flow(routed, {"question": "   "})
    assert chosen(result) == {"branch": "complex", "reason": "the text is empty: default", "scores": {}}


async def test_examples_are_embedded_once_in_prepare_and_each_run_embeds_only_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded: list[int] = []
    original = Embedder.embed

    def counting(self: Embedder, texts: Any, batch_size: int = 64) -> list[list[float]]:
        embedded.append(len(texts))
        return original(self, texts, batch_size)

    monkeypatch.setattr(Embedder, "embed", counting)
    plan = classifier()
    await prepare(plan)
    assert embedded == [16]
    for question in ("Who wrote Faust?", "Wer schrieb Faust?"):
        assert (await run_flow(plan, {"question": question})).outputs["branch"] == "simple"
    assert embedded == [16, 1, 1]


async def test_the_example_flow_routes_and_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RILL_TEST_BASE_URL": "http://127.0.0.1:9/v1", "RILL_TEST_MODEL": "big", "RILL_TEST_API_KEY": "rk-test-1"}.items():
        monkeypatch.setenv(name, value)
    plan = load_flow(ROOT / "tests" / "flows" / "valid" / "route_models.yaml")
    simple = await run_flow(plan, {"question": "Who painted the Mona Lisa?"})
    assert simple.outputs["route"] == "simple" and simple.outputs["answer"].startswith("small model: ")
    hard = await run_flow(plan, {"question": "Erkläre die Ursachen der Finanzkrise 2008 und bewerte die Reaktionen der Zentralbanken."})
    assert hard.outputs["route"] == "complex" and hard.outputs["answer"].startswith("large model: ")
    assert hard.outputs["why"] == chosen(hard)["reason"]


# -- load-time checks -----------------------------------------------------------------------------
BAD = [
    ("conditions: [{when: 'n ==', branch: a}]\n    vars: {n: 1}\n    default: b", "E130", "condition syntax"),
    ("conditions: [{when: 'count > 2', branch: a}]\n    vars: {cuont: 1}\n    default: b", "E131",
     "condition reads 'count', which is not in vars; did you mean 'cuont'?"),
    ("conditions: [{when: 'inputs.n > 2', branch: a}]\n    default: b", "E131", "conditions read vars, not inputs"),
    ("text: hi\n    examples: {a: [x, y]}\n    default: a", "E132", "at least two branches"),
    ("text: hi\n    examples: {a: [x], b: []}\n    default: a", "E132", "branch 'b' has no examples"),
    ("text: hi\n    examples: {a: [x, '  '], b: [y]}\n    default: a", "E132", "example 2 of branch 'a' is empty"),
    ("text: hi\n    examples: {a: [Who are you?], b: [who  are YOU?]}\n    default: a", "E132", "is in both 'a' and 'b'"),
    ("text: hi\n    examples: {simple: [x], complex: [y]}\n    default: simpel", "E133",
     "default branch 'simpel' has no examples (branches: simple, complex); did you mean 'simple'?"),
    ("text: hi\n    examples: {a: [x], b: [y]}\n    default: a\n    embedder: no-such-model", "E134", "embedder 'no-such-model' is neither"),
    ("text: hi\n    conditions: [{when: 'true', branch: a}]\n    examples: {a: [x], b: [y]}\n    default: a", "E060",
     "give exactly one of 'conditions' or 'examples'"),
    ("examples: {a: [x], b: [y]}\n    default: a", "E060", "needs 'text'"),
    ("conditions: [{when: 'true', branch: Big Model}]\n    default: a", "E060", "should match pattern"),
]


@pytest.mark.parametrize(("body", "code", "fragment"), BAD, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD)])
def test_route_mistakes_are_reported_at_load_time(body: str, code: str, fragment: str) -> None:
    with pytest.raises(FlowError) as info:
        flow(f'outputs: {{b: "${{route.branch}}"}}\nnodes:\n  route:\n    type: route\n    {body}\n')
    found = [(d.code, d.message) for d in info.value.diagnostics]
    assert any(c == code and fragment in m for c, m in found), found


def test_validating_a_routed_flow_loads_no_model_library() -> None:
    """`rill validate` stays fast: numpy, torch, sentence-transformers and llama_cpp load lazily."""
    code = (
        "import sys; from rillflow.runtime.compiler import load_flow; "
        "load_flow('tests/flows/valid/route_models.yaml'); "
        "print(sorted(m for m in ('numpy', 'torch', 'sentence_transformers', 'llama_cpp') if m in sys.modules))"
    )
    env = {"RILL_TEST_BASE_URL": "http://x/v1", "RILL_TEST_MODEL": "m", "RILL_TEST_API_KEY": "rk-test-2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
