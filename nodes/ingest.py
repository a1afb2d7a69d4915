"""Ingestion: files and folders -> passages -> embeddings -> a Qdrant collection, incrementally.

What makes re-ingesting cheap and exact:

* Each file's fingerprint is the SHA-256 of its bytes and the chunking settings; every point of the
  file carries it (``file_hash``). A file whose points all carry its current fingerprint is unchanged
  and costs one hash. A changed file is re-chunked and re-embedded whole; its old points that the new
  chunking does not reproduce are deleted afterwards, so a run cut short leaves old and new points
  side by side (two fingerprints: still "changed" next time) rather than a half-indexed file.
* Point ids are ``uuid5`` over tenant, source, chunk number and the chunk's text hash: the same
  content always lands on the same ids, so upserting it again changes nothing.
* Files under the given roots that the collection holds but the disk no longer has are deleted.
* The collection's version (``VectorStore.record_version``) is a hash of all point ids: it changes
  when, and only when, content does.

Sources are recorded relative to ``base`` (the flow's folder, or the working directory), so a
collection reads the same whichever machine filled it. Embedding runs in a worker thread while the
main thread reads and chunks the next files.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rillflow.nodes.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, FORMATS, check_sizes, split_document
from rillflow.nodes.vectorstore import SHARED, FileState, VectorStore

#: Bump when chunking changes what it makes of the same bytes: every file is then re-embedded once.
CHUNKER_VERSION = 1
POINT_NAMESPACE = uuid.UUID("6b1c5a52-43b4-4d43-9d1b-8a7b1f3e2c10")
BATCH = 64


class Embedder(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> list[list[float]]: ...


class IngestProgress(Protocol):
    def start(self, files: int) -> None: ...
    def advance(self, files: int = 0, chunks: int = 0) -> None: ...
    def stop(self) -> None: ...


@dataclass
class IngestSummary:
    collection: str
    files_seen: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0  # files of a type rillflow does not read
    failed: dict[str, str] = field(default_factory=dict)  # source -> why
    chunks_written: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    version: str = ""
    previous_version: str | None = None

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"collection '{self.collection}': {self.files_seen} files ({self.added} added, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged{failed}); {self.chunks_written} chunks written, {self.chunks_deleted} deleted in "
                f"{self.seconds:.1f} s ({self.chunks_per_second:.0f} chunks/s); version {self.version}")


@dataclass(frozen=True)
class _File:
    path: Path
    source: str
    data: bytes
    file_hash: str


def check_tenant(tenant: str | None) -> None:
    if tenant is None:
        return
    if not tenant or tenant == SHARED or len(tenant) > 128 or not tenant.isprintable():
        raise ValueError(f"tenant {tenant!r} is not valid: use 1-128 printable characters, not '{SHARED}' (which marks shared documents)")


def walk(paths: Sequence[Path]) -> tuple[list[Path], int]:
    """The supported files under ``paths`` (sorted, hidden files and folders left out) and how many
    files of other types were skipped. A missing path raises FileNotFoundError."""
    found: set[Path] = set()
    skipped = 0
    for root in paths:
        if root.is_file():
            candidates: Iterator[Path] = iter([root])
        elif root.is_dir():
            candidates = _walk_dir(root)
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
        for path in candidates:
            if path.suffix.lower() in FORMATS:
                found.add(path.resolve())
            else:
                skipped += 1
    return sorted(found), skipped


def _walk_dir(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder, name)


def source_name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _under(source: str, base: Path, roots: Sequence[Path]) -> bool:
    path = (base / source).resolve()
    return any(path == root or path.is_relative_to(root) for root in roots)


def point_id(tenant: str | None, source: str, index: int, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant or SHARED}\x1f{source}\x1f{index}\x1f{digest}"))


def _fingerprint(data: bytes, chunk_size: int, overlap: int) -> str:
    digest = hashlib.sha256(data)
    digest.update(f"|{chunk_size}|{overlap}|{CHUNKER_VERSION}".encode())
    return digest.hexdigest()[:32]


def ingest(paths: Sequence[Path], store: VectorStore, embedder: Embedder, *, base: Path, tenant: str | None = None,
           chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP, progress: IngestProgress | None = None) -> IngestSummary:
    """Bring ``store`` in line with the files under ``paths`` for ``tenant`` (None: shared documents)."""
    check_tenant(tenant)
    check_sizes(chunk_size, overlap)
    started = time.perf_counter()
    base = base.resolve()
    roots = [p.resolve() for p in paths]
    files, skipped = walk(paths)
    summary = IngestSummary(store.label, files_seen=len(files), skipped=skipped, previous_version=store.version())
    held = store.files(tenant)
    todo: list[_File] = []
    for path in files:
        source = source_name(path, base)
        try:
            data = path.read_bytes()
        except OSError as exc:
            summary.failed[source] = exc.strerror or str(exc)
            continue
        item = _File(path, source, data, _fingerprint(data, chunk_size, overlap))
        old = held.get(source)
        if old is not None and old.hashes == {item.file_hash}:
            summary.unchanged += 1
        else:
            todo.append(item)
    seen = {source_name(p, base) for p in files}
    gone = [s for s in held if s not in seen and _under(s, base, roots)]
    summary.removed = len(gone)
    if progress is not None:
        progress.start(len(files))
        progress.advance(files=len(files) - len(todo))
    try:
        stale = _write(todo, held, store, embedder, tenant, chunk_size, overlap, summary, progress)
    finally:
        if progress is not None:
            progress.stop()
    stale.extend(pid for s in gone for pid in held[s].ids)
    store.delete(stale)
    summary.chunks_deleted = len(stale)
    if summary.chunks_written or stale or summary.previous_version is None:
        summary.version = store.record_version(embedder=embedder.name, updated_at=time.time())
    else:
        summary.version = summary.previous_version
    summary.seconds = time.perf_counter() - started
    return summary


class _Writer:
    """Embeds batches in a worker thread, one batch ahead of the upserts, while the caller chunks."""

    def __init__(self, store: VectorStore, embedder: Embedder, pool: ThreadPoolExecutor, summary: IngestSummary,
                 progress: IngestProgress | None) -> None:
        self._store, self._embedder, self._pool = store, embedder, pool
        self._summary, self._progress = summary, progress
        self._pending: list[tuple[str, str, dict[str, Any]]] = []  # (id, text to embed, payload)
        self._in_flight: deque[tuple[Future[list[list[float]]], list[tuple[str, str, dict[str, Any]]]]] = deque()

    def add(self, points: list[tuple[str, str, dict[str, Any]]]) -> None:
        self._pending.extend(points)
        while len(self._pending) >= BATCH:
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            self._submit(batch)
            self._drain(keep=1)

    def finish(self) -> None:
        if self._pending:
            self._submit(self._pending)
            self._pending = []
        self._drain(keep=0)

    def _submit(self, batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        self._in_flight.append((self._pool.submit(self._embedder.embed, [text for _, text, _ in batch]), batch))

    def _drain(self, keep: int) -> None:
        while len(self._in_flight) > keep:
            future, batch = self._in_flight.popleft()
            vectors = future.result()
            self._store.upsert([(pid, vec, payload) for (pid, _, payload), vec in zip(batch, vectors, strict=True)])
            self._summary.chunks_written += len(batch)
            if self._progress is not None:
                self._progress.advance(chunks=len(batch))


def _write(todo: list[_File], held: dict[str, FileState], store: VectorStore, embedder: Embedder, tenant: str | None, chunk_size: int,
           overlap: int, summary: IngestSummary, progress: IngestProgress | None) -> list[str]:
    """Chunk, embed and upsert every file of ``todo``; return the ids its old versions leave stale."""
    stale: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rill-embed") as pool:
        writer = _Writer(store, embedder, pool, summary, progress)
        for item in todo:
            try:
                points = _points(item, tenant, chunk_size, overlap)
            except ValueError as exc:
                summary.failed[item.source] = str(exc)
                points = None
            old: FileState | None = held.get(item.source)
            if points is not None and old is None:
                summary.added += 1
            elif points is not None and old is not None:
                summary.changed += 1
                fresh = {pid for pid, _, _ in points}
                stale.extend(pid for pid in old.ids if pid not in fresh)
            writer.add(points or [])
            if progress is not None:
                progress.advance(files=1)
        writer.finish()
    return stale


def _points(item: _File, tenant: str | None, chunk_size: int, overlap: int) -> list[tuple[str, str, dict[str, Any]]]:
    doc = split_document(item.path.name, item.data, chunk_size=chunk_size, overlap=overlap)
    points = []
    for index, passage in enumerate(doc.passages):
        payload = {
            "text": passage.text,
            "source": item.source,
            "title": doc.title,
            "heading": passage.heading,
            "lines": [passage.start, passage.end] if doc.unit == "lines" else None,
            "pages": [passage.start, passage.end] if doc.unit == "pages" else None,
            "format": doc.format,
            "chunk": index,
            "file_hash": item.file_hash,
            "tenant": tenant or SHARED,
        }
        # The title and heading path go into the embedding too: a passage under "Descaling" in
        # "Zephyr kettles" is about kettles even when its own text never says so.
        embed_text = "\n".join(part for part in (doc.title, passage.heading, passage.text) if part)
        points.append((point_id(tenant, item.source, index, passage.text), embed_text, payload))
    return points


class RichProgress:
    """A rich progress bar on stderr: files done of total, chunks written and chunks per second."""

    def __init__(self, console: Any = None, description: str = "Ingesting") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
            TextColumn("{task.fields[chunks]} chunks"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self._description = description
        self._task: Any = None
        self._chunks = 0
        self._started = 0.0

    def start(self, files: int) -> None:
        self._started = time.perf_counter()
        self._task = self._progress.add_task(self._description, total=files, chunks=0, rate="")
        self._progress.start()

    def advance(self, files: int = 0, chunks: int = 0) -> None:
        self._chunks += chunks
        elapsed = time.perf_counter() - self._started
        rate = f"{self._chunks / elapsed:.0f} chunks/s" if self._chunks and elapsed > 0 else ""
        self._progress.update(self._task, advance=files, chunks=self._chunks, rate=rate)

    def stop(self) -> None:
        self._progress.stop()
