"""`rill trace list | show | feedback | prune`: read the trace store from the command line.

``--db PATH`` (before the command) names the SQLite file; the default is RILL_TRACE_DB, else
``traces.db`` in the state folder. Exit codes: 0 ok, 1 no such run (or an unreadable store),
2 bad usage (an ambiguous run-id prefix, a bad setting). Errors are one line on stderr, never a
traceback. Text from traces is printed as plain text, never as rich markup: ``[EMAIL]`` stays literal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

if TYPE_CHECKING:
    from rillflow.runtime.trace_store import TraceStore

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
BAR = 30  # characters of a span's timeline bar
STATUS_STYLE = {"ok": "green", "responded": "green", "failed": "red", "error": "red", "cancelled": "yellow", "skipped": "dim"}
T = TypeVar("T")

trace_app = typer.Typer(name="trace", help="Inspect recorded runs: list, show one as a waterfall, give feedback, prune.",
                        no_args_is_help=True, add_completion=False)


def add_trace_commands(app: Any) -> None:
    """Register the `trace` command group on the CLI."""
    app.add_typer(trace_app, name="trace")


@trace_app.callback()
def _group(ctx: typer.Context,
           db: Annotated[Path | None, typer.Option("--db", help="The trace store (default: RILL_TRACE_DB, else .rill/traces.db).")] = None) -> None:
    """Inspect recorded runs."""
    ctx.obj = db


@trace_app.command("list")
def list_runs(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option("--flow", help="Only runs of this flow.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only runs with this status: ok, responded, failed, cancelled.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most runs shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Recent runs, newest first."""
    runs = _with_store(ctx, lambda store: store.list_runs(limit=limit, flow=flow, status=status))
    if as_json:
        typer.echo(json.dumps(runs, indent=2, ensure_ascii=False))
        return
    if not runs:
        typer.echo("no runs recorded" + (" matching the filters" if flow or status else ""))
        return
    table = Table(box=None, header_style="bold")
    for name in ("run", "when", "flow", "status", "duration", "TTFT", "tokens in/out", "cost", "cache", "error"):
        table.add_column(name, justify="right" if name in ("duration", "TTFT", "tokens in/out", "cost", "cache") else "left")
    for run in runs:
        table.add_row(Text(run["run_id"][:12]), Text(_when(run["started_at"])), Text(run["flow"]), _status(run["status"]),
                      Text(_ms(run["duration_ms"])), Text(_ms(run["ttft_ms"])),
                      Text(f"{run['input_tokens'] or 0}/{run['output_tokens'] or 0}"), Text(_cost(run["cost"])),
                      Text(str(run["cache_hits"] or 0)), Text(run["error_kind"] or "", style="red"))
    _console().print(table)


