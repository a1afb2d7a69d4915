"""Record a case's model and retrieval calls into a cassette, and replay them offline.

A cassette is one JSON file per case (``NAME.cassettes/CASE.json`` beside the test file), written to be
read in a code review: each call's request (the node's resolved inputs and the model it names) in full,
then its emits one per line with their time since the call started. Replay gives the node back exactly
those emits (the same chunk boundaries, at the recorded pace scaled by ``speed``), the same usage and
the same error, so streaming, retries, fallbacks and budgets behave as they did when recorded.

A replayed call whose request differs from every recorded one (someone edited the prompt) fails the
case with a diff of the two requests; ``rill test --record`` re-records it.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from rillflow.nodes.base import Chunk, Emit, Node, Output, Progress, RunContext, Signal
from rillflow.runtime.errors import NodeError
from rillflow.runtime.overrides import Delegate

FORMAT = 1
Mode = Literal["record", "replay"]
#: Model settings that say where and how fast a model runs, not what it answers: not part of a request.
_INFRA_FIELDS = {"api_key", "base_url", "request_timeout", "structured_output", "n_threads", "n_gpu_layers", "prompt_lookup", "price_per_mtok"}


class CassetteError(Exception):
    """A cassette cannot be read; the message says which file and what to do."""


@dataclass
class Cassette:
    """The recorded calls of one case, and what went wrong replaying them."""

    path: Path
    mode: Mode
    calls: list[dict[str, Any]] = field(default_factory=list)
    used: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # request mismatches and missing recordings: fail the case
    speed: float = 1.0

    @classmethod
    def open(cls, path: Path, mode: Mode, speed: float = 1.0) -> Cassette:
        cassette = cls(path, mode, speed=speed)
        if mode == "replay" and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CassetteError(f"{path}: cannot read the cassette ({exc}); re-record it with rill test --record") from None
            if not isinstance(data, dict) or data.get("version") != FORMAT or not isinstance(data.get("calls"), list):
                raise CassetteError(f"{path}: not a version {FORMAT} cassette; re-record it with rill test --record")
            cassette.calls = data["calls"]
        return cassette

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def take(self, node: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """The first unused recording of ``node`` with this exact request; None (and a problem noted) if none."""
        wanted = _canonical(request)
        candidates = [i for i, call in enumerate(self.calls) if call.get("node") == node and i not in self.used]
        for i in candidates:
            if _canonical(self.calls[i].get("request")) == wanted:
                self.used.add(i)
                return self.calls[i]
        if not self.calls and not self.exists:
            self.problems.append(f"node '{node}' calls a model or a store, and there is no cassette {self.path.name}: "
                                 f"record one with `rill test --record` (or mark the case live: true)")
        elif not candidates:
            self.problems.append(f"node '{node}' made a call the cassette does not have (it was recorded without it): "
                                 f"re-record with `rill test --record`")
        else:
            recorded = self.calls[candidates[0]].get("request") or {}
            diff = request_diff(recorded, request)
            self.problems.append(f"node '{node}': the request changed since the cassette was recorded "
                                 f"(re-record with `rill test --record` if the change is intended):\n{diff}")
        return None

    def add(self, call: dict[str, Any]) -> None:
        self.calls.append(call)

    def save(self, case: str, flow: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"version": FORMAT, "case": case, "flow": flow,
                  "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "calls": []}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(_render(header, self.calls), encoding="utf-8")
        tmp.replace(self.path)  # a half-written cassette never replaces a good one


class RecordedNode(Delegate):
    """Records (or replays) every call the wrapped node makes, through the case's cassette."""

    def __init__(self, inner: Node, cassette: Cassette) -> None:
        super().__init__(inner)
        self.cassette = cassette

    def prepare(self) -> None:
        if self.cassette.mode == "record":  # replaying needs no model, no collection: it runs offline
            self.inner.prepare()

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        if self.cassette.mode == "replay":  # the real identity would open the model or collection
            # What the call names (model settings, embedder), not its inputs: the content key adds
            # those itself, and a semantic scope must stay the same across different questions.
            named = {k: v for k, v in request_of(self, inputs).items() if k != "inputs"}
            return {"replayed": named}
        return await self.inner.cache_identity(ctx, inputs)

    def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        if self.cassette.mode == "replay":
            return self._replay(ctx, inputs)
        return self._record(ctx, inputs)

    async def _record(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        call: dict[str, Any] = {"node": self.id, "request": request_of(self, inputs), "events": []}
        events: list[list[Any]] = call["events"]
        start = perf_counter()
        spy = _UsageSpy(ctx, events, start)
        finished = False
        try:
            async for emit in self.inner.run(spy, inputs):
                events.append([round(perf_counter() - start, 4), *_encode(emit)])
                finished = isinstance(emit, Output)
                yield emit
        except NodeError as exc:
            call["error"] = {"kind": exc.kind, "message": exc.message}
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:  # the runtime stopped it (deadline, cancel): replay waits there to be stopped again
                call["cut"] = True
            raise
        except Exception as exc:
            call["error"] = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            self.cassette.add(call)

    async def _replay(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        call = self.cassette.take(self.id, request_of(self, inputs))
        if call is None:
            raise NodeError("config", f"node '{self.id}' has no matching recording (see the test report)")
        start = perf_counter()
        for event in call.get("events", []):
            delay = event[0] / self.cassette.speed - (perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if event[1] == "u":
                ctx.usage(**event[2])
                continue
            yield _decode(event)
        if call.get("cut"):
            await asyncio.Event().wait()  # recorded until the runtime stopped it: it stops it again
        error = call.get("error")
        if error:
            raise NodeError(error["kind"], error["message"])


class _UsageSpy:
    """The node's context, noting each usage report so a replay reports the same tokens and cost."""

    def __init__(self, ctx: RunContext, events: list[list[Any]], start: float) -> None:
        self._ctx = ctx
        self._events = events
        self._start = start

    def usage(self, **usage: Any) -> None:
        self._events.append([round(perf_counter() - self._start, 4), "u", usage])
        self._ctx.usage(**usage)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def request_of(node: Node, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a call asks: the node's resolved inputs and what it names (a model's settings, a collection's embedder)."""
    request: dict[str, Any] = {"type": node.type_name, "inputs": _plain(inputs)}
    model = inputs.get("model")
    if isinstance(model, str) and model in node.env.models:
        spec = node.env.models[model].model_dump(mode="json", exclude=_INFRA_FIELDS)
        request["model"] = {k: v for k, v in spec.items() if v is not None}
    collection = inputs.get("collection")
    if isinstance(collection, str) and collection in node.env.collections:
        request["collection"] = {"embedder": node.env.collections[collection].embedder}
    return request


def _plain(value: Any) -> Any:
    """JSON values only: what a cassette can hold and a diff can show."""
    return json.loads(json.dumps(value, default=lambda v: f"<{type(v).__name__}>", ensure_ascii=False))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _encode(emit: Emit) -> list[Any]:
    if isinstance(emit, str):
        return ["c", emit]
    if isinstance(emit, Chunk):
        return ["c", emit.text] if emit.field == "text" else ["c", emit.text, emit.field]
    if isinstance(emit, Progress):
        return ["p", emit.done, emit.total, emit.message]
    if isinstance(emit, Signal):
        return ["s", emit.type, _plain(emit.data)]
    if isinstance(emit, Output):
        return ["o", _plain(dict(emit))]
    raise TypeError(f"unknown emit {type(emit).__name__}")


def _decode(event: list[Any]) -> Emit:
    kind = event[1]
    if kind == "c":
        return event[2] if len(event) == 3 else Chunk(event[2], event[3])
    if kind == "p":
        return Progress(event[2], event[3], event[4])
    if kind == "s":
        return Signal(event[2], event[3])
    if kind == "o":
        return Output(event[2])
    raise CassetteError(f"unknown event kind {kind!r} in a cassette; re-record it with rill test --record")


def request_text(request: dict[str, Any]) -> list[str]:
    """A request as lines a person can diff: chat messages as `[role]` then their text, the rest as key: JSON."""
    lines: list[str] = []
    inputs = request.get("inputs") or {}
    for key, value in {**{k: v for k, v in request.items() if k != "inputs"}, **inputs}.items():
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            lines.append(f"{key}:")
            for message in value:
                lines.append(f"  [{message.get('role')}]")
                lines.extend(f"    {line}" for line in str(message.get("content", "")).splitlines() or [""])
        elif isinstance(value, str) and "\n" in value:
            lines.append(f"{key}:")
            lines.extend(f"    {line}" for line in value.splitlines())
        else:
            lines.append(f"{key}: {json.dumps(value, sort_keys=True, ensure_ascii=False)}")
    return lines


def request_diff(recorded: dict[str, Any], now: dict[str, Any], limit: int = 60) -> str:
    diff = list(difflib.unified_diff(request_text(recorded), request_text(now), "recorded", "now", lineterm="", n=2))
    if len(diff) > limit:
        diff = [*diff[:limit], f"... ({len(diff) - limit} more diff lines)"]
    return "\n".join(diff)


def _render(header: dict[str, Any], calls: list[dict[str, Any]]) -> str:
    """Indented JSON with each emit on one line: a re-recorded answer shows as changed lines, not a wall of brackets."""
    parts = []
    for call in calls:
        events = call.get("events", [])
        body = json.dumps({k: v for k, v in call.items() if k != "events"}, indent=2, ensure_ascii=False)
        lines = ",\n".join("    " + json.dumps(e, ensure_ascii=False) for e in events)
        body = body[:-2] + (",\n" if body.strip() != "{}" else "") + '  "events": [\n' + lines + ("\n" if lines else "") + "  ]\n}"
        parts.append("\n".join("    " + line for line in body.splitlines()))
    text = json.dumps(header, indent=2, ensure_ascii=False)
    calls_text = "[\n" + ",\n".join(parts) + "\n  ]" if parts else "[]"
    return text.replace('"calls": []', '"calls": ' + calls_text) + "\n"
