"""`rill cache stats` and `rill cache clear`: what the node-result cache holds and how often it hits.

The cache is the one ``RILL_CACHE_URL`` names (default: SQLite in the state folder), or ``--url``.
Exit codes: 0 done, 1 failed (the cache unreachable or unreadable; clearing everything declined),
2 bad usage (a URL of no accepted form). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

cache_app = typer.Typer(name="cache", help="Inspect and clear the node-result cache.", no_args_is_help=True)

UrlOption = Annotated[str | None, typer.Option("--url", help="The cache: redis://host:port/db or sqlite:///path (default RILL_CACHE_URL, else .rill/cache.db).")]


def add_cache_commands(app: typer.Typer) -> None:
    """Register the `cache` command group on the CLI."""
    app.add_typer(cache_app)


@cache_app.command("stats")
def stats(
    flow: Annotated[str | None, typer.Option("--flow", help="Only this flow's nodes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of per-node rows instead of a table.")] = False,
    url: UrlOption = None,
) -> None:
    """Entries, size, hits, misses and hit rate per flow and node."""
    with _store(url) as store:
        rows = [] if store is None else store.stats(flow)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_table(rows, _label(url))


@cache_app.command("clear")
def clear(
    flow: Annotated[str | None, typer.Option("--flow", help="Only this flow's entries.")] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node's entries (of every flow unless --flow).")] = None,
    url: UrlOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Clear everything without asking.")] = False,
) -> None:
    """Delete cached results of a flow, a node, or (after confirmation) all of them."""
    label = _label(url)
    if flow is None and node is None and not yes and not typer.confirm(f"Clear every entry of the cache at {label}?"):
        typer.echo("nothing cleared", err=True)
        raise typer.Exit(EXIT_FAILED)
    with _store(url) as store:
        removed = 0 if store is None else store.clear(flow, node)
    what = " of ".join(part for part in (f"node '{node}'" if node else "", f"flow '{flow}'" if flow else "") if part)
    typer.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}{' of ' + what if what else ''} from {label}")


@contextmanager
def _store(url: str | None) -> Iterator[Any]:
    """The store, closed afterwards; None when a SQLite file does not exist yet (nothing cached, nothing created)."""
    from rillflow.runtime.cache_open import open_cache, sqlite_path
    from rillflow.runtime.cache_store import log

    store = None
    quiet, log.disabled = log.disabled, True  # the store's warnings would repeat the one-line error below
    try:
        resolved = _resolve(url)
        path = sqlite_path(resolved)
        if path is None or path.exists():
            store = open_cache(resolved)
        yield store
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (OSError, RuntimeError) as exc:  # ConnectionError from Redis, a damaged or unreadable SQLite file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:  # sqlite3.DatabaseError ("file is not a database") and other library errors: one line
        typer.echo(f"error: the cache at {_label(url)} failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if store is not None:
            store.close()
        log.disabled = quiet


def _resolve(url: str | None) -> str:
    from rillflow.runtime.state import cache_url

    return url or cache_url()


def _label(url: str | None) -> str:
    from rillflow.runtime.cache_redis import redact

    return redact(_resolve(url))


def human(size: int) -> str:
    """Bytes as 512 B, 3.4 KiB, 12.0 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _print_table(rows: list[dict[str, Any]], label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cache at {label}", title_justify="left")
    for name in ("flow", "node"):
        table.add_column(name)
    for name in ("entries", "size", "hits", "misses", "hit rate", "corrupt"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row["flow"], row["node"], *_cells(row))
    total = {key: sum(r[key] for r in rows) for key in ("entries", "bytes", "hits", "misses", "corrupt")}
    looked = total["hits"] + total["misses"]
    total["hit_rate"] = total["hits"] / looked if looked else None
    table.add_section()
    table.add_row("total", "", *_cells(total), style="bold")
    Console(soft_wrap=True).print(table)


def _cells(row: dict[str, Any]) -> list[str]:
    rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
    return [str(row["entries"]), human(row["bytes"]), str(row["hits"]), str(row["misses"]), rate, str(row["corrupt"])]
