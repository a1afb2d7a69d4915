"""`retrieve`: the passages of a collection nearest to a query, with scores and citations.

Tenancy (reliability notes, section 0, point 8): every search is scoped by the run's tenant, which
the caller sets (API key, server) and no flow input, prompt or ``filter`` can reach: a run for tenant
``acme`` sees points ingested with ``--tenant acme`` plus shared points (ingested without
``--tenant``); a run without a tenant sees shared points only. A ``filter`` on ``tenant`` is refused
when the flow loads (E120), and a filter only ever narrows the tenant scope, never widens it.

An empty result is not an error (FT-13): ``found`` is false and the flow branches on it
(``when: retrieve.found``). With ``on_empty: fail`` the node fails with kind ``empty`` instead, so
its ``on_fail: {respond: ...}``, ``skip`` or ``fallback`` policy decides what happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rillflow.nodes.base import (
    CheckContext,
    Emit,
    FlowEnv,
    Node,
    NodeConfig,
    NotCacheable,
    Output,
    OutputField,
    Progress,
    RunContext,
    Wired,
    check_resource_name,
    register,
)
from rillflow.runtime.errors import NodeError

SEARCHING = "Searching knowledge base…"
STEPS = 3  # embed the query, search, assemble


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    any: list[str | int] = Field(min_length=1, description="The field must equal one of these.")


@register("retrieve")
class RetrieveNode(Node):
    """Search a collection for the passages nearest to `query`: scored documents, a numbered `context` for a prompt, and citations."""

    worth_caching = True
    records = True

    class Config(NodeConfig):
        collection: str = Field(description="A collection declared under `collections:`.")
        query: Wired[str] = Field(description="The text to search for, e.g. ${inputs.question}.")
        top_k: int = Field(4, ge=1, le=100, description="Most passages returned.")
        score_threshold: float | None = Field(None, ge=-1, le=1, description="Leave out passages whose cosine similarity is below this.")
        filter: dict[str, Wired[str | int | bool] | AnyOf] = Field(
            default_factory=dict, description="Payload field -> value, or {any: [values]}: all must match (source, title, heading, format).")
        on_empty: Literal["continue", "fail"] = Field(
            "continue", description="continue: found is false; fail: the node fails with kind empty, for its on_fail or fallback.")

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "documents": OutputField("list", description="[{id, text, score, source, title, heading, lines, pages, citation}], best first."),
            "context": OutputField("string", description="The passages numbered [1], [2], ... with their sources, for a prompt."),
            "citations": OutputField("list", description="[{marker, source, title, heading, lines, pages, label}], one per passage."),
            "found": OutputField("boolean", description="Whether any passage was found."),
        }

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        check_resource_name(ctx, ("collection",), "collections", config.collection)
        if "tenant" in config.filter:
            ctx.error(("filter", "tenant"), "E120", "a filter on 'tenant' is not allowed: the tenant comes from the run's caller, never "
                                                    "from the flow, and rillflow adds it to every search itself")

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        self._collection: str = config.collection
        self._store: Any = None
        self._embedder: Any = None

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        if self._store is None:
            await ctx.to_thread(self.prepare)
        spec = self.env.collections[self._collection]
        # Re-ingesting changes the version, so entries of the old content become misses.
        version = await ctx.to_thread(self._store.version)
        if version is None:
            raise NotCacheable(f"collection '{self._collection}' has no content version (it was not filled by rill ingest)")
        return {"collection": self._store.name, "where": spec.qdrant.model_dump(mode="json", exclude={"api_key"}),
                "embedder": spec.embedder, "version": version}

    def prepare(self) -> None:
        """Load the embedder and open the collection, checking its vector size against the embedder."""
        if self._store is not None:
            return
        from rillflow.nodes.embedder import load_embedder
        from rillflow.nodes.vectorstore import connect

        name = self._collection
        spec = self.env.collections.get(name)
        if spec is None:
            raise NodeError("config", f"collection '{name}' is not declared under 'collections:'")
        store = connect(spec, label=name, flow_dir=self.env.flow_dir)  # a locked folder fails before the slow model load
        embedder = load_embedder(spec.embedder, self.env.flow_dir)
        store.ensure(dim=embedder.dim, embedder=spec.embedder, create=False)
        self._store, self._embedder = store, embedder

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        if self._store is None:
            await ctx.to_thread(self.prepare)
        yield Progress(0, STEPS, SEARCHING)
        query = inputs["query"]
        if not isinstance(query, str):
            raise NodeError("config", f"retrieve '{self.id}': query must be text, got {type(query).__name__}")
        hits = []
        if query.strip():
            vector = await ctx.to_thread(self._embedder.embed_one, query)
            yield Progress(1, STEPS, SEARCHING)
            hits = await ctx.to_thread(self._store.search, vector, limit=inputs["top_k"], score_threshold=inputs["score_threshold"],
                                       filters=_filters(self.id, inputs["filter"]), tenant=ctx.tenant)
        yield Progress(2, STEPS, SEARCHING)
        if not hits and inputs["on_empty"] == "fail":
            raise NodeError("empty", f"nothing in the knowledge base matched the question (collection '{self._collection}')")
        documents = [_document(i, hit) for i, hit in enumerate(hits, start=1)]
        yield Progress(STEPS, STEPS, f"Found {len(documents)} passage{'s' if len(documents) != 1 else ''}")
        yield Output(documents=documents, context="\n\n".join(f"{_label(d)}\n{d['text']}" for d in documents),
                     citations=[_citation(d) for d in documents], found=bool(documents))


def _filters(node_id: str, given: dict[str, Any]) -> dict[str, Any]:
    """Resolved filter values as Qdrant expects them: a scalar, or a list for any-of."""
    out: dict[str, Any] = {}
    for key, given_value in given.items():
        value = given_value.any if isinstance(given_value, AnyOf) else given_value
        if isinstance(value, dict) and set(value) == {"any"}:
            value = value["any"]
        if not (isinstance(value, (str, int, bool)) or (isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value))):
            raise NodeError("config", f"retrieve '{node_id}': filter '{key}' must be text, a number, true/false or a list, got {type(value).__name__}")
        out[key] = value
    return out


def _document(index: int, hit: Any) -> dict[str, Any]:
    p = hit.payload
    return {"id": hit.id, "text": p.get("text", ""), "score": round(hit.score, 4), "source": p.get("source"), "title": p.get("title"),
            "heading": p.get("heading") or "", "lines": p.get("lines"), "pages": p.get("pages"), "citation": f"[{index}]"}


def _where(doc: dict[str, Any]) -> str:
    if doc["pages"]:
        first, last = doc["pages"]
        return f"p. {first}" if first == last else f"pp. {first}-{last}"
    if doc["lines"]:
        first, last = doc["lines"]
        return f"line {first}" if first == last else f"lines {first}-{last}"
    return ""


def _label(doc: dict[str, Any]) -> str:
    """'[1] Zephyr kettles > Descaling (docs/zephyr.md, lines 12-20)'."""
    title, heading = doc["title"] or "", doc["heading"]
    name = heading if heading == title or heading.startswith(f"{title} > ") else " > ".join(p for p in (title, heading) if p)
    where = ", ".join(part for part in (doc["source"], _where(doc)) if part)
    return f"{doc['citation']} {name} ({where})"


def _citation(doc: dict[str, Any]) -> dict[str, Any]:
    return {"marker": doc["citation"], "source": doc["source"], "title": doc["title"], "heading": doc["heading"], "lines": doc["lines"],
            "pages": doc["pages"], "label": _label(doc)}
