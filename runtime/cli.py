"""The `rill` command line. Each command imports what it needs when it runs, so `rill validate`
never pays for the runtime, model backends or the web server."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from rillflow.runtime.cache_cli import add_cache_commands
from rillflow.runtime.import_cli import add_import_commands
from rillflow.runtime.ingest_cli import add_ingest_command
from rillflow.runtime.init_cli import add_init_command
from rillflow.runtime.testing_cli import add_test_commands
from rillflow.runtime.trace_cli import add_trace_commands
from rillflow.ui.keys_cli import add_keys_commands
from rillflow.ui.serve_cli import add_serve_command

app = typer.Typer(
    name="rill",
    help="rillflow: YAML flows for RAG apps, streamed through the graph.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2
add_ingest_command(app)
add_trace_commands(app)
add_cache_commands(app)
add_serve_command(app)
add_keys_commands(app)
add_test_commands(app)
add_init_command(app)
add_import_commands(app)


class Format(str, Enum):
    text = "text"
    json = "json"


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


def flow_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Expand folders into their flow files (``*.yaml``/``*.yml``, not ``*.tests.yaml``)."""
    found: list[Path] = []
    missing: list[str] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml") and not p.name.endswith((".tests.yaml", ".tests.yml"))))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(f"{path}: error: no such file or folder")
    return found, missing


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Flow files, or folders of flows.")],
    format: Annotated[Format, typer.Option("--format", help="text (path:line:col lines) or json (for editors).")] = Format.text,
) -> None:
    """Check flows without running anything: exit 0 when all are valid, 2 when not."""
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.errors import FlowError

    files, missing = flow_files(paths)
    results: list[dict[str, object]] = []
    ok = not missing
    for line in missing:
        typer.echo(line, err=True)
    for path in files:
        try:
            plan = load_flow(path)
            results.append({"path": str(path), "valid": True, "diagnostics": [d.to_json() for d in plan.warnings]})
            if format is Format.text:
                for diag in plan.warnings:
                    typer.echo(str(diag))
                typer.echo(f"{path}: ok ({len(plan.nodes)} nodes)", err=True)
        except FlowError as exc:
            ok = False
            results.append({"path": str(path), "valid": False, "diagnostics": [d.to_json() for d in exc.diagnostics]})
            if format is Format.text:
                for diag in exc.diagnostics:
                    typer.echo(str(diag))
    if format is Format.json:
        typer.echo(json.dumps(results, indent=2))
    if not files and not missing:
        typer.echo("no flow files found", err=True)
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(EXIT_OK if ok else EXIT_INVALID)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the flow format (for editor completion and CI checks)."""
    from rillflow.runtime.schema import flow_json_schema

    typer.echo(json.dumps(flow_json_schema(), indent=2))


@app.command()
def graph(
    flow: Annotated[Path, typer.Argument(help="A flow file.")],
    format: Annotated[GraphFormat, typer.Option("--format", help="mermaid or dot.")] = GraphFormat.mermaid,
) -> None:
    """Print a flow's DAG as Mermaid (default) or Graphviz dot."""
    from rillflow.runtime.graph_export import to_dot, to_mermaid

    plan = _load_or_exit(flow)
    typer.echo(to_mermaid(plan) if format is GraphFormat.mermaid else to_dot(plan), nl=False)


