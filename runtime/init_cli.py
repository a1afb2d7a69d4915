"""`rill init NAME`: scaffold a project that passes `rill validate` and `rill test` as created, offline.

The templates are the files under ``runtime/scaffold/`` (package data), a working project in their
own right whose flow is named ``rill-init-name``: that placeholder is a valid flow name, so the
templates validate as they are, and it is spelled so that no ordinary word contains it. Rendering
replaces it with NAME in paths and contents, and turns a leading ``dot-`` into ``.`` (a ``.gitignore``
inside the package would apply to this repository, and setuptools' globs skip dotfiles).

Exit codes: 0 created, 2 bad usage (an invalid NAME, a non-empty folder without ``--force``, a
folder that cannot be written). Every check runs before the first file is written.
"""

from __future__ import annotations

import re
import shlex
import sys
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rillflow.runtime.spec import FLOW_NAME_PATTERN

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:  # importlib.abc.Traversable warns (deprecated) from 3.12 on, and pytest turns warnings into errors
        from importlib.abc import Traversable

EXIT_USAGE = 2
PLACEHOLDER = "rill-init-name"
_DOT_PREFIX = "dot-"


class InitError(Exception):
    """What stops `rill init`, worded as what the user should do; reported as one line, exit 2."""


def add_init_command(app: typer.Typer) -> None:
    """Register ``rill init`` on the CLI app."""
    app.command("init")(init)


def init(
    name: Annotated[str, typer.Argument(help="The project's flow name: a lower-case letter, then letters, digits, '-' or '_'.")],
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to create the project (default: a folder named NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder, replacing files of the same names.")] = False,
) -> None:
    """Create a project: a RAG flow over a corpus/ folder, its tests, a sample corpus, .env.example and a README."""
    target = directory if directory is not None else Path(name)
    try:
        rendered = render(name)
        written = write_project(target, rendered, force=force)
    except InitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"created {target}/")
    for path in written:
        typer.echo(f"  {path.relative_to(target).as_posix()}")
    typer.echo("\nnext:")
    if target.resolve() != Path.cwd().resolve():
        typer.echo(f"  cd {shlex.quote(str(target))}")
    typer.echo("  rill validate flows/        # check the flow\n"
               "  rill test flows/            # run its tests (the live case loads the local model: about a minute)\n"
               "  rill serve flows/           # the web chat at http://127.0.0.1:8000/\n"
               "then put your own documents in corpus/ (see README.md).")


def check_name(name: str) -> None:
    """Raise InitError unless ``name`` is a valid flow name (it also names the files and the folder)."""
    if re.fullmatch(FLOW_NAME_PATTERN, name) is None:
        suggestion = _suggest(name)
        hint = f"; try '{suggestion}'" if suggestion else ""
        raise InitError(f"'{name}' is not a valid project name: use a lower-case letter, then lower-case letters, digits, "
                        f"'-' or '_' (64 characters at most){hint}")


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")[:64]
    return cleaned if re.fullmatch(FLOW_NAME_PATTERN, cleaned) else ""


def render(name: str) -> dict[Path, str]:
    """The project's files for ``name``: relative path -> text."""
    check_name(name)
    root = files("rillflow.runtime").joinpath("scaffold")
    out: dict[Path, str] = {}
    for relative, template in _walk(root, Path()):
        parts = [_target_name(part, name) for part in relative.parts]
        out[Path(*parts)] = template.read_text(encoding="utf-8").replace(PLACEHOLDER, name)
    if not out:
        raise InitError("the project templates are missing from this installation of rillflow: reinstall it")
    return dict(sorted(out.items()))


def _walk(folder: Traversable, relative: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            found.extend(_walk(entry, relative / entry.name))
        elif entry.is_file():
            found.append((relative / entry.name, entry))
    return found


def _target_name(part: str, name: str) -> str:
    if part.startswith(_DOT_PREFIX):
        part = "." + part[len(_DOT_PREFIX):]
    return part.replace(PLACEHOLDER, name)


def write_project(target: Path, rendered: dict[Path, str], *, force: bool) -> list[Path]:
    """Write ``rendered`` under ``target``; refuse a non-empty folder unless ``force``. Returns the paths written."""
    if target.exists() and not target.is_dir():
        raise InitError(f"{target} exists and is not a folder: choose another name or --dir")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise InitError(f"{target} is not empty: choose another folder with --dir, or pass --force to write into it "
                        "(files of the same names are replaced, others are kept)")
    for relative in rendered:  # checked before anything is written, so a refusal leaves no half-made project
        if (target / relative).is_dir():
            raise InitError(f"{target / relative} is a folder, where `rill init` writes a file: move it away first")
    written: list[Path] = []
    try:
        for relative, text in rendered.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise InitError(f"cannot write {exc.filename or target}: {exc.strerror or exc}") from None
    return written
