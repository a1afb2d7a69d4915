"""The `retrieve` node on a real local Qdrant collection filled from tests/corpus with the real embedder:
ranking, citations, progress, thresholds, filters, tenant isolation, on_empty, and start-up errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rillflow.nodes.embedder import Embedder, load_embedder
from rillflow.nodes.ingest import ingest
from rillflow.nodes.vectorstore import open_collection
from rillflow.runtime.errors import FlowError
from rillflow.runtime.prepare import PrepareError, prepare_sync
from rillflow.runtime.scheduler import run
from rillflow.runtime.spec import CollectionResource, QdrantLocal
from rillflow.runtime.sync import RunResult
from tests.helpers import flow, run_flow, types

CORPUS = Path(__file__).resolve().parent / "corpus"
ACME_NOTE = "# Project Nightjar\n\nProject Nightjar is the secret acme rocket programme. Its budget is 42 million crowns.\n"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[Path]:
    """A storage folder holding the corpus (shared) and one document of tenant acme."""
    root = tmp_path_factory.mktemp("kb")
    shutil.copytree(CORPUS, root / "docs")
    (root / "acme").mkdir()
    (root / "acme" / "nightjar.md").write_text(ACME_NOTE)
    store = open_collection(CollectionResource(qdrant=QdrantLocal(path=str(root / "qdrant"))), label="docs", flow_dir=str(root),
                            dim=embedder.dim, create=True)
    ingest([root / "docs"], store, embedder, base=root)
    ingest([root / "acme"], store, embedder, base=root, tenant="acme")
    yield root / "qdrant"
    store.close()


def qa_flow(storage: Path, search: str = "", extra_nodes: str = "", outputs: str = "") -> Any:
    return flow(f"""\
inputs:
  question: {{type: string}}
  source: {{type: string, default: docs/quillball.md}}
collections:
  docs: {{qdrant: {{path: "{storage}"}}}}