@app.command("run")
def run_flow(
    flow: Annotated[Path, typer.Argument(help="A flow file.")],
    input: Annotated[list[str] | None, typer.Option("--input", "-i", help="An input as key=value (repeatable).")] = None,
    inputs_file: Annotated[Path | None, typer.Option("--inputs", help="A JSON file of inputs.")] = None,
    events: Annotated[bool, typer.Option("--events", help="Print every event as a JSON line instead of the answer.")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="Re-run an earlier run, reusing every node result whose "
                                                                "content key is unchanged (its inputs too, unless given).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache (and no resume checkpoint).")] = False,
    no_trace: Annotated[bool, typer.Option("--no-trace", help="Do not record this run's trace.")] = False,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Run as this tenant (retrieval scope, cache, traces).")] = None,
) -> None:
    """Run a flow: streamed output on stdout as it arrives; exit 0 ok, 1 run failed, 2 invalid flow or inputs.

    The run's trace goes to the local trace store (`rill trace show RUN_ID`) and its node results are
    checkpointed, so a failed or edited flow can be re-run with --resume RUN_ID."""
    import asyncio

    plan = _load_or_exit(flow)
    if no_cache and resume:
        typer.echo("error: --resume reuses cached results: it cannot be combined with --no-cache", err=True)
        raise typer.Exit(EXIT_INVALID)
    cache = None if no_cache else _open_cache(required=resume is not None)
    given = _gather_inputs(plan, input or [], inputs_file)
    if resume is not None:
        assert cache is not None
        resume, earlier = _checkpoint_or_exit(cache, resume, plan.name)
        given = {**earlier["inputs"], **given}
        tenant = tenant if tenant is not None else earlier["tenant"]
    _prepare_or_exit(plan)
    from rillflow.runtime.caching import RunCache

    options = RunOptions(cache=RunCache(cache, checkpoint=True, resume=resume) if cache is not None else None,
                         trace=None if no_trace else _trace_store(), tenant=tenant)
    try:
        code = asyncio.run(_run_then_close(plan, given, events, options))
    except KeyboardInterrupt:
        typer.echo("\ncancelled", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _gather_inputs(plan, pairs: list[str], inputs_file: Path | None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from rillflow.runtime.inputs import coerce_cli_value

    given: dict[str, object] = {}
    if inputs_file is not None:
        try:
            loaded = json.loads(inputs_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            typer.echo(f"{inputs_file}: error: cannot read inputs: {exc}", err=True)
            raise typer.Exit(EXIT_INVALID) from None
        if not isinstance(loaded, dict):
            typer.echo(f"{inputs_file}: error: inputs must be a JSON object", err=True)
            raise typer.Exit(EXIT_INVALID)
        given.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            typer.echo(f"error: --input takes key=value, got '{pair}'", err=True)
            raise typer.Exit(EXIT_INVALID)
        given[key.strip()] = coerce_cli_value(plan.inputs.get(key.strip()), value)
    return given


class RunOptions(NamedTuple):
    cache: Any = None  # a RunCache
    trace: Any = None  # a TraceStore
    tenant: str | None = None


def _open_cache(*, required: bool) -> Any:
    """The cache store; without one a run is only slower, so only --resume (which needs it) stops here."""
    from rillflow.runtime.cache_open import open_cache

    try:
        return open_cache()
    except (ValueError, OSError) as exc:
        if required:
            typer.echo(f"error: cannot open the cache: {exc} (check RILL_CACHE_URL and RILL_STATE_DIR)", err=True)
            raise typer.Exit(EXIT_INVALID) from None
        typer.echo(f"warning: running without a cache: {exc}", err=True)
        return None


def _trace_store() -> Any:
    from rillflow.runtime.trace_store import TraceStore

    try:
        return TraceStore.from_env()
    except (ValueError, OSError) as exc:  # tracing is best-effort: say so, run anyway
        typer.echo(f"warning: traces are off for this run: {exc}", err=True)
        return None


def _checkpoint_or_exit(cache: Any, run_id: str, flow: str) -> tuple[str, dict[str, Any]]:
    """The full run id and the inputs and tenant an earlier run started with."""
    import asyncio

    from rillflow.runtime.caching import load_checkpoint

    full = _full_run_id(run_id)
    earlier = asyncio.run(load_checkpoint(cache, full))
    if earlier is None:
        typer.echo(f"error: no checkpoint for run '{run_id}': it is older than 7 days, ran with --no-cache, or used another "
                   "cache (see `rill trace list` for run ids)", err=True)
        raise typer.Exit(EXIT_INVALID)
    if earlier["flow"] != flow:
        typer.echo(f"error: run '{run_id}' is of flow '{earlier['flow']}', not '{flow}'", err=True)
        raise typer.Exit(EXIT_INVALID)
    return full, earlier


def _full_run_id(run_id: str) -> str:
    """A unique prefix of a run id, as `rill trace list` shows them, expanded through the trace store."""
    if len(run_id) >= 32:
        return run_id
    import sqlite3

    from rillflow.runtime.trace_store import AmbiguousRunId, TraceStore, TraceStoreError

    try:
        found = TraceStore.from_env(export=False).get_run(run_id)
    except AmbiguousRunId as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except (OSError, ValueError, sqlite3.Error, TraceStoreError):  # no readable trace store: the id must be given in full
        return run_id
    return str(found["run_id"]) if found else run_id


async def _run_then_close(plan, given: dict[str, object], as_events: bool, options: RunOptions | None = None) -> int:  # type: ignore[no-untyped-def]
    from rillflow.nodes.llm_remote import close_clients

    options = options or RunOptions()
    try:
        return await _run_and_print(plan, given, as_events, options)
    finally:
        await close_clients()
        if options.cache is not None:
            await options.cache.store.flush()
        if options.trace is not None:
            options.trace.flush()


async def _run_and_print(plan, given: dict[str, object], as_events: bool, options: RunOptions) -> int:  # type: ignore[no-untyped-def]
    from contextlib import ExitStack

    from rillflow.runtime.console import NodeDisplay, stderr_console
    from rillflow.runtime.inputs import InputError
    from rillflow.runtime.scheduler import run

    console = stderr_console()
    live = not as_events and console.is_terminal
    finished = None
    with ExitStack() as stack:
        display = stack.enter_context(NodeDisplay(plan, console)) if live else None
        try:
            async for event in run(plan, given, cache=options.cache, trace=options.trace, tenant=options.tenant):
                if as_events:
                    typer.echo(event.to_json())
                elif display is not None:
                    display.update(event)
                elif event.type == "chunk":
                    sys.stdout.write(event.data["text"])  # a pipe: stream raw, as it arrives
                    sys.stdout.flush()
                if event.terminal:
                    finished = event
        except InputError as exc:
            stack.close()
            for problem in exc.problems:
                typer.echo(f"error: {problem}", err=True)
            return EXIT_INVALID
    if as_events or finished is None:
        return EXIT_OK if finished is None or finished.type == "run_finished" else EXIT_RUN_FAILED
    return _report_end(plan, finished, options, streamed_already=not live)


def _report_end(plan, finished: Any, options: RunOptions, *, streamed_already: bool) -> int:  # type: ignore[no-untyped-def]
    if finished.type == "run_failed":
        err = finished.data["error"]
        typer.echo(f"\nerror: {err['message']} [{err['kind']}]", err=True)
        if options.cache is not None and err["kind"] != "cancelled":
            typer.echo(f"after fixing it: rill run {plan.path} --resume {finished.run_id} (reuses what already ran)", err=True)
        return EXIT_RUN_FAILED
    cached = finished.data.get("cached_answer")
    if cached is not None:
        typer.echo(f"note: every model path failed ({cached['error']['kind']}): this is a cached answer to a similar question "
                   f"(similarity {cached['similarity']:.2f})", err=True)
    _print_outputs(finished.data["outputs"], plan.output_streams, streamed_already=streamed_already)
    return EXIT_OK


def _print_outputs(outputs: dict[str, object], streams: frozenset[str], *, streamed_already: bool) -> None:
    """Streamed outputs as text (unless a pipe already got them chunk by chunk), the rest as JSON."""
    texts = [name for name in outputs if name in streams and isinstance(outputs[name], str)]
    rest = {k: v for k, v in outputs.items() if k not in texts}
    for name in texts:
        typer.echo("" if streamed_already else outputs[name])
    if len(rest) == 1 and not texts and isinstance(next(iter(rest.values())), str):
        typer.echo(next(iter(rest.values())))
    elif rest:
        typer.echo(json.dumps(rest, indent=2, ensure_ascii=False, default=str))


def _prepare_or_exit(plan) -> None:  # type: ignore[no-untyped-def]
    """Open models and collections before the run, so loading time and problems are reported as such."""
    from rillflow.runtime.console import stderr_console
    from rillflow.runtime.prepare import PrepareError, prepare_sync

    console = stderr_console()
    try:
        with console.status(f"loading models and collections of {plan.name}…") if console.is_terminal else _nothing():
            prepare_sync(plan)
    except PrepareError as exc:
        for node, message in exc.problems.items():
            typer.echo(f"{plan.path}: node '{node}': {message}", err=True)
        raise typer.Exit(2) from None


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def _load_or_exit(flow: Path):  # type: ignore[no-untyped-def]
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.errors import FlowError

    try:
        return load_flow(flow)
    except FlowError as exc:
        for diag in exc.diagnostics:
            typer.echo(str(diag), err=True)
        raise typer.Exit(EXIT_INVALID) from None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `rill run ... | head`: the reader left; that is not an error
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
