"""`rill import promptflow PATH`: convert a promptflow DAG flow into a rillflow flow file.

Exit codes: 0 converted (even with notes: read the report), 1 nothing written (the output exists
without --force, or cannot be written), 2 the input is not a readable promptflow flow. Errors are
one line on stderr, with the position in the promptflow files where there is one; never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_OK, EXIT_NOT_WRITTEN, EXIT_INVALID = 0, 1, 2

import_app = typer.Typer(name="import", help="Convert flows from other tools into rillflow flows.", no_args_is_help=True)


def add_import_commands(app: typer.Typer) -> None:
    """Register the `import` command group on the CLI."""
    app.add_typer(import_app)


@import_app.command("promptflow")
def promptflow(
    path: Annotated[Path, typer.Argument(help="A promptflow flow.dag.yaml, or the folder holding it.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The flow file to write (default: NAME.yaml beside the flow's folder).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")] = False,
) -> None:
    """Convert a promptflow DAG flow: print the written path and what was (not) converted."""
    from rillflow.runtime.import_promptflow import PromptflowError, convert, default_output, find_flow_file

    try:
        flow_file = find_flow_file(path)
        conversion = convert(flow_file)
    except PromptflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    target = out if out is not None else default_output(flow_file, conversion.name)
    if target.exists() and not force:
        typer.echo(f"error: {target} exists: pass --force to overwrite it, or --out FILE to write elsewhere", err=True)
        raise typer.Exit(EXIT_NOT_WRITTEN)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(conversion.text, encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot write {target}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_NOT_WRITTEN) from None
    typer.echo(f"wrote {target}")
    for line in conversion.report.lines():
        typer.echo(line)
    typer.echo(f"next: rill validate {target}")