outputs:
  answer: ${{prompt.text}}
  documents: ${{search.documents}}
  citations: ${{search.citations}}
  found: ${{search.found}}
{outputs}
nodes:
  search:
    type: retrieve
    collection: docs
    query: ${{inputs.question}}
{search}
  prompt:
    type: prompt
    template: "Answer from the passages, citing them.\\n\\n{{{{ context }}}}\\n\\nQuestion: {{{{ question }}}}"
    vars: {{context: "${{search.context}}", question: "${{inputs.question}}"}}
{extra_nodes}""")


async def ask(plan: Any, question: str, tenant: str | None = None) -> RunResult:
    events = [e async for e in run(plan, {"question": question}, tenant=tenant)]
    last = events[-1]
    if last.type == "run_finished":
        return RunResult(last.data["status"], last.data["outputs"], events)
    return RunResult("failed", {}, events, last.data["error"])


# -- ranking and outputs -------------------------------------------------------------------------
@pytest.mark.parametrize(("question", "source"), [
    ("How often should I descale my kettle?", "docs/zephyr-kettles.md"),
    ("How many players are on a quillball team?", "docs/quillball.md"),
    ("When should moonfruit be picked?", "docs/moonfruit-farming.md"),
    ("What is the name of the sourdough starter?", "docs/orbital-bakery.txt"),
    ("Can I take flash photos of the glowing crystals?", "docs/glimmerstone-museum.html"),
    ("What does the lighthouse keeper do at a shift handover?", "docs/lantern-protocol.pdf"),
])
async def test_the_document_about_the_topic_ranks_first(kb: Path, question: str, source: str) -> None:
    result = await run_flow(qa_flow(kb), {"question": question})
    assert result.ok, result.error
    assert result.outputs["documents"][0]["source"] == source


async def test_documents_context_and_citations_feed_a_prompt(kb: Path) -> None:
    result = await run_flow(qa_flow(kb, "    top_k: 3"), {"question": "What does a blinking amber light mean on my kettle?"})
    docs = result.outputs["documents"]
    assert len(docs) == 3 and result.outputs["found"] is True
    first = docs[0]
    assert set(first) == {"id", "text", "score", "source", "title", "heading", "lines", "pages", "citation"}
    assert (first["heading"], first["lines"], first["citation"]) == ("Zephyr Kettles > The amber light", [17, 20], "[1]")
    assert [d["citation"] for d in docs] == ["[1]", "[2]", "[3]"]
    assert docs[0]["score"] >= docs[1]["score"] >= docs[2]["score"]
    label = "[1] Zephyr Kettles Care Guide > Zephyr Kettles > The amber light (docs/zephyr-kettles.md, lines 17-20)"
    assert result.outputs["citations"][0]["label"] == label
    assert f"{label}\n{first['text']}" in result.outputs["answer"]  # the numbered context reached the prompt
    assert "A blinking amber light means the base is not seated." in result.outputs["answer"]


async def test_pdf_passages_cite_pages(kb: Path) -> None:
    result = await run_flow(qa_flow(kb, "    top_k: 1"), {"question": "storm lens fog horn"})
    [doc] = result.outputs["documents"]
    assert doc["pages"] == [1, 2] and doc["lines"] is None
    assert result.outputs["citations"][0]["label"] == "[1] The Lantern Protocol (docs/lantern-protocol.pdf, pp. 1-2)"


async def test_progress_events_report_the_search_steps(kb: Path) -> None:
    result = await run_flow(qa_flow(kb), {"question": "quillball fouls"})
    progress = [e.data for e in result.events if e.type == "node_progress" and e.node == "search"]
    assert [(p["done"], p["total"]) for p in progress] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert {p["message"] for p in progress[:3]} == {"Searching knowledge base…"}
    assert progress[-1]["message"] == "Found 4 passages"


# -- thresholds, filters, empty results ----------------------------------------------------------
async def test_score_threshold_leaves_out_weak_passages(kb: Path) -> None:
    loose = await run_flow(qa_flow(kb, "    top_k: 20"), {"question": "descaling a kettle with citric acid"})
    strict = await run_flow(qa_flow(kb, "    top_k: 20\n    score_threshold: 0.4"), {"question": "descaling a kettle with citric acid"})
    scores = [d["score"] for d in loose.outputs["documents"]]
    assert min(scores) < 0.4 <= max(scores)
    assert [d["id"] for d in strict.outputs["documents"]] == [d["id"] for d in loose.outputs["documents"] if d["score"] >= 0.4]


async def test_nothing_above_the_threshold_is_found_false_not_an_error(kb: Path) -> None:
    plan = qa_flow(kb, "    score_threshold: 0.95", extra_nodes="""\
  none:
    type: static
    value: "I could not find that in the documents."
    when: not search.found
