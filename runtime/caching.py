"""Node results reused across runs: content keys, lookups, stream replay, semantic and offline tiers, resume.

A node's key is the SHA-256 of its type, resolved inputs (its whole config, references replaced by
values), what its type says decides the result besides those (``Node.cache_identity``: a model's
identity and sampling, a template's hash, a collection's version) and the run's tenant. The same
content gives the same key in any flow, process or worker sharing the store.

Only whole successes are stored: a failed, partial, truncated (``Node.cacheable``) or guardrail-flagged
attempt never is. A hit replays the node's chunks through the graph as a stream, so consumers and the
chat see what a live run shows, only sooner; a ``cache_hit`` event (tier exact, semantic, offline or
resume) marks it in the event stream and the trace. A store that fails only makes runs slower.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

from rillflow.nodes.base import NotCacheable
from rillflow.runtime.attempts import run_attempts
from rillflow.runtime.cache_store import CacheEntry, CacheStore

if TYPE_CHECKING:
    from rillflow.runtime.plan import PlanNode
    from rillflow.runtime.scheduler import Run

log = logging.getLogger("rillflow.cache")
KEY_VERSION = 1
CHECKPOINT_TTL = 7 * 86400.0  # how long `rill run --resume` can pick up a run
CHECKPOINTS = "(checkpoints)"  # the node name resume entries are listed under in `rill cache stats`
_REPLAY_YIELD_EVERY = 8  # chunks replayed between loop turns, so consumers interleave as with a live node


class RunCache:
    """A run's view of the cache: the store, whether it checkpoints for resume, the run it resumes."""

    __slots__ = ("checkpoint", "resume", "store")

    def __init__(self, store: CacheStore, *, checkpoint: bool = False, resume: str | None = None) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.resume = resume

    def wants(self, pn: PlanNode) -> bool:
        return pn.cache is not None or self.checkpoint or self.resume is not None


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_config_value)


def _config_value(value: Any) -> Any:
    """Config objects (guardrail checks, policies) are part of a key; anything else is not a JSON value."""
    if hasattr(value, "model_dump"):
        return {"__type__": type(value).__name__, **value.model_dump(mode="json")}
    raise TypeError(f"{type(value).__name__} is not a JSON value")


async def content_key(run: Run, pn: PlanNode, inputs: dict[str, Any]) -> str | None:
    """The node's content key for these inputs, or None when its result must not be reused."""
    from rillflow.runtime.context import NodeContext

    try:
        identity = await pn.node.cache_identity(NodeContext(run, pn.id, 0), inputs)
        doc = _canonical({"v": KEY_VERSION, "type": pn.type, "inputs": inputs, "identity": identity, "tenant": run.tenant})
    except NotCacheable as exc:
        run.cache_notes[pn.id] = str(exc)
        return None
    except (TypeError, ValueError):  # inputs that are not JSON (a stream, an object from user code)
        run.cache_notes[pn.id] = "its inputs are not JSON values"
        return None
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def semantic_scope(run: Run, pn: PlanNode, inputs: dict[str, Any], key_identity: Any) -> str:
    """Semantic and offline hits stay within one flow, node, tenant and model set-up."""
    fixed = {k: v for k, v in inputs.items() if k not in pn.wired}  # max_tokens, stop, schema...; not the prompt
    doc = _canonical({"v": KEY_VERSION, "flow": run.plan.name, "node": pn.id, "tenant": run.tenant, "fixed": fixed, "identity": key_identity})
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


