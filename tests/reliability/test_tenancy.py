"""Tenancy (reliability group 6): two API keys of tenants acme and globex against one real `rill serve`
subprocess. Each test runs one scenario of tests/reliability/tenancy.py and asserts its figure;
`python3 bench/reliability.py --only tenancy` prints the same figures at the report's sizes."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from rillflow.runtime.redact import Redactor
from tests.reliability import tenancy
from tests.reliability.figures import Figure, assert_figures
from tests.reliability.tenancy import Stage

SIZES = tenancy.Sizes.of(bench=False)


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        with tenancy.stage(tmp_path_factory.mktemp("tenancy")) as served:
            yield served


def holds(figure: Figure) -> None:
    assert_figures([figure])


def test_no_tenant_hits_another_tenants_cache_entry_exact_or_semantic_while_its_own_repeats_hit(st: Stage) -> None:
    holds(tenancy.cross_tenant_cache(st, SIZES.cache_trials))


def test_no_question_input_body_or_header_gets_another_tenants_chunks(st: Stage) -> None:
    holds(tenancy.retrieval_isolation(st, SIZES.phrasings))


def test_every_per_run_route_answers_another_tenants_run_exactly_like_an_unknown_id(st: Stage) -> None:
    holds(tenancy.object_isolation(st))


def test_canaries_from_inputs_env_and_errors_never_reach_traces_logs_error_events_or_reports(st: Stage) -> None:
    holds(tenancy.canaries(st, SIZES.canary_rounds))


def test_the_per_run_routes_are_read_from_the_app() -> None:
    """If a route that takes a run id is added, the object scenario covers it without an edit."""
    routes = tenancy.per_run_routes()
    assert ("GET", "/api/runs/{run_id}") in routes and ("POST", "/api/runs/{run_id}/feedback") in routes


def test_measure_runs_every_scenario() -> None:
    source = inspect.getsource(tenancy.measure)
    assert tenancy.SCENARIOS == ("cross_tenant_cache", "retrieval_isolation", "object_isolation", "canaries")
    for name in tenancy.SCENARIOS:
        assert callable(getattr(tenancy, name)) and f"{name}(st" in source, f"measure() does not run {name}"


def test_the_seeded_canaries_are_what_the_redactor_must_catch() -> None:
    """Each kind of canary is one the redaction contract names (a provider key, an AWS key, a bearer
    token, an e-mail, a card, a phone): no figure is won by seeding strings no detector is meant to see."""
    redactor = Redactor(_env=frozenset())
    for label, value in tenancy._canaries("input").items():
        cleaned = redactor.redact_text(f"note: {value} end")
        assert tenancy._needles({label: value})[label] not in cleaned, (label, value, cleaned)


def test_a_failed_case_report_shows_no_env_value_or_credential(tmp_path: Path) -> None:
    """rillflow.runtime.testrun redacts failure messages: the flow's env values and credentials go, the
    test file's own personal data stays readable."""
    import asyncio

    from rillflow.runtime.testfile import load_tests
    from rillflow.runtime.testrun import Options, Runner

    secret, key = "contact-7f3a9c2e51", "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    (tmp_path / "echo.yaml").write_text(
        "version: 1\nname: echo\ninputs: {q: {type: string}}\noutputs: {answer: \"${p.text}\"}\nnodes:\n"
        '  p: {type: prompt, template: "{{ c }} {{ q }}", vars: {c: "${env.ECHO_CONTACT}", q: "${inputs.q}"}}\n')
    (tmp_path / "echo.tests.yaml").write_text(f"cases:\n  - name: c\n    inputs: {{q: 'ana@example.com {key}'}}\n    expect: [{{equals: 'no'}}]\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECHO_CONTACT", secret)
        [result] = asyncio.run(Runner(Options()).run([load_tests(tmp_path / "echo.tests.yaml")]))
    [failure] = result.failures
    assert result.status == "failed" and secret not in failure and key not in failure, failure
    assert "[redacted]" in failure and "[SECRET]" in failure and "ana@example.com" in failure, failure


async def test_an_exception_quoting_secrets_and_personal_data_reaches_error_events_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """rillflow.runtime.scheduler's Run.redact: error events say what the trace says, not what the exception held."""
    from tests.helpers import flow, run_flow

    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.reliability.tenancy.*")
    quoted = tenancy._canaries("error")
    monkeypatch.setenv(tenancy.ERRORS_ENV, " ".join(quoted.values()))
    plan = flow('inputs: {q: {type: string}}\noutputs: {a: "${boom.value}"}\nnodes:\n'
                '  boom: {type: python, function: "tests.reliability.tenancy:explode", args: {text: "${inputs.q}"}, '
                "retry: {attempts: 2, backoff: 1ms, on: [internal]}}\n")
    result = await run_flow(plan, {"q": "a ticket"})
    errors = [e.data for e in result.events if e.type in tenancy.ERROR_EVENTS]
    assert result.status == "failed" and [e.type for e in result.events if e.type in tenancy.ERROR_EVENTS] == ["node_retry", "node_failed", "run_failed"]
    text = str(errors)
    assert "ledger said" in text and "a ticket" in text, "the message still says what failed"
    for label, needle in tenancy._needles(quoted).items():
        assert needle not in text, f"{label} reached an error event: {text}"
