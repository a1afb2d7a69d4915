"""Ingestion into real local Qdrant storage with the real embedder: incremental, idempotent, versioned,
tenant-scoped; the storage folder's lock and ownership rules; `rill ingest` exit codes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rillflow.nodes.embedder import Embedder, load_embedder
from rillflow.nodes.ingest import IngestSummary, RichProgress, ingest
from rillflow.nodes.vectorstore import MARKER, SHARED, VectorStore, content_version, open_collection
from rillflow.runtime.errors import NodeError
from rillflow.runtime.spec import CollectionResource, QdrantLocal, QdrantServer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir())


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("all-MiniLM-L6-v2")  # ~10 s once per process: every test shares it


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(CORPUS, folder)
    return folder


def local_spec(folder: Path) -> CollectionResource:
    return CollectionResource(qdrant=QdrantLocal(path=str(folder)))


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder) -> Iterator[VectorStore]:
    opened = open_collection(local_spec(tmp_path / "qdrant"), label="docs", flow_dir=str(tmp_path), dim=embedder.dim, create=True)
    yield opened
    opened.close()


def run_ingest(paths: list[Path], store: VectorStore, embedder: Embedder, base: Path, **kw: object) -> IngestSummary:
    return ingest(paths, store, embedder, base=base, **kw)  # type: ignore[arg-type]


def sources(store: VectorStore, tenant: str | None = None) -> dict[str, int]:
    return {source: len(state.ids) for source, state in store.files(tenant).items()}


# -- incremental and idempotent ------------------------------------------------------------------
def test_ingesting_the_corpus_writes_every_format_and_reingesting_writes_nothing(tmp_path: Path, docs: Path, store: VectorStore,
                                                                                 embedder: Embedder) -> None:
    first = run_ingest([docs], store, embedder, tmp_path)
    assert (first.files_seen, first.added, first.changed, first.removed, first.unchanged) == (6, 6, 0, 0, 0)
    assert first.chunks_written == store.count() > 6
    assert set(sources(store)) == {f"docs/{name}" for name in CORPUS_FILES}
    assert first.version == store.version() == content_version(store.ids())
    assert first.previous_version == content_version([])

    again = run_ingest([docs], store, embedder, tmp_path)
    assert (again.unchanged, again.added, again.changed, again.removed) == (6, 0, 0, 0)
    assert again.chunks_written == again.chunks_deleted == 0
    assert again.version == first.version


def test_editing_a_file_reembeds_only_that_file_and_changes_the_version(tmp_path: Path, docs: Path, store: VectorStore,
                                                                        embedder: Embedder) -> None:
    first = run_ingest([docs], store, embedder, tmp_path)
    before = sources(store)
    quill = docs / "quillball.md"
    original = quill.read_text()
    quill.write_text(original.replace("scores three points", "scores five points").replace("Fouls\n-----\n", "Penalties\n---------\n"))

    edited = run_ingest([docs], store, embedder, tmp_path)
    assert (edited.changed, edited.unchanged, edited.added, edited.removed) == (1, 5, 0, 0)
    assert edited.chunks_written == before["docs/quillball.md"]  # only that file's passages were embedded
    assert edited.chunks_deleted >= 1  # the passages whose text changed
    assert edited.version != first.version
    texts = [h.payload["text"] for h in store.search(embedder.embed_one("feather strike points"), limit=20)
             if h.payload["source"] == "docs/quillball.md"]
    assert any("five points" in t for t in texts) and not any("three points" in t for t in texts)
    assert {h.payload["heading"] for h in store.search(embedder.embed_one("fouls"), limit=50)} >= {"Quillball Rules > Penalties"}
    assert sources(store) == before  # same number of passages per file, no leftovers

    quill.write_text(original)
    reverted = run_ingest([docs], store, embedder, tmp_path)
    assert reverted.version == first.version  # the version is a function of the content


def test_deleting_a_file_deletes_its_points(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    first = run_ingest([docs], store, embedder, tmp_path)
    moon = sources(store)["docs/moonfruit-farming.md"]
    (docs / "moonfruit-farming.md").unlink()
    after = run_ingest([docs], store, embedder, tmp_path)
    assert (after.removed, after.unchanged, after.chunks_deleted, after.chunks_written) == (1, 5, moon, 0)
    assert "docs/moonfruit-farming.md" not in sources(store)
    assert store.count() == first.chunks_written - moon
    assert after.version != first.version


def test_only_files_under_the_given_roots_are_removed(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    run_ingest([docs / "quillball.md", docs / "zephyr-kettles.md"], store, embedder, tmp_path)
    summary = run_ingest([docs / "quillball.md"], store, embedder, tmp_path)
    assert (summary.unchanged, summary.removed) == (1, 0)
    assert set(sources(store)) == {"docs/quillball.md", "docs/zephyr-kettles.md"}


def test_changing_the_chunk_size_reembeds_everything(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    run_ingest([docs], store, embedder, tmp_path)
    smaller = run_ingest([docs], store, embedder, tmp_path, chunk_size=200, overlap=40)
    assert smaller.changed == 6
    assert store.count() == smaller.chunks_written  # the old passages are all gone
    assert all(len(h.payload["text"]) <= 200 for h in store.search(embedder.embed_one("kettle"), limit=100))


def test_a_file_that_cannot_be_read_is_reported_and_keeps_its_old_points(tmp_path: Path, docs: Path, store: VectorStore,
                                                                          embedder: Embedder) -> None:
    run_ingest([docs], store, embedder, tmp_path)
    held = sources(store)["docs/lantern-protocol.pdf"]
    (docs / "lantern-protocol.pdf").write_bytes(b"%PDF-1.7\ntruncated")
    (docs / "notes.docx").write_bytes(b"not a supported type")
    summary = run_ingest([docs], store, embedder, tmp_path)
    assert list(summary.failed) == ["docs/lantern-protocol.pdf"] and "cannot read this PDF" in summary.failed["docs/lantern-protocol.pdf"]
    assert summary.skipped == 1
    assert sources(store)["docs/lantern-protocol.pdf"] == held
    assert "1 failed" in summary.line()


def test_points_carry_metadata_for_citations(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    run_ingest([docs], store, embedder, tmp_path)
    [hit] = store.search(embedder.embed_one("descale with citric acid"), limit=1)
    p = hit.payload
    assert (p["source"], p["title"], p["heading"], p["format"], p["tenant"]) == (
        "docs/zephyr-kettles.md", "Zephyr Kettles Care Guide", "Zephyr Kettles > Descaling", "markdown", SHARED)
    assert p["lines"] == [9, 15] and p["pages"] is None
    [pdf] = store.search(embedder.embed_one("lighthouse storm lens"), limit=1)
    assert pdf.payload["pages"] == [1, 2] and pdf.payload["lines"] is None


def test_tenant_documents_are_kept_apart(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    run_ingest([docs / "zephyr-kettles.md"], store, embedder, tmp_path, tenant="acme")
    run_ingest([docs / "zephyr-kettles.md"], store, embedder, tmp_path)
    assert sources(store, "acme") == sources(store, None) == {"docs/zephyr-kettles.md": sources(store, "acme")["docs/zephyr-kettles.md"]}
    assert store.count() == 2 * sources(store, "acme")["docs/zephyr-kettles.md"]  # same file, separate points per tenant
    vector = embedder.embed_one("descaling")
    assert {h.payload["tenant"] for h in store.search(vector, limit=50, tenant="acme")} == {"acme", SHARED}
    assert {h.payload["tenant"] for h in store.search(vector, limit=50, tenant="globex")} == {SHARED}
    assert {h.payload["tenant"] for h in store.search(vector, limit=50)} == {SHARED}
    with pytest.raises(ValueError, match="not valid"):
        run_ingest([docs], store, embedder, tmp_path, tenant=SHARED)


def test_progress_bar_reports_files_chunks_and_rate(tmp_path: Path, docs: Path, store: VectorStore, embedder: Embedder) -> None:
    from rich.console import Console

    out = io.StringIO()
    summary = run_ingest([docs], store, embedder, tmp_path, progress=RichProgress(Console(file=out, width=150, force_terminal=False)))
    text = out.getvalue()
    assert "6/6 files" in text
    assert f"{summary.chunks_written} chunks" in text
    assert "chunks/s" in text


# -- the storage folder --------------------------------------------------------------------------
def test_storage_folder_is_created_private_and_marked(tmp_path: Path, store: VectorStore) -> None:
    folder = tmp_path / "qdrant"
    assert (folder / MARKER).is_file()
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_folder_rillflow_did_not_create_is_never_opened(tmp_path: Path, embedder: Embedder) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "storage.sqlite").write_bytes(b"pickles")
    with pytest.raises(NodeError, match=r"was not created by rillflow .*pickle"):
        open_collection(local_spec(foreign), label="docs", flow_dir=str(tmp_path), dim=embedder.dim, create=True)


def test_a_folder_others_can_write_is_refused(tmp_path: Path, embedder: Embedder) -> None:
    opened = open_collection(local_spec(tmp_path / "q"), label="docs", flow_dir=str(tmp_path), dim=embedder.dim, create=True)
    opened.close()
    (tmp_path / "q").chmod(0o777)
    with pytest.raises(NodeError, match=r"writable by other users .*chmod 700"):
        open_collection(local_spec(tmp_path / "q"), label="docs", flow_dir=str(tmp_path), dim=embedder.dim)


HOLD = """
import sys
from rillflow.nodes.vectorstore import open_collection
from rillflow.runtime.spec import CollectionResource, QdrantLocal
store = open_collection(CollectionResource(qdrant=QdrantLocal(path=sys.argv[1])), label="docs", flow_dir=".", dim=384, create=True)
print("holding", flush=True)
sys.stdin.readline()
store.close()
"""


@pytest.fixture
def held_folder(tmp_path: Path) -> Iterator[Path]:
    """A storage folder that another process has open, as `rill serve` would."""
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        yield folder
    finally:
        holder.communicate("\n", timeout=30)


def test_a_folder_locked_by_another_process_is_a_config_error_naming_the_lock(held_folder: Path, embedder: Embedder) -> None:
    with pytest.raises(NodeError) as err:
        open_collection(local_spec(held_folder), label="docs", flow_dir=".", dim=embedder.dim)
    message = err.value.message
    assert err.value.kind == "config"
    assert str(held_folder) in message and str(held_folder / ".lock") in message
    assert "rill serve" in message and "rill ingest" in message and "url:" in message
    assert "held by pid" in message  # the holder wrote who it is


def test_a_holder_file_left_by_a_dead_process_names_nobody(tmp_path: Path) -> None:
    import json

    from rillflow.nodes.vectorstore import HOLDER, locked_message

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (tmp_path / HOLDER).write_text(json.dumps({"pid": int(dead.stdout), "command": "rill serve old.yaml"}))
    message = locked_message(tmp_path)
    assert "held by" not in message and "old.yaml" not in message
    assert message.startswith(f"Qdrant storage folder {tmp_path} is locked by another process: its lock file")


def test_an_unreachable_server_fails_fast_with_a_connection_error(embedder: Embedder) -> None:
    spec = CollectionResource(qdrant=QdrantServer(url="http://127.0.0.1:9"))
    start = time.perf_counter()
    with pytest.raises(NodeError, match=r"Qdrant at http://127.0.0.1:9 is unreachable") as err:
        open_collection(spec, label="docs", flow_dir=".", dim=embedder.dim)
    assert err.value.kind == "connection"
    assert time.perf_counter() - start < 5


# -- `rill ingest` -----------------------------------------------------------------------------
def rill(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from rillflow.runtime.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, "COLUMNS": "150"})


def test_rill_ingest_uses_the_flows_collection_and_prints_a_summary(tmp_path: Path, docs: Path) -> None:
    (tmp_path / "qa.yaml").write_text(
        "version: 1\nname: qa\ncollections:\n  kb: {qdrant: {path: store}}\noutputs: {x: \"${s.found}\"}\n"
        "nodes:\n  s: {type: retrieve, collection: kb, query: hi}\n")
    start = time.perf_counter()
    done = rill("ingest", "docs", "--collection", "kb", "--flow", "qa.yaml", cwd=tmp_path)
    first_s = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("collection 'kb': 6 files (6 added, 0 changed, 0 removed, 0 unchanged)")
    assert "6/6 files" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "store" / MARKER).exists()  # the flow's path, relative to the flow's folder
    start = time.perf_counter()
    again = rill("ingest", "docs", "-c", "kb", "--flow", "qa.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "0 chunks written" in again.stdout and "6 unchanged" in again.stdout
    assert time.perf_counter() - start < first_s / 2  # nothing to embed: the model is never loaded


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "-c", "kb"], "nope: no such file or folder"),
    (["docs", "-c", "kb", "--path", "a", "--url", "http://x"], "not both"),
    (["docs", "-c", "kb", "--chunk-size", "50"], "too small"),
    (["docs", "-c", "kb", "--tenant", "*"], "tenant '*' is not valid"),
    (["docs", "-c", "other", "--flow", "qa.yaml"], "declares no collection 'other' under 'collections:' (declared: kb)"),
    (["docs", "--flow", "qa.yaml"], "Missing option '--collection'"),
    (["docs", "-c", "kb", "--flow", "broken.yaml"], "broken.yaml:2:7: error: 'name'"),
])
def test_rill_ingest_bad_usage_exits_2_with_one_line(tmp_path: Path, docs: Path, args: list[str], message: str) -> None:
    (tmp_path / "qa.yaml").write_text("version: 1\nname: qa\ncollections:\n  kb: {}\noutputs: {x: \"${s.found}\"}\n"
                                      "nodes:\n  s: {type: retrieve, collection: kb, query: hi}\n")
    (tmp_path / "broken.yaml").write_text("version: 1\nname: Bad Name\noutputs: {}\nnodes: {}\n")
    done = rill("ingest", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.replace("│", " ").split())  # typer draws its own usage errors in a box
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".rill").exists()  # nothing was opened


def test_rill_ingest_into_a_locked_folder_exits_1_naming_the_lock(held_folder: Path, docs: Path) -> None:
    done = rill("ingest", str(docs), "-c", "kb", "--path", str(held_folder), cwd=docs.parent)
    assert done.returncode == 1
    assert done.stderr.startswith("error: Qdrant storage folder") and str(held_folder / ".lock") in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_rill_ingest_checks_the_collection_against_the_model_before_writing(tmp_path: Path, docs: Path) -> None:
    store = open_collection(local_spec(tmp_path / "q"), label="kb", flow_dir=str(tmp_path), dim=8, create=True)
    store.close()
    done = rill("ingest", "docs", "-c", "kb", "--path", "q", cwd=tmp_path)
    assert done.returncode == 1
    assert "holds 8-dimensional vectors but embedder 'all-MiniLM-L6-v2' makes 384" in done.stderr
    reopened = open_collection(local_spec(tmp_path / "q"), label="kb", flow_dir=str(tmp_path), dim=8)
    try:
        assert reopened.count() == 0  # nothing was written
    finally:
        reopened.close()