async def run_cached(run: Run, pn: PlanNode, inputs: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """run_attempts with the cache in front (lookup, replay) and behind it (store the success)."""
    cache = run.cache
    assert cache is not None
    key = await content_key(run, pn, inputs)
    if key is None:
        return await run_attempts(run, pn, inputs)
    vector, scope = await _semantic_probe(run, pn, inputs)
    hit = await _lookup(run, pn, key, vector, scope)
    if hit is not None:
        return await replay(run, pn, *hit)
    values, attempts, usage = await run_attempts(run, pn, inputs)
    if pn.id not in run.flagged and pn.node.cacheable(values):
        _store(run, pn, key, {"outputs": values, "usage": usage,
                              "chunks": {f: list(s.chunks) for f, s in run.streams.get(pn.id, {}).items()}}, vector, scope)
    return values, attempts, usage


async def _semantic_probe(run: Run, pn: PlanNode, inputs: dict[str, Any]) -> tuple[Any, str | None]:
    """The question's vector and its scope, for a node with a semantic or offline tier."""
    policy = pn.cache
    if policy is None or (policy.semantic is None and policy.offline is None):
        return None, None
    text = pn.node.semantic_text(inputs)
    if not text:
        return None, None
    scope = semantic_scope(run, pn, inputs, await _identity(run, pn, inputs))
    vector = await embed(run, pn, text)
    run.semantic_inputs[pn.id] = (scope, vector)
    return vector, scope


async def _lookup(run: Run, pn: PlanNode, key: str, vector: Any, scope: str | None) -> tuple[CacheEntry, str, float | None] | None:
    """A stored result to replay: this run's checkpoint when resuming, else the exact, then the semantic tier."""
    cache = run.cache
    assert cache is not None
    store = cache.store
    if cache.resume is not None:
        entry = await _get(store, f"resume:{cache.resume}:{key}")
        if entry is not None:
            return entry, "resume", None
    policy = pn.cache
    if policy is None or policy.mode not in ("read_write", "read"):
        return None
    entry = await _get(store, key)
    if entry is not None:
        _count(store, run, pn, "hit")
        return entry, "exact", None
    if policy.semantic is not None and vector is not None and scope is not None:
        found = await _nearest(store, scope, vector, policy.semantic.threshold)
        if found is not None:
            _count(store, run, pn, "hit")
            return found[0], "semantic", found[1]
    _count(store, run, pn, "miss")
    return None


def _store(run: Run, pn: PlanNode, key: str, payload: dict[str, Any], vector: Any, scope: str | None) -> None:
    cache = run.cache
    assert cache is not None
    policy = pn.cache
    now = time.time()
    if policy is not None and policy.mode in ("read_write", "refresh") and (policy.unseeded or _nondeterministic(pn) is None):
        expires = now + policy.ttl if policy.ttl is not None else None
        if _put(cache.store, CacheEntry(key, run.plan.name, pn.id, pn.type, run.tenant, now, expires, payload), vector, scope):
            _count(cache.store, run, pn, "write")
    if cache.checkpoint:
        _put(cache.store, CacheEntry(f"resume:{run.run_id}:{key}", run.plan.name, CHECKPOINTS, pn.type, run.tenant, now,
                                     now + CHECKPOINT_TTL, payload))


async def replay(run: Run, pn: PlanNode, entry: CacheEntry, tier: str, similarity: float | None = None
                 ) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Stream a stored result through the graph as the live node would, then return its outputs."""
    outputs = entry.payload.get("outputs")
    if not isinstance(outputs, dict) or any(f not in outputs for f in pn.outputs):
        raise _Stale()  # stored by an older version of the node type: run it instead
    data: dict[str, Any] = {"tier": tier, "age_s": round(max(0.0, time.time() - entry.created), 3)}
    if similarity is not None:
        data["similarity"] = round(similarity, 4)
    run.emit("cache_hit", pn.id, data)
    if any(entry.payload.get("chunks", {}).get(f) for f in pn.stream_outputs):
        run.first_chunk[pn.id] = perf_counter()
    push = run.push
    for field, chunks in entry.payload.get("chunks", {}).items():
        if field not in pn.stream_outputs:
            continue
        for i, text in enumerate(chunks):
            push(pn.id, field, text, None)
            if i % _REPLAY_YIELD_EVERY == _REPLAY_YIELD_EVERY - 1:
                await asyncio.sleep(0)
    run.cache_hits[pn.id] = data
    return outputs, 0, None


class _Stale(Exception):
    """A stored entry lacks outputs the node now declares."""


async def offline_answer(run: Run, pn: PlanNode) -> tuple[CacheEntry, float] | None:
    """The closest stored answer (expired ones too) for a node whose every model path failed."""
    cache = run.cache
    policy = pn.cache
    if cache is None or policy is None or policy.offline is None:
        return None
    found = run.semantic_inputs.get(pn.id)
    inputs = run.node_inputs.get(pn.id)
    if found is None and inputs is not None:
        text = pn.node.semantic_text(inputs)
        if text:
            found = (semantic_scope(run, pn, inputs, await _identity(run, pn, inputs)), await embed(run, pn, text))
    if found is None:
        return None
    return await _nearest(cache.store, found[0], found[1], policy.offline.threshold, include_expired=True)


async def embed(run: Run, pn: PlanNode, text: str) -> Any:
    """A unit vector of ``text`` with the node's semantic embedder (in a worker thread)."""
    import numpy as np

    from rillflow.nodes.embedder import load_embedder
    from rillflow.runtime.context import executor

    policy = pn.cache
    assert policy is not None
    tier = policy.semantic or policy.offline
    assert tier is not None
    embedder = load_embedder(tier.embedder, run.plan.env.flow_dir)
    vector = await asyncio.get_running_loop().run_in_executor(executor(), embedder.embed_one, text)
    return np.asarray(vector, dtype=np.float32)


def _nondeterministic(pn: PlanNode) -> str | None:
    probe = getattr(pn.node, "nondeterministic", None)
    return probe() if callable(probe) else None


async def _identity(run: Run, pn: PlanNode, inputs: dict[str, Any]) -> Any:
    from rillflow.runtime.context import NodeContext

    try:
        return await pn.node.cache_identity(NodeContext(run, pn.id, 0), inputs)
    except NotCacheable:
        return None


async def _get(store: CacheStore, key: str) -> CacheEntry | None:
    try:
        return await store.get(key)
    except Exception as exc:  # a store must not fail a run, whatever goes wrong inside it
        log.warning("cache lookup failed (%s): running the node", type(exc).__name__)
        return None


async def _nearest(store: CacheStore, scope: str, vector: Any, threshold: float, *, include_expired: bool = False) -> tuple[CacheEntry, float] | None:
    try:
        return await store.nearest(scope, vector, threshold, include_expired=include_expired)
    except Exception as exc:
        log.warning("semantic cache lookup failed (%s): running the node", type(exc).__name__)
        return None


def _put(store: CacheStore, entry: CacheEntry, vector: Any = None, scope: str | None = None) -> bool:
    try:
        store.put(entry, vector, scope)
    except (TypeError, ValueError):  # outputs that are not JSON values (objects from user code): not stored
        return False
    except Exception as exc:
        log.warning("cache write failed (%s)", type(exc).__name__)
        return False
    return True


def _count(store: CacheStore, run: Run, pn: PlanNode, what: Any) -> None:
    try:
        store.count(run.plan.name, pn.id, what)
    except Exception as exc:
        log.warning("cache counter failed (%s)", type(exc).__name__)


def checkpoint_start(run: Run) -> None:
    """Remember the run's inputs, so `rill run --resume RUN_ID` can run it again without them."""
    cache = run.cache
    if cache is None or not cache.checkpoint:
        return
    now = time.time()
    payload = {"inputs": run.resolver.inputs, "flow_path": run.plan.path}
    _put(cache.store, CacheEntry(f"run:{run.run_id}", run.plan.name, CHECKPOINTS, "run", run.tenant, now, now + CHECKPOINT_TTL, payload))


async def load_checkpoint(store: CacheStore, run_id: str) -> dict[str, Any] | None:
    """The inputs, flow name and tenant a checkpointed run started with, or None when unknown or expired."""
    entry = await _get(store, f"run:{run_id}")
    if entry is None:
        return None
    return {"inputs": entry.payload.get("inputs") or {}, "flow": entry.flow, "flow_path": entry.payload.get("flow_path"), "tenant": entry.tenant}


async def run_node(run: Run, pn: PlanNode, inputs: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """The scheduler's entry: cached when the run has a cache and the node a policy (or resume is on)."""
    try:
        return await run_cached(run, pn, inputs)
    except _Stale:
        return await run_attempts(run, pn, inputs)
