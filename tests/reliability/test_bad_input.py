"""Group 3, bad input (tests/reliability/bad_input.py): each scenario's figure must hold; the regressions
it found are pinned by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability import bad_input
from tests.reliability.bad_input import Hostile, chat_server, hostile_catalogue, send_hostile
from tests.reliability.figures import Figure, assert_figures


def test_fuzzed_flow_and_test_files_load_or_fail_with_positioned_errors_only() -> None:
    assert_figures([bad_input.fuzzed_files()])


def test_hostile_requests_get_specific_json_4xx_and_never_reach_the_model() -> None:
    assert_figures([bad_input.hostile_requests()])


def test_template_payloads_in_user_input_documents_and_model_output_render_verbatim() -> None:
    assert_figures([bad_input.template_injection()])


def test_hostile_model_output_runs_no_script_and_fetches_nothing_in_the_browser() -> None:
    assert_figures([bad_input.browser_payloads()])


def test_measure_runs_every_scenario_of_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    scenarios = {name for name, fn in inspect.getmembers(bad_input, inspect.isfunction)
                 if fn.__module__ == bad_input.__name__ and inspect.signature(fn).return_annotation == "Figure"}
    assert scenarios == {fn.__name__ for fn in bad_input.SCENARIOS}, "a scenario is missing from SCENARIOS (so from measure)"
    called: list[tuple[str, bool]] = []

    def stub(name: str) -> Callable[[bool], Figure]:
        def scenario(bench: bool) -> Figure:
            called.append((name, bench))
            return Figure("g", name, "v", True)
        return scenario

    names = [fn.__name__ for fn in bad_input.SCENARIOS]
    monkeypatch.setattr(bad_input, "SCENARIOS", [stub(name) for name in names])
    assert [f.name for f in bad_input.measure(bench=True)] == names
    assert called == [(name, True) for name in names]


# ---- regressions the hostile requests found ----------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with chat_server(tmp_path_factory.mktemp("bad-input")) as live:
        yield live.url


REGRESSIONS = {
    # a "\ud800" escape is valid JSON but no text: the run started, then the answer, the SSE stream and
    # the trace failed to encode it (500 / a cut stream, after the model ran)
    "lone surrogate escape", "lone surrogate message",
    # json.loads reads NaN and Infinity, which the answer could not encode back; 5000 digits raised a bare ValueError (500)
    "NaN", "Infinity temperature", "5000-digit number",
    # "stream": "no" or a nested object was truthy: a stream started instead of a 422
    "stream as text", "900 nested objects as stream",
    # a text part's object was passed through str() into the prompt
    "content part text as an object",
    # Starlette's own body limit answered a declared Content-Length over the limit in plain text, not JSON
    "1 MB question", "1 MB message",
    # an invisible character in a flow name was invisible in the 404's message too
    "tag characters in a flow name", "bidi override in the model name",
}


@pytest.mark.parametrize("case", [c for c in hostile_catalogue() if c.name in REGRESSIONS], ids=lambda c: f"{c.name} {c.path}")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_that_used_to_fail_late_is_now_a_specific_4xx(served: str, case: Hostile, stream: bool) -> None:
    with httpx.Client(timeout=60) as client:
        assert send_hostile(client, served, case, stream) == []
        assert client.get(f"{served}/healthz").json() == {"status": "ok"}


def test_every_regression_names_a_catalogued_request() -> None:
    assert {c.name for c in hostile_catalogue()} >= REGRESSIONS


def test_the_seed_test_files_of_the_fuzzer_are_valid(tmp_path: Path) -> None:
    from rillflow.runtime.testfile import load_tests

    loaded = [load_tests(path) for path in bad_input.write_seeds(tmp_path)]
    assert [c.name for c in loaded[1].cases] == ["falls back once", "from rows[1]", "from rows[2]"]
