"""Ingestion throughput: synthetic Markdown files -> passages -> all-MiniLM-L6-v2 -> local Qdrant.

    python bench/ingest.py                 # 120 files (~1,000 chunks); --files N for more or fewer

Prints chunks per second for the whole pipeline (read, chunk, embed, upsert), the embedder alone on
the same texts (the ceiling: embedding is most of the cost on CPU), chunking alone, and the time of
a re-ingest that finds nothing changed. The embedder load (~10 s) is not counted.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from rillflow.nodes.chunking import split_document
from rillflow.nodes.embedder import load_embedder
from rillflow.nodes.ingest import ingest
from rillflow.nodes.vectorstore import open_collection
from rillflow.runtime.spec import CollectionResource, QdrantLocal

WORDS = ["kettle", "lighthouse", "moonfruit", "quillball", "bakery", "museum", "crystal", "harvest", "paddle", "copper", "starter", "station", "lamp", "keeper", "vine", "warranty", "ticket", "gallery", "storm", "handover", "sensor", "terrace", "cellar", "ferment", "dough", "ring", "orbit", "lens", "horn", "felt", "moth", "cedar"]


def synthetic_file(rng: random.Random, index: int) -> str:
    parts = [f"# Topic {index}: {' '.join(rng.sample(WORDS, 3))}\n"]
    for section in range(rng.randint(3, 6)):
        parts.append(f"\n## Section {section} about {rng.choice(WORDS)}\n")
        for _ in range(rng.randint(2, 4)):
            sentences = [" ".join(rng.choices(WORDS, k=rng.randint(8, 16))).capitalize() + "." for _ in range(rng.randint(3, 6))]
            parts.append("\n" + " ".join(sentences) + "\n")
    return "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=120)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        for i in range(args.files):
            (docs / f"topic-{i:04d}.md").write_text(synthetic_file(rng, i))
        embedder = load_embedder("all-MiniLM-L6-v2")
        embedder.embed(["warm up"])
        store = open_collection(CollectionResource(qdrant=QdrantLocal(path=str(root / "qdrant"))), label="bench", flow_dir=tmp,
                                dim=embedder.dim, create=True)
        try:
            first = ingest([docs], store, embedder, base=root)
            again = ingest([docs], store, embedder, base=root)
        finally:
            store.close()
        start = time.perf_counter()
        texts = [p.text for f in sorted(docs.iterdir()) for p in split_document(f.name, f.read_bytes()).passages]
        chunk_s = time.perf_counter() - start
        start = time.perf_counter()
        embedder.embed(texts)
        embed_s = time.perf_counter() - start
    print(f"{'ingest (read, chunk, embed, upsert)':<44} {first.chunks_written:>6} chunks {first.seconds:>7.2f} s {first.chunks_per_second:>8.0f} chunks/s")
    print(f"{'embedder alone, same texts':<44} {len(texts):>6} chunks {embed_s:>7.2f} s {len(texts) / embed_s:>8.0f} chunks/s")
    print(f"{'chunking alone':<44} {len(texts):>6} chunks {chunk_s:>7.2f} s {len(texts) / chunk_s:>8.0f} chunks/s")
    print(f"{'re-ingest, nothing changed':<44} {again.files_seen:>6} files  {again.seconds:>7.2f} s  ({again.chunks_written} written)")
    print(f"\n{args.files} files, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
