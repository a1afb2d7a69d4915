"""The `rill` command line. Each command imports what it needs when it runs, so `rill validate`
never pays for the runtime, model backends or the web server."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="rill",
    help="rillflow: YAML flows for RAG apps, streamed through the graph.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2


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
