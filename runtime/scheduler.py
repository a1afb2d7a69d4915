"""Run a compiled plan: start each node the moment its inputs are ready, stream chunks through the
graph, apply skip / fallback / on_fail, and emit one ordered event stream ending in exactly one
terminal event (DESIGN.md section 4).

Readiness is counted, not polled: each node holds the number of dependencies it still waits for.
A dependency read whole counts down when it settles (finished or skipped); one read only as a chunk
stream counts down when it *starts*, so consumers run alongside their producer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from time import perf_counter
from typing import TYPE_CHECKING, Any

from rillflow.runtime.attempts import AttemptsFailed, run_attempts
from rillflow.runtime.cache_store import CacheStore
from rillflow.runtime.caching import RunCache, checkpoint_start, offline_answer, run_node
from rillflow.runtime.context import process_limit
from rillflow.runtime.errors import NodeError
from rillflow.runtime.events import TERMINAL, Event
from rillflow.runtime.inputs import check_inputs
from rillflow.runtime.mapping import run_map
from rillflow.runtime.plan import Plan, PlanNode
from rillflow.runtime.resolve import Resolver, Skip
from rillflow.runtime.streams import ChunkStream, StreamFailed, StreamSkipped

EventListener = Callable[[Event], None]

if TYPE_CHECKING:
    from rillflow.runtime.trace import TraceSink


class Run:
    """The state of one run of a plan. Create with ``run()``; not reusable."""

    def __init__(self, plan: Plan, inputs: dict[str, Any], run_id: str, listeners: tuple[EventListener, ...],
                 tenant: str | None = None, cache: RunCache | None = None, trace: TraceSink | None = None) -> None:
        self.plan = plan
        self.run_id = run_id
        self.tenant = tenant
        self.cache = cache
        self.node_inputs: dict[str, dict[str, Any]] = {}  # resolved inputs per node (trace, offline answers)
        self.first_chunk: dict[str, float] = {}  # node -> perf_counter() of its latest attempt's first chunk
        self.flagged: set[str] = set()  # nodes whose output a guardrail flagged or retracted: never cached
        self.cache_hits: dict[str, dict[str, Any]] = {}
        self.cache_notes: dict[str, str] = {}  # node -> why it was not cached
        self.semantic_inputs: dict[str, tuple[str, Any]] = {}
        self.cached_answer: dict[str, Any] | None = None  # an offline answer served in place of failed models
        if trace is not None:
            from rillflow.runtime.trace import SpanRecorder

            listeners = (*listeners, SpanRecorder(self, trace).on_event)
        self.listeners = listeners
        self.values: dict[str, dict[str, Any]] = {}
        self.state: dict[str, str] = {}  # running | done | skipped | failed
        self.streams: dict[str, dict[str, ChunkStream]] = {}
        self.resolver = Resolver(self, inputs)
        self.cancelled = False
        self.terminal_sent = False
        self.started = perf_counter()  # event timestamps count from here
        self._seq = 0
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting = {n: len(pn.deps) for n, pn in plan.nodes.items()}
        self._active = {n for n, pn in plan.nodes.items() if not pn.fallback_only}
        self._pending = set(self._active)
        self._launched: set[str] = set()
        self._ready: list[str] = []
        self._stand_in: dict[str, list[str]] = {}  # fallback node -> nodes it stands in for
        self._replaced_by: dict[str, str] = {}  # failed node -> its fallback (chunks come from there)
        self._withdrawn: dict[str, int] = {}  # node -> characters of its streams a retract already withdrew
        self._listening: dict[tuple[str, str], list[str]] = {}  # (node, field) -> streamed flow outputs
        self._source: dict[str, str | None] = dict.fromkeys(plan.output_streams)  # output -> node it streams from
        for name in plan.output_streams:
            for path in self.resolver.output_paths(name):
                self._listening.setdefault((path.root, str(path.parts[0])), []).append(name)
        self._limit = asyncio.Semaphore(plan.concurrency) if plan.concurrency else None
        self._process_limit = process_limit()

    # -- events ---------------------------------------------------------------------------
    def emit(self, type_: Any, node: str | None, data: dict[str, Any]) -> None:
        if self.terminal_sent:
            return
        event = Event(type_, self.run_id, self._seq, perf_counter() - self.started, node, data)
        self._seq += 1
        if type_ in TERMINAL:
            self.terminal_sent = True
        elif type_ == "retract" and node is not None:  # a guardrail's own or the runtime's: never withdraw text twice
            self._withdrawn[node] = self._withdrawn.get(node, 0) + data["chars"]
        self._queue.append(event)
        if self.listeners:
            for listener in self.listeners:
                listener(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def redact(self, text: str) -> str:
        """``text`` fit for an error event: the flow's ``${env.*}`` values, secret-named environment values,
        credentials and personal data removed, as a trace would show it (reliability notes AU-07: an
        exception's message quotes whatever the code held, and error events reach clients and logs)."""
        from rillflow.runtime.redact import Redactor

        return Redactor(self.plan.secrets).redact_text(text)

    def push(self, node_id: str, field: str, text: str, item_index: int | None, producer: str | None = None) -> None:
        """A chunk from a node: into its stream and the streams of every node it stands in for."""
        if item_index is not None:
            return  # map items produce whole values, not one shared stream
        streams = self.streams.get(node_id)
        stream = streams.get(field) if streams else None
        if stream is not None:  # None: a chunk of a field that does not stream (dropped by contract)
            stream.push(text)
            for name in stream.outputs:
                source = self._source[name]
                if source == node_id:
                    self.emit("chunk", producer or node_id, {"output": name, "text": text})
                elif source is None:
                    self._claim_output(name)
        if self._stand_in and node_id in self._stand_in:
            for other in self._stand_in[node_id]:
                self.push(other, field, text, None, producer or node_id)

    def _claim_output(self, name: str) -> None:
        """Pick the first non-skipped source of a streamed output once it is known; replay its chunks."""
        for path in self.resolver.output_paths(name):
            state = self.state.get(path.root)
            if state == "skipped":
                continue
            if state is None:
                return  # an earlier alternative has not started: its chunks would come first
            self._source[name] = path.root
            stream = self.streams.get(path.root, {}).get(str(path.parts[0]))
            producer = path.root
            while producer in self._replaced_by:
                producer = self._replaced_by[producer]
            for text in stream.chunks if stream is not None else ():
                self.emit("chunk", producer, {"output": name, "text": text})
            return

    # -- the event stream -----------------------------------------------------------------
    async def events(self) -> AsyncIterator[Event]:
        queue = self._queue
        try:
            self._announce()
            if self.plan.state.get("prepared") or await self._prepare():
                self._start()
            while True:
                while queue:
                    event = queue.popleft()
                    yield event
                    if event.type in TERMINAL:
                        return
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
                self._waiter = None
        finally:
            await self._shutdown()

    def _announce(self) -> None:
        data: dict[str, Any] = {"flow": self.plan.name, "inputs": sorted(self.resolver.inputs),
                                "started_at": datetime.now(timezone.utc).isoformat()}
        if self.cache is not None and self.cache.resume is not None:
            data["resumes"] = self.cache.resume
        self.emit("run_started", None, data)
        if self.cache is not None and self.cache.checkpoint:
            checkpoint_start(self)

    async def _prepare(self) -> bool:
        """First run of a plan nobody prepared: open its models and collections now (once)."""
        from rillflow.runtime.prepare import PrepareError, prepare

        try:
            await prepare(self.plan)
        except PrepareError as exc:
            node = next(iter(exc.problems))
            self.emit("run_failed", None, {"error": {"kind": "config", "message": self.redact(str(exc)), "node": node}})
            return False
        return True

    def _start(self) -> None:
        plan = self.plan
        for node_id in plan.order:
            if self._waiting[node_id] == 0 and node_id in self._active:
                self._launch(node_id)
        self._spawn_ready()
        if not self._pending:
            self._finish_run()

    async def _shutdown(self) -> None:
        self.cancelled = True
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for streams in self.streams.values():
            for stream in streams.values():
                stream.close(StreamFailed("the run ended"))
        if not self.terminal_sent:  # the consumer went away: the trace still gets its terminal event
            self.emit("run_failed", None, {"error": {"kind": "cancelled", "message": "the run was cancelled", "node": None}})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- readiness ------------------------------------------------------------------------
    def _launch(self, node_id: str) -> None:
        """Queue a ready node. A node task picks it up when it finishes its own node (no new task
        for a chain); _start and anything outside a node task call _spawn_ready afterwards."""
        if node_id not in self._launched:
            self._launched.add(node_id)
            self._ready.append(node_id)

    def _spawn_ready(self) -> None:
        ready, self._ready = self._ready, []
        for node_id in ready:
            self._spawn(self._execute(self.plan.nodes[node_id]))

    def _count_down(self, node_id: str) -> None:
        self._waiting[node_id] -= 1
        if self._waiting[node_id] == 0 and node_id in self._active:
            self._launch(node_id)

    def _open_streams(self, pn: PlanNode) -> None:
        """Create the node's output streams (once): at its start, or when a stand-in takes over for it."""
        if pn.stream_outputs:
            streams = self.streams.setdefault(pn.id, {})
            for field in pn.stream_outputs:
                if field not in streams:
                    streams[field] = stream = ChunkStream()
                    stream.outputs = self._listening.get((pn.id, field), [])

    def _mark_started(self, pn: PlanNode) -> None:
        self.state[pn.id] = "running"
        self._open_streams(pn)
        for dependant in pn.dependants:
            if pn.id in self.plan.nodes[dependant].stream_deps:
                self._count_down(dependant)
        if self._ready:
            self._spawn_ready()  # stream consumers run alongside this node, not after it

    def _settle(self, node_id: str, state: str, values: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        was_started = node_id in self.state
        self.state[node_id] = state
        if values is not None:
            self.values[node_id] = values
        for stream in self.streams.get(node_id, {}).values():
            stream.close(error)
        for name, source in self._source.items():
            if source is None:
                self._claim_output(name)
        for dependant in self.plan.nodes[node_id].dependants:
            if node_id not in self.plan.nodes[dependant].stream_deps or not was_started:
                self._count_down(dependant)
        for other in self._stand_in.pop(node_id, ()):
            self._settle_stand_in(other, node_id, state, values)
        self._pending.discard(node_id)
        if not self._pending and not self.terminal_sent:
            self._finish_run()

    # -- one node -------------------------------------------------------------------------
    async def _execute(self, pn: PlanNode) -> None:
        while True:
            try:
                queued = perf_counter()
                async with self._process_limit:
                    if self._limit is None:
                        await self._execute_node(pn, queued)
                    else:
                        async with self._limit:
                            await self._execute_node(pn, queued)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the runtime: never leave the run without a terminal event
                self._fail_run(pn.id, NodeError("internal", f"runtime error in node '{pn.id}': {type(exc).__name__}"))
                return
            if not self._ready or self.terminal_sent:
                return
            pn = self.plan.nodes[self._ready.pop()]  # continue in this task: no task per node
            self._spawn_ready()

    async def _execute_node(self, pn: PlanNode, queued: float) -> None:
        try:
            if pn.when is not None and not self.resolver.condition(pn):
                return self._skip(pn.id, f"condition is false: {pn.when_source}")
            inputs = None if pn.map is not None else self.resolver.inputs_for(pn)
        except Skip as skip:
            return self._skip(pn.id, skip.reason)
        except NodeError as exc:
            return self._node_failed(pn, exc, 0)
        if inputs is not None:
            self.node_inputs[pn.id] = inputs
        self._mark_started(pn)
        t0 = perf_counter()
        self.emit("node_started", pn.id, {"node_type": pn.type, "attempt": 1, "queue_ms": round((t0 - queued) * 1000, 3)})
        try:
            if pn.map is not None:
                values, attempts, usage = await run_map(self, pn)
            else:
                assert inputs is not None
                values, attempts, usage = await (run_node if self.cache is not None and self.cache.wants(pn) else run_attempts)(self, pn, inputs)
        except (StreamSkipped, Skip) as exc:
            return self._skip(pn.id, getattr(exc, "reason", None) or "an input stream was skipped")
        except StreamFailed:
            return  # the producer's failure already decided the run
        except AttemptsFailed as failed:
            return self._node_failed(pn, failed.error, failed.attempts)
        self.emit("node_finished", pn.id, self._finished_data(pn.id, t0, attempts, usage))
        self._settle(pn.id, "done", values)

    def _finished_data(self, node_id: str, t0: float, attempts: int, usage: dict[str, Any] | None) -> dict[str, Any]:
        data: dict[str, Any] = {"duration_ms": round((perf_counter() - t0) * 1000, 3), "attempts": attempts}
        if usage is not None:
            data["usage"] = usage
        first = self.first_chunk.get(node_id)
        if first is not None:
            data["ttft_ms"] = round((first - t0) * 1000, 3)
        if node_id in self.cache_hits:
            data["cached"] = self.cache_hits[node_id]["tier"]
        return data

    def _skip(self, node_id: str, reason: str) -> None:
        self.emit("node_skipped", node_id, {"reason": reason})
        self._settle(node_id, "skipped", error=StreamSkipped(reason))

    def _node_failed(self, pn: PlanNode, error: NodeError, attempts: int) -> None:
        err = {"kind": error.kind, "message": error.message}
        target = pn.fallback
        if target is not None and target in self.plan.nodes:
            self.emit("node_fallback", pn.id, {"to": target, "error": err, "attempts": attempts})
            self._retract_partial(pn.id, "fallback")  # clients drop its partial text before the stand-in's arrives
            self._replaced_by[pn.id] = target
            self._stand_in.setdefault(target, []).append(pn.id)
            self._open_streams(pn)  # it may have failed before it started: its consumers read these
            if self.state.get(target) in ("done", "skipped", "failed"):
                self._settle_stand_in(pn.id, target, self.state[target], self.values.get(target))
            else:
                self._activate(target, pn.id)
            return
        self._give_up(pn, error, attempts)

    def _give_up(self, pn: PlanNode, error: NodeError, attempts: int) -> None:
        """The node and every fallback failed: an offline answer from the cache, else its on_fail."""
        if pn.cache is not None and pn.cache.offline is not None and self.cache is not None and not self.cancelled:
            self._spawn(self._serve_offline(pn, error, attempts))
            return
        self.emit("node_failed", pn.id, {"error": {"kind": error.kind, "message": error.message}, "attempts": attempts})
        self._apply_on_fail(pn, error)

    async def _serve_offline(self, pn: PlanNode, error: NodeError, attempts: int) -> None:
        from rillflow.runtime.caching import replay

        found = await offline_answer(self, pn)
        if found is None or self.terminal_sent:
            self.emit("node_failed", pn.id, {"error": {"kind": error.kind, "message": error.message}, "attempts": attempts})
            return self._apply_on_fail(pn, error)
        entry, similarity = found
        self._retract_partial(pn.id, "offline")
        self._replaced_by.pop(pn.id, None)
        self._stand_in = {k: [n for n in v if n != pn.id] for k, v in self._stand_in.items()}
        values, _, _ = await replay(self, pn, entry, "offline", similarity)
        self.cached_answer = {"node": pn.id, "similarity": round(similarity, 4), "cached_at": entry.created,
                              "error": {"kind": error.kind, "message": error.message}}
        self.emit("node_finished", pn.id, {"attempts": attempts, "cached": "offline"})
        self._settle(pn.id, "done", values)

    def _retract_partial(self, node_id: str, reason: str) -> None:
        """The node died mid-stream and another answer replaces its text: withdraw what clients still show
        (its own chunks and a stand-in's, less what an earlier retract already withdrew)."""
        streamed = sum(len(c) for stream in self.streams.get(node_id, {}).values() for c in stream.chunks)
        partial = streamed - self._withdrawn.get(node_id, 0)
        if partial > 0:
            self.emit("retract", node_id, {"reason": reason, "check": None, "chars": partial})

    def _activate(self, target: str, for_node: str) -> None:
        for field, stream in self.streams.get(target, {}).items():  # already streaming: replay so far
            for chunk in stream.chunks:
                self.push(for_node, field, chunk, None, target)
        if target not in self._active:
            self._active.add(target)
            self._pending.add(target)
            if self._waiting[target] == 0:
                self._launch(target)

    def _settle_stand_in(self, node_id: str, stand_in: str, state: str, values: dict[str, Any] | None) -> None:
        if state == "done":
            self.emit("node_finished", node_id, {"via": stand_in})
            self._settle(node_id, "done", {f: (values or {}).get(f) for f in self.plan.nodes[node_id].outputs})
        else:
            error = NodeError("internal", f"fallback '{stand_in}' of node '{node_id}' was {state}")
            self._give_up(self.plan.nodes[node_id], error, 0)

    def _apply_on_fail(self, pn: PlanNode, error: NodeError) -> None:
        policy = pn.on_fail
        if policy == "skip":
            self._skip(pn.id, f"failed ({error.kind}) and on_fail is skip")
        elif policy is not None and policy != "fail":
            self._retract_partial(pn.id, "fallback")  # the canned answer stands in: no partial text glued before it
            self._respond(pn.id, policy.respond)
        else:
            self.state[pn.id] = "failed"
            self._fail_run(pn.id, error)

    # -- endings --------------------------------------------------------------------------
    def _fail_run(self, node_id: str | None, error: NodeError) -> None:
        self.emit("run_failed", None, {"error": {"kind": error.kind, "message": error.message, "node": node_id}})

    def _respond(self, node_id: str, message: str) -> None:
        outputs: dict[str, Any] = dict.fromkeys(self.plan.outputs)
        first = next(iter(self.plan.outputs))
        outputs[first] = message
        self.emit("chunk", None, {"output": first, "text": message})
        self.emit("run_finished", None, {"status": "responded", "node": node_id, "outputs": outputs})

    def _finish_run(self) -> None:
        outputs = {name: self.resolver.output(value) for name, value in self.plan.outputs.items()}
        data: dict[str, Any] = {"status": "ok", "outputs": outputs}
        if self.cached_answer is not None:  # said plainly: this answer is a stored one, not a fresh one
            data["cached_answer"] = self.cached_answer
        self.emit("run_finished", None, data)


def run(plan: Plan, inputs: dict[str, Any] | None = None, *, run_id: str | None = None,
        listeners: tuple[EventListener, ...] = (), tenant: str | None = None,
        cache: CacheStore | RunCache | None = None, trace: TraceSink | None = None) -> AsyncIterator[Event]:
    """Run a plan: ``async for event in run(plan, {"question": "..."})``.

    Raises InputError at once, before anything runs, when the inputs do not fit the flow. Closing the
    iterator (``aclose()``, or cancelling the task consuming it) cancels every running node and waits
    for them. ``tenant`` scopes tenant-aware nodes (retrieval filters, caches); it comes from the
    caller's identity, never from flow inputs. ``cache`` is a cache store (rillflow.runtime.cache_open)
    or a RunCache (to checkpoint for, or resume, ``rill run --resume``): without one nothing is cached.
    ``trace`` receives the run's trace (a TraceStore). The iterator is the run's own generator, with
    no wrapper layers: they cost per event.
    """
    checked = check_inputs(plan, inputs or {})
    if cache is not None and not isinstance(cache, RunCache):
        cache = RunCache(cache)
    return Run(plan, checked, run_id or uuid.uuid4().hex, listeners, tenant, cache, trace).events()
