"""`rill eval FLOW DATA`: run a flow over a dataset against its real models and report how it did.

Each row is one live case (inputs from its columns, or its ``inputs`` object), checked against the
``--expect`` file's expectations (``${row.FIELD}`` reads the row: a reference answer, a label) and any
the row carries under ``expect``. The run is saved as JSON (``.rill/evals/ID.json``) so a later run can
be put beside it with ``--baseline ID``: the same metrics side by side, with the change.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rich.markup import escape
from rich.table import Table

from rillflow.runtime.testfile import Case, Expectation, TestCase, TestFile, TestSpec, read_dataset, row_inputs, substitute
from rillflow.runtime.testrun import CaseResult, Options, Runner

_EXPECTATIONS: TypeAdapter[list[Expectation]] = TypeAdapter(list[Expectation])


class EvalError(Exception):
    """The flow, dataset, expectations or baseline cannot be used; ``lines`` say why."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def run_eval(flow: Path, data: Path, expect: Path | None, *, jobs: int, limit: int | None, baseline: str | None, out: Path | None) -> int:
    from rillflow.runtime.testing_cli import EXIT_FAILED, EXIT_OK, report_console

    tests = _cases(flow, data, expect, limit)
    before = load_run(baseline) if baseline else None
    console = report_console()
    started = perf_counter()
    results = asyncio.run(_run(tests, jobs, console))
    record = run_record(tests, data, results, perf_counter() - started)
    path = out or _runs_dir() / f"{record['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    console.print(summary_table(record, before))
    console.print(f"saved eval run {record['id']} to {path}" + (f" (compare later with --baseline {record['id']})" if out is None else ""))
    return EXIT_OK if all(r.status == "passed" for r in results) else EXIT_FAILED


def _cases(flow: Path, data: Path, expect: Path | None, limit: int | None) -> TestFile:
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.errors import FlowError

    try:
        plan = load_flow(flow)
    except FlowError as exc:
        raise EvalError([str(d) for d in exc.diagnostics]) from None
    if not data.is_file() or data.suffix not in (".jsonl", ".csv"):
        raise EvalError([f"{data}: error: the dataset must be an existing .jsonl or .csv file"])
    try:
        rows = list(read_dataset(data))
    except ValueError as exc:
        raise EvalError([str(exc)]) from None
    rows = rows[:limit] if limit else rows
    if not rows:
        raise EvalError([f"{data}: error: the dataset has no rows"])
    shared = load_expectations(expect) if expect else []
    tests = TestFile(data, TestSpec(cases=[Case(name=data.stem)]), plan)
    problems = []
    for number, row in enumerate(rows, 1):
        try:
            own = _EXPECTATIONS.validate_python(row.get("expect") or [])
        except ValidationError as exc:
            problems.append(f"{data}: row {number}: 'expect': {exc.errors()[0]['msg']}")
            continue
        inputs = row_inputs(plan, row)
        name = str(row.get("name") or number)
        expectations = tuple(substitute(e, row) for e in (*shared, *own))
        tests.cases.append(TestCase(name, Case(name=name, live=True), inputs, expectations, row, number))
    if problems:
        raise EvalError(problems)
    return tests


def load_expectations(path: Path) -> list[Expectation]:
    """A YAML list of expectations, with errors at their ``file:line:col``."""
    from rillflow.runtime.errors import FlowError
    from rillflow.runtime.pydantic_errors import map_validation_error
    from rillflow.runtime.validate import Collector
    from rillflow.runtime.yaml_source import load_yaml_file

    try:
        raw, smap = load_yaml_file(path)
    except FlowError as exc:
        raise EvalError([str(d) for d in exc.diagnostics]) from None
    try:
        return _EXPECTATIONS.validate_python(raw)
    except ValidationError as exc:
        out = Collector(smap, raw)
        map_validation_error(exc, (), raw, out, root=list[Expectation])
        raise EvalError([str(d) for d in out.items]) from None