@trace_app.command("show")
def show(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of 6+ characters.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the run, spans and feedback as JSON.")] = False) -> None:
    """One run: totals, then its spans as a waterfall, then feedback."""
    run = _with_store(ctx, lambda store: store.get_run(run_id))
    if run is None:
        _not_found(ctx, run_id)
    if as_json:
        typer.echo(json.dumps(run, indent=2, ensure_ascii=False))
        return
    console = _console()
    for line in _header(run):
        console.print(line)
    console.print(_waterfall(run))
    for fb in run["feedback"]:
        mark = Text("+1", style="green") if fb["score"] > 0 else Text("-1", style="red")
        console.print(Text.assemble("feedback ", mark, f"  {_when(fb['created'])}", f"  {fb['comment']}" if fb["comment"] else ""))


@trace_app.command("feedback")
def feedback(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of 6+ characters.")],
    up: Annotated[bool, typer.Option("--up", help="The answer was good.")] = False,
    down: Annotated[bool, typer.Option("--down", help="The answer was bad.")] = False,
    comment: Annotated[str | None, typer.Option("--comment", help="Why (redacted, at most 2000 characters).")] = None,
) -> None:
    """Record a thumbs up or down on a run."""
    if up == down:
        _fail(EXIT_USAGE, "give exactly one of --up or --down")
    if not _with_store(ctx, lambda store: store.add_feedback(run_id, 1 if up else -1, comment)):
        _not_found(ctx, run_id)
    typer.echo(f"recorded {'+1' if up else '-1'} on run {run_id}")


@trace_app.command("prune")
def prune(ctx: typer.Context) -> None:
    """Delete runs past RILL_TRACE_RETENTION or beyond RILL_TRACE_MAX_RUNS now."""
    removed = _with_store(ctx, lambda store: store.prune())
    typer.echo(f"removed {removed} run{'' if removed == 1 else 's'}")


# -- plumbing --------------------------------------------------------------------------------------


def _with_store(ctx: typer.Context, action: Callable[[TraceStore], T]) -> T:
    """Run ``action`` on the store; every failure becomes one line and an exit code."""
    from rillflow.runtime.trace_store import AmbiguousRunId, TraceStore, TraceStoreError

    try:
        store = TraceStore.from_env(ctx.obj, export=False)
    except ValueError as exc:  # a bad RILL_TRACE_* setting
        _fail(EXIT_USAGE, str(exc))
    try:
        with store:
            return action(store)
    except AmbiguousRunId as exc:
        _fail(EXIT_USAGE, str(exc))
    except (TraceStoreError, OSError) as exc:
        _fail(EXIT_NOT_FOUND, str(exc))
    except Exception as exc:  # a bug: still one line
        _fail(EXIT_NOT_FOUND, f"trace store failed: {type(exc).__name__}: {exc}")


def _not_found(ctx: typer.Context, run_id: str) -> NoReturn:
    from rillflow.runtime.state import trace_db_path
    from rillflow.runtime.trace_store import MIN_PREFIX

    short = f" (a prefix needs at least {MIN_PREFIX} characters)" if len(run_id) < MIN_PREFIX else ""
    _fail(EXIT_NOT_FOUND, f"no run '{run_id}'{short} in {ctx.obj or trace_db_path()}; `rill trace list` shows recent runs")


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _console() -> Console:
    # Not a terminal (a pipe, grep, tests): never wrap, a span stays on one line.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


# -- show ------------------------------------------------------------------------------------------


def _header(run: dict[str, Any]) -> list[Text]:
    lines = [
        Text.assemble(("run ", "bold"), run["run_id"], "  ", ("flow ", "bold"), run["flow"], "  ", _status(run["status"]),
                      f"  tenant {run['tenant']}" if run["tenant"] else ""),
        Text(f"trace id {run['trace_id']}  started {_when(run['started_at'])}"),
        Text(f"duration {_ms(run['duration_ms'])} · TTFT {_ms(run['ttft_ms'])} · tokens {run['input_tokens'] or 0} in / "
             f"{run['output_tokens'] or 0} out · cost {_cost(run['cost'])} · cache hits {run['cache_hits'] or 0} · "
             f"{run['span_count']} spans"),
    ]
    if run["error_kind"] or run["error_message"]:
        lines.append(Text(f"error [{run['error_kind'] or '?'}] {run['error_message'] or ''}", style="red"))
    for name in ("inputs", "outputs"):
        if run[name] is not None:
            lines.append(Text(f"{name} {_short(run[name], 200)}", style="dim"))
    return lines


def _waterfall(run: dict[str, Any]) -> Tree:
    spans = run["spans"]
    total = max([run["duration_ms"] or 0.0, *(s["end_ms"] or s["start_ms"] for s in spans)]) or 1.0
    attempts: dict[str, int] = {}
    for span in spans:
        attempts[span["node"]] = max(attempts.get(span["node"], 0), span["attempt"] or 1)
    width = max((len(s["node"]) for s in spans), default=4)
    type_width = max((len(s["node_type"] or "") for s in spans), default=4)
    tree = Tree(Text.assemble((f"{run['flow']} ", "bold"), _status(run["status"]), f"  {_ms(run['duration_ms'])}"))
    for span in spans:
        line = Text.assemble(f"{span['node']:<{width}}  ", (f"{span['node_type'] or '':<{type_width}}", "cyan"), "  ",
                             _status(span["status"], 9), " ", _bar(span, total), " ", f"{_ms(_duration(span)):>9}")
        n = attempts[span["node"]]
        if n > 1:
            label = f"retry {span['attempt']}/{n}" if span["attempt"] > 1 else f"attempt 1/{n}"
            line.append(f"  {label}", style="yellow")
        for mark, style in _marks(span["attributes"]):
            line.append("  ")
            line.append(mark, style=style)
        branch = tree.add(line)
        for event in span["events"]:
            data = f" {_short(event['data'], 100)}" if event.get("data") else ""
            branch.add(Text(f"at {_ms(event['time_ms'])}: {event['name']}{data}", style="dim"))
    return tree


def _bar(span: dict[str, Any], total: float) -> Text:
    start = min(BAR - 1, int(span["start_ms"] / total * BAR))
    end = span["end_ms"] if span["end_ms"] is not None else span["start_ms"]
    stop = max(start + 1, min(BAR, round(end / total * BAR)))
    style = STATUS_STYLE.get(span["status"], "")
    return Text.assemble("|", " " * start, ("█" * (stop - start), style), " " * (BAR - stop), "|")


def _marks(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """What is worth a glance, in reading order: model, timing, tokens, cost, cache, fallback, guardrail, error."""
    marks: list[tuple[str, str]] = []

    def add(key: str, text: Callable[[Any], str], style: str = "") -> None:
        if attrs.get(key) not in (None, "", False, 0, []):
            marks.append((text(attrs[key]), style))

    add("gen_ai.request.model", str, "cyan")
    add("rill.queue_ms", lambda v: f"queued {_ms(v)}", "dim")
    add("rill.ttft_ms", lambda v: f"TTFT {_ms(v)}")
    if "gen_ai.usage.input_tokens" in attrs or "gen_ai.usage.output_tokens" in attrs:
        marks.append((f"tokens {attrs.get('gen_ai.usage.input_tokens') or 0}/{attrs.get('gen_ai.usage.output_tokens') or 0}", ""))
    add("rill.cost_usd", _cost)
    if attrs.get("rill.cache.hit"):
        detail = ", ".join(x for x in (attrs.get("rill.cache.tier"), _similarity(attrs.get("rill.cache.similarity"))) if x)
        marks.append((f"cache hit ({detail})" if detail else "cache hit", "magenta"))
    add("rill.fallback.to", lambda v: f"fallback to {v}", "yellow")
    add("rill.retry.delay_s", lambda v: f"backoff {float(v):.1f}s", "yellow")
    add("rill.retracted_chars", lambda v: f"retracted {v} chars", "yellow")
    add("rill.guardrail.verdicts", _verdicts, "yellow")
    add("rill.skip.reason", lambda v: f"skipped: {v}", "dim")
    if attrs.get("error.type") or attrs.get("rill.error.message"):
        marks.append((f"{attrs.get('error.type') or 'error'}: {attrs.get('rill.error.message') or ''}".rstrip(": "), "red"))
    return marks


def _verdicts(verdicts: Any) -> str:
    if not isinstance(verdicts, list):
        return f"guardrail {verdicts}"
    parts = [f"{v.get('check', '?')}→{v.get('action', '?')}" if isinstance(v, dict) else str(v) for v in verdicts]
    return "guardrail " + ", ".join(parts)


def _similarity(value: Any) -> str | None:
    return f"similarity {float(value):.2f}" if isinstance(value, (int, float)) else None


def _duration(span: dict[str, Any]) -> float | None:
    given = span["attributes"].get("rill.duration_ms")
    if isinstance(given, (int, float)):
        return float(given)
    return None if span["end_ms"] is None else span["end_ms"] - span["start_ms"]


# -- formatting ------------------------------------------------------------------------------------


def _status(status: str | None, width: int = 0) -> Text:
    return Text(f"{status or '?':<{width}}", style=STATUS_STYLE.get(status or "", ""))


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _cost(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"  # a cheap local call still shows


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
