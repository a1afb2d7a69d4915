"""Retrieval latency at 10,000 chunks in local Qdrant (brute force: local mode has no index).

    python bench/retrieval.py              # --chunks N to change the size, --queries N the samples

Fills a fresh local collection with synthetic chunks (random unit vectors with realistic payloads:
local search cost does not depend on what the vectors mean, and embedding 10,000 texts would only
make the set-up slow), then reports p50/p95 milliseconds of:

* search: ``VectorStore.search`` with the tenant scope every run gets (what the node calls);
* search without any filter (the raw client), and with the tenant filter evaluated by local Qdrant
  itself (what ``VectorStore`` avoids by filtering candidates: local mode checks every point in Python);
* the ``retrieve`` node in a one-node flow: query embedding, search, documents, context.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from rillflow.nodes.embedder import load_embedder
from rillflow.nodes.vectorstore import SHARED, VectorStore, build_filter, open_collection
from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.prepare import prepare
from rillflow.runtime.spec import CollectionResource, QdrantLocal
from rillflow.runtime.sync import collect

QUESTIONS = ["How often should a kettle be descaled?", "Who rings the handover bell?", "When is moonfruit harvested?",
             "How many points is a feather strike?", "What is the sourdough starter called?"]


def fill(store: VectorStore, n: int, dim: int) -> float:
    rng = np.random.default_rng(11)
    start = time.perf_counter()
    for first in range(0, n, 500):
        vectors = rng.normal(size=(min(500, n - first), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        points = []
        for i, vec in enumerate(vectors, start=first):
            payload = {"text": f"Synthetic passage {i}. " + "lorem ipsum dolor sit amet " * 20, "source": f"docs/file-{i // 10:04d}.md",
                       "title": f"File {i // 10}", "heading": f"Section {i % 10}", "lines": [i % 10 * 10 + 1, i % 10 * 10 + 9], "pages": None,
                       "format": "markdown", "chunk": i % 10, "file_hash": "synthetic", "tenant": SHARED if i % 4 else "acme"}
            points.append((str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))), vec.tolist(), payload))
        store.upsert(points)
    return time.perf_counter() - start


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms"


def timed(fn: object, vectors: list[list[float]]) -> list[float]:
    samples = []
    for vec in vectors:
        start = time.perf_counter()
        fn(vec)  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


async def node_samples(folder: Path, queries: int) -> list[float]:
    plan = load_flow_text(f'version: 1\nname: bench\ncollections:\n  docs: {{qdrant: {{path: "{folder}"}}}}\n'
                          'inputs:\n  q: {type: string}\noutputs: {docs: "${s.documents}"}\n'
                          'nodes:\n  s: {type: retrieve, collection: docs, query: "${inputs.q}", top_k: 4}\n')
    await prepare(plan)
    samples = []
    for i in range(queries):
        start = time.perf_counter()
        result = await collect(plan, {"q": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"})
        samples.append(time.perf_counter() - start)
        assert len(result.outputs["docs"]) == 4
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    embedder = load_embedder("all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "qdrant")
        store = open_collection(CollectionResource(qdrant=QdrantLocal(path=str(folder))), label="docs", flow_dir=tmp,
                                dim=embedder.dim, create=True)
        fill_s = fill(store, args.chunks, embedder.dim)
        vectors = embedder.embed([f"{QUESTIONS[i % len(QUESTIONS)]} ({i})" for i in range(args.queries)])
        for _ in range(3):  # warm up: the first hundred searches run up to 3x slower (allocator, caches)
            timed(lambda v: store.search(v, limit=4, tenant="acme"), vectors[:50])
        scoped = timed(lambda v: store.search(v, limit=4, tenant="acme"), vectors)
        shared = timed(lambda v: store.search(v, limit=4), vectors)
        raw = timed(lambda v: store._call(lambda c: c.query_points(store.name, query=v, limit=4, with_payload=True)), vectors)
        scope = build_filter({}, "acme")
        qdrant_filtered = timed(lambda v: store._call(lambda c: c.query_points(store.name, query=v, query_filter=scope, limit=4,
                                                                                 with_payload=True)), vectors[:50])
        embed = timed(lambda v: embedder.embed_one("How often should a kettle be descaled?"), vectors[:50])
        node = asyncio.run(node_samples(folder, min(args.queries, 100)))
        store.close()
    print(f"local Qdrant, {args.chunks:,} chunks of {embedder.dim} dims, "
          f"filled in {fill_s:.1f} s ({args.chunks / fill_s:,.0f} points/s)")
    print(f"{'search, tenant acme (own + shared)':<40} {percentiles(scoped)}")
    print(f"{'search, no tenant (shared only)':<40} {percentiles(shared)}")
    print(f"{'search, no filter (raw client)':<40} {percentiles(raw)}")
    print(f"{'search, tenant filter inside Qdrant':<40} {percentiles(qdrant_filtered)}   (what the candidate shortcut avoids)")
    print(f"{'query embedding alone':<40} {percentiles(embed)}")
    print(f"{'retrieve node, whole run':<40} {percentiles(node)}")
    print(f"\n{args.queries} queries, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
