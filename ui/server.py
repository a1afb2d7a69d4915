"""One serving process's state: flows, admission, cache, traces, metrics; opened and closed in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from starlette.requests import Request

from rillflow.runtime.events import Event
from rillflow.ui.admission import Gate, Pass
from rillflow.ui.auth import ApiKey
from rillflow.ui.errors import ApiError
from rillflow.ui.flows import ServedFlow, close_flows, open_flows
from rillflow.ui.limits import LoadShedder, open_rate_limits
from rillflow.ui.metrics import Metrics
from rillflow.ui.settings import ServeSettings

log = logging.getLogger("rillflow.serve")


class Server:
    """What every request handler reaches through ``request.app.state.rill``."""

    def __init__(self, flows: Mapping[str, ServedFlow], settings: ServeSettings, *, say: Callable[[str], None] | None = None) -> None:
        from rillflow.ui.auth import KeyStore

        self.flows = dict(flows)
        self.settings = settings
        self.say = say or log.info
        self.metrics = Metrics()
        keys = KeyStore.load(settings.api_keys, settings.limits) if settings.api_keys is not None else None
        shedder = LoadShedder(settings.max_active, settings.max_queued, settings.queue_timeout)
        self.gate = Gate(keys, open_rate_limits(settings.limits_url), shedder, settings.limits, self.metrics)
        self.cache: Any = None
        self.trace: Any = None
        self.ready = False
        self.active_runs = 0

    # -- lifespan --------------------------------------------------------------------------
    async def open(self) -> None:
        """Ingest, load models and collections, open the cache and trace store; raises FlowsError. Idempotent:
        `rill serve` opens before it listens, and the lifespan then finds the server open."""
        if self.ready:
            return
        try:
            await open_flows(self.flows, self.say)
        except BaseException:
            await close_flows()
            raise
        self.cache = self._open_cache() if self.settings.cache else None
        self.trace = self._open_traces() if self.settings.trace else None
        self._watch()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.cache is not None:
            with contextlib.suppress(Exception):
                await self.cache.flush()
            await _close(self.cache)
        if self.trace is not None:
            await asyncio.to_thread(self.trace.close)
        await self.gate.limits.aclose()
        await close_flows()

    def _open_cache(self) -> Any:
        from rillflow.runtime.cache_open import open_cache

        try:
            return open_cache()
        except (ValueError, OSError) as exc:  # a cache only saves time: serve without one, say why
            self.say(f"warning: serving without a cache: {exc} (check RILL_CACHE_URL and RILL_STATE_DIR)")
            return None

    def _open_traces(self) -> Any:
        from rillflow.runtime.trace_store import TraceStore

        try:
            return TraceStore.from_env()
        except (ValueError, OSError) as exc:
            self.say(f"warning: serving without traces: {exc}")
            return None

    def _watch(self) -> None:
        from rillflow.runtime.trace import RecorderStats

        self.metrics.watch("trace_recorder", lambda: {"errors": RecorderStats.errors, "sampled_out": RecorderStats.sampled_out})
        trace = self.trace
        if trace is not None:
            self.metrics.watch("trace_store", lambda: {"dropped": trace.dropped, "errors": trace.errors, "written": trace.written})
        self.metrics.watch("admission", lambda: {"active": self.gate.shedder.active, "queued": self.gate.shedder.queued})

    # -- requests ----------------------------------------------------------------------------
    def flow(self, name: str) -> ServedFlow:
        flow = self.flows.get(name)
        if flow is None:
            known = ", ".join(sorted(self.flows)) or "none"
            shown = name if name.isprintable() else ascii(name)[1:-1]  # an invisible character must show in the message
            raise ApiError(404, "not_found", f"no flow named '{shown}' (served: {known})")
        return flow

    def check_inputs(self, flow: ServedFlow, inputs: Any) -> dict[str, Any]:
        """The flow's inputs with defaults, or ApiError 422 naming every problem (before any model call)."""
        from rillflow.runtime.inputs import InputError, check_inputs

        if not isinstance(inputs, dict):
            raise ApiError(422, "input", "'inputs' must be an object of the flow's input names to values")
        chars, depth = _measure(inputs)
        if depth > self.settings.max_input_depth:
            raise ApiError(422, "input", f"inputs are nested {depth} levels deep; the limit is {self.settings.max_input_depth}")
        if chars > self.settings.max_input_chars:
            raise ApiError(422, "input", f"inputs hold {chars} characters; the limit is {self.settings.max_input_chars}: send less text")
        try:
            return check_inputs(flow.plan, inputs)
        except InputError as exc:
            raise ApiError(422, "input", "; ".join(exc.problems), detail=exc.problems) from None

    def start(self, flow: ServedFlow, inputs: dict[str, Any], admitted: Pass, run_id: str) -> AsyncIterator[Event]:
        """The run's events; every model call it makes is charged to the admitted key."""
        from rillflow.runtime.scheduler import run

        def charge(event: Event) -> None:
            if event.type in ("node_finished", "node_retry"):
                admitted.add_usage(event.data.get("usage"))

        cached = frozenset(pn.id for pn in flow.plan.nodes.values() if pn.cache is not None) if self.cache is not None else frozenset()
        return run(flow.plan, inputs, run_id=run_id, tenant=admitted.key.tenant, cache=self.cache, trace=self.trace,
                   listeners=(self.metrics.listener(flow.name, cached), charge))

    async def begin(self, flow: ServedFlow, inputs: dict[str, Any], key: ApiKey) -> tuple[Pass, str, AsyncIterator[Event]]:
        """Admit the caller and start the run: (its admission pass, run id, events). Settle the pass when done."""
        admitted = await self.gate.admit(key)
        run_id = new_run_id()
        try:
            return admitted, run_id, self.start(flow, inputs, admitted, run_id)
        except BaseException:
            await self.gate.settle(admitted)
            raise

    def sse(self, messages: Callable[[anyio.Event], AsyncIterator[Any]], admitted: Pass, run_id: str) -> Any:
        """An SSE response of ``messages(shutdown)``, released through ``Guarded`` however it ends."""
        from sse_starlette import EventSourceResponse

        from rillflow.ui.streaming import Guarded

        shutdown = anyio.Event()
        settings = self.settings
        response = EventSourceResponse(messages(shutdown), ping=settings.ping, send_timeout=settings.send_timeout, shutdown_event=shutdown,
                                       shutdown_grace_period=settings.shutdown_grace,
                                       headers={"X-Rill-Run-Id": run_id, "Cache-Control": "no-store"})
        return Guarded(response, lambda: self.gate.settle(admitted))

    async def trace_of(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        """A run's trace; 404 for unknown ids and for another tenant's runs alike (no existence oracle)."""
        record = await asyncio.to_thread(self._read_trace, run_id, tenant)
        if record is None:
            raise ApiError(404, "not_found", f"no run '{run_id}' (runs are kept while traces are retained; is it your run?)")
        return record

    def _read_trace(self, run_id: str, tenant: str | None) -> dict[str, Any] | None:
        from rillflow.runtime.trace_store import AmbiguousRunId, TraceStoreError

        if self.trace is None:
            raise ApiError(404, "not_found", "this server keeps no traces (started with traces off)")
        if len(run_id) < 32:  # only full ids: a prefix would let a caller enumerate runs
            return None
        self.trace.flush(timeout=2.0)  # the run may have ended a moment ago: its trace is still on the writer's queue
        try:
            return self.trace.get_run(run_id, tenant=tenant)  # type: ignore[no-any-return]
        except (AmbiguousRunId, TraceStoreError):
            return None

    async def feedback(self, run_id: str, tenant: str | None, score: int, comment: str | None) -> None:
        def write() -> bool:
            if self.trace is None or len(run_id) < 32:
                return False
            self.trace.flush(timeout=2.0)
            return bool(self.trace.add_feedback(run_id, score, comment, tenant=tenant))

        if not await asyncio.to_thread(write):
            raise ApiError(404, "not_found", f"no run '{run_id}' to give feedback on")


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not JSON, 422 when it is not an object."""
    body = await request.body()
    try:
        data = json.loads(body, parse_constant=_no_constant) if body else {}
        # A "\ud800" escape is valid JSON but no text: it would fail later, when the answer, the SSE
        # stream or the trace encodes it as UTF-8 (a 500 after the model ran). Raw surrogate bytes are
        # already invalid UTF-8, so only bodies with such an escape need the check.
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
    except UnicodeEncodeError:
        raise ApiError(400, "bad_request", "the body holds a lone surrogate escape (\\ud800 to \\udfff), which is not text") from None
    except RecursionError:
        raise ApiError(422, "input", "the body is nested too deeply") from None
    except ValueError as exc:  # NaN or Infinity (not JSON), or an integer over Python's 4300 digits
        message = str(exc) if isinstance(exc, _NotJson) else "a number in it is over 4300 digits long"
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {message}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "input", "the body must be a JSON object")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    """Python's json reads NaN and Infinity; JSON has neither, and the answer could not encode them back."""
    raise _NotJson(f"{name} is not a JSON number")


def new_run_id() -> str:
    return uuid.uuid4().hex


def _measure(value: Any, depth: int = 1) -> tuple[int, int]:
    """(characters of text, nesting depth) of a JSON value; stops descending past 64 levels."""
    if isinstance(value, str):
        return len(value), depth
    if depth > 64:
        return 0, depth
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    chars, deepest = sum(len(k) for k in value if isinstance(k, str)) if isinstance(value, dict) else 0, depth
    for item in items:
        c, d = _measure(item, depth + 1)
        chars, deepest = chars + c, max(deepest, d)
    return chars, deepest


async def _close(store: Any) -> None:
    closer = getattr(store, "aclose", None)
    if closer is not None:
        await closer()
    else:
        await asyncio.to_thread(store.close)
