"""`rill test` (flow test cases, replayed offline from cassettes) and `rill eval` (a flow over a dataset)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rillflow.runtime.testfile import TestFile
    from rillflow.runtime.testrun import CaseResult, Options

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_test_commands(app: typer.Typer) -> None:
    app.command("test")(test)
    app.command("eval")(evaluate)


def test(
    paths: Annotated[list[Path] | None, typer.Argument(help="Test files (*.tests.yaml) or folders of them (default: flows/).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Cases run at once.")] = 1,
    keyword: Annotated[str | None, typer.Option("-k", help="Run only cases whose 'FILE::CASE' name contains this (case-insensitive).")] = None,
    record: Annotated[bool, typer.Option("--record", help="Run the real models and collections and (re)write the cassettes.")] = False,
    live: Annotated[bool, typer.Option("--live", help="Run every case against the real models; read and write no cassette.")] = False,
    speed: Annotated[float, typer.Option("--speed", min=0.01, help="Replay pace: 2 replays recorded calls twice as fast.")] = 1.0,
    junit_xml: Annotated[Path | None, typer.Option("--junit-xml", help="Write a JUnit XML report here (for CI).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write a JSON report here.")] = None,
) -> None:
    """Run flow test cases: exit 0 when all pass, 1 when some fail, 2 when a test or flow file is invalid."""
    from rillflow.runtime.errors import FlowError
    from rillflow.runtime.testfile import load_tests, test_files
    from rillflow.runtime.testrun import Options

    if record and live:
        typer.echo("error: --record and --live exclude each other (live runs write no cassette)", err=True)
        raise typer.Exit(EXIT_INVALID)
    files, missing = test_files(paths or [Path("flows")])
    invalid = bool(missing)
    for line in missing:
        typer.echo(line, err=True)
    loaded: list[TestFile] = []
    for path in files:
        try:
            loaded.append(load_tests(path))
        except FlowError as exc:
            invalid = True
            for diag in exc.diagnostics:
                typer.echo(str(diag), err=True)
    if not files and not missing:
        typer.echo("no test files (*.tests.yaml) found", err=True)
        raise typer.Exit(EXIT_INVALID)
    options = Options(record=record, live=live, speed=speed, jobs=jobs, keyword=keyword)
    console = report_console()
    started = perf_counter()
    results = asyncio.run(_run(loaded, options, console))
    elapsed = perf_counter() - started
    _reports(results, elapsed, console, junit_xml, json_out)
    if invalid:
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(EXIT_FAILED if any(r.status in ("failed", "error") for r in results) else EXIT_OK)


def report_console() -> Console:
    """Reports go to stdout (CI logs keep them); a terminal gets colour and a live progress bar."""
    import sys

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


async def _run(files: list[TestFile], options: Options, console: Console) -> list[CaseResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rillflow.runtime.prepare import close_resources
    from rillflow.runtime.testreport import result_line
    from rillflow.runtime.testrun import Runner

    progress = Progress(TextColumn("[bold]rill test"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    runner = Runner(options)
    task = progress.add_task("cases", total=len(runner.selected(files)))

    def on_result(result: CaseResult) -> None:
        progress.console.print(result_line(result), highlight=False)
        progress.advance(task)

    runner.on_result = on_result
    with progress:
        try:
            return await runner.run(files)
        finally:
            await close_resources()  # the next process (a server, another test run) can open the models and Qdrant folders


def _reports(results: list[CaseResult], elapsed: float, console: Console, junit_xml: Path | None, json_out: Path | None) -> None:
    from rillflow.runtime.testreport import json_report, print_summary
    from rillflow.runtime.testreport import junit_xml as to_junit

    print_summary(console, results, elapsed)
    if junit_xml is not None:
        junit_xml.parent.mkdir(parents=True, exist_ok=True)
        junit_xml.write_text(to_junit(results, elapsed), encoding="utf-8")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(json_report(results, elapsed), indent=2, ensure_ascii=False), encoding="utf-8")


def evaluate(
    flow: Annotated[Path, typer.Argument(help="A flow file.")],
    data: Annotated[Path, typer.Argument(help="A .jsonl or .csv dataset: one run per row (inputs from its columns).")],
    expect: Annotated[Path | None, typer.Option("--expect", help="A YAML list of expectations checked on every row (${row.FIELD} reads the row).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=256, help="Rows run at once.")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N rows.")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="An earlier eval run (its id or JSON file) to compare with.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to save this run (default: .rill/evals/ID.json).")] = None,
) -> None:
    """Run a flow over a dataset: pass rate per assertion, latency p50/p95, tokens and cost, optionally against a baseline."""
    from rillflow.runtime.evaluate import EvalError, run_eval

    try:
        code = run_eval(flow, data, expect, jobs=jobs, limit=limit, baseline=baseline, out=out)
    except EvalError as exc:
        for line in exc.lines:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_INVALID) from None
    raise typer.Exit(code)
