"""Record and replay against the real local model (gemma3-270m through llama.cpp): a cassette keeps the
call's chunks, pace, usage and cost; replay runs offline; an edited prompt fails with a diff; the judge
assertion's own model call is recorded and replayed too."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from rillflow.nodes.llm import LlmNode
from rillflow.runtime.testfile import load_tests
from rillflow.runtime.testrun import CaseResult, Options, Runner

FLOW = """\
version: 1
name: chat
inputs:
  question: {type: string}
outputs:
  answer: ${answer.text}
models:
  small: {provider: llama_cpp, model: gemma3-270m, n_ctx: 512, temperature: 0, seed: 3, price_per_mtok: {input: 1000, output: 2000}}
nodes:
  prompt: {type: prompt, template: "Answer in one short sentence. Question: {{ q }}", vars: {q: "${inputs.question}"}}
  answer: {type: llm, model: small, prompt: "${prompt.text}", max_tokens: 12}
"""

TESTS = """\
judge:
  model: {provider: llama_cpp, model: gemma3-270m, n_ctx: 1024, temperature: 0, seed: 1}
  max_tokens: 60
cases:
  - name: answers
    inputs: {question: What colour is the sky?}
    expect:
      - terminal: run_finished
      - max_output_tokens: 12
      - max_cost: 1.0
      - judge: The answer is about the sky.
        min_score: 0
  - name: fully overridden
    inputs: {question: hi}
    overrides: {answer: {output: hello}}
    expect:
      - equals: hello
"""


def write(folder: Path, flow: str = FLOW, tests: str = TESTS) -> Path:
    (folder / "chat.yaml").write_text(flow)
    path = folder / "chat.tests.yaml"
    path.write_text(textwrap.dedent(tests))
    return path


def run(path: Path, **options: object) -> list[CaseResult]:
    return asyncio.run(Runner(Options(**options)).run([load_tests(path)]))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cassettes")
    path = write(folder)
    results = run(path, record=True)
    assert [r.status for r in results] == ["passed", "passed"], [r.failures for r in results]
    return folder


def cassette(folder: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "chat.cassettes" / "answers.json").read_text())


def test_record_writes_a_reviewable_cassette_per_case(recorded: Path) -> None:
    data = cassette(recorded)
    assert data["version"] == 1 and data["case"] == "answers" and data["flow"] == "chat"
    answer, judge = data["calls"]
    assert answer["node"] == "answer" and judge["node"] == "rill_judge"
    assert answer["request"]["inputs"]["prompt"] == "Answer in one short sentence. Question: What colour is the sky?"
    assert answer["request"]["model"]["model"] == "gemma3-270m" and "price_per_mtok" not in answer["request"]["model"]
    chunks = [e for e in answer["events"] if e[1] == "c"]
    assert len(chunks) >= 2  # token by token, as the model streamed them
    assert [e[0] for e in answer["events"]] == sorted(e[0] for e in answer["events"])  # times since the call started
    usage = next(e[2] for e in answer["events"] if e[1] == "u")
    assert usage["output_tokens"] >= len(chunks) - 1 and usage["cost"] > 0
    text = (recorded / "chat.cassettes" / "answers.json").read_text()
    assert all(json.loads(line.strip().rstrip(",")) for line in text.splitlines() if line.strip().startswith('[0') or line.strip().startswith('[1'))
    assert not (recorded / "chat.cassettes" / "fully-overridden.json").exists()  # no call, no cassette


def test_replay_is_offline_and_keeps_chunks_pace_usage_and_cost(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("replay touched the real model")

    monkeypatch.setattr(LlmNode, "run", offline)
    monkeypatch.setattr(LlmNode, "prepare", offline)
    from rillflow.runtime.cassette import Cassette
    from rillflow.runtime.sync import collect
    from rillflow.runtime.testrun import case_plan

    tf = load_tests(recorded / "chat.tests.yaml")
    tc = tf.cases[0]
    tape = Cassette.open(recorded / "chat.cassettes" / "answers.json", "replay")
    result = asyncio.run(collect(case_plan(tf.plan, tc, tape), dict(tc.inputs)))
    assert tape.problems == []
    recorded_call = cassette(recorded)["calls"][0]
    assert [e.data["text"] for e in result.events if e.type == "chunk"] == [e[2] for e in recorded_call["events"] if e[1] == "c"]
    first_recorded = next(e[0] for e in recorded_call["events"] if e[1] == "c")
    first_replayed = next(e.ts for e in result.events if e.type == "chunk")
    assert first_replayed >= first_recorded * 0.9  # the recorded pace, not as fast as possible
    finished = next(e for e in result.events if e.type == "node_finished" and e.node == "answer")
    usage = next(e[2] for e in recorded_call["events"] if e[1] == "u")
    assert finished.data["usage"]["output_tokens"] == usage["output_tokens"] and finished.data["usage"]["cost"] == pytest.approx(usage["cost"])
    results = run(recorded / "chat.tests.yaml")
    assert [r.status for r in results] == ["passed", "passed"], [r.failures for r in results]
    assert results[0].mode == "replay"


def test_budgets_fail_on_the_recorded_usage(recorded: Path) -> None:
    path = recorded / "chat.tests.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("max_output_tokens: 12", "max_output_tokens: 1").replace("max_cost: 1.0", "max_cost: 0.000001"))
        [result, _] = run(path)
        messages = [c.message for c in result.checks if not c.passed]
        assert messages[0].startswith("expected ≤ 1 output tokens; actual: ")
        assert messages[1].startswith("expected cost ≤ 1e-06; actual: ")
    finally:
        path.write_text(original)


def test_judge_score_replays_and_fails_below_its_minimum(recorded: Path) -> None:
    verdict = next(e[2]["json"] for e in cassette(recorded)["calls"][1]["events"] if e[1] == "o")
    assert 0 <= verdict["score"] <= 1 and isinstance(verdict["reason"], str)
    path = recorded / "chat.tests.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("min_score: 0\n", "min_score: 1\n") if verdict["score"] < 1 else original)
        [result, _] = run(path)
        judged = next(c for c in result.checks if c.label == "judge")
        if verdict["score"] < 1:
            assert not judged.passed
            assert judged.message == (f"expected a judge score ≥ 1.00 for 'The answer is about the sky.'; "
                                      f"actual: {verdict['score']:.2f} ({verdict['reason']})")
        else:
            assert judged.passed
    finally:
        path.write_text(original)


def test_an_edited_prompt_fails_replay_with_a_diff_until_re_recorded(recorded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "edited"
    folder.mkdir()
    path = write(folder, flow=FLOW.replace("Answer in one short sentence.", "Answer briefly."))
    (folder / "chat.cassettes").mkdir()
    (folder / "chat.cassettes" / "answers.json").write_text((recorded / "chat.cassettes" / "answers.json").read_text())
    [result, _] = run(path)
    assert result.status == "failed"
    problem = result.problems[0]
    assert problem.startswith("node 'answer': the request changed since the cassette was recorded (re-record with `rill test --record`")
    assert "--- recorded\n+++ now" in problem
    assert "-prompt: \"Answer in one short sentence. Question: What colour is the sky?\"" in problem
    assert "+prompt: \"Answer briefly. Question: What colour is the sky?\"" in problem
    [again, _] = run(path, record=True)
    assert again.status == "passed", again.failures
    assert run(path)[0].status == "passed"


def test_a_case_without_its_cassette_says_how_to_record_it(tmp_path: Path) -> None:
    path = write(tmp_path, tests="cases:\n  - {name: new case, inputs: {question: hi}, expect: [{terminal: run_finished}]}\n")
    [result] = run(path)
    assert result.status == "failed"
    assert result.problems == ["node 'answer' calls a model or a store, and there is no cassette new-case.json: "
                               "record one with `rill test --record` (or mark the case live: true)"]
    assert "run_failed" in result.failures[1]


def test_a_corrupt_cassette_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, tests="cases:\n  - {name: c, inputs: {question: hi}}\n")
    (tmp_path / "chat.cassettes").mkdir()
    (tmp_path / "chat.cassettes" / "c.json").write_text("{not json")
    [result] = run(path)
    assert result.status == "error"
    assert result.problems[0].startswith(f"{tmp_path / 'chat.cassettes' / 'c.json'}: cannot read the cassette")
    assert result.problems[0].endswith("re-record it with rill test --record")


REMOTE_FLOW = """\
version: 1
name: chat
inputs:
  question: {type: string}