""", outputs="  fallback: ${none.value}")
    result = await run_flow(plan, {"question": "What is the capital of Mars?"})
    assert result.status == "ok"
    assert (result.outputs["found"], result.outputs["documents"], result.outputs["citations"]) == (False, [], [])
    assert result.outputs["fallback"] == "I could not find that in the documents."  # the on_empty branch ran


async def test_on_empty_fail_hands_the_run_to_on_fail_respond(kb: Path) -> None:
    plan = qa_flow(kb, """\
    score_threshold: 0.95
    on_empty: fail
    on_fail: {respond: "Sorry, the knowledge base has nothing on that."}""")
    result = await run_flow(plan, {"question": "What is the capital of Mars?"})
    assert result.status == "responded"
    assert result.outputs["answer"] == "Sorry, the knowledge base has nothing on that."
    [failed] = [e for e in result.events if e.type == "node_failed" and e.node == "search"]
    assert failed.data["error"]["kind"] == "empty"


async def test_on_empty_fail_without_a_policy_fails_the_run_with_kind_empty(kb: Path) -> None:
    result = await run_flow(qa_flow(kb, "    score_threshold: 0.95\n    on_empty: fail"), {"question": "capital of Mars"})
    assert result.status == "failed"
    assert result.error is not None and result.error["kind"] == "empty"
    assert "nothing in the knowledge base matched" in result.error["message"]


async def test_a_blank_query_finds_nothing_without_searching(kb: Path) -> None:
    result = await run_flow(qa_flow(kb), {"question": "   "})
    assert result.outputs["found"] is False
    assert [(e.data["done"]) for e in result.events if e.type == "node_progress" and e.node == "search"] == [0, 2, 3]


async def test_metadata_filters_narrow_the_search(kb: Path) -> None:
    only_quill = await run_flow(qa_flow(kb, '    filter: {source: "${inputs.source}"}'), {"question": "descale the kettle"})
    assert {d["source"] for d in only_quill.outputs["documents"]} == {"docs/quillball.md"}
    formats = await run_flow(qa_flow(kb, "    top_k: 20\n    filter: {format: {any: [pdf, html]}}"), {"question": "opening hours"})
    assert {d["source"] for d in formats.outputs["documents"]} == {"docs/glimmerstone-museum.html", "docs/lantern-protocol.pdf"}
    heading = await run_flow(qa_flow(kb, '    filter: {heading: "Moonfruit Farming > Pests"}'), {"question": "anything"})
    assert [d["heading"] for d in heading.outputs["documents"]] == ["Moonfruit Farming > Pests"]


def test_local_search_gives_what_a_filtered_qdrant_query_gives(tmp_path: Path) -> None:
    """Regression for the local-mode shortcut (search unfiltered, filter the candidates): same hits
    as Qdrant's own filtered search, both when the candidates suffice and when they do not."""
    import random

    from rillflow.nodes.vectorstore import SHARED, build_filter

    rng = random.Random(3)
    store = open_collection(CollectionResource(qdrant=QdrantLocal(path=str(tmp_path / "q"))), label="t", flow_dir=str(tmp_path), dim=8,
                            create=True)
    try:
        points = []
        for i in range(400):
            tenant = "rare" if i % 50 == 0 else "acme" if i % 3 == 0 else SHARED
            vector = [rng.gauss(0, 1) for _ in range(8)]
            points.append((f"00000000-0000-0000-0000-{i:012d}", vector, {"tenant": tenant, "source": f"f{i % 40}.md", "chunk": i % 7}))
        store.upsert(points)
        cases = [({}, None), ({}, "acme"), ({}, "rare"), ({"source": "f0.md"}, None), ({"source": "f0.md"}, "rare"),
                 ({"chunk": [1, 2]}, "acme"), ({"source": "f3.md", "chunk": 3}, None)]
        for filters, tenant in cases:
            for _ in range(10):
                query = [rng.gauss(0, 1) for _ in range(8)]
                got = [h.id for h in store.search(query, limit=5, filters=filters, tenant=tenant)]
                want = store._call(lambda c, q=query, f=filters, t=tenant: c.query_points(
                    "t", query=q, query_filter=build_filter(f, t), limit=5, with_payload=False)).points
                assert got == [str(p.id) for p in want], (filters, tenant)
    finally:
        store.close()


# -- tenancy -------------------------------------------------------------------------------------
async def test_a_tenant_sees_its_own_and_shared_documents_only(kb: Path) -> None:
    plan = qa_flow(kb, "    top_k: 10")
    question = "What is the budget of Project Nightjar?"
    acme = await ask(plan, question, tenant="acme")
    assert acme.outputs["documents"][0]["source"] == "acme/nightjar.md"
    assert "42 million crowns" in acme.outputs["answer"]
    assert any(d["source"].startswith("docs/") for d in acme.outputs["documents"])  # shared documents too
    for other in ("globex", None):
        result = await ask(plan, question, tenant=other)
        assert result.ok and result.outputs["documents"]
        assert all(d["source"].startswith("docs/") for d in result.outputs["documents"])
        assert "42 million" not in result.outputs["answer"]


