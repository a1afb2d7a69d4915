"""`rill ingest PATH... --collection NAME`: fill a collection from Markdown, text, HTML and PDF files.

The collection is the flow's (``--flow``: its ``collections:`` entry says which embedder and where
Qdrant keeps it), or given on the command line (``--path`` for a local folder, ``--url`` for a
server, ``--embedder``). Exit codes: 0 ingested, 1 failed (a locked folder, Qdrant down, a file that
could not be read), 2 bad usage (no such path, invalid flow, unknown collection). Errors are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    """Bad usage: reported as one line (an invalid flow: its diagnostics, one per line), exit 2."""

    def __init__(self, message: str, *, diagnostics: bool = False) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics


def add_ingest_command(app: typer.Typer) -> None:
    """Register ``rill ingest`` on the CLI app."""
    app.command("ingest")(ingest)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest (.md, .txt, .html, .pdf; hidden files are skipped).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection: a key of the flow's collections, or a Qdrant name.")],
    flow: Annotated[Path | None, typer.Option("--flow", help="A flow file whose collections: entry describes the collection.")] = None,
    path: Annotated[str | None, typer.Option("--path", help="Local Qdrant storage folder (default .rill/qdrant, or the flow's).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="A Qdrant server instead of a local folder (API key from QDRANT_API_KEY).")] = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help="sentence-transformers model name or folder (default all-MiniLM-L6-v2).")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only runs for this tenant see these documents (default: every run).")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Most characters per passage.")] = 800,
    overlap: Annotated[int, typer.Option("--overlap", help="Characters repeated from the end of one passage at the start of the next.")] = 120,
) -> None:
    """Ingest files into a collection, incrementally: unchanged files are skipped, changed ones re-embedded, removed ones deleted."""
    from rillflow.runtime.errors import NodeError

    store: Any = None
    try:
        spec, label, base = _collection_spec(collection, flow, path, url, embedder)
        summary, store = ingest_paths(paths, spec, label, base, tenant, chunk_size, overlap)
    except _Usage as exc:
        typer.echo(str(exc) if exc.diagnostics else f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except NodeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        typer.echo("\ncancelled", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an unexpected library error: one line, no traceback
        typer.echo(f"error: ingestion failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if store is not None:
            store.close()  # releases a local folder's lock at once
    typer.echo(summary.line())
    for source, why in summary.failed.items():
        typer.echo(f"{source}: error: {why}", err=True)
    raise typer.Exit(EXIT_FAILED if summary.failed else EXIT_OK)


def _collection_spec(collection: str, flow: Path | None, path: str | None, url: str | None, embedder: str | None) -> tuple[Any, str, Path]:
    """(a CollectionResource, the collection's label, the folder sources are relative to)."""
    from rillflow.runtime.spec import CollectionResource, QdrantLocal, QdrantServer

    if path is not None and url is not None:
        raise _Usage("give --path (a local folder) or --url (a server), not both")
    if flow is None:
        qdrant = QdrantServer(url=url, api_key=os.environ.get("QDRANT_API_KEY")) if url else QdrantLocal(path=path or ".rill/qdrant")
        spec = CollectionResource(embedder=embedder or "all-MiniLM-L6-v2", qdrant=qdrant)
        return spec, collection, Path.cwd()
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.errors import FlowError

    try:
        plan = load_flow(flow)
    except FlowError as exc:
        raise _Usage("\n".join(str(d) for d in exc.diagnostics), diagnostics=True) from None
    declared = plan.env.collections
    if collection not in declared:
        known = ", ".join(sorted(declared)) or "none"
        raise _Usage(f"{flow} declares no collection '{collection}' under 'collections:' (declared: {known})")
    spec = declared[collection]
    overrides: dict[str, Any] = {}
    if embedder is not None:
        overrides["embedder"] = embedder
    if path is not None or url is not None:
        overrides["qdrant"] = QdrantLocal(path=path) if path is not None else QdrantServer(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
    return spec.model_copy(update=overrides), collection, Path(plan.env.flow_dir)


def ingest_paths(paths: list[Path], spec: Any, label: str, base: Path, tenant: str | None, chunk_size: int = 800, overlap: int = 120,
                 *, names_from: Path | None = None) -> tuple[Any, Any]:
    """Ingest ``paths`` into the collection ``spec`` describes: (the IngestSummary, the open store: close it).

    ``base`` is the folder the collection's local path is relative to (the flow's); sources are named
    relative to ``names_from`` (default ``base``).

    Raises _Usage for bad arguments (one line for the user), NodeError when Qdrant or the model fails."""
    from rillflow.nodes.chunking import check_sizes
    from rillflow.nodes.ingest import RichProgress, check_tenant, ingest, walk
    from rillflow.nodes.vectorstore import connect

    try:
        check_sizes(chunk_size, overlap)
        check_tenant(tenant)
        walk(paths)  # a missing path is bad usage: say so before loading the embedder
    except (ValueError, FileNotFoundError) as exc:
        raise _Usage(str(exc)) from None
    # Ingestion writes big batches: a longer server timeout than retrieval's fail-fast one.
    store = connect(spec, label=label, flow_dir=str(base), timeout=60)  # a locked folder fails before the slow model load
    try:
        model = _LazyEmbedder(spec.embedder, str(base), store)
        if not store.exists():
            model.load()  # creating the collection needs the vector size
        return ingest(paths, store, model, base=names_from or base, tenant=tenant, chunk_size=chunk_size, overlap=overlap, progress=RichProgress()), store
    except BaseException:
        store.close()
        raise


class _LazyEmbedder:
    """Loads the model (~10 s) only when a file needs embedding, so re-ingesting unchanged files
    takes a second; the collection is checked against the model before anything is written."""

    def __init__(self, name: str, flow_dir: str, store: Any) -> None:
        self.name = name
        self._flow_dir = flow_dir
        self._store = store
        self._model: Any = None

    def load(self) -> Any:
        if self._model is None:
            from rillflow.nodes.embedder import load_embedder

            model = load_embedder(self.name, self._flow_dir)
            self._store.ensure(dim=model.dim, embedder=self.name, create=True)
            self._model = model
        return self._model

    @property
    def dim(self) -> int:
        return int(self.load().dim)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> list[list[float]]:
        return self.load().embed(texts, batch_size)  # type: ignore[no-any-return]