outputs:
  answer: ${answer.text}
models:
  remote: {provider: openai, base_url: "BASE", model: gemma, temperature: 0, request_timeout: 10s}
nodes:
  answer: {type: llm, model: remote, prompt: "${inputs.question}", max_tokens: 8}
"""


def test_remote_calls_record_against_a_real_server_and_replay_with_it_gone(tmp_path: Path) -> None:
    from tests.test_llm_remote import start_llama_server

    tests = "cases:\n  - {name: remote, inputs: {question: Say hello.}, expect: [{terminal: run_finished}, {ran: answer}]}\n"
    proc, base = start_llama_server()
    try:
        path = write(tmp_path, flow=REMOTE_FLOW.replace("BASE", base), tests=tests)
        [recorded] = run(path, record=True)
        assert recorded.status == "passed", recorded.failures
    finally:
        proc.terminate()
        proc.wait(10)
    call = cassette_of(tmp_path, "remote")["calls"][0]
    assert call["request"]["model"] == {"provider": "openai", "model": "gemma", "temperature": 0.0}  # no base_url, no key
    # the server is gone, and another address would not matter: the cassette answers
    path.with_name("chat.yaml").write_text(REMOTE_FLOW.replace("BASE", "http://127.0.0.1:9/v1"))
    [replayed] = run(path)
    assert replayed.status == "passed", replayed.failures
    assert replayed.outcome is not None and replayed.outcome["output_tokens"] == recorded.outcome["output_tokens"]  # type: ignore[index]


def cassette_of(folder: Path, case: str) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "chat.cassettes" / f"{case}.json").read_text())
