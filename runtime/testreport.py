"""Reports of a `rill test` run: a summary table and failure list for people, JUnit XML for CI servers
(the Surefire/Jenkins ``junit-10.xsd`` shape every CI reads), JSON for scripts."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rillflow.runtime.testrun import CaseResult

MARKS = {"passed": "[green]✓[/]", "failed": "[red]✗[/]", "error": "[red]![/]", "skipped": "[dim]-[/]"}


def result_line(result: CaseResult) -> str:
    """One line per finished case, printed as cases finish."""
    where = f"{Path(result.file).name}::{result.case}"
    return f"{MARKS[result.status]} {escape(where)} [dim]({result.duration:.2f}s, {result.mode})[/]"


def print_summary(console: Console, results: list[CaseResult], elapsed: float) -> None:
    by_file: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_file[result.file].append(result)
    table = Table(title="rill test", title_justify="left")
    for column in ("test file", "flow", "passed", "failed", "errors", "skipped", "time"):
        table.add_column(column, justify="right" if column not in ("test file", "flow") else "left")
    for file, items in by_file.items():
        counts = _counts(items)
        table.add_row(escape(file), escape(items[0].flow), str(counts["passed"]), _red(counts["failed"]), _red(counts["error"]),
                      str(counts["skipped"]), f"{sum(r.duration for r in items):.2f}s")
    console.print(table)
    for result in results:
        if result.status in ("failed", "error"):
            console.print(f"[red]{result.status.upper()}[/] {escape(result.file)}:{result.line} {escape(result.case)}", highlight=False)
            for failure in result.failures:
                console.print("  " + escape(failure).replace("\n", "\n    "), highlight=False)
    counts = _counts(results)
    parts = [f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped") if counts[k]]
    console.print(f"{', '.join(parts) or 'no cases'} in {elapsed:.2f}s", highlight=False)


def _counts(results: list[CaseResult]) -> dict[str, int]:
    counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    for result in results:
        counts[result.status] += 1
    return counts


def _red(n: int) -> str:
    return f"[red]{n}[/]" if n else "0"


def junit_xml(results: list[CaseResult], elapsed: float) -> str:
    """One <testsuite> per test file, one <testcase> per case; failures carry every failed expectation."""
    root = ET.Element("testsuites", name="rill test", time=_time(elapsed))
    by_file: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_file[result.file].append(result)
    totals = dict.fromkeys(("tests", "failures", "errors"), 0)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for file, items in by_file.items():
        counts = _counts(items)
        suite = ET.SubElement(root, "testsuite", name=file, tests=str(len(items)), failures=str(counts["failed"]),
                              errors=str(counts["error"]), skipped=str(counts["skipped"]), time=_time(sum(r.duration for r in items)),
                              timestamp=stamp, hostname=socket.gethostname(), file=file)
        totals["tests"] += len(items)
        totals["failures"] += counts["failed"]
        totals["errors"] += counts["error"]
        for result in items:
            case = ET.SubElement(suite, "testcase", name=result.case, classname=f"{result.flow}.{Path(file).name}", time=_time(result.duration))
            if result.status == "skipped":
                ET.SubElement(case, "skipped", message=result.problems[0] if result.problems else "skipped")
            elif result.status in ("failed", "error"):
                # junit-10.xsd has no <error> element (its "errors" is not what CI servers read): an error is
                # a <failure type="error">, counted under the suite's errors
                element = ET.SubElement(case, "failure", type=result.status, message=result.failures[0].splitlines()[0])
                element.text = "\n".join(result.failures)
            if result.outcome:
                out = ET.SubElement(case, "system-out")
                out.text = json.dumps(result.outcome)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _time(seconds: float) -> str:
    return f"{seconds:.3f}"  # the schema's SUREFIRE_TIME: digits, at most three decimals, no exponent


def json_report(results: list[CaseResult], elapsed: float) -> dict[str, Any]:
    counts = _counts(results)
    return {"summary": {**counts, "total": len(results), "duration_s": round(elapsed, 3)}, "cases": [r.to_json() for r in results]}
