"""Faults at every model call (tests/reliability/model_faults.py): one test per injection position runs
that position's row of the fault matrix against a real misbehaving server and asserts every figure;
regression tests pin the runtime bugs the matrix found."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from rillflow.runtime.sync import RunResult
from tests.helpers import flow, run_flow, types
from tests.reliability.figures import assert_figures
from tests.reliability.model_faults import (
    DEADLINE_S,
    EXPECTED,
    FAULTS,
    MARGIN_S,
    POSITIONS,
    Cell,
    figures,
    measure,
    run_cells,
)


def by_fault(cells: list[Cell]) -> dict[str, Cell]:
    return {c.fault: c for c in cells}


async def test_faults_at_the_primary_model_call_are_retried_or_fall_back_as_documented(tmp_path: Path) -> None:
    cells = await run_cells(("primary",), workdir=tmp_path)
    assert_figures(figures(cells))
    cell = by_fault(cells)
    hang = cell["hang"].to_fallback_s
    assert hang is not None and DEADLINE_S <= hang <= DEADLINE_S + MARGIN_S, f"a hang fell back {hang} s after its last attempt began"
    quick = cell["429 Retry-After 600 s"].to_fallback_s
    assert quick is not None and quick < MARGIN_S, f"a Retry-After of 600 s must fall back at once, not after {quick} s"
    assert cell["500 twice, then ok"].to_fallback_s is None, "a call that recovers within its retries never falls back"


async def test_faults_in_the_fallback_itself_end_in_one_clean_on_fail_answer(tmp_path: Path) -> None:
    cells = await run_cells(("fallback",), workdir=tmp_path)
    assert_figures(figures(cells))
    for cell in cells:  # the primary's 400 is never retried: the stand-in starts at once whatever it then meets
        assert cell.to_fallback_s is not None and cell.to_fallback_s < MARGIN_S, f"{cell.fault}: stand-in began after {cell.to_fallback_s} s"


async def test_faults_in_map_items_are_retried_per_item_and_skip_cleanly(tmp_path: Path) -> None:
    assert_figures(figures(await run_cells(("map",), workdir=tmp_path)))


async def test_faults_in_a_structured_output_repair_call_retry_the_node_then_fall_back(tmp_path: Path) -> None:
    assert_figures(figures(await run_cells(("repair",), workdir=tmp_path)))


def test_the_matrix_has_an_expectation_for_every_fault_kind_at_every_position() -> None:
    assert POSITIONS == ("primary", "fallback", "map", "repair")
    for position in POSITIONS:
        assert list(EXPECTED[position]) == list(FAULTS), f"position {position} lacks or reorders fault kinds"


def test_measure_runs_every_cell_and_reports_every_figure(monkeypatch) -> None:
    from tests.reliability import model_faults

    seen: dict[str, object] = {}

    async def fake_run_cells(positions=POSITIONS, repeats=1, workdir=None):
        seen.update(positions=positions, repeats=repeats)
        return [Cell(p, f) for p in positions for f in FAULTS]

    monkeypatch.setattr(model_faults, "run_cells", fake_run_cells)
    found = measure()
    assert seen == {"positions": POSITIONS, "repeats": 1}
    assert [f.name for f in found] == ["expected outcome", "terminal events", "attempt spans", "cache", "leaked tasks",
                                       "client text", "time to fallback"]
    assert found[0].value.startswith("44/44 ")
    assert not found[-1].ok, "no timed fallback means the time-to-fallback figure cannot hold"
    measure(bench=True)
    assert seen["repeats"] == 5


def test_a_cell_that_falls_short_fails_its_figure_with_the_reason() -> None:
    good = Cell("primary", "500")
    bad = Cell("primary", "hang", leaked=1)
    bad.fail("tasks", "1 task outlived the run")
    bad.fail("spans", "node answer: the trace records 2 model calls, the server counted 3")
    found = {f.name: f for f in figures([good, bad])}
    assert not found["leaked tasks"].ok and "primary/hang: 1 task outlived the run" in found["leaked tasks"].failures
    assert not found["attempt spans"].ok and found["attempt spans"].value.startswith("1/2 ")
    assert found["terminal events"].ok and found["terminal events"].value.startswith("2/2 ")


# -- regressions the matrix found ----------------------------------------------------------------
def client_text(result: RunResult, output: str = "answer") -> str:
    """The documented client rule: concatenate the output's chunks, drop what a retract withdraws."""
    text = ""
    for e in result.events:
        if e.type == "chunk" and e.data["output"] == output:
            text += e.data["text"]
        elif e.type == "retract":
            text = text[: max(0, len(text) - e.data["chars"])]
    return text


async def test_on_fail_respond_after_a_partial_stream_retracts_the_partial_text_first() -> None:
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "one two three", fail_attempts: [1], fail_after: 2, on_fail: {respond: "Sorry."}}
""")
    result = await run_flow(plan)
    assert result.status == "responded" and result.outputs["answer"] == "Sorry."
    retract = next(e for e in result.events if e.type == "retract")
    assert retract.node == "a" and retract.data == {"reason": "fallback", "check": None, "chars": len("one two ")}
    assert client_text(result) == "Sorry.", "the partial text was glued before the on_fail answer"


async def test_a_retract_never_withdraws_text_an_earlier_retract_already_withdrew() -> None:
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "aaa bbb ccc", fail_attempts: [1], fail_after: 1, fallback: b, on_fail: {respond: "Sorry."}}
  b: {type: scripted, text: "xx yy zz", fail_attempts: [1], fail_after: 2, on_fail: skip}
""")
    result = await run_flow(plan)
    assert result.status == "responded"
    assert [(e.node, e.data["chars"]) for e in result.events if e.type == "retract"] == [("a", len("aaa ")), ("a", len("xx yy "))]
    assert client_text(result) == "Sorry."


async def test_a_map_item_whose_stream_broke_is_retried_because_no_consumer_saw_its_chunks() -> None:
    plan = flow("""
outputs: {answer: "${a.text}"}
nodes:
  a: {type: scripted, text: "${item} two three", fail_attempts: [1], fail_after: 2, retry: {attempts: 2, backoff: 1ms},
      map: {over: [x, y]}}
""")
    result = await run_flow(plan)
    assert result.ok, result.error
    assert result.outputs["answer"] == ["x two three", "y two three"]
    assert sorted(e.data["index"] for e in result.events if e.type == "node_retry") == [0, 1]
    assert "node_failed" not in types(result, "a")


def test_preparing_a_remote_model_imports_its_client_before_any_call_starts_its_deadline(tmp_path: Path) -> None:
    # The openai import takes ~1 s on 2 cores: paid inside the first call, it timed out a 1 s deadline.
    script = textwrap.dedent("""
        import sys
        from rillflow.runtime.compiler import load_flow_text
        from rillflow.runtime.prepare import prepare_sync
        plan = load_flow_text('''version: 1
        name: t
        models: {m: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: x}}
        outputs: {a: "${n.text}"}
        nodes:
          n: {type: llm, model: m, prompt: hi}
        ''')
        assert "openai" not in sys.modules, "loading a flow must stay import-light"
        prepare_sync(plan)
        print("openai" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", "prepare() left the client import to the first call"