async def _run(tests: TestFile, jobs: int, console: Any) -> list[CaseResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rillflow.runtime.prepare import close_resources

    progress = Progress(TextColumn(f"[bold]rill eval {escape(tests.plan.name)}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("rows", total=len(tests.cases))
    runner = Runner(Options(live=True, jobs=jobs), on_result=lambda _: progress.advance(task))
    with progress:
        try:
            return await runner.run([tests])
        finally:
            await close_resources()


def run_record(tests: TestFile, data: Path, results: list[CaseResult], elapsed: float) -> dict[str, Any]:
    """What a run saves: its metrics and every row's result."""
    checks: dict[str, list[int]] = {}
    for result in results:
        for check in result.checks:
            tally = checks.setdefault(check.label, [0, 0])
            tally[0] += check.passed
            tally[1] += 1
    outcomes = [r.outcome for r in results if r.outcome]
    latencies = [o["latency_s"] for o in outcomes]
    firsts = [o["ttfc_s"] for o in outcomes if o["ttfc_s"] is not None]
    completed = sum(1 for o in outcomes if o["status"] in ("ok", "responded"))
    metrics: dict[str, Any] = {
        "rows": len(results),
        "rows passed": sum(r.status == "passed" for r in results),
        "runs completed": completed,
        "latency p50 (s)": _percentile(latencies, 50), "latency p95 (s)": _percentile(latencies, 95),
        "first chunk p50 (s)": _percentile(firsts, 50), "first chunk p95 (s)": _percentile(firsts, 95),
        "tokens": sum(o["input_tokens"] + o["output_tokens"] for o in outcomes),
        "tokens per row": round(sum(o["input_tokens"] + o["output_tokens"] for o in outcomes) / max(1, len(outcomes)), 1),
        "cost": round(sum(o["cost"] for o in outcomes), 6),
    }
    pass_rates = {label: round(passed / total, 4) for label, (passed, total) in checks.items()}
    stamp = datetime.now(timezone.utc)
    return {"id": stamp.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4], "flow": tests.plan.name, "flow_path": tests.plan.path,
            "data": str(data), "created_at": stamp.isoformat(timespec="seconds"), "duration_s": round(elapsed, 3),
            "metrics": metrics, "pass_rates": pass_rates, "rows": [r.to_json() for r in results]}


def _percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: an observed value, honest on the small samples evals have."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 4)


def summary_table(record: dict[str, Any], before: dict[str, Any] | None) -> Table:
    table = Table(title=f"rill eval {record['flow']} ({record['id']})", title_justify="left")
    table.add_column("metric")
    if before is not None:
        table.add_column(f"baseline {before['id']}", justify="right")
    table.add_column("this run", justify="right")
    if before is not None:
        table.add_column("change", justify="right")
    rows = [(name, value, (before or {}).get("metrics", {}).get(name)) for name, value in record["metrics"].items()]
    rows += [(f"pass rate: {label}", rate, (before or {}).get("pass_rates", {}).get(label)) for label, rate in record["pass_rates"].items()]
    if before is not None:  # an assertion the baseline had and this run lost still shows
        rows += [(f"pass rate: {label}", None, rate) for label, rate in before.get("pass_rates", {}).items() if label not in record["pass_rates"]]
    for name, value, old in rows:
        cells = [escape(name)]
        if before is not None:
            cells.append(_fmt(old))
        cells.append(_fmt(value))
        if before is not None:
            cells.append(_change(old, value))
        table.add_row(*cells)
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _change(old: Any, new: Any) -> str:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return ""
    delta = new - old
    return f"{delta:+.4g}" if delta else "="


def _runs_dir() -> Path:
    from rillflow.runtime.state import state_dir

    return state_dir() / "evals"


def load_run(ref: str) -> dict[str, Any]:
    """An earlier run by its JSON file or its id (looked up in .rill/evals)."""
    path = Path(ref)
    if not path.is_file():
        path = _runs_dir() / f"{ref}.json"
    if not path.is_file():
        known = sorted(p.stem for p in _runs_dir().glob("*.json"))[-5:] if _runs_dir().is_dir() else []
        raise EvalError([f"baseline '{ref}': no such eval run" + (f" (recent: {', '.join(known)})" if known else " (none saved yet)")])
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError([f"baseline '{ref}': cannot read {path}: {exc}"]) from None
    if not isinstance(record, dict) or "metrics" not in record:
        raise EvalError([f"baseline '{ref}': {path} is not a rill eval run"])
    return record