async def test_a_flow_input_cannot_pick_the_tenant(kb: Path) -> None:
    """The filter only narrows the caller's scope: naming another field cannot widen it."""
    plan = qa_flow(kb, '    top_k: 10\n    filter: {source: "${inputs.source}"}')
    events = [e async for e in run(plan, {"question": "Nightjar budget", "source": "acme/nightjar.md"}, tenant="globex")]
    assert events[-1].data["outputs"]["documents"] == []


def test_a_filter_on_tenant_is_refused_when_the_flow_loads(kb: Path) -> None:
    with pytest.raises(FlowError, match="E120") as err:
        qa_flow(kb, "    filter: {tenant: acme}")
    assert "a filter on 'tenant' is not allowed: the tenant comes from the run's caller" in str(err.value)


# -- start-up errors -----------------------------------------------------------------------------
def test_an_undeclared_collection_is_a_load_error(kb: Path) -> None:
    with pytest.raises(FlowError, match=r"unknown collection 'doc': declare it under 'collections:' \(declared: docs\); did you mean 'docs'"):
        flow(f'collections:\n  docs: {{qdrant: {{path: "{kb}"}}}}\noutputs: {{x: "${{s.found}}"}}\n'
             "nodes:\n  s: {type: retrieve, collection: doc, query: hi}\n")


def test_a_missing_collection_fails_at_start_up_with_the_ingest_command(tmp_path: Path) -> None:
    plan = flow(f'collections:\n  manuals: {{qdrant: {{path: "{tmp_path / "q"}"}}}}\noutputs: {{x: "${{s.found}}"}}\n'
                "nodes:\n  s: {type: retrieve, collection: manuals, query: hi}\n")
    with pytest.raises(PrepareError, match=r"node 's': collection 'manuals' does not exist .*rill ingest PATH\.\.\. --collection manuals"):
        prepare_sync(plan)


async def test_a_run_of_an_unprepared_plan_fails_with_a_config_error(tmp_path: Path) -> None:
    plan = flow(f'collections:\n  manuals: {{qdrant: {{path: "{tmp_path / "q"}"}}}}\noutputs: {{x: "${{s.found}}"}}\n'
                "nodes:\n  s: {type: retrieve, collection: manuals, query: hi}\n")
    result = await run_flow(plan)
    assert result.status == "failed" and result.error is not None
    assert result.error["kind"] == "config" and "collection 'manuals' does not exist" in result.error["message"]
    assert types(result)[-1] == "run_failed"


@pytest.mark.parametrize(("embedder_name", "dim", "message"), [
    ("all-MiniLM-L6-v2", 8, "holds 8-dimensional vectors but embedder 'all-MiniLM-L6-v2' makes 384: use the embedder it was filled with"),
    ("some-org/other-model", 384, "was filled with embedder 'some-org/other-model' but this uses 'all-MiniLM-L6-v2'"),
])
def test_a_collection_built_for_another_embedder_fails_at_start_up(tmp_path: Path, embedder: Embedder, embedder_name: str, dim: int,
                                                                   message: str) -> None:
    spec = CollectionResource(embedder=embedder_name, qdrant=QdrantLocal(path=str(tmp_path / "q")))
    open_collection(spec, label="docs", flow_dir=str(tmp_path), dim=dim, create=True).close()
    plan = flow(f'collections:\n  docs: {{qdrant: {{path: "{tmp_path / "q"}"}}}}\noutputs: {{x: "${{s.found}}"}}\n'
                "nodes:\n  s: {type: retrieve, collection: docs, query: hi}\n")
    with pytest.raises(PrepareError) as err:
        prepare_sync(plan)
    assert message in err.value.problems["s"]
